#!/usr/bin/env bash
# Builds everything and runs all tests (CTest). Installs missing packages and
# the default model first (tests include golden tests on SmolLM2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-build
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${SPECQUANT_CMAKE_ARGS:-} >/dev/null
cmake --build build -j "$(nproc)"
# Tests run in parallel, each with OpenMP threads: passive waiting keeps the
# threads of one test from spinning while another test holds the cores
# (spinning OpenMP barriers of two processes on 2 cores slowed small forward
# calls by 10x and more, docs/eval.md).
export OMP_WAIT_POLICY=passive
cd build && ctest --output-on-failure -j "$(nproc)" --timeout 900
