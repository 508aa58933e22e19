//! Named arms: each any mix of an LCM setting and sampler settings, all generated on the same
//! (prompt, seed) pairs and compared with the reference arm (the one named `baseline`, else
//! the first) by paired bootstrap, for report::sweep's table and Pareto fronts.

use super::{arm_output, Plan, StudyModel};
use crate::generate::SamplerConfig;
use crate::modulate::LcmConfig;
use crate::report::compare::{decimal, summarize, Run};
use crate::report::sweep::{Setting, Sweep};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::time::Instant;

/// The name of the reference arm.
pub const BASELINE_NAME: &str = "baseline";

/// One arm: its name, its LCM setting (None: plain generation), its sampler, and the arm as
/// written (what the report shows).
#[derive(Clone, Debug)]
pub struct Arm {
    pub name: String,
    pub lcm: Option<LcmConfig>,
    pub sampler: SamplerConfig,
    pub spec: Value,
}

/// The arms of a JSON list (the `--arms` file's shape), unset sampler keys taken from `base`;
/// errors name `file`, the arm and the key. At least two arms, names unique.
pub fn parse_arms(v: &Value, file: &str, base: &SamplerConfig, n_layers: usize) -> Result<Vec<Arm>> {
    let list = v.as_array().ok_or_else(|| anyhow!("{file}: expected a JSON list of arms"))?;
    let arms: Vec<Arm> = list
        .iter()
        .enumerate()
        .map(|(i, a)| parse_arm(a, &format!("{file}: arm {i}"), base, n_layers))
        .collect::<Result<_>>()?;
    if arms.len() < 2 {
        bail!("{file}: needs at least two arms (a baseline and one to compare with it)");
    }
    for (i, a) in arms.iter().enumerate() {
        if arms[..i].iter().any(|b| b.name == a.name) {
            bail!("{file}: arm {i}: 'name' {:?} is used twice", a.name);
        }
    }
    Ok(arms)
}

fn parse_arm(v: &Value, at: &str, base: &SamplerConfig, n_layers: usize) -> Result<Arm> {
    let obj = v.as_object().ok_or_else(|| anyhow!("{at}: expected a JSON object"))?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow!("{at}: 'name' must be a non-empty string"))?
        .to_string();
    let at = format!("{at} ({name})");
    let num = |k: &str, x: &Value| {
        x.as_f64().map(|f| f as f32).ok_or_else(|| anyhow!("{at}: '{k}' must be a number, got {x}"))
    };
    let uint = |k: &str, x: &Value| {
        x.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| anyhow!("{at}: '{k}' must be a non-negative integer, got {x}"))
    };
    let mut s = base.clone();
    let mut lcm = None;
    for (k, x) in obj {
        match k.as_str() {
            "name" => {}
            "lcm" => {
                let c = LcmConfig::from_json(x, &format!("{at}: 'lcm'"))?;
                c.validate(n_layers).with_context(|| format!("{at}: 'lcm'"))?;
                lcm = Some(c);
            }
            "temperature" => s.temperature = num(k, x)?,
            "top_p" => s.top_p = num(k, x)?,
            "top_k" => s.top_k = uint(k, x)?,
            "min_p" => s.min_p = num(k, x)?,
            "repetition_penalty" => s.repetition_penalty = num(k, x)?,
            "presence_penalty" => s.presence_penalty = num(k, x)?,
            "frequency_penalty" => s.frequency_penalty = num(k, x)?,
            "no_repeat_ngram_size" => s.no_repeat_ngram_size = uint(k, x)?,
            "dry" => {
                let d = x.as_object().ok_or_else(|| anyhow!("{at}: 'dry' must be a JSON object"))?;
                for (dk, dx) in d {
                    let key = format!("dry.{dk}");
                    match dk.as_str() {
                        "multiplier" => s.dry.multiplier = num(&key, dx)?,
                        "base" => s.dry.base = num(&key, dx)?,
                        "allowed_length" => s.dry.allowed_length = uint(&key, dx)?,
                        "penalty_last_n" => s.dry.penalty_last_n = uint(&key, dx)?,
                        _ => bail!(
                            "{at}: unknown key '{key}' (multiplier, base, allowed_length, penalty_last_n)"
                        ),
                    }
                }
            }
            _ => bail!(
                "{at}: unknown key '{k}' (name, lcm, temperature, top_p, top_k, min_p, repetition_penalty, \
                 presence_penalty, frequency_penalty, no_repeat_ngram_size, dry)"
            ),
        }
    }
    s.validate().with_context(|| at.clone())?;
    Ok(Arm { name, lcm, sampler: s, spec: v.clone() })
}

/// The arms of a sweep's grid: the baseline, then one arm per LCM setting, named by the keys
/// that vary between settings.
pub fn grid_arms(settings: &[LcmConfig], base: &SamplerConfig) -> Vec<Arm> {
    let specs: Vec<Value> = settings.iter().map(LcmConfig::to_json).collect();
    let varies = |k: &String| specs.iter().any(|s| s.get(k) != specs[0].get(k));
    let baseline = Arm {
        name: BASELINE_NAME.into(),
        lcm: None,
        sampler: base.clone(),
        spec: json!({"name": BASELINE_NAME}),
    };
    let arms = settings.iter().zip(&specs).map(|(c, spec)| {
        let obj = spec.as_object().cloned().unwrap_or_default();
        let label: Vec<String> = obj
            .iter()
            .filter(|(k, _)| varies(k))
            .map(|(k, v)| format!("{k} {}", v.to_string().replace('"', "")))
            .collect();
        let name = if label.is_empty() { "lcm".to_string() } else { label.join(", ") };
        Arm { spec: json!({"name": name, "lcm": spec}), name, lcm: Some(c.clone()), sampler: base.clone() }
    });
    std::iter::once(baseline).chain(arms).collect()
}

