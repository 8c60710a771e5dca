#!/usr/bin/env bash
# Issue 6, decode half, on the lent H100: CUDA tests, compute-sanitizer, bench_cuda_gemm
# (--stream), `specquant bench --device cuda` and an nsys kernel profile of the decode step
# (docs/perf.md "Decode v4", "Decode v5").
#
# Built here (the device lacks our -dev packages), in a worktree WT (default /work/wt-gdec;
# the binaries carry its absolute path, recreated on the device as a link to the checkout):
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
    # The binaries carry the build tree's absolute paths: SQ_TEST_DATA = $WT/tests/data,
    # SQ_SOURCE_DIR/../shared = /work/shared (the calibration text of the pipeline tests).
    WT=$(cat $S/worktree 2>/dev/null || echo /work/wt-gdec)
    if [ ! -e "$WT/tests" ]; then mkdir -p "$(dirname "$WT")" && ln -sfn "$PWD" "$WT"; fi
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
    cp $BUILD/specquant $BUILD/specquant_tests $P/bin/ || exit 1
    # bench_cuda_gemm only in a -DSPECQUANT_BENCH=ON build
    if [ -e $BUILD/bench_cuda_gemm ]; then cp $BUILD/bench_cuda_gemm $P/bin/; fi
    strip $P/bin/*
    for lib in $(ldd $BUILD/specquant $BUILD/specquant_tests | awk '/=>/ {print $3}' |
                 grep -E 'fftw3f|pcre2|gomp' | sort -u); do cp -L "$lib" $P/lib/; done
    cp /work/shared/data/calib/c4.utf8 $P/
    pwd >$P/worktree
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
    grep -E '^\[cuda\] (fused|batched|packed|decode v5)|FAILED|PASSED|Failure|Expected|Which is|differ' "$OUT/tests_cuda.log" | head -80
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
memcheck5)  # decode v5: the new tests under memcheck and racecheck (shared-memory kernels)
    env_setup
    step memcheck_v5 120 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 $T \
        --gtest_filter='CudaKv4.*:CudaModel.PackedKvDecodeIsBitIdentical:CudaFused.RopeKvStoreEqualsUnfused:CudaFused.SiluMulQuantEqualsReference'
    tail -n 4 "$OUT/memcheck_v5.log"
    step racecheck_v5 90 compute-sanitizer --tool racecheck --error-exitcode 9 $T \
        --gtest_filter='CudaKv4.DecodeAttentionV5IsBitIdentical:CudaFused.SiluMulQuantEqualsReference'
    tail -n 3 "$OUT/racecheck_v5.log"
    ;;
v6)  # decode v6 in one device call: every CUDA test, the bench after (v6 attention; + Q8_0 lm_head) and
    # before (SQ_CUDA_DECODE_ATT=v5) in the same binary, sanitizers on the new tests, ncu of the new kernels
    mkdir -p $S && tar -C $S -xJf "$2/bundle.tar.xz" || exit 1
    env_setup
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
    step tests_cuda 150 $T --gtest_filter='Cuda*:-CudaDiag.*'
    grep -E '^\[cuda\] (decode v6|q8_gemv|Q8 lm_head)|FAILED|PASSED|Failure|Expected|Which is|differ' "$OUT/tests_cuda.log" | head -60
    PL=${PL:-256,2048}
    step bench_v6 150 $SQ bench --device cuda --shape llama3-8b --rank 31 --kv-bits 4 --prefill-lens $PL \
        --json "$OUT/bench_v6.json"
    step bench_v5 120 env SQ_CUDA_DECODE_ATT=v5 $SQ bench --device cuda --shape llama3-8b --rank 0 --kv-bits 4 \
        --prefill-lens 256 --json "$OUT/bench_v5.json"
    step bench_v6q8 120 $SQ bench --device cuda --shape llama3-8b --rank 0 --kv-bits 4 --prefill-lens 256 \
        --lm-head-bits 8 --json "$OUT/bench_v6q8.json"
    for b in v6 v5 v6q8; do grep -v '^bench:' "$OUT/bench_$b.log" | head -30; done
    NEW='CudaKv4.DecodeAttentionV6IsBitIdentical:CudaQ8.*:CudaModel.Q8LmHeadMatchesFloat32Copy'
    step memcheck_v6 100 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 $T --gtest_filter="$NEW"
    tail -n 3 "$OUT/memcheck_v6.log"
    B1="bench --device cuda --shape llama3-8b --rank 0 --kv-bits 4 --prefill-lens 1 --reps 1 --batches 1 --decode 4 --lm-head-bits 8"
    step ncu_v6 90 ncu --metrics gpu__time_duration.sum --cache-control none --clock-control none --csv \
        --kernel-name regex:'attention_decode|q8_gemv' --launch-count 48 $SQ $B1
    step racecheck_v6 100 compute-sanitizer --tool racecheck --error-exitcode 9 $T \
        --gtest_filter='CudaKv4.DecodeAttentionV6IsBitIdentical'
    tail -n 3 "$OUT/racecheck_v6.log"
    cat $OUT/summary.txt
    ;;
v6b)  # decode v6, second call: every CUDA test, the bench with the bf16 lm_head (= main's decode path) and
     # with the Q8_0 lm_head (W4A4 runs) in the same binary, memcheck of the new tests, racecheck of the v6
     # attention (SQ_TEST_QUICK: 2 shapes); every log in one tarball ($OUT holds at most 8 files)
    mkdir -p $S && tar -C $S -xJf "$2/bundle.tar.xz" || exit 1
    env_setup
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader >$OUT/gpu.txt
    step tests_cuda 150 $T --gtest_filter='Cuda*:-CudaDiag.*'
    grep -E '^\[  PASSED|^\[  FAILED|FAILED  \]|^\[cuda\] (decode v6|q8_gemv|Q8 lm_head)' "$OUT/tests_cuda.log" | tee $OUT/tests_short.txt
    step bench_lm16 200 $SQ bench --device cuda --shape llama3-8b --rank 31 --kv-bits 4 --prefill-lens 256,2048,8192 \
        --json "$OUT/bench_lm16.json"
    step bench_lm8 150 $SQ bench --device cuda --shape llama3-8b --rank 31 --kv-bits 4 --prefill-lens 256,2048 \
        --lm-head-bits 8 --json "$OUT/bench_lm8.json"
    for nt in 2 1; do  # GEMV n8 tiles per block forced (default heuristic: gu at NT = 4, 2.26 waves)
        step bench_nt$nt 120 env SQ_CUDA_GEMV_NT=$nt $SQ bench --device cuda --shape llama3-8b --rank 0 --kv-bits 4 \
            --prefill-lens 256 --lm-head-bits 8 --json "$OUT/bench_nt$nt.json"
    done
    step gemm_nt0 100 $G --stream --reps 15
    step gemm_nt2 100 env SQ_CUDA_GEMV_NT=2 $G --stream --reps 15
    step gemm_nt1 100 env SQ_CUDA_GEMV_NT=1 $G --stream --reps 15
    NEW='CudaKv4.DecodeAttentionV6IsBitIdentical:CudaQ8.*:CudaModel.Q8LmHeadMatchesFloat32Copy'
    step memcheck_v6 100 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 $T --gtest_filter="$NEW"
    step racecheck_v6 150 env SQ_TEST_QUICK=1 compute-sanitizer --tool racecheck --error-exitcode 9 $T \
        --gtest_filter='CudaKv4.DecodeAttentionV6IsBitIdentical'
    tail -n 3 "$OUT/memcheck_v6.log" "$OUT/racecheck_v6.log"
    grep -v '^bench:' "$OUT/bench_lm16.log" | head -16
    grep -v '^bench:' "$OUT/bench_lm8.log" | head -16
    for b in nt2 nt1; do grep -E '^\| decode' "$OUT/bench_$b.log"; done
    grep -h 'decode step B=1' "$OUT/bench_lm16.log" "$OUT/bench_lm8.log" "$OUT/bench_nt2.log"
    for g in nt0 nt2 nt1; do echo "== gemm $g"; grep -E '\| +(1|8) +\| W4A4 gemv strm' "$OUT/gemm_$g.log" | head -12; done
    cat $OUT/summary.txt
    (cd $OUT && tar -czf logs.tar.gz *.log summary.txt && rm -f *.log)
    ;;
v6c)  # decode v6, third call: the varlen flake at SQ_TEST_SEED=2177115845 with main's test binary
     # ($2/main_tests, optional) and ours, every CUDA test at a fresh seed, the bench with the GEMV
     # NT rule (default now) and the Q8_0 / bf16 lm_head, bench_cuda_gemm --stream; logs in one tarball
    mkdir -p $S && tar -C $S -xJf "$2/bundle.tar.xz" || exit 1
    env_setup
    if [ -e "$2/main_tests" ]; then
        [ -e /work/main/tests ] || { mkdir -p /work && ln -sfn "$PWD" /work/main; }
        step flake_main 90 env SQ_TEST_SEED=2177115845 "$2/main_tests" \
            --gtest_filter=CudaBatch.VarlenForwardMatchesSequencesAlone
    fi
    step flake_ours 90 env SQ_TEST_SEED=2177115845 $T --gtest_filter=CudaBatch.VarlenForwardMatchesSequencesAlone
    grep -h 'varlen tiny_llama W4A4KV4' "$OUT"/flake_*.log
    step tests_cuda 150 $T --gtest_filter='Cuda*:-CudaDiag.*'
    grep -E '^\[tests\]|^\[  PASSED|^\[  FAILED|FAILED  \]' "$OUT/tests_cuda.log" | tee $OUT/tests_short.txt
    step bench_q8 120 $SQ bench --device cuda --shape llama3-8b --rank 0 --kv-bits 4 --prefill-lens 256,2048 \
        --lm-head-bits 8 --json "$OUT/bench_q8.json"
    step bench_bf16lm 120 $SQ bench --device cuda --shape llama3-8b --rank 0 --kv-bits 4 --prefill-lens 256 \
        --json "$OUT/bench_bf16lm.json"
    step gemm_final 100 $G --stream --reps 15
    grep -v '^bench:' "$OUT/bench_q8.log" | head -14
    grep -E '^\| decode|^\| prefill' "$OUT/bench_bf16lm.log"
    grep -h 'decode step B=1' "$OUT/bench_q8.log"
    grep -E '\| +(1|4|8) +\| W4A4 gemv strm' "$OUT/gemm_final.log"
    cat $OUT/summary.txt
    (cd $OUT && tar -czf logs.tar.gz *.log summary.txt && rm -f *.log)
    ;;
profile)  # per-kernel time of the graph-replayed decode step (B = 1), nsys if present
    env_setup
    if command -v nsys >/dev/null; then
        step nsys_run 150 nsys profile --cuda-graph-trace=node -t cuda -o /tmp/dec -f true $SQ bench --device cuda \
            --shape llama3-8b --rank 0 --kv-bits 4 --prefill-lens 16 --batches 1 --decode 64 ${BENCH_FLAGS:-}
        step nsys_stats 120 nsys stats -r cuda_gpu_kern_sum -f csv -o $OUT/kern /tmp/dec.nsys-rep
        ls $OUT
    else
        echo "no nsys on the device"
    fi
    ;;
ncu)  # isolated duration (no cache flush, clocks as they are; no PDL overlap) of every kernel of one
      # 1-token forward (the row kernels and GEMVs of a B = 1 decode step) and of the decode attention
    env_setup
    B1="bench --device cuda --shape llama3-8b --rank 0 --kv-bits 4 --prefill-lens 1 --reps 1 --batches 1 --decode 4"
    NCU="ncu --metrics gpu__time_duration.sum --cache-control none --clock-control none --csv"
    step ncu_fwd1 200 $NCU --launch-count ${COUNT:-340} $SQ $B1 ${BENCH_FLAGS:-}
    step ncu_att_v5 100 $NCU --kernel-name regex:attention_decode --launch-count 64 $SQ $B1
    step ncu_att_v4 100 env SQ_CUDA_DECODE_ATT=v4 SQ_CUDA_KV=f32 $NCU --kernel-name regex:attention_decode \
        --launch-count 64 $SQ $B1
    ;;
ncudiag)  # where the decode attention's time goes: full ncu sections of one v5 launch (B = 1), and every
          # decode-path kernel of a 1-token forward at base clocks (isolated, no PDL overlap)
    env_setup
    B1="bench --device cuda --shape llama3-8b --rank 0 --kv-bits 4 --prefill-lens 1 --reps 1 --batches 1 --decode 4"
    step ncu_att_full 150 ncu --set full --import-source yes --kernel-name regex:attention_decode_v5 --launch-skip 40 \
        --launch-count 1 -o /tmp/att -f $SQ $B1
    ncu -i /tmp/att.ncu-rep --page details >$OUT/att_details.txt 2>&1
    ncu -i /tmp/att.ncu-rep --page source --csv --print-source cuda >$OUT/att_source.csv 2>&1 || true
    step ncu_fwd1 150 ncu --metrics gpu__time_duration.sum --cache-control none --clock-control base --csv \
        --kernel-name regex:'rmsnorm|gemv|rope_kv|silu|attention|act_quant|embed|nvjet|bf16' --launch-count 700 $SQ $B1
    ;;
bench)  # end to end, LLaMA-3-8B shape; ${3:-} = extra bench flags
    env_setup
    TAG=${TAG:-v4}
    step bench_$TAG 300 $SQ bench --device cuda --shape llama3-8b --rank ${RANK:-31} --kv-bits 4 ${BENCH_FLAGS:-} \
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
    echo "usage: $0 pack DIR | tests DIR | v6 DIR | v6b DIR | v6c DIR | memcheck | memcheck5 | profile | bench | gemm | gemm1" >&2
    exit 2
    ;;
esac
