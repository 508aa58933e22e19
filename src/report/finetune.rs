//! The `keel compare-finetune` report: plain vs constricted fine-tuning, run for run on the
//! same data order and seeds (the seeds are the paired units): loss curves, gradient-norm
//! variability per block, steps to a target loss, validation perplexity and representation
//! drift against the base model, with paired bootstrap intervals.

use super::compare::{band_series, paired_cells, paired_line, Better};
use super::html;
use super::svg::{esc, Chart, PALETTE};
use crate::metrics::bootstrap::{paired, Paired, RESAMPLES, SEED};
use crate::metrics::{mean, sample_sd};
use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;

pub const PLAIN: &str = "plain";
pub const CONSTRICTED: &str = "constricted";

/// How the target loss is defined (also in report.json and docs/compare.md).
pub const TARGET_DEFINITION: &str = "the plain arm's final training loss for the same seed; steps to \
     target = the number of steps until an arm's training loss first is at or below it (null when \
     never reached)";

/// One fine-tune: an arm at one seed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArmRun {
    pub seed: u64,
    /// Training loss of each step, from the run's log.
    pub losses: Vec<f64>,
    /// `layer_grad_norms` of each step (`[step][block]`).
    #[serde(skip)]
    pub layer_grad_norms: Vec<Vec<f64>>,
    /// Validation loss after the last step (NaN without validation data).
    pub val_loss: f64,
    /// Per block: sd / mean of its gradient norm across the steps.
    pub grad_norm_cv: Vec<f64>,
    /// Per block: mean over the probe's tokens of cos(base state, fine-tuned state).
    pub drift_cosine: Vec<f64>,
    /// Steps until the loss first reaches the target (None: never).
    pub steps_to_target: Option<usize>,
}

impl ArmRun {
    pub fn new(
        seed: u64,
        losses: Vec<f64>,
        layer_grad_norms: Vec<Vec<f64>>,
        val_loss: f64,
        drift_cosine: Vec<f64>,
    ) -> ArmRun {
        let grad_norm_cv = variability(&layer_grad_norms);
        ArmRun { seed, losses, layer_grad_norms, val_loss, grad_norm_cv, drift_cosine, steps_to_target: None }
    }

    pub fn final_loss(&self) -> f64 {
        self.losses.last().copied().unwrap_or(f64::NAN)
    }

    pub fn val_ppl(&self) -> f64 {
        self.val_loss.exp()
    }

    fn json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        v["final_loss"] = json!(self.final_loss());
        v["val_ppl"] = json!(self.val_ppl());
        v
    }
}

/// Per block (column): sample sd / mean of the values across the steps (rows).
pub fn variability(rows: &[Vec<f64>]) -> Vec<f64> {
    let blocks = rows.iter().map(Vec::len).max().unwrap_or(0);
    (0..blocks)
        .map(|l| {
            let col: Vec<f64> = rows.iter().filter_map(|r| r.get(l).copied()).collect();
            sample_sd(&col) / mean(&col)
        })
        .collect()
}

/// Steps until `losses` first is at or below `target` (1 = after the first step).
pub fn steps_to(losses: &[f64], target: f64) -> Option<usize> {
    losses.iter().position(|&l| l <= target).map(|i| i + 1)
}

/// The paired metrics: name, description, and how to read one run.
type MetricFn = fn(&ArmRun) -> f64;
pub const METRICS: &[(&str, &str, MetricFn)] = &[
    ("final_loss", "training loss at the last step", ArmRun::final_loss),
    ("val_ppl", "validation perplexity after the last step", ArmRun::val_ppl),
    ("steps_to_target", "steps until the loss reaches the target", |r| {
        r.steps_to_target.map_or(f64::NAN, |s| s as f64)
    }),
    ("grad_norm_cv", "sd / mean of the gradient norm across steps, mean over blocks", |r| {
        mean(&r.grad_norm_cv)
    }),
    ("drift_cosine", "cosine of base vs fine-tuned hidden states on the probe, mean over blocks", |r| {
        mean(&r.drift_cosine)
    }),
];

#[derive(Clone, Debug, Serialize)]
pub struct MetricSummary {
    pub metric: &'static str,
    pub description: &'static str,
    pub paired: Paired,
}

pub struct FinetuneComparison {
    /// The settings (model, data, budget, constriction), as report.json's `study`.
    pub study: Value,
    pub plain: Vec<ArmRun>,
    pub constricted: Vec<ArmRun>,
    pub summary: Vec<MetricSummary>,
}

impl FinetuneComparison {
    /// Pairs the arms' runs by seed (the same order in both), sets steps to target and
    /// summarises every metric.
    pub fn new(study: Value, mut plain: Vec<ArmRun>, mut constricted: Vec<ArmRun>) -> FinetuneComparison {
        for (p, c) in plain.iter_mut().zip(&mut constricted) {
            let target = p.final_loss();
            p.steps_to_target = steps_to(&p.losses, target);
            c.steps_to_target = steps_to(&c.losses, target);
        }
        let summary = METRICS
            .iter()
            .map(|&(metric, description, f)| {
                let (b, a): (Vec<f64>, Vec<f64>) =
                    plain.iter().zip(&constricted).map(|(p, c)| (f(p), f(c))).unzip();
                MetricSummary { metric, description, paired: paired(&b, &a, RESAMPLES, SEED) }
            })
            .collect();
        FinetuneComparison { study, plain, constricted, summary }
    }

