// W4A4 GEMM / GEMV on the INT8 tensor cores (sm_90a). Layout, operand
// semantics and the epilogue are documented in w4a4_gemm.h; design notes and
// measured versions in docs/kernels-cuda-notes.md.
// Build: cmake -DSPECQUANT_CUDA=ON; tests: tests/test_cuda_w4a4_gemm.cpp;
// benchmark: bench/bench_cuda_gemm.cu.
#include "kernels/cuda/w4a4_gemm.h"

#include <cooperative_groups.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/env.h"
#include "core/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/quant_math.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/w4a4_spec_dot.cuh"
#include "kernels/cuda/w4a4_wgmma.h"
#include "kernels/w4a4_format.h"

namespace sq::cuda {

void w4g_repack(const uint8_t* codes, int64_t n, int64_t k, uint8_t* dst) {
    std::memset(dst, 0, (size_t)w4g_bytes(n, k));
    const int64_t rb = w4_row_bytes(k);
    for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < k; ++i) {
            int nib = 0;
            const int64_t off = w4g_offset(k, j, i, &nib);
            dst[off] |= (uint8_t)((w4_get(codes + j * rb, i) & 0xF) << (4 * nib));
        }
}

namespace {

// ---- PTX wrappers -------------------------------------------------------

// D = A·B + D, A 16×32 u8 (row), B 32×8 s8 (col), int32 accumulators.
__device__ __forceinline__ void mma_u8s8(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global → shared, asynchronously; bytes < 16 zero-fills the rest (0: all zero, nothing read).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int bytes) {
    const uint32_t sa = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
    const uint32_t sa = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(sa));
}

// Weight bytes are read once: no L1 allocation (L1 keeps the activation rows).
__device__ __forceinline__ uint4 ldg_stream16(const uint8_t* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// Widen one layout word: bytes of 16·code (s8) for k = 4t..4t+3 (b0) and 16+4t.. (b1).
__device__ __forceinline__ uint32_t w4_lo16(uint32_t w) { return (w << 4) & 0xF0F0F0F0u; }
__device__ __forceinline__ uint32_t w4_hi16(uint32_t w) { return w & 0xF0F0F0F0u; }

__device__ __forceinline__ uint32_t word_of(const uint4& v, int s) {
    return s == 0 ? v.x : (s == 1 ? v.y : (s == 2 ? v.z : v.w));
}

// ---- epilogue -------------------------------------------------------------

// y = ((s_t · scale_j) · (float)(acc − z_t · rowsum_j) + spec) + bias, as cuda::w4a4_epilogue;
// spec = a.spec[t, j], or fused: spec_dot(spec_z[t, :], spec_c[j, :], spec_rank).
// c_row, z_row (GEMV, v5 / v7): C_col and z_row staged in shared memory, else null (read from
// a.spec_c / a.spec_z).
// EpiCol: column j's constants (weights: the GEMV loads them before its PDL wait, v10).
struct EpiCol {
    float ws = 0.0f, bias = 0.0f;
    int rs = 0;
};
__device__ __forceinline__ EpiCol epi_col(const W4GemmArgs& a, int col) {
    EpiCol c;
    c.ws = a.w_scale[col], c.rs = a.w_rowsum[col], c.bias = a.bias ? a.bias[col] : 0.0f;
    return c;
}
__device__ __forceinline__ float epi_value(const W4GemmArgs& a, int row, int col, int acc, float st, int zt,
                                           const EpiCol& c, const float* c_row = nullptr,
                                           const float* z_row = nullptr) {
    float v = epi_base(st, c.ws, acc, zt, c.rs);
    if (a.spec) v = __fadd_rn(v, a.spec[(int64_t)row * a.n + col]);
    else if (a.spec_rank > 0)
        v = __fadd_rn(v, spec_dot(z_row ? z_row : a.spec_z + (int64_t)row * a.spec_rank,
                                  c_row ? c_row : a.spec_c + (int64_t)col * a.spec_rank, a.spec_rank));
    if (a.bias) v = __fadd_rn(v, c.bias);
    return v;
}
__device__ __forceinline__ float epi_value(const W4GemmArgs& a, int row, int col, int acc, float st, int zt,
                                           const float* c_row = nullptr, const float* z_row = nullptr) {
    return epi_value(a, row, col, acc, st, zt, epi_col(a, col), c_row, z_row);
}

// Two adjacent outputs (row, col), (row, col + 1); col + 1 may be past n.
__device__ __forceinline__ void epi_store2(const W4GemmArgs& a, int row, int col, int v0, int v1) {
    const int64_t i = (int64_t)row * a.n + col;
    const bool two = col + 1 < a.n, vec = two && (a.n % 2 == 0);  // 8-byte aligned when n is even
    if (a.acc) {
        if (vec) *reinterpret_cast<int2*>(a.acc + i) = make_int2(v0, v1);
        else {
            a.acc[i] = v0;
            if (two) a.acc[i + 1] = v1;
        }
    }
    if (a.y) {
        const float st = a.act_scale[row];
        const int zt = a.act_zero[row];
        const float y0 = epi_value(a, row, col, v0, st, zt);
        if (vec) *reinterpret_cast<float2*>(a.y + i) = make_float2(y0, epi_value(a, row, col + 1, v1, st, zt));
        else {
            a.y[i] = y0;
            if (two) a.y[i + 1] = epi_value(a, row, col + 1, v1, st, zt);
        }
    }
}

// ---- prefill: tiled mma.sync GEMM ----------------------------------------
//
// CTA tile BM × BN, k 128 per stage, 8 warps of WM × WN (MT = WM/16 m16
// tiles × NT = WN/8 n8 tiles each). Shared memory per stage: A BM rows ×
// 128 B (16-byte chunks XOR-swizzled by row so ldmatrix's 8 rows hit 8
// different bank groups) + B BN/8 layout blocks × 512 B (copied verbatim: a
// warp's 16-byte reads are 512 contiguous bytes, conflict-free).
// Default (config 0, v2): 128 × 128, warps 64 × 32, 3 stages = 72 KB, two CTAs
// (16 warps) per SM; per stage a warp issues 16 ldmatrix.x4 + 4 LDS.128 for 64
// MMAs. v1's 128 × 256 with 8 warps per SM (config 4) was latency bound (ncu:
// 2 warps per scheduler, 6.8 cycles per issued instruction, 36% SM throughput).
constexpr int TB_K = 128, T_THREADS = 256;

template <int BM, int BN, int WM, int WN, int STAGES, int MINB>
struct TileCfg {
    static constexpr int kBM = BM, kBN = BN, kWM = WM, kWN = WN, kStages = STAGES, kMinBlocks = MINB;
    static constexpr int kMT = WM / 16, kNT = WN / 8, kWarpsN = BN / WN;
    static constexpr int kAStage = BM * TB_K, kBStage = BN / W4G_NB * 512, kStage = kAStage + kBStage;
    static constexpr int kSmem = STAGES * kStage;
    static_assert((BM / WM) * (BN / WN) == T_THREADS / 32, "8 warps");
    static_assert(kAStage % (16 * T_THREADS) == 0 && kBStage % (16 * T_THREADS) == 0, "whole chunks per thread");
};

template <class C, bool kAligned>  // q rows 16-byte aligned (k % 16 == 0): cp.async; else byte loads
__global__ void __launch_bounds__(T_THREADS, C::kMinBlocks) gemm_tiled_kernel(const W4GemmArgs a) {
    extern __shared__ __align__(128) uint8_t smem[];
    constexpr int MT = C::kMT, NT = C::kNT, STAGES = C::kStages;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / C::kWarpsN, wn = warp % C::kWarpsN;
    const int m0 = blockIdx.y * C::kBM, n0 = blockIdx.x * C::kBN;
    const int KB = (a.k + TB_K - 1) / TB_K, NB = (a.n + W4G_NB - 1) / W4G_NB;

    auto load_stage = [&](int slot, int kb) {
        uint8_t* As = smem + slot * C::kStage;
        uint8_t* Bs = As + C::kAStage;
        const int k0 = kb * TB_K;
#pragma unroll
        for (int i = 0; i < C::kAStage / 16 / T_THREADS; ++i) {
            const int id = tid + i * T_THREADS, r = id >> 3, c = id & 7;
            const int row = m0 + r, kc = k0 + c * 16;
            uint8_t* dst = As + r * TB_K + ((c ^ (r & 7)) << 4);
            if constexpr (kAligned) {
                const int bytes = (row < a.m && kc < a.k) ? min(16, a.k - kc) : 0;
                cp_async16(dst, bytes ? a.q + (int64_t)row * a.k + kc : a.q, bytes);
            } else {
                uint32_t v[4] = {0, 0, 0, 0};
                if (row < a.m) {
                    const uint8_t* src = a.q + (int64_t)row * a.k;
#pragma unroll
                    for (int b = 0; b < 16; ++b)
                        if (kc + b < a.k) v[b >> 2] |= (uint32_t)src[kc + b] << (8 * (b & 3));
                }
                *reinterpret_cast<uint4*>(dst) = make_uint4(v[0], v[1], v[2], v[3]);
            }
        }
#pragma unroll
        for (int i = 0; i < C::kBStage / 16 / T_THREADS; ++i) {
            const int id = tid + i * T_THREADS, nb = id >> 5, c = id & 31;
            const int gnb = n0 / W4G_NB + nb;
            const bool ok = gnb < NB;
            cp_async16(Bs + nb * 512 + c * 16, ok ? a.w + ((int64_t)gnb * KB + kb) * 512 + c * 16 : a.w, ok ? 16 : 0);
        }
    };

    int acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;

#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < KB) load_stage(st, st);
        cp_async_commit();
    }
    for (int kb = 0; kb < KB; ++kb) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage kb landed for everyone; slot (kb−1) % STAGES is free
        {
            const int nk = kb + STAGES - 1;
            if (nk < KB) load_stage(nk % STAGES, nk);
            cp_async_commit();
        }
        const uint8_t* As = smem + (kb % STAGES) * C::kStage;
        const uint8_t* Bs = As + C::kAStage;
        uint4 bw[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
            bw[nt] = *reinterpret_cast<const uint4*>(Bs + (wn * NT + nt) * 512 + lane * 16);
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            uint32_t af[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int r = wm * C::kWM + mt * 16 + (lane & 15), c = 2 * s + (lane >> 4);
                ldmatrix_x4(af[mt], As + r * TB_K + ((c ^ (r & 7)) << 4));
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const uint32_t w = word_of(bw[nt], s), b0 = w4_lo16(w), b1 = w4_hi16(w);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) mma_u8s8(acc[mt][nt], af[mt], b0, b1);
            }
        }
    }
    cp_async_wait<0>();

    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = m0 + wm * C::kWM + mt * 16 + g + h * 8;
            if (row >= a.m) continue;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int col = n0 + wn * C::kWN + nt * 8 + 2 * t;
                if (col < a.n) epi_store2(a, row, col, acc[mt][nt][2 * h] >> 4, acc[mt][nt][2 * h + 1] >> 4);
            }
        }
}

