// Tensor-core causal GQA attention for prefill and scoring (issue 6, branch flash-s7):
// the semantics of attention() / attention_varlen() in attention.cu (rows = (token, head)
// token-major, positions pos0 + *pos_dev or varlen `positions`, fp32 or packed 4-bit cache),
// with Q·Kᵀ and P·V on mma.sync.m16n8k16 (fp16 inputs, fp32 accumulation) and an fp32
// online softmax. Build: cmake -DSPECQUANT_CUDA=ON (sm_90a); tests: tests/test_cuda_flash.cpp.
//
// Why: the FP32 CUDA-core kernel ran at ~7 TFLOP/s and was 153.6 of 192.8 ms of a
// 2048-token LLaMA-3-8B prefill (docs/perf.md); fp16 mma.sync peaks near 990 TFLOP/s dense.
//
// Tiling: a block = one KV head × kFRows = 64 rows (4 warps × 16 rows, one m16 tile per
// warp); the group's heads are neighbouring rows, so they share every K/V tile. Keys stream
// through shared memory kFKeys = 64 at a time, converted to fp16 by the loader: K as rows
// [key][hd + 8] (the B operand of Q·Kᵀ, "col" layout = K's rows), V transposed [d][64 + 8]
// (the B operand of P·V), B fragments by ldmatrix.x4 (two n8 tiles per instruction; 32-bit
// loads per fragment were 4× the shared-memory instructions); the +8 halves (16 B) make each
// 8-row phase of ldmatrix hit 32 different banks (row stride ≡ 4 words mod 32). Q's fragments
// are read once from global memory into registers (hd/16 × 4 words), S = Q·Kᵀ stays in
// registers and becomes P's A fragments directly (C layout of two n8 tiles = A layout of
// one k16 step), so no shared-memory round trip for S or P. Registers: O hd/8 × 4 floats.
// Shared memory: (64·(hd+8) + hd·72)·2 + 4·64·4 B = 37 KB at hd = 128, 19 KB at hd = 64.
// Tiles fully masked for a warp's 16 rows are skipped; only tiles that cross a row's causal
// (or sequence) limit are masked element by element. Packed cache: the next tile's codes are
// prefetched into registers during this tile's mma work (PackedRegs).
//
// Rounding (fp32 cache, kv_bits 16 or 5..8): Q, K, V and P are rounded to fp16 (unit
// roundoff u = 2⁻¹¹); S's error is ≤ scale·2u·Σ_d|q_d·k_d|, the output's ≤ (e^{2·ΔS} − 1 +
// 2u)·max|v| (derivation and the checked bound in tests/test_cuda_flash.cpp).
// Packed KV4 cache, two modes (FlashKv4):
//  - values (default): each element unpacked to the float the fp32 cache holds (kv_unpack's
//    rounded operations), then rounded to fp16: the same bits as over the fp32 cache, so the
//    packed cache stays invisible to every reader (CudaModel.PackedKvDecodeIsBitIdentical).
//  - codes: codes 0..15 are exact in fp16, so K and V are never rounded:
//      S_j   = s_j·(Q·c_j − z_j·ΣQ) (+ Q·k_shift, the same for every key of a row: dropped)
//      out_d = (Σ_j (p_j·s'_j)·c'_jd − Σ_j p_j·s'_j·z'_j) / Σ_j p_j    (s', z', c': V's)
//    with Q and p·s' rounded to fp16 (ΣQ summed in fp32 from the rounded Q, so it matches
//    the mma's operand) and Σ p·s'·z' accumulated in fp32 from the same rounded p·s'.
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include <cuda_fp16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"

