// The spectral branch of a W4A4 linear layer, (x·Bᵀ)·Cᵀ, in the CPU engine's rounding
// (ops_cuda.h, "Spectral branch"). Build: cmake -DSPECQUANT_CUDA=ON; tests:
// specquant_tests --gtest_filter='CudaSpectral*' (tests/test_cuda_spectral.cpp).
//
// x·Bᵀ: the CPU's gemm_f32 / gemv_f32 (kernels/cpu/gemm_f32.cpp) give every output one order
// whatever m and the tiling: the k range in blocks [p0, p0 + kb) (kb = kc = gemm_f32_kc(k) but the
// last), in each block 8 fma lanes (lane l takes p ≡ l mod 8, in order; the last group of a block
// not a multiple of 8 runs the masked lanes as fma(0, 0, acc)), the lanes summed ((l0 + l1) +
// (l2 + l3)) + ((l4 + l5) + (l6 + l7)), and the block sums added to the running output in block
// order (s + y). The kernels below compute exactly that (docs/kernels-cuda-notes.md, sessions 9-10):
//   - xb_dec (one row: a decode step at B = 1): a block per (k-block, 4 basis rows), Bᵀ staged
//     before the PDL wait, the last block adding the k-block sums in order;
//   - xb_row (2..16 rows, batched decode): one block per output, x[t] and Bᵀ[r] staged in shared
//     memory, 8 threads per k-block, which meet by shuffles in the hadd order;
//   - xb_tiles (prefill): 32 rows × 32 basis rows per block of 4 warps, one fma lane per thread, k
//     through shared memory in tiles of 64; one grid column per k-block, whose sums a second kernel
//     adds in block order.
// z·Cᵀ (zc_kernel): spec_dot (spectral_dot_ref's order) per output, C's rows in registers, added
// to the layer's output after its GEMM (y = (y + spec) + bias: the epilogue's order, so the GEMM
// itself runs without the branch; reading spec [m, n] in the persistent GEMM's epilogue warps
// doubled its time, docs/kernels-cuda-notes.md).
#include <algorithm>

#include "kernels/cpu/gemm_f32.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/w4a4_spec_dot.cuh"

