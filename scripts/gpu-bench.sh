#!/usr/bin/env bash
# The benchmark matrix behind docs/bench.md's GPU tables, in one run (about 8-9 minutes on an
# H100 or H200): SmolLM2-135M shapes (random weights, which run at the speed of the real ones),
# a 512-token prompt and 128 new tokens, greedy.
#
#   scripts/gpu-bench.sh [KEEL_BINARY] [OUT_DIR]
#
# Cases (issue 21), each with `--profile` (the per-kernel table of one prefill chunk and one
# decode step) where the batch is 1:
#   decode-FMT           every weight format: f16, q4_1, q8_0, f32
#   empty-FMT            KEEL_EMPTY_KERNELS=1: the same dispatches with every kernel body
#                        returning at once; baseline minus empty = time inside the kernels
#   checked-FMT          KEEL_CHECKED=1: WebGPU's runtime checks and zeroed workgroup memory,
#                        as the page runs (native builds drop them)
#   submit4-FMT          --steps-per-submit 4: four decode steps per submission, their picks
#                        read back together (as the page decodes; natively one)
#   lcm-FMT              LCM on: γ 0.05, sink 1, normalized space, the upper half of the blocks
#                        (in decode run by the down projection's last workgroup: its cost against
#                        decode-FMT is issue 21's LCM figure)
#   batch16-FMT, batch64-FMT   16 and 64 sequences decoded together (`keel compare`'s batch path)
#   train-full           full fine-tuning, batch 8 x 512
#   train-8x512-mixed    the same with --precision mixed (f16 operands, f32 accumulation and
#                        AdamW, dynamic loss scaling; issue 22's target: PyTorch bf16 autocast)
#   matmul-*, prefill-512-TIER, train-8x512-TIER   the matrix tiers (KEEL_TIER), see below
#   prefill-attention-KERNELS   flash attention against the per-row kernels (KEEL_ATTENTION)
#   lcm-prefill-SCAN, lcm-prefill-off, train-lcm   LCM's scans (issue 22): prefill with LCM on,
#                        the scan as the adapter runs it and forced (KEEL_LCM_SCAN) to the
#                        portable tree, anchors in memory, 64 threads; fine-tuning with LCM on
# OUT_DIR/bench.jsonl gets one line per case ({"case", "env", "result"} with the card's name in
# result.adapter), OUT_DIR/card.txt the GPU's name, driver and clocks, OUT_DIR/info.txt `keel
# info`, OUT_DIR/profile-FMT.txt the readable per-kernel tables of the baseline.
set -uo pipefail
keel=${1:-target/release/keel}
out=${2:-bench-out}
shapes=data/configs/smollm2-135m.json
mkdir -p "$out"
started=$(date +%s)
run() {  # run NAME ENV ARGS...: one case (ENV: "" or VAR=1), its JSON line tagged with NAME
    local name=$1 env=$2; shift 2
    echo "== $name ($((  $(date +%s) - started )) s): ${env:+$env }keel bench $*" >&2
    local line
    if line=$(env $env timeout 120 "$keel" bench --shapes "$shapes" "$@" --json); then
        echo "{\"case\":\"$name\",\"env\":\"$env\",\"result\":$line}" >> "$out/bench.jsonl"
    else
        echo "{\"case\":\"$name\",\"env\":\"$env\",\"failed\":true}" >> "$out/bench.jsonl"
    fi
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit --format=csv \
    || echo "nvidia-smi: not found"; } > "$out/card.txt" 2>&1
"$keel" info > "$out/info.txt" 2>&1
lcm="--lcm-gamma 0.05 --lcm-sink 1 --lcm-space normalized"
for w in f16 q4_1; do
    run "decode-$w" "" --weights "$w" --repeats 5 --profile
    run "empty-$w" KEEL_EMPTY_KERNELS=1 --weights "$w" --repeats 5 --profile
    run "checked-$w" KEEL_CHECKED=1 --weights "$w" --repeats 5 --profile
    run "submit4-$w" "" --weights "$w" --repeats 5 --steps-per-submit 4
    # shellcheck disable=SC2086
    run "lcm-$w" "" --weights "$w" --repeats 5 --profile $lcm
    run "batch16-$w" "" --weights "$w" --repeats 2 --batch 16
    run "batch64-$w" "" --weights "$w" --repeats 2 --batch 64
done
for w in q8_0 f32; do
    run "decode-$w" "" --weights "$w" --repeats 5 --profile
done
run "empty-f32" KEEL_EMPTY_KERNELS=1 --weights f32 --repeats 5 --profile
# shellcheck disable=SC2086
run "lcm-f32" "" --weights f32 --repeats 5 --profile $lcm
for w in f16 q4_1 f32; do
    timeout 120 "$keel" bench --shapes "$shapes" --weights "$w" --repeats 1 --profile > "$out/profile-$w.txt" 2>&1
done
run "train-full" "" --train --batch 8 --seq-len 512 --repeats 2 --profile
run "train-8x512-mixed" "" --train --batch 8 --seq-len 512 --repeats 2 --precision mixed --profile

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
matmul matmul-prefill 512,576,1536
tiers="portable tiled"
grep -q "cooperative matrices, f16 16×16 with f32 sums: offered" "$out/info.txt" && tiers="$tiers coop"
for tier in $tiers; do
    run "prefill-512-$tier" KEEL_TIER=$tier --weights f32 --prompt-tokens 512 --gen-tokens 0 --repeats 5
    run "train-8x512-$tier" KEEL_TIER=$tier --train --batch 8 --seq-len 512 --repeats 2
done
KEEL_TIER=tiled timeout 300 "$keel" bench --shapes "$shapes" --weights f32 --repeats 1 --profile > "$out/profile-f32-tiled.txt" 2>&1

# Flash attention (the default) against the per-row kernels it replaces, prefill and training:
# KEEL_ATTENTION picks the kernels; the profiles show the attention passes' share.
for k in flash simple; do
    run "prefill-attention-$k" KEEL_ATTENTION=$k --weights f32 --gen-tokens 1 --repeats 3
    KEEL_ATTENTION=$k timeout 300 "$keel" bench --shapes "$shapes" --train --batch 8 --seq-len 512 --repeats 1 \
        --profile > "$out/profile-train-attention-$k.txt" 2>&1
done
# LCM's scans (issue 22; docs/bench.md): prefill of 512 tokens with LCM on against off, the
# scan as this adapter runs it (subgroup sums, anchors in registers, 256 threads) and forced to
# each fallback; the profiles hold the lcm kernel's line. Fine-tuning runs the backward scan.
run "lcm-prefill-off" "" --weights f32 --gen-tokens 1 --repeats 5
for scan in auto tree memory wg64; do
    # shellcheck disable=SC2086
    run "lcm-prefill-$scan" "$([ $scan = auto ] || echo KEEL_LCM_SCAN=$scan)" --weights f32 --gen-tokens 1 \
        --repeats 5 --profile $lcm
done
# shellcheck disable=SC2086
run "train-lcm" "" --train --batch 8 --seq-len 512 --repeats 2 --profile $lcm
echo "done in $(( $(date +%s) - started )) s; results in $out/bench.jsonl" >&2