namespace sq::cuda {

namespace {

constexpr int kFWarps = 4, kFRows = 16 * kFWarps, kFKeys = 64;
constexpr int kVtLd = kFKeys + 8;  // halves per row of V transposed
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t pack_h2(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);  // a in the low half: the lower column / k index
    uint32_t r;
    memcpy(&r, &h, 4);
    return r;
}

__device__ __forceinline__ float2 unpack_h2(uint32_t w) {
    __half2 h;
    memcpy(&h, &w, 4);
    return __half22float2(h);
}

// D += A·B, m16n8k16, fp16 inputs, fp32 accumulators (PTX ISA "mma.m16n8k16" fragments:
// A a0..a3 = (g, 2t..), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..); B b0, b1 = (k 2t.., n g),
// (k 2t+8.., n g); C c0..c3 = (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1); g = lane/4, t = lane%4).
__device__ __forceinline__ void mma16816(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Four 8×8 fp16 matrices from shared memory: lane i gives the address of row i % 8 of matrix
// i / 8; register r of lane l holds row l / 4, elements 2·(l % 4), +1 of matrix r — for rows
// = keys (K) or dims (Vᵀ) exactly the B fragment (b0 | b1) of mma.m16n8k16 for two n8 tiles.
__device__ __forceinline__ void ldsm_x4(const __half* p, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(a));
}

template <int HD>
constexpr size_t flash_smem() {
    return (size_t)(kFKeys * (HD + 8) + HD * kVtLd) * 2 + 4 * kFKeys * sizeof(float);
}

// fp32 cache: keys [k0, k0 + 64) of KV head g rounded to fp16 into sK (rows) and sVt
// (transposed); keys at or past kend as zeros (masked, but 0·garbage could be NaN).
// Item = (key pair 2·jp, 2·jp+1, 8 dims): lanes take consecutive pairs, so a warp's
// transposed V stores are half2 words at 32 consecutive words (conflict-free; one 16-bit
// store per key and dim was twice the stores); the 16-byte K stores of 8 lanes (rows 2·jp:
// stride 136 words ≡ 8 mod 32) are 2-way conflicted, 2 per item against 8 V stores.
template <int HD>
__device__ __forceinline__ void load_tile(const float* __restrict__ kc, const float* __restrict__ vc, int k0,
                                          int kend, int kv_heads, int g, __half* __restrict__ sK,
                                          __half* __restrict__ sVt) {
    constexpr int kChunks = HD / 8, kItems = kFKeys / 2 * kChunks;
    for (int it = threadIdx.x; it < kItems; it += kFWarps * 32) {
        const int j0 = 2 * (it % (kFKeys / 2)), c8 = it / (kFKeys / 2);
        float kf[2][8], vf[2][8];
#pragma unroll
        for (int p = 0; p < 2; ++p) {
            const int key = k0 + j0 + p;
            if (key < kend) {
                const int64_t vec = (int64_t)key * kv_heads + g;
                const float4* kp4 = reinterpret_cast<const float4*>(kc + vec * HD + c8 * 8);
                const float4* vp4 = reinterpret_cast<const float4*>(vc + vec * HD + c8 * 8);
                const float4 ka = kp4[0], kb = kp4[1], va = vp4[0], vb = vp4[1];
                kf[p][0] = ka.x, kf[p][1] = ka.y, kf[p][2] = ka.z, kf[p][3] = ka.w;
                kf[p][4] = kb.x, kf[p][5] = kb.y, kf[p][6] = kb.z, kf[p][7] = kb.w;
                vf[p][0] = va.x, vf[p][1] = va.y, vf[p][2] = va.z, vf[p][3] = va.w;
                vf[p][4] = vb.x, vf[p][5] = vb.y, vf[p][6] = vb.z, vf[p][7] = vb.w;
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) kf[p][e] = 0.0f, vf[p][e] = 0.0f;
            }
            uint4 kq;
            kq.x = pack_h2(kf[p][0], kf[p][1]), kq.y = pack_h2(kf[p][2], kf[p][3]);
            kq.z = pack_h2(kf[p][4], kf[p][5]), kq.w = pack_h2(kf[p][6], kf[p][7]);
            *reinterpret_cast<uint4*>(sK + (j0 + p) * (HD + 8) + c8 * 8) = kq;
        }
#pragma unroll
        for (int e = 0; e < 8; ++e)
            *reinterpret_cast<uint32_t*>(sVt + (c8 * 8 + e) * kVtLd + j0) = pack_h2(vf[0][e], vf[1][e]);
    }
}