// The configurations the benchmark compares (docs/kernels-cuda-notes.md); 0 is the default.
using TileCfg0 = TileCfg<128, 128, 64, 32, 3, 2>;  // 72 KB smem, 2 CTAs/SM (16 warps): the default (v2)
using TileCfg1 = TileCfg<128, 128, 64, 32, 4, 2>;  // 96 KB, 2 CTAs/SM
using TileCfg2 = TileCfg<256, 128, 64, 64, 4, 1>;  // 160 KB, 1 CTA/SM
using TileCfg3 = TileCfg<128, 256, 64, 64, 3, 1>;  // 96 KB, 1 CTA/SM, 3 stages
using TileCfg4 = TileCfg<128, 256, 64, 64, 4, 1>;  // 128 KB, 1 CTA/SM (8 warps): v1

template <class C>
void launch_tiled(const W4GemmArgs& a, cudaStream_t s) {
    const bool aligned = a.k % 16 == 0 && ((uintptr_t)a.q & 15) == 0;
    const dim3 grid((unsigned)((a.n + C::kBN - 1) / C::kBN), (unsigned)((a.m + C::kBM - 1) / C::kBM));
    // Set on every call (cheap): the attribute is per device, and a second device must work too.
    if (aligned) {
        SQ_CUDA(cudaFuncSetAttribute(gemm_tiled_kernel<C, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     C::kSmem));
        gemm_tiled_kernel<C, true><<<grid, T_THREADS, C::kSmem, s>>>(a);
    } else {
        SQ_CUDA(cudaFuncSetAttribute(gemm_tiled_kernel<C, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     C::kSmem));
        gemm_tiled_kernel<C, false><<<grid, T_THREADS, C::kSmem, s>>>(a);
    }
    SQ_CUDA_LAUNCH("w4a4_gemm_tiled");
}

// ---- decode: m ≤ 64 -------------------------------------------------------
//
// One block (8 warps) per NT n8 tiles; warp w takes layout blocks kb = w, w+8, …
// and U of them per iteration: its U·NT 16-byte weight loads and the U·4·MT
// activation fragments (4-byte loads, L1/L2 hits: m·k bytes per block against
// 4·NT·k weight bytes) are all issued before the first MMA, so a lane has
// U·NT·16 bytes of weights in flight. MT m16 row tiles (m ≤ 16·MT) share every
// weight fragment: the weights are read once for up to 64 rows. The 8 warps'
// accumulators are summed in shared memory, then the epilogue.
//
// PDL (pdl.cuh, v4): the weights are constant, so before waiting for the
// kernel that produces the activations, each warp loads its first iteration's
// weights into registers and (optionally, kPrefetchBlocks) asks L2 for the rest
// of its slice: the weight stream starts while the previous (latency-bound)
// kernel still runs.
constexpr int V_WARPS = 8;
// Off by default since decode v7 (model_cuda's side-stream L2 prefetch of the next weights during
// attention): with both, B=1 decode was 5% slower than with that one alone (docs/perf.md "Session 11").
// SQ_CUDA_GEMV_PREFETCH=64 restores decode v4's 32 KB per warp.
constexpr int kPrefetchBlocks = 0;

