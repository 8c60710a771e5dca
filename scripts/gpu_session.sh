#!/usr/bin/env bash
# GPU evaluation session on the lent H100 (docs/perf.md, "GPU eval engine").
#
# The device machine has the CUDA driver and toolkit but none of our -dev
# packages, so the binaries are built here and carried, and one call may
# carry 64 MiB while the default model alone is 98 MB. So:
#   cmake -S . -B build-gpu -DSPECQUANT_CUDA=ON && cmake --build build-gpu -j2
#   scripts/gpu_session.sh pack    # (BUILD=build-x: another build folder; PACK=.gpu-x: .gpu-x1/, .gpu-x2/)
#                                  # .gpu1/ = bundle.tar.xz (binaries, their non-system
#                                  # libraries, ../shared/data) + model part 1; .gpu2/ = part 2
# and two device calls within 30 s of each other (the machine stays warm;
# /tmp survives between calls), from the repository root:
#   call 1 (carry .gpu1):  scripts/gpu_session.sh unpack .gpu1 && scripts/gpu_session.sh tests
#   call 2 (carry .gpu2):  scripts/gpu_session.sh unpack .gpu2 && scripts/gpu_session.sh evals
#                          (and/or: scripts/gpu_session.sh w4a4check)
#   or, for the method tables (docs/results.md), call 2 runs
#       scripts/gpu_session.sh unpack .gpu2 && scripts/gpu_session.sh tables start && scripts/gpu_session.sh collect 560
#   and further calls, each within 30 s of the last, `scripts/gpu_session.sh collect 560` until all jobs say done:
#   quantization runs on the 16 CPU cores (7 methods in parallel, 2 threads each),
#   every evaluation on the GPU. Jobs run detached (setsid) across calls.
#   or, for the batched (varlen) engine's before/after (docs/perf.md), call 2 runs
#       scripts/gpu_session.sh unpack .gpu2 && scripts/gpu_session.sh batch start && scripts/gpu_session.sh collect 540 batch
#   and further calls `scripts/gpu_session.sh collect 560 batch` until done: FP quick suite batched and
#   one document per call (SQ_CUDA_BATCH_TOKENS=0) with per-request samples compared, FP full suite;
#   quarot W4A4KV4 (calib 32 x 512, quantized on 14 cores while the FP runs use the GPU), the same.
#   `scripts/gpu_session.sh batchdiag` (after both unpacks) quantizes the same model if missing and
#   prints per-token W4A4 agreement GPU vs CPU vs varlen batch, and batch 16384 vs 8192 per request.
# .gpu*/ is git-ignored through .git/info/exclude. Logs go to $OUT (or out/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
S=/tmp/sq  # everything unpacked on the device
BUILD=${BUILD:-build-gpu}
PACK=${PACK:-.gpu}  # pack writes ${PACK}1/ and ${PACK}2/
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

env_setup() {
    export LD_LIBRARY_PATH=$S/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    # The binaries carry this checkout's absolute paths (tests/data, ../shared/data).
    if [ ! -e /work/main/tests/data ]; then mkdir -p /work && ln -sfn "$PWD" /work/main; fi
    if [ ! -e /work/shared/data ]; then mkdir -p /work && ln -sfn "$S/shared" /work/shared; fi
    if [ ! -e ../shared/data ]; then ln -sfn "$S/shared" ../shared; fi
    SQ=$S/bin/specquant
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
}

