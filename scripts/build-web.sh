#!/usr/bin/env bash
# Builds the browser demo: the keel library for wasm32 (WebGPU) and its JS bindings into
# web/pkg/ (not committed). Installs wasm-bindgen-cli at the version Cargo.lock pins if the
# one on PATH differs. Then: `keel serve` and open http://127.0.0.1:8080/.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v rustup >/dev/null; then
    rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
fi
version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
    # Without --locked: the registry here lacks one pinned dependency of its lock file.
    cargo install wasm-bindgen-cli --version "$version"
fi
cargo rustc --release --lib --target wasm32-unknown-unknown --crate-type cdylib
wasm-bindgen --target web --no-typescript --out-dir web/pkg --out-name keel \
    target/wasm32-unknown-unknown/release/keel.wasm
echo "built web/pkg/ (wasm-bindgen $version)"
