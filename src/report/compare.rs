//! The baseline-vs-modulated comparison report: `report.json` (every metric per arm,
//! prompt and seed, and the paired summary), `tokens.csv` (every generated token) and
//! `report.html` (plots, the metric table with confidence intervals, sample texts).

use super::html::{self, num};
use super::svg::{esc, Chart, Series, PALETTE};
use crate::metrics::bootstrap::{self, Paired};
use crate::metrics::drift::Drift;
use crate::metrics::latent::LayerLatent;
use crate::metrics::lexical::LexicalMetrics;
use crate::metrics::sequence::{trailing_mean, SequenceMetrics};
use crate::metrics::{mean, sample_sd, widen};
use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

/// The two arms' names, as in tokens.csv.
pub const BASELINE: &str = "baseline";
pub const MODULATED: &str = "modulated";
/// Tokens in the moving means of the per-position plots.
const PLOT_WINDOW: usize = 16;
/// Sample texts shown side by side.
const SAMPLES: usize = 3;

/// Which way a metric is better, for reading the table (None: neither).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
    Neither,
}

impl Better {
    /// How a paired difference reads: "better" or "worse" when its interval excludes 0 and
    /// the metric has a better direction, "changed" when it has none; None when the interval
    /// holds 0.
    pub fn verdict(self, p: &Paired) -> Option<&'static str> {
        if !p.significant() {
            return None;
        }
        Some(match (self, p.diff > 0.0) {
            (Better::Lower, false) | (Better::Higher, true) => "better",
            (Better::Lower, true) | (Better::Higher, false) => "worse",
            (Better::Neither, _) => "changed",
        })
    }

    /// The direction as the table says it.
    pub fn label(self) -> &'static str {
        match self {
            Better::Lower => "lower",
            Better::Higher => "higher",
            Better::Neither => "neither",
        }
    }
}

/// Every scalar metric of a run: name, what it is, which way is better.
pub const METRICS: &[(&str, &str, Better)] = &[
    ("plain_perplexity", "the plain model's perplexity of the generated text", Better::Lower),
    ("plain_entropy_variance", "variance of the plain model's entropy", Better::Lower),
    ("plain_perplexity_fluctuation", "sd of the plain model's windowed log-perplexity", Better::Lower),
    ("perplexity", "the arm's own perplexity of its text", Better::Neither),
    ("mean_entropy", "mean entropy of the arm's own distributions (nats)", Better::Neither),
    ("entropy_variance", "variance of the arm's entropy", Better::Lower),
    ("entropy_drift_per_1k", "slope of the arm's entropy (nats per 1,000 tokens)", Better::Neither),
    ("perplexity_fluctuation", "sd of the arm's windowed log-perplexity", Better::Lower),
    ("mean_top1_prob", "mean probability of the most likely token", Better::Neither),
    ("distinct_1", "distinct tokens / tokens", Better::Higher),
    ("distinct_2", "distinct token bigrams / bigrams", Better::Higher),
    ("distinct_3", "distinct token trigrams / trigrams", Better::Higher),
    ("repeated_4gram_rate", "share of token 4-grams repeating an earlier one", Better::Lower),
    ("sentence_length_mean", "words per sentence", Better::Neither),
    ("sentence_length_sd", "sd of words per sentence", Better::Neither),
    ("latent_successive_cosine", "cosine of successive hidden states, mean over layers", Better::Neither),
    ("latent_stability_index", "variance of windowed mean norms, mean over layers", Better::Lower),
    ("latent_projection_error", "residual of the layer-to-layer linear map, mean over layers", Better::Lower),
    ("latent_coherence", "cosine of consecutive sentences' mean states, mean over layers", Better::Higher),
    ("judge_prompt_drift", "judge: 1 - cosine of each later 64-token segment to the prompt", Better::Lower),
    ("judge_topic_drift", "judge: 1 - cosine of each later 64-token segment to the first", Better::Lower),
    ("judge_consecutive_drift", "judge: 1 - cosine of consecutive 64-token segments", Better::Lower),
];

/// One generated token as the arm's model saw it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenRow {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
    pub entropy: f32,
    pub top1_prob: f32,
}

