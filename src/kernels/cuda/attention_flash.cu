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
// (the B operand of P·V); the +8 halves (16 B) make the 32-bit fragment reads of a warp hit
// 32 different banks (row stride ≡ 4 words mod 32: bank 4·groupID + tid4). Q's fragments
// are read once from global memory into registers (hd/16 × 4 words), S = Q·Kᵀ stays in
// registers and becomes P's A fragments directly (C layout of two n8 tiles = A layout of
// one k16 step), so no shared-memory round trip for S or P. Registers: O hd/8 × 4 floats.
// Shared memory: (64·(hd+8) + hd·72)·2 + 4·64·4 B = 37 KB at hd = 128, 19 KB at hd = 64.
// Tiles fully masked for a warp's 16 rows are skipped; only tiles that cross a row's causal
// (or sequence) limit are masked element by element.
//
// Rounding (fp32 cache, kv_bits 16 or 5..8): Q, K, V and P are rounded to fp16 (unit
// roundoff u = 2⁻¹¹); S's error is ≤ scale·2u·Σ_d|q_d·k_d|, the output's ≤ (e^{2·ΔS} − 1 +
// 2u)·max|v| (derivation and the checked bound in tests/test_cuda_flash.cpp).
// Packed KV4 cache: codes 0..15 are exact in fp16, so the kernel never rounds K or V:
//   S_j   = s_j·(Q·c_j − z_j·ΣQ) (+ Q·k_shift, the same for every key of a row: softmax drops it)
//   out_d = (Σ_j (p_j·s'_j)·c'_jd − Σ_j p_j·s'_j·z'_j) / Σ_j p_j    (s', z', c': V's)
// with Q and p·s' rounded to fp16 (ΣQ summed in fp32 from the rounded Q, so it matches
// the mma's operand) and Σ p·s'·z' accumulated in fp32 from the same rounded p·s'.
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

template <int HD>
constexpr size_t flash_smem() {
    return (size_t)(kFKeys * (HD + 8) + HD * kVtLd) * 2 + 4 * kFKeys * sizeof(float);
}

// Keys [k0, k0 + 64) of KV head g into sK (fp16 rows) and sVt (fp16, transposed); keys at
// or past kend as zeros (masked, but 0·garbage could be NaN). Item = (key j, 8 dims): lanes
// take consecutive keys, so the transposed V stores of a warp fill 16 consecutive words and
// the 16-byte K stores of 8 lanes hit 32 different banks (row stride 4 words mod 32).
// Packed: the codes themselves (exact in fp16) and per key kscl = s_k·scale·log2e, kz = z_k,
// vs = s_v, vz = z_v; fp32 cache: the values rounded to fp16.
template <int HD, bool PACKED>
__device__ __forceinline__ void load_tile(const float* __restrict__ kc, const float* __restrict__ vc,
                                          const KvPacked& pk, int k0, int kend, int kv_heads, int g, float sl2,
                                          __half* __restrict__ sK, __half* __restrict__ sVt, float* __restrict__ sP) {
    constexpr int kChunks = HD / 8, kItems = kFKeys * kChunks;
    for (int it = threadIdx.x; it < kItems; it += kFWarps * 32) {
        const int j = it % kFKeys, c8 = it / kFKeys, key = k0 + j;
        float kf[8], vf[8];
        if (key < kend) {
            const int64_t vec = (int64_t)key * kv_heads + g;
            if constexpr (PACKED) {
                const uint32_t kw = reinterpret_cast<const uint32_t*>(pk.k + vec * (HD / 2))[c8];
                const uint32_t vw = reinterpret_cast<const uint32_t*>(pk.v + vec * (HD / 2))[c8];
#pragma unroll
                for (int e = 0; e < 8; ++e) kf[e] = (float)((kw >> (4 * e)) & 15u), vf[e] = (float)((vw >> (4 * e)) & 15u);
            } else {
                const float4* kp4 = reinterpret_cast<const float4*>(kc + vec * HD + c8 * 8);
                const float4* vp4 = reinterpret_cast<const float4*>(vc + vec * HD + c8 * 8);
                const float4 ka = kp4[0], kb = kp4[1], va = vp4[0], vb = vp4[1];
                kf[0] = ka.x, kf[1] = ka.y, kf[2] = ka.z, kf[3] = ka.w, kf[4] = kb.x, kf[5] = kb.y, kf[6] = kb.z,
                kf[7] = kb.w;
                vf[0] = va.x, vf[1] = va.y, vf[2] = va.z, vf[3] = va.w, vf[4] = vb.x, vf[5] = vb.y, vf[6] = vb.z,
                vf[7] = vb.w;
            }
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) kf[e] = 0.0f, vf[e] = 0.0f;
        }
        uint4 kq;
        kq.x = pack_h2(kf[0], kf[1]), kq.y = pack_h2(kf[2], kf[3]), kq.z = pack_h2(kf[4], kf[5]),
        kq.w = pack_h2(kf[6], kf[7]);
        *reinterpret_cast<uint4*>(sK + j * (HD + 8) + c8 * 8) = kq;
#pragma unroll
        for (int e = 0; e < 8; ++e) sVt[(c8 * 8 + e) * kVtLd + j] = __float2half_rn(vf[e]);
    }
    if constexpr (PACKED) {
        for (int j = threadIdx.x; j < kFKeys; j += kFWarps * 32) {
            const int key = k0 + j;
            float2 kp = make_float2(0.0f, 0.0f), vp = kp;
            if (key < kend) {
                const int64_t vec = (int64_t)key * kv_heads + g;
                kp = pk.kp[vec], vp = pk.vp[vec];
            }
            sP[j] = kp.x * sl2, sP[kFKeys + j] = kp.y, sP[2 * kFKeys + j] = vp.x, sP[3 * kFKeys + j] = vp.y;
        }
    }
}

