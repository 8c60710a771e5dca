#!/usr/bin/env bash
# Builds everything and runs all tests (CTest). Installs missing packages and
# the default model first (tests include golden tests on SmolLM2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-build
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${SPECQUANT_CMAKE_ARGS:-} >/dev/null
cmake --build build -j "$(nproc)"
cd build && ctest --output-on-failure -j "$(nproc)" --timeout 900
