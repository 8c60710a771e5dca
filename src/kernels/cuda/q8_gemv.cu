// Q8_0 GEMV for the lm_head of decode steps (decode v6; kernels/q8_format.h, the CPU
// counterpart kernels/cpu/q8_avx2.h): y [m, n] = x [m, k] · dequant(W)ᵀ, fp32 activations,
// 8-bit weights, m ≤ kQ8GemvMaxRows.
//
// Why: the lm_head of LLaMA-3-8B is 128256 × 4096; a decode step streams it whole. In BF16
// that is 1.05 GB (0.37 ms of a 3.4 ms W4A4 step on the H100), dequantized to float32 (what
// the engine did with a packed file's Q8_0 lm_head) 2.1 GB; in 8 bits + fp16 block scales
// 0.56 GB. The dequantized values d·q are exact in float32 (q8_format.h), so this computes
// LinearF32's function on dequant(W); only the summation order differs (the CPU q8_gemv's
// differs too): |y − exact| ≤ γ_{k+1} Σ|x·w| (tests).
//
// Device layout (q8_gemv_pack, once at load): codes int8 [n][k] (rows of k bytes, 16-byte
// aligned for k % 16 == 0) and scales fp16 bits [n][k/32]: 1.0625 bytes per weight.
// Work: a warp per kQ8Rows output rows; lane L reads 16 codes of each row per 512-byte step
// (one 16-byte load, coalesced across the warp), 4 steps of loads in flight before use, and
// the matching 16 floats of each x row (L1: x is 16 KB a row). Sum order, per (row t,
// output j): lane L's half-block partial p = Σ_e x·q over its 16 elements (an FMA chain),
// then acc = fma(d, p, acc) over the lane's steps in order, then the warp's butterfly.
// int8 → float by the exponent trick (one LOP + one FADD, exact): the I2F conversion unit
// (16/clk/SM) would cap the stream below HBM speed.
// Measured (H100, LLaMA-3-8B lm_head, eager per-op, docs/perf.md "Decode v6"): 1 row 0.20 ms
// (~2.8 TB/s) against 0.38 for the bf16 GEMM; 8 rows 1.09 ms against 0.38 — each x row is re-read
// from L1 for every kQ8Rows outputs, so at 8 rows L1 caps it. The engine uses it for one row.
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/reduce.cuh"