namespace sq::cuda {

namespace {

constexpr int kCpuGemvMaxRows = (int)gemv_f32_max_m;  // calls of ≤ 16 rows: the per-output kernel
int pick_kc(int k) { return (int)gemm_f32_kc(k); }    // gemm_f32's k-block, default blocking

// 4 consecutive elements p..p+3 of a row, zeros from `len` on; one 16-byte load when `vec` (the
// row and p 16-byte aligned) and all four are in range.
__device__ __forceinline__ float4 load4(const float* __restrict__ row, int p, int len, bool vec) {
    if (vec && p + 3 < len) return *reinterpret_cast<const float4*>(row + p);
    return make_float4(p < len ? row[p] : 0.0f, p + 1 < len ? row[p + 1] : 0.0f, p + 2 < len ? row[p + 2] : 0.0f,
                       p + 3 < len ? row[p + 3] : 0.0f);
}

// One block per output (t, r), for calls of few rows (decode): x[t] and Bᵀ[r] staged through
// shared memory in chunks of whole k-blocks (all of a chunk's loads in flight at once); 8 threads
// per k-block run its 8 fma lanes (the loads are off the dependent chain: kc/8 ≤ 72 steps) and
// meet by shuffles in the hadd order; thread 0 adds the block sums in order. Decode work is a few
// hundred outputs; one block each spreads the reads of Bᵀ over the SMs.
constexpr int kRowThreads = 256, kRowChunk = 4096, kRowMaxBlocks = 256;  // 2 × 16 KB of shared memory
__global__ void __launch_bounds__(kRowThreads) xb_row_kernel(const float* __restrict__ x, int64_t ldx,
                                                             const float* __restrict__ bt, int rank, int k, int kc,
                                                             float* __restrict__ z) {
    __shared__ __align__(16) float xs[kRowChunk], bs[kRowChunk];
    __shared__ float sums[kRowMaxBlocks];
    const int t = blockIdx.x / rank, r = blockIdx.x % rank, tid = threadIdx.x, grp = tid >> 3, l = tid & 7;
    const float* xr = x + (int64_t)t * ldx;
    const float* br = bt + (int64_t)r * k;
    const bool vec = ((ldx | k) & 3) == 0 && (((uintptr_t)x | (uintptr_t)bt) & 15) == 0;
    const int chunk = max(1, kRowChunk / kc) * kc;  // whole k-blocks (kc ≤ kRowChunk)
    constexpr int U = kRowChunk / 4 / kRowThreads;  // float4 per thread and array: all loads first
    float4 xv[U], bv[U];
    // Bᵀ is a weight: its first chunk is loaded (the rest of the row prefetched into L2) before the
    // PDL wait, under the previous kernel's tail.
    auto load_b = [&](int c0, int len, int len8) {
#pragma unroll
        for (int u = 0; u < U; ++u) {  // past k: zeros, the masked lanes' fma(0, 0, acc)
            const int e = (u * kRowThreads + tid) * 4;
            bv[u] = e < len8 ? load4(br + c0, e, len, vec) : make_float4(0, 0, 0, 0);
        }
    };
    load_b(0, min(chunk, k), (min(chunk, k) + 7) & ~7);
    for (int e = chunk + tid * 32; e < k; e += kRowThreads * 32)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(br + e));
    pdl_wait();  // x: the previous kernel's output
    pdl_trigger();
    for (int c0 = 0; c0 < k; c0 += chunk) {
        const int len = min(chunk, k - c0), len8 = (len + 7) & ~7;
        if (c0 > 0) load_b(c0, len, len8);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int e = (u * kRowThreads + tid) * 4;
            xv[u] = e < len8 ? load4(xr + c0, e, len, vec) : make_float4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int e = (u * kRowThreads + tid) * 4;
            if (e < len8) *reinterpret_cast<float4*>(&xs[e]) = xv[u], *reinterpret_cast<float4*>(&bs[e]) = bv[u];
        }
        __syncthreads();
        const int nbc = (len + kc - 1) / kc;
        for (int b0 = 0; b0 < nbc; b0 += kRowThreads / 8) {  // warp-uniform trip count (shuffles below)
            const int bl = b0 + grp, q0 = bl * kc, qe = min(len8, q0 + kc);
            float a = 0.0f;
            if (bl < nbc)
#pragma unroll 8
                for (int p = q0 + l; p < qe; p += 8) a = __fmaf_rn(xs[p], bs[p], a);
            const float s3 = lane8_sum(a);  // hsum4_ps's order
            if (bl < nbc && l == 0) sums[c0 / kc + bl] = s3;
        }
        __syncthreads();
    }
    if (tid == 0) {
        const int nb = (k + kc - 1) / kc;
        float y = sums[0];
        for (int i = 1; i < nb; ++i) y = __fadd_rn(sums[i], y);  // gemm_f32: s + y, block after block
        z[(int64_t)t * rank + r] = y;
    }
}

