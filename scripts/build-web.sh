#!/usr/bin/env bash
# Builds Keel for the browser into web/pkg/ (not committed), an npm package a plain page can
# import: the library for wasm32 (WebGPU) and its wasm-bindgen bindings (keel.js, keel.d.ts,
# keel_bg.wasm), the API over them (web/package/: index.js, index.d.ts, README.md) and a
# package.json at Cargo.toml's version. Installs wasm-bindgen-cli at the version Cargo.lock
# pins if the one on PATH differs. Then: `keel serve` and open http://127.0.0.1:8080/, or
# `npm pack web/pkg` for a tarball.
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
rm -rf web/pkg
wasm-bindgen --target web --out-dir web/pkg --out-name keel \
    target/wasm32-unknown-unknown/release/keel.wasm
cp web/package/index.js web/package/index.d.ts web/package/README.md web/pkg/
keel_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
license=$(sed -n 's/^license = "\(.*\)"$/\1/p' Cargo.toml | head -1)
cat > web/pkg/package.json <<JSON
{
  "name": "keel-webgpu",
  "version": "$keel_version",
  "description": "Keel in the browser: transformer language models on WebGPU (generate, chat, fine-tune, LCM)",
  "license": "$license",
  "type": "module",
  "main": "./index.js",
  "types": "./index.d.ts",
  "exports": {
    ".": { "types": "./index.d.ts", "import": "./index.js" },
    "./keel_bg.wasm": "./keel_bg.wasm"
  },
  "files": ["index.js", "index.d.ts", "keel.js", "keel.d.ts", "keel_bg.wasm", "keel_bg.wasm.d.ts", "README.md"],
  "sideEffects": false
}
JSON
echo "built web/pkg/ (npm package keel-webgpu $keel_version, wasm-bindgen $version)"