// ---- decode v8: the RMSNorm in the GEMV (w4a4_gemm.h, GemvNorm) ----
constexpr int kNormCluster = 8, kNormV = W4G_NORM_MAX_K / 256;  // lane elements per row: i = 32·rank + lane + 256·j
struct NormSmem {                                                // then the codes [m][kq], kq = k rounded up to 256
    float ss[W4G_NORM_MAX_M][kNormCluster];  // per row, each cluster block's warp sum of squares
    float mx[W4G_NORM_MAX_M][kNormCluster], mn[W4G_NORM_MAX_M][kNormCluster];
    float s[W4G_NORM_MAX_M];
    int z[W4G_NORM_MAX_M];
};
__host__ __device__ inline int norm_kq(int k) { return (k + 255) / 256 * 256; }

// Warp t < m of every block normalizes row t's elements of this block's cluster rank (the norm
// kernel's warp `rank`: element i = 32·rank + lane + 256·j, the same lane chain), nw: their norm
// weights (loaded before the PDL wait). Three cluster barriers: sums of squares, max/min, codes.
__device__ __forceinline__ void gemv_norm_prologue(const W4GemmArgs& a, const GemvNorm& nrm, const float (&nw)[kNormV],
                                                   NormSmem* ns, uint8_t* codes, int kq) {
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    const int lane = threadIdx.x & 31, t = threadIdx.x >> 5, r = (int)cl.block_rank();
    const bool row = t < a.m, first = blockIdx.x < kNormCluster;  // the first cluster writes h_out, y
    const int64_t base = (int64_t)t * a.k;
    float hv[kNormV];
    if (row) {  // h + add, and the sum of squares as rmsnorm_kernel's thread 32·rank + lane, then its warp_sum
        float ss = 0.0f;
#pragma unroll
        for (int j = 0; j < kNormV; ++j) {
            const int i = 32 * r + lane + 256 * j;
            hv[j] = i < a.k ? nrm.h[base + i] : 0.0f;
        }
        if (nrm.add) {
#pragma unroll
            for (int j = 0; j < kNormV; ++j) {
                const int i = 32 * r + lane + 256 * j;
                if (i < a.k) hv[j] = __fadd_rn(hv[j], nrm.add[base + i]);
            }
        }
#pragma unroll
        for (int j = 0; j < kNormV; ++j) {
            const int i = 32 * r + lane + 256 * j;
            if (i >= a.k) continue;
            ss = __fmaf_rn(hv[j], hv[j], ss);
            if (first) nrm.h_out[base + i] = hv[j];
        }
        ss = warp_sum(ss);
        if (lane < kNormCluster) *cl.map_shared_rank(&ns->ss[t][r], lane) = ss;
    }
    cl.sync();
    if (row) {  // block_sum's second stage over the 8 warp sums, then y and its max/min
        const float tot = warp_sum(lane < kNormCluster ? ns->ss[t][lane] : 0.0f);
        const float rr = 1.0f / sqrtf(tot / (float)a.k + nrm.eps);
        float mx = 0.0f, mn = 0.0f;
#pragma unroll
        for (int j = 0; j < kNormV; ++j) {
            const int i = 32 * r + lane + 256 * j;
            if (i >= a.k) continue;
            const float yv = __fmul_rn(nw[j], __fmul_rn(hv[j], rr));
            hv[j] = yv;
            if (first && nrm.y) nrm.y[base + i] = yv;
            mx = ref_max(mx, yv);
            mn = ref_min(mn, yv);
        }
        warp_range(mx, mn);
        if (lane < kNormCluster) {
            *cl.map_shared_rank(&ns->mx[t][r], lane) = mx;
            *cl.map_shared_rank(&ns->mn[t][r], lane) = mn;
        }
    }
    cl.sync();
    if (row) {  // (s, z) from the row's max/min (order-free), this rank's codes to every block of the cluster
        float mx = 0.0f, mn = 0.0f, s;
        int z;
        for (int q = 0; q < kNormCluster; ++q) mx = ref_max(mx, ns->mx[t][q]), mn = ref_min(mn, ns->mn[t][q]);
        asym_params(mx, mn, nrm.bits, nrm.clip, &s, &z);
        if (lane == 0) ns->s[t] = s, ns->z[t] = z;
        const int qmax = (1 << nrm.bits) - 1;
        uint8_t* crow = codes + (int64_t)t * kq;
#pragma unroll
        for (int j = 0; j < kNormV; ++j) {
            if (256 * j >= kq) break;  // warp-uniform
            const int i = 32 * r + lane + 256 * j;
            const uint32_t c = i < a.k ? (uint32_t)quant_one(hv[j], s, z, qmax) : 0u;
            // lanes 4q..4q+3 → word q of the 32-byte run (little endian), then lane L stores word L % 8
            // to cluster blocks L / 8 and L / 8 + 4
            const uint32_t wd = c | (__shfl_down_sync(0xffffffffu, c, 1) << 8) |
                                (__shfl_down_sync(0xffffffffu, c, 2) << 16) |
                                (__shfl_down_sync(0xffffffffu, c, 3) << 24);
            const uint32_t word = __shfl_sync(0xffffffffu, wd, 4 * (lane & 7));
            uint32_t* dst = reinterpret_cast<uint32_t*>(crow + 32 * r + 256 * j + 4 * (lane & 7));
            *cl.map_shared_rank(dst, lane >> 3) = word;
            *cl.map_shared_rank(dst, (lane >> 3) + 4) = word;
        }
    }
    cl.sync();
}

// kDB (v5): double-buffered weights: the next iteration's U·NT loads are issued before
// this iteration's MMAs, so a warp has two iterations of weights in flight (2 blocks per
// SM at ≤ 128 registers: for grids that fit two per SM anyway, the narrow shapes).
// kNorm (v8): the activation codes made by gemv_norm_prologue into shared memory (GemvNorm).
// kStaged (v9, 16-byte aligned rows): a warp's activation codes go through shared memory — the next
// iteration's rows copied by cp.async (a lane: 16 bytes of one row, 8 lanes: one 128-byte line) while
// this iteration's are read as fragments by ldmatrix — instead of 4-byte __ldg per fragment register,
// which touch 8 rows' lines per instruction (8 L1 wavefronts; at 16 rows 256 per iteration against the
// weights' 16: the GEMV was L1-bound above ~8 rows, docs/kernels-cuda-notes.md "GEMV v9").
template <int MT, bool kRows16>
constexpr int kGemvActRows = kRows16 || MT > 1 ? 16 * MT : 8;
template <int U, int MT, bool kRows16>
constexpr size_t kGemvActBytes = (size_t)V_WARPS * 2 * U * kGemvActRows<MT, kRows16> * TB_K;  // all warps' buffers
// Where the staged activations start in dynamic shared memory: after the staged C and z rows.
__host__ __device__ inline size_t gemv_act_offset(int stage_c, int nt, int m, int rank) {
    return stage_c ? ((size_t)(W4G_NB * nt + m) * rank * sizeof(float) + 127) / 128 * 128 : 0;
}
template <int NT, int U, int MT, bool kRows16, bool kAligned4, bool kDB = false, bool kNorm = false,
          bool kStaged = false>