/// One arm's generation for one prompt and seed, with its metrics.
#[derive(Clone, Debug)]
pub struct Run {
    pub arm: String,
    pub prompt: usize,
    pub seed: u64,
    pub tokens: Vec<TokenRow>,
    /// By the distributions the tokens were drawn from (the arm's own model).
    pub own: SequenceMetrics,
    /// By the plain model scoring the same tokens.
    pub plain: SequenceMetrics,
    pub lexical: LexicalMetrics,
    /// Per layer; empty when the run was not traced.
    pub latent: Vec<LayerLatent>,
    /// Topic drift by the sentence-embedding judge ([`Drift::NONE`] without one).
    pub drift: Drift,
}

impl Run {
    pub fn text(&self) -> String {
        self.tokens.iter().map(|t| t.text.as_str()).collect()
    }

    /// The value of every metric in [`METRICS`], in that order.
    pub fn scalars(&self) -> Vec<f64> {
        let over_layers = |f: fn(&LayerLatent) -> f64| mean(&self.latent.iter().map(f).collect::<Vec<_>>());
        let (o, p, x) = (&self.own, &self.plain, &self.lexical);
        vec![
            p.perplexity,
            p.entropy_variance,
            p.perplexity_fluctuation,
            o.perplexity,
            o.mean_entropy,
            o.entropy_variance,
            o.entropy_drift_per_1k,
            o.perplexity_fluctuation,
            o.mean_top1_prob,
            x.distinct_1,
            x.distinct_2,
            x.distinct_3,
            x.repeated_4gram_rate,
            x.sentence_length_mean,
            x.sentence_length_sd,
            over_layers(|l| l.successive_cosine),
            over_layers(|l| l.stability_index),
            over_layers(|l| l.projection_error),
            over_layers(|l| l.coherence),
            self.drift.prompt,
            self.drift.topic,
            self.drift.consecutive,
        ]
    }

    fn json(&self) -> Value {
        let metrics: serde_json::Map<String, Value> =
            METRICS.iter().zip(self.scalars()).map(|((name, ..), v)| (name.to_string(), json!(v))).collect();
        json!({
            "arm": self.arm, "prompt": self.prompt, "seed": self.seed, "tokens": self.tokens.len(),
            "text": self.text(), "metrics": metrics, "mean_logprob": self.own.mean_logprob,
            "plain_mean_logprob": self.plain.mean_logprob,
            "windowed_perplexity": self.own.windowed_perplexity,
            "windowed_entropy": self.own.windowed_entropy,
            "plain_windowed_perplexity": self.plain.windowed_perplexity,
            "latent": self.latent,
        })
    }
}

/// What was compared, for the report's header.
#[derive(Clone, Debug, Serialize)]
pub struct Study {
    pub model: String,
    pub adapter: String,
    /// True when the budget was cut to fit a CPU adapter.
    pub reduced: bool,
    pub tokens: usize,
    pub seeds: usize,
    pub prompts: Vec<String>,
    pub temperature: f64,
    pub top_p: f64,
    pub window: usize,
    /// The modulated arm's LCM setting.
    pub lcm: Value,
    pub seconds: f64,
}

/// A metric's paired summary (modulated minus baseline).
#[derive(Clone, Debug, Serialize)]
pub struct MetricSummary {
    pub metric: &'static str,
    pub better: Better,
    /// [`Better::verdict`] of the difference.
    pub verdict: Option<&'static str>,
    #[serde(flatten)]
    pub paired: Paired,
}

/// Pairs `arm`'s runs with `base`'s by (prompt, seed) and summarises every metric.
pub fn summarize(base: &[Run], arm: &[Run]) -> Vec<MetricSummary> {
    let mut pairs = Vec::new();
    for a in arm {
        if let Some(b) = base.iter().find(|b| (b.prompt, b.seed) == (a.prompt, a.seed)) {
            pairs.push((b.scalars(), a.scalars()));
        }
    }
    METRICS
        .iter()
        .enumerate()
        .map(|(i, &(metric, _, better))| {
            let b: Vec<f64> = pairs.iter().map(|p| p.0[i]).collect();
            let a: Vec<f64> = pairs.iter().map(|p| p.1[i]).collect();
            let paired = bootstrap::paired(&b, &a, bootstrap::RESAMPLES, bootstrap::SEED);
            MetricSummary { metric, better, verdict: better.verdict(&paired), paired }
        })
        .collect()
}

pub struct Comparison {
    pub study: Study,
    pub runs: Vec<Run>,
    pub summary: Vec<MetricSummary>,
}

