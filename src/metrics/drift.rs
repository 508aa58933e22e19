//! Topic drift by an independent judge: the cosine distances (1 - cosine) between sentence
//! embeddings of a generation's segments, its prompt and each other. The embeddings come from
//! a sentence encoder that is not the generating model (`crate::sentence`), so no arm can
//! flatter itself.

use super::mean;
use serde::{Deserialize, Deserializer, Serialize};

/// Generated tokens per judged segment.
pub const SEGMENT_TOKENS: usize = 64;

/// A generation's drift; each value NaN when the text has fewer than two segments.
/// Written with NaN as null (JSON has no NaN), and read back the same way.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// Mean over the segments after the first of 1 - cos(segment, prompt).
    #[serde(deserialize_with = "nan_if_null")]
    pub prompt: f64,
    /// Mean over the segments after the first of 1 - cos(segment, first segment).
    #[serde(deserialize_with = "nan_if_null")]
    pub topic: f64,
    /// Mean over consecutive segments of 1 - cos(segment, previous segment).
    #[serde(deserialize_with = "nan_if_null")]
    pub consecutive: f64,
}

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Drift {
    /// Not measured (no judge, or too short a text).
    pub const NONE: Drift = Drift { prompt: f64::NAN, topic: f64::NAN, consecutive: f64::NAN };
}

/// The texts of consecutive segments of `len` tokens (`pieces`: each token's text); a
/// trailing segment shorter than half of `len` joins nothing and is dropped, unless it is the
/// only one.
pub fn segments(pieces: &[String], len: usize) -> Vec<String> {
    let mut out: Vec<String> = pieces.chunks(len.max(1)).map(|c| c.concat()).collect();
    let last_len = pieces.len() % len.max(1);
    if out.len() > 1 && last_len > 0 && last_len < len / 2 {
        out.pop();
    }
    out
}

/// The cosine of two embeddings (their dot product when both have unit length).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-12)
}

/// The drift of segment embeddings from the prompt's embedding and from each other.
pub fn drift(prompt: &[f32], segments: &[Vec<f32>]) -> Drift {
    if segments.len() < 2 {
        return Drift::NONE;
    }
    let distance = |a: &[f32], b: &[f32]| 1.0 - cosine(a, b);
    let later = &segments[1..];
    Drift {
        prompt: mean(&later.iter().map(|s| distance(s, prompt)).collect::<Vec<_>>()),
        topic: mean(&later.iter().map(|s| distance(s, &segments[0])).collect::<Vec<_>>()),
        consecutive: mean(&segments.windows(2).map(|w| distance(&w[1], &w[0])).collect::<Vec<_>>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cut_every_len_tokens_and_drop_a_short_tail() {
        let p = |n: usize| (0..n).map(|i| format!("{i} ")).collect::<Vec<_>>();
        assert_eq!(segments(&p(5), 2), ["0 1 ", "2 3 ", "4 "]);
        assert_eq!(segments(&p(9), 4), ["0 1 2 3 ", "4 5 6 7 "]);
        assert_eq!(segments(&p(1), 4), ["0 "]);
    }

    #[test]
    fn drift_is_one_minus_cosine_averaged_over_later_segments() {
        let (x, y) = (vec![1.0f32, 0.0], vec![0.0f32, 1.0]);
        let diag = vec![0.5f32.sqrt(), 0.5f32.sqrt()];
        // Segments x, y, x against the prompt diag: later ones are y (1 - √½) and x (1 - √½).
        let d = drift(&diag, &[x.clone(), y.clone(), x.clone()]);
        let off = 1.0 - 0.5f64.sqrt();
        assert!((d.prompt - off).abs() < 1e-6);
        // From the first segment x: y is 1 away, x 0: mean 0.5; consecutive: 1 and 1.
        assert!((d.topic - 0.5).abs() < 1e-6 && (d.consecutive - 1.0).abs() < 1e-6);
        assert!(drift(&diag, &[x]).topic.is_nan());
    }
}
