#!/usr/bin/env bash
# Issue 6, decode half, on the lent H100: CUDA tests, compute-sanitizer, bench_cuda_gemm
# (--stream) and `specquant bench --device cuda` (docs/perf.md "Decode v4").
#
# Built here (the device lacks our -dev packages), in the worktree /work/wt-gpu:
#   cmake -S . -B build-gpu -DSPECQUANT_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DSPECQUANT_BENCH=ON
#   cmake --build build-gpu -j2 --target specquant specquant_tests bench_cuda_gemm
#   scripts/gpu_decode.sh pack DIR       # DIR inside the repository the device tool sends, ignored by git
# On the device (repository root; DIR carried):
#   bash DIR/gpu_decode.sh STEP DIR      # STEP: tests | bench | gemm | memcheck | all (see below)
# Logs and JSON go to $OUT.
set -uo pipefail
OUT=${OUT:-out/gpu-decode}
mkdir -p "$OUT"
S=/tmp/sqd

env_setup() {
    export LD_LIBRARY_PATH=$S/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    export PATH=/usr/local/cuda/bin:$PATH
    # The binaries carry the build tree's absolute paths: SQ_TEST_DATA = /work/wt-gpu/tests/data,
    # SQ_SOURCE_DIR/../shared = /work/shared (the calibration text of the pipeline tests).
    if [ ! -e /work/wt-gpu/tests ]; then mkdir -p /work && ln -sfn "$PWD" /work/wt-gpu; fi
    if [ ! -e /work/shared/data/calib/c4.utf8 ]; then
        mkdir -p /work/shared/data/calib && cp $S/c4.utf8 /work/shared/data/calib/
    fi
    SQ=$S/bin/specquant
    T=$S/bin/specquant_tests
    G=$S/bin/bench_cuda_gemm
}

# step NAME TIMEOUT CMD...: output to $OUT/NAME.log, rc and wall time to $OUT/summary.txt
step() {
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
    P=/tmp/sqd_pack.$$
    rm -rf "$D" $P && mkdir -p "$D" $P/bin $P/lib
    cp $BUILD/specquant $BUILD/specquant_tests $BUILD/bench_cuda_gemm $P/bin/ && strip $P/bin/*
    for lib in $(ldd $BUILD/specquant $BUILD/specquant_tests | awk '/=>/ {print $3}' |
                 grep -E 'fftw3f|pcre2|gomp' | sort -u); do cp -L "$lib" $P/lib/; done
    cp /work/shared/data/calib/c4.utf8 $P/
    tar -C $P -I 'xz -T2' -cf "$D/bundle.tar.xz" .
    cp scripts/gpu_decode.sh "$D/"
    du -sh "$D"
    rm -rf $P
    ;;
tests)  # every CUDA test, then memcheck of the new kernels' tests and the ones not yet sanitized
    mkdir -p $S && tar -C $S -xJf "$2/bundle.tar.xz" || exit 1
    env_setup
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    step tests_cuda 200 $T --gtest_filter='Cuda*:-CudaDiag.*'
    grep -E '^\[cuda\] (fused|batched)|FAILED|PASSED|Failure|Expected|Which is|differ' "$OUT/tests_cuda.log" | head -60
    ;;
memcheck)
    env_setup
    step memcheck_new 150 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 $T \
        --gtest_filter='CudaFused.*:CudaW4A4Gemm.GemvSkinnyExact:CudaW4A4Gemm.GemvExactAwkwardShapes:CudaModel.FusedDecodeIsBitIdentical'
    tail -n 4 "$OUT/memcheck_new.log"
    step racecheck_new 100 compute-sanitizer --tool racecheck --error-exitcode 9 $T \
        --gtest_filter='CudaFused.*:CudaW4A4Gemm.GemvSkinnyExact'
    tail -n 3 "$OUT/racecheck_new.log"
    step memcheck_rest 250 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 $T \
        --gtest_filter='CudaLoglik.*:CudaBatch.*:CudaModel.PipelineQuantizedMatchesCpu'
    tail -n 4 "$OUT/memcheck_rest.log"
    ;;
bench)  # end to end, LLaMA-3-8B shape; ${3:-} = extra bench flags
    env_setup
    TAG=${TAG:-v4}
    step bench_$TAG 300 $SQ bench --device cuda --shape llama3-8b --rank 31 --kv-bits 4 ${BENCH_FLAGS:-} \
        --json "$OUT/bench_$TAG.json"
    grep -v '^bench:' "$OUT/bench_$TAG.log"
    ;;
gemm)
    env_setup
    step gemm_stream${GTAG:-} 200 $G --stream --reps 15
    ;;
gemm1)  # one launch after an L2 flush (the method of docs/perf.md "CUDA W4A4 GEMM")
    env_setup
    step gemm_single${GTAG:-} 240 $G --reps 30
    ;;
*)
    echo "usage: $0 pack DIR | tests DIR | memcheck | bench | gemm" >&2
    exit 2
    ;;
esac
