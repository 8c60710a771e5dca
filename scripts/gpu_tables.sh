#!/usr/bin/env bash
# The method tables of docs/results.md on the lent H100 machine: every
# quantization on its 16 CPU cores (8 jobs at a time, 2 threads each), every
# evaluation on the GPU (batched engine), all jobs detached so that they
# survive between device calls.
#
# Needs the bundle of scripts/gpu_session.sh (pack, then unpack .gpu1 and
# .gpu2 in two back-to-back calls). Then, from the repository root:
#   [PARALLEL=8 THREADS=2] scripts/gpu_tables.sh start [JOBS]   # JOBS: a jobs file (default: the list below)
#   scripts/gpu_session.sh collect 560 tables3   # repeat until every job says done; → $OUT/tables3.tgz
# Each job: quantize (seed 0, calibration 32 × 512 of ../shared/data/calib
# unless the job says otherwise), then `eval --tasks quick --device cuda`,
# and for jobs marked "full" also `eval --tasks all --device cuda`; "ppl" adds
# the full WikiText-2 perplexity alone first (`ppl -c 2048 --device cuda`).
# Results: $S/tables3/<name>.log, quick_<name>.json, full_<name>.json.
# A job's options may name the model (-m) and the calibration file (--calib)
# themselves: the packed file records both paths as given, so a job that
# must be byte-identical to a local run uses the local paths (symlinked).
set -uo pipefail
cd "$(dirname "$0")/.."
S=/tmp/sq
R=$S/tables3
export LD_LIBRARY_PATH=$S/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
if [ ! -e /work/main/tests/data ]; then mkdir -p /work && ln -sfn "$PWD" /work/main; fi
if [ ! -e /work/shared/data ]; then mkdir -p /work && ln -sfn "$S/shared" /work/shared; fi
SQ=$S/bin/specquant M=$S/model.gguf D=$S/shared/data
PARALLEL=${PARALLEL:-8} THREADS=${THREADS:-2}  # jobs at a time × threads each ≤ the 16 cores

# name | quantize options (method, bits, extras) | evals
default_jobs() {
    cat <<'EOF'
specquant_rs_c128|--method specquant --rotate --basis svd --kv-bits 4 --calib-n 128|quick,full
rtn|--method rtn --kv-bits 4|quick,full
smoothquant|--method smoothquant --kv-bits 4|quick,full
gptq|--method gptq --kv-bits 4|quick,full
quarot|--method quarot --kv-bits 4|quick,full
specquant|--method specquant --kv-bits 4|quick,full
specquant_r|--method specquant --rotate --kv-bits 4|quick,full
specquant_rs|--method specquant --rotate --basis svd --kv-bits 4|quick,full
rtn_w4a16|--method rtn --a-bits 16 --kv-bits 16|quick
smoothquant_w4a16|--method smoothquant --a-bits 16 --kv-bits 16|quick
gptq_w4a16|--method gptq --a-bits 16 --kv-bits 16|quick
quarot_w4a16|--method quarot --a-bits 16 --kv-bits 16|quick
specquant_w4a16|--method specquant --a-bits 16 --kv-bits 16|quick
rtn_kv16|--method rtn --kv-bits 16|quick
smoothquant_kv16|--method smoothquant --kv-bits 16|quick
gptq_kv16|--method gptq --kv-bits 16|quick
quarot_kv16|--method quarot --kv-bits 16|quick
specquant_kv16|--method specquant --kv-bits 16|quick
specquant_rs_kv16|--method specquant --rotate --basis svd --kv-bits 16|quick
specquant_k16|--method specquant --kv-bits 4 --k-bar 16|quick
specquant_k64|--method specquant --kv-bits 4 --k-bar 64|quick
specquant_absmean|--method specquant --kv-bits 4 --importance abs_mean|quick
specquant_absmax|--method specquant --kv-bits 4 --importance abs_max|quick
specquant_l2|--method specquant --kv-bits 4 --importance l2|quick
specquant_rs_k64|--method specquant --rotate --basis svd --kv-bits 4 --k-bar 64|quick
EOF
}

case "${1:-}" in
start)
    pkill -f "$S/bin/specquant" ; sleep 1; rm -rf $R && mkdir -p $R
    if [ -n "${2:-}" ]; then cp "$2" $R/jobs.txt; else default_jobs > $R/jobs.txt; fi
    # One job: quantize, then its evaluations; "done rc=N" ends its log.
    cat > $R/one.sh <<EOF
#!/usr/bin/env bash
IFS='|' read -r name opts evals <<< "\$1"
log=$R/\$name.log
{
    echo "== \$name: \$opts"
    /usr/bin/time -v $SQ quantize \$(case " \$opts" in *\ -m\ *) ;; *) echo -m $M;; esac) \$opts --calib-len 512 --seed 0 \\
        \$(case "\$opts" in *--calib\ *) ;; *) echo --calib $D/calib/wiki.utf8;; esac) \\
        \$(case "\$opts" in *--calib-n*) ;; *) echo --calib-n 32;; esac) -t $THREADS -o $R/\$name.sqm &&
    sha256sum $R/\$name.sqm &&
    if [[ "\$evals" == *ppl* ]]; then  # full WikiText-2 perplexity alone (GPU vs CPU agreement)
        $SQ ppl -m $R/\$name.sqm -c 2048 -f $D/wikitext2/wiki.test.raw --device cuda --json $R/ppl_\$name.json
    fi &&
    $SQ eval -m $R/\$name.sqm --tasks quick --device cuda --data-dir $D --json $R/quick_\$name.json &&
    if [[ "\$evals" == *full* ]]; then
        t0=\$(date +%s)
        $SQ eval -m $R/\$name.sqm --tasks all --device cuda --data-dir $D --json $R/full_\$name.json
        rc=\$?; echo "full suite wall \$(( \$(date +%s) - t0 )) s"; (exit \$rc)
    fi
} > \$log 2>&1
echo "done rc=\$?" >> \$log
EOF
    chmod +x $R/one.sh
    # every job has a log from the start, so `collect` waits for queued ones too
    grep -v '^#' $R/jobs.txt | cut -d'|' -f1 | while read -r n; do echo queued > $R/$n.log; done
    setsid bash -c "grep -v '^#' $R/jobs.txt | tr '\n' '\0' | xargs -0 -P $PARALLEL -n 1 $R/one.sh" </dev/null >/dev/null 2>&1 &
    sleep 5
    ls $R
    ;;
*)
    echo "usage: $0 start [JOBS]   (then scripts/gpu_session.sh collect SECONDS tables3)" >&2
    exit 2
    ;;
esac
