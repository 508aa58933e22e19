//! A long study's finished arms, kept beside its output folder (`OUT.partial/`) so that a
//! killed `compare` or `sweep` resumes where it stopped. An arm is reused only when its key
//! (the model and judge, the plan, the arm's own setting) is the one the new run asks for;
//! anything else in the folder is ignored and overwritten.

use super::ArmOutput;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The folder of finished arms and the key of the study they belong to.
pub struct Checkpoints {
    dir: PathBuf,
    study: Value,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    key: Value,
    output: ArmOutput,
}

impl Checkpoints {
    /// The checkpoints of the study whose report goes to `out`: `OUT.partial/`. `study` is
    /// what makes two runs the same study apart from their plan and arms (the model, its
    /// weights' format, the adapter, the judge).
    pub fn beside(out: &Path, study: Value) -> Checkpoints {
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Checkpoints { dir: out.with_file_name(format!("{name}.partial")), study }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key(&self, plan: &Value, arm: &Value) -> Value {
        json!({"study": self.study, "plan": plan, "arm": arm})
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The output saved as `name` for this plan and arm; None when there is none, or when it
    /// belongs to another study (or cannot be read: it is then made again).
    pub fn load(&self, name: &str, plan: &Value, arm: &Value) -> Option<ArmOutput> {
        let bytes = std::fs::read(self.path(name)).ok()?;
        let saved: Saved = serde_json::from_slice(&bytes).ok()?;
        (saved.key == self.key(plan, arm)).then_some(saved.output)
    }

    /// Keeps `output` as `name` (written atomically).
    pub fn save(&self, name: &str, plan: &Value, arm: &Value, output: &ArmOutput) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let saved = json!({"key": self.key(plan, arm), "output": output});
        crate::atomic::write_file(&self.path(name), &serde_json::to_vec(&saved)?)
    }

    /// Removes the folder once the report is written.
    pub fn remove(&self) -> Result<()> {
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::drift::Drift;
    use crate::report::compare::TokenRow;
    use crate::study::{Generated, PlainScore};

    fn output() -> ArmOutput {
        let token =
            |id, text: &str| TokenRow { id, text: text.into(), logprob: -1.5, entropy: 2.25, top1_prob: 0.5 };
        ArmOutput {
            gens: vec![Generated { prompt: 1, seed: 3, tokens: vec![token(7, " Once"), token(9, " upon")] }],
            plain: Some(vec![PlainScore { logprobs: vec![-1.0, -2.0], entropies: vec![0.5, 0.25] }]),
            drift: vec![Drift { prompt: 0.25, topic: f64::NAN, consecutive: 0.125 }],
        }
    }

    #[test]
    fn an_arm_is_reused_only_under_its_own_key() {
        let root = std::env::temp_dir().join(format!("keel-checkpoints-{}", std::process::id()));
        let c = Checkpoints::beside(&root.join("report"), json!({"model": "m"}));
        assert_eq!(c.dir(), root.join("report.partial"));
        let (plan, arm) = (json!({"tokens": 40}), json!({"lcm": null}));
        assert!(c.load("arm-0", &plan, &arm).is_none());
        c.save("arm-0", &plan, &arm, &output()).unwrap();
        let back = c.load("arm-0", &plan, &arm).unwrap();
        let g = &back.gens[0];
        assert_eq!((g.prompt, g.seed), (1, 3));
        assert_eq!(g.tokens, output().gens[0].tokens);
        assert_eq!(back.plain.as_ref().unwrap()[0].logprobs, [-1.0, -2.0]);
        let d = back.drift[0];
        assert_eq!((d.prompt, d.consecutive), (0.25, 0.125));
        assert!(d.topic.is_nan(), "NaN is written as null and read back as NaN");
        // Another plan, arm or study: made again.
        assert!(c.load("arm-0", &json!({"tokens": 41}), &arm).is_none());
        assert!(c.load("arm-0", &plan, &json!({"lcm": {"gamma": 0.1}})).is_none());
        let other = Checkpoints::beside(&root.join("report"), json!({"model": "n"}));
        assert!(other.load("arm-0", &plan, &arm).is_none());
        // A file a kill cut short is made again, not an error.
        std::fs::write(c.dir().join("arm-1.json"), b"{\"key\": ").unwrap();
        assert!(c.load("arm-1", &plan, &arm).is_none());
        c.remove().unwrap();
        assert!(!c.dir().exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