// Decode at B = 1 (session 10): block (k-block b, basis rows r0..r0 + 3), every row of the call. Bᵀ's rows of the k-block are weights: staged in shared memory before the PDL wait,
// so only x (the previous kernel's output, 2.3 KB per row) is read after it. 8 threads per output
// run the k-block's 8 fma lanes and meet by shuffles in the hadd order; with several k-blocks each
// block stores its sums to part [nb][m][rank], and the block that finishes last (a counter that it
// returns to zero) adds them in block order (s + y). At one row this beat xb_row (31 blocks at rank
// 31, each over the whole k) by ~3% of a rank-31 decode step; at 8 rows xb_row was ~1% faster.
constexpr int kDecThreads = 256, kDecBasis = 4;
__global__ void __launch_bounds__(kDecThreads) xb_dec_kernel(const float* __restrict__ x, int64_t ldx, int m,
                                                             const float* __restrict__ bt, int rank, int k, int kc,
                                                             float* __restrict__ part, unsigned* __restrict__ counter,
                                                             float* __restrict__ z) {
    extern __shared__ __align__(16) float dsm[];
    __shared__ bool s_last;
    const int b = blockIdx.x, nb = gridDim.x, r0 = blockIdx.y * kDecBasis, tid = threadIdx.x;
    const int p0 = b * kc, kb = min(kc, k - p0), q4 = ((kb + 7) & ~7) / 4;  // float4 per row, masked lanes' zeros included
    float* bs = dsm;                   // [kDecBasis][kc]
    float* xs = dsm + kDecBasis * kc;  // [m][kc]
    const bool vec = ((ldx | k) & 3) == 0 && (((uintptr_t)x | (uintptr_t)bt) & 15) == 0;
    for (int e = tid; e < kDecBasis * q4; e += kDecThreads) {
        const int rr = e / q4, c = (e % q4) * 4, r = r0 + rr;
        *reinterpret_cast<float4*>(&bs[rr * kc + c]) =
            r < rank ? load4(bt + (int64_t)r * k + p0, c, kb, vec) : make_float4(0, 0, 0, 0);
    }
    pdl_wait();  // x: the previous kernel's output
    pdl_trigger();
    for (int e = tid; e < m * q4; e += kDecThreads) {
        const int t = e / q4, c = (e % q4) * 4;
        *reinterpret_cast<float4*>(&xs[t * kc + c]) = load4(x + (int64_t)t * ldx + p0, c, kb, vec);
    }
    __syncthreads();
    const int grp = tid >> 3, l = tid & 7, nout = m * kDecBasis, kb8 = q4 * 4;
    for (int o0 = 0; o0 < nout; o0 += kDecThreads / 8) {  // warp-uniform trip count (shuffles below)
        const int o = o0 + grp, t = o / kDecBasis, rr = o % kDecBasis, r = r0 + rr;
        float a = 0.0f;
        if (o < nout)
#pragma unroll 8
            for (int p = l; p < kb8; p += 8) a = __fmaf_rn(xs[t * kc + p], bs[rr * kc + p], a);
        const float s3 = lane8_sum(a);
        if (o < nout && l == 0 && r < rank) (nb == 1 ? z : part + (int64_t)b * m * rank)[t * rank + r] = s3;
    }
    if (nb == 1) return;
    __threadfence();
    __syncthreads();
    if (tid == 0) s_last = atomicAdd(counter, 1u) == gridDim.x * gridDim.y - 1;
    __syncthreads();
    if (!s_last) return;
    if (tid == 0) *counter = 0u;  // for the next call (graph replays)
    __threadfence();
    const int count = m * rank;
    for (int o = tid; o < count; o += kDecThreads) {  // gemm_f32: y = s_b + y, block after block
        float y = __ldcg(part + o);
        for (int b0 = 1; b0 < nb; b0 += 8) {
            float v[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] = b0 + i < nb ? __ldcg(part + (int64_t)(b0 + i) * count + o) : 0.0f;
#pragma unroll
            for (int i = 0; i < 8; ++i)
                if (b0 + i < nb) y = __fadd_rn(v[i], y);
        }
        z[o] = y;
    }
}

