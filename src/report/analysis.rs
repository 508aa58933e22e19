//! The MSMA analysis report of one text (`keel analyze`): per layer, each scale's mean
//! successive cosine, the KL divergences between scales, and latent stability.

use super::html::{self, num};
use super::svg::{esc, Chart, Series, PALETTE};
use crate::metrics::latent::LayerLatent;
use crate::metrics::msma::LayerMsma;
use anyhow::Result;
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

pub struct Analysis {
    pub model: String,
    pub text_file: String,
    pub tokens: usize,
    pub sentences: usize,
    pub window: usize,
    pub proj_dim: usize,
    /// The LCM setting the text was read with, if any.
    pub lcm: Option<Value>,
    pub msma: Vec<LayerMsma>,
    pub latent: Vec<LayerLatent>,
}

impl Analysis {
    pub fn json(&self) -> Value {
        json!({
            "model": self.model, "text_file": self.text_file, "tokens": self.tokens,
            "sentences": self.sentences, "window": self.window, "proj_dim": self.proj_dim,
            "lcm": self.lcm, "layers": self.msma.iter().zip(&self.latent).map(|(m, l)| json!({
                "layer": m.layer, "msma": m, "latent": l,
            })).collect::<Vec<_>>(),
        })
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.msma
            .iter()
            .zip(&self.latent)
            .map(|(m, l)| {
                vec![
                    m.layer.to_string(),
                    num(m.local_successive_cosine, 3),
                    num(m.intermediate_successive_cosine, 3),
                    num(m.global_successive_cosine, 3),
                    num(m.kl_local_intermediate, 3),
                    num(m.kl_local_global, 3),
                    num(l.successive_cosine, 3),
                    num(l.stability_index, 3),
                    num(l.projection_error, 3),
                    num(l.coherence, 3),
                ]
            })
            .collect()
    }

    const HEADERS: [&'static str; 10] = [
        "layer",
        "cos local",
        "cos intermediate",
        "cos global",
        "KL local|inter",
        "KL local|global",
        "cos (full width)",
        "stability index",
        "projection error",
        "coherence",
    ];

    pub fn table_text(&self) -> String {
        let mut s = String::new();
        for h in Self::HEADERS {
            let _ = write!(s, "{h:>17}");
        }
        s.push('\n');
        for row in self.rows() {
            for c in row {
                let _ = write!(s, "{c:>17}");
            }
            s.push('\n');
        }
        s
    }

    pub fn chart(&self) -> Chart {
        let line = |name: &str, color: &str, f: fn(&LayerMsma) -> f64| {
            Series::new(name, self.msma.iter().map(|m| (m.layer as f64, f(m))).collect(), color)
        };
        Chart {
            title: "Successive cosine per scale".into(),
            x_label: "block".into(),
            y_label: "mean cosine of successive states".into(),
            series: vec![
                line("local", PALETTE[0], |m| m.local_successive_cosine),
                line(&format!("intermediate ({})", self.window), PALETTE[1], |m| {
                    m.intermediate_successive_cosine
                }),
                line("global", PALETTE[2], |m| m.global_successive_cosine),
            ],
            log_y: false,
        }
    }

    pub fn html(&self) -> String {
        let mut body = format!(
            "<p>Model <b>{}</b>, text <b>{}</b>: {} tokens, {} sentences; intermediate window {} tokens; \
             states projected to {} dimensions for the scales and KL.{}</p>\n",
            esc(&self.model),
            esc(&self.text_file),
            self.tokens,
            self.sentences,
            self.window,
            self.proj_dim,
            self.lcm
                .as_ref()
                .map_or(String::new(), |l| format!(" LCM: <code>{}</code>.", esc(&l.to_string())))
        );
        body.push_str(&html::table(&Self::HEADERS, &self.rows()));
        body.push_str(&self.chart().to_svg());
        html::page("Keel: multi-scale analysis", &body)
    }

    pub fn write_into(&self, dir: &Path) -> Result<()> {
        html::write_report(dir, "analysis", &self.json(), &self.html())
    }
}
