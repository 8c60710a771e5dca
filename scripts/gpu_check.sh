#!/usr/bin/env bash
# Issue 6 on the lent H100, everything of main in two back-to-back device calls:
#   call 1: every CUDA test, compute-sanitizer (memcheck on the spectral branch's tests, racecheck on
#           two flash attention tests),
#           `specquant bench --device cuda` (LLaMA-3-8B shape, k̄ 16, KV4; 16- and 8-bit lm_head),
#           the GEMM micro-benchmarks (bench_cuda_gemm --quick);
#   call 2: the default model (GGUF, carried in two parts) quantized on the device with the same
#           command, relative paths and seed as on the CPU machine (its sha256 printed, to compare with
#           the CPU machine's file), then WikiText-2 PPL (-c 2048) of the FP GGUF and of that .sqm with
#           the FP32 and the tensor-core (flash) prefill attention, then the full 9-task suite of the .sqm.
# Built here (the device lacks our -dev packages):
#   cmake -S . -B build-gpu -DSPECQUANT_CUDA=ON -DCMAKE_BUILD_TYPE=Release            # + build-gpu-gemm with
#   cmake --build build-gpu -j2 --target specquant specquant_tests                    #   -DSPECQUANT_BENCH=ON
#   cmake --build build-gpu-gemm -j2 --target bench_cuda_gemm
#   scripts/gpu_check.sh pack .gpuc1 .gpuc2 models/SmolLM2-135M-Instruct.Q4_1.gguf
# On the device (repository root), carrying .gpuc1 then .gpuc2:
#   bash .gpuc1/gpu_check.sh tests .gpuc1
#   bash .gpuc2/gpu_check.sh model .gpuc2      # needs call 1's unpacked bundle (machine still warm)
# or, instead of `model`, the CPU machine's quantization reproduced and its PPL compared window by
# window with the CPU's (pack with CPU_WINDOWS=ppl_cpu_windows.json, from `ppl -m sq.sqm -c 2048 --json`):
#   bash .gpuc2/gpu_check.sh requant .gpuc2
# and, without CPU_WINDOWS, the CPU engine's windows computed on the device's cores in the next call:
#   bash .gpuc2/gpu_check.sh cpuppl
# Also: `seeds D1` (tests, one test over 10 seeds, racecheck), `memcheck D1` (memcheck, all tests).
# `spectral D1` (the spectral branch: tests, micro-benchmarks, bench), `profile D1` (every kernel of a
# B=1 decode step under ncu), `skips D1` (a B=1 decode step with each class of launches left out),
# `l2pf D1` (decode v7's L2 prefetch over its MiB), `ab D1` (specquant_base vs specquant, packed with
# BASE_BIN=path), `envs D1` (the decode bench under each of CONFIGS' environments), `gemv D1` (the GEMV:
# tests, memcheck, --stream micro-benchmarks, decode with its staged activations off and on), `splitk D1`
# (the wgmma GEMM's split-K: tests, sanitizers, --sweep / --quick, prefill with it off and on).
# Logs and JSON go to $OUT; summary.txt has every step's exit code and wall time.
set -uo pipefail
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
S=/tmp/sqc
MODEL_REL=models/SmolLM2-135M-Instruct.Q4_1.gguf
# The .sqm records the model and calibration paths as given: the same relative paths as the CPU run.
QUANT_OPTS="--method specquant --rotate --basis svd --kv-bits 4 --k-center on --calib-n 8 --calib-len 256"