// Prefill tiles (session 10): one fma lane per thread. A warp is 4 groups × 8 lanes: lane l of group g runs
// lane l (p ≡ l mod 8) of the outputs (rows w·8 + i, basis rows r0 + 4·b + g), i, b < 8: 64
// accumulators, and per 8 k values one x and one Bᵀ load per row / basis row from shared memory,
// each a single wavefront (x: the 4 groups read the same 8 words; Bᵀ: row pitch 72 puts the groups
// 8 banks apart). At the k-block's end the 8 lanes meet by shuffles in the hadd order (every lane
// then holds the sum). Block: 32 rows × 32 basis rows × one k-block; k tiles of 64 through two
// shared-memory buffers, the next tile's loads in registers while this one is computed. The first
// version kept an output's 8 lanes in one thread (10 shared loads per 32 FMAs, 4 of them 4
// wavefronts): bound by shared memory, 1.4× slower.
constexpr int kTileK = 64, kXtRows = 32, kXtLd = kTileK + 8;
constexpr int kXtX4 = kXtRows * kTileK / 4 / 128, kXtB4 = 32 * kTileK / 4 / 128;  // float4 per thread
__global__ void __launch_bounds__(128, 4) xb_tiles_kernel(const float* __restrict__ x, int64_t ldx, int m,
                                                           const float* __restrict__ bt, int rank, int k, int kc,
                                                           float* __restrict__ out, int64_t out_block_stride) {
    __shared__ __align__(16) float xs[2][kXtRows][kXtLd];
    __shared__ __align__(16) float bs[2][32][kXtLd];
    pdl_wait();
    pdl_trigger();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 3, l = lane & 7;
    const int t0 = blockIdx.x * kXtRows, b = blockIdx.y, r0 = blockIdx.z * 32;
    const int p0 = b * kc, kb = min(kc, k - p0), kend8 = (kb + 7) & ~7;
    const bool vec = ((ldx | k | p0) & 3) == 0 && (((uintptr_t)x | (uintptr_t)bt) & 15) == 0;
    float4 xv[kXtX4], bv[kXtB4];
    auto fetch = [&](int pt) {  // the k range [p0 + pt, +64): zeros past the block's end, the rows' end
#pragma unroll
        for (int u = 0; u < kXtX4; ++u) {
            const int e = u * 128 + tid, rr = e / (kTileK / 4), cc = (e % (kTileK / 4)) * 4, t = t0 + rr;
            xv[u] = t < m ? load4(x + (int64_t)t * ldx + p0, pt + cc, kb, vec) : make_float4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kXtB4; ++u) {
            const int e = u * 128 + tid, rr = e / (kTileK / 4), cc = (e % (kTileK / 4)) * 4, r = r0 + rr;
            bv[u] = r < rank ? load4(bt + (int64_t)r * k + p0, pt + cc, kb, vec) : make_float4(0, 0, 0, 0);
        }
    };
    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[i][e] = 0.0f;
    fetch(0);
    for (int pt = 0, buf = 0; pt < kend8; pt += kTileK, buf ^= 1) {
#pragma unroll
        for (int u = 0; u < kXtX4; ++u) {
            const int e = u * 128 + tid;
            *reinterpret_cast<float4*>(&xs[buf][e / (kTileK / 4)][(e % (kTileK / 4)) * 4]) = xv[u];
        }
#pragma unroll
        for (int u = 0; u < kXtB4; ++u) {
            const int e = u * 128 + tid;
            *reinterpret_cast<float4*>(&bs[buf][e / (kTileK / 4)][(e % (kTileK / 4)) * 4]) = bv[u];
        }
        __syncthreads();
        if (pt + kTileK < kend8) fetch(pt + kTileK);
        const int groups = min(kTileK, kend8 - pt) >> 3;
        const float* xr = &xs[buf][warp * 8][l];
        const float* br = &bs[buf][g][l];
#pragma unroll 2
        for (int q = 0; q < groups; ++q) {
            float xq[8], bq[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) xq[i] = xr[i * kXtLd + q * 8], bq[i] = br[i * 4 * kXtLd + q * 8];
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[i][e] = __fmaf_rn(xq[i], bq[e], acc[i][e]);
        }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int t = t0 + warp * 8 + i;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const float s3 = lane8_sum(acc[i][e]);  // hsum4_ps's order
            const int r = r0 + 4 * e + g;
            if (l == e && t < m && r < rank) out[(int64_t)b * out_block_stride + (int64_t)t * rank + r] = s3;
        }
    }
}

// z[t, r] = Σ over k-blocks in order of part[b][t][r] (y = s_b + y).
__global__ void xb_blocks_sum_kernel(const float* __restrict__ part, int64_t count, int nb, float* __restrict__ z) {
    pdl_wait();
    pdl_trigger();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float y = part[i];
    for (int b = 1; b < nb; ++b) y = __fadd_rn(part[(int64_t)b * count + i], y);
    z[i] = y;
}