impl Comparison {
    pub fn new(study: Study, baseline: Vec<Run>, modulated: Vec<Run>) -> Comparison {
        let summary = summarize(&baseline, &modulated);
        Comparison { study, runs: baseline.into_iter().chain(modulated).collect(), summary }
    }

    fn arm(&self, name: &str) -> Vec<&Run> {
        self.runs.iter().filter(|r| r.arm == name).collect()
    }

    pub fn json(&self) -> Value {
        json!({
            "study": self.study,
            "metrics": METRICS.iter().map(|(n, d, b)| json!({"name": n, "description": d, "better": b})).collect::<Vec<_>>(),
            "runs": self.runs.iter().map(Run::json).collect::<Vec<_>>(),
            "summary": self.summary,
            "conclusion": self.conclusion(),
        })
    }

    /// One sentence from the numbers: which metrics with a better direction the modulation
    /// moved beyond their 95 % interval, each way, and what it did to the plain model's
    /// perplexity of the text.
    pub fn conclusion(&self) -> String {
        let named = |verdict: &str| -> Vec<&str> {
            self.summary.iter().filter(|m| m.verdict == Some(verdict)).map(|m| m.metric).collect()
        };
        let (better, worse) = (named("better"), named("worse"));
        let list = |v: &[&str]| if v.is_empty() { String::new() } else { format!(" ({})", v.join(", ")) };
        let mut s = if better.is_empty() && worse.is_empty() {
            "With this setting, LCM moved no metric that has a better direction beyond its 95 % interval"
                .to_string()
        } else {
            format!(
                "With this setting, LCM made {} metric(s) better{} and {} worse{} (95 % intervals excluding 0)",
                better.len(),
                list(&better),
                worse.len(),
                list(&worse)
            )
        };
        if let Some(ppl) = self.summary.iter().find(|m| m.metric == "plain_perplexity") {
            let p = &ppl.paired;
            let _ = write!(
                s,
                "; the plain model's perplexity of the text went from {} to {}",
                num(p.base_mean, 3),
                num(p.arm_mean, 3)
            );
        }
        s.push('.');
        s
    }