// Packed cache, prefetched: the next tile's codes and (scale, zero) are loaded into registers
// before this tile's mma work and converted into shared memory after it, so their global
// latency hides behind the tensor-core work (the fp32 cache's tile, 64 KB at hd = 128, would
// need 64 more registers per thread: loaded in place by load_tile). Items as load_tile's.
template <int HD>
struct PackedRegs {
    static constexpr int kIt = kFKeys / 2 * (HD / 8) / (kFWarps * 32);  // 4 at hd 128, 2 at hd 64
    uint32_t k[kIt][2], v[kIt][2];
    float2 kp, vp;
};

template <int HD>
__device__ __forceinline__ void fetch_packed(const KvPacked& pk, int k0, int kend, int kv_heads, int g,
                                             PackedRegs<HD>& r) {
#pragma unroll
    for (int i = 0; i < PackedRegs<HD>::kIt; ++i) {
        const int it = threadIdx.x + i * kFWarps * 32, j0 = 2 * (it % (kFKeys / 2)), c8 = it / (kFKeys / 2);
#pragma unroll
        for (int p = 0; p < 2; ++p) {
            const int key = k0 + j0 + p;
            r.k[i][p] = r.v[i][p] = 0u;  // keys at or past kend: codes 0 (masked; finite)
            if (key < kend) {
                const int64_t vec = (int64_t)key * kv_heads + g;
                r.k[i][p] = reinterpret_cast<const uint32_t*>(pk.k + vec * (HD / 2))[c8];
                r.v[i][p] = reinterpret_cast<const uint32_t*>(pk.v + vec * (HD / 2))[c8];
            }
        }
    }
    r.kp = r.vp = make_float2(0.0f, 0.0f);
    const int key = k0 + (int)threadIdx.x;
    if (threadIdx.x < kFKeys && key < kend) {
        const int64_t vec = (int64_t)key * kv_heads + g;
        r.kp = pk.kp[vec], r.vp = pk.vp[vec];
    }
}

// Modes of the kernel: the fp32 cache; the packed cache unpacked to the very floats the fp32
// cache holds (kv_unpack's two rounded operations), then rounded to fp16 like the fp32 cache's
// values, so both caches give the same bits (CudaModel.PackedKvDecodeIsBitIdentical); the
// packed cache as exact codes (only Q and p·s rounded; FlashKv4::codes).
enum Mode { kF32 = 0, kKv4Values = 1, kKv4Codes = 2 };

// (scale, zero) of the prefetched tile into sP: ks, kz, vs, vz [64] each (before the codes:
// the values mode reads them there).
template <int HD>
__device__ __forceinline__ void store_params(const PackedRegs<HD>& r, float* __restrict__ sP) {
    if (threadIdx.x < kFKeys) {
        const int j = threadIdx.x;
        sP[j] = r.kp.x, sP[kFKeys + j] = r.kp.y, sP[2 * kFKeys + j] = r.vp.x, sP[3 * kFKeys + j] = r.vp.y;
    }
}