// ·Cᵀ (session 10): block = 256 columns (2 per thread: j, j + 128, coalesced) × `rows` rows. The
// thread's two C rows go to registers before the PDL wait (weights); the block's z rows to shared
// memory once; then 8 rows at a time with the next 8 rows' y loads in flight while these are
// computed. R = the exact rank (kExact: no per-term predicate; 15, 31 and 63 are k̄ = 8, 16, 32)
// or a bound on it. The first version (2 blocks of 256 threads per SM, each a load phase then a
// compute phase, C re-staged every 32 rows) ran at ~1.2 TB/s of y traffic, this one at 2.0-2.5;
// y through shared memory by cp.async in 4 stages (more bytes in flight) was 2-10% slower.
constexpr int kZcThreads = 128, kZcCols = 2 * kZcThreads, kZcG = 8, kZcSmem = 32 * 1024;
template <int R, bool kExact>
__global__ void __launch_bounds__(kZcThreads, kExact && R <= 32 ? 4 : 2)
    zc_kernel(const float* __restrict__ z, int m, const float* __restrict__ c, int n, int rank,
               float* __restrict__ y, int64_t ld, const float* __restrict__ bias, int rows) {
    constexpr int R4 = (R + 3) & ~3;
    extern __shared__ __align__(16) float zs[];  // [rows][R4]
    const int tid = threadIdx.x, ja = blockIdx.x * kZcCols + tid, jb = ja + kZcThreads;
    const int t_begin = blockIdx.y * rows, nr = min(rows, m - t_begin);
    float ca[R], cb[R];
#pragma unroll
    for (int q = 0; q < R; ++q) {
        const bool in = kExact || q < rank;
        ca[q] = in && ja < n ? c[(int64_t)ja * rank + q] : 0.0f;
        cb[q] = in && jb < n ? c[(int64_t)jb * rank + q] : 0.0f;
    }
    const float ba = bias && ja < n ? bias[ja] : 0.0f, bb = bias && jb < n ? bias[jb] : 0.0f;
    pdl_wait();  // z, y: earlier kernels' outputs
    pdl_trigger();
    const float* zb = z + (int64_t)t_begin * rank;
    for (int e = tid; e < nr * rank; e += kZcThreads) {  // one contiguous run of z
        const int rr = e / rank;
        zs[rr * R4 + (e - rr * rank)] = zb[e];
    }
    __syncthreads();
    if (ja >= n) return;
    const bool has_b = jb < n;
    float* yr = y + (int64_t)t_begin * ld + ja;
    float ya[kZcG], yb[kZcG], na[kZcG], nb[kZcG];
    auto load = [&](int g0, float* va, float* vb) {
#pragma unroll
        for (int i = 0; i < kZcG; ++i) {
            const bool in = g0 + i < nr;
            va[i] = in ? yr[(int64_t)(g0 + i) * ld] : 0.0f;
            vb[i] = in && has_b ? yr[(int64_t)(g0 + i) * ld + kZcThreads] : 0.0f;
        }
    };
    load(0, ya, yb);
    for (int g0 = 0; g0 < nr; g0 += kZcG) {
        if (g0 + kZcG < nr) load(g0 + kZcG, na, nb);
#pragma unroll
        for (int i = 0; i < kZcG; ++i) {
            if (g0 + i >= nr) break;
            const float* zr = zs + (g0 + i) * R4;
            float la[8] = {}, lb[8] = {};
#pragma unroll
            for (int q4 = 0; q4 < R; q4 += 4) {
                const float4 zv = *reinterpret_cast<const float4*>(zr + q4);
                const float zq[4] = {zv.x, zv.y, zv.z, zv.w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int q = q4 + e;  // spectral_dot_ref: lane q mod 8, q < rank only
                    if (q < R && (kExact || q < rank)) {
                        la[q & 7] = __fmaf_rn(zq[e], ca[q], la[q & 7]);
                        lb[q & 7] = __fmaf_rn(zq[e], cb[q], lb[q & 7]);
                    }
                }
            }
            float va = __fadd_rn(ya[i], lane_sum(la)), vb = __fadd_rn(yb[i], lane_sum(lb));
            if (bias) va = __fadd_rn(va, ba), vb = __fadd_rn(vb, bb);
            float* yo = yr + (int64_t)(g0 + i) * ld;
            yo[0] = va;
            if (has_b) yo[kZcThreads] = vb;
        }
#pragma unroll
        for (int i = 0; i < kZcG; ++i) ya[i] = na[i], yb[i] = nb[i];
    }
}

template <int R, bool kExact>
void launch_zc(const float* z, int m, const float* c, int n, int rank, float* y, int64_t ld, const float* bias,
                cudaStream_t s) {
    constexpr int R4 = (R + 3) & ~3;
    const int cols = (n + kZcCols - 1) / kZcCols;
    // ~1024 blocks (4 per SM resident at R ≤ 32), 8..(32 KB of z) rows each, a multiple of 8
    const int max_rows = kZcSmem / (R4 * 4) / kZcG * kZcG;
    int rows = (int)std::min<int64_t>(max_rows, std::max<int64_t>(kZcG, (int64_t)m * cols / 1024));
    rows = (rows + kZcG - 1) / kZcG * kZcG;
    const dim3 grid((unsigned)cols, (unsigned)((m + rows - 1) / rows));
    launch_pdl("spectral_zc", zc_kernel<R, kExact>, grid, dim3(kZcThreads), (size_t)rows * R4 * sizeof(float), s,
               z, m, c, n, rank, y, ld, bias, rows);
}

// Larger ranks: spec_dot straight from global memory, one output per thread.
__global__ void zc_plain_kernel(const float* __restrict__ z, int m, const float* __restrict__ c, int n, int rank,
                                float* __restrict__ y, int64_t ld, const float* __restrict__ bias) {
    pdl_wait();
    pdl_trigger();
    const int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= (int64_t)m * n) return;
    const int t = (int)(o / n), j = (int)(o % n);
    float v = __fadd_rn(y[(int64_t)t * ld + j], spec_dot(z + (int64_t)t * rank, c + (int64_t)j * rank, rank));
    if (bias) v = __fadd_rn(v, bias[j]);
    y[(int64_t)t * ld + j] = v;
}