env_setup() {
    export LD_LIBRARY_PATH=$S/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    export PATH=/usr/local/cuda/bin:$PATH
    WT=$(cat $S/worktree)  # the test binary carries the build tree's paths (tests/data, ../shared/data)
    if [ ! -e "$WT/tests" ]; then mkdir -p "$(dirname "$WT")" && ln -sfn "$PWD" "$WT"; fi
    # ../shared/data next to the checkout (paths with .. resolve through the physical parent)
    local up
    up=$(cd .. && pwd -P)
    if [ ! -e "$up/shared/data/tasks" ]; then ln -sfn $S/shared "$up/shared"; fi
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

# Call 1's bundle (binaries, libs, data) into $S, and model part aa when the carried folder has it.
unpack() {
    rm -rf $S && mkdir -p $S && tar -C $S -xJf "$1/bundle.tar.xz" || exit 1
    if [ -f "$1/model.part.aa" ]; then cp "$1/model.part.aa" $S/ || exit 1; fi
}

# At most 8 files come back from $OUT: every log and JSON of a call goes into one NAME.tgz (and
# summary.txt stays beside it).
# cuda_tests FILTER: every CUDA test, then compute-sanitizer memcheck on FILTER's tests.
cuda_tests() {
    step tests_cuda 300 $T --gtest_filter='Cuda*:-CudaDiag.*'
    grep -E '^\[  FAILED|^\[  PASSED|Failure|Expected|Which is' "$OUT/tests_cuda.log" | head -30
    step memcheck 200 compute-sanitizer --tool memcheck --error-exitcode 9 $T --gtest_filter="$1"
    tail -n 2 "$OUT/memcheck.log"
}

# rounds PREFIX ROUNDS0 CONFIGS0 PATTERN ARGS...: `specquant ARGS` once per environment of CONFIGS
# (default CONFIGS0; "A=1+B=2" sets two, "-" none), ROUNDS (default ROUNDS0) times in turn, each
# run's lines matching PATTERN echoed on one line: runtime switches A/B'd in one call.
rounds() {
    local prefix=$1 n=${ROUNDS:-$2} cfgs=${CONFIGS:-$3} pat=$4 r cfg name
    shift 4
    for r in $(seq 1 "$n"); do
        for cfg in $cfgs; do
            name=$(echo "$cfg" | tr -c 'A-Za-z0-9=\n' '_')
            step "${prefix}_${name}_$r" 200 env $(echo "$cfg" | tr '+' ' ' | sed 's/^-$//') $SQ "$@"
            echo "$cfg round $r: $(grep -E "$pat" "$OUT/${prefix}_${name}_$r.log" | grep '^|' | tr -s ' ' | tr '\n' ';')"
        done
    done
}

bundle_out() {
    (cd "$OUT" && f=$(ls *.log *.json 2>/dev/null || true) && [ -n "$f" ] && tar -czf "$1.tgz" $f && rm -f $f) || true
}

case "${1:-}" in
pack)
    D1=$2 D2=$3 MODEL=$4
    P=/tmp/sqc_pack.$$
    rm -rf "$D1" "$D2" $P && mkdir -p "$D1" "$D2" $P/bin $P/lib $P/shared
    cp build-gpu/specquant build-gpu/specquant_tests build-gpu-gemm/bench_cuda_gemm $P/bin/ || exit 1
    # BASE_BIN=path: a second specquant (e.g. main's) carried as specquant_base for `ab`
    if [ -n "${BASE_BIN:-}" ]; then cp "$BASE_BIN" $P/bin/specquant_base || exit 1; fi
    strip $P/bin/*
    for lib in $(ldd $P/bin/* | awk '/=>/ {print $3}' | grep -E 'fftw3f|pcre2|gomp' | sort -u); do
        cp -L "$lib" $P/lib/
    done
    cp -r ../shared/data $P/shared/
    pwd >$P/worktree
    tar -C $P -I 'xz -T2' -cf "$D1/bundle.tar.xz" . || exit 1
    # 64 MiB per call: the tree (~5 MB) + the bundle + model part aa in call 1, part ab in call 2
    local_left=$(( 60 * 1024 * 1024 - $(stat -c %s "$D1/bundle.tar.xz") - 5 * 1024 * 1024 ))
    head -c $local_left "$MODEL" >"$D1/model.part.aa" && tail -c +$(( local_left + 1 )) "$MODEL" >"$D2/model.part.ab" || exit 1
    sha256sum "$MODEL" | cut -d' ' -f1 >"$D2/model.sha256"
    # for `requant`: the CPU machine's per-window NLLs of its .sqm (ppl --json), compared on the GPU
    if [ -n "${CPU_WINDOWS:-}" ]; then cp "$CPU_WINDOWS" "$D2/ppl_cpu_windows.json" || exit 1; fi
    cp scripts/gpu_check.sh "$D1/" && cp scripts/gpu_check.sh "$D2/"
    du -sh "$D1" "$D2"
    rm -rf $P
    ;;
tests)
    unpack "$2"
    env_setup
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee -a "$OUT/summary.txt"
    step tests_cuda 300 $T --gtest_filter='Cuda*:-CudaDiag.*'
    grep -E '^\[  FAILED|^\[  PASSED|Failure|Expected|Which is|^\[cuda\] varlen' "$OUT/tests_cuda.log" | head -40
    step memcheck_spectral 150 compute-sanitizer --tool memcheck --error-exitcode 9 $T \
        --gtest_filter='CudaSpectral.*:CudaModel.FusedDecodeIsBitIdentical:CudaModel.HandQuantizedW4A4MatchesCpu'
    tail -n 2 "$OUT/memcheck_spectral.log"
    # racecheck on all of CudaFlash.* does not finish in 200 s (session 8): the two small ones
    step racecheck_flash 120 compute-sanitizer --tool racecheck --error-exitcode 9 $T \
        --gtest_filter='CudaFlash.DevicePositionEqualsHostPosition:CudaFlash.VarlenMatchesReferenceAndSingleSequences'
    tail -n 2 "$OUT/racecheck_flash.log"
    B="bench --device cuda --shape llama3-8b --rank 31 --kv-bits 4"
    step bench 150 $SQ $B --json $OUT/bench.json
    step bench_lm8 150 $SQ $B --lm-head-bits 8 --batches 1 --prefill-lens 2048 --json $OUT/bench_lm8.json
    grep -v '^\s*$' "$OUT/bench.log" | tail -40
    grep -v '^\s*$' "$OUT/bench_lm8.log" | tail -12
    step gemm_quick 120 $G --quick
    tail -n 30 "$OUT/gemm_quick.log"
    bundle_out call_tests
    ;;
profile)  # call 1's unpack, then every kernel of a W4A4 (rank 0; RANK=31: and a spectral run) and a BF16 decode at B=1 under ncu
          # (graph nodes one by one, clocks and caches left alone): gpu_check.sh's `ncu_table` reads the CSV
    unpack "$2"
    env_setup
    B="bench --device cuda --shape llama3-8b --rank ${RANK:-0} --kv-bits 4 --lm-head-bits 8 --batches 1"
    step bench_b1 150 $SQ $B --prefill-lens 2048
    grep -v '^\s*$' "$OUT/bench_b1.log" | tail -14
    step ncu_decode ${TIMEOUT:-400} ncu --clock-control none --cache-control none --graph-profiling node \
        --metrics gpu__time_duration.sum --csv --print-units base $SQ $B --prefill-lens 16 --decode 2 --reps 1 --ctx 512
    tail -n 3 "$OUT/ncu_decode.log"
    bundle_out call_profile
    ;;
skips)  # call 1's unpack, then a B=1 decode step timed with each class of launches left out (SQ_CUDA_SKIP,
       # model_cuda.cpp): the in-graph cost of each, which ncu (kernels alone) cannot give
    unpack "$2"
    env_setup
    step tests_spec 200 $T --gtest_filter='CudaSpectral.*:CudaModel.FusedDecodeIsBitIdentical:CudaW4A4Gemm*'
    grep -E '^\[  FAILED|^\[  PASSED|Failure' "$OUT/tests_spec.log" | head -10
    B="bench --device cuda --shape llama3-8b --rank ${RANK:-0} --kv-bits 4 --lm-head-bits 8 --batches 1"
    for v in none norm rope att actq silu qkv o gu down lm_head norm,rope,att,actq,silu qkv,o,gu,down,lm_head none; do
        SQ_CUDA_SKIP=$([ $v = none ] || echo $v) step "skip_$v" 120 $SQ $B --prefill-lens 16 --decode 64 --ctx 512
        echo "$v: $(grep -E 'decode B=1' "$OUT/skip_$v.log" | head -3 | tr -s ' ' | tr '\n' ';')"
    done
    bundle_out call_skips
    ;;
l2pf)  # call 1's unpack, then decode v7's L2 prefetch: the model tests with it on, and the B=1/B=8 decode
      # bench over its MiB (SQ_CUDA_L2PF; SKIPS="..." also times steps with those launches left out)
    unpack "$2"
    env_setup
    SQ_CUDA_L2PF=32 step tests_l2pf 300 $T --gtest_filter='CudaModel.*:CudaKv4.*:CudaSpectral.*'
    grep -E '^\[  FAILED|^\[  PASSED|Failure' "$OUT/tests_l2pf.log" | head -10
    B="bench --device cuda --shape llama3-8b --rank ${RANK:-0} --kv-bits 4 --lm-head-bits 8"
    for mb in ${MIBS:-0 16 32 48 0}; do
        SQ_CUDA_L2PF=$mb step "l2pf_$mb" 150 $SQ $B --batches ${BATCHES:-1,8} --prefill-lens 16 --decode 64 --ctx 512
        echo "L2PF=$mb: $(grep -E 'decode B=' "$OUT/l2pf_$mb.log" | head -4 | tr -s ' ' | tr '\n' ';')"
    done
    for v in ${SKIPS:-}; do
        SQ_CUDA_L2PF=${SKIP_MIB:-32} SQ_CUDA_SKIP=$v step "skip_$v" 120 $SQ $B --batches 1 --prefill-lens 16 --decode 64 --ctx 512
        echo "L2PF=${SKIP_MIB:-32} skip $v: $(grep -E 'decode B=1' "$OUT/skip_$v.log" | head -3 | tr -s ' ' | tr '\n' ';')"
    done
    if [ -n "${NCU:-}" ]; then  # NCU="kernel-regex ...": the 40th launch of each in a decode run, detailed
        for kr in $NCU; do
            step ncu_$kr 150 ncu --clock-control none --graph-profiling node -k regex:$kr -s 40 -c 1 --set full $SQ $B \
                --batches 1 --prefill-lens 16 --decode 2 --reps 1 --ctx 512
            grep -E 'Duration|Stall|Warp Cycles|Issued Ipc|Achieved Occ|One or More|No Eligible|Registers Per' \
                "$OUT/ncu_$kr.log" | head -20
        done
    fi
    bundle_out call_l2pf
    ;;
ab)  # call 1's unpack (packed with BASE_BIN), then the CUDA tests of this build and the B=1/B=8 decode
    # bench of specquant_base and specquant, alternating, ROUNDS times (env passed through: SQ_CUDA_*)
    unpack "$2"
    env_setup
    if [ -z "${NO_TESTS:-}" ]; then
        step tests_cuda 300 $T --gtest_filter='Cuda*:-CudaDiag.*'
        grep -E '^\[  FAILED|^\[  PASSED|Failure' "$OUT/tests_cuda.log" | head -10
    fi
    B="bench --device cuda --shape llama3-8b --rank ${RANK:-0} --kv-bits 4 --lm-head-bits 8"
    for r in $(seq 1 ${ROUNDS:-2}); do
        for bin in specquant_base specquant; do
            step "ab_${bin}_$r" 150 $S/bin/$bin $B --batches ${BATCHES:-1,8} --prefill-lens ${PREFILL:-16} --decode 64 --ctx 512
            echo "$bin round $r: $(grep -E 'decode B=|prefill' "$OUT/ab_${bin}_$r.log" | grep '^|' | head -4 | tr -s ' ' | tr '\n' ';')"
        done
    done
    bundle_out call_ab${TAG:-}
    ;;
envs)  # call 1's unpack, then the decode bench once per environment of CONFIGS ("A=1+B=2 A=0 ..."; "-": none),
      # ROUNDS times in turn: runtime switches (SQ_CUDA_*) A/B'd in one call
    unpack "$2"
    env_setup
    rounds env 1 - 'decode B=|prefill' bench --device cuda --shape llama3-8b --rank ${RANK:-0} --kv-bits 4 \
        --lm-head-bits 8 --batches ${BATCHES:-1,8} --prefill-lens ${PREFILL:-16} --decode 64 --ctx 512
    bundle_out call_envs${TAG:-}
    ;;
gemv)  # call 1's unpack, then the GEMM/GEMV tests and the fused decode's, memcheck on the GEMV's configurations,
       # bench_cuda_gemm --stream (every GEMV configuration, M = 1..64), and the decode bench with the GEMV's
       # staged activations (v9) off and on (or CONFIGS, as in envs), ROUNDS times in turn
    unpack "$2"
    env_setup
    cuda_tests 'CudaW4A4Gemm.GemvStagedAndUnalignedRows:CudaW4A4Gemm.AllConfigurations'
    step gemv_stream 240 $G --stream --reps ${REPS:-20}
    grep -E '^\|' "$OUT/gemv_stream.log"
    rounds dec 2 'SQ_CUDA_GEMV_STAGE_MIN_M=65 -' 'decode B=' bench --device cuda --shape llama3-8b \
        --rank ${RANK:-0} --kv-bits 4 --lm-head-bits 8 --batches ${BATCHES:-1,8,16,32} --prefill-lens 16 \
        --decode 64 --ctx 512
    bundle_out call_gemv
    ;;
splitk)  # call 1's unpack, then the CUDA tests, memcheck on the wgmma split-K test,
         # bench_cuda_gemm --sweep and --quick, and the prefill bench with split-K off
         # (SQ_CUDA_WGMMA_SPLIT=1) and on, ROUNDS times in turn
    unpack "$2"
    env_setup
    cuda_tests 'CudaW4A4Gemm.WgmmaSplitKExact:CudaW4A4Gemm.WgmmaPersistentManyTiles'
    step sweep 200 $G --sweep --reps 20
    grep -E '^\|' "$OUT/sweep.log" | grep -E 'BF16|wgmma'
    step quick 200 $G --quick --reps 20
    grep -E '^\|' "$OUT/quick.log" | grep -E '2048 .*(BF16|FP8|wgmma)'
    rounds pre 2 'SQ_CUDA_WGMMA_SPLIT=1 -' 'decode B=|prefill' bench --device cuda --shape llama3-8b --rank 0 \
        --kv-bits 4 --batches ${BATCHES:-64,128} --prefill-lens ${PREFILL:-128,256,512,2048} --decode 16 --ctx 512
    bundle_out call_splitk
    ;;
spectral)  # call 1's unpack, then the CUDA tests, memcheck on the spectral branch's, its passes'
           # micro-benchmarks and the end-to-end bench at rank 31 (NCU="regex ...": those kernels under ncu)
    unpack "$2"
    env_setup
    cuda_tests 'CudaSpectral.*:CudaModel.FusedDecodeIsBitIdentical'
    step gemm_spectral 150 $G --spectral --reps 20
    grep -E '^\|' "$OUT/gemm_spectral.log"
    if [ -n "${NCU:-}" ]; then  # NCU="kernel-regex ...": each kernel's first launch under ncu, and the SASS
        for kr in $NCU; do
            step ncu_$kr 120 ncu --clock-control none -k regex:$kr -c 1 --section SpeedOfLight \
                --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats $G --spectral --reps 1
        done
        cuobjdump -sass $G | awk '/Function : /{p = /spectral_cu/} p' | gzip > "$OUT/spectral_sass.txt.gz"
    fi
    B="bench --device cuda --shape llama3-8b --rank 31 --kv-bits 4"
    step bench 200 $SQ $B --batches 1,8 --prefill-lens 256,2048 --json $OUT/bench.json
    grep -v '^\s*$' "$OUT/bench.log" | tail -24
    step bench_lm8 150 $SQ $B --lm-head-bits 8 --batches 1 --prefill-lens 2048
    grep -v '^\s*$' "$OUT/bench_lm8.log" | grep -E 'decode B=1|prefill 2048' | head -4
    bundle_out call_spectral
    ;;
seeds)  # call 1's unpack, then the Cuda tests, one varlen test over seeds, racecheck on the small flash tests
    unpack "$2"
    env_setup
    step tests_cuda 300 $T --gtest_filter='Cuda*:-CudaDiag.*'
    grep -E '^\[  FAILED|^\[  PASSED|^\[cuda\] varlen' "$OUT/tests_cuda.log" | head -20
    for seed in 2177115845 1 2 3 4 5 6 7 8 9; do
        step varlen_$seed 60 env SQ_TEST_SEED=$seed $T --gtest_filter='CudaBatch.VarlenForwardMatchesSequencesAlone'
        grep -E '^\[  FAILED|^\[  PASSED|W4A|Failure|Which is|Expected' "$OUT/varlen_$seed.log" | head -12
    done
    step racecheck_flash 240 compute-sanitizer --tool racecheck --error-exitcode 9 $T \
        --gtest_filter='CudaFlash.DevicePositionEqualsHostPosition:CudaFlash.VarlenMatchesReferenceAndSingleSequences'
    tail -n 3 "$OUT/racecheck_flash.log"
    bundle_out call_seeds
    ;;
memcheck)  # call 1's unpack, then compute-sanitizer memcheck over every CUDA test but CudaFlash.* (call 1 has those)
    unpack "$2"
    env_setup
    step memcheck_all ${TIMEOUT:-470} compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 $T \
        --gtest_filter='Cuda*:-CudaDiag.*:CudaFlash.*'
    grep -E '^\[       OK|^\[  FAILED|^\[  PASSED|ERROR SUMMARY|LEAK SUMMARY|bytes leaked' "$OUT/memcheck_all.log" | tail -60
    bundle_out call_memcheck
    ;;
model)
    test -x $S/bin/specquant || { echo "no unpacked bundle (the machine went cold?): run call 1 again"; exit 1; }
    env_setup
    mkdir -p models && cat $S/model.part.aa "$2/model.part.ab" >$MODEL_REL && rm -f $S/model.part.aa
    echo "model sha256 $(sha256sum $MODEL_REL | cut -d' ' -f1) (expected $(cat "$2/model.sha256"))" | tee -a "$OUT/summary.txt"
    Q=$S/sq.sqm W=../shared/data/wikitext2/wiki.test.raw
    cd "$(cat $S/worktree)" || exit 1  # the CPU machine's path: the .sqm records the paths as given
    step quantize 300 $SQ quantize -m $MODEL_REL $QUANT_OPTS -t 16 -o $Q
    echo "sqm sha256 $(sha256sum $Q | cut -d' ' -f1) size $(stat -c %s $Q)" | tee -a "$OUT/summary.txt"
    for f in $MODEL_REL $Q; do
        b=$(basename $f)
        step ppl_f32_$b 120 env SQ_CUDA_PREFILL_ATT=f32 $SQ ppl -m $f -f $W -c 2048 --device cuda \
            --json $OUT/ppl_f32_$b.json
        step ppl_flash_$b 120 env SQ_CUDA_PREFILL_ATT=flash $SQ ppl -m $f -f $W -c 2048 --device cuda \
            --paired $OUT/ppl_f32_$b.json
        tail -n 3 $OUT/ppl_f32_$b.log $OUT/ppl_flash_$b.log
    done
    step eval_sqm 300 $SQ eval -m $Q --tasks all --device cuda --json $OUT/eval_sqm.json \
        --samples $OUT/eval_sqm_samples.json  # .json: bundle_out takes it (JSON lines)
    tail -n 16 "$OUT/eval_sqm.log"
    bundle_out call_model
    ;;
requant)  # `model`'s quantization again, calibration read from the CPU machine's path (a real
          # directory, so the canonical path recorded in the header is the same): whole-file and
          # tensor-data sha256, to compare with the CPU machine's file (`gpu_check.sh data_sha256 FILE`)
    test -x $S/bin/specquant || { echo "no unpacked bundle (the machine went cold?): run call 1 again"; exit 1; }
    env_setup
    mkdir -p models && cat $S/model.part.aa "$2/model.part.ab" >$MODEL_REL && rm -f $S/model.part.aa
    echo "model sha256 $(sha256sum $MODEL_REL | cut -d' ' -f1) (expected $(cat "$2/model.sha256"))" | tee -a "$OUT/summary.txt"
    if [ -L /work/shared ]; then rm /work/shared; fi
    mkdir -p /work/shared && cp -r $S/shared/data /work/shared/
    Q=$S/sq.sqm
    cd "$(cat $S/worktree)" || exit 1
    step requantize 300 $SQ quantize -m $MODEL_REL $QUANT_OPTS --calib /work/shared/data/calib/wiki.utf8 -t 16 -o $Q
    grep calibration "$OUT/requantize.log" | head -1
    echo "sqm sha256 $(sha256sum $Q | cut -d' ' -f1), tensor data sha256 $(bash $2/gpu_check.sh data_sha256 $Q)" |
        tee -a "$OUT/summary.txt"
    # GPU against the CPU machine's per-window NLLs of the same file (carried as D2/ppl_cpu_windows.json:
    # `ppl -m sq.sqm -c 2048 --json`), window by window
    if [ -f "$2/ppl_cpu_windows.json" ]; then
        step ppl_paired_cpu 120 $SQ ppl -m $Q -f ../shared/data/wikitext2/wiki.test.raw -c 2048 --device cuda \
            --json $OUT/ppl_gpu_windows.json --paired "$2/ppl_cpu_windows.json"
        tail -n 3 "$OUT/ppl_paired_cpu.log"
    else  # for `cpuppl` (next call, machine still warm)
        step ppl_gpu 120 $SQ ppl -m $Q -f ../shared/data/wikitext2/wiki.test.raw -c 2048 --device cuda \
            --json $S/ppl_gpu_windows.json
        cp $S/ppl_gpu_windows.json $OUT/
        tail -n 2 "$OUT/ppl_gpu.log"
    fi
    # the full suite with per-document samples, for scripts/compare_samples.py against the CPU's
    step eval_samples 300 $SQ eval -m $Q --tasks all --device cuda --json $OUT/eval_gpu.json \
        --samples $OUT/eval_gpu_samples.json
    tail -n 4 "$OUT/eval_samples.log"
    bundle_out call_requant
    ;;
cpuppl)  # after `requant` without CPU_WINDOWS (machine still warm): the CPU engine on the device's
         # cores on the same file, paired window by window with requant's GPU run
    test -f $S/ppl_gpu_windows.json || { echo "no GPU windows from requant (machine went cold?)"; exit 1; }
    env_setup
    cd "$(cat $S/worktree)" || exit 1
    lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | cut -c1-200 | tee -a "$OUT/summary.txt"
    step ppl_cpu ${TIMEOUT:-560} $SQ ppl -m $S/sq.sqm -f ../shared/data/wikitext2/wiki.test.raw -c 2048 -t $(nproc) \
        --json $OUT/ppl_cpu_windows.json --paired $S/ppl_gpu_windows.json
    tail -n 4 "$OUT/ppl_cpu.log"
    bundle_out call_cpuppl
    ;;
data_sha256)  # sha256 of a .sqm's tensor data (from round_up(24 + H, 64) to the end; docs/format.md)
    h=$(od -An -t u8 -j 16 -N 8 "$2" | tr -d ' ')
    tail -c +$(( (24 + h + 63) / 64 * 64 + 1 )) "$2" | sha256sum | cut -d' ' -f1
    ;;
*)
    echo "usage: $0 pack D1 D2 MODEL | tests D1 | seeds D1 | memcheck D1 | model D2 | requant D2 | cpuppl | data_sha256 FILE.sqm" >&2
    exit 2
    ;;
esac