template <int HD, int MODE>
__device__ __forceinline__ void store_packed(const PackedRegs<HD>& r, const float* __restrict__ sh,
                                             __half* __restrict__ sK, __half* __restrict__ sVt,
                                             const float* __restrict__ sP) {
#pragma unroll
    for (int i = 0; i < PackedRegs<HD>::kIt; ++i) {
        const int it = threadIdx.x + i * kFWarps * 32, j0 = 2 * (it % (kFKeys / 2)), c8 = it / (kFKeys / 2);
        float kf[2][8], vf[2][8];
#pragma unroll
        for (int p = 0; p < 2; ++p) {
            const float ks = sP[j0 + p], kz = sP[kFKeys + j0 + p], vs = sP[2 * kFKeys + j0 + p],
                        vz = sP[3 * kFKeys + j0 + p];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const int ck = (int)((r.k[i][p] >> (4 * e)) & 15u), cv = (int)((r.v[i][p] >> (4 * e)) & 15u);
                if constexpr (MODE == kKv4Codes) {
                    kf[p][e] = (float)ck, vf[p][e] = (float)cv;
                } else {  // kv_unpack (attention.cu): (code − zero)·scale (+ k_shift), each rounded
                    const float kr = __fmul_rn((float)(ck - (int)kz), ks);
                    kf[p][e] = sh ? __fadd_rn(kr, sh[c8 * 8 + e]) : kr;
                    vf[p][e] = __fmul_rn((float)(cv - (int)vz), vs);
                }
            }
            uint4 kq;
            kq.x = pack_h2(kf[p][0], kf[p][1]), kq.y = pack_h2(kf[p][2], kf[p][3]);
            kq.z = pack_h2(kf[p][4], kf[p][5]), kq.w = pack_h2(kf[p][6], kf[p][7]);
            *reinterpret_cast<uint4*>(sK + (j0 + p) * (HD + 8) + c8 * 8) = kq;
        }
#pragma unroll
        for (int e = 0; e < 8; ++e)
            *reinterpret_cast<uint32_t*>(sVt + (c8 * 8 + e) * kVtLd + j0) = pack_h2(vf[0][e], vf[1][e]);
    }
}

template <int HD, int MODE>
__global__ void __launch_bounds__(kFWarps * 32) attention_flash_kernel(
    const float* __restrict__ q, const float* __restrict__ kc, const float* __restrict__ vc, int n, int pos0,
    const int* __restrict__ pos_dev, const int* __restrict__ positions, const int* __restrict__ blocks,
    int heads, int kv_heads, float sl2, float* __restrict__ out, KvPacked pk, bool prefetch) {
    constexpr bool PACKED = MODE != kF32, CODES = MODE == kKv4Codes;
    extern __shared__ __align__(16) unsigned char fsm[];
    __half* sK = reinterpret_cast<__half*>(fsm);      // [64][HD + 8]
    __half* sVt = sK + kFKeys * (HD + 8);              // [HD][72]
    float* sP = reinterpret_cast<float*>(sVt + HD * kVtLd);  // packed: kscl, kz, vs, vz [64] each
    const int group = heads / kv_heads, g = blockIdx.y;
    // Heaviest (latest) row blocks first: causal work grows with the row index.
    const int bx = gridDim.x - 1 - blockIdx.x;
    const int row0 = blocks ? blocks[2 * bx] : bx * kFRows;
    const int total_rows = blocks ? blocks[2 * bx + 1] : n * group;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, t4 = lane & 3;
    if (pos_dev) pos0 += *pos_dev;
    // Keys of token t: [lo(t), lim(t)), both non-decreasing in t (see attention.cu).
    auto lim_of = [&](int t) { return pos0 + t + 1; };
    auto lo_of = [&](int t) { return positions ? pos0 + t - positions[t] : 0; };
    const int last_row = min(row0 + kFRows, total_rows) - 1;
    const int kstart = lo_of(row0 / group), kend = lim_of(last_row / group);

    // This warp's rows; rows past the end take the last valid row's data (finite, not written).
    const int wr0 = row0 + warp * 16;
    const bool active = wr0 <= last_row;
    const int wlast = min(wr0 + 15, last_row);
    const int ra = min(wr0 + gq, last_row), rb = min(wr0 + gq + 8, last_row);
    const int ta = ra / group, tb = rb / group;
    const int ha = g * group + (ra - ta * group), hb = g * group + (rb - tb * group);
    const int lo_a = lo_of(ta), lim_a = lim_of(ta), lo_b = lo_of(tb), lim_b = lim_of(tb);
    const int w_lo = active ? lo_of(wr0 / group) : 0, w_lo_max = active ? lo_of(wlast / group) : 0;
    const int w_lim = active ? lim_of(wlast / group) : 0, w_lim_min = active ? lim_of(wr0 / group) : 0;

    // Q's A fragments (fp16), and ΣQ of the rounded values per row (packed).
    uint32_t qf[HD / 16][4];
    float qs_a = 0.0f, qs_b = 0.0f;
    {
        const float* qa = q + ((size_t)ta * heads + ha) * HD;
        const float* qb = q + ((size_t)tb * heads + hb) * HD;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ++ks) {
            const int d = ks * 16 + 2 * t4;
            const float2 x0 = *reinterpret_cast<const float2*>(qa + d), x1 = *reinterpret_cast<const float2*>(qb + d);
            const float2 x2 = *reinterpret_cast<const float2*>(qa + d + 8),
                         x3 = *reinterpret_cast<const float2*>(qb + d + 8);
            qf[ks][0] = pack_h2(x0.x, x0.y), qf[ks][1] = pack_h2(x1.x, x1.y);
            qf[ks][2] = pack_h2(x2.x, x2.y), qf[ks][3] = pack_h2(x3.x, x3.y);
            if constexpr (CODES) {
                const float2 y0 = unpack_h2(qf[ks][0]), y1 = unpack_h2(qf[ks][1]), y2 = unpack_h2(qf[ks][2]),
                             y3 = unpack_h2(qf[ks][3]);
                qs_a += (y0.x + y0.y) + (y2.x + y2.y);
                qs_b += (y1.x + y1.y) + (y3.x + y3.y);
            }
        }
        if constexpr (CODES) {
            qs_a += __shfl_xor_sync(0xffffffffu, qs_a, 1), qs_a += __shfl_xor_sync(0xffffffffu, qs_a, 2);
            qs_b += __shfl_xor_sync(0xffffffffu, qs_b, 1), qs_b += __shfl_xor_sync(0xffffffffu, qs_b, 2);
        }
    }

    float o[HD / 8][4];