/// Index of the reference arm: the one named `baseline`, else the first.
pub fn reference(arms: &[Arm]) -> usize {
    arms.iter().position(|a| a.name == BASELINE_NAME).unwrap_or(0)
}

/// Every arm generated on the plan's (prompt, seed) pairs ([`arm_output`]: those with LCM
/// scored by the plain model), each compared with the reference arm.
pub fn run_arms(m: &StudyModel, plan: &Plan, arms: &[Arm], window: usize) -> Result<Sweep> {
    let t0 = Instant::now();
    let mut runs: Vec<Vec<Run>> = Vec::new();
    for (i, arm) in arms.iter().enumerate() {
        let label = format!("arm {}/{} {}", i + 1, arms.len(), arm.name);
        let output = arm_output(m, plan, &arm.sampler, arm.lcm.as_ref(), &format!("arm-{i}"), &label)?;
        runs.push(output.runs(&arm.name, window));
    }
    let r = reference(arms);
    let settings = arms
        .iter()
        .zip(&runs)
        .enumerate()
        .filter(|&(i, _)| i != r)
        .map(|(_, (arm, own))| Setting {
            name: arm.name.clone(),
            arm: arm.spec.clone(),
            summary: summarize(&runs[r], own),
        })
        .collect();
    let base_ppl = crate::metrics::mean(&runs[r].iter().map(|run| run.plain.perplexity).collect::<Vec<_>>());
    Ok(Sweep {
        study: json!({
            "model": m.host.path.display().to_string(),
            "adapter": format!("{} ({:?})", m.gpu.info.name, m.gpu.info.device_type),
            "reduced": plan.reduced, "prompts": plan.prompts.len(), "seeds": plan.seeds,
            "tokens": plan.tokens, "temperature": decimal(plan.sampler.temperature), "top_p": decimal(plan.sampler.top_p),
            "window": window, "baseline": arms[r].spec.clone(),
            "seconds": t0.elapsed().as_secs_f64(),
        }),
        baseline_plain_perplexity: base_ppl,
        settings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sweep::flat_keys;

    #[test]
    fn arms_parse_with_defaults_and_errors_name_the_key() {
        let base = SamplerConfig { temperature: 0.8, top_p: 0.95, ..SamplerConfig::default() };
        let v = json!([
            {"name": "plain"},
            {"name": "baseline", "min_p": 0.1},
            {"name": "mix", "lcm": {"gamma": 0.05, "sink": 1}, "temperature": 0.7, "top_k": 40,
             "dry": {"multiplier": 0.8, "allowed_length": 3}}
        ]);
        let arms = parse_arms(&v, "a.json", &base, 8).unwrap();
        assert_eq!(reference(&arms), 1);
        assert_eq!(arms[0].sampler, base);
        assert_eq!(arms[1].sampler.min_p, 0.1);
        let mix = &arms[2];
        assert_eq!((mix.sampler.temperature, mix.sampler.top_p, mix.sampler.top_k), (0.7, 0.95, 40));
        assert_eq!(
            (mix.sampler.dry.multiplier, mix.sampler.dry.base, mix.sampler.dry.allowed_length),
            (0.8, 1.75, 3)
        );
        assert_eq!(mix.lcm.as_ref().map(|c| (c.gamma, c.sink)), Some((0.05, 1)));
        assert_eq!(flat_keys(&mix.spec)["lcm.gamma"], json!(0.05));
        let err = |v: Value| format!("{:#}", parse_arms(&v, "a.json", &base, 8).unwrap_err());
        let two = |arm: Value| json!([{"name": "baseline"}, arm]);
        assert_eq!(err(json!({})), "a.json: expected a JSON list of arms");
        assert!(err(json!([{"name": "baseline"}])).contains("at least two arms"));
        assert!(err(two(json!({"min_p": 0.1}))).starts_with("a.json: arm 1: 'name'"));
        assert!(
            err(two(json!({"name": "x", "top_q": 1}))).starts_with("a.json: arm 1 (x): unknown key 'top_q'")
        );
        assert!(
            err(two(json!({"name": "x", "top_k": -1}))).contains("'top_k' must be a non-negative integer")
        );
        assert!(err(two(json!({"name": "x", "dry": {"bas": 2}}))).contains("unknown key 'dry.bas'"));
        assert!(err(two(json!({"name": "x", "dry": {"base": "2"}}))).contains("'dry.base' must be a number"));
        assert!(err(two(json!({"name": "x", "lcm": {"gama": 1}}))).contains("'lcm': unknown LCM key 'gama'"));
        assert!(err(two(json!({"name": "x", "lcm": {"layers": [9]}}))).contains("out of range"));
        assert!(err(two(json!({"name": "x", "min_p": 2}))).contains("arm 1 (x): min_p must be in [0, 1]"));
        assert!(err(two(json!({"name": "baseline"}))).contains("'name' \"baseline\" is used twice"));
    }

    #[test]
    fn grid_arms_are_named_by_what_varies() {
        let a = LcmConfig { gamma: 0.02, sink: 1, ..LcmConfig::default() };
        let b = LcmConfig { gamma: 0.05, ..a.clone() };
        let arms = grid_arms(&[a, b], &SamplerConfig::default());
        let names: Vec<&str> = arms.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["baseline", "gamma 0.02", "gamma 0.05"]);
        assert_eq!(arms[2].spec["lcm"]["gamma"], json!(0.05));
    }
}
