//! Many LCM settings (a JSON grid) against one baseline on the same prompts and seeds: the
//! grid's arms (study::arms).

use super::arms::{grid_arms, run_arms};
use super::{Plan, StudyModel};
use crate::modulate::LcmConfig;
use crate::report::sweep::Sweep;
use anyhow::{anyhow, Context, Result};
use serde_json::{Map, Value};

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

/// The baseline and every setting as arms ([`super::arms::grid_arms`]), run and compared.
pub fn sweep(m: &StudyModel, plan: &Plan, settings: &[LcmConfig], window: usize) -> Result<Sweep> {
    run_arms(m, plan, &grid_arms(settings, &plan.sampler), window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