__global__ void __launch_bounds__(V_WARPS * 32, kDB ? 2 : (MT == 1 ? (U <= 2 && NT <= 2 ? 3 : 1) : 2))
    gemv_kernel(const W4GemmArgs a, int prefetch_blocks, int stage_c, const GemvNorm nrm) {
    static_assert(!(kStaged && (kNorm || !kAligned4)), "staged activations: 16-byte aligned rows in global memory");
    __shared__ int red[V_WARPS][NT][4][32];
    // stage_c: C rows of this block's 8·NT outputs [8·NT][spec_rank], then z [m][spec_rank];
    // then (kStaged) each warp's two activation buffers.
    extern __shared__ __align__(128) float cs[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int nb0 = blockIdx.x * NT;
    if (stage_c) {  // C is a weight (constant): staged before the PDL wait, coalesced (v5)
        const int rows = W4G_NB * NT, r0 = nb0 * W4G_NB;
        for (int i = threadIdx.x; i < rows * a.spec_rank; i += V_WARPS * 32) {
            const int r = r0 + i / a.spec_rank;
            cs[i] = r < a.n ? a.spec_c[(int64_t)r0 * a.spec_rank + i] : 0.0f;
        }
    }
    const int KB = (a.k + TB_K - 1) / TB_K, NB = (a.n + W4G_NB - 1) / W4G_NB;

    auto load_w = [&](uint4 (&w)[U][NT], int kb0) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int kb = kb0 + u * V_WARPS;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int nb = nb0 + nt;
                w[u][nt] = (kb < KB && nb < NB) ? ldg_stream16(a.w + ((int64_t)nb * KB + kb) * 512 + lane * 16)
                                                : make_uint4(0, 0, 0, 0);
            }
        }
    };
    float nw[kNorm ? kNormV : 1];
    if constexpr (kNorm) {  // the norm weights (constant) and h's lines before the wait
        const int r = blockIdx.x % kNormCluster;
        if (warp < a.m) {
#pragma unroll
            for (int j = 0; j < kNormV; ++j) {
                const int i = 32 * r + lane + 256 * j;
                nw[j] = i < a.k ? nrm.w[i] : 0.0f;
            }
            if (lane < kNormV && 32 * r + 256 * lane < a.k)
                prefetch_l2(nrm.h + (int64_t)warp * a.k + 32 * r + 256 * lane);
        }
    }
    uint4 w[U][NT];
    load_w(w, warp);
    {  // L2 prefetch of this warp's later blocks: (kb, nt) pairs, 4 lines of 128 B per 512-byte block
        const int per_nt = (KB - warp + V_WARPS - 1) / V_WARPS;  // this warp's kb count
        const int total = min(per_nt * NT, prefetch_blocks);
        for (int j = U * NT + lane / 4; j < total; j += 8) {
            const int kb = warp + (j / NT) * V_WARPS, nb = nb0 + j % NT;
            if (nb < NB) prefetch_l2(a.w + ((int64_t)nb * KB + kb) * 512 + (lane & 3) * 128);
        }
    }
    // v10: the epilogue's per-column constants (weights) in registers before the wait, the rows' (s, z)
    // right after it (m ≤ 16, not kNorm): the epilogue then waits on no global load (it did: one memory
    // round trip at the end of every GEMV). Thread e's elements: e + 256·j of the NT·128 below.
    constexpr int kEpi = (NT * 4 * 32 + V_WARPS * 32 - 1) / (V_WARPS * 32);
    EpiCol e_col[kEpi];
    float e_st[kEpi];
    int e_zt[kEpi];
