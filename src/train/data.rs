//! Fine-tuning data: rows of `seq_len + 1` token ids, where a row's first `seq_len` ids
//! are the inputs and its last `seq_len` ids the targets (the inputs shifted by one).
//!
//! Two file formats, chosen by extension:
//! - `.jsonl`: one row per non-blank line, either `{"ids": [...]}` with exactly `seq_len + 1`
//!   ids, every target trained; or `{"messages": [...]}`, a conversation rendered with the
//!   model's chat template, cut or padded to `seq_len + 1` ids, whose targets are only the
//!   tokens of its assistant messages (TRL's `assistant_only_loss`): each assistant message's
//!   span from after its turn's opening to its end-of-turn token included.
//! - anything else: UTF-8 text, tokenized whole and cut into consecutive, non-overlapping
//!   windows of `seq_len + 1` ids (stride `seq_len + 1`); a tail too short for a window is
//!   dropped. Windows do not overlap so that no target is trained twice per epoch; the id
//!   at a window's boundary is therefore only ever a target, never an input.
//!
//! Batches are a pure function of (step, seed), so a run resumed at step N sees exactly
//! the batches an uninterrupted run would have seen from step N on.

use crate::chat::ChatTemplate;
use crate::rng::Rng;
use crate::tokenize::Tokenizer;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::path::Path;

pub struct TrainData {
    /// Each row holds `seq_len + 1` ids.
    rows: Vec<Vec<u32>>,
    /// Per row, which of its `seq_len` targets count in the loss; empty when all do.
    trained: Vec<Vec<bool>>,
    seq_len: usize,
}

/// One training row as the trainer reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row<'a> {
    /// `seq_len + 1` ids: the inputs are the first `seq_len`, the targets the last `seq_len`.
    pub ids: &'a [u32],
    /// Per target, whether it counts in the loss; None when all do.
    pub trained: Option<&'a [bool]>,
}

impl<'a> From<&'a [u32]> for Row<'a> {
    fn from(ids: &'a [u32]) -> Row<'a> {
        Row { ids, trained: None }
    }
}

impl Row<'_> {
    /// How many targets count in the loss.
    pub fn targets(&self) -> usize {
        self.trained.map_or(self.ids.len().saturating_sub(1), |t| t.iter().filter(|&&x| x).count())
    }
}

impl TrainData {
    /// Reads `path` as described in the module docs; ids must be below `vocab`. `chat` is the
    /// model's chat template, which `{"messages": [...]}` rows need.
    pub fn from_file(
        path: &Path,
        tokenizer: &Tokenizer,
        chat: Option<&ChatTemplate>,
        seq_len: usize,
        vocab: usize,
    ) -> Result<TrainData> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).with_context(|| format!("{file}: cannot read"))?;
        let jsonl = path.extension().is_some_and(|e| e == "jsonl");
        TrainData::from_bytes(bytes, &file, jsonl, tokenizer, chat, seq_len, vocab)
    }

    /// Reads a data file's contents: `.jsonl` rows when `jsonl`, else text; `file` names it
    /// in errors.
    pub fn from_bytes(
        bytes: Vec<u8>,
        file: &str,
        jsonl: bool,
        tokenizer: &Tokenizer,
        chat: Option<&ChatTemplate>,
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
        if !jsonl {
            let rows = pack_text(text, file, tokenizer, seq_len, vocab)?;
            return Ok(TrainData { rows, trained: Vec::new(), seq_len });
        }
        let rows = parse_jsonl(text, file, tokenizer, chat, seq_len, vocab)?;
        let trained = if rows.iter().all(|(_, t)| t.is_none()) {
            Vec::new()
        } else {
            rows.iter().map(|(_, t)| t.clone().unwrap_or_else(|| vec![true; seq_len])).collect()
        };
        Ok(TrainData { rows: rows.into_iter().map(|(ids, _)| ids).collect(), trained, seq_len })
    }

    /// Rows already tokenized; each must hold `seq_len + 1` ids.
    pub fn from_rows(rows: Vec<Vec<u32>>, seq_len: usize) -> Result<TrainData> {
        ensure!(seq_len >= 1, "--seq-len must be at least 1, got {seq_len}");
        ensure!(!rows.is_empty(), "no rows of training data");
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != seq_len + 1) {
            bail!("row {i} has {} ids; expected seq_len + 1 = {}", r.len(), seq_len + 1);
        }
        Ok(TrainData { rows, trained: Vec::new(), seq_len })
    }

    /// Row `i` as the trainer reads it.
    fn row(&self, i: usize) -> Row<'_> {
        Row { ids: &self.rows[i], trained: self.trained.get(i).map(Vec::as_slice) }
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
        let trained = if self.trained.is_empty() { Vec::new() } else { self.trained.split_off(n - n_val) };
        Ok(TrainData { rows: val, trained, seq_len: self.seq_len })
    }

    /// The rows of training step `step`: positions `step * batch ..` in an endless
    /// sequence of epochs, each epoch using every row once. Without `shuffle` an epoch is
    /// file order; with it, a Fisher–Yates permutation seeded by (`seed`, epoch). A batch
    /// larger than the data, or straddling an epoch's end, continues into the next epoch.
    pub fn batch(&self, step: usize, batch: usize, shuffle: bool, seed: u64) -> Vec<Row<'_>> {
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
            out.push(self.row(row));
        }
        out
    }

    /// All rows in order, in batches of `batch` (at least 1); the last may be smaller.
    pub fn val_batches(&self, batch: usize) -> impl Iterator<Item = Vec<Row<'_>>> {
        let indices: Vec<usize> = (0..self.rows.len()).collect();
        let chunks: Vec<Vec<usize>> = indices.chunks(batch.max(1)).map(<[usize]>::to_vec).collect();
        chunks.into_iter().map(|c| c.into_iter().map(|i| self.row(i)).collect())
    }
}

