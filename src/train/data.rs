//! Fine-tuning data: rows of `seq_len + 1` token ids, where a row's first `seq_len` ids
//! are the inputs and its last `seq_len` ids the targets (the inputs shifted by one).
//!
//! Two file formats, chosen by extension:
//! - `.jsonl`: one row per non-blank line, `{"ids": [...]}` with exactly `seq_len + 1` ids.
//! - anything else: UTF-8 text, tokenized whole and cut into consecutive, non-overlapping
//!   windows of `seq_len + 1` ids (stride `seq_len + 1`); a tail too short for a window is
//!   dropped. Windows do not overlap so that no target is trained twice per epoch; the id
//!   at a window's boundary is therefore only ever a target, never an input.
//!
//! Batches are a pure function of (step, seed), so a run resumed at step N sees exactly
//! the batches an uninterrupted run would have seen from step N on.

use crate::rng::Rng;
use crate::tokenize::Tokenizer;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::path::Path;

pub struct TrainData {
    /// Each row holds `seq_len + 1` ids.
    rows: Vec<Vec<u32>>,
    seq_len: usize,
}

impl TrainData {
    /// Reads `path` as described in the module docs; ids must be below `vocab`.
    pub fn from_file(path: &Path, tokenizer: &Tokenizer, seq_len: usize, vocab: usize) -> Result<TrainData> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).with_context(|| format!("{file}: cannot read"))?;
        let jsonl = path.extension().is_some_and(|e| e == "jsonl");
        TrainData::from_bytes(bytes, &file, jsonl, tokenizer, seq_len, vocab)
    }

    /// Reads a data file's contents: `.jsonl` rows when `jsonl`, else text; `file` names it
    /// in errors.
    pub fn from_bytes(
        bytes: Vec<u8>,
        file: &str,
        jsonl: bool,
        tokenizer: &Tokenizer,
        seq_len: usize,
        vocab: usize,
    ) -> Result<TrainData> {
        ensure!(seq_len >= 1, "--seq-len must be at least 1, got {seq_len}");
        // A row holds seq_len + 1 ids, which must not wrap around.
        ensure!(seq_len < u32::MAX as usize, "--seq-len {seq_len} is too large");
        ensure!(!bytes.is_empty(), "{file}: the file is empty");
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            anyhow!("{file}:{line}: not UTF-8 text (invalid byte at offset {at})")
        })?;
        // Editors on Windows may start a file with a byte-order mark; it is not content.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let rows = if jsonl {
            parse_jsonl(text, file, seq_len, vocab)?
        } else {
            pack_text(text, file, tokenizer, seq_len, vocab)?
        };
        Ok(TrainData { rows, seq_len })
    }

    /// Rows already tokenized; each must hold `seq_len + 1` ids.
    pub fn from_rows(rows: Vec<Vec<u32>>, seq_len: usize) -> Result<TrainData> {
        ensure!(seq_len >= 1, "--seq-len must be at least 1, got {seq_len}");
        ensure!(!rows.is_empty(), "no rows of training data");
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != seq_len + 1) {
            bail!("row {i} has {} ids; expected seq_len + 1 = {}", r.len(), seq_len + 1);
        }
        Ok(TrainData { rows, seq_len })
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Never true for data built by this module; here because `len` is.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Tokens per training sequence (a row holds one more).
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Moves the last `ceil(fraction * len)` rows out into validation data and returns
    /// them. Taking the tail (not a random sample) keeps the split stable across runs and
    /// keeps neighbouring windows of a text on one side.
    pub fn split_validation(&mut self, fraction: f32) -> Result<TrainData> {
        let n = self.rows.len();
        ensure!(
            fraction > 0.0 && fraction < 1.0,
            "--val-fraction must be strictly between 0 and 1, got {fraction}"
        );
        // The f32 is within one part in 2^23 of the decimal the user typed; allowing for
        // that keeps e.g. 0.7 of 10 rows at 7 rather than 8.
        let exact = fraction as f64 * n as f64;
        let n_val = (exact - exact * f32::EPSILON as f64).ceil().max(1.0) as usize;
        ensure!(
            n_val < n,
            "--val-fraction {fraction} of {n} rows leaves no training rows; at least one row must remain on each side"
        );
        let val = self.rows.split_off(n - n_val);
        Ok(TrainData { rows: val, seq_len: self.seq_len })
    }

    /// The rows of training step `step`: positions `step * batch ..` in an endless
    /// sequence of epochs, each epoch using every row once. Without `shuffle` an epoch is
    /// file order; with it, a Fisher–Yates permutation seeded by (`seed`, epoch). A batch
    /// larger than the data, or straddling an epoch's end, continues into the next epoch.
    pub fn batch(&self, step: usize, batch: usize, shuffle: bool, seed: u64) -> Vec<&[u32]> {
        let n = self.rows.len();
        let start = step.saturating_mul(batch);
        let mut out = Vec::with_capacity(batch);
        // The permutation of the epoch last looked at; a batch spans few epochs.
        let mut perm: Option<(usize, Vec<usize>)> = None;
        for pos in start..start.saturating_add(batch) {
            let (epoch, i) = (pos / n, pos % n);
            let row = if shuffle {
                if perm.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    perm = Some((epoch, permutation(n, seed, epoch as u64)));
                }
                perm.as_ref().map_or(i, |(_, p)| p[i])
            } else {
                i
            };
            out.push(self.rows[row].as_slice());
        }
        out
    }

    /// All rows in order, in batches of `batch` (at least 1); the last may be smaller.
    pub fn val_batches(&self, batch: usize) -> impl Iterator<Item = Vec<&[u32]>> {
        self.rows.chunks(batch.max(1)).map(|c| c.iter().map(Vec::as_slice).collect())
    }
}

