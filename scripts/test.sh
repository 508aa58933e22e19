#!/usr/bin/env bash
# The test command: installs what is missing on a Debian-like machine (a Vulkan driver, which is
# lavapipe where there is no GPU; Chromium and npm for the browser test; the wasm32 target and
# wasm-bindgen for the page; the Python packages some tests drive), builds the page, then runs
# `cargo test --release`. Each group is installed only when it is missing, so it works beside a
# Node.js that did not come from Debian. Arguments go to cargo test (e.g. `--test golden`).
# `scripts/test.sh --setup-only` installs and builds without testing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "test.sh: $*" >&2; }
fail() { say "$*"; exit 1; }

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_updated=""
# apt_install WHAT PACKAGE...: installs one group, or stops naming it.
apt_install() {
    local what=$1
    shift
    command -v apt-get >/dev/null || fail "$what is missing and this machine has no apt-get: install $* by hand"
    if [ -z "$apt_updated" ]; then
        $SUDO apt-get update -qq || fail "apt-get update failed, so $what cannot be installed"
        apt_updated=1
    fi
    say "installing $what ($*)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/tmp/keel-apt.log 2>&1 ||
        fail "could not install $what ($*): $(tail -n 3 /tmp/keel-apt.log | tr '\n' ' ')"
}

# A Vulkan driver and loader: any ICD file will do (a GPU's own, or Mesa's lavapipe on the CPU).
if ! compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null && ! compgen -G "/etc/vulkan/icd.d/*.json" >/dev/null ||
    ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
    apt_install "the Vulkan driver" mesa-vulkan-drivers libvulkan1
fi
if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null; then
    apt_install "Chromium" chromium
fi
# Debian's npm conflicts with a Node.js from elsewhere: only when there is no npm at all.
if ! command -v npm >/dev/null; then
    apt_install "npm" npm
fi
command -v node >/dev/null || fail "npm is there but node is not: install Node.js"

# The Python packages the OpenAI-client and gguf-py tests drive.
python_packages=(openai gguf numpy)
python_modules=(openai gguf numpy)
if command -v python3 >/dev/null; then
    for i in "${!python_modules[@]}"; do
        if ! python3 -c "import ${python_modules[$i]}" 2>/dev/null; then
            say "installing the Python package ${python_packages[$i]}"
            pip=(python3 -m pip install -q --disable-pip-version-check "${python_packages[$i]}")
            # A Debian-managed Python refuses plain installs (PEP 668): then into the user's site.
            "${pip[@]}" 2>/dev/null || "${pip[@]}" --user --break-system-packages ||
                fail "could not install the Python package ${python_packages[$i]} (pip)"
        fi
    done
else
    apt_install "Python" python3 python3-pip
fi

command -v rustup >/dev/null && { rustup target add wasm32-unknown-unknown >/dev/null 2>&1 ||
    fail "could not add the wasm32-unknown-unknown target (rustup)"; }
scripts/build-web.sh
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error ||
    fail "npm ci for tests/browser failed (the browser test's playwright-core)"

[ "${1:-}" = "--setup-only" ] && exit 0
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
exec cargo test --release --no-fail-fast "$@"