/// A row read from a file: its ids, and per target whether it is trained (None: all are).
type ParsedRow = (Vec<u32>, Option<Vec<bool>>);

/// The rows of a `.jsonl` file.
fn parse_jsonl(
    text: &str,
    file: &str,
    tokenizer: &Tokenizer,
    chat: Option<&ChatTemplate>,
    seq_len: usize,
    vocab: usize,
) -> Result<Vec<ParsedRow>> {
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("{file}:{}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| anyhow!("{at}: not valid JSON ({e})"))?;
        let row = match v.get("messages") {
            Some(messages) => {
                let template = chat.ok_or_else(|| {
                    anyhow!("{at}: a \"messages\" row is rendered with the model's chat template, and the model has none")
                })?;
                Some(chat_row(messages, template, tokenizer, &at, seq_len, vocab)?)
            }
            None => ids_row(&v, &at, seq_len, vocab)?.map(|ids| (ids, None)),
        };
        rows.push(row.ok_or_else(|| {
            anyhow!(
                "{at}: expected an object with an \"ids\" array of token ids or a \"messages\" conversation"
            )
        })?);
    }
    ensure!(!rows.is_empty(), "{file}: no rows; every line is blank");
    Ok(rows)
}

/// An `{"ids": [...]}` row, or None where the line has no "ids".
fn ids_row(v: &Value, at: &str, seq_len: usize, vocab: usize) -> Result<Option<Vec<u32>>> {
    let want = seq_len + 1;
    let Some(ids) = v.get("ids") else { return Ok(None) };
    let ids = ids.as_array().ok_or_else(|| anyhow!("{at}: \"ids\" must be an array of token ids"))?;
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
    Ok(Some(row))
}

/// A `{"messages": [...]}` row: the conversation's ids cut or padded to `seq_len + 1`, and
/// per target whether it is an assistant token (padding is never trained).
fn chat_row(
    messages: &Value,
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    at: &str,
    seq_len: usize,
    vocab: usize,
) -> Result<ParsedRow> {
    let messages = messages.as_array().ok_or_else(|| anyhow!("{at}: \"messages\" must be an array"))?;
    crate::chat::check_messages(messages).with_context(|| at.to_string())?;
    let (mut ids, mut assistant) =
        assistant_mask(template, tokenizer, messages).with_context(|| at.to_string())?;
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        bail!("{at}: the tokenizer produced id {id}, but the model's vocabulary has only {vocab} ids");
    }
    let want = seq_len + 1;
    ids.resize(want, 0);
    assistant.resize(want, false);
    // Target t is the id at t + 1.
    let trained = assistant[1..].to_vec();
    ensure!(
        trained.contains(&true),
        "{at}: no assistant token within the first --seq-len + 1 = {want} tokens, so nothing to train on"
    );
    Ok((ids, Some(trained)))
}

