#!/usr/bin/env bash
# GPU vs CPU perplexity of one W4A4 model on the full WikiText-2 test set
# (147 windows × 2048), on the lent H100 machine (issue 6, acceptance 1:
# "equals the CPU reference backend within 0.1%").
#
# Needs the bundle of scripts/gpu_session.sh (pack; unpack both parts). The
# model is quantized there with the local command's options, so that its
# sha256 can be compared with a local copy:
#   scripts/gpu_agree.sh [QUANTIZE OPTIONS...]
#   (default: --method specquant --rotate --kv-bits 4 --calib-n 8 --calib-len 512)
# Prints the sha256, the GPU PPL and wall times; JSON in $OUT/agree_cuda.json.
# CPU=1 also runs the CPU backend there (slow: the 147 windows took > 7 min
# on its 16 cores); otherwise compare with the same command run locally on
# the same file (same sha256): specquant ppl -m FILE -c 2048 --json cpu.json.
set -uo pipefail
cd "$(dirname "$0")/.."
S=/tmp/sq
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$S/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
if [ ! -e /work/main/tests/data ]; then mkdir -p /work && ln -sfn "$PWD" /work/main; fi
if [ ! -e /work/shared/data ]; then mkdir -p /work && ln -sfn "$S/shared" /work/shared; fi
SQ=$S/bin/specquant M=$S/model.gguf D=$S/shared/data W=$S/shared/data/wikitext2/wiki.test.raw Q=$S/agree.sqm
opts=("$@")
[ ${#opts[@]} -gt 0 ] || opts=(--method specquant --rotate --kv-bits 4 --calib-n 8 --calib-len 512)
t0=$(date +%s)
$SQ quantize -m $M "${opts[@]}" --calib $D/calib/wiki.utf8 -t 2 -o $Q 2>&1 | tr '\r' '\n' | tail -1
echo "quantize wall $(( $(date +%s) - t0 )) s"
sha256sum $Q
for dev in cuda $([ "${CPU:-0}" = 1 ] && echo cpu); do
    t0=$(date +%s)
    $SQ ppl -m $Q -c 2048 -f $W --device $dev -t 16 --json "$OUT/agree_$dev.json" 2>&1 | tr '\r' '\n' |
        grep -E '^PPL|windows' | sed "s/^/$dev: /"
    echo "$dev: wall $(( $(date +%s) - t0 )) s"
done
[ "${CPU:-0}" = 1 ] || exit 0
python3 - "$OUT/agree_cuda.json" "$OUT/agree_cpu.json" <<'PY'
import json, sys
g, c = (json.load(open(f))["tasks"]["wikitext2"] for f in sys.argv[1:3])
pg, pc = g["metrics"]["ppl"]["value"], c["metrics"]["ppl"]["value"]
print(f"{g['windows']} windows, {g['tokens_scored']} tokens: PPL cuda {pg:.4f} cpu {pc:.4f}, "
      f"relative difference {100 * (pg - pc) / pc:+.4f}%, mean NLL {g['nll']['value']:.6f} vs {c['nll']['value']:.6f}")
PY
