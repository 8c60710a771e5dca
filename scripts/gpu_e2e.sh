#!/usr/bin/env bash
# Issue 6 end to end on the lent H100: CUDA tests, compute-sanitizer, the
# int8-vs-FP32-codes PPL check on a real quantized model, and
# `specquant bench --device cuda` (docs/perf.md, "Hopper engine end to end").
#
# Built here (the device lacks our -dev packages), from a worktree whose
# build folder is build-gpu:
#   cmake -S . -B build-gpu -DSPECQUANT_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DSPECQUANT_BENCH=OFF
#   cmake --build build-gpu -j2 --target specquant specquant_tests
#   scripts/gpu_e2e.sh pack            # → .gpue1/ (bundle + model part 1 + this script), .gpue2/ (model part 2)
# Device calls from the main repository root (the worktree is .wt-gpu/ there, carried by path):
#   call 1 (carry .wt-gpu/.gpue1): bash .wt-gpu/.gpue1/gpu_e2e.sh call1 .wt-gpu/.gpue1
#   call 2 within ~30 s (carry .wt-gpu/.gpue2): bash /tmp/sq/gpu_e2e.sh call2 .wt-gpu/.gpue2
# Logs go to $OUT.
set -uo pipefail
OUT=${OUT:-out/gpu-e2e}
mkdir -p "$OUT"
S=/tmp/sq
MODEL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

