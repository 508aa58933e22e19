//! The arms report (`compare --arms`, `sweep`): many arms against one baseline on the same
//! prompts and seeds, each with the paired change (95 % bootstrap interval) in the plain
//! model's perplexity of the text and in the coherence metrics, and the Pareto fronts of those
//! changes. A change counts only where its interval excludes 0: a point estimate inside the
//! noise is no gain and no cost.

use super::compare::MetricSummary;
use super::html::{self, num};
use super::svg::{esc, Chart, Series, PALETTE};
use crate::metrics::bootstrap::Paired;
use anyhow::Result;
use serde_json::{json, Map, Value};
use std::fmt::Write;
use std::path::Path;

/// The changes a sweep judges a setting by, all "lower is better": the first is the cost
/// (the plain model finds the text less likely), the others what an arm is meant to lower.
/// The judge's topic drift is NaN without `--judge`, and a NaN change is left out.
pub const JUDGED: [&str; 5] = [
    "plain_perplexity",
    "entropy_variance",
    "perplexity_fluctuation",
    "repeated_4gram_rate",
    "judge_topic_drift",
];
/// The table's columns: the judged ones, with the plain model's fluctuation (the one no arm's
/// own distribution shapes) beside the arm's own, and shown but not judged: the entropy drift
/// (its sign has no "better") and the judge's drift from the prompt (a story may leave its
/// first line and stay coherent). The judge's columns are NaN ("n/a") without `--judge`.
const COLUMNS: [&str; 8] = [
    "plain_perplexity",
    "entropy_variance",
    "perplexity_fluctuation",
    "plain_perplexity_fluctuation",
    "repeated_4gram_rate",
    "entropy_drift_per_1k",
    "judge_topic_drift",
    "judge_prompt_drift",
];
/// How the spreads are computed, said under every table.
pub const SD_CONVENTION: &str = "perplexity fluctuation: population sd (divided by n) of the log-perplexity of \
     consecutive non-overlapping windows of each text; ± spreads over (prompt, seed) pairs: sample sd (n - 1); \
     intervals: 95 % paired bootstrap over the pairs";

pub struct Setting {
    /// The arm's name.
    pub name: String,
    /// The arm as written in the arms file (`lcm` as `--lcm-config`'s format).
    pub arm: Value,
    pub summary: Vec<MetricSummary>,
}

impl Setting {
    fn paired(&self, metric: &str) -> &Paired {
        &self.summary.iter().find(|m| m.metric == metric).expect("every metric is summarised").paired
    }

    /// The change of each judged metric where its interval excludes 0, else 0 (NaN where
    /// it could not be measured).
    fn changes(&self) -> [f64; JUDGED.len()] {
        JUDGED.map(|m| {
            let p = self.paired(m);
            if p.significant() || p.diff.is_nan() {
                p.diff
            } else {
                0.0
            }
        })
    }

    /// Whether the arm lowers a coherence metric without raising the plain model's
    /// perplexity, both by their intervals.
    pub fn helps(&self) -> bool {
        let c = self.changes();
        let costs = c[0] > 0.0;
        !costs && c[1..].iter().any(|&x| x < 0.0)
    }
}

/// Whether `a` dominates `b`: no worse in every change both measured and better in one
/// (a change that could not be measured, NaN, e.g. fluctuation with a single window, is
/// left out of the comparison).
fn dominates(a: &[f64], b: &[f64]) -> bool {
    let both: Vec<(f64, f64)> =
        a.iter().zip(b).filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(x, y)| (*x, *y)).collect();
    both.iter().all(|(x, y)| x <= y) && both.iter().any(|(x, y)| x < y)
}