    pub fn json(&self) -> Value {
        let arm = |runs: &[ArmRun]| json!({"runs": runs.iter().map(ArmRun::json).collect::<Vec<_>>()});
        json!({
            "study": self.study,
            "target": TARGET_DEFINITION,
            "arms": {PLAIN: arm(&self.plain), CONSTRICTED: arm(&self.constricted)},
            "summary": self.summary,
        })
    }

    /// The terminal's summary table.
    pub fn table_text(&self) -> String {
        let mut s = format!(
            "{:<18} {:>20} {:>20} {:>28}\n",
            "metric", "plain mean ± sd", "constricted mean ± sd", "difference [95% CI]"
        );
        for m in &self.summary {
            s.push_str(&paired_line(m.metric, &m.paired, 18, 22));
        }
        s
    }

    pub fn charts(&self) -> Vec<Chart> {
        let per_arm = |f: &dyn Fn(&ArmRun) -> Vec<f64>| {
            [(PLAIN, &self.plain), (CONSTRICTED, &self.constricted)]
                .iter()
                .enumerate()
                .map(|(i, (name, runs))| {
                    band_series(name, PALETTE[i], &runs.iter().map(f).collect::<Vec<_>>())
                })
                .collect()
        };
        vec![
            Chart {
                title: "Training loss (mean ± sd over seeds)".into(),
                x_label: "step".into(),
                y_label: "loss".into(),
                series: per_arm(&|r| r.losses.clone()),
                log_y: false,
            },
            Chart {
                title: "Gradient-norm variability per block".into(),
                x_label: "block".into(),
                y_label: "sd / mean across steps".into(),
                series: per_arm(&|r| r.grad_norm_cv.clone()),
                log_y: false,
            },
            Chart {
                title: "Representation drift against the base model".into(),
                x_label: "block".into(),
                y_label: "mean cosine on the probe".into(),
                series: per_arm(&|r| r.drift_cosine.clone()),
                log_y: false,
            },
        ]
    }

    pub fn html(&self) -> String {
        let mut body = format!(
            "<p>Settings: <code>{}</code>. Seeds are the paired units; difference = constricted − plain \
             with its 95 % paired bootstrap interval (bold: it excludes 0). Target loss: {}.</p>\n",
            esc(&self.study.to_string()),
            esc(TARGET_DEFINITION)
        );
        let rows: Vec<Vec<String>> = self
            .summary
            .iter()
            .map(|m| paired_cells(m.metric, m.description, Better::Neither, &m.paired))
            .collect();
        body.push_str("<h2>Metrics</h2>\n");
        body.push_str(&html::table(
            &["metric", "better", PLAIN, CONSTRICTED, "difference [95% CI]", "pairs"],
            &rows,
        ));
        body.push_str("<h2>Plots</h2><div class=\"plots\">\n");
        for chart in self.charts() {
            body.push_str(&chart.to_svg());
        }
        body.push_str("</div>\n");
        html::page("Keel: plain vs constricted fine-tuning", &body)
    }

    /// Writes report.json and report.html into `dir`.
    pub fn write_into(&self, dir: &Path) -> Result<()> {
        html::write_report(dir, "report", &self.json(), &self.html())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variability_target_and_pairing() {
        let cv = variability(&[vec![1.0, 2.0], vec![3.0, 2.0]]);
        // Column 0: mean 2, sd √2; column 1: constant.
        assert!((cv[0] - 2f64.sqrt() / 2.0).abs() < 1e-12 && cv[1] == 0.0);
        assert_eq!(steps_to(&[3.0, 2.0, 1.0], 2.0), Some(2));
        assert_eq!(steps_to(&[3.0, 2.5], 2.0), None);
        let run = |seed, losses: Vec<f64>| ArmRun::new(seed, losses, vec![vec![1.0]; 3], 1.0, vec![0.9]);
        let c = FinetuneComparison::new(
            json!({}),
            vec![run(0, vec![3.0, 2.0, 1.5]), run(1, vec![3.0, 2.5, 2.0])],
            vec![run(0, vec![3.0, 1.4, 1.0]), run(1, vec![3.0, 2.9, 2.8])],
        );
        assert_eq!(c.plain[0].steps_to_target, Some(3));
        assert_eq!(c.constricted[0].steps_to_target, Some(2));
        assert_eq!(c.constricted[1].steps_to_target, None);
        let steps = &c.summary[2].paired;
        assert_eq!((steps.n, steps.diff), (1, -1.0));
        let v = c.json();
        assert_eq!(v["arms"]["plain"]["runs"][1]["final_loss"], 2.0);
        assert!(v["arms"]["constricted"]["runs"][1]["steps_to_target"].is_null());
        assert!(c.html().contains("<svg") && c.table_text().contains("final_loss"));
    }
}