#pragma unroll
    for (int nb = 0; nb < HD / 8; ++nb) o[nb][0] = o[nb][1] = o[nb][2] = o[nb][3] = 0.0f;
    // Running max (log2 units; finite start so that a fully masked tile gives p = 0, corr = 1),
    // per-thread partial sums l (and Σ p·s'·z' when packed) over this thread's columns.
    float m_a = -1e30f, m_b = -1e30f, l_a = 0.0f, l_b = 0.0f, z_a = 0.0f, z_b = 0.0f;

    PackedRegs<HD> pre;
    const float* sh = pk.k_shift && MODE == kKv4Values ? pk.k_shift + (size_t)g * HD : nullptr;
    if constexpr (PACKED) {
        if (prefetch) fetch_packed<HD>(pk, kstart, kend, kv_heads, g, pre);
    }
    for (int k0 = kstart; k0 < kend; k0 += kFKeys) {
        __syncthreads();  // the previous tile is consumed
        if constexpr (PACKED) {
            if (!prefetch) fetch_packed<HD>(pk, k0, kend, kv_heads, g, pre);  // A/B: load, then store
            store_params<HD>(pre, sP);
            __syncthreads();  // sP read by every item below
            store_packed<HD, MODE>(pre, sh, sK, sVt, sP);
            if (prefetch && k0 + kFKeys < kend) fetch_packed<HD>(pk, k0 + kFKeys, kend, kv_heads, g, pre);  // in flight below
        } else {
            load_tile<HD>(kc, vc, k0, kend, kv_heads, g, sK, sVt);
        }
        __syncthreads();
        if (!active || k0 >= w_lim || k0 + kFKeys <= w_lo) continue;  // warp-uniform
        float s[kFKeys / 8][4];
#pragma unroll
        for (int nb = 0; nb < kFKeys / 8; ++nb) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.0f;
        // ldmatrix.x4 address of this lane: row lane % 8 of n-tile (lane / 16), k half (lane / 8) % 2.
        const int lrow = (lane & 7) + ((lane >> 4) << 3), lcol = ((lane >> 3) & 1) * 8;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ++ks) {
#pragma unroll
            for (int nb = 0; nb < kFKeys / 8; nb += 2) {
                uint32_t b0, b1, b2, b3;
                ldsm_x4(sK + (nb * 8 + lrow) * (HD + 8) + ks * 16 + lcol, b0, b1, b2, b3);
                mma16816(s[nb], qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3], b0, b1);
                mma16816(s[nb + 1], qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3], b2, b3);
            }
        }
        // Scores in log2 units; masked keys −inf.
        const bool full = k0 >= w_lo_max && k0 + kFKeys <= w_lim_min;
        float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < kFKeys / 8; ++nb) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int c = nb * 8 + 2 * t4 + e, key = k0 + c;
                float xa, xb;
                if constexpr (CODES) {
                    const float ksc = sP[c] * sl2, kz = sP[kFKeys + c];
                    xa = fmaf(-kz, qs_a, s[nb][e]) * ksc;
                    xb = fmaf(-kz, qs_b, s[nb][2 + e]) * ksc;
                } else {
                    xa = s[nb][e] * sl2;
                    xb = s[nb][2 + e] * sl2;
                }
                if (!full) {
                    if (key < lo_a || key >= lim_a) xa = -INFINITY;
                    if (key < lo_b || key >= lim_b) xb = -INFINITY;
                }
                s[nb][e] = xa, s[nb][2 + e] = xb;
                mx_a = fmaxf(mx_a, xa), mx_b = fmaxf(mx_b, xb);
            }
        }
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
        const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
        const float corr_a = exp2f(m_a - mn_a), corr_b = exp2f(m_b - mn_b);
        m_a = mn_a, m_b = mn_b;
        l_a *= corr_a, l_b *= corr_b, z_a *= corr_a, z_b *= corr_b;
