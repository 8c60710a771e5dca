#!/usr/bin/env bash
# Issue 6, wgmma prefill GEMM on the lent H100: CUDA tests (CudaW4A4Gemm*, then every Cuda*
# test), compute-sanitizer memcheck of the wgmma tests, bench_cuda_gemm --quick and --sweep
# (docs/perf.md "wgmma prefill GEMM (branch wgmma-s6)").
#
# Built here (the device lacks our -dev packages), in the worktree /work/wt-wgmma:
#   cmake -S . -B build-gpu -DSPECQUANT_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DSPECQUANT_BENCH=ON
#   cmake --build build-gpu -j2 --target specquant_tests bench_cuda_gemm
#   scripts/gpu_wgmma.sh pack DIR      # DIR inside the repository the device tool sends, ignored by git
# On the device (repository root; DIR carried):  bash DIR/gpu_wgmma.sh run DIR
# Logs go to $OUT (summary.txt: each step's rc and wall time).
set -uo pipefail
OUT=${OUT:-out/gpu-wgmma}
mkdir -p "$OUT"
S=/tmp/sqw
step() {  # step NAME TIMEOUT CMD...
    local name=$1 to=$2 t0 t1 rc
    shift 2
    t0=$(date +%s%N)
    timeout "$to" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    t1=$(date +%s%N)
    echo "$name: rc=$rc wall=$(( (t1 - t0) / 1000000 )) ms ($*)" | tee -a "$OUT/summary.txt"
}
case "${1:-}" in
pack)
    BUILD=${BUILD:-build-gpu}
    D=$2
    P=/tmp/sqw_pack.$$
    rm -rf "$D" $P && mkdir -p "$D" $P/bin $P/lib
    cp $BUILD/specquant_tests $BUILD/bench_cuda_gemm $P/bin/ && strip $P/bin/*
    for lib in $(ldd $BUILD/specquant_tests | awk '/=>/ {print $3}' | grep -E 'fftw3f|pcre2|gomp' | sort -u); do
        cp -L "$lib" $P/lib/
    done
    cp /work/shared/data/calib/c4.utf8 $P/ 2>/dev/null
    tar -C $P -I 'xz -T2' -cf "$D/bundle.tar.xz" .
    cp scripts/gpu_wgmma.sh "$D/"
    du -sh "$D"
    rm -rf $P
    ;;
run)
    mkdir -p $S && tar -C $S -xJf "$2/bundle.tar.xz" || exit 1
    export LD_LIBRARY_PATH=$S/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    export PATH=/usr/local/cuda/bin:$PATH
    # The test binary carries the build tree's paths (tests/data, ../shared/data/calib).
    if [ ! -e /work/wt-wgmma/tests ]; then mkdir -p /work && ln -sfn "$PWD" /work/wt-wgmma; fi
    if [ ! -e /work/shared/data/calib/c4.utf8 ] && [ -e $S/c4.utf8 ]; then
        mkdir -p /work/shared/data/calib && cp $S/c4.utf8 /work/shared/data/calib/
    fi
    T=$S/bin/specquant_tests
    G=$S/bin/bench_cuda_gemm
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$OUT/summary.txt"
    step gemm_tests 200 $T --gtest_filter='CudaW4A4Gemm*'
    grep -E 'FAILED|PASSED|Failure|Expected|Which is|mismatch|seed' "$OUT/gemm_tests.log" | head -30
    step bench_quick 150 $G --quick
    step bench_sweep 120 $G --sweep --reps 20
    step memcheck_wgmma 120 compute-sanitizer --tool memcheck --error-exitcode 9 $T \
        --gtest_filter='CudaW4A4Gemm.Wgmma*'
    tail -n 3 "$OUT/memcheck_wgmma.log"
    step cuda_tests 200 $T --gtest_filter='Cuda*:-CudaDiag.*:CudaW4A4Gemm*'
    grep -E 'FAILED|PASSED|Failure' "$OUT/cuda_tests.log" | head -20
    ;;
*)
    echo "usage: $0 pack DIR | run DIR" >&2
    exit 2
    ;;
esac