/// Indices of the settings on the Pareto front of the judged changes. The baseline (no
/// change at all) competes too: a setting on the front is better than the baseline in at
/// least one change and dominated by no other setting.
pub fn pareto(settings: &[Setting]) -> Vec<usize> {
    let points: Vec<[f64; JUDGED.len()]> = settings.iter().map(Setting::changes).collect();
    let baseline = [0.0; JUDGED.len()];
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
            "sd_convention": SD_CONVENTION,
            "settings": self.settings.iter().enumerate().map(|(i, s)| json!({
                "name": s.name, "arm": s.arm, "pareto": front.contains(&i), "helps": s.helps(),
                "summary": s.summary,
            })).collect::<Vec<_>>(),
        })
    }

    /// The arm keys every arm sets to the same value (flattened: "lcm.gamma").
    fn common(&self) -> Vec<(String, Value)> {
        let flat: Vec<_> = self.settings.iter().map(|s| flat_keys(&s.arm)).collect();
        let Some(first) = flat.first() else { return Vec::new() };
        first
            .iter()
            .filter(|(k, v)| flat.iter().all(|f| f.get(*k) == Some(v)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn rows(&self, cell: impl Fn(&Paired) -> String) -> Vec<Vec<String>> {
        let front = pareto(&self.settings);
        self.settings
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut row = vec![s.name.clone()];
                row.extend(COLUMNS.iter().map(|m| cell(s.paired(m))));
                row.push(if s.helps() { "yes".into() } else { String::new() });
                row.push(if front.contains(&i) { "yes".into() } else { String::new() });
                row
            })
            .collect()
    }

    pub fn table_text(&self) -> String {
        let rows = self.rows(|p| format!("{} [{}, {}]", num(p.diff, 3), num(p.ci_low, 2), num(p.ci_high, 2)));
        let common: Vec<String> = self.common().iter().map(|(k, v)| format!("{k} {}", plain(v))).collect();
        let mut s = format!("every arm: {}\n", common.join(", "));
        let _ = write!(s, "{:<48}", "arm (change vs baseline [95% CI])");
        for h in COLUMNS {
            let _ = write!(s, " {h:>28}");
        }
        s.push_str("  helps  pareto\n");
        for row in rows {
            let _ = write!(s, "{:<48}", row[0]);
            for c in &row[1..row.len() - 2] {
                let _ = write!(s, " {c:>28}");
            }
            let _ = writeln!(s, "  {:<5}  {}", row[row.len() - 2], row[row.len() - 1]);
        }
        let _ = writeln!(s, "({SD_CONVENTION})");
        s
    }

    /// Change in plain perplexity against the change in `metric` (a judged coherence metric),
    /// one dot per arm, the front joined by a line, the baseline at the origin.
    pub fn chart(&self, metric: &str) -> Chart {
        let point = |s: &Setting| (s.paired("plain_perplexity").diff, s.paired(metric).diff);
        let mut all = Series::new("arm", self.settings.iter().map(point).collect(), "#999");
        all.line = false;
        let mut front: Vec<(f64, f64)> =
            pareto(&self.settings).into_iter().map(|i| point(&self.settings[i])).collect();
        front.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut baseline = Series::new("baseline", vec![(0.0, 0.0)], PALETTE[0]);
        baseline.line = false;
        Chart {
            title: format!("Arms: cost against effect on {metric}"),
            x_label: "change in the plain model's perplexity of the text".into(),
            y_label: format!("change in {metric}"),
            series: vec![all, Series::new("Pareto front (all judged changes)", front, PALETTE[1]), baseline],
            log_y: false,
        }
    }

    pub fn html(&self) -> String {
        let common: Vec<String> = self.common().iter().map(|(k, v)| format!("{k} {}", plain(v))).collect();
        let mut body = format!(
            "<p>{}</p><p>Every arm: <code>{}</code>.</p><p>Each arm's change against the baseline (arm − baseline, paired by prompt \
             and seed), mean with its 95 % bootstrap interval; lower is better for every judged column \
             (plain_perplexity, entropy_variance, perplexity_fluctuation, repeated_4gram_rate, and \
             judge_topic_drift when a judge ran). A change counts only where its interval excludes 0. \
             Helps: lowers a coherence metric without raising the plain model's perplexity. Pareto: no \
             other arm, nor the baseline, is at least as good in every judged change and better in one. Baseline plain perplexity {}. {}.</p>\n",
            esc(&describe(&self.study)),
            esc(&common.join(", ")),
            num(self.baseline_plain_perplexity, 4),
            esc(SD_CONVENTION)
        );
        let mut headers = vec!["arm"];
        headers.extend(COLUMNS);
        headers.extend(["helps", "Pareto"]);
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
        // One chart per judged metric that was measured (no judge: no drift chart).
        for metric in
            JUDGED[1..].iter().filter(|m| self.settings.iter().any(|s| s.paired(m).diff.is_finite()))
        {
            body.push_str(&self.chart(metric).to_svg());
        }
        html::page("Keel: arms against the baseline", &body)
    }

    pub fn write_into(&self, dir: &Path) -> Result<()> {
        html::write_report(dir, "report", &self.json(), &self.html())
    }
}

