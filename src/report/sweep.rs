//! The sweep report: many LCM settings against one baseline on the same prompts and seeds,
//! each with the paired change (95 % bootstrap interval) in the plain model's perplexity of
//! the text and in the coherence metrics, and the Pareto front of those changes.

use super::compare::MetricSummary;
use super::html::{self, num};
use super::svg::{esc, Chart, Series, PALETTE};
use crate::metrics::bootstrap::Paired;
use anyhow::Result;
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

/// The changes a sweep judges a setting by, all "lower is better": the first is the cost
/// (the plain model finds the text less likely), the others what LCM is meant to lower.
pub const JUDGED: [&str; 4] =
    ["plain_perplexity", "entropy_variance", "perplexity_fluctuation", "repeated_4gram_rate"];
/// Reported beside them, not judged (its sign has no "better").
pub const SHOWN: [&str; 1] = ["entropy_drift_per_1k"];

pub struct Setting {
    /// The LCM setting as JSON (`--lcm-config`'s format).
    pub lcm: Value,
    pub summary: Vec<MetricSummary>,
}

impl Setting {
    fn paired(&self, metric: &str) -> &Paired {
        &self.summary.iter().find(|m| m.metric == metric).expect("every metric is summarised").paired
    }

    /// The mean change of each judged metric.
    fn changes(&self) -> [f64; 4] {
        JUDGED.map(|m| self.paired(m).diff)
    }
}

/// Whether `a` dominates `b`: no worse in every change both measured and better in one
/// (a change that could not be measured, NaN, e.g. fluctuation with a single window, is
/// left out of the comparison).
fn dominates(a: &[f64; 4], b: &[f64; 4]) -> bool {
    let both: Vec<(f64, f64)> =
        a.iter().zip(b).filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(x, y)| (*x, *y)).collect();
    both.iter().all(|(x, y)| x <= y) && both.iter().any(|(x, y)| x < y)
}

/// Indices of the settings on the Pareto front of the judged changes. The baseline (no
/// change at all) competes too: a setting on the front is better than the baseline in at
/// least one change and dominated by no other setting.
pub fn pareto(settings: &[Setting]) -> Vec<usize> {
    let points: Vec<[f64; 4]> = settings.iter().map(Setting::changes).collect();
    let baseline = [0.0; 4];
    (0..points.len())
        .filter(|&i| {
            points[i].iter().any(|x| *x < 0.0)
                && !dominates(&baseline, &points[i])
                && !points.iter().enumerate().any(|(j, p)| j != i && dominates(p, &points[i]))
        })
        .collect()
}

pub struct Sweep {
    /// The study's description (model, adapter, budget), as compare's report has it.
    pub study: Value,
    pub baseline_plain_perplexity: f64,
    pub settings: Vec<Setting>,
}

impl Sweep {
    pub fn json(&self) -> Value {
        let front = pareto(&self.settings);
        json!({
            "study": self.study,
            "baseline_plain_perplexity": self.baseline_plain_perplexity,
            "judged": JUDGED,
            "settings": self.settings.iter().enumerate().map(|(i, s)| json!({
                "lcm": s.lcm, "pareto": front.contains(&i), "summary": s.summary,
            })).collect::<Vec<_>>(),
        })
    }

    /// The LCM keys whose values differ between settings, and the rest with their common value.
    fn keys(&self) -> (Vec<String>, Vec<(String, Value)>) {
        let first = self.settings.first().and_then(|s| s.lcm.as_object()).cloned().unwrap_or_default();
        let varies = |k: &String| self.settings.iter().any(|s| s.lcm.get(k) != first.get(k));
        let mut all: Vec<String> = self
            .settings
            .iter()
            .flat_map(|s| s.lcm.as_object().into_iter().flat_map(|o| o.keys().cloned()))
            .collect();
        all.sort();
        all.dedup();
        let (varying, common): (Vec<String>, Vec<String>) = all.into_iter().partition(varies);
        (varying, common.into_iter().map(|k| (k.clone(), first[&k].clone())).collect())
    }

