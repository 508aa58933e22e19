//! Lexical instability (methods.md section 5): distinct-n and repeated 4-grams over token ids,
//! and sentences: where they end, and their lengths in words.

use super::{mean, sample_sd};
use serde::Serialize;
use std::collections::HashSet;

/// Distinct n-grams over all n-grams of the sequence; NaN when it has none.
pub fn distinct_n(ids: &[u32], n: usize) -> f64 {
    let total = ids.len().saturating_sub(n - 1);
    if ids.len() < n {
        return f64::NAN;
    }
    let unique: HashSet<&[u32]> = ids.windows(n).collect();
    unique.len() as f64 / total as f64
}

/// Fraction of the 4-grams that repeat one seen earlier in the sequence (1 - distinct-4).
pub fn repeated_4gram_rate(ids: &[u32]) -> f64 {
    1.0 - distinct_n(ids, 4)
}

/// Whether a token's text ends a sentence: it ends (after trailing spaces) with `.`, `!` or
/// `?` (optionally followed by a closing quote or bracket), or holds a line break.
fn ends_sentence(text: &str) -> bool {
    if text.contains('\n') {
        return true;
    }
    let t = text.trim_end().trim_end_matches(['"', '\'', ')', ']', '\u{201d}', '\u{2019}']);
    t.ends_with(['.', '!', '?'])
}

/// The sentence index of each token, non-decreasing from 0: a new sentence begins after
/// every token that ends one.
pub fn sentence_of(token_texts: &[String]) -> Vec<u32> {
    let mut s = 0;
    token_texts
        .iter()
        .map(|t| {
            let here = s;
            if ends_sentence(t) {
                s += 1;
            }
            here
        })
        .collect()
}

/// Length in words (whitespace-separated) of each sentence that has any.
pub fn sentence_lengths(token_texts: &[String], sentence_of: &[u32]) -> Vec<usize> {
    let count = sentence_of.last().map_or(0, |&s| s as usize + 1);
    let mut texts = vec![String::new(); count];
    for (t, &s) in token_texts.iter().zip(sentence_of) {
        texts[s as usize].push_str(t);
    }
    texts.iter().map(|t| t.split_whitespace().count()).filter(|&n| n > 0).collect()
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LexicalMetrics {
    pub distinct_1: f64,
    pub distinct_2: f64,
    pub distinct_3: f64,
    pub repeated_4gram_rate: f64,
    pub sentences: usize,
    pub sentence_length_mean: f64,
    /// Sample standard deviation of the sentence lengths.
    pub sentence_length_sd: f64,
}

impl LexicalMetrics {
    pub fn new(ids: &[u32], token_texts: &[String]) -> LexicalMetrics {
        let lengths: Vec<f64> =
            sentence_lengths(token_texts, &sentence_of(token_texts)).into_iter().map(|n| n as f64).collect();
        LexicalMetrics {
            distinct_1: distinct_n(ids, 1),
            distinct_2: distinct_n(ids, 2),
            distinct_3: distinct_n(ids, 3),
            repeated_4gram_rate: repeated_4gram_rate(ids),
            sentences: lengths.len(),
            sentence_length_mean: mean(&lengths),
            sentence_length_sd: sample_sd(&lengths),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn distinct_and_repetition_by_hand() {
        // 1 2 1 2 1 2 3: unigrams {1,2,3} of 7; bigrams 12 21 12 21 12 23 -> {12,21,23} of 6;
        // 4-grams 1212 2121 1212 2123 -> 3 distinct of 4, so one in four repeats.
        let ids = [1, 2, 1, 2, 1, 2, 3];
        assert!((distinct_n(&ids, 1) - 3.0 / 7.0).abs() < 1e-15);
        assert!((distinct_n(&ids, 2) - 0.5).abs() < 1e-15);
        assert!((distinct_n(&ids, 3) - 3.0 / 5.0).abs() < 1e-15);
        assert!((repeated_4gram_rate(&ids) - 0.25).abs() < 1e-15);
        assert!(distinct_n(&[1, 2], 3).is_nan());
        assert_eq!(repeated_4gram_rate(&[5, 6, 7, 8, 9]), 0.0);
    }

    #[test]
    fn sentences_by_hand() {
        let t = texts(&["The", " cat", " sat", ".", " It", " ran", "!\"", " Then", "\n", "Why", "?", " ok"]);
        assert_eq!(sentence_of(&t), vec![0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4]);
        // Sentences: "The cat sat." (3 words) " It ran!\"" (2) " Then\n" (1) "Why?" (1) " ok" (1).
        assert_eq!(sentence_lengths(&t, &sentence_of(&t)), vec![3, 2, 1, 1, 1]);
        let ids: Vec<u32> = (0..t.len() as u32).collect();
        let m = LexicalMetrics::new(&ids, &t);
        assert_eq!(m.sentences, 5);
        assert!((m.sentence_length_mean - 1.6).abs() < 1e-15);
        // Deviations 1.4, 0.4, -0.6 x3: squares 1.96 + 0.16 + 1.08 = 3.2; / 4 = 0.8.
        assert!((m.sentence_length_sd - 0.8f64.sqrt()).abs() < 1e-15);
        // A line of only a newline is a sentence without words and is not counted.
        assert_eq!(sentence_lengths(&texts(&["\n", "a", "."]), &[0, 1, 1]), vec![1]);
    }
}
