#!/usr/bin/env bash
# The fuzz campaign: builds the cargo-fuzz targets in fuzz/ (installing cargo-fuzz if it is
# missing), seeds each corpus from the fixtures in ../shared (copied at campaign time, never
# committed), runs every target for SECONDS (default 60) under `nice`, and prints a table of
# executions and findings. Findings land in fuzz/artifacts/<target>/; minimise one with
# `cargo +nightly fuzz tmin <target> <file>` and keep it in tests/fuzz-inputs/<target>/ (see
# docs/robustness.md). Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER_TARGET=${1:-60}
shift || true
SHARED=${KEEL_SHARED:-$ROOT/../shared}
# Limits: a parser must not allocate much more than its input; libFuzzer reports a
# "malloc limit" or "out-of-memory" finding otherwise, and a "timeout" for a hang.
MALLOC_MB=${FUZZ_MALLOC_MB:-512}
RSS_MB=${FUZZ_RSS_MB:-1536}
TIMEOUT_S=${FUZZ_TIMEOUT_S:-10}

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz..."
    cargo install cargo-fuzz
fi

ALL=(safetensors shard_index gguf gguf_stream config_json generation_config tokenizer_json train_data lcm_flags lcm_config adapter_config)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")

# Seeds: small real files, prefixes of large ones, and a few hand-written inputs.
seed() { # seed TARGET NAME < bytes
    mkdir -p "fuzz/corpus/$1"
    cat >"fuzz/corpus/$1/seed-$2"
}
M=$SHARED/models
if [ -d "$M" ]; then
    seed safetensors stories260k <"$M/stories260k/model.safetensors"
    head -c 65536 "$M/tiny-gpt2/model.safetensors" | seed safetensors tiny-gpt2-head
    head -c 65536 "$M/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" | seed gguf smollm2-head
    for m in stories260k tiny-gpt2 tiny-qwen2; do
        seed config_json "$m" <"$M/$m/config.json"
        seed generation_config "$m" <"$M/$m/generation_config.json"
    done
    seed generation_config smollm2 <"$M/smollm2-135m-instruct/generation_config.json"
    seed tokenizer_json stories260k <"$M/stories260k/tokenizer.json"
    # A shard index naming the stories260k tensors, split over two shards.
    python3 - "$M/stories260k/model.safetensors" <<'PY' | seed shard_index stories260k
import json, struct, sys
b = open(sys.argv[1], "rb").read()
names = [k for k in json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]]) if k != "__metadata__"]
wm = {n: "model-0000%d-of-00002.safetensors" % (1 + i % 2) for i, n in enumerate(names)}
print(json.dumps({"metadata": {"total_size": len(b)}, "weight_map": wm}))
PY
fi
# A small but complete llama GGUF (1 layer, hidden 8, vocab 5, a gpt2 vocabulary) so the
# fuzzer reaches the conversion and the tokenizer, not only the header.
python3 - <<'PY' | seed gguf tiny-llama
import struct, sys
def s(x): return struct.pack("<Q", len(x)) + x.encode()
kv = [("general.architecture", 8, s("llama")), ("llama.embedding_length", 4, struct.pack("<I", 8)),
      ("llama.block_count", 4, struct.pack("<I", 1)), ("llama.attention.head_count", 4, struct.pack("<I", 2)),
      ("llama.attention.head_count_kv", 4, struct.pack("<I", 1)), ("llama.feed_forward_length", 4, struct.pack("<I", 6)),
      ("llama.context_length", 4, struct.pack("<I", 64)),
      ("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-6)),
      ("tokenizer.ggml.model", 8, s("gpt2")), ("tokenizer.ggml.pre", 8, s("smollm")),
      ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 5) + b"".join(s(t) for t in ["a", "b", "ab", "c", "d"])),
      ("tokenizer.ggml.merges", 9, struct.pack("<IQ", 8, 1) + s("a b"))]
tensors = [("token_embd.weight", [8, 5]), ("blk.0.attn_norm.weight", [8]), ("blk.0.attn_q.weight", [8, 8]),
           ("blk.0.attn_k.weight", [8, 4]), ("blk.0.attn_v.weight", [8, 4]), ("blk.0.attn_output.weight", [8, 8]),
           ("blk.0.ffn_norm.weight", [8]), ("blk.0.ffn_gate.weight", [8, 6]), ("blk.0.ffn_up.weight", [8, 6]),
           ("blk.0.ffn_down.weight", [6, 8]), ("output_norm.weight", [8])]
out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
for k, t, v in kv: out += s(k) + struct.pack("<I", t) + v
data, table = b"", b""
for name, dims in tensors:
    data += b"\0" * (-len(data) % 32)
    n = 1
    for d in dims: n *= d
    table += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
    table += struct.pack("<IQ", 0, len(data))
    data += b"".join(struct.pack("<f", (i % 7) * 0.1) for i in range(n))
out += table
out += b"\0" * (-len(out) % 32)
sys.stdout.buffer.write(out + data)
PY
# The streaming reader's seeds: every GGUF seed behind a chunk-size byte (7 bytes, 256 bytes).
for f in fuzz/corpus/gguf/seed-*; do
    { printf '\x06'; cat "$f"; } | seed gguf_stream "$(basename "$f")-7"
    { printf '\xff'; cat "$f"; } | seed gguf_stream "$(basename "$f")-256"
done
C=$SHARED/corpora/tinystories_train_head.txt
if [ -f "$C" ]; then head -c 2048 "$C" | { printf '\x08'; cat; } | seed train_data text; fi
printf '\x07{"ids": [1, 2, 3, 4]}\n{"ids": [5, 6, 7, 8]}\n' | seed train_data jsonl
printf '0.5:0.1,0.99:0.05\n15-29\nraw' | seed lcm_flags two-scales
printf '0.9:0.6\n3\nnormalized' | seed lcm_flags one-scale
echo '{"gamma": 0.6, "rho": 0.9, "tau": 0.05, "kappa": 20.0, "layers": [2, 3, 4], "keep_norm": true}' | seed lcm_config golden
echo '{"scales": [[0.5, 0.1], [0.9, 0.2]], "space": "normalized", "sink": 1}' | seed lcm_config scales
echo '{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "bias": "none", "use_rslora": false, "use_dora": false, "rank_pattern": {}, "alpha_pattern": {}, "base_model_name_or_path": "stories260k"}' | seed adapter_config peft

cd fuzz
# Build every target first so that build time does not eat into the campaign. libFuzzer
# stops a target at its first finding (a crash, timeout or memory limit): fix it, keep the
# input, and run again.
nice cargo +nightly fuzz build
printf '%-18s %12s %8s %s\n' target executions findings artifacts
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="artifacts/$t/campaign.log"
    before=$(find "artifacts/$t" -type f ! -name '*.log' | wc -l)
    nice cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -malloc_limit_mb="$MALLOC_MB" -rss_limit_mb="$RSS_MB" \
        -timeout="$TIMEOUT_S" -max_len=1100000 -print_final_stats=1 >"$log" 2>&1 || true
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
    after=$(find "artifacts/$t" -type f ! -name '*.log' | wc -l)
    printf '%-18s %12s %8s %s\n' "$t" "$execs" "$((after - before))" "fuzz/artifacts/$t"
done