template <int HD, bool PACKED>
__global__ void __launch_bounds__(kFWarps * 32) attention_flash_kernel(
    const float* __restrict__ q, const float* __restrict__ kc, const float* __restrict__ vc, int n, int pos0,
    const int* __restrict__ pos_dev, const int* __restrict__ positions, const int* __restrict__ blocks,
    int heads, int kv_heads, float sl2, float* __restrict__ out, KvPacked pk) {
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
            if constexpr (PACKED) {
                const float2 y0 = unpack_h2(qf[ks][0]), y1 = unpack_h2(qf[ks][1]), y2 = unpack_h2(qf[ks][2]),
                             y3 = unpack_h2(qf[ks][3]);
                qs_a += (y0.x + y0.y) + (y2.x + y2.y);
                qs_b += (y1.x + y1.y) + (y3.x + y3.y);
            }
        }
        if constexpr (PACKED) {
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

    for (int k0 = kstart; k0 < kend; k0 += kFKeys) {
        __syncthreads();  // the previous tile is consumed
        load_tile<HD, PACKED>(kc, vc, pk, k0, kend, kv_heads, g, sl2, sK, sVt, sP);
        __syncthreads();
        if (!active || k0 >= w_lim || k0 + kFKeys <= w_lo) continue;  // warp-uniform
        float s[kFKeys / 8][4];
#pragma unroll
        for (int nb = 0; nb < kFKeys / 8; ++nb) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ++ks) {
#pragma unroll
            for (int nb = 0; nb < kFKeys / 8; ++nb) {
                const __half* kr = sK + (nb * 8 + gq) * (HD + 8) + ks * 16 + 2 * t4;
                const uint32_t b0 = *reinterpret_cast<const uint32_t*>(kr);
                const uint32_t b1 = *reinterpret_cast<const uint32_t*>(kr + 8);
                mma16816(s[nb], qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3], b0, b1);
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
                if constexpr (PACKED) {
                    const float ksc = sP[c], kz = sP[kFKeys + c];
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
                if constexpr (PACKED) {
                    const int c = nb * 8 + 2 * t4 + e;
                    pa[e] *= sP[2 * kFKeys + c], pb[e] *= sP[2 * kFKeys + c];
                }
            }
            const uint32_t wa = pack_h2(pa[0], pa[1]), wb = pack_h2(pb[0], pb[1]);
            if constexpr (PACKED) {  // Σ (rounded p·s')·z', as the mma sees p·s'
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
            for (int nb = 0; nb < HD / 8; ++nb) {
                const __half* vr = sVt + (nb * 8 + gq) * kVtLd + kk * 16 + 2 * t4;
                const uint32_t b0 = *reinterpret_cast<const uint32_t*>(vr);
                const uint32_t b1 = *reinterpret_cast<const uint32_t*>(vr + 8);
                mma16816(o[nb], pf[kk][0], pf[kk][1], pf[kk][2], pf[kk][3], b0, b1);
            }
        }
    }
    if (!active) return;
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 1), l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 1), l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
    if constexpr (PACKED) {
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

template <int HD, bool PACKED>
void launch_flash(const float* q, const float* kc, const float* vc, int n, int pos0, const int* pos_dev,
                  const int* positions, const int* blocks, int n_blocks, int heads, int kv_heads, float* out,
                  cudaStream_t s, const KvPacked& pk) {
    constexpr size_t smem = flash_smem<HD>();
    static_assert(smem <= 48 * 1024, "flash attention: shared memory above the default 48 KB");
    const int group = heads / kv_heads;
    const dim3 grid((unsigned)(blocks ? n_blocks : (n * group + kFRows - 1) / kFRows), (unsigned)kv_heads);
    const float sl2 = kLog2e / std::sqrt((float)HD);
    attention_flash_kernel<HD, PACKED><<<grid, kFWarps * 32, smem, s>>>(q, kc, vc, n, pos0, pos_dev, positions, blocks,
                                                                       heads, kv_heads, sl2, out, pk);
    SQ_CUDA_LAUNCH("attention_flash");
}

void flash_dispatch(const float* q, const float* kc, const float* vc, int n, int pos0, const int* pos_dev,
                    const int* positions, const int* blocks, int n_blocks, int heads, int kv_heads, int hd, float* out,
                    cudaStream_t s, const KvPacked& pk) {
    if (n <= 0) return;
    SQ_CHECK(pk || (kc && vc), "CUDA attention_flash: no KV cache (fp32 or packed)");
    SQ_CHECK(kv_heads > 0 && heads % kv_heads == 0, "CUDA attention_flash: ", heads, " heads not a multiple of ",
             kv_heads, " KV heads");
    SQ_CHECK(attention_flash_supported(hd), "CUDA attention_flash: head_dim ", hd, " unsupported (64 or 128)");
    auto go = [&](auto fn) { fn(q, kc, vc, n, pos0, pos_dev, positions, blocks, n_blocks, heads, kv_heads, out, s, pk); };
    if (hd == 64) pk ? go(launch_flash<64, true>) : go(launch_flash<64, false>);
    else pk ? go(launch_flash<128, true>) : go(launch_flash<128, false>);
}

}  // namespace