case "${1:-}" in
pack)
    P=/tmp/sq_pack.$$  # private staging folder: other sessions may pack at the same time
    rm -rf ${PACK}1 ${PACK}2 $P && mkdir -p ${PACK}1 ${PACK}2 $P/bin $P/lib $P/shared/data
    cp $BUILD/specquant $BUILD/specquant_tests $P/bin/ && strip $P/bin/*
    for lib in $(ldd $BUILD/specquant $BUILD/specquant_tests | awk '/=>/ {print $3}' |
                 grep -E 'fftw3f|pcre2|gomp' | sort -u); do cp -L "$lib" $P/lib/; done
    cp -r ../shared/data/wikitext2 ../shared/data/tasks ../shared/data/calib $P/shared/data/
    tar -C $P -I 'xz -T2' -cf ${PACK}1/bundle.tar.xz .
    # 40 MiB parts: the bundle (~15 MiB) + part aa in call 1, parts ab + ac in call 2, each under
    # the 64 MiB a call may carry together with the working tree
    split -b 40M $MODEL $P/model.part.
    mv $P/model.part.aa ${PACK}1/ && mv $P/model.part.a[bc] ${PACK}2/
    test ! -e $P/model.part.ad || { echo "model needs 4 parts" >&2; exit 1; }
    du -sh ${PACK}1 ${PACK}2
    rm -rf $P
    ;;
unpack)  # unpack a carried folder into /tmp/sq; assemble the model once both parts are there
    mkdir -p $S
    if [ -f "$2/bundle.tar.xz" ]; then tar -C $S -xJf "$2/bundle.tar.xz"; fi
    cp "$2"/model.part.* $S/ 2>/dev/null
    if [ -f $S/model.part.aa ] && [ -f $S/model.part.ab ] && [ -f $S/model.part.ac ]; then
        cat $S/model.part.aa $S/model.part.ab $S/model.part.ac > $S/model.gguf && rm $S/model.part.*
        echo "$MODEL_SHA  $S/model.gguf" | sha256sum -c - || exit 1
    fi
    ;;
tests)
    env_setup
    $S/bin/specquant_tests --gtest_filter='Cuda*' 2>&1 | tee "$OUT/tests_cuda.log"
    ;;
evals)
    env_setup
    M=$S/model.gguf D=$S/shared/data Q=$S/q.sqm W=$S/shared/data/wikitext2/wiki.test.raw
    # step NAME CMD...: full output (progress bars dropped) appended to evals.log, wall time to summary.txt
    step() {
        local name=$1 t0 t1 rc
        shift
        echo "== $name: $*" >>"$OUT/evals.log"
        t0=$(date +%s%N)
        "$@" 2>&1 | tr '\r' '\n' | grep -v -E '\[[#.]+\]' >>"$OUT/evals.log"
        rc=${PIPESTATUS[0]}
        t1=$(date +%s%N)
        echo "$name: rc=$rc wall=$(( (t1 - t0) / 1000000 )) ms" | tee -a "$OUT/summary.txt"
    }
    step ppl_fp_gpu $SQ ppl -m $M -c 2048 --device cuda -f $W --json "$OUT/ppl_fp_gpu.json"
    step quick_fp_gpu $SQ eval -m $M --tasks quick --device cuda --data-dir $D --json "$OUT/quick_fp_gpu.json"
    step quantize $SQ quantize -m $M --method quarot --kv-bits 4 --calib-n 4 --calib-len 128 \
        --calib /work/shared/data/calib/wiki.utf8 -o $Q
    sha256sum $Q | tee -a "$OUT/summary.txt"
    step ppl_q4_gpu_4w $SQ ppl -m $Q -c 2048 --chunks 4 --device cuda -f $W
    step ppl_q4_cpu_4w $SQ ppl -m $Q -c 2048 --chunks 4 --device cpu -f $W
    step ppl_q4_gpu $SQ ppl -m $Q -c 2048 --device cuda -f $W --json "$OUT/ppl_q4_gpu.json"
    step quick_q4_gpu $SQ eval -m $Q --tasks quick --device cuda --data-dir $D --json "$OUT/quick_q4_gpu.json"
    SQ_CUDA_GRAPHS=0 step quick_fp_gpu_nographs $SQ eval -m $M --tasks quick --device cuda --data-dir $D
    step quick_fp_cpu timeout 300 $SQ eval -m $M --tasks quick --device cpu --data-dir $D --json "$OUT/quick_fp_cpu.json"
    grep -E '^PPL|windows x|^== |tokens/s|^mean' "$OUT/evals.log"
    ;;
w4a4check)  # after evals: GPU vs CPU on a real W4A4 model (per-token diagnostic, 16 windows), compare --device cuda
    env_setup
    M=$S/model.gguf D=$S/shared/data Q=$S/q.sqm W=$S/shared/data/wikitext2/wiki.test.raw
    test -f $Q || $SQ quantize -m $M --method quarot --kv-bits 4 --calib-n 4 --calib-len 128 \
        --calib /work/shared/data/calib/wiki.utf8 -o $Q >/dev/null 2>&1
    SQ_DIAG_SQM=$Q SQ_DIAG_TEXT=$W $S/bin/specquant_tests --gtest_filter='CudaDiag*' 2>&1 | grep -E 'diag|OK|FAIL'
    for dev in cuda cpu; do
        $SQ ppl -m $Q -c 2048 --chunks 16 --device $dev -f $W 2>&1 | grep -E 'windows x|^PPL' | sed "s/^/$dev: /"
    done | tee "$OUT/w4a4check.log"
    $SQ compare -m $M --methods fp,quarot --bits w4a4kv4 --suite quick --device cuda --calib-n 4 --calib-len 128 \
        --calib /work/shared/data/calib/wiki.utf8 --data-dir $D 2>&1 | tr '\r' '\n' | grep -v -E '\[[#.]+\]' |
        tail -8 | tee -a "$OUT/w4a4check.log"
    ;;
agree8)  # a real W4A4KV4 file, GPU vs CPU, 8 windows of 2048 (docs/perf.md "After the session-5 merges"
         # has the same commands' values at 4384b13: GPU 28.0374, CPU 28.2752; identical digits mean the
         # later kernels changed no bit of either engine on this file)
    env_setup
    M=$S/model.gguf W=$S/shared/data/wikitext2/wiki.test.raw Q=$S/rs4.sqm
    $SQ quantize -m $M --method specquant --rotate --basis svd --kv-bits 4 --k-center on --embed-bits 4 \
        --calib-n 8 --calib-len 256 -t 8 -o $Q 2>&1 | tr '\r' '\n' | grep -v -E '\[[#.]+\]' | tail -3
    sha256sum $Q | tee "$OUT/agree8.log"
    for dev in "--device cuda" "--device cpu -t 16"; do
        /usr/bin/time -f "wall %e s" $SQ ppl -m $Q -c 2048 --chunks 8 $dev -f $W 2>&1 | grep -E 'windows x|^PPL|^wall' |
            sed "s/^/$dev: /"
    done | tee -a "$OUT/agree8.log"
    ;;
tables)  # "start": the W4A4KV4 quick-suite table of every method + full suites, detached
    env_setup
    M=$S/model.gguf D=$S/shared/data R=$S/res
    pkill -f "$S/bin/specquant" ; sleep 1; rm -rf $R && mkdir -p $R
    CAL="--calib $D/calib/wiki.utf8 --calib-n 32 --calib-len 512 --seed 0"
    # job NAME CMD: runs detached, its output in $R/NAME.log, "done rc=N" at the end
    job() {
        local name=$1
        shift
        setsid bash -c "{ $*; } > $R/$name.log 2>&1; echo \"done rc=\$?\" >> $R/$name.log" </dev/null >/dev/null 2>&1 &
    }
    job full_fp "$SQ eval -m $M --tasks all --device cuda --data-dir $D --json $R/full_fp.json && \
                 $SQ eval -m $M --tasks quick --device cuda --data-dir $D --json $R/quick_fp.json"
    for spec in "rtn:--method rtn" "smoothquant:--method smoothquant" "gptq:--method gptq" "quarot:--method quarot" \
                "specquant:--method specquant" "specquant_r:--method specquant --rotate" \
                "specquant_rs:--method specquant --rotate --basis svd"; do
        name=${spec%%:*} args=${spec#*:}
        full=""
        if [ "$name" = specquant_rs ] || [ "$name" = specquant ]; then
            full="&& $SQ eval -m $R/$name.sqm --tasks all --device cuda --data-dir $D --json $R/full_$name.json"
        fi
        job "$name" "/usr/bin/time -v $SQ quantize -m $M $args --kv-bits 4 $CAL -t 2 -o $R/$name.sqm && \
                     $SQ eval -m $R/$name.sqm --tasks quick --device cuda --data-dir $D --json $R/quick_$name.json $full"
    done
    sleep 3
    pgrep -fc "specquant" || true
    ;;
batch)  # "start": batched vs one-document GPU evaluation, FP and quarot W4A4KV4, detached
    env_setup
    M=$S/model.gguf D=$S/shared/data R=$S/batch
    rm -rf $R && mkdir -p $R
    job() {
        local name=$1
        shift
        setsid bash -c "{ $*; } > $R/$name.log 2>&1; echo \"done rc=\$?\" >> $R/$name.log" </dev/null >/dev/null 2>&1 &
    }
    # $R/run.sh NAME ARGS...: one GPU eval; JSON and per-request samples kept, wall time from the shell
    cat > $R/run.sh <<EOF
#!/usr/bin/env bash
n=\$1; shift
t0=\$(date +%s%N)
$SQ eval --device cuda --data-dir $D --json $R/\$n.json --samples $R/\$n.samples.jsonl "\$@" 2>&1 |
    tr '\r' '\n' | grep -v -E '\[[#.]+\]'
rc=\${PIPESTATUS[0]}
echo "== \$n: rc=\$rc wall=\$(( (\$(date +%s%N) - t0) / 1000000 )) ms"
EOF
    chmod +x $R/run.sh
    # quantize on 14 of the 16 cores while the FP runs use the GPU (and a core each)
    job quantize "/usr/bin/time -v $SQ quantize -m $M --method quarot --kv-bits 4 --calib $D/calib/wiki.utf8 \
        --calib-n 32 --calib-len 512 --seed 0 -t 14 -o $R/q.sqm"
    # ONEDOC=0: skip the one-document runs (the "before" numbers)
    one_fp="SQ_CUDA_BATCH_TOKENS=0 $R/run.sh quick_fp_1doc -m $M --tasks quick;"
    one_q4="SQ_CUDA_BATCH_TOKENS=0 $R/run.sh quick_q4_1doc -m $R/q.sqm --tasks quick;"
    if [ "${ONEDOC:-1}" = 0 ]; then one_fp="" one_q4=""; fi
    job fp "$R/run.sh quick_fp -m $M --tasks quick; $one_fp
        $R/run.sh full_fp -m $M --tasks all"
    job q4 "until grep -q '^done' $R/fp.log 2>/dev/null && grep -q '^done' $R/quantize.log 2>/dev/null; do sleep 2; done;
        sha256sum $R/q.sqm; $R/run.sh quick_q4 -m $R/q.sqm --tasks quick; $one_q4
        $R/run.sh full_q4 -m $R/q.sqm --tasks all"
    sleep 3
    pgrep -fc "specquant" || true
    ;;
batchdiag)  # after both parts are unpacked: is batched-vs-one-document W4A4 disagreement rounding? (docs/perf.md)
    env_setup
    M=$S/model.gguf D=$S/shared/data R=$S/batch Q=$S/batch/q.sqm
    mkdir -p $R
    test -f $Q || /usr/bin/time -f "quantize: %e s wall" $SQ quantize -m $M --method quarot --kv-bits 4 \
        --calib $D/calib/wiki.utf8 --calib-n 32 --calib-len 512 --seed 0 -t 16 -o $Q 2>&1 | tail -n 1
    sha256sum $Q
    # per-token NLL of one 2048-token window: GPU vs CPU, vs GPU with the embedding moved 1 ulp, vs a varlen batch
    SQ_DIAG_SQM=$Q SQ_DIAG_TEXT=$D/wikitext2/wiki.test.raw SQ_DIAG_TOKENS=2048 $S/bin/specquant_tests \
        --gtest_filter='CudaDiag*' 2>&1 | grep -E 'diag|OK|FAIL' | tee "$OUT/batchdiag.log"
    # quick suite batched at two batch sizes (only the rounding of other GEMM sizes differs), per request
    for b in 16384 8192; do
        SQ_CUDA_BATCH_TOKENS=$b $SQ eval -m $Q --tasks quick --device cuda --data-dir $D \
            --samples $R/quick_q4_$b.samples.jsonl 2>&1 | grep -E 'headline|wikitext2|tokens/s' | sed "s/^/batch $b: /"
    done | tee -a "$OUT/batchdiag.log"
    "$0" compare $R/quick_q4_16384.samples.jsonl $R/quick_q4_8192.samples.jsonl | tee -a "$OUT/batchdiag.log"
    ;;
compare)  # per-request agreement of two --samples files: compare A.samples.jsonl B.samples.jsonl
    python3 - "$2" "$3" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b), (len(a), len(b))
worst, tot, n, flips = 0.0, 0.0, 0, 0
for x, y in zip(a, b):
    assert (x["task"], x["line"]) == (y["task"], y["line"]), (x["task"], x["line"], y["task"], y["line"])
    for u, v, gu, gv in zip(x["ll"], y["ll"], x["greedy"], y["greedy"]):
        d = abs(u - v); worst = max(worst, d); tot += d; n += 1; flips += gu != gv
print(f"{sys.argv[1]} vs {sys.argv[2]}: {n} requests, max |dll| {worst:.3e}, mean {tot / max(n, 1):.3e}, greedy flips {flips}")
PY
    ;;
collect)  # wait up to $2 s for the detached jobs of $3 (res: tables, batch), then return their logs and JSON
    R=$S/${3:-res}
    end=$(( $(date +%s) + ${2:-0} ))
    while [ "$(date +%s)" -lt $end ] && [ -n "$(grep -L '^done rc=' $R/*.log 2>/dev/null)" ]; do sleep 10; done
    for f in $R/*.log; do
        printf '%-16s %s\n' "$(basename $f .log)" "$(tr '\r' '\n' < $f | grep -v -E '\[[#.]+\]' | grep -E '^done|Elapsed|Maximum resident|headline|error' | tr '\n' ' ')"
    done
    tar -C $R -czf "$OUT/${3:-tables}.tgz" $(cd $R && ls *.log *.json 2>/dev/null)
    if [ "${3:-}" = batch ]; then
        tail -n 4 $R/quantize.log 2>/dev/null
        grep -h -E '^== |mean|tokens/s|wikitext2' $R/fp.log $R/q4.log 2>/dev/null
        for p in fp q4; do
            if [ -f $R/quick_$p.samples.jsonl ] && [ -f $R/quick_${p}_1doc.samples.jsonl ]; then
                "$0" compare $R/quick_$p.samples.jsonl $R/quick_${p}_1doc.samples.jsonl
            fi
        done
    fi
    ;;
*)
    echo "usage: $0 pack|unpack DIR|tests|evals|w4a4check|tables|batch|batchdiag|compare A B|collect SECONDS [res|batch]" >&2
    exit 2
    ;;
esac
