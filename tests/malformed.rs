//! Malformed models made from the real fixtures, each through the `keel` binary: exit code
//! 2, one `error: ` line naming the file or tensor and what was expected, within a second of
//! CPU time, and peak memory under four times the model's size plus a fixed allowance.
//! These complement tests/cli.rs (which has stories260k's header, truncation, overlap,
//! dtype, overflow, NaN, tokenizer and GGUF tensor-count cases) with the other fixtures and
//! the remaining kinds of damage. The CPU time, not the wall time, is what is bounded: the
//! wall time of a test on a loaded machine says little about the program.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Memory a refusal may use beyond four times the model's size: the binary, its libraries,
/// the allocator's arenas. Also the bound on this test process's own peak, which a child's
/// peak includes (see [`refused`]): with the tests' fixture copies in flight at once it
/// reached 72 MiB on the CI machine.
const FIXED_MEMORY: u64 = 96 << 20;
/// CPU time a refusal may take.
const CPU_BUDGET: Duration = Duration::from_secs(1);

/// Bytes of a model file, or of all files in a model folder.
fn size_of(path: &Path) -> u64 {
    if path.is_file() {
        return path.metadata().unwrap().len();
    }
    std::fs::read_dir(path).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum()
}

/// This test process's own peak resident memory, in bytes.
fn own_peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).expect("VmHWM in /proc/self/status");
    kb.trim().trim_end_matches(" kB").parse::<u64>().unwrap() * 1024
}

/// `keel generate` on `model` is refused with one line holding every needle, cheaply.
///
/// Linux reports a child's peak memory as at least its parent's peak at the time of the
/// spawn (the high-water mark carries across fork and exec), so the tests keep this
/// process small (no model is ever read whole into it) and check that it is.
fn refused(model: &Path, needles: &[&str]) {
    let m = model.to_str().unwrap();
    let (_, run) = fails_with(&["generate", "--model", m, "--prompt", "Hi", "--max-tokens", "1"], needles);
    eprintln!("  cpu {:.3}s, peak {} MiB", run.cpu.as_secs_f64(), run.peak_rss >> 20);
    assert!(run.cpu < CPU_BUDGET, "{m}: refusal took {:?} of CPU", run.cpu);
    let bound = 4 * size_of(model) + FIXED_MEMORY;
    assert!(own_peak_rss() < FIXED_MEMORY, "the test process itself peaked at {} bytes", own_peak_rss());
    assert!(run.peak_rss < bound, "{m}: peak memory {} bytes, over {bound}", run.peak_rss);
}

/// A copy of fixture `name` with `edit` applied to its model.safetensors.
fn edited(name: &str, edit: impl FnOnce(&mut Safetensors)) -> Option<TempDir> {
    let src = keel::testing::model(name)?;
    Some(edited_stories(name, &src, edit))
}

