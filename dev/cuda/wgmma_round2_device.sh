#!/usr/bin/env bash
# Round 2 of the wgmma prefill GEMM on the lent H100, one call (docs/kernels-cuda-notes.md,
# "wgmma prefill GEMM, round 2"). DIR (carried) holds: wg (the sandbox, built here with
#   nvcc -O3 -std=c++20 -gencode=arch=compute_90a,code=sm_90a -Xptxas -v dev/cuda/w4a4_wgmma.cu -o wg -lcublasLt)
# and bundle.tar.xz from `BUILD=build-gpu scripts/gpu_wgmma.sh pack DIR` (specquant_tests, bench_cuda_gemm).
# Run on the device: bash DIR/wgmma_round2_device.sh DIR [all|lib]   (logs to $OUT; lib: no sandbox)
set -uo pipefail
D=$1
WHAT=${2:-all}
OUT=${OUT:-out/wgmma-r2}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# sandbox: exactness of v7 / v12* over its 11 shapes, then M = 2048 timing vs cuBLAS (same process)
[ "$WHAT" = all ] && timeout 110 "$D/wg" --only v7,v12,v12b,v12c --reps 20 >"$OUT/sandbox.log" 2>&1
echo "sandbox rc=$?" | tee -a "$OUT/summary.txt"
grep -E "FAIL|correctness|^\| " "$OUT/sandbox.log" | grep -v "| ok" | head -60
# library: the W4A4 GEMM tests, then bench_cuda_gemm --quick
S=/tmp/sqw && mkdir -p $S && tar -C $S -xJf "$D/bundle.tar.xz" || exit 1
export LD_LIBRARY_PATH=$S/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
WT=$(cat $S/worktree 2>/dev/null || echo /work/wt-wgmma)
if [ ! -e "$WT/tests" ]; then mkdir -p "$(dirname "$WT")" && ln -sfn "$PWD" "$WT"; fi
timeout 120 $S/bin/specquant_tests --gtest_filter='CudaW4A4Gemm.*' >"$OUT/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$OUT/summary.txt"
grep -E "^\[  (PASSED|FAILED) |FAILED|OK \]" "$OUT/tests.log" | head -30
timeout 100 $S/bin/bench_cuda_gemm --quick --reps 20 >"$OUT/bench.log" 2>&1
echo "bench rc=$?" | tee -a "$OUT/summary.txt"
grep -E "\| 2048 \|" "$OUT/bench.log" | head -40
timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $S/bin/specquant_tests \
    --gtest_filter='CudaW4A4Gemm.WgmmaUnalignedOutputs:CudaW4A4Gemm.WgmmaDispatchExact:CudaW4A4Gemm.WgmmaPersistentManyTiles' >"$OUT/memcheck.log" 2>&1
echo "memcheck rc=$?" | tee -a "$OUT/summary.txt"
tail -n 3 "$OUT/memcheck.log"