/// The arm file's keys of `spec` flattened ("lcm.gamma", "dry.base"), without the name.
pub fn flat_keys(spec: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in spec.as_object().into_iter().flatten() {
        match v {
            Value::Object(inner) => {
                for (ik, iv) in inner {
                    out.insert(format!("{k}.{ik}"), iv.clone());
                }
            }
            _ if k == "name" => {}
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
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
    fn setting(name: &str, d: [f64; 5]) -> Setting {
        let summary = METRICS
            .iter()
            .map(|&(metric, _, _)| {
                let change = JUDGED.iter().position(|&m| m == metric).map_or(0.0, |i| d[i]);
                let p = paired(&[1.0, 2.0, 3.0], &[1.0 + change, 2.0 + change, 3.0 + change], 100, 1);
                MetricSummary { metric, better: Better::Lower, verdict: Better::Lower.verdict(&p), paired: p }
            })
            .collect();
        Setting { name: name.into(), arm: json!({"name": name, "top_k": 40}), summary }
    }

    #[test]
    fn pareto_front_by_hand() {
        let s = vec![
            setting("a", [0.5, -0.2, 0.0, 0.0, 0.0]), // trades perplexity for entropy variance: front
            setting("b", [0.6, -0.1, 0.0, 0.0, 0.0]), // worse than a in both: off
            setting("c", [0.1, 0.1, 0.1, 0.1, 0.1]),  // worse than the baseline everywhere: off
            setting("d", [-0.1, 0.0, 0.0, -0.1, 0.0]), // better than the baseline: front
            setting("e", [f64::NAN, 0.0, 0.0, 0.0, 0.0]), // no better than the baseline: off
            setting("f", [0.6, -0.3, f64::NAN, 0.0, 0.0]), // a trade, one change unmeasured: front
            setting("g", [0.0, 0.0, 0.0, 0.0, -0.05]), // only the judge's topic drift lower: helps, front
            setting("h", [0.0, 0.0, 0.0, 0.0, f64::NAN]), // no judge ran: nothing changes
        ];
        assert_eq!(pareto(&s), vec![0, 3, 5, 6]);
        let sweep = Sweep { study: json!({"model": "m"}), baseline_plain_perplexity: 3.0, settings: s };
        let v = sweep.json();
        assert_eq!(v["settings"][0]["pareto"], json!(true));
        assert_eq!(v["settings"][1]["pareto"], json!(false));
        let html = sweep.html();
        assert_eq!(v["settings"][0]["helps"], json!(false));
        assert_eq!(v["settings"][3]["helps"], json!(true));
        assert_eq!(v["settings"][6]["helps"], json!(true));
        assert_eq!(v["settings"][7]["helps"], json!(false));
        assert_eq!(html.matches("<svg").count(), 4);
        assert_eq!(html.matches("<tr>").count(), 9);
        // Dots: the seven settings with both plotted changes, the front's four points, the baseline.
        assert_eq!(sweep.chart("entropy_variance").to_svg().matches("<circle").count(), 7 + 4 + 1);
        let table = sweep.table_text();
        assert_eq!(table.lines().count(), 11);
        assert!(table.starts_with("every arm: top_k 40\n") && table.contains("\nd "), "{table}");
    }

    #[test]
    fn a_change_inside_the_noise_is_no_gain() {
        // Entropy variance lower on average but the interval straddles 0: not on the front.
        let summary = METRICS
            .iter()
            .map(|&(metric, _, _)| {
                let arm = if metric == "entropy_variance" { [0.0, 2.2, 2.7] } else { [1.0, 2.0, 3.0] };
                let p = paired(&[1.0, 2.0, 3.0], &arm, 500, 1);
                MetricSummary { metric, better: Better::Lower, verdict: Better::Lower.verdict(&p), paired: p }
            })
            .collect();
        let s = Setting { name: "noisy".into(), arm: json!({"name": "noisy"}), summary };
        assert!(s.paired("entropy_variance").diff < 0.0 && !s.paired("entropy_variance").significant());
        assert!(!s.helps());
        assert!(pareto(&[s]).is_empty());
    }
}