#pragma unroll
        for (int nb = 0; nb < HD / 8; ++nb) o[nb][0] *= corr_a, o[nb][1] *= corr_a, o[nb][2] *= corr_b, o[nb][3] *= corr_b;
        // P (fp16 A fragments: n-tiles 2kk, 2kk+1 of S form k-step kk), then O += P·V.
        uint32_t pf[kFKeys / 16][4];
#pragma unroll
        for (int nb = 0; nb < kFKeys / 8; ++nb) {
            float pa[2], pb[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                pa[e] = exp2f(s[nb][e] - mn_a), pb[e] = exp2f(s[nb][2 + e] - mn_b);
                l_a += pa[e], l_b += pb[e];
                if constexpr (CODES) {
                    const int c = nb * 8 + 2 * t4 + e;
                    pa[e] *= sP[2 * kFKeys + c], pb[e] *= sP[2 * kFKeys + c];
                }
            }
            const uint32_t wa = pack_h2(pa[0], pa[1]), wb = pack_h2(pb[0], pb[1]);
            if constexpr (CODES) {  // Σ (rounded p·s')·z', as the mma sees p·s'
                const int c = nb * 8 + 2 * t4;
                const float2 ra2 = unpack_h2(wa), rb2 = unpack_h2(wb);
                const float vz0 = sP[3 * kFKeys + c], vz1 = sP[3 * kFKeys + c + 1];
                z_a = fmaf(ra2.x, vz0, fmaf(ra2.y, vz1, z_a));
                z_b = fmaf(rb2.x, vz0, fmaf(rb2.y, vz1, z_b));
            }
            pf[nb >> 1][(nb & 1) ? 2 : 0] = wa;
            pf[nb >> 1][(nb & 1) ? 3 : 1] = wb;
        }