env_setup() {
    export LD_LIBRARY_PATH=$S/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    export PATH=/usr/local/cuda/bin:$PATH
    # The binaries carry the build tree's absolute paths: SQ_TEST_DATA = /work/main/.wt-gpu/tests/data,
    # SQ_SOURCE_DIR/../shared = /work/main/shared.
    if [ ! -e /work/main ]; then mkdir -p /work && ln -sfn "$PWD" /work/main; fi
    if [ ! -e /work/main/.wt-gpu/tests ]; then mkdir -p /work/main/.wt-gpu && ln -sfn /work/main/tests /work/main/.wt-gpu/tests; fi
    if [ ! -e /work/main/shared ]; then ln -sfn "$S/shared" /work/main/shared; fi
    SQ=$S/bin/specquant
    T=$S/bin/specquant_tests
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
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
    P=/tmp/sq_pack_e2e.$$
    rm -rf .gpue1 .gpue2 $P && mkdir -p .gpue1 .gpue2 $P/bin $P/lib $P/shared/data
    cp $BUILD/specquant $BUILD/specquant_tests $P/bin/ && strip $P/bin/*
    for lib in $(ldd $BUILD/specquant $BUILD/specquant_tests | awk '/=>/ {print $3}' |
                 grep -E 'fftw3f|pcre2|gomp' | sort -u); do cp -L "$lib" $P/lib/; done
    cp -r ../shared/data/wikitext2 ../shared/data/calib ../shared/data/tasks $P/shared/data/ 2>/dev/null ||
        cp -r /work/shared/data/wikitext2 /work/shared/data/calib /work/shared/data/tasks $P/shared/data/
    tar -C $P -I 'xz -T2' -cf .gpue1/bundle.tar.xz .
    cp scripts/gpu_e2e.sh .gpue1/
    split -b 47M /work/main/models/SmolLM2-135M-Instruct.Q4_1.gguf $P/model.part.
    mv $P/model.part.aa .gpue1/ && mv $P/model.part.ab .gpue2/
    test ! -e $P/model.part.ac || { echo "model needs 3 parts" >&2; exit 1; }
    du -sh .gpue1 .gpue2
    rm -rf $P
    ;;
unpack)
    mkdir -p $S
    if [ -f "$2/bundle.tar.xz" ]; then tar -C $S -xJf "$2/bundle.tar.xz"; fi
    if [ -f "$2/gpu_e2e.sh" ]; then cp "$2/gpu_e2e.sh" $S/; fi
    cp "$2"/model.part.* $S/ 2>/dev/null
    if [ -f $S/model.part.aa ] && [ -f $S/model.part.ab ]; then
        cat $S/model.part.aa $S/model.part.ab > $S/model.gguf && rm $S/model.part.*
        echo "$MODEL_SHA  $S/model.gguf" | sha256sum -c - || exit 1
    fi
    ;;
call1)  # tests, synthetic benchmarks, memcheck (all Cuda* tests)
    bash "$0" unpack "$2" || exit 1
    env_setup
    step tests_cuda 240 $T --gtest_filter='Cuda*'
    grep -E '^\[cuda\]|FAILED|PASSED|OK \]' "$OUT/tests_cuda.log" | grep -v '^\[       OK' | tail -40
    step bench_llama3_8b 300 $SQ bench --device cuda --shape llama3-8b --rank 31 --kv-bits 4 \
        --json "$OUT/bench_llama3_8b.json"
    cat "$OUT/bench_llama3_8b.log" | grep -v '^bench:'
    step bench_llama2_7b 200 $SQ bench --device cuda --shape llama2-7b --rank 31 --kv-bits 4 \
        --json "$OUT/bench_llama2_7b.json"
    step bench_smollm2 120 $SQ bench --device cuda --shape smollm2 --rank 31 --kv-bits 4 --json "$OUT/bench_smollm2.json"
    step bench_llama3_8b_cublas_spec 300 $SQ bench --device cuda --shape llama3-8b --rank 31 --kv-bits 4 \
        --spectral cublas --prefill-lens 2048 --batches 1 --json "$OUT/bench_llama3_8b_cublas_spec.json"
    step memcheck_all 200 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 $T --gtest_filter='Cuda*'
    tail -n 4 "$OUT/memcheck_all.log"
    ;;
call1q)  # short form of call1 (device time short): tests, LLaMA-3-8B (fused and cuBLAS spectral), SmolLM2 shape
    bash "$0" unpack "$2" || exit 1
    env_setup
    step tests_cuda 240 $T --gtest_filter='Cuda*'
    grep -E '^\[cuda\] (decode|quarot|specquant|tiny_llama W4A4|pipeline|batched decode)|FAILED|PASSED' "$OUT/tests_cuda.log"
    step bench_llama3_8b 300 $SQ bench --device cuda --shape llama3-8b --rank 31 --kv-bits 4 \
        --json "$OUT/bench_llama3_8b.json"
    grep -v '^bench:' "$OUT/bench_llama3_8b.log"
    step bench_llama3_8b_cublas_spec 300 $SQ bench --device cuda --shape llama3-8b --rank 31 --kv-bits 4 \
        --spectral cublas --prefill-lens 2048 --batches 1 --json "$OUT/bench_llama3_8b_cublas_spec.json"
    step bench_smollm2 120 $SQ bench --device cuda --shape smollm2 --rank 31 --kv-bits 4 --json "$OUT/bench_smollm2.json"
    ;;
call2)  # real model: quantize (specquant W4A4KV4), PPL int8 vs FP32 codes, quick suite, bench -m; racecheck
    bash "$0" unpack "$2" || exit 1
    env_setup
    M=$S/model.gguf Q=$S/q.sqm W=$S/shared/data/wikitext2/wiki.test.raw D=$S/shared/data
    step quantize 200 $SQ quantize -m $M --method specquant --kv-bits 4 --calib-n 4 --calib-len 128 \
        --calib $D/calib/wiki.utf8 -o $Q
    sha256sum $Q | tee -a "$OUT/summary.txt"
    SQ_CUDA_W4A4=f32 step ppl_f32codes 120 $SQ ppl -m $Q -c 2048 --chunks 8 --device cuda -f $W
    step ppl_int8 120 $SQ ppl -m $Q -c 2048 --chunks 8 --device cuda -f $W
    grep -hE '^PPL|windows x' "$OUT/ppl_f32codes.log" "$OUT/ppl_int8.log"
    SQ_CUDA_W4A4=f32 step quick_f32codes 120 $SQ eval -m $Q --tasks quick --device cuda --data-dir $D
    step quick_int8 120 $SQ eval -m $Q --tasks quick --device cuda --data-dir $D
    grep -hE 'headline|wikitext|tokens/s|scor' "$OUT/quick_f32codes.log" "$OUT/quick_int8.log" | tr '\r' '\n' |
        grep -v -E '\[[#.]+\]' | tail -12
    step bench_model 150 $SQ bench --device cuda -m $Q --prefill-lens 256,2048 --json "$OUT/bench_model.json"
    grep -v '^bench:' "$OUT/bench_model.log"
    step racecheck 80 compute-sanitizer --tool racecheck --error-exitcode 9 \
        $T --gtest_filter='CudaW4A4Gemm.TiledExactAwkwardShapes:CudaW4A4Gemm.GemvExactAwkwardShapes'
    tail -n 5 "$OUT/racecheck.log"
    ;;
bench)  # after call1 (binaries in /tmp/sq): the synthetic benchmarks only (TAG names the logs)
    env_setup
    TAG=${2:-b}
    for shape in llama3-8b llama2-7b smollm2; do
        step bench_${shape}_$TAG 200 $SQ bench --device cuda --shape $shape --rank 31 --kv-bits 4 \
            --json "$OUT/bench_${shape}_$TAG.json"
    done
    grep -v '^bench:' "$OUT/bench_llama3-8b_$TAG.log"
    ;;
*)
    echo "usage: $0 pack | unpack DIR | call1 DIR | call2 DIR" >&2
    exit 2
    ;;
esac