/// The conversation's ids (rendered without a generation prompt) and which of them belong to
/// an assistant message's span: from the end of the rendering of the messages before it with
/// the generation prompt (the assistant turn's opening) to the end of its own rendering, cut
/// after the template's end-of-turn token (`eos_token`) where the span holds it (what follows
/// it, a newline, opens the next turn).
pub fn assistant_mask(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    messages: &[Value],
) -> Result<(Vec<u32>, Vec<bool>)> {
    let text = template.render(messages, false, None)?;
    let mut spans = Vec::new();
    for i in (0..messages.len()).filter(|&i| messages[i]["role"] == json!("assistant")) {
        let start = template.render(&messages[..i], true, None)?;
        let through = template.render(&messages[..=i], false, None)?;
        ensure!(
            text.starts_with(&start) && text.starts_with(&through) && through.len() >= start.len(),
            "the chat template does not render message {i} as a continuation of the messages before it, \
             so its span cannot be found"
        );
        let span = &text[start.len()..through.len()];
        let end = match template
            .special_token("eos_token")
            .and_then(|eos| span.rfind(eos).map(|at| at + eos.len()))
        {
            Some(end) => start.len() + end,
            None => through.len(),
        };
        spans.push(start.len()..end);
    }
    let tokens = tokenizer.encode_plain_with_offsets(&text)?;
    let ids = tokens.iter().map(|&(id, _)| id).collect();
    let mask = tokens.iter().map(|&(_, (from, _))| spans.iter().any(|s| s.contains(&from))).collect();
    Ok((ids, mask))
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
            let data =
                TrainData::from_bytes(b"a b".to_vec(), "d", jsonl, &any_tokenizer(), None, usize::MAX, 2);
            data.err().expect("refused").to_string()
        };
        assert_eq!(err(false), format!("--seq-len {} is too large", usize::MAX));
        assert_eq!(err(true), format!("--seq-len {} is too large", usize::MAX));
    }

    fn jsonl_err(contents: &str, seq_len: usize, vocab: usize) -> String {
        let dir = TempDir::new("err");
        let p = dir.file("d.jsonl", contents.as_bytes());
        let e = TrainData::from_file(&p, &any_tokenizer(), None, seq_len, vocab).err().expect("should fail");
        format!("{e:#}")
    }

    #[test]
    fn jsonl_rows_parse_skipping_blank_lines() {
        let dir = TempDir::new("jsonl");
        let p = dir.file("d.jsonl", b"{\"ids\": [1, 2, 3]}\n\n  \n{\"ids\":[4,5,6], \"note\": 1}\n");
        let d = TrainData::from_file(&p, &any_tokenizer(), None, 2, 10).unwrap();
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
        let e = format!("{:#}", TrainData::from_file(&p, &any_tokenizer(), None, 2, 10).err().unwrap());
        assert!(e.contains("d.jsonl:2:") && e.contains("not UTF-8"), "{e}");
        let missing = dir.0.join("missing.jsonl");
        let e = format!("{:#}", TrainData::from_file(&missing, &any_tokenizer(), None, 2, 10).err().unwrap());
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
        let d = TrainData::from_file(&p, &tok, None, seq_len, 512).unwrap();
        assert_eq!(d.len(), ids.len() / (seq_len + 1));
        assert!(ids.len() % (seq_len + 1) != 0, "pick a text whose tail is dropped");
        for (r, row) in d.rows.iter().enumerate() {
            assert_eq!(row.as_slice(), &ids[r * (seq_len + 1)..(r + 1) * (seq_len + 1)]);
        }
        // Too little text for one row names both counts.
        let e = format!("{:#}", TrainData::from_file(&p, &tok, None, ids.len(), 512).err().unwrap());
        let want = format!("{} tokens, but one row needs seq_len + 1 = {} tokens", ids.len(), ids.len() + 1);
        assert!(e.contains("story.txt") && e.contains(&want), "{e}");
        // Ids the model cannot embed are refused.
        let e = format!("{:#}", TrainData::from_file(&p, &tok, None, seq_len, 3).err().unwrap());
        assert!(e.contains("story.txt") && e.contains("vocabulary has only 3"), "{e}");
    }

    /// SmolLM2's template on transformers' renderings (the golden ids): the trained tokens
    /// are those after each "<|im_start|>assistant\n" through the <|im_end|> closing the turn.
    #[test]
    fn chat_mask_covers_the_assistant_turns_of_transformers_ids() {
        let (Some(dir), Some(golden)) =
            (crate::testing::model("smollm2-135m-instruct"), crate::testing::golden("chat-smollm2"))
        else {
            return;
        };
        let json = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
        let tok = Tokenizer::from_json(&json, "tokenizer.json").unwrap();
        let template = ChatTemplate::for_model(&dir, &|id| tok.token_text(id)).unwrap().unwrap();
        let cases = golden["templates"]["smollm2-135m-instruct"]["cases"].as_array().unwrap();
        let ids_of = |case: &Value| -> Vec<u32> {
            case["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
        };
        let (im_start, im_end) = (tok.token_id("<|im_start|>").unwrap(), tok.token_id("<|im_end|>").unwrap());
        // A generation prompt's ids end with the assistant turn's opening.
        let prompt = ids_of(&cases[0]);
        let opening = &prompt[prompt.iter().rposition(|&x| x == im_start).unwrap()..];
        let mut with_assistant = 0;
        for case in cases.iter().filter(|c| c["add_generation_prompt"] == json!(false)) {
            let want_ids = ids_of(case);
            let mut want = vec![false; want_ids.len()];
            let mut i = 0;
            while i + opening.len() <= want_ids.len() {
                if want_ids[i..i + opening.len()] == *opening {
                    let start = i + opening.len();
                    let end = start + want_ids[start..].iter().position(|&x| x == im_end).unwrap();
                    want[start..=end].iter_mut().for_each(|w| *w = true);
                    i = end;
                }
                i += 1;
            }
            let (ids, mask) = assistant_mask(&template, &tok, case["messages"].as_array().unwrap()).unwrap();
            assert_eq!(ids, want_ids, "{}", case["messages"]);
            assert_eq!(mask, want, "{}", case["messages"]);
            with_assistant += want.contains(&true) as usize;
        }
        assert_eq!(with_assistant, 2, "two golden conversations hold an assistant turn");
        // As rows: padded with untrained targets, and refused when cut before any assistant token.
        let case = cases
            .iter()
            .find(|c| c["add_generation_prompt"] == json!(false) && c["ids"].as_array().unwrap().len() == 63)
            .unwrap();
        let (_, mask) = assistant_mask(&template, &tok, case["messages"].as_array().unwrap()).unwrap();
        let (ids, trained) = chat_row(&case["messages"], &template, &tok, "d.jsonl:1", 70, 49152).unwrap();
        assert_eq!((ids.len(), ids[63..].iter().all(|&x| x == 0)), (71, true));
        assert_eq!(trained.unwrap(), [&mask[1..], &[false; 8][..]].concat());
        let first = mask.iter().position(|&m| m).unwrap();
        let e = chat_row(&case["messages"], &template, &tok, "d.jsonl:1", first - 1, 49152)
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.jsonl:1: no assistant token within the first"), "{e}");
    }

    fn numbered(n: usize) -> TrainData {
        TrainData::from_rows((0..n as u32).map(|i| vec![i, i]).collect(), 1).unwrap()
    }

    fn firsts(b: Vec<Row>) -> Vec<u32> {
        b.iter().map(|r| r.ids[0]).collect()
    }

    /// The golden run's setup: two rows, batch 2, no shuffle, so every step sees [0, 1].
    #[test]
    fn two_rows_batch_two_unshuffled_is_the_same_every_step() {
        let dir = TempDir::new("golden");
        let p = dir.file("two.jsonl", b"{\"ids\": [5, 6, 7]}\n{\"ids\": [8, 9, 1]}\n");
        let d = TrainData::from_file(&p, &any_tokenizer(), None, 2, 10).unwrap();
        for step in [0, 1, 2, 7, 1000] {
            assert_eq!(d.batch(step, 2, false, 123), vec![(&[5, 6, 7][..]).into(), (&[8, 9, 1][..]).into()]);
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