fn parse_jsonl(text: &str, file: &str, seq_len: usize, vocab: usize) -> Result<Vec<Vec<u32>>> {
    let want = seq_len + 1;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("{file}:{}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| anyhow!("{at}: not valid JSON ({e})"))?;
        let ids = v
            .get("ids")
            .ok_or_else(|| anyhow!("{at}: expected an object with an \"ids\" array of token ids"))?
            .as_array()
            .ok_or_else(|| anyhow!("{at}: \"ids\" must be an array of token ids"))?;
        ensure!(
            ids.len() == want,
            "{at}: \"ids\" has {} ids; expected {want} (--seq-len {seq_len} plus one for the shifted target)",
            ids.len()
        );
        let row = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let id = id
                    .as_u64()
                    .ok_or_else(|| anyhow!("{at}: ids[{i}] is {id}; expected a non-negative integer"))?;
                ensure!(
                    id < vocab as u64,
                    "{at}: ids[{i}] is {id}, out of range for the model's vocabulary of {vocab} (ids 0..={})",
                    vocab.saturating_sub(1)
                );
                Ok(id as u32)
            })
            .collect::<Result<Vec<u32>>>()?;
        rows.push(row);
    }
    ensure!(!rows.is_empty(), "{file}: no rows; every line is blank");
    Ok(rows)
}

pub fn pack_text(
    text: &str,
    file: &str,
    tokenizer: &Tokenizer,
    seq_len: usize,
    vocab: usize,
) -> Result<Vec<Vec<u32>>> {
    let want = seq_len + 1;
    let ids = tokenizer.encode(text).with_context(|| format!("{file}: tokenizing"))?;
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        bail!("{file}: the tokenizer produced id {id}, but the model's vocabulary has only {vocab} ids");
    }
    ensure!(
        ids.len() >= want,
        "{file}: {} tokens, but one row needs seq_len + 1 = {want} tokens (--seq-len {seq_len}); use more text or a smaller --seq-len",
        ids.len()
    );
    Ok(ids.chunks_exact(want).map(<[u32]>::to_vec).collect())
}

