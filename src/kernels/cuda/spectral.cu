// The spectral branch of a W4A4 linear layer, (x·Bᵀ)·Cᵀ, in the CPU engine's rounding
// (ops_cuda.h, "Spectral branch"). Build: cmake -DSPECQUANT_CUDA=ON; tests:
// specquant_tests --gtest_filter='CudaSpectral*' (tests/test_cuda_spectral.cpp).
//
// x·Bᵀ: the CPU's gemm_f32 / gemv_f32 (kernels/cpu/gemm_f32.cpp) give every output one order
// whatever m and the tiling: the k range in blocks [p0, p0 + kb) (kb = kc = gemm_f32_kc(k) but the
// last), in each block 8 fma lanes (lane l takes p ≡ l mod 8, in order; the last group of a block
// not a multiple of 8 runs the masked lanes as fma(0, 0, acc)), the lanes summed ((l0 + l1) +
// (l2 + l3)) + ((l4 + l5) + (l6 + l7)), and the block sums added to the running output in block
// order (s + y). Both kernels below compute exactly that:
//   - xb_row (≤ 16 rows, decode): one block per output, x[t] and Bᵀ[r] staged in shared memory,
//     8 threads per k-block, which meet by shuffles in the hadd order;
//   - xb_tiles (prefill): 16 rows × 32 basis rows per block of 4 warps, k staged through
//     shared memory in tiles of 64, each thread 4 rows × 8 lanes in registers; one grid
//     column per k-block, whose sums a second kernel adds in block order.
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
    pdl_wait();
    pdl_trigger();
    const float* xr = x + (int64_t)t * ldx;
    const float* br = bt + (int64_t)r * k;
    const bool vec = ((ldx | k) & 3) == 0 && (((uintptr_t)x | (uintptr_t)bt) & 15) == 0;
    const int chunk = max(1, kRowChunk / kc) * kc;  // whole k-blocks (kc ≤ kRowChunk)
    for (int c0 = 0; c0 < k; c0 += chunk) {
        const int len = min(chunk, k - c0), len8 = (len + 7) & ~7;
        constexpr int U = kRowChunk / 4 / kRowThreads;  // float4 per thread and array: all loads first
        float4 xv[U], bv[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {  // past k: zeros, the masked lanes' fma(0, 0, acc)
            const int e = (u * kRowThreads + tid) * 4;
            xv[u] = e < len8 ? load4(xr + c0, e, len, vec) : make_float4(0, 0, 0, 0);
            bv[u] = e < len8 ? load4(br + c0, e, len, vec) : make_float4(0, 0, 0, 0);
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
            // (l0+l1), then (..)+(..), then the halves: hsum4_ps's order
            const float s1 = __fadd_rn(a, __shfl_xor_sync(0xffffffffu, a, 1));
            const float s2 = __fadd_rn(s1, __shfl_xor_sync(0xffffffffu, s1, 2));
            const float s3 = __fadd_rn(s2, __shfl_xor_sync(0xffffffffu, s2, 4));
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

// Block: 4 warps × 4 rows = 16 rows of x, lane = basis row r0 + lane; grid (row tiles, k-blocks,
// basis-row tiles of 32). Each block computes its k-block's sum and writes it to part[b][t][r]
// (or, with one k-block, to z directly). k tiles of 64 through two shared-memory buffers, the next
// tile's loads in registers while this one is computed (one barrier per tile).
constexpr int kTileRows = 16, kTileRowsPerWarp = 4, kTileK = 64, kTileLd = kTileK + 4;
constexpr int kTileX4 = kTileRows * kTileK / 4 / 128, kTileB4 = 32 * kTileK / 4 / 128;  // float4 per thread
__global__ void __launch_bounds__(128) xb_tiles_kernel(const float* __restrict__ x, int64_t ldx, int m,
                                                       const float* __restrict__ bt, int rank, int k, int kc,
                                                       float* __restrict__ out, int64_t out_block_stride) {
    __shared__ __align__(16) float xs[2][kTileRows][kTileLd];
    __shared__ __align__(16) float bs[2][32][kTileLd];
    pdl_wait();
    pdl_trigger();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int t0 = blockIdx.x * kTileRows, b = blockIdx.y, r0 = blockIdx.z * 32;
    const int p0 = b * kc, kb = min(kc, k - p0), kend8 = (kb + 7) & ~7;
    const bool vec = ((ldx | k | p0) & 3) == 0 && (((uintptr_t)x | (uintptr_t)bt) & 15) == 0;
    float4 xv[kTileX4], bv[kTileB4];
    // the tile of k range [p0 + pt, +64) into registers, zeros past the block's end or the rows' end
    auto fetch = [&](int pt) {
#pragma unroll
        for (int u = 0; u < kTileX4; ++u) {
            const int e = u * 128 + tid, rr = e / (kTileK / 4), c = (e % (kTileK / 4)) * 4, t = t0 + rr;
            xv[u] = t < m ? load4(x + (int64_t)t * ldx + p0, pt + c, kb, vec) : make_float4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kTileB4; ++u) {
            const int e = u * 128 + tid, rr = e / (kTileK / 4), c = (e % (kTileK / 4)) * 4, r = r0 + rr;
            bv[u] = r < rank ? load4(bt + (int64_t)r * k + p0, pt + c, kb, vec) : make_float4(0, 0, 0, 0);
        }
    };
    float acc[kTileRowsPerWarp][8];
#pragma unroll
    for (int i = 0; i < kTileRowsPerWarp; ++i)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[i][e] = 0.0f;
    fetch(0);
    for (int pt = 0, buf = 0; pt < kend8; pt += kTileK, buf ^= 1) {
#pragma unroll
        for (int u = 0; u < kTileX4; ++u) {
            const int e = u * 128 + tid;
            *reinterpret_cast<float4*>(&xs[buf][e / (kTileK / 4)][(e % (kTileK / 4)) * 4]) = xv[u];
        }
#pragma unroll
        for (int u = 0; u < kTileB4; ++u) {
            const int e = u * 128 + tid;
            *reinterpret_cast<float4*>(&bs[buf][e / (kTileK / 4)][(e % (kTileK / 4)) * 4]) = bv[u];
        }
        __syncthreads();
        if (pt + kTileK < kend8) fetch(pt + kTileK);
        const int groups = min(kTileK, kend8 - pt) >> 3;
        for (int q = 0; q < groups; ++q) {
            const float4 w0 = *reinterpret_cast<const float4*>(&bs[buf][lane][q * 8]);
            const float4 w1 = *reinterpret_cast<const float4*>(&bs[buf][lane][q * 8 + 4]);
#pragma unroll
            for (int i = 0; i < kTileRowsPerWarp; ++i) {
                const float* xr = &xs[buf][warp * kTileRowsPerWarp + i][q * 8];
                const float4 x0 = *reinterpret_cast<const float4*>(xr);
                const float4 x1 = *reinterpret_cast<const float4*>(xr + 4);
                acc[i][0] = __fmaf_rn(x0.x, w0.x, acc[i][0]), acc[i][1] = __fmaf_rn(x0.y, w0.y, acc[i][1]);
                acc[i][2] = __fmaf_rn(x0.z, w0.z, acc[i][2]), acc[i][3] = __fmaf_rn(x0.w, w0.w, acc[i][3]);
                acc[i][4] = __fmaf_rn(x1.x, w1.x, acc[i][4]), acc[i][5] = __fmaf_rn(x1.y, w1.y, acc[i][5]);
                acc[i][6] = __fmaf_rn(x1.z, w1.z, acc[i][6]), acc[i][7] = __fmaf_rn(x1.w, w1.w, acc[i][7]);
            }
        }
    }
    const int r = r0 + lane;
    if (r >= rank) return;
#pragma unroll
    for (int i = 0; i < kTileRowsPerWarp; ++i) {
        const int t = t0 + warp * kTileRowsPerWarp + i;
        if (t < m) out[(int64_t)b * out_block_stride + (int64_t)t * rank + r] = lane_sum(acc[i]);
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

// y[t, j] = (y[t, j] + spec_dot(z[t, :], c[j, :], rank)) + bias[j]: block 256 threads = 64 column pairs (j, j + 64)
// × 4 row groups of 8 rows t; the two C rows in registers (rank ≤ R), z rows from shared memory
// (float4 broadcasts).
constexpr int kZcCols = 128, kZcRows = 32, kZcRowsPerThread = kZcRows / 4;
template <int R>
__global__ void __launch_bounds__(256, R <= 32 ? 2 : 1) zc_kernel(const float* __restrict__ z, int m, const float* __restrict__ c,
                                                    int n, int rank, float* __restrict__ y, int64_t ld,
                                                    const float* __restrict__ bias) {
    __shared__ __align__(16) float zs[kZcRows][R];
    __shared__ float cs[kZcCols][R + 1];  // the block's C rows (+1: a thread's row reads hit distinct banks)
    pdl_wait();
    pdl_trigger();
    const int tid = threadIdx.x, grp = tid >> 6;
    const int ja = blockIdx.x * kZcCols + (tid & 63), jb = ja + 64;
    const int t0 = blockIdx.y * kZcRows + grp * kZcRowsPerThread;  // this thread's first row
    // the thread's outputs of y first (all in flight while C and z are fetched)
    float ya[kZcRowsPerThread], yb[kZcRowsPerThread];
#pragma unroll
    for (int i = 0; i < kZcRowsPerThread; ++i) {
        const bool in = t0 + i < m;
        ya[i] = in && ja < n ? y[(int64_t)(t0 + i) * ld + ja] : 0.0f;
        yb[i] = in && jb < n ? y[(int64_t)(t0 + i) * ld + jb] : 0.0f;
    }
    for (int e = tid; e < kZcRows * R; e += 256) {
        const int rr = e / R, q = e % R, t = blockIdx.y * kZcRows + rr;
        zs[rr][q] = t < m && q < rank ? z[(int64_t)t * rank + q] : 0.0f;
    }
    // C's rows of this block's 128 columns are one contiguous run of C: coalesced into shared memory
    const int jb0 = blockIdx.x * kZcCols;
    const int64_t c_count = (int64_t)min(kZcCols, n - jb0) * rank;
    for (int e = tid; e < kZcCols * rank; e += 256) cs[e / rank][e % rank] = e < c_count ? c[(int64_t)jb0 * rank + e] : 0.0f;
    const float ba = bias && ja < n ? bias[ja] : 0.0f, bb = bias && jb < n ? bias[jb] : 0.0f;
    __syncthreads();
    float ca[R], cb[R];
#pragma unroll
    for (int q = 0; q < R; ++q) {
        ca[q] = q < rank ? cs[tid & 63][q] : 0.0f;
        cb[q] = q < rank ? cs[(tid & 63) + 64][q] : 0.0f;
    }
    if (ja >= n) return;
#pragma unroll
    for (int i = 0; i < kZcRowsPerThread; ++i) {
        const int rr = grp * kZcRowsPerThread + i, t = t0 + i;
        if (t >= m) break;
        float la[8] = {}, lb[8] = {};
#pragma unroll
        for (int q4 = 0; q4 < R; q4 += 4) {
            const float4 zv = *reinterpret_cast<const float4*>(&zs[rr][q4]);
            const float zq[4] = {zv.x, zv.y, zv.z, zv.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int q = q4 + e;  // spectral_dot_ref: lane q mod 8, q < rank only
                if (q < rank) la[q & 7] = __fmaf_rn(zq[e], ca[q], la[q & 7]), lb[q & 7] = __fmaf_rn(zq[e], cb[q], lb[q & 7]);
            }
        }
        float va = __fadd_rn(ya[i], lane_sum(la)), vb = __fadd_rn(yb[i], lane_sum(lb));
        if (bias) va = __fadd_rn(va, ba), vb = __fadd_rn(vb, bb);
        float* yr = y + (int64_t)t * ld;
        yr[ja] = va;
        if (jb < n) yr[jb] = vb;
    }
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

size_t spectral_xb_scratch(int m, int rank, int k) {
    if (m <= kCpuGemvMaxRows || k <= 0) return 0;
    const int kc = pick_kc(k), nb = (k + kc - 1) / kc;
    return nb > 1 ? (size_t)nb * (size_t)m * (size_t)rank : 0;
}

void spectral_xb(const float* x, int64_t ldx, int m, const float* bt, int rank, int k, float* z, float* scratch,
                 size_t scratch_elems, cudaStream_t s) {
    SQ_CHECK(m >= 0 && rank >= 1 && k >= 1 && ldx >= k, "spectral_xb: bad shape m=", m, " rank=", rank, " k=", k,
             " ldx=", ldx);
    if (m == 0) return;
    const int kc = pick_kc(k), nb = (k + kc - 1) / kc;  // gemm_f32's k-blocks
    SQ_CHECK(nb <= kRowMaxBlocks && kc <= kRowChunk, "spectral_xb: k=", k, " has ", nb, " k-blocks of ", kc);
    if (m <= kCpuGemvMaxRows) {  // few rows: one block per output
        launch_pdl("spectral_xb_rows", xb_row_kernel, dim3((unsigned)((int64_t)m * rank)), dim3(kRowThreads), 0, s, x,
                   ldx, bt, rank, k, kc, z);
        return;
    }
    const size_t need = nb > 1 ? spectral_xb_scratch(m, rank, k) : 0;
    SQ_CHECK(scratch_elems >= need, "spectral_xb: scratch of ", scratch_elems, " floats < ", need);
    float* out = nb > 1 ? scratch : z;
    const dim3 grid((unsigned)((m + kTileRows - 1) / kTileRows), (unsigned)nb, (unsigned)((rank + 31) / 32));
    launch_pdl("spectral_xb_tiles", xb_tiles_kernel, grid, dim3(128), 0, s, x, ldx, m, bt, rank, k, kc, out,
               (int64_t)m * rank);
    if (nb > 1) {
        const int64_t count = (int64_t)m * rank;
        launch_pdl("spectral_xb_sum", xb_blocks_sum_kernel, dim3(blocks_of(count, 256)), dim3(256), 0, s,
                   (const float*)scratch, count, nb, z);
    }
}

void spectral_zc_add(const float* z, int m, const float* c, int n, int rank, float* y, int64_t ld, const float* bias,
                     cudaStream_t s) {
    SQ_CHECK(m >= 0 && n >= 0 && rank >= 1 && ld >= n, "spectral_zc_add: bad shape m=", m, " n=", n, " rank=", rank);
    if (m == 0 || n == 0) return;
    const dim3 grid((unsigned)((n + kZcCols - 1) / kZcCols), (unsigned)((m + kZcRows - 1) / kZcRows));
    if (rank <= 32)
        launch_pdl("spectral_zc", zc_kernel<32>, grid, dim3(256), 0, s, z, m, c, n, rank, y, ld, bias);
    else if (rank <= 64)
        launch_pdl("spectral_zc", zc_kernel<64>, grid, dim3(256), 0, s, z, m, c, n, rank, y, ld, bias);
    else
        launch_pdl("spectral_zc_plain", zc_plain_kernel, dim3(blocks_of((int64_t)m * n, 256)), dim3(256), 0, s, z, m,
                   c, n, rank, y, ld, bias);
}

}  // namespace sq::cuda