#pragma unroll
        for (int kk = 0; kk < kFKeys / 16; ++kk) {
#pragma unroll
            for (int nb = 0; nb < HD / 8; nb += 2) {
                uint32_t b0, b1, b2, b3;
                ldsm_x4(sVt + (nb * 8 + lrow) * kVtLd + kk * 16 + lcol, b0, b1, b2, b3);
                mma16816(o[nb], pf[kk][0], pf[kk][1], pf[kk][2], pf[kk][3], b0, b1);
                mma16816(o[nb + 1], pf[kk][0], pf[kk][1], pf[kk][2], pf[kk][3], b2, b3);
            }
        }
    }
    if (!active) return;
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 1), l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 1), l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
    if constexpr (CODES) {
        z_a += __shfl_xor_sync(0xffffffffu, z_a, 1), z_a += __shfl_xor_sync(0xffffffffu, z_a, 2);
        z_b += __shfl_xor_sync(0xffffffffu, z_b, 1), z_b += __shfl_xor_sync(0xffffffffu, z_b, 2);
    }
    const float inv_a = 1.0f / l_a, inv_b = 1.0f / l_b;
    const bool wa = wr0 + gq <= last_row, wb = wr0 + gq + 8 <= last_row;
    float* oa = out + ((size_t)ta * heads + ha) * HD + 2 * t4;
    float* ob = out + ((size_t)tb * heads + hb) * HD + 2 * t4;
#pragma unroll
    for (int nb = 0; nb < HD / 8; ++nb) {
        if (wa) *reinterpret_cast<float2*>(oa + nb * 8) = make_float2((o[nb][0] - z_a) * inv_a, (o[nb][1] - z_a) * inv_a);
        if (wb) *reinterpret_cast<float2*>(ob + nb * 8) = make_float2((o[nb][2] - z_b) * inv_b, (o[nb][3] - z_b) * inv_b);
    }
}

// SQ_CUDA_FLASH_PREFETCH=0 (read once): the packed tiles loaded and stored in turn, no overlap
// (A/B of the prefetch, docs/perf.md "Flash attention (branch flash-s7)").
bool flash_prefetch() {
    static const bool on = [] {
        const char* e = std::getenv("SQ_CUDA_FLASH_PREFETCH");
        if (!e || !*e) return true;
        const std::string v = e;
        SQ_CHECK(v == "0" || v == "1", "SQ_CUDA_FLASH_PREFETCH must be 0 or 1, got '", v, "'");
        return v == "1";
    }();
    return on;
}

// SQ_CUDA_FLASH_KV4 (read once): values (default: the packed cache read as the fp32 cache's
// floats, the same bits as with the fp32 cache) or codes (exact codes, fewer roundings).
FlashKv4 flash_kv4_env() {
    static const FlashKv4 m = [] {
        const char* e = std::getenv("SQ_CUDA_FLASH_KV4");
        if (!e || !*e) return FlashKv4::values;
        const std::string v = e;
        SQ_CHECK(v == "values" || v == "codes", "SQ_CUDA_FLASH_KV4 must be values or codes, got '", v, "'");
        return v == "codes" ? FlashKv4::codes : FlashKv4::values;
    }();
    return m;
}

template <int HD, int MODE>
void launch_flash(const float* q, const float* kc, const float* vc, int n, int pos0, const int* pos_dev,
                  const int* positions, const int* blocks, int n_blocks, int heads, int kv_heads, float* out,
                  cudaStream_t s, const KvPacked& pk) {
    constexpr size_t smem = flash_smem<HD>();
    static_assert(smem <= 48 * 1024, "flash attention: shared memory above the default 48 KB");
    const int group = heads / kv_heads;
    const dim3 grid((unsigned)(blocks ? n_blocks : (n * group + kFRows - 1) / kFRows), (unsigned)kv_heads);
    const float sl2 = kLog2e / std::sqrt((float)HD);
    attention_flash_kernel<HD, MODE><<<grid, kFWarps * 32, smem, s>>>(q, kc, vc, n, pos0, pos_dev, positions, blocks,
                                                                     heads, kv_heads, sl2, out, pk, flash_prefetch());
    SQ_CUDA_LAUNCH("attention_flash");
}

