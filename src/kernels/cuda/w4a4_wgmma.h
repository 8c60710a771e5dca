// W4A4 prefill GEMM on Hopper's wgmma (sm_90a): the same operands, layout and
// fused epilogue as w4a4_gemm.h (int32 accumulators exact, y bit-identical),
// at 1.4–1.9× cuBLAS BF16 at M = 2048 on the LLaMA-3-8B shapes where the
// mma.sync tiled kernel reaches 0.67–0.82× (docs/perf.md, "wgmma prefill GEMM").
//
// Yᵀ = W·Xᵀ: the weights are wgmma's register A operand (m64 channel tiles,
// widened from the CUDA layout — the one copy the GEMV reads too — with the
// mma.sync kernel's two LOP3s, so the tensor cores accumulate 16·acc), the
// activation codes the shared-memory B operand (tokens × 128 k, K-major,
// 128-byte swizzle). A CTA = 1 producer warpgroup (one thread issues TMA copies
// of X and W into an mbarrier ring) + 2 consumer warpgroups of 128 channels ×
// 128 tokens each. Round 2 (sandbox v12): persistent, one CTA per SM walking
// 256 × 128 tiles, the ring running on across tiles, and the epilogue in
// warpgroup 0's three spare warps (the consumers hand their accumulators over
// through shared memory and go on with the next tile), so the fp32 y writes
// run under the tensor cores' work; the fused spectral rank stays on v7's
// non-persistent kernel. Design, versions and measurements:
// docs/kernels-cuda-notes.md, "wgmma prefill GEMM" and "…, round 2"; sandbox:
// dev/cuda/w4a4_wgmma.cu.
//
// Tests: tests/test_cuda_w4a4_gemm.cpp (CudaW4A4Gemm.Wgmma*); benchmark:
// bench/bench_cuda_gemm.cu.
#pragma once
#include <cstdint>

#include "kernels/cuda/w4a4_gemm.h"

namespace sq::cuda {

// w4a4_gemm sends m ≥ W4G_WGMMA_MIN_M here when w4a4_wgmma_fits (below that the
// GEMV, or the tiled kernel when the GEMV does not fit).
constexpr int W4G_WGMMA_MIN_M = 65;

// TMA reads activation rows with a row stride of k bytes: k % 16 == 0 and q 16-byte aligned.
bool w4a4_wgmma_fits(int m, int k, const uint8_t* q);

// Any m ≥ 0; needs w4a4_wgmma_fits(…) apart from the row count (clear error otherwise).
//
// Split-K (round 3): when the 256 × 128 tiles fill at most half the SMs (m ≤ ~512 at n = 4096)
// and a.ws is given, each tile's k steps are split over up to SMs / tiles CTAs; each writes its
// exact int32 partial tile to a plane of the workspace, and a second kernel (PDL) adds the
// planes — integer addition, so acc is exact and y bit-identical — and runs the epilogue.
// a.split_k forces a split count (≤ k steps, ≤ 16; the workspace must hold it).
void w4a4_gemm_wgmma(const W4GemmArgs& a, cudaStream_t s);
// Workspace ints the wgmma kernel's automatic split needs at most on this device (any shape).
int64_t w4a4_wgmma_ws_ints();

}  // namespace sq::cuda