#pragma unroll
    for (int j = 0; j < kEpi; ++j) {
        const int e = threadIdx.x + j * V_WARPS * 32, l = e & 31, r = (e >> 5) & 3;
        const int col = (nb0 + (e >> 7)) * W4G_NB + 2 * (l & 3) + (r & 1);
        if (e < NT * 4 * 32 && col < a.n && a.y) e_col[j] = epi_col(a, col);
    }
    pdl_wait();  // activations, scales, spec_z: the previous kernels' outputs
    pdl_trigger();
    if constexpr (MT == 1 && !kNorm) {
#pragma unroll
        for (int j = 0; j < kEpi; ++j) {
            const int e = threadIdx.x + j * V_WARPS * 32, row = ((e & 31) >> 2) + (((e >> 5) & 3) >> 1) * 8;
            const bool ok = e < NT * 4 * 32 && row < a.m && a.y;
            e_st[j] = ok ? a.act_scale[row] : 0.0f;
            e_zt[j] = ok ? a.act_zero[row] : 0;
        }
    }
    NormSmem* ns = reinterpret_cast<NormSmem*>(cs);
    uint8_t* ncodes = reinterpret_cast<uint8_t*>(cs) + sizeof(NormSmem);
    const int kq = kNorm ? norm_kq(a.k) : 0;
    if constexpr (kNorm) gemv_norm_prologue(a, nrm, nw, ns, ncodes, kq);
    float* zs = cs + W4G_NB * NT * a.spec_rank;
    if (stage_c)  // z rows to shared memory now, under the main loop: the epilogue's spec_dot then waits
                  // on no global load (v7: neutral at B = 1, +1.7% at B = 8 with rank 31)
        for (int i = threadIdx.x; i < a.m * a.spec_rank; i += V_WARPS * 32) zs[i] = a.spec_z[i];

    // kStaged: buffer b of this warp holds U slices [kActRows rows][128 codes] of iteration kb0's
    // activations, 16-byte chunk c of row r at c ^ (r & 7) (ldmatrix's 8 rows: 8 bank groups).
    constexpr int kActRows = kGemvActRows<MT, kRows16>, kActBuf = U * kActRows * TB_K;
    uint8_t* act_s = reinterpret_cast<uint8_t*>(cs) + gemv_act_offset(stage_c, NT, a.m, a.spec_rank) +
                     (size_t)warp * 2 * kActBuf;
    auto load_act = [&](int kb0, int b) {  // rows ≥ m and k ≥ a.k (a.k % 16 == 0) zero-filled
        uint8_t* dst = act_s + b * kActBuf;
#pragma unroll
        for (int i = lane; i < U * kActRows * 8; i += 32) {
            const int u = i / (kActRows * 8), r = (i >> 3) % kActRows, c = i & 7;
            const int kc = (kb0 + u * V_WARPS) * TB_K + c * 16;
            const bool ok = r < a.m && kc < a.k;
            cp_async16(dst + (u * kActRows + r) * TB_K + ((c ^ (r & 7)) << 4), ok ? a.q + (int64_t)r * a.k + kc : a.q,
                       ok ? 16 : 0);
        }
        cp_async_commit();
    };
    if constexpr (kStaged) load_act(warp, 0);

    const uint8_t* q0[MT];
    const uint8_t* q1[MT];
    bool r0[MT], r1[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const int ra = 16 * mt + g, rb = ra + 8;
        r0[mt] = ra < a.m;
        r1[mt] = (kRows16 || MT > 1) && rb < a.m;
        if constexpr (kNorm) {  // m ≤ 8: rows ra only
            q0[mt] = q1[mt] = ncodes + (int64_t)(r0[mt] ? ra : 0) * kq;
        } else {
            q0[mt] = a.q + (int64_t)(r0[mt] ? ra : 0) * a.k;
            q1[mt] = a.q + (int64_t)(r1[mt] ? rb : 0) * a.k;
        }
    }

    auto act4 = [&](const uint8_t* row, int k) -> uint32_t {
        if constexpr (kNorm) {  // shared memory (k % 4 == 0)
            return k < a.k ? *reinterpret_cast<const uint32_t*>(row + k) : 0u;
        } else if constexpr (kAligned4) {
            return k < a.k ? __ldg(reinterpret_cast<const uint32_t*>(row + k)) : 0u;
        } else {
            uint32_t v = 0;
#pragma unroll
            for (int b = 0; b < 4; ++b)
                if (k + b < a.k) v |= (uint32_t)row[k + b] << (8 * b);
            return v;
        }
    };

    int acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0;

    for (int kb0 = warp, it = 0; kb0 < KB; kb0 += V_WARPS * U, ++it) {
        uint4 wn[U][NT];
        if constexpr (kDB) {
            if (kb0 + V_WARPS * U < KB) load_w(wn, kb0 + V_WARPS * U);
        } else if (kb0 != warp) {
            load_w(w, kb0);
        }
        uint32_t af[U][4][MT][4];
        if constexpr (kStaged) {
            if (kb0 + V_WARPS * U < KB) load_act(kb0 + V_WARPS * U, (it + 1) & 1);
            else cp_async_commit();  // an empty group: wait_group 1 below then means this iteration's
            cp_async_wait<1>();
            __syncwarp();  // every lane's copies of this buffer landed
            const uint8_t* ab = act_s + (it & 1) * kActBuf;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if constexpr (kActRows == 8) {  // rows 0..7 only: one ldmatrix.x4 = two k32 steps' a[0], a[2]
#pragma unroll
                    for (int sp = 0; sp < 2; ++sp) {
                        const int r = lane & 7, c = 4 * sp + (lane >> 3);
                        uint32_t x[4];
                        ldmatrix_x4(x, ab + (u * 8 + r) * TB_K + ((c ^ r) << 4));
                        af[u][2 * sp][0][0] = x[0], af[u][2 * sp][0][2] = x[1];
                        af[u][2 * sp + 1][0][0] = x[2], af[u][2 * sp + 1][0][2] = x[3];
                        af[u][2 * sp][0][1] = af[u][2 * sp][0][3] = af[u][2 * sp + 1][0][1] =
                            af[u][2 * sp + 1][0][3] = 0u;
                    }
                } else {
#pragma unroll
                    for (int s = 0; s < 4; ++s)
#pragma unroll
                        for (int mt = 0; mt < MT; ++mt) {
                            const int r = 16 * mt + (lane & 15), c = 2 * s + (lane >> 4);
                            ldmatrix_x4(af[u][s][mt], ab + (u * kActRows + r) * TB_K + ((c ^ (r & 7)) << 4));
                        }
                }
            }
            __syncwarp();  // all lanes' reads done before the next iteration's copies refill this buffer
        } else {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int kb = kb0 + u * V_WARPS;
            const bool in = kb < KB;
#pragma unroll
            for (int s = 0; s < 4; ++s) {
                const int k = kb * TB_K + s * 32 + 4 * t;
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    af[u][s][mt][0] = in && r0[mt] ? act4(q0[mt], k) : 0u;
                    af[u][s][mt][2] = in && r0[mt] ? act4(q0[mt], k + 16) : 0u;
                    af[u][s][mt][1] = in && r1[mt] ? act4(q1[mt], k) : 0u;
                    af[u][s][mt][3] = in && r1[mt] ? act4(q1[mt], k + 16) : 0u;
                }
            }
        }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (kb0 + u * V_WARPS >= KB) break;
#pragma unroll
            for (int s = 0; s < 4; ++s)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const uint32_t ww = word_of(w[u][nt], s), b0 = w4_lo16(ww), b1 = w4_hi16(ww);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) mma_u8s8(acc[mt][nt], af[u][s][mt], b0, b1);
                }
        }
        if constexpr (kDB) {
#pragma unroll
            for (int u = 0; u < U; ++u)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) w[u][nt] = wn[u][nt];
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        if (mt > 0) __syncthreads();  // red is reused per m16 tile
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int r = 0; r < 4; ++r) red[warp][nt][r][lane] = acc[mt][nt][r];
        __syncthreads();
#pragma unroll
        for (int j = 0; j < kEpi; ++j) {
            const int e = threadIdx.x + j * V_WARPS * 32;
            if (e >= NT * 4 * 32) break;
            const int nt = e >> 7, r = (e >> 5) & 3, l = e & 31;
            int sum = 0;
#pragma unroll
            for (int w = 0; w < V_WARPS; ++w) sum += red[w][nt][r][l];
            const int row = 16 * mt + (l >> 2) + (r >> 1) * 8, col = (nb0 + nt) * W4G_NB + 2 * (l & 3) + (r & 1);
            if (row >= a.m || col >= a.n) continue;
            const int64_t i = (int64_t)row * a.n + col;
            sum >>= 4;
            if (a.acc) a.acc[i] = sum;
            if (!a.y) continue;
            float st;
            int zt;
            if constexpr (kNorm) st = ns->s[row], zt = ns->z[row];
            else if constexpr (MT == 1) st = e_st[j], zt = e_zt[j];
            else st = a.act_scale[row], zt = a.act_zero[row];
            a.y[i] = epi_value(a, row, col, sum, st, zt, e_col[j],
                               stage_c ? cs + (col - nb0 * W4G_NB) * a.spec_rank : nullptr,
                               stage_c ? zs + row * a.spec_rank : nullptr);
        }
    }
}

