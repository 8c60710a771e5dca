// W4A4 GEMM on Hopper's 8-bit tensor cores (sm_90a): 4-bit signed weights,
// unsigned activation codes (bytes from act_quant), int32 accumulation with
// mma.sync.m16n8k32 (u8 × s8), the reference epilogue fused.
//
// Hopper has no 4-bit MMA (mma.sync s4 is emulated, ~52 TOP/s, SPEC.md §4),
// so weights are stored at 4 bits and widened to 8 bits in registers:
//
// Kernel weight layout ("CUDA layout", docs/format.md), made once on the host
// by w4g_repack from the canonical codes [n, ceil(k/2)] of w4a4_format.h:
//   Kp = k rounded up to 128, Np = n rounded up to 8, size Np·Kp/2 bytes
//   (4 bits/weight; zero pad: code 0 adds nothing to any accumulator).
//   block (nb, kb) of 8 output rows × 128 k: 512 bytes at ((nb·Kp/128) + kb)·512
//     lane L = 0..31 (g = L/4, t = L%4): 16 bytes at +16·L = 4 words, word s = 0..3
//     (the k32 step), byte j = 0..3 of word s:
//         low nibble  = code[nb·8 + g][kb·128 + 32·s + 4·t + j]
//         high nibble = code[nb·8 + g][kb·128 + 32·s + 16 + 4·t + j]
// Why: that word is exactly lane L's B fragment of one m16n8k32 step (rows
// k = 4t..4t+3 and 16+4t..16+4t+3 of column g), so one coalesced 16-byte load
// gives a lane its fragments for 128 k of one n8 tile (a warp reads 512
// contiguous bytes), and widening is two LOP3s per 8 weights:
//     b0 = (word << 4) & 0xF0F0F0F0,  b1 = word & 0xF0F0F0F0
// each byte then holds 16·code as an s8 (two's complement nibble in the high
// half), so the MMA accumulates 16·acc; acc = (16·acc) >> 4 exactly. No sign
// extension, no offset-binary correction. |16·acc| ≤ k·255·128 < 2^31 for
// k ≤ 65536 (any 8-bit code); checked.
//
// Epilogue (w4a4_format.h; same float operations and order as
// cuda::w4a4_epilogue / w4a4_epilogue_ref, explicitly rounded):
//   y[t, j] = ((s_t · scale_j) · (float)(acc − z_t · rowsum_j) + spec[t, j]) + bias_j
// with spec given, or fused: spec[t, j] = spectral_dot_ref(z_t, C_j, rank) (the
// spectral branch's second product, 8 fma lanes, in the epilogue: no [m, n] pass).
//
// Build: cmake -DSPECQUANT_CUDA=ON. Tests: tests/test_cuda_w4a4_gemm.cpp
// (specquant_tests --gtest_filter='CudaW4A4Gemm*'); benchmark:
// bench/bench_cuda_gemm.cu (docs/perf.md "CUDA W4A4 GEMM").
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace sq::cuda {

constexpr int W4G_KB = 128;  // k per layout block
constexpr int W4G_NB = 8;    // output rows per layout block

inline int64_t w4g_k_pad(int64_t k) { return (k + W4G_KB - 1) / W4G_KB * W4G_KB; }
inline int64_t w4g_n_pad(int64_t n) { return (n + W4G_NB - 1) / W4G_NB * W4G_NB; }
inline int64_t w4g_bytes(int64_t n, int64_t k) { return w4g_n_pad(n) * w4g_k_pad(k) / 2; }

// Byte offset and nibble (0 = low, 1 = high) of weight (j, i) in the CUDA layout.
inline int64_t w4g_offset(int64_t k, int64_t j, int64_t i, int* nibble) {
    const int64_t nb = j / W4G_NB, g = j % W4G_NB, kb = i / W4G_KB, r = i % W4G_KB;
    const int64_t s = r / 32, q = r % 32, hi = q / 16, t = (q % 16) / 4, b = q % 4;
    *nibble = (int)hi;
    return (nb * (w4g_k_pad(k) / W4G_KB) + kb) * 512 + (g * 4 + t) * 16 + s * 4 + b;
}

// Host: codes [n, ceil(k/2)] (w4a4_format.h) → dst [w4g_bytes(n, k)] (CUDA layout, pads zeroed).
void w4g_repack(const uint8_t* codes, int64_t n, int64_t k, uint8_t* dst);

// Device pointers. q [m, k] activation codes (bytes, row stride k), w [w4g_bytes(n, k)]
// (16-byte aligned). Outputs (either may be null): acc [m, n] int32, y [m, n] float32
// with act_scale [m], act_zero [m], w_scale [n], w_rowsum [n], spec [m, n] and bias [n]
// (spec, bias may be null). 1 ≤ k ≤ 65536. The weights' arrays (w, w_scale, w_rowsum, bias,
// spec_c) are constants: the GEMV reads them before its PDL wait (pdl.cuh), so they must not be
// written by the kernel launched just before it (the engine makes them at load, then synchronizes).
struct W4GemmArgs {
    const uint8_t* q = nullptr;
    int m = 0, k = 0, n = 0;
    const uint8_t* w = nullptr;
    const float* act_scale = nullptr;
    const int32_t* act_zero = nullptr;
    const float* w_scale = nullptr;
    const int32_t* w_rowsum = nullptr;
    const float* spec = nullptr;
    const float* bias = nullptr;
    // Fused spectral branch (with spec null): spec[t, j] = spectral_dot_ref(spec_z[t, :], spec_c[j, :],
    // spec_rank) computed in the epilogue: spec_z [m, spec_rank] = x̂·B, spec_c [n, spec_rank] = C.
    const float* spec_z = nullptr;
    const float* spec_c = nullptr;
    int spec_rank = 0;
    int32_t* acc = nullptr;
    float* y = nullptr;
    // Split-K workspace of the wgmma kernel (w4a4_wgmma.h; optional, 16-byte aligned): ws_ints int32
    // for its partial sums. Null: no split.
    int32_t* ws = nullptr;
    int64_t ws_ints = 0;
    int split_k = 0;  // the wgmma kernel's k splits: 0 = its choice, else that many, ≤ 16 (tests, benchmark)
};

// Picks the kernel: w4a4_gemv when w4a4_gemv_fits (m ≤ 16; m ≤ 64 with k % 4 == 0 and
// 4-byte aligned activation rows), else w4a4_gemm_wgmma (w4a4_wgmma.h) when m ≥
// W4G_WGMMA_MIN_M and w4a4_wgmma_fits (k % 16 == 0, 16-byte aligned rows), else w4a4_gemm_tiled.
void w4a4_gemm(const W4GemmArgs& a, cudaStream_t s);

// The argument checks every W4A4 kernel entry runs (shape, pointers, alignment): sq::Error naming `who`.
void w4g_check_args(const W4GemmArgs& a, const char* who);
// The current device's SM count (the kernels' grid choices).
int device_sms();

// Prefill: 128×128 CTA tiles, 8 warps of 64×32, k 128 per stage, 3-stage cp.async pipeline,
// two CTAs per SM.
void w4a4_gemm_tiled(const W4GemmArgs& a, cudaStream_t s);

// The tile configurations compared in docs/kernels-cuda-notes.md (0 = the default above;
// 1: 4 stages; 2: 256×128, 4 stages; 3: 128×256, 3 stages; 4: 128×256, 4 stages = v1). Tests, benchmark.
constexpr int W4G_TILE_CFGS = 5;
void w4a4_gemm_tiled_cfg(const W4GemmArgs& a, cudaStream_t s, int cfg);

// Decode (m ≤ 16, and 17..64 on aligned rows): one to four m16 MMA row blocks sharing
// every weight fragment, weights streamed once with 16-byte loads (the first ones, and
// with SQ_CUDA_GEMV_PREFETCH an L2 prefetch of the rest, issued before the PDL wait:
// pdl.cuh), k split across the 8 warps of a block, reduced in shared memory. On 16-byte
// aligned rows each warp stages its activation codes in shared memory (cp.async, read by
// ldmatrix: v9, configurations 4 / 5 below). The epilogue's column constants (w_scale, w_rowsum,
// bias) are loaded before the PDL wait and the rows' (s, z) right after it (v10).
constexpr int W4G_GEMV_MAX_M = 64;
bool w4a4_gemv_fits(int m, int k, const uint8_t* q);
void w4a4_gemv(const W4GemmArgs& a, cudaStream_t s);

// Decode v8: the RMSNorm that makes a GEMV's input, done by the GEMV's own blocks (no norm kernel,
// no kernel boundary before the GEMV). Clusters of 8 blocks each normalize 1/8 of every row (the
// norm kernel's warp r's 32 lanes of elements: r·32 + lane + 256·j), exchange the partial sums of
// squares and the max/min through distributed shared memory and broadcast their activation codes
// to all 8 blocks' shared memory. Every value is made by add_rmsnorm_quant's operations in its
// order (the sum of squares: per lane an FMA chain over j, warp_sum, then warp_sum of the 8 warp
// sums), so codes, (s, z) and y are its bits (tests). Rows: the residual h [m, k] (+ add [m, k]);
// written by the first cluster only: h_out = h + add (never in place: other clusters still read h)
// and y = the normed rows (may be null). w: the norm weight [k].
struct GemvNorm {
    const float* h = nullptr;
    const float* add = nullptr;
    const float* w = nullptr;
    float eps = 0.0f;
    float* h_out = nullptr;
    float* y = nullptr;
    int bits = 4;
    float clip = 1.0f;
};
constexpr int W4G_NORM_MAX_M = 8, W4G_NORM_MAX_K = 4096;
// m ≤ 8 rows, k ≤ 4096 with k % 4 == 0, and all of the grid's clusters on the device at once (n
// outputs; every block runs the norm before its first MMA, so a second wave would wait for it again:
// gate|up of LLaMA-3-8B, 4.5 waves, made B=1 decode 37% slower). No spectral branch (its x·B needs
// the normed rows first).
bool w4a4_gemv_norm_fits(int m, int k, int n);
// a.q, a.act_scale and a.act_zero are not read (the codes and (s, z) are made inside); a.y must be set.
void w4a4_gemv_norm(const W4GemmArgs& a, const GemvNorm& nrm, cudaStream_t s);

// GEMV variants compared in docs/kernels-cuda-notes.md: layout blocks per warp and
// iteration U = 2 (0, the default), 4 (1), 8 (2); 3: U = 2 with double-buffered weights
// (v5), NT ≥ 2, 2 blocks per SM; 4, 5: 0 and 3 with the activation codes staged in shared
// memory by cp.async and read by ldmatrix (v9: the default on 16-byte aligned
// rows; on other rows 4, 5 run as 0, 3). Above 16 rows 1..3 run as 0, 5 as 4. Tests, benchmark.
constexpr int W4G_GEMV_CFGS = 6;
void w4a4_gemv_cfg(const W4GemmArgs& a, cudaStream_t s, int cfg);

}  // namespace sq::cuda