    /// `arm,prompt,seed,position,token_id,token_text,logprob,entropy,top1_prob`, one row per
    /// generated token (position 0 is the first generated token).
    pub fn tokens_csv(&self) -> String {
        let mut s = String::from("arm,prompt,seed,position,token_id,token_text,logprob,entropy,top1_prob\n");
        for r in &self.runs {
            for (i, t) in r.tokens.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{},{},{},{i},{},{},{},{},{}",
                    r.arm,
                    r.prompt,
                    r.seed,
                    t.id,
                    csv_field(&t.text),
                    t.logprob,
                    t.entropy,
                    t.top1_prob
                );
            }
        }
        s
    }

    /// The terminal's summary table.
    pub fn table_text(&self) -> String {
        let mut s = format!(
            "{:<30} {:>22} {:>22} {:>30}\n",
            "metric", "baseline mean ± sd", "modulated mean ± sd", "difference [95% CI]"
        );
        for m in &self.summary {
            s.push_str(&paired_line(m.metric, &m.paired, 30, 22));
        }
        s
    }

    pub fn html(&self) -> String {
        let st = &self.study;
        let mut body = String::new();
        let units = st.prompts.len() * st.seeds;
        let _ = writeln!(
            body,
            "<p>Model <b>{}</b> on {}. {} prompts × {} seeds = {units} paired generations of up to {} tokens \
             per arm (temperature {}, top-p {}); windows of {} tokens. Modulated arm: LCM <code>{}</code>. \
             Took {:.0} s.</p>",
            esc(&st.model),
            esc(&st.adapter),
            st.prompts.len(),
            st.seeds,
            st.tokens,
            st.temperature,
            st.top_p,
            st.window,
            esc(&st.lcm.to_string()),
            st.seconds
        );
        if st.reduced {
            body.push_str(
                "<p class=\"note\">Reduced study: this adapter is a CPU, so the budget was cut to finish \
                 in minutes. Run on a GPU for the full study.</p>\n",
            );
        }
        let _ = writeln!(body, "<p class=\"conclusion\"><b>Conclusion:</b> {}</p>", esc(&self.conclusion()));
        body.push_str(
            "<h2>Metrics</h2><p>Mean ± sd over the paired generations; difference = modulated − baseline \
             with its 95 % paired bootstrap interval. Where the interval excludes 0 the difference is bold \
             and marked <span class=\"better\">better</span> or <span class=\"worse\">worse</span> by the \
             metric's better direction (column “better”), or “changed” for a metric that has none. \
             Definitions: docs/metrics.md.</p>\n",
        );
        body.push_str(&self.metric_table());
        body.push_str("<h2>Plots</h2><div class=\"plots\">\n");
        for chart in self.charts() {
            body.push_str(&chart.to_svg());
        }
        body.push_str("</div>\n<h2>Samples</h2>\n");
        body.push_str(&self.samples());
        html::page("Keel: baseline vs modulated", &body)
    }

    fn metric_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .summary
            .iter()
            .zip(METRICS)
            .map(|(m, (_, description, _))| paired_cells(m.metric, description, m.better, &m.paired))
            .collect();
        html::table(&["metric", "better", "baseline", "modulated", "difference [95% CI]", "pairs"], &rows)
    }

    /// Entropy and windowed perplexity against position, and latent cosine per layer, each
    /// with every arm's mean and a band of ± one sd across its runs (perplexity, on a log
    /// axis: geometric mean and ± one sd of its log).
    pub fn charts(&self) -> Vec<Chart> {
        let arms = [BASELINE, MODULATED];
        let per_arm_with = |series: fn(&str, &str, &[Vec<f64>]) -> Series, f: &dyn Fn(&Run) -> Vec<f64>| {
            arms.iter()
                .enumerate()
                .map(|(i, arm)| {
                    series(arm, PALETTE[i], &self.arm(arm).iter().map(|r| f(r)).collect::<Vec<_>>())
                })
                .collect::<Vec<Series>>()
        };
        let per_arm = |f: &dyn Fn(&Run) -> Vec<f64>| per_arm_with(band_series, f);
        let entropy = |r: &Run| {
            trailing_mean(&r.tokens.iter().map(|t| t.entropy as f64).collect::<Vec<_>>(), PLOT_WINDOW)
        };
        let window = self.study.window;
        let ppl = |r: &Run| {
            let lp = trailing_mean(&r.tokens.iter().map(|t| t.logprob as f64).collect::<Vec<_>>(), window);
            lp.iter().map(|l| (-l).exp()).collect()
        };
        let cosine = |r: &Run| r.latent.iter().map(|l| l.successive_cosine).collect();
        vec![
            Chart {
                title: format!("Entropy (moving mean over {PLOT_WINDOW} tokens)"),
                x_label: "generated token".into(),
                y_label: "entropy (nats)".into(),
                series: per_arm(&entropy),
                log_y: false,
            },
            Chart {
                title: format!("Perplexity over the last {window} tokens (geometric mean, ± 1 sd of log)"),
                x_label: "generated token".into(),
                y_label: "perplexity (own model)".into(),
                series: per_arm_with(log_band_series, &ppl),
                log_y: true,
            },
            Chart {
                title: "Cosine of successive hidden states".into(),
                x_label: "block".into(),
                y_label: "mean cosine".into(),
                series: per_arm(&cosine),
                log_y: false,
            },
        ]
    }

    fn samples(&self) -> String {
        let mut s = String::new();
        let (base, arm) = (self.arm(BASELINE), self.arm(MODULATED));
        for b in base.iter().filter(|r| r.seed == 0).take(SAMPLES) {
            let Some(a) = arm.iter().find(|a| (a.prompt, a.seed) == (b.prompt, b.seed)) else { continue };
            let _ = writeln!(
                s,
                "<h3>Prompt {}, seed {}: “{}”</h3><div class=\"samples\"><div><b>baseline</b>\n{}</div>\
                 <div><b>modulated</b>\n{}</div></div>",
                b.prompt,
                b.seed,
                esc(&self.study.prompts[b.prompt]),
                esc(&b.text()),
                esc(&a.text())
            );
        }
        s
    }

    /// Writes report.json, tokens.csv and report.html into `dir` (an empty staging folder).
    pub fn write_into(&self, dir: &Path) -> Result<()> {
        crate::atomic::write_file(&dir.join("tokens.csv"), self.tokens_csv().as_bytes())?;
        html::write_report(dir, "report", &self.json(), &self.html())
    }
}

/// An f32 setting as the f64 of its shortest decimal, so that JSON says 0.95, not
/// 0.949999988079071.
pub fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::NAN)
}