    fn rows(&self, cell: impl Fn(&Paired) -> String) -> Vec<Vec<String>> {
        let front = pareto(&self.settings);
        let (varying, _) = self.keys();
        self.settings
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let label: Vec<String> =
                    varying.iter().map(|k| format!("{k} {}", plain(&s.lcm[k]))).collect();
                let mut row = vec![label.join(", ")];
                row.extend(JUDGED.iter().chain(&SHOWN).map(|m| cell(s.paired(m))));
                row.push(if front.contains(&i) { "yes".into() } else { String::new() });
                row
            })
            .collect()
    }

    pub fn table_text(&self) -> String {
        let rows = self.rows(|p| format!("{} [{}, {}]", num(p.diff, 3), num(p.ci_low, 2), num(p.ci_high, 2)));
        let (_, common) = self.keys();
        let common: Vec<String> = common.iter().map(|(k, v)| format!("{k} {}", plain(v))).collect();
        let mut s = format!("every setting: {}\n", common.join(", "));
        let _ = write!(s, "{:<48}", "setting (change vs baseline [95% CI])");
        for h in JUDGED.iter().chain(&SHOWN) {
            let _ = write!(s, " {h:>28}");
        }
        s.push_str("  pareto\n");
        for row in rows {
            let _ = write!(s, "{:<48}", row[0]);
            for c in &row[1..row.len() - 1] {
                let _ = write!(s, " {c:>28}");
            }
            let _ = writeln!(s, "  {}", row[row.len() - 1]);
        }
        s
    }

    /// Change in plain perplexity against change in entropy variance, one dot per setting,
    /// the front joined by a line, the baseline at the origin.
    pub fn chart(&self) -> Chart {
        let point = |s: &Setting| (s.paired("plain_perplexity").diff, s.paired("entropy_variance").diff);
        let mut all = Series::new("setting", self.settings.iter().map(point).collect(), "#999");
        all.line = false;
        let mut front: Vec<(f64, f64)> =
            pareto(&self.settings).into_iter().map(|i| point(&self.settings[i])).collect();
        front.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut baseline = Series::new("baseline", vec![(0.0, 0.0)], PALETTE[0]);
        baseline.line = false;
        Chart {
            title: "LCM settings: cost against effect".into(),
            x_label: "change in the plain model's perplexity of the text".into(),
            y_label: "change in entropy variance".into(),
            series: vec![all, Series::new("Pareto front (all 4 changes)", front, PALETTE[1]), baseline],
            log_y: false,
        }
    }

    pub fn html(&self) -> String {
        let (_, common) = self.keys();
        let common: Vec<String> = common.iter().map(|(k, v)| format!("{k} {}", plain(v))).collect();
        let mut body = format!(
            "<p>{}</p><p>Every setting: <code>{}</code>.</p><p>Each setting's change against the baseline (setting − baseline, paired by prompt \
             and seed), mean with its 95 % bootstrap interval; lower is better for every judged column. \
             Pareto: no other setting, nor the baseline, is at least as good in all four judged changes \
             and better in one. Baseline plain perplexity {}.</p>\n",
            esc(&describe(&self.study)),
            esc(&common.join(", ")),
            num(self.baseline_plain_perplexity, 4)
        );
        let mut headers = vec!["setting"];
        headers.extend(JUDGED.iter().chain(&SHOWN));
        headers.push("Pareto");
        let cells = self.rows(|p| {
            let text = format!("{} [{}, {}]", num(p.diff, 3), num(p.ci_low, 2), num(p.ci_high, 2));
            if p.significant() {
                format!("<td class=\"sig\">{text}</td>")
            } else {
                text
            }
        });
        let cells: Vec<Vec<String>> = cells
            .into_iter()
            .map(|mut r| {
                r[0] = esc(&r[0]);
                r
            })
            .collect();
        body.push_str(&html::table(&headers, &cells));
        body.push_str(&self.chart().to_svg());
        html::page("Keel: LCM sweep", &body)
    }

    pub fn write_into(&self, dir: &Path) -> Result<()> {
        html::write_report(dir, "report", &self.json(), &self.html())
    }
}

/// A JSON value without quotes.
fn plain(v: &Value) -> String {
    v.to_string().replace('"', "")
}

/// The study in words: "model on adapter: P prompts × S seeds × T tokens, ...".
fn describe(study: &Value) -> String {
    let get = |k: &str| plain(&study[k]);
    format!(
        "{} on {}: {} prompts × {} seeds × {} tokens, temperature {}, top-p {}; took {:.0} s.{}",
        get("model"),
        get("adapter"),
        get("prompts"),
        get("seeds"),
        get("tokens"),
        get("temperature"),
        get("top_p"),
        study["seconds"].as_f64().unwrap_or(f64::NAN),
        if study["reduced"] == Value::Bool(true) { " Reduced study (a CPU adapter)." } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::bootstrap::paired;
    use crate::report::compare::{Better, METRICS};

    /// A setting whose judged changes are `d` (constant over 3 units, so the intervals are
    /// the points themselves).
    fn setting(name: &str, d: [f64; 4]) -> Setting {
        let summary = METRICS
            .iter()
            .map(|&(metric, _, _)| {
                let change = JUDGED.iter().position(|&m| m == metric).map_or(0.0, |i| d[i]);
                let p = paired(&[1.0, 2.0, 3.0], &[1.0 + change, 2.0 + change, 3.0 + change], 100, 1);
                MetricSummary { metric, better: Better::Lower, paired: p }
            })
            .collect();
        Setting { lcm: json!({"name": name}), summary }
    }

    #[test]
    fn pareto_front_by_hand() {
        let s = vec![
            setting("a", [0.5, -0.2, 0.0, 0.0]), // trades perplexity for entropy variance: front
            setting("b", [0.6, -0.1, 0.0, 0.0]), // worse than a in both: off
            setting("c", [0.1, 0.1, 0.1, 0.1]),  // worse than the baseline everywhere: off
            setting("d", [-0.1, 0.0, 0.0, -0.1]), // better than the baseline: front
            setting("e", [f64::NAN, 0.0, 0.0, 0.0]), // no better than the baseline: off
            setting("f", [0.6, -0.3, f64::NAN, 0.0]), // a trade, one change unmeasured: front
        ];
        assert_eq!(pareto(&s), vec![0, 3, 5]);
        let sweep = Sweep { study: json!({"model": "m"}), baseline_plain_perplexity: 3.0, settings: s };
        let v = sweep.json();
        assert_eq!(v["settings"][0]["pareto"], json!(true));
        assert_eq!(v["settings"][1]["pareto"], json!(false));
        let html = sweep.html();
        assert_eq!(html.matches("<svg").count(), 1);
        assert_eq!(html.matches("<tr>").count(), 7);
        // Dots: the five settings with both plotted changes, the front's three points, the baseline.
        assert_eq!(sweep.chart().to_svg().matches("<circle").count(), 5 + 3 + 1);
        assert!(sweep.table_text().lines().count() == 8);
        // The settings differ only in "name": the rows say so, and nothing is common.
        assert!(sweep.table_text().contains("\nname a "), "{}", sweep.table_text());
    }
}
