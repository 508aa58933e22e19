//! Many LCM settings (a JSON grid) against one baseline on the same prompts and seeds: the
//! paired changes of each, for report::sweep's table and Pareto front.

use super::{arm_runs, generate_arm, plain_scores, Plan, StudyModel};
use crate::modulate::LcmConfig;
use crate::report::compare::{decimal, summarize, BASELINE, MODULATED};
use crate::report::sweep::{Setting, Sweep};
use anyhow::{anyhow, Context, Result};
use serde_json::{json, Map, Value};
use std::time::Instant;

/// Every combination of the grid's lists, as LCM settings (checked against `n_layers`).
pub fn expand_grid(grid: &Value, file: &str, n_layers: usize) -> Result<Vec<LcmConfig>> {
    let obj = grid.as_object().ok_or_else(|| anyhow!("{file}: expected a JSON object of lists"))?;
    let mut combos = vec![Map::new()];
    for (key, values) in obj {
        let list = values
            .as_array()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| anyhow!("{file}: '{key}' must be a non-empty list of values"))?;
        combos = combos
            .into_iter()
            .flat_map(|c| {
                list.iter().map(move |v| {
                    let mut c = c.clone();
                    c.insert(key.clone(), v.clone());
                    c
                })
            })
            .collect();
    }
    combos
        .into_iter()
        .map(|c| {
            let cfg = LcmConfig::from_json(&Value::Object(c), file)?;
            cfg.validate(n_layers).with_context(|| format!("{file}: setting {}", cfg.to_json()))?;
            Ok(cfg)
        })
        .collect()
}

/// The baseline and every setting generated on the plan's (prompt, seed) pairs, each setting
/// scored by the plain model and summarized against the baseline.
pub fn sweep(m: &StudyModel, plan: &Plan, settings: &[LcmConfig], window: usize) -> Result<Sweep> {
    let t0 = Instant::now();
    let base = arm_runs(BASELINE, generate_arm(m, plan, None, "baseline")?, None, window);
    let mut judged = Vec::new();
    for (i, lcm) in settings.iter().enumerate() {
        let label = format!("setting {}/{}", i + 1, settings.len());
        let gens = generate_arm(m, plan, Some(lcm), &label)?;
        let plain = plain_scores(m, plan, &gens, window, &format!("{label}: plain"))?;
        let runs = arm_runs(MODULATED, gens, Some(plain), window);
        judged.push(Setting { lcm: lcm.to_json(), summary: summarize(&base, &runs) });
    }
    let base_ppl = crate::metrics::mean(&base.iter().map(|r| r.plain.perplexity).collect::<Vec<_>>());
    Ok(Sweep {
        study: json!({
            "model": m.host.path.display().to_string(),
            "adapter": format!("{} ({:?})", m.gpu.info.name, m.gpu.info.device_type),
            "reduced": plan.reduced, "prompts": plan.prompts.len(), "seeds": plan.seeds,
            "tokens": plan.tokens, "temperature": decimal(plan.sampler.temperature), "top_p": decimal(plan.sampler.top_p),
            "seconds": t0.elapsed().as_secs_f64(),
        }),
        baseline_plain_perplexity: base_ppl,
        settings: judged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_expands_to_every_combination() {
        let g = json!({"gamma": [0.02, 0.05], "sink": [0, 1], "space": ["normalized"]});
        let s = expand_grid(&g, "g.json", 8).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!((s[3].gamma, s[3].sink), (0.05, 1));
        assert!(s.iter().all(|c| c.space == crate::modulate::Space::Normalized));
        let err = |g: Value| expand_grid(&g, "g.json", 8).unwrap_err().to_string();
        assert!(err(json!({"gamma": 0.1})).contains("'gamma' must be a non-empty list"));
        assert!(err(json!({"gamma": []})).contains("non-empty list"));
        assert!(err(json!({"gama": [1]})).contains("unknown LCM key"));
        assert!(format!("{:#}", expand_grid(&json!({"layers": [[9]]}), "g.json", 8).unwrap_err())
            .contains("out of range"));
        assert!(err(json!([1])).contains("expected a JSON object"));
    }
}