void check_args(const W4GemmArgs& a, const char* who) {
    SQ_CHECK(a.m >= 0 && a.n >= 0 && a.k >= 1 && a.k <= 65536, who, ": shape m=", a.m, " n=", a.n, " k=", a.k,
             " out of range (1 <= k <= 65536)");
    SQ_CHECK(a.q && a.w, who, ": null activation or weight pointer");
    SQ_CHECK(((uintptr_t)a.w & 15) == 0, who, ": weights must be 16-byte aligned");
    SQ_CHECK(!a.y || (a.act_scale && a.act_zero && a.w_scale && a.w_rowsum), who,
             ": y needs act_scale, act_zero, w_scale and w_rowsum");
    SQ_CHECK(a.spec_rank >= 0 && (a.spec_rank == 0 || (a.spec_z && a.spec_c && !a.spec)), who,
             ": fused spectral branch needs spec_z and spec_c, and no spec");
}

// SQ_CUDA_GEMV_PREFETCH=N: layout blocks per warp asked of L2 before the PDL wait (0: none; A/B of
// docs/perf.md "Decode v4" and "Session 11"); unset: kPrefetchBlocks.
int gemv_prefetch_blocks() {
    static const int n = env_int("SQ_CUDA_GEMV_PREFETCH", kPrefetchBlocks, 0, 4096);
    return n;
}

// SQ_CUDA_GEMV_NT=1|2|4: n8 tiles per GEMV block forced (A/B of docs/perf.md "Decode v6"; 0 or unset:
// the heuristic of w4a4_gemv_cfg). The double-buffered configuration takes 2 or 4 (1 → 2).
int gemv_nt_override() {
    static const int n = [] {
        const char* e = std::getenv("SQ_CUDA_GEMV_NT");
        if (!e || !*e) return 0;
        const int v = std::atoi(e);
        SQ_CHECK(v == 0 || v == 1 || v == 2 || v == 4, "SQ_CUDA_GEMV_NT must be 0, 1, 2 or 4, got '", e, "'");
        return v;
    }();
    return n;
}

// The fused spectral branch's C rows of a block go to shared memory when they fit in 32 KB with
// the call's z rows (rank ≤ 128 at NT = 4 and 32 rows): C read once, coalesced, before the PDL
// wait, instead of one 4·rank-byte row per output thread in the epilogue (v5); z after the wait.
constexpr size_t kStageCBytes = 32 << 10;

// v9: rows from which the GEMV stages its activation codes in shared memory (kStaged), when they are
// 16-byte aligned (k % 16 == 0, a.q aligned). SQ_CUDA_GEMV_STAGE_MIN_M=N overrides (A/B; 65: never).
// 1: B=1 decode 351 → 357 tok/s (LLaMA-3-8B shape; 2 rows: 351, no change), docs/perf.md "GEMV v9".
constexpr int kStageMinM = 1;
int gemv_stage_min_m() {
    static const int n = env_int("SQ_CUDA_GEMV_STAGE_MIN_M", kStageMinM, 1, W4G_GEMV_MAX_M + 1);
    return n;
}
bool gemv_stage_ok(const W4GemmArgs& a) { return a.k % 16 == 0 && ((uintptr_t)a.q & 15) == 0; }

// The kernel's dynamic shared memory limit set to this launch's on every call, as the tiled and wgmma
// kernels do (the attribute is per device). Also at ≤ 48 KB: with the static `red` (up to 16 KB) the
// sum may pass the default (a fused spectral test's staged C did).
template <class K>
void allow_smem(K kernel, size_t smem) {
    SQ_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
}

template <int NT, int U, int MT = 1, bool DB = false, bool ST = false>
void launch_gemv(const W4GemmArgs& a, cudaStream_t s) {
    const int pf = gemv_prefetch_blocks();
    const size_t cbytes = (size_t)(W4G_NB * NT + a.m) * a.spec_rank * sizeof(float);  // C rows, z rows
    const int stage = a.y && !a.spec && a.spec_rank > 0 && cbytes <= kStageCBytes ? 1 : 0;
    const bool rows16 = a.m > 8, al4 = a.k % 4 == 0 && ((uintptr_t)a.q & 3) == 0;
    const dim3 blocks((unsigned)((w4g_n_pad(a.n) / W4G_NB + NT - 1) / NT)), threads(V_WARPS * 32);
    if constexpr (ST) {
        SQ_CHECK(gemv_stage_ok(a), "w4a4_gemv: staged activations need k % 16 == 0 and 16-byte aligned rows (k = ",
                 a.k, ")");
        const bool r16 = MT > 1 || rows16;
        const auto kern = r16 ? gemv_kernel<NT, U, MT, true, true, DB, false, true>
                              : gemv_kernel<NT, U, MT, false, true, DB, false, true>;
        const size_t smem = gemv_act_offset(stage, NT, a.m, a.spec_rank) +
                            (r16 ? kGemvActBytes<U, MT, true> : kGemvActBytes<U, MT, false>);
        allow_smem(kern, smem);
        launch_pdl("w4a4_gemv", kern, blocks, threads, smem, s, a, pf, stage, GemvNorm{});
        return;
    }
    const size_t smem = stage ? cbytes : 0;
    if constexpr (MT > 1) {  // m > 16: aligned rows only (w4a4_gemv_cfg sends the rest to the tiled kernel)
        SQ_CHECK(al4, "w4a4_gemv: m = ", a.m, " > 16 needs k % 4 == 0 and 4-byte aligned activations");
        launch_pdl("w4a4_gemv", gemv_kernel<NT, U, MT, true, true>, blocks, threads, smem, s, a, pf, stage, GemvNorm{});
    } else {
        auto go = [&](auto kern) { launch_pdl("w4a4_gemv", kern, blocks, threads, smem, s, a, pf, stage, GemvNorm{}); };
        if (rows16 && al4) go(gemv_kernel<NT, U, 1, true, true, DB>);
        else if (rows16) go(gemv_kernel<NT, U, 1, true, false, DB>);
        else if (al4) go(gemv_kernel<NT, U, 1, false, true, DB>);
        else go(gemv_kernel<NT, U, 1, false, false, DB>);
    }
}

// NT for one-wave grids at m ≤ 16 (w4a4_gemv_cfg's configurations 0..2, and the norm GEMV): the fewest
// n8 tiles per block that still fit the whole grid in one wave (3 blocks of 8 warps per SM at ≤ 85
// registers: 396 on 132 SMs; a second, partial wave cost up to 30% in v1). m > 8 keeps NT ≥ 2: each
// block re-reads the m·k activation bytes, 4·NT·k weight bytes per block.
int gemv_nt(int64_t nb, int m, int sms) {
    const int64_t slots = 3 * (int64_t)sms;
    int nt = m > 8 ? 2 : 1;
    while (nt < 4 && (nb + nt - 1) / nt > slots) nt *= 2;
    // Several waves even at NT = 4 (gu of LLaMA-3-8B: 896 blocks on 396 slots, the last wave 26%
    // full): at m ≤ 4 NT = 2 halves the tail's granularity (1792 blocks, 4.5 waves). H100, --stream:
    // gu m = 1 24.5 → 22.3 µs (80 → 88% of HBM), m = 4 24.6 → 23.2; at m = 8 it lost (25.8 → 27.2),
    // so not there (docs/perf.md "Decode v6").
    if (m <= 4 && nt == 4 && (nb + 3) / 4 > slots) nt = 2;
    if (gemv_nt_override()) nt = gemv_nt_override();
    return nt;
}