unsigned blocks_of(int64_t count, int threads) { return (unsigned)((count + threads - 1) / threads); }

}  // namespace

// [counter (one float's room)][k-block sums [nb][m][rank]]; none with one k-block.
size_t spectral_xb_scratch(int m, int rank, int k) {
    if (m <= 0 || rank <= 0 || k <= 0) return 0;
    const int kc = pick_kc(k), nb = (k + kc - 1) / kc;
    return nb > 1 ? 1 + (size_t)nb * (size_t)m * (size_t)rank : 0;
}

void spectral_xb(const float* x, int64_t ldx, int m, const float* bt, int rank, int k, float* z, float* scratch,
                 size_t scratch_elems, cudaStream_t s) {
    SQ_CHECK(m >= 0 && rank >= 1 && k >= 1 && ldx >= k, "spectral_xb: bad shape m=", m, " rank=", rank, " k=", k,
             " ldx=", ldx);
    if (m == 0) return;
    const int kc = pick_kc(k), nb = (k + kc - 1) / kc;  // gemm_f32's k-blocks
    const size_t need = spectral_xb_scratch(m, rank, k);
    SQ_CHECK(scratch_elems >= need && (need == 0 || scratch), "spectral_xb: scratch of ", scratch_elems,
             " floats < ", need);
    if (m == 1) {  // one decode row: blocks over k-blocks × 4 basis rows (docs/kernels-cuda-notes.md, session 10)
        const size_t smem = (size_t)(kDecBasis + m) * kc * sizeof(float);
        launch_pdl("spectral_xb_dec", xb_dec_kernel, dim3((unsigned)nb, (unsigned)((rank + kDecBasis - 1) / kDecBasis)),
                   dim3(kDecThreads), smem, s, x, ldx, m, bt, rank, k, kc, nb > 1 ? scratch + 1 : nullptr,
                   nb > 1 ? reinterpret_cast<unsigned*>(scratch) : nullptr, z);
        return;
    }
    if (m <= kCpuGemvMaxRows) {  // 2..16 rows: one block per output
        SQ_CHECK(nb <= kRowMaxBlocks && kc <= kRowChunk, "spectral_xb: k=", k, " has ", nb, " k-blocks of ", kc);
        launch_pdl("spectral_xb_rows", xb_row_kernel, dim3((unsigned)((int64_t)m * rank)), dim3(kRowThreads), 0, s, x,
                   ldx, bt, rank, k, kc, z);
        return;
    }
    const dim3 grid((unsigned)((m + kXtRows - 1) / kXtRows), (unsigned)nb, (unsigned)((rank + 31) / 32));
    launch_pdl("spectral_xb_tiles", xb_tiles_kernel, grid, dim3(128), 0, s, x, ldx, m, bt, rank, k, kc,
               nb > 1 ? scratch + 1 : z, (int64_t)m * rank);
    if (nb > 1) {
        const int64_t count = (int64_t)m * rank;
        launch_pdl("spectral_xb_sum", xb_blocks_sum_kernel, dim3(blocks_of(count, 256)), dim3(256), 0, s,
                   (const float*)scratch + 1, count, nb, z);
    }
}

void spectral_zc_add(const float* z, int m, const float* c, int n, int rank, float* y, int64_t ld, const float* bias,
                     cudaStream_t s) {
    SQ_CHECK(m >= 0 && n >= 0 && rank >= 1 && ld >= n, "spectral_zc_add: bad shape m=", m, " n=", n, " rank=", rank);
    if (m == 0 || n == 0) return;
    switch (rank) {  // the exact rank where it is one of k̄ = 8, 16, 32's; else a bound with a per-term predicate
        case 15: launch_zc<15, true>(z, m, c, n, rank, y, ld, bias, s); return;
        case 31: launch_zc<31, true>(z, m, c, n, rank, y, ld, bias, s); return;
        case 63: launch_zc<63, true>(z, m, c, n, rank, y, ld, bias, s); return;
        default:
            if (rank <= 32) launch_zc<32, false>(z, m, c, n, rank, y, ld, bias, s);
            else if (rank <= 64) launch_zc<64, false>(z, m, c, n, rank, y, ld, bias, s);
            else
                launch_pdl("spectral_zc_plain", zc_plain_kernel, dim3(blocks_of((int64_t)m * n, 256)), dim3(256), 0, s,
                           z, m, c, n, rank, y, ld, bias);
    }
}

}  // namespace sq::cuda