/// A copy of fixture `name` whose model.safetensors is replaced by `f` of its bytes.
fn rewritten(name: &str, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Option<TempDir> {
    let src = keel::testing::model(name)?;
    let t = TempDir::stories(name, &src);
    let bytes = std::fs::read(t.path("model.safetensors")).unwrap();
    std::fs::write(t.path("model.safetensors"), f(bytes)).unwrap();
    Some(t)
}

/// A copy of fixture `name` with `edit` applied to its JSON file `file`.
fn json_edited(name: &str, file: &str, edit: impl FnOnce(&mut Value)) -> Option<TempDir> {
    let src = keel::testing::model(name)?;
    let t = TempDir::stories(name, &src);
    t.edit_json(file, edit);
    Some(t)
}

fn header_end(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

// ---------------------------------------------------------------------------------------
// safetensors framing (tiny-qwen2, tiny-gpt2: F16 files)

#[test]
fn truncated_inside_the_header_length() {
    let Some(t) = rewritten("tiny-qwen2", |b| b[..3].to_vec()) else { return };
    refused(&t.0, &["model.safetensors", "3 bytes is too short for a safetensors header"]);
}

#[test]
fn truncated_inside_the_header() {
    let Some(t) = rewritten("tiny-qwen2", |b| b[..header_end(&b) / 2].to_vec()) else { return };
    refused(&t.0, &["model.safetensors", "runs past the end of the file"]);
}

#[test]
fn truncated_inside_a_tensor() {
    let Some(t) = rewritten("tiny-gpt2", |b| b[..b.len() - 4097].to_vec()) else { return };
    refused(&t.0, &["model.safetensors", "runs past the end of the data", "truncated"]);
}

#[test]
fn truncated_right_after_the_header() {
    let Some(t) = rewritten("tiny-gpt2", |b| b[..header_end(&b)].to_vec()) else { return };
    refused(&t.0, &["model.safetensors", "runs past the end of the data (0 bytes)"]);
}

#[test]
fn header_length_zero() {
    let Some(t) = rewritten("tiny-qwen2", |mut b| {
        b[..8].copy_from_slice(&0u64.to_le_bytes());
        b
    }) else {
        return;
    };
    refused(&t.0, &["model.safetensors", "the header is not a JSON object"]);
}

#[test]
fn header_length_one_byte_short() {
    let Some(t) = rewritten("tiny-qwen2", |mut b| {
        let n = header_end(&b) as u64 - 8;
        // The header is padded with spaces; cut into the JSON itself.
        let json_len = b[8..8 + n as usize].iter().rposition(|&c| c == b'}').unwrap() as u64;
        b[..8].copy_from_slice(&json_len.to_le_bytes());
        b
    }) else {
        return;
    };
    refused(&t.0, &["model.safetensors", "the header is not a JSON object"]);
}

#[test]
fn data_offsets_reversed() {
    let Some(t) = edited("tiny-qwen2", |st| {
        let r = st.range("model.norm.weight");
        st.header["model.norm.weight"]["data_offsets"] = json!([r.end, r.start]);
    }) else {
        return;
    };
    refused(&t.0, &["model.safetensors", "'model.norm.weight'", "needs 128 bytes", "data_offsets"]);
}

#[test]
fn last_tensor_past_the_end_of_the_data() {
    let Some(t) = edited("tiny-qwen2", |st| {
        let r = st.range("model.norm.weight");
        st.data.truncate(r.start + 64);
    }) else {
        return;
    };
    refused(&t.0, &["model.safetensors", "'model.norm.weight'", "runs past the end of the data"]);
}

#[test]
fn bytes_after_the_last_tensor() {
    let Some(t) = edited("tiny-gpt2", |st| st.data.extend([0u8; 12])) else { return };
    refused(&t.0, &["model.safetensors", "12 bytes after the last tensor belong to no tensor"]);
}

#[test]
fn shape_is_not_a_list() {
    let Some(t) = edited("tiny-gpt2", |st| st.header["transformer.ln_f.bias"]["shape"] = json!("64")) else {
        return;
    };
    refused(&t.0, &["model.safetensors", "tensor 'transformer.ln_f.bias'"]);
}

#[test]
fn negative_dimension() {
    let Some(t) = edited("tiny-gpt2", |st| st.header["transformer.ln_f.bias"]["shape"] = json!([-64])) else {
        return;
    };
    refused(&t.0, &["model.safetensors", "tensor 'transformer.ln_f.bias'"]);
}

#[test]
fn unknown_dtype() {
    let Some(t) = edited("tiny-gpt2", |st| st.header["transformer.ln_f.bias"]["dtype"] = json!("F12")) else {
        return;
    };
    refused(&t.0, &["model.safetensors", "tensor 'transformer.ln_f.bias'"]);
}

#[test]
fn infinite_weight() {
    let name = "transformer.h.1.mlp.c_fc.weight";
    let Some(t) = edited("tiny-gpt2", |st| {
        let at = st.range(name).start + 2 * 100;
        st.data[at..at + 2].copy_from_slice(&0x7c00u16.to_le_bytes()); // f16 +inf
    }) else {
        return;
    };
    refused(&t.0, &["model.safetensors", &format!("'{name}' holds a non-finite value (inf) at element 100")]);
}

/// The counterpart of tests/cli.rs's tokenizer id beyond the embedding: an embedding padded
/// past the tokenizer's ids (as many checkpoints are, to a multiple of 64) is fine.
#[test]
fn embedding_padded_past_the_tokenizer_loads() {
    let name = "model.embed_tokens.weight";
    let Some(t) = edited("stories260k", |st| {
        let r = st.range(name);
        assert_eq!(r.start, 0, "the embedding is the first tensor");
        let pad = 64 * 64 * 4;
        for info in st.header.values_mut() {
            if let Some(o) = info.get_mut("data_offsets") {
                let (a, b) = (o[0].as_u64().unwrap(), o[1].as_u64().unwrap());
                *o = if a == 0 { json!([0, b + pad]) } else { json!([a + pad, b + pad]) };
            }
        }
        st.header[name]["shape"] = json!([576, 64]);
        st.data.splice(r.end..r.end, vec![0u8; pad as usize]);
    }) else {
        return;
    };
    t.edit_json("config.json", |v| v["vocab_size"] = json!(576));
    let out = succeeds(&[
        "generate",
        "--model",
        t.arg(),
        "--prompt",
        "Once upon a time",
        "--max-tokens",
        "3",
        "--temperature",
        "0",
    ]);
    assert!(!out.trim().is_empty(), "no text generated");
}

// ---------------------------------------------------------------------------------------
// config.json and generation_config.json

#[test]
fn zero_heads() {
    let Some(t) = json_edited("tiny-qwen2", "config.json", |v| v["num_attention_heads"] = json!(0)) else {
        return;
    };
    refused(&t.0, &["config.json", "'num_attention_heads' must be a positive integer"]);
}

#[test]
fn negative_heads() {
    let Some(t) = json_edited("stories260k", "config.json", |v| v["num_attention_heads"] = json!(-8)) else {
        return;
    };
    refused(&t.0, &["config.json", "'num_attention_heads' must be a positive integer", "got -8"]);
}

#[test]
fn heads_not_dividing_hidden() {
    let Some(t) = json_edited("tiny-qwen2", "config.json", |v| v["num_attention_heads"] = json!(6)) else {
        return;
    };
    refused(&t.0, &["config.json", "hidden_size 64 is not a multiple of num_attention_heads 6"]);
}

#[test]
fn kv_heads_not_dividing_heads() {
    let Some(t) = json_edited("stories260k", "config.json", |v| v["num_key_value_heads"] = json!(3)) else {
        return;
    };
    refused(&t.0, &["config.json", "num_attention_heads 8 is not a multiple of num_key_value_heads 3"]);
}

#[test]
fn gpt2_heads_not_dividing_width() {
    let Some(t) = json_edited("tiny-gpt2", "config.json", |v| v["n_head"] = json!(6)) else { return };
    refused(&t.0, &["config.json", "n_embd 64 is not a multiple of n_head 6"]);
}

#[test]
fn vocab_size_2_pow_40() {
    let Some(t) = json_edited("stories260k", "config.json", |v| v["vocab_size"] = json!(1u64 << 40)) else {
        return;
    };
    refused(&t.0, &["config.json", "'vocab_size' must be a positive integer below 2^31"]);
}

#[test]
fn gemma3_unknown_layer_type() {
    let Some(t) =
        json_edited("tiny-gemma3", "config.json", |v| v["layer_types"][2] = json!("chunked_attention"))
    else {
        return;
    };
    let needle =
        "layer_types[2] is \"chunked_attention\"; Keel knows 'full_attention' and 'sliding_attention'";
    refused(&t.0, &["config.json", needle]);
}

#[test]
fn gemma3_unknown_rope_type() {
    let Some(t) = json_edited("tiny-gemma3", "config.json", |v| {
        v["rope_parameters"]["full_attention"]["rope_type"] = json!("yarn")
    }) else {
        return;
    };
    refused(&t.0, &["config.json", "rope_parameters.full_attention.rope_type 'yarn' is not supported"]);
}

#[test]
fn config_is_a_list() {
    let Some(t) = json_edited("tiny-gpt2", "config.json", |v| *v = json!([v.clone()])) else { return };
    refused(&t.0, &["config.json", "expected a JSON object"]);
}

#[test]
fn generation_config_not_json() {
    let Some(src) = keel::testing::model("tiny-qwen2") else { return };
    let t = TempDir::stories("genjson", &src);
    std::fs::write(t.path("generation_config.json"), "{\"eos_token_id\": [2,").unwrap();
    refused(&t.0, &["generation_config.json", "not valid JSON"]);
}

// ---------------------------------------------------------------------------------------
// Sharded safetensors: model.safetensors.index.json

/// stories260k as one shard named `shard` with an index whose weight map is `weight_map`
/// (None: every tensor in `shard`).
fn sharded(tag: &str, shard: &str, weight_map: Option<Value>) -> Option<TempDir> {
    let src = stories()?;
    let t = TempDir::stories(tag, &src);
    std::fs::rename(t.path("model.safetensors"), t.path(shard)).unwrap();
    let names = Safetensors::read(&src.join("model.safetensors")).header;
    let all: serde_json::Map<String, Value> =
        names.keys().filter(|k| *k != "__metadata__").map(|k| (k.clone(), json!(shard))).collect();
    let index = json!({"metadata": {}, "weight_map": weight_map.unwrap_or(Value::Object(all))});
    std::fs::write(t.path("model.safetensors.index.json"), index.to_string()).unwrap();
    Some(t)
}

#[test]
fn shard_path_outside_the_folder() {
    let Some(t) = sharded("traversal", "model-1.safetensors", None) else { return };
    t.edit_json("model.safetensors.index.json", |v| {
        v["weight_map"]["model.norm.weight"] = json!("../../etc/passwd");
    });
    refused(
        &t.0,
        &["model.safetensors.index.json", "shard name '../../etc/passwd' must be a plain file name"],
    );
}

#[test]
fn shard_file_missing() {
    let Some(t) = sharded("noshard", "model-1.safetensors", None) else { return };
    t.edit_json("model.safetensors.index.json", |v| {
        v["weight_map"]["model.norm.weight"] = json!("model-2.safetensors");
    });
    refused(&t.0, &["model-2.safetensors", "cannot read"]);
}

#[test]
fn index_without_weight_map() {
    let Some(t) = sharded("nomap", "model-1.safetensors", Some(json!(["model-1.safetensors"]))) else {
        return;
    };
    refused(&t.0, &["model.safetensors.index.json", "no 'weight_map' object"]);
}

// ---------------------------------------------------------------------------------------
// GGUF: the SmolLM2 Q4_1 file, patched

fn smollm2_gguf() -> Option<PathBuf> {
    fixture("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The first `len` bytes (all if None) of the SmolLM2 GGUF as `name` in a temporary folder,
/// with `patch` applied: (offset, bytes) pairs computed from the file's first 2 MiB (which
/// hold its header: the metadata, vocabulary included, and the tensor table). Copied and
/// patched in place, so this process never holds the file (see [`refused`] on why its memory
/// matters).
fn patched_gguf(
    name: &str,
    len: Option<u64>,
    patch: impl FnOnce(&[u8]) -> Vec<(usize, Vec<u8>)>,
) -> Option<(TempDir, PathBuf)> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let src = smollm2_gguf()?;
    let t = TempDir::new("gguf");
    let path = t.path(name);
    std::fs::copy(&src, &path).unwrap();
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    if let Some(len) = len {
        f.set_len(len).unwrap();
    }
    let mut head = Vec::new();
    (&f).take(2 << 20).read_to_end(&mut head).unwrap();
    for (at, bytes) in patch(&head) {
        f.seek(SeekFrom::Start(at as u64)).unwrap();
        f.write_all(&bytes).unwrap();
    }
    Some((t, path))
}

/// Where the u32 value of metadata key `key` starts (its key string, then type 4).
fn u32_value_at(bytes: &[u8], key: &str) -> usize {
    let pattern = [&(key.len() as u64).to_le_bytes()[..], key.as_bytes(), &4u32.to_le_bytes()].concat();
    bytes.windows(pattern.len()).position(|w| w == pattern).expect("key present") + pattern.len()
}

#[test]
fn gguf_string_length_2_pow_62() {
    // The first metadata key's length (offset 24, after magic, version and two counts).
    let Some((_t, path)) =
        patched_gguf("longkey.gguf", Some(1 << 16), |_| vec![(24, (1u64 << 62).to_le_bytes().to_vec())])
    else {
        return;
    };
    refused(&path, &["longkey.gguf", "GGUF metadata entry #0: key: count 4611686018427387904"]);
}

#[test]
fn gguf_claiming_2_pow_40_metadata_entries() {
    let Some((_t, path)) =
        patched_gguf("manykeys.gguf", Some(1 << 16), |_| vec![(16, (1u64 << 40).to_le_bytes().to_vec())])
    else {
        return;
    };
    refused(&path, &["manykeys.gguf", "metadata count 1099511627776"]);
}

#[test]
fn gguf_version_4() {
    let Some((_t, path)) = patched_gguf("v4.gguf", Some(1 << 16), |_| vec![(4, vec![4])]) else { return };
    refused(&path, &["v4.gguf", "GGUF version 4 is not supported"]);
}

#[test]
fn gguf_unknown_metadata_value_type() {
    // general.architecture's value type, right after its 20-byte key.
    let Some((_t, path)) = patched_gguf("type.gguf", Some(1 << 16), |_| vec![(52, vec![13])]) else { return };
    refused(&path, &["type.gguf", "GGUF metadata 'general.architecture': unknown metadata value type 13"]);
}

#[test]
fn gguf_zero_heads() {
    let Some((_t, path)) = patched_gguf("zeroheads.gguf", None, |b| {
        vec![(u32_value_at(b, "llama.attention.head_count"), 0u32.to_le_bytes().to_vec())]
    }) else {
        return;
    };
    refused(&path, &["zeroheads.gguf", "head counts must be positive (0 heads"]);
}

#[test]
fn gguf_fewer_layers_than_tensors() {
    let Some((_t, path)) = patched_gguf("layers.gguf", None, |b| {
        vec![(u32_value_at(b, "llama.block_count"), 29u32.to_le_bytes().to_vec())]
    }) else {
        return;
    };
    refused(&path, &["layers.gguf", "tensor 'blk.29.", "layer 29 but the model has 29 layers"]);
}

#[test]
fn gguf_k_quant_rows_not_whole_superblocks() {
    // blk.0.attn_q.weight's type (after its name, dimension count and two dimensions) made
    // Q4_K: its rows of 576 are not whole superblocks of 256.
    let Some((_t, path)) = patched_gguf("q4_k.gguf", None, |b| {
        let name = b"blk.0.attn_q.weight";
        let key = [&(name.len() as u64).to_le_bytes()[..], name].concat();
        let at = b.windows(key.len()).position(|w| w == key).expect("tensor in the table");
        vec![(at + key.len() + 4 + 2 * 8, 12u32.to_le_bytes().to_vec())]
    }) else {
        return;
    };
    refused(
        &path,
        &[
            "q4_k.gguf",
            "GGUF tensor 'blk.0.attn_q.weight': row length 576 is not a multiple of the Q4_K block size 256",
        ],
    );
}

// ---------------------------------------------------------------------------------------
// GPU limits, lowered with KEEL_MAX_BINDING_BYTES so that the fixtures exceed them

#[test]
fn tensor_over_the_binding_limit_is_refused_before_upload() {
    let Some(src) = stories() else { return };
    let m = src.to_str().unwrap();
    let args = ["generate", "--model", m, "--prompt", "Once upon", "--max-tokens", "8", "--temperature", "0"];
    // The embedding, [512, 64] f32 (131072 bytes), goes in row shards, and the text is the same.
    let whole = succeeds(&args);
    let split = keel_env(&args, &[("KEEL_MAX_BINDING_BYTES", "100000")]);
    assert_eq!(split.code, Some(0), "{}", split.stderr);
    assert_eq!(split.stdout, whole);
    // A block's weight is bound whole: the first over the limit refuses the model, before any upload.
    fails_env(
        &args,
        &[("KEEL_MAX_BINDING_BYTES", "60000")],
        &[
            "stories260k: cannot load onto the GPU",
            "tensor 'blocks.0.up' of shape [344, 64] needs 88064 bytes in one binding",
            "max_storage_buffer_binding_size of 60000 bytes (at most 234 rows of it fit)",
        ],
    );
}

#[test]
fn training_batch_over_the_binding_limit_says_what_fits() {
    let Some(src) = stories() else { return };
    let t = TempDir::new("bigbatch");
    std::fs::write(t.path("data.jsonl"), format!("{{\"ids\": {:?}}}\n", vec![1; 33]).repeat(8)).unwrap();
    let (m, data, out) = (src.to_str().unwrap(), t.path("data.jsonl"), t.path("run"));
    let args = ["finetune", "--model", m, "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let mut args = args.to_vec();
    args.extend(["--batch", "8", "--seq-len", "32", "--steps", "1"]);
    // 256 rows: the MLP's [256, 344] activations need 352256 bytes; 131072 hold 95 rows, so
    // the memory plan refuses before allocating and names the batch that fits.
    fails_env(
        &args,
        &[("KEEL_MAX_BINDING_BYTES", "131072")],
        &["needs a binding larger than the adapter's 131072 bytes", "what fits: --batch 2 at --seq-len 32"],
    );
}

#[test]
fn bad_binding_override_is_named() {
    let Some(src) = stories() else { return };
    let args = ["generate", "--model", src.to_str().unwrap(), "--prompt", "Hi", "--max-tokens", "1"];
    fails_env(&args, &[("KEEL_MAX_BINDING_BYTES", "lots")], &["KEEL_MAX_BINDING_BYTES", "'lots'"]);
}

#[test]
fn bad_matrix_tier_is_named() {
    let Some(src) = stories() else { return };
    let args = ["generate", "--model", src.to_str().unwrap(), "--prompt", "Hi", "--max-tokens", "1"];
    fails_env(&args, &[("KEEL_TIER", "fast")], &["KEEL_TIER must be portable, tiled or coop", "'fast'"]);
    fails_with(&["bench", "--matmul", "64,64"], &["--matmul must be M,N,K", "'64,64'"]);
}