void flash_dispatch(const float* q, const float* kc, const float* vc, int n, int pos0, const int* pos_dev,
                    const int* positions, const int* blocks, int n_blocks, int heads, int kv_heads, int hd, float* out,
                    cudaStream_t s, const KvPacked& pk, FlashKv4 kv4) {
    if (n <= 0) return;
    SQ_CHECK(pk || (kc && vc), "CUDA attention_flash: no KV cache (fp32 or packed)");
    SQ_CHECK(kv_heads > 0 && heads % kv_heads == 0, "CUDA attention_flash: ", heads, " heads not a multiple of ",
             kv_heads, " KV heads");
    SQ_CHECK(attention_flash_supported(hd), "CUDA attention_flash: head_dim ", hd, " unsupported (64 or 128)");
    if (kv4 == FlashKv4::env) kv4 = flash_kv4_env();
    const int mode = !pk ? kF32 : kv4 == FlashKv4::codes ? kKv4Codes : kKv4Values;
    auto go = [&](auto fn) { fn(q, kc, vc, n, pos0, pos_dev, positions, blocks, n_blocks, heads, kv_heads, out, s, pk); };
    if (hd == 64) {
        mode == kF32 ? go(launch_flash<64, kF32>)
                     : mode == kKv4Codes ? go(launch_flash<64, kKv4Codes>) : go(launch_flash<64, kKv4Values>);
    } else {
        mode == kF32 ? go(launch_flash<128, kF32>)
                     : mode == kKv4Codes ? go(launch_flash<128, kKv4Codes>) : go(launch_flash<128, kKv4Values>);
    }
}

}  // namespace

bool attention_flash_supported(int hd) { return hd == 64 || hd == 128; }

void attention_flash(const float* q, const float* kc, const float* vc, int n, int pos0, const int* pos_dev, int heads,
                     int kv_heads, int hd, float* out, cudaStream_t s, const KvPacked& pk, FlashKv4 kv4) {
    if (!attention_flash_supported(hd)) {  // other head sizes: the FP32 kernel (same semantics)
        attention(q, kc, vc, n, pos0, pos_dev, heads, kv_heads, hd, out, s, pk);
        return;
    }
    flash_dispatch(q, kc, vc, n, pos0, pos_dev, nullptr, nullptr, 0, heads, kv_heads, hd, out, s, pk, kv4);
}

std::vector<int> attention_flash_blocks(const std::vector<int>& seq_lens, int group) {
    SQ_CHECK(group > 0, "attention_flash_blocks: group ", group);
    std::vector<int> b;
    int row = 0;
    for (int len : seq_lens) {
        SQ_CHECK(len > 0, "attention_flash_blocks: empty sequence");
        const int end = row + len * group;
        for (; row < end; row += kFRows) b.push_back(row), b.push_back(std::min(row + kFRows, end));
        row = end;
    }
    return b;
}

void attention_flash_varlen(const float* q, const float* kc, const float* vc, int n, const int* positions, int heads,
                            int kv_heads, int hd, float* out, cudaStream_t s, const int* blocks, int n_blocks,
                            const KvPacked& pk, FlashKv4 kv4) {
    SQ_CHECK(positions, "CUDA attention_flash_varlen: no positions");
    SQ_CHECK(!blocks || n_blocks > 0, "CUDA attention_flash_varlen: empty block table");
    if (!attention_flash_supported(hd)) {
        // The FP32 kernel's table has 16-row blocks, this one 64: run it without (correct rows,
        // only not bit for bit per sequence; the model passes its 16-row table there instead).
        attention_varlen(q, kc, vc, n, positions, heads, kv_heads, hd, out, s, nullptr, 0, pk);
        return;
    }
    flash_dispatch(q, kc, vc, n, 0, nullptr, positions, blocks, n_blocks, heads, kv_heads, hd, out, s, pk, kv4);
}

}  // namespace sq::cuda
