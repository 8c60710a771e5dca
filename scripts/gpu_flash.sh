#!/usr/bin/env bash
# Issue 6, prefill attention (branch flash-s7) on the lent H100: CUDA tests (CudaFlash.* with the
# rest), `specquant bench --device cuda` with the FP32 kernel and with the tensor-core kernel, and
# WikiText-2 PPL of a real file (FP GGUF and a W4A4KV4 .sqm quantized on the device) with both
# kernels (docs/perf.md "Flash attention (branch flash-s7)").
#
# Built here (the device lacks our -dev packages), in the worktree (its absolute path is
# recreated on the device as a link to the checkout, for SQ_TEST_DATA / SQ_SOURCE_DIR):
#   cmake -S . -B build-gpu -DSPECQUANT_CUDA=ON -DCMAKE_BUILD_TYPE=Release
#   cmake --build build-gpu -j2 --target specquant specquant_tests
#   scripts/gpu_flash.sh pack D1 D2 MODEL.gguf   # D1: binaries + data + model part aa (46.5 MiB); D2: part ab
# On the device (repository root; D1 carried in call 1, D2 in call 2 while the machine is warm):
#   bash D1/gpu_flash.sh tests D1        # unpack, CUDA tests, bench f32 vs flash, keep part aa
#   bash D1/gpu_flash.sh unpack D1       # or only unpack + keep part aa (seconds)
#   bash D2/gpu_flash.sh ppl D2          # part ab: assemble, quantize, ppl (FP, W4A4KV4) × 2 kernels
# Logs and JSON go to $OUT.
set -uo pipefail
OUT=${OUT:-out/gpu-flash}
mkdir -p "$OUT"
S=/tmp/sqf

env_setup() {
    export LD_LIBRARY_PATH=$S/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    export PATH=/usr/local/cuda/bin:$PATH
    WT=$(cat $S/worktree)
    if [ ! -e "$WT/tests" ]; then mkdir -p "$(dirname "$WT")" && ln -sfn "$PWD" "$WT"; fi
    if [ ! -e /work/shared/data/calib/c4.utf8 ]; then
        mkdir -p /work/shared/data/calib /work/shared/data/wikitext2
        cp $S/c4.utf8 $S/wiki.utf8 /work/shared/data/calib/ && cp $S/wiki.test.raw /work/shared/data/wikitext2/
    fi
    SQ=$S/bin/specquant
    T=$S/bin/specquant_tests
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
    D1=$2 D2=$3 MODEL=$4
    P=/tmp/sqf_pack.$$
    rm -rf "$D1" "$D2" $P && mkdir -p "$D1" "$D2" $P/bin $P/lib
    cp $BUILD/specquant $BUILD/specquant_tests $P/bin/ || exit 1
    strip $P/bin/*
    for lib in $(ldd $BUILD/specquant $BUILD/specquant_tests | awk '/=>/ {print $3}' |
                 grep -E 'fftw3f|pcre2|gomp' | sort -u); do cp -L "$lib" $P/lib/; done
    cp /work/shared/data/calib/c4.utf8 /work/shared/data/calib/wiki.utf8 /work/shared/data/wikitext2/wiki.test.raw $P/
    pwd >$P/worktree
    tar -C $P -I 'xz -T2' -cf "$D1/bundle.tar.xz" .
    # 64 MiB per call: the tree (~5 MB) + bundle (~13 MB) + part aa in call 1, the rest in call 2
    head -c 48758784 "$MODEL" >"$D1/model.part.aa" && tail -c +48758785 "$MODEL" >"$D2/model.part.ab" || exit 1
    cp scripts/gpu_flash.sh "$D1/" && cp scripts/gpu_flash.sh "$D2/"
    du -sh "$D1" "$D2"
    rm -rf $P
    ;;
tests)
    rm -rf $S && mkdir -p $S && tar -C $S -xJf "$2/bundle.tar.xz" || exit 1
    cp "$2/model.part.aa" $S/
    env_setup
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
    step tests_cuda 240 $T --gtest_filter='Cuda*:-CudaDiag.*'
    grep -E '^\[cuda\] flash|FAILED|PASSED|Failure|Expected|Which is|bound' "$OUT/tests_cuda.log" | head -60
    grep -E '^\[cuda\]' "$OUT/tests_cuda.log" | grep -v flash | head -30
    B="bench --device cuda --shape llama3-8b --rank 31 --kv-bits 4"
    step bench_f32 150 env SQ_CUDA_PREFILL_ATT=f32 $SQ $B --json $OUT/bench_f32.json
    step bench_flash 150 $SQ $B --json $OUT/bench_flash.json
    cat "$OUT/bench_f32.log" "$OUT/bench_flash.log" | grep -v '^\s*$' | head -80
    ;;
unpack)  # the bundle and part aa only (when `tests` already ran in an earlier lease)
    rm -rf $S && mkdir -p $S && tar -C $S -xJf "$2/bundle.tar.xz" && cp "$2/model.part.aa" $S/ || exit 1
    ;;
ppl)
    test -x $S/bin/specquant || { echo "no unpacked bundle (machine went cold?)"; exit 1; }
    env_setup
    cat $S/model.part.aa "$2/model.part.ab" > $S/model.gguf && rm -f $S/model.part.aa
    M=$S/model.gguf Q=$S/m.sqm W=$S/wiki.test.raw
    step quantize 200 $SQ quantize -m $M --method specquant --rotate --basis svd --kv-bits 4 --k-center on \
        --embed-bits 4 --calib $S/wiki.utf8 --calib-n 2 --calib-len 128 -t 16 -o $Q
    for f in $Q $M; do
        b=$(basename $f)
        step ppl_flash_$b 120 env SQ_CUDA_PREFILL_ATT=flash $SQ ppl -m $f -f $W -c 2048 --device cuda
        step ppl_f32_$b 120 env SQ_CUDA_PREFILL_ATT=f32 $SQ ppl -m $f -f $W -c 2048 --device cuda
        tail -n 3 $OUT/ppl_flash_$b.log $OUT/ppl_f32_$b.log
    done
    ;;
*)
    echo "usage: $0 pack D1 D2 MODEL | tests D1 | unpack D1 | ppl D2" >&2
    exit 2
    ;;
esac