/// One metric's terminal line: its name, both arms' mean ± sd and the difference with its
/// interval (`*` when it excludes 0), in columns `name` and `cell` wide.
pub fn paired_line(metric: &str, p: &Paired, name: usize, cell: usize) -> String {
    format!(
        "{metric:<name$} {:>cell$} {:>cell$} {:>30}{}\n",
        format!("{} ± {}", num(p.base_mean, 4), num(p.base_sd, 2)),
        format!("{} ± {}", num(p.arm_mean, 4), num(p.arm_sd, 2)),
        format!("{:+} [{}, {}]", Signed(p.diff), num(p.ci_low, 3), num(p.ci_high, 3)),
        if p.significant() { " *" } else { "" }
    )
}

/// One metric's HTML table row: name and description, its better direction, both arms'
/// mean ± sd, the difference with its interval (bold when it excludes 0, and marked better,
/// worse or changed: [`Better::verdict`]), and the number of pairs.
pub fn paired_cells(metric: &str, description: &str, better: Better, p: &Paired) -> Vec<String> {
    let diff = format!("{:+} [{}, {}]", Signed(p.diff), num(p.ci_low, 3), num(p.ci_high, 3));
    vec![
        format!("{}<br><small>{}</small>", esc(metric), esc(description)),
        better.label().to_string(),
        format!("{} ± {}", num(p.base_mean, 4), num(p.base_sd, 2)),
        format!("{} ± {}", num(p.arm_mean, 4), num(p.arm_sd, 2)),
        match better.verdict(p) {
            Some(verdict) => format!("<td class=\"sig {verdict}\">{diff} {verdict}</td>"),
            None => diff,
        },
        p.n.to_string(),
    ]
}

/// A number with an explicit sign and 3 significant figures.
struct Signed(f64);

impl std::fmt::Display for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let s = num(self.0, 3);
        if self.0 > 0.0 && f.sign_plus() {
            write!(f, "+{s}")
        } else {
            f.write_str(&s)
        }
    }
}

/// The mean and ± sd band across `curves` at each index (curves may differ in length).
pub fn band_series(name: &str, color: &str, curves: &[Vec<f64>]) -> Series {
    let longest = curves.iter().map(Vec::len).max().unwrap_or(0);
    let mut points = Vec::new();
    let mut band = Vec::new();
    for i in 0..longest {
        let at: Vec<f64> = curves.iter().filter_map(|c| c.get(i).copied()).collect();
        let (m, sd) = (mean(&at), sample_sd(&at));
        points.push((i as f64, m));
        if sd.is_finite() {
            band.push((i as f64, m - sd, m + sd));
        }
    }
    let mut s = Series::new(name, points, color);
    s.band = Some(band);
    s
}

