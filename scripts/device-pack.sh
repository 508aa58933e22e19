#!/usr/bin/env bash
# Packs what a device machine needs and cannot build or download itself (it has the NVIDIA
# driver, no Vulkan loader, no network; ../shared/docs/h100.md): the release binary, the test
# binaries that check every kernel against its CPU reference and the models against
# transformers' golden outputs, the small fixtures those tests read, and the Vulkan loader as
# Debian packages. Run it here; the device then runs scripts/device-run.sh (docs/bench.md,
# "Taking the GPU figures").
#
#   scripts/device-pack.sh        writes .device/pack.tar.xz: carry [".device"]
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${KEEL_SHARED:-../shared}
# A device call carries 64 MiB with the working tree.
limit=$((56 * 1024 * 1024))
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/shared/models" "$stage/shared/golden" "$stage/gl"

cargo build --release
cp target/release/keel "$stage/bin/keel"
# The library's unit tests run every kernel against its CPU reference in the tilings the
# adapter selects (a GPU's, there), cross-workgroup merges included; golden, decode, softcap and
# train_golden hold the models to transformers' outputs and the training curves.
cargo test --release --lib --test golden --test decode --test softcap --test train_golden --no-run \
    --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])' |
    while read -r name exe; do cp "$exe" "$stage/bin/test-$name"; done
strip "$stage"/bin/*

# Every model but SmolLM2 (98 MB, past what a call carries; the benches use its shapes).
for model in "$shared"/models/*/; do
    [ "$(basename "$model")" = smollm2-135m-instruct ] || cp -r "$model" "$stage/shared/models/"
done
cp "$shared"/golden/*.json "$stage/shared/golden/"

lists=$(mktemp -d)
mkdir -p "$lists/partial"
apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
apt-get "${apt_opts[@]}" update > /dev/null
(cd "$stage/gl" && apt-get "${apt_opts[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 > /dev/null)
rm -rf "$lists"

# The binaries find data/, scripts/ and web/ through the path they were built at.
pwd > "$stage/built_at"
mkdir -p .device
tar -C "$stage" -cf - . | xz -T2 -6 > .device/pack.tar.xz.part
mv .device/pack.tar.xz.part .device/pack.tar.xz
size=$(stat -c %s .device/pack.tar.xz)
echo "packed .device/pack.tar.xz: $((size / 1024 / 1024)) MiB ($(ls "$stage/bin" | tr '\n' ' '))"
if [ "$size" -gt "$limit" ]; then
    echo "error: .device/pack.tar.xz is $((size / 1024 / 1024)) MiB; a device call carries 64 MiB with the tree" >&2
    exit 2
fi