// The norm GEMV at NT n8 tiles per block: its kernel, and how many
// of its clusters of 8 fit on the device at once (cudaOccupancyMaxActiveClusters: clusters are placed
// within one GPC, so fewer fit than the 3 blocks per SM of the plain GEMV suggest).
template <int NT>
constexpr auto norm_kernel = gemv_kernel<NT, 2, 1, false, true, false, true>;
template <int NT>
int norm_max_clusters(int m, int k) {
    const size_t smem = sizeof(NormSmem) + (size_t)m * norm_kq(k);  // up to 8 rows of 4096 codes
    allow_smem(norm_kernel<NT>, smem);
    const PdlLaunch L(dim3(kNormCluster * 64), dim3(V_WARPS * 32), smem, nullptr, kNormCluster);
    return L.max_clusters(norm_kernel<NT>);
}
// NT of the norm GEMV: the plain GEMV's choice, or 4, whichever first puts the whole grid's clusters
// on the device at once; 0 when neither does.
int norm_nt(int m, int k, int n) {
    const int64_t tiles = w4g_n_pad(n) / W4G_NB;
    const int nt0 = gemv_nt(tiles, m, device_sms());
    for (int nt : {nt0, 4}) {
        if (nt < nt0) continue;
        const int64_t clusters = ((tiles + nt - 1) / nt + kNormCluster - 1) / kNormCluster;
        const int fit = nt == 1   ? norm_max_clusters<1>(m, k)
                        : nt == 2 ? norm_max_clusters<2>(m, k)
                                  : norm_max_clusters<4>(m, k);
        if (clusters <= fit) return nt;
    }
    return 0;
}

template <int NT>
void launch_gemv_norm(const W4GemmArgs& a, const GemvNorm& nrm, cudaStream_t s) {
    const auto kern = norm_kernel<NT>;
    const size_t smem = sizeof(NormSmem) + (size_t)a.m * norm_kq(a.k);
    allow_smem(kern, smem);
    const int64_t nb = (w4g_n_pad(a.n) / W4G_NB + NT - 1) / NT;
    const unsigned blocks = (unsigned)((nb + kNormCluster - 1) / kNormCluster * kNormCluster);
    launch_pdl_cluster("w4a4_gemv_norm", kNormCluster, kern, dim3(blocks), dim3(V_WARPS * 32), smem, s, a,
                       gemv_prefetch_blocks(), 0, nrm);
}

}  // namespace

int device_sms() {
    int sms = 132, dev = 0;
    SQ_CUDA(cudaGetDevice(&dev));
    SQ_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    return sms;
}

void w4g_check_args(const W4GemmArgs& a, const char* who) { check_args(a, who); }

bool w4a4_gemv_norm_fits(int m, int k, int n) {
    if (!(m >= 1 && m <= W4G_NORM_MAX_M && k >= 1 && k <= W4G_NORM_MAX_K && k % 4 == 0 && n >= 1)) return false;
    return norm_nt(m, k, n) > 0;
}

void w4a4_gemv_norm(const W4GemmArgs& a, const GemvNorm& nrm, cudaStream_t s) {
    SQ_CHECK(a.m >= 1 && a.m <= W4G_NORM_MAX_M && a.k >= 1 && a.k <= W4G_NORM_MAX_K && a.k % 4 == 0,
             "w4a4_gemv_norm: m = ", a.m, ", k = ", a.k, " (needs m <= ", W4G_NORM_MAX_M, ", k <= ", W4G_NORM_MAX_K,
             ", k % 4 == 0)");
    SQ_CHECK(a.n >= 1 && a.w && ((uintptr_t)a.w & 15) == 0 && a.y && a.w_scale && a.w_rowsum,
             "w4a4_gemv_norm: needs n >= 1, 16-byte aligned weights, y, w_scale and w_rowsum");
    SQ_CHECK(!a.spec && a.spec_rank == 0, "w4a4_gemv_norm: no spectral branch (its x·B needs the normed rows)");
    SQ_CHECK(nrm.h && nrm.w && nrm.h_out && nrm.h_out != nrm.h && nrm.h_out != nrm.add && nrm.bits >= 1 &&
                 nrm.bits <= 8,
             "w4a4_gemv_norm: needs h, w, h_out (not h or add: other blocks still read those) and 1..8 bits");
    const int nt = norm_nt(a.m, a.k, a.n);  // 0 (several waves): NT = 4 all the same (correct, slower)
    switch (nt == 0 ? 4 : nt) {
        case 1: launch_gemv_norm<1>(a, nrm, s); break;
        case 2: launch_gemv_norm<2>(a, nrm, s); break;
        default: launch_gemv_norm<4>(a, nrm, s); break;
    }
}

void w4a4_gemm_tiled(const W4GemmArgs& a, cudaStream_t s) { w4a4_gemm_tiled_cfg(a, s, 0); }

void w4a4_gemm_tiled_cfg(const W4GemmArgs& a, cudaStream_t s, int cfg) {
    check_args(a, "w4a4_gemm_tiled");
    if (a.m == 0 || a.n == 0 || (!a.acc && !a.y)) return;
    switch (cfg) {
        case 0: launch_tiled<TileCfg0>(a, s); break;
        case 1: launch_tiled<TileCfg1>(a, s); break;
        case 2: launch_tiled<TileCfg2>(a, s); break;
        case 3: launch_tiled<TileCfg3>(a, s); break;
        case 4: launch_tiled<TileCfg4>(a, s); break;
        default: fail("w4a4_gemm_tiled: no tile configuration ", cfg);
    }
}

// NT of the double-buffered configurations (3, 5; 2 blocks per SM): the fewest (≥ 2) that fit one wave
// of 2·SMs. v10: above one row NT = 3 between 2 and 4 (q|k|v of LLaMA-3-8B: 768 tiles in 256 blocks
// instead of 192, which left 72 of 132 SMs one block): B=16 decode 3196 / 3181 tok/s against 3155 /
// 3141, B=8 the same, B=1 372 against 375 (so not at one row), docs/perf.md "Session 13".
static int gemv_db_nt(int64_t nb, int m, int64_t sms) {
    int nt = 2;
    while (nt < 4 && (nb + nt - 1) / nt > 2 * sms) nt = nt == 2 && m > 1 ? 3 : 4;
    return nt;
}

// SQ_CUDA_GEMV_CFG=N: every GEMV of at most 16 rows in configuration N (A/B of the heuristic below).
static int gemv_cfg_override() {
    static const int n = env_int("SQ_CUDA_GEMV_CFG", -1, -1, W4G_GEMV_CFGS - 1);
    return n;
}