/// [`band_series`] for a quantity plotted on a log axis: the geometric mean and a band of
/// ± one sd of the log, so that the band is symmetric on the axis and never dives below 0.
pub fn log_band_series(name: &str, color: &str, curves: &[Vec<f64>]) -> Series {
    let logs: Vec<Vec<f64>> = curves.iter().map(|c| c.iter().map(|v| v.ln()).collect()).collect();
    let mut s = band_series(name, color, &logs);
    s.points.iter_mut().for_each(|(_, y)| *y = y.exp());
    s.band.iter_mut().flatten().for_each(|(_, lo, hi)| (*lo, *hi) = (lo.exp(), hi.exp()));
    s
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The metrics of one generation from per-token values.
pub fn run_metrics(tokens: &[TokenRow], window: usize) -> (SequenceMetrics, LexicalMetrics) {
    let lp: Vec<f64> = tokens.iter().map(|t| t.logprob as f64).collect();
    let h: Vec<f64> = tokens.iter().map(|t| t.entropy as f64).collect();
    let top1 = widen(&tokens.iter().map(|t| t.top1_prob).collect::<Vec<_>>());
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    let texts: Vec<String> = tokens.iter().map(|t| t.text.clone()).collect();
    (SequenceMetrics::new(&lp, &h, &top1, window), LexicalMetrics::new(&ids, &texts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(arm: &str, prompt: usize, lp: f32) -> Run {
        let tokens: Vec<TokenRow> = (0..4)
            .map(|i| TokenRow {
                id: i,
                text: format!(" w{i},\"x\""),
                logprob: lp,
                entropy: 1.0 + i as f32,
                top1_prob: 0.5,
            })
            .collect();
        let (own, lexical) = run_metrics(&tokens, 2);
        Run {
            arm: arm.into(),
            prompt,
            seed: 0,
            tokens,
            plain: own.clone(),
            own,
            lexical,
            latent: Vec::new(),
            drift: Drift::NONE,
        }
    }

    #[test]
    fn report_files_agree_with_the_runs() {
        let study = Study {
            model: "m".into(),
            adapter: "a".into(),
            reduced: true,
            tokens: 4,
            seeds: 1,
            prompts: vec!["p0".into(), "p1".into()],
            temperature: 1.0,
            top_p: 0.95,
            window: 2,
            lcm: json!({"gamma": 0.1}),
            seconds: 1.0,
        };
        let c = Comparison::new(
            study,
            vec![run(BASELINE, 0, -1.0), run(BASELINE, 1, -2.0)],
            vec![run(MODULATED, 0, -1.5), run(MODULATED, 1, -2.5)],
        );
        // Perplexity e^1, e^2 against e^1.5, e^2.5; the plain perplexity is the first metric.
        let p = &c.summary[0].paired;
        assert_eq!(c.summary[0].metric, "plain_perplexity");
        assert!((p.base_mean - (1f64.exp() + 2f64.exp()) / 2.0).abs() < 1e-9);
        let d = ((1.5f64.exp() - 1f64.exp()) + (2.5f64.exp() - 2f64.exp())) / 2.0;
        assert!((p.diff - d).abs() < 1e-9 && p.ci_low > 0.0);
        let csv = c.tokens_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 1 + 16);
        assert_eq!(lines[1], "baseline,0,0,0,0,\" w0,\"\"x\"\"\",-1,1,0.5");
        let v = c.json();
        assert_eq!(v["runs"].as_array().unwrap().len(), 4);
        assert_eq!(v["runs"][2]["mean_logprob"], json!(-1.5));
        assert!(v["runs"][0]["metrics"]["latent_coherence"].is_null());
        let html = c.html();
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(html.contains("Reduced study") && html.contains("plain_perplexity"));
        assert!(c.table_text().lines().count() == 1 + METRICS.len());
    }

    #[test]
    fn log_bands_are_symmetric_on_a_log_axis() {
        // Perplexities 1 and 100: geometric mean 10; the band is ± one sd of the log, so it
        // stays above 0 and its ends multiply to the mean squared.
        let s = log_band_series("x", "#000", &[vec![1.0], vec![100.0]]);
        assert!((s.points[0].1 - 10.0).abs() < 1e-9);
        let (_, lo, hi) = s.band.unwrap()[0];
        let sd = 2f64.sqrt() * 10f64.ln();
        assert!((lo - 10.0 * (-sd).exp()).abs() < 1e-9 && lo > 0.0);
        assert!((lo * hi - 100.0).abs() < 1e-9);
    }

    #[test]
    fn verdicts_follow_the_better_direction() {
        let p = |diff: f64, ci_low: f64, ci_high: f64| Paired {
            n: 8,
            base_mean: 1.0,
            base_sd: 0.1,
            arm_mean: 1.0 + diff,
            arm_sd: 0.1,
            diff,
            ci_low,
            ci_high,
        };
        assert_eq!(Better::Lower.verdict(&p(-0.5, -0.8, -0.2)), Some("better"));
        assert_eq!(Better::Lower.verdict(&p(0.5, 0.2, 0.8)), Some("worse"));
        assert_eq!(Better::Higher.verdict(&p(0.5, 0.2, 0.8)), Some("better"));
        assert_eq!(Better::Neither.verdict(&p(0.5, 0.2, 0.8)), Some("changed"));
        assert_eq!(Better::Lower.verdict(&p(0.5, -0.1, 0.8)), None);
    }

    #[test]
    fn bands_follow_the_runs_that_reach_each_position() {
        let s = band_series("x", "#000", &[vec![1.0, 2.0, 5.0], vec![3.0, 4.0]]);
        assert_eq!(s.points, vec![(0.0, 2.0), (1.0, 3.0), (2.0, 5.0)]);
        let sd = 2f64.sqrt();
        assert_eq!(s.band.unwrap(), vec![(0.0, 2.0 - sd, 2.0 + sd), (1.0, 3.0 - sd, 3.0 + sd)]);
    }
}
