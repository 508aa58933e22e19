#!/usr/bin/env bash
# The benchmark matrix behind docs/bench.md's GPU table: SmolLM2-135M shapes (random weights,
# which run at the speed of the real ones), batch 1, a 512-token prompt and 128 new tokens,
# per weight format; LCM on; the per-kernel profile; full fine-tuning at batch 8 x 512; the
# matrix tiers (KEEL_TIER): 2048^3 products, prefill and fine-tuning per tier.
#
#   scripts/gpu-bench.sh [KEEL_BINARY] [OUT_DIR]
#
# Each case's `--json` line goes to OUT_DIR/bench.jsonl, the profiles to OUT_DIR/profile-*.txt.
set -uo pipefail
keel=${1:-target/release/keel}
out=${2:-bench-out}
shapes=data/configs/smollm2-135m.json
mkdir -p "$out"
run() {  # run NAME ARGS...: one case, its JSON line tagged with NAME
    local name=$1; shift
    echo "== $name: keel bench $*" >&2
    local line
    if line=$(timeout 300 "$keel" bench --shapes "$shapes" "$@" --json); then
        echo "{\"case\":\"$name\",\"result\":$line}" | tee -a "$out/bench.jsonl"
    else
        echo "{\"case\":\"$name\",\"failed\":true}" | tee -a "$out/bench.jsonl"
    fi
}
"$keel" info > "$out/info.txt" 2>&1
for w in f32 f16 q8_0 q4_1; do
    run "decode-$w" --weights "$w" --repeats 5
done
run "decode-f32-lcm" --weights f32 --repeats 5 --lcm-gamma 0.1
run "decode-q4_1-lcm" --weights q4_1 --repeats 5 --lcm-gamma 0.1
for w in f32 q4_1; do
    timeout 300 "$keel" bench --shapes "$shapes" --weights "$w" --repeats 1 --profile > "$out/profile-$w.txt" 2>&1
done
run "train-full" --train --batch 8 --seq-len 512 --repeats 2 --profile

# The matrix tiers (KEEL_TIER; docs/bench.md, "Matrix tiers"): 2048³ and prefill-sized products on
# every tier the adapter has (the coop tier checked against the portable one: the command exits
# non-zero when a tier's output differs), then prefill and full fine-tuning per tier.
# (A failed check still prints the JSON before its error line, so the figures are kept.)
matmul() {  # matmul NAME M,N,K
    echo "== $1: keel bench --matmul $2" >&2
    local line
    if line=$(timeout 120 "$keel" bench --matmul "$2" --repeats 10 --json); then
        echo "{\"case\":\"$1\",\"result\":$line}" | tee -a "$out/bench.jsonl"
    else
        echo "{\"case\":\"$1\",\"failed\":true,\"result\":${line:-null}}" | tee -a "$out/bench.jsonl"
    fi
}
matmul matmul-2048 2048,2048,2048
matmul matmul-prefill 256,576,1536
tiers="portable tiled"
grep -q "cooperative matrices, f16 16×16 with f32 sums: offered" "$out/info.txt" && tiers="$tiers coop"
for tier in $tiers; do
    KEEL_TIER=$tier run "prefill-512-$tier" --weights f32 --prompt-tokens 512 --gen-tokens 0 --repeats 5
    KEEL_TIER=$tier run "train-8x512-$tier" --train --batch 8 --seq-len 512 --repeats 2
done
KEEL_TIER=tiled timeout 300 "$keel" bench --shapes "$shapes" --weights f32 --repeats 1 --profile > "$out/profile-f32-tiled.txt" 2>&1

# Flash attention (the default) against the per-row kernels it replaces, prefill and training:
# KEEL_ATTENTION picks the kernels; the profiles show the attention passes' share.
for k in flash simple; do
    KEEL_ATTENTION=$k run "prefill-attention-$k" --weights f32 --gen-tokens 1 --repeats 3
    KEEL_ATTENTION=$k timeout 300 "$keel" bench --shapes "$shapes" --train --batch 8 --seq-len 512 --repeats 1 \
        --profile > "$out/profile-train-attention-$k.txt" 2>&1
done