bool attention_flash_supported(int hd) { return hd == 64 || hd == 128; }

bool prefill_attention_flash() {
    static const bool on = [] {
        const char* e = std::getenv("SQ_CUDA_PREFILL_ATT");
        if (!e || !*e) return true;
        const std::string v = e;
        SQ_CHECK(v == "flash" || v == "f32", "SQ_CUDA_PREFILL_ATT must be flash or f32, got '", v, "'");
        return v == "flash";
    }();
    return on;
}

void attention_flash(const float* q, const float* kc, const float* vc, int n, int pos0, const int* pos_dev, int heads,
                     int kv_heads, int hd, float* out, cudaStream_t s, const KvPacked& pk) {
    if (!attention_flash_supported(hd)) {  // other head sizes: the FP32 kernel (same semantics)
        attention(q, kc, vc, n, pos0, pos_dev, heads, kv_heads, hd, out, s, pk);
        return;
    }
    flash_dispatch(q, kc, vc, n, pos0, pos_dev, nullptr, nullptr, 0, heads, kv_heads, hd, out, s, pk);
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
                            const KvPacked& pk) {
    SQ_CHECK(positions, "CUDA attention_flash_varlen: no positions");
    SQ_CHECK(!blocks || n_blocks > 0, "CUDA attention_flash_varlen: empty block table");
    if (!attention_flash_supported(hd)) {
        // The FP32 kernel's table has 16-row blocks, this one 64: run it without (correct rows,
        // only not bit for bit per sequence; the model passes its 16-row table there instead).
        attention_varlen(q, kc, vc, n, positions, heads, kv_heads, hd, out, s, nullptr, 0, pk);
        return;
    }
    flash_dispatch(q, kc, vc, n, 0, nullptr, positions, blocks, n_blocks, heads, kv_heads, hd, out, s, pk);
}

}  // namespace sq::cuda