// U = 2; double-buffered (cfg 3, v5) when a warp has ≥ 4 iterations (k ≥ 8192: down at 14336
// went 16.1 → 13.8 µs back to back, 61 → 71% of HBM; at k = 4096 (2 iterations) it was a
// little slower: 6.7 → 8.0 µs at qkv, docs/perf.md "Decode v4"); from gemv_stage_min_m() rows
// on aligned rows, the same with staged activations (cfg 4 / 5, v9).
//
// Staged (v9, H100 --stream, docs/perf.md "GEMV v9"), double-buffered too (cfg 5) unless its grid
// would leave SMs idle: cfg 5's NT (2, or 4 when 2 takes more than one wave of 2 blocks per SM) gave
// o 4096 × 4096 5.2–5.5 µs at m = 4..16 against cfg 4's 6.0–6.3, gate|up 23.0–23.7 against 22.6–25.9,
// but q|k|v 6144 × 4096 at NT = 4 (192 blocks for 264 slots) 7.2–7.4 against 6.8–7.2.
void w4a4_gemv(const W4GemmArgs& a, cudaStream_t s) {
    if (gemv_cfg_override() >= 0 && a.m <= 16) return w4a4_gemv_cfg(a, s, gemv_cfg_override());
    const bool db = a.m <= 16 && (a.k + TB_K - 1) / TB_K >= 4 * V_WARPS * 2;
    if (!(a.m >= gemv_stage_min_m() && gemv_stage_ok(a))) return w4a4_gemv_cfg(a, s, db ? 3 : 0);
    const int64_t nb = w4g_n_pad(a.n) / W4G_NB, sms = device_sms();
    // cfg 5 "fills the SMs": one wave of at least one block per SM at NT 2 or 3, several waves at NT 4
    const int nt5 = gemv_db_nt(nb, a.m, sms);
    const int64_t b5 = (nb + nt5 - 1) / nt5;
    const bool full = nt5 < 4 ? b5 >= sms : b5 > 2 * sms;
    // One row: cfg 5 even where it leaves SMs idle (q|k|v, o of LLaMA-3-8B; --stream had cfg 0 ahead,
    // 6.5 µs against 6.8 at q|k|v, but inside the decode graph, with the L2 prefetch and PDL, B=1 took
    // 379.3 / 378.7 tok/s with cfg 5 forced against 375.3 / 375.9, docs/perf.md "Session 13").
    w4a4_gemv_cfg(a, s, db || full || a.m == 1 ? 5 : 4);
}

bool w4a4_gemv_fits(int m, int k, const uint8_t* q) {
    return m <= 16 || (m <= W4G_GEMV_MAX_M && k % 4 == 0 && ((uintptr_t)q & 3) == 0);
}

void w4a4_gemv_cfg(const W4GemmArgs& a, cudaStream_t s, int cfg) {
    check_args(a, "w4a4_gemv");
    SQ_CHECK(a.m <= W4G_GEMV_MAX_M, "w4a4_gemv: m = ", a.m, " > ", W4G_GEMV_MAX_M, " (use w4a4_gemm_tiled)");
    SQ_CHECK(w4a4_gemv_fits(a.m, a.k, a.q), "w4a4_gemv: m = ", a.m,
             " > 16 needs k % 4 == 0 and 4-byte aligned activations (k = ", a.k, ")");
    SQ_CHECK(cfg >= 0 && cfg < W4G_GEMV_CFGS, "w4a4_gemv: no configuration ", cfg);
    if (a.m == 0 || a.n == 0 || (!a.acc && !a.y)) return;
    // Staged configurations on rows they cannot copy by 16 bytes: their unstaged twins (same results).
    if (cfg >= 4 && !gemv_stage_ok(a)) cfg = cfg == 4 ? 0 : 3;
    const int sms = device_sms();
    const int64_t nb = w4g_n_pad(a.n) / W4G_NB;
    if (a.m > 16) {  // 17..64 rows (v4): U = 1, MT = 2 or 4 m16 tiles, NT = 2 (2 blocks of 8 warps per SM)
        const bool st = cfg >= 4;
        if (a.m <= 32) st ? launch_gemv<2, 1, 2, false, true>(a, s) : launch_gemv<2, 1, 2>(a, s);
        else st ? launch_gemv<2, 1, 4, false, true>(a, s) : launch_gemv<2, 1, 4>(a, s);
        return;
    }
    if (cfg == 3 || cfg == 5) {  // v5: double-buffered, 2 blocks per SM (gemv_db_nt)
        int nt = gemv_db_nt(nb, a.m, sms);
        if (gemv_nt_override()) nt = std::max(2, gemv_nt_override());
        if (cfg == 5) {
            if (nt == 2) launch_gemv<2, 2, 1, true, true>(a, s);
            else if (nt == 3) launch_gemv<3, 2, 1, true, true>(a, s);
            else launch_gemv<4, 2, 1, true, true>(a, s);
        } else {
            if (nt == 2) launch_gemv<2, 2, 1, true>(a, s);
            else if (nt == 3) launch_gemv<3, 2, 1, true>(a, s);
            else launch_gemv<4, 2, 1, true>(a, s);
        }
        return;
    }
    const int nt = gemv_nt(nb, a.m, sms);
    switch (cfg * 4 + nt) {
        case 0 * 4 + 1: launch_gemv<1, 2>(a, s); break;  // default: U = 2
        case 0 * 4 + 2: launch_gemv<2, 2>(a, s); break;
        case 0 * 4 + 4: launch_gemv<4, 2>(a, s); break;
        case 1 * 4 + 1: launch_gemv<1, 4>(a, s); break;  // U = 4
        case 1 * 4 + 2: launch_gemv<2, 4>(a, s); break;
        case 1 * 4 + 4: launch_gemv<4, 4>(a, s); break;
        case 2 * 4 + 1: launch_gemv<1, 8>(a, s); break;  // U = 8
        case 2 * 4 + 2: launch_gemv<2, 8>(a, s); break;
        case 2 * 4 + 4: launch_gemv<4, 4>(a, s); break;  // U = 8 spills at NT = 4
        case 4 * 4 + 1: launch_gemv<1, 2, 1, false, true>(a, s); break;  // v9: staged activations, U = 2
        case 4 * 4 + 2: launch_gemv<2, 2, 1, false, true>(a, s); break;
        case 4 * 4 + 4: launch_gemv<4, 2, 1, false, true>(a, s); break;
        default: fail("w4a4_gemv: no configuration ", cfg);
    }
}

void w4a4_gemm(const W4GemmArgs& a, cudaStream_t s) {
    if (w4a4_gemv_fits(a.m, a.k, a.q)) w4a4_gemv(a, s);
    else if (a.m >= W4G_WGMMA_MIN_M && w4a4_wgmma_fits(a.m, a.k, a.q)) w4a4_gemm_wgmma(a, s);
    else w4a4_gemm_tiled(a, s);
}

}  // namespace sq::cuda