namespace sq::cuda {

namespace {

constexpr int kQ8Threads = 256, kQ8Rows = 2, kQ8Steps = 4;

// The 4 signed bytes of w as exact floats: 2^23 + (b ^ 0x80) − (2^23 + 128) = (int8) b.
__device__ __forceinline__ void i8x4_to_f32(uint32_t w, float (&f)[4]) {
    const uint32_t u = w ^ 0x80808080u;
#pragma unroll
    for (int e = 0; e < 4; ++e)
        f[e] = __fsub_rn(__uint_as_float(0x4B000000u | ((u >> (8 * e)) & 0xFFu)), 8388736.0f);
}

template <int M>
__global__ void __launch_bounds__(kQ8Threads) q8_gemv_kernel(const float* __restrict__ x, int64_t ldx,
                                                             const int8_t* __restrict__ q,
                                                             const __half* __restrict__ d, int n, int k,
                                                             float* __restrict__ y, int64_t ldy, int m) {
    const int lane = threadIdx.x & 31;
    const int j0 = (blockIdx.x * (kQ8Threads / 32) + (threadIdx.x >> 5)) * kQ8Rows;
    const int steps = (k + 511) / 512, kb = k / 32;
    // Weights are constant: the first steps' loads go out before the PDL wait (pdl.cuh).
    uint4 w[kQ8Steps][kQ8Rows];
    auto load = [&](int s0) {
#pragma unroll
        for (int s = 0; s < kQ8Steps; ++s)
#pragma unroll
            for (int r = 0; r < kQ8Rows; ++r) {
                const int i0 = (s0 + s) * 512 + lane * 16, j = j0 + r;
                w[s][r] = i0 < k && j < n ? __ldg(reinterpret_cast<const uint4*>(q + (int64_t)j * k + i0))
                                          : make_uint4(0, 0, 0, 0);
            }
    };
    load(0);
    pdl_wait();  // x: the final norm's output
    pdl_trigger();
    float acc[M][kQ8Rows];
#pragma unroll
    for (int t = 0; t < M; ++t)
#pragma unroll
        for (int r = 0; r < kQ8Rows; ++r) acc[t][r] = 0.0f;
    for (int s0 = 0; s0 < steps; s0 += kQ8Steps) {
        if (s0 > 0) load(s0);
#pragma unroll
        for (int s = 0; s < kQ8Steps; ++s) {
            const int i0 = (s0 + s) * 512 + lane * 16;
            if (i0 >= k) break;  // k % 16 == 0: a lane's 16 elements are all in or all out
            float dv[kQ8Rows];
#pragma unroll
            for (int r = 0; r < kQ8Rows; ++r) dv[r] = j0 + r < n ? __half2float(d[(int64_t)(j0 + r) * kb + i0 / 32]) : 0.0f;
            float wf[kQ8Rows][16];
#pragma unroll
            for (int r = 0; r < kQ8Rows; ++r) {
                const uint32_t ww[4] = {w[s][r].x, w[s][r].y, w[s][r].z, w[s][r].w};
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    float f[4];
                    i8x4_to_f32(ww[c], f);
#pragma unroll
                    for (int e = 0; e < 4; ++e) wf[r][4 * c + e] = f[e];
                }
            }
#pragma unroll
            for (int t = 0; t < M; ++t) {
                if (t >= m) break;  // rows of x past m (M is m rounded up to 1, 2, 4, 8)
                const float4* xr = reinterpret_cast<const float4*>(x + t * ldx + i0);
                float xv[16];
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const float4 v = __ldg(xr + c);
                    xv[4 * c] = v.x, xv[4 * c + 1] = v.y, xv[4 * c + 2] = v.z, xv[4 * c + 3] = v.w;
                }
#pragma unroll
                for (int r = 0; r < kQ8Rows; ++r) {
                    float p = 0.0f;
#pragma unroll
                    for (int e = 0; e < 16; ++e) p = __fmaf_rn(xv[e], wf[r][e], p);
                    acc[t][r] = __fmaf_rn(dv[r], p, acc[t][r]);
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < M; ++t)
#pragma unroll
        for (int r = 0; r < kQ8Rows; ++r) {
            const float v = warp_sum(acc[t][r]);
            if (lane == 0 && t < m && j0 + r < n) y[t * ldy + j0 + r] = v;
        }
}

}  // namespace

void q8_gemv_pack(const uint8_t* blocks, int64_t n, int64_t k, int8_t* codes, uint16_t* scales) {
    SQ_CHECK(n >= 0 && k > 0 && k % 32 == 0, "q8_gemv_pack: k = ", k, " is not a positive multiple of 32");
    const int64_t kb = k / 32;
    for (int64_t j = 0; j < n; ++j)
        for (int64_t b = 0; b < kb; ++b) {
            const uint8_t* src = blocks + (j * kb + b) * 34;  // BlockQ8: fp16 d, then 32 int8 codes
            scales[j * kb + b] = (uint16_t)(src[0] | (src[1] << 8));
            for (int e = 0; e < 32; ++e) codes[j * k + b * 32 + e] = (int8_t)src[2 + e];
        }
}

void q8_gemv(const float* x, int64_t ldx, int m, const int8_t* codes, const uint16_t* scales, int n, int k, float* y,
             int64_t ldy, cudaStream_t s) {
    SQ_CHECK(m >= 0 && m <= kQ8GemvMaxRows, "CUDA q8_gemv: ", m, " rows (at most ", kQ8GemvMaxRows, ")");
    SQ_CHECK(k > 0 && k % 32 == 0 && n >= 0, "CUDA q8_gemv: k = ", k, " must be a positive multiple of 32 (n = ", n,
             ")");
    SQ_CHECK(x && codes && scales && y, "CUDA q8_gemv: null pointer");
    SQ_CHECK(((uintptr_t)x & 15) == 0 && ldx % 4 == 0 && ((uintptr_t)codes & 15) == 0,
             "CUDA q8_gemv: x and the codes must be 16-byte aligned (ldx ", ldx, ")");
    if (m == 0 || n == 0) return;
    const dim3 grid((unsigned)((n + kQ8Rows * (kQ8Threads / 32) - 1) / (kQ8Rows * (kQ8Threads / 32))));
    const __half* d = reinterpret_cast<const __half*>(scales);
    switch (m) {
        case 1: launch_pdl("q8_gemv", q8_gemv_kernel<1>, grid, dim3(kQ8Threads), 0, s, x, ldx, codes, d, n, k, y, ldy, m); break;
        case 2: launch_pdl("q8_gemv", q8_gemv_kernel<2>, grid, dim3(kQ8Threads), 0, s, x, ldx, codes, d, n, k, y, ldy, m); break;
        case 3:
        case 4: launch_pdl("q8_gemv", q8_gemv_kernel<4>, grid, dim3(kQ8Threads), 0, s, x, ldx, codes, d, n, k, y, ldy, m); break;
        default: launch_pdl("q8_gemv", q8_gemv_kernel<8>, grid, dim3(kQ8Threads), 0, s, x, ldx, codes, d, n, k, y, ldy, m); break;
    }
}

}  // namespace sq::cuda