/// Epoch `epoch`'s order of `n` rows: a Fisher–Yates shuffle from Keel's generator, seeded
/// by (seed, epoch) mixed so that neighbouring pairs give unrelated streams.
fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31));
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // Multiply-shift: uniform in 0..=i up to a bias under (i + 1) / 2^64.
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A temporary folder removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!("keel-data-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }

        fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, contents).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// stories260k's tokenizer, or None (with a visible note) when the fixture is absent.
    fn stories_tokenizer() -> Option<Tokenizer> {
        let p = crate::testing::fixture("models/stories260k/tokenizer.json")?;
        let json = std::fs::read_to_string(&p).unwrap();
        Some(Tokenizer::from_json(&json, "tokenizer.json").unwrap())
    }

    /// A tokenizer for tests that only read `.jsonl` (which never tokenizes).
    fn any_tokenizer() -> Tokenizer {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"a":0,"b":1},"unk_token":"a"}}"#;
        Tokenizer::from_json(json, "test").unwrap()
    }

    /// A row of `seq_len + 1` ids must not wrap around to an empty row (which panicked in
    /// `chunks_exact(0)`).
    #[test]
    fn seq_len_of_usize_max_is_refused() {
        let err = |jsonl| {
            let data = TrainData::from_bytes(b"a b".to_vec(), "d", jsonl, &any_tokenizer(), usize::MAX, 2);
            data.err().expect("refused").to_string()
        };
        assert_eq!(err(false), format!("--seq-len {} is too large", usize::MAX));
        assert_eq!(err(true), format!("--seq-len {} is too large", usize::MAX));
    }

    fn jsonl_err(contents: &str, seq_len: usize, vocab: usize) -> String {
        let dir = TempDir::new("err");
        let p = dir.file("d.jsonl", contents.as_bytes());
        let e = TrainData::from_file(&p, &any_tokenizer(), seq_len, vocab).err().expect("should fail");
        format!("{e:#}")
    }

    #[test]
    fn jsonl_rows_parse_skipping_blank_lines() {
        let dir = TempDir::new("jsonl");
        let p = dir.file("d.jsonl", b"{\"ids\": [1, 2, 3]}\n\n  \n{\"ids\":[4,5,6], \"note\": 1}\n");
        let d = TrainData::from_file(&p, &any_tokenizer(), 2, 10).unwrap();
        assert_eq!((d.len(), d.seq_len()), (2, 2));
        assert_eq!(d.rows, vec![vec![1, 2, 3], vec![4, 5, 6]]);
    }

    #[test]
    fn jsonl_errors_name_the_line_and_the_problem() {
        let ok = "{\"ids\": [1, 2, 3]}\n";
        let e = jsonl_err(&format!("{ok}\n{{\"ids\": [1, 2,\n"), 2, 10);
        assert!(e.contains("d.jsonl:3:") && e.contains("not valid JSON"), "{e}");
        let e = jsonl_err(&format!("{ok}{{\"tokens\": [1, 2, 3]}}\n"), 2, 10);
        assert!(e.contains("d.jsonl:2:") && e.contains("\"ids\" array"), "{e}");
        let e = jsonl_err("[1, 2, 3]\n", 2, 10);
        assert!(e.contains("d.jsonl:1:") && e.contains("\"ids\" array"), "{e}");
        let e = jsonl_err("{\"ids\": \"1 2 3\"}\n", 2, 10);
        assert!(e.contains("d.jsonl:1:") && e.contains("must be an array"), "{e}");
        let e = jsonl_err(&format!("{ok}{ok}{{\"ids\": [1, 2]}}\n"), 2, 10);
        assert!(
            e.contains("d.jsonl:3:") && e.contains("has 2 ids; expected 3") && e.contains("--seq-len 2"),
            "{e}"
        );
        let e = jsonl_err(&format!("{ok}{{\"ids\": [1, 10, 3]}}\n"), 2, 10);
        assert!(
            e.contains("d.jsonl:2:") && e.contains("ids[1] is 10") && e.contains("vocabulary of 10"),
            "{e}"
        );
        let e = jsonl_err("{\"ids\": [1, -2, 3]}\n", 2, 10);
        assert!(e.contains("ids[1] is -2") && e.contains("non-negative integer"), "{e}");
        let e = jsonl_err("{\"ids\": [1, 2.5, 3]}\n", 2, 10);
        assert!(e.contains("ids[1] is 2.5"), "{e}");
        let e = jsonl_err("\n  \n", 2, 10);
        assert!(e.contains("d.jsonl") && e.contains("no rows"), "{e}");
        let e = jsonl_err("", 2, 10);
        assert!(e.contains("d.jsonl") && e.contains("empty"), "{e}");
        let e = jsonl_err(ok, 0, 10);
        assert!(e.contains("--seq-len"), "{e}");
        let dir = TempDir::new("utf8");
        let p = dir.file("d.jsonl", b"{\"ids\": [1, 2, 3]}\n{\"ids\": [\xff]}\n");
        let e = format!("{:#}", TrainData::from_file(&p, &any_tokenizer(), 2, 10).err().unwrap());
        assert!(e.contains("d.jsonl:2:") && e.contains("not UTF-8"), "{e}");
        let missing = dir.0.join("missing.jsonl");
        let e = format!("{:#}", TrainData::from_file(&missing, &any_tokenizer(), 2, 10).err().unwrap());
        assert!(e.contains("missing.jsonl: cannot read"), "{e}");
    }

    #[test]
    fn text_packs_into_non_overlapping_windows() {
        let Some(tok) = stories_tokenizer() else { return };
        let text = "Once upon a time there was a little girl named Lily. She liked to play outside.";
        let ids = tok.encode(text).unwrap();
        let dir = TempDir::new("text");
        let p = dir.file("story.txt", text.as_bytes());
        let seq_len = 7;
        let d = TrainData::from_file(&p, &tok, seq_len, 512).unwrap();
        assert_eq!(d.len(), ids.len() / (seq_len + 1));
        assert!(ids.len() % (seq_len + 1) != 0, "pick a text whose tail is dropped");
        for (r, row) in d.rows.iter().enumerate() {
            assert_eq!(row.as_slice(), &ids[r * (seq_len + 1)..(r + 1) * (seq_len + 1)]);
        }
        // Too little text for one row names both counts.
        let e = format!("{:#}", TrainData::from_file(&p, &tok, ids.len(), 512).err().unwrap());
        let want = format!("{} tokens, but one row needs seq_len + 1 = {} tokens", ids.len(), ids.len() + 1);
        assert!(e.contains("story.txt") && e.contains(&want), "{e}");
        // Ids the model cannot embed are refused.
        let e = format!("{:#}", TrainData::from_file(&p, &tok, seq_len, 3).err().unwrap());
        assert!(e.contains("story.txt") && e.contains("vocabulary has only 3"), "{e}");
    }

    fn numbered(n: usize) -> TrainData {
        TrainData::from_rows((0..n as u32).map(|i| vec![i, i]).collect(), 1).unwrap()
    }

    fn firsts(b: Vec<&[u32]>) -> Vec<u32> {
        b.iter().map(|r| r[0]).collect()
    }

    /// The golden run's setup: two rows, batch 2, no shuffle, so every step sees [0, 1].
    #[test]
    fn two_rows_batch_two_unshuffled_is_the_same_every_step() {
        let dir = TempDir::new("golden");
        let p = dir.file("two.jsonl", b"{\"ids\": [5, 6, 7]}\n{\"ids\": [8, 9, 1]}\n");
        let d = TrainData::from_file(&p, &any_tokenizer(), 2, 10).unwrap();
        for step in [0, 1, 2, 7, 1000] {
            assert_eq!(d.batch(step, 2, false, 123), vec![&[5, 6, 7][..], &[8, 9, 1][..]]);
        }
    }

    #[test]
    fn unshuffled_batches_wrap_around_in_file_order() {
        let d = numbered(5);
        assert_eq!(firsts(d.batch(0, 2, false, 0)), [0, 1]);
        assert_eq!(firsts(d.batch(1, 2, false, 0)), [2, 3]);
        assert_eq!(firsts(d.batch(2, 2, false, 0)), [4, 0]);
        assert_eq!(firsts(d.batch(3, 2, false, 0)), [1, 2]);
        // A batch larger than the data repeats rows.
        assert_eq!(firsts(d.batch(1, 7, false, 0)), [2, 3, 4, 0, 1, 2, 3]);
        assert!(d.batch(3, 0, false, 0).is_empty());
    }

    #[test]
    fn shuffled_batches_are_a_pure_function_of_step_and_seed() {
        let d = numbered(10);
        // Step by step equals any step asked for alone, as after a resume.
        let all: Vec<Vec<u32>> = (0..15).map(|s| firsts(d.batch(s, 3, true, 42))).collect();
        assert_eq!(firsts(d.batch(11, 3, true, 42)), all[11]);
        assert_eq!(firsts(d.batch(11, 3, true, 42)), firsts(d.batch(11, 3, true, 42)));
        // Every epoch is a permutation of all rows, and epochs differ.
        let flat: Vec<u32> = all.concat();
        let epochs: Vec<Vec<u32>> = flat.chunks(10).take(4).map(<[u32]>::to_vec).collect();
        for e in &epochs {
            let mut s = e.clone();
            s.sort();
            assert_eq!(s, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(epochs[0], epochs[1]);
        assert_ne!(epochs[0], (0..10).collect::<Vec<_>>());
        // Other seeds give other orders.
        let other: Vec<u32> = (0..4).flat_map(|s| firsts(d.batch(s, 10, true, 43))).collect();
        assert_ne!(other[..10], flat[..10]);
        assert_ne!(permutation(10, 0, 0), permutation(10, 1, 0));
        assert_ne!(permutation(10, 0, 0), permutation(10, 0, 1));
    }

    #[test]
    fn validation_takes_the_tail() {
        let mut d = numbered(10);
        let v = d.split_validation(0.25).unwrap();
        assert_eq!((d.len(), v.len(), v.seq_len()), (7, 3, 1));
        assert_eq!(firsts(v.val_batches(2).flatten().collect()), [7, 8, 9]);
        assert_eq!(v.val_batches(2).map(|b| b.len()).collect::<Vec<_>>(), [2, 1]);
        // 0.7 is not exactly representable; it still means 7 of 10.
        assert_eq!(numbered(10).split_validation(0.7).unwrap().len(), 7);
        assert_eq!(numbered(10).split_validation(0.01).unwrap().len(), 1);
        for bad in [0.0, 1.0, -0.5, f32::NAN] {
            let e = numbered(10).split_validation(bad).err().unwrap().to_string();
            assert!(e.contains("--val-fraction"), "{e}");
        }
        let e = numbered(1).split_validation(0.5).err().unwrap().to_string();
        assert!(e.contains("--val-fraction") && e.contains("no training rows"), "{e}");
        assert!(numbered(2).split_validation(0.99).is_err());
    }
}
