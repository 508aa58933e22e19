#!/usr/bin/env bash
# Runs on the device machine, from the repository root, with .device/pack.tar.xz from
# scripts/device-pack.sh carried along (docs/bench.md, "Taking the GPU figures"):
#
#   bash scripts/device-run.sh check   the test binaries on the GPU (every kernel against its CPU
#                                      reference, the golden and training suites): a few minutes
#   bash scripts/device-run.sh bench   scripts/gpu-bench.sh's whole table: about 9 minutes
#
# Results go to $OUT (the device tool's output folder), else ./device-out: tests-NAME.txt and
# checks.jsonl (one line per test binary) for check, bench.jsonl and the profiles for bench.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device-out}
mode=${1:-check}
mkdir -p "$out"
pack=.device
if [ ! -x "$pack/bin/keel" ]; then
    tar -C "$pack" -xJf "$pack/pack.tar.xz" 2> /dev/null || python3 -m tarfile -e "$pack/pack.tar.xz" "$pack" || {
        echo "error: cannot unpack $pack/pack.tar.xz (run scripts/device-pack.sh and carry .device)" >&2
        exit 2
    }
fi
# The Vulkan loader only where the machine lacks one.
if ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
    for deb in "$pack"/gl/*.deb; do dpkg -x "$deb" /; done
    ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -e "$icd" ] && export VK_DRIVER_FILES=${VK_DRIVER_FILES:-$icd}
export WGPU_BACKEND=vulkan
# The binaries look for data/, scripts/ and web/ where they were built.
built_at=$(cat "$pack/built_at")
if [ ! -e "$built_at" ]; then
    mkdir -p "$(dirname "$built_at")"
    ln -s "$PWD" "$built_at"
fi

case $mode in
check)
    export KEEL_SHARED=$PWD/$pack/shared
    "$pack/bin/keel" info > "$out/info.txt" 2>&1
    # All of it within one call's 10 minutes (CHECK_SECONDS), whatever a binary takes.
    deadline=$(($(date +%s) + ${CHECK_SECONDS:-540}))
    for test in "$pack"/bin/test-*; do
        name=${test##*/test-}
        started=$(date +%s)
        # --show-output keeps the passing tests' "SKIPPED:" lines (SmolLM2's fixtures stay here).
        timeout $((deadline - started > 10 ? deadline - started : 10)) \
            "$test" --test-threads 8 --show-output > "$out/tests-$name.txt" 2>&1
        rc=$?
        summary=$(grep -E '^test result' "$out/tests-$name.txt" | tail -1 | tr -d '"')
        failed=$(grep -E '^test .* FAILED$' "$out/tests-$name.txt" | sed 's/^test //; s/ \.\.\. FAILED$//' | tr '\n' ' ')
        skipped=$(grep -c '^SKIPPED: ' "$out/tests-$name.txt")
        printf '{"binary":"%s","rc":%d,"seconds":%d,"summary":"%s","failed":"%s","skipped":%d}\n' \
            "$name" "$rc" "$(($(date +%s) - started))" "$summary" "$failed" "$skipped" | tee -a "$out/checks.jsonl"
    done
    ;;
bench)
    bash scripts/gpu-bench.sh "$pack/bin/keel" "$out"
    ;;
*)
    echo "error: mode '$mode': expected check or bench" >&2
    exit 2
    ;;
esac
