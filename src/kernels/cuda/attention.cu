// Causal GQA attention over a float KV cache (prefill and decode), one pass
// with an online softmax (flash-style) in FP32. Build: cmake -DSPECQUANT_CUDA=ON.
//
// Tiling: a block serves one KV head and kRows query rows, a row being a
// (token, query head of this KV head's group) pair, token-major, so the
// group's heads share every K/V tile (GQA reuse ×group) and a block's rows sit
// at neighbouring positions (similar causal limits). 4 warps × 4 rows each.
// Keys stream through shared memory 32 at a time: lane j scores key j of the
// tile for each of its warp's rows (K rows padded to hd+1 floats: lanes read
// different rows without bank conflicts), then every lane accumulates its
// hd/32 output dims over the 32 keys (V rows read across lanes: conflict-free).
// Shared memory: (16·hd + 2·32·(hd+1))·4 B = 20.7 KB at hd = 64, 82 KB at 256.
// Work at n = 2048, hd = 64, 9 heads: ~2.4 G FMA per layer (causal half).
//
// Varlen (attention_varlen): many sequences packed back to back, token t at
// position positions[t] of its own sequence, whose keys are cache rows
// [t − positions[t], t]. Rows are token-major and a sequence's first row only
// grows with t, so a block's keys are [first row's start, last row's t] and
// its tiles start at the first row's start: a block wholly inside one
// sequence tiles its keys exactly as the sequence alone at cache row 0 would.
// Rows skip tiles outside their own range (warp-uniform) and mask the rest.
// With a block table (attention_varlen's `blocks`: [row0, row end) per
// block, cut per sequence) no block straddles two sequences, so every row
// sees exactly the tiles, and the result bits, of its sequence run alone.
#include <algorithm>
#include <cfloat>
#include <cstdio>

#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/quant_math.cuh"
#include "kernels/cuda/reduce.cuh"

namespace sq::cuda {

namespace {

constexpr int kWarps = 4, kRowsPerWarp = 4, kRows = kWarps * kRowsPerWarp, kKeys = 32;

// Element d of packed vector vec (KvPacked): (code − zero)·scale (+ sh[d]), the operations and
// rounding of kv_store_vec's fp32 output, so the same float.
__device__ __forceinline__ float kv_unpack(const uint8_t* __restrict__ codes, float2 p, int64_t vec, int d, int hd,
                                           const float* __restrict__ sh) {
    const uint8_t byte = codes[vec * kv_packed_bytes(hd) + (d >> 1)];
    const int c = (d & 1) ? byte >> 4 : byte & 15;
    const float r = __fmul_rn((float)(c - (int)p.y), p.x);
    return sh ? __fadd_rn(r, sh[d]) : r;
}

// Keys [k0, k0 + 32) ∩ [.., kend) of KV head g from the packed cache into sk, sv (rows of ld
// floats; keys past kend as 0), hd % 8 == 0: one 32-bit word = 8 codes per load. Word w is
// (key w % 32, word w / 32): a lane per key, so with ld = hd + 1 the 8 stores of a word hit 32
// different banks across the warp (a lane per word of one key would be 8-way conflicted).
__device__ __forceinline__ void kv_tile_packed8(const KvPacked& pk, int k0, int kend, int kv_heads, int g, int hd,
                                                int ld, float* __restrict__ sk, float* __restrict__ sv, int tid,
                                                int nthreads) {
    const int wpv = hd >> 3, pb = kv_packed_bytes(hd);
    const float* sh = pk.k_shift ? pk.k_shift + (size_t)g * hd : nullptr;
    for (int w = tid; w < 32 * wpv; w += nthreads) {
        const int j = w & 31, dw = w >> 5, key = k0 + j;
        float* kd = sk + j * ld + dw * 8;
        float* vd = sv + j * ld + dw * 8;
        if (key >= kend) {
#pragma unroll
            for (int e = 0; e < 8; ++e) kd[e] = 0.0f, vd[e] = 0.0f;
            continue;
        }
        const int64_t vec = (int64_t)key * kv_heads + g;
        const uint32_t kw = reinterpret_cast<const uint32_t*>(pk.k + vec * pb)[dw];
        const uint32_t vw = reinterpret_cast<const uint32_t*>(pk.v + vec * pb)[dw];
        const float2 kp = pk.kp[vec], vp = pk.vp[vec];
        const int kz = (int)kp.y, vz = (int)vp.y;
#pragma unroll
        for (int e = 0; e < 8; ++e) {  // kv_unpack's operations, element dw·8 + e
            const float r = __fmul_rn((float)((int)((kw >> (4 * e)) & 15u) - kz), kp.x);
            kd[e] = sh ? __fadd_rn(r, sh[dw * 8 + e]) : r;
            vd[e] = __fmul_rn((float)((int)((vw >> (4 * e)) & 15u) - vz), vp.x);
        }
    }
}

// sk and sv rows padded to hd + 1 floats (conflict-free stores of the packed loader; the
// reads go across lanes along d either way).
size_t attention_smem(int hd) { return (size_t)(kRows * hd + 2 * kKeys * (hd + 1)) * sizeof(float); }

template <int DPL>  // output dims per lane: ceil(hd / 32)
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(const float* __restrict__ q, const float* __restrict__ kc,
                                                                 const float* __restrict__ vc, int n, int pos0,
                                                                 const int* __restrict__ pos_dev,
                                                                 const int* __restrict__ positions,
                                                                 const int* __restrict__ kv_rows,
                                                                 const int* __restrict__ blocks, int heads,
                                                                 int kv_heads, int hd, float scale,
                                                                 float* __restrict__ out, KvPacked pk) {
    extern __shared__ float sm[];
    float* sq = sm;                        // [kRows][hd]
    float* sk = sq + kRows * hd;           // [kKeys][hd + 1]
    float* sv = sk + kKeys * (hd + 1);     // [kKeys][hd + 1]
    const int group = heads / kv_heads;
    const int g = blockIdx.y;
    // This block's rows [row0, total_rows): a table entry, or kRows of all n·group rows.
    const int row0 = blocks ? blocks[2 * blockIdx.x] : blockIdx.x * kRows;
    const int total_rows = blocks ? blocks[2 * blockIdx.x + 1] : n * group;
    const int kvd = kv_heads * hd;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (pos_dev) pos0 += *pos_dev;

    for (int i = threadIdx.x; i < kRows * hd; i += blockDim.x) {
        const int r = i / hd, d = i - r * hd, row = row0 + r;
        float val = 0.0f;
        if (row < total_rows) {
            const int t = row / group, h = g * group + (row - t * group);
            val = q[((size_t)t * heads + h) * hd + d];
        }
        sq[i] = val;
    }
    // Keys of row (token t): [lo(t), hi(t)); t's own cache row r(t) = pos0 + t, or kv_rows[t]
    // (batched decode); hi = r(t) + 1; lo = 0, or r(t) − positions[t] when varlen.
    auto r_of = [&](int t) { return kv_rows ? kv_rows[t] : pos0 + t; };
    auto lo_of = [&](int t) { return positions ? r_of(t) - positions[t] : 0; };
    const int last_row = min(row0 + kRows, total_rows) - 1;
    const int kstart = lo_of(row0 / group);      // lo(t) never decreases with t
    const int kend = r_of(last_row / group) + 1;  // keys [kstart, kend) cover every row of the block

    float m[kRowsPerWarp], l[kRowsPerWarp], o[kRowsPerWarp][DPL];
    int lo[kRowsPerWarp], lim[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
        const int row = row0 + warp * kRowsPerWarp + r;
        // padding rows: key kstart only (finite, unused)
        lo[r] = row < total_rows ? lo_of(row / group) : kstart;
        lim[r] = row < total_rows ? r_of(row / group) + 1 : kstart + 1;
        m[r] = -FLT_MAX;
        l[r] = 0.0f;
#pragma unroll
        for (int dd = 0; dd < DPL; ++dd) o[r][dd] = 0.0f;
    }

    for (int k0 = kstart; k0 < kend; k0 += kKeys) {
        __syncthreads();  // previous tile fully consumed (and sq written on the first pass)
        if (pk.k && (hd & 7) == 0) {  // packed cache (decode v5): the same floats, 8 codes per load
            kv_tile_packed8(pk, k0, kend, kv_heads, g, hd, hd + 1, sk, sv, threadIdx.x, blockDim.x);
        } else {
            for (int i = threadIdx.x; i < kKeys * hd; i += blockDim.x) {
                const int j = i / hd, d = i - j * hd, key = k0 + j;
                float kv = 0.0f, vv = 0.0f;
                if (key < kend) {
                    if (pk.k) {  // packed, hd % 8 ≠ 0: element by element
                        const int64_t vec = (int64_t)key * kv_heads + g;
                        kv = kv_unpack(pk.k, pk.kp[vec], vec, d, hd, pk.k_shift ? pk.k_shift + g * hd : nullptr);
                        vv = kv_unpack(pk.v, pk.vp[vec], vec, d, hd, nullptr);
                    } else {
                        const size_t off = (size_t)key * kvd + (size_t)g * hd + d;
                        kv = kc[off];
                        vv = vc[off];
                    }
                }
                sk[j * (hd + 1) + d] = kv;
                sv[j * (hd + 1) + d] = vv;
            }
        }
        __syncthreads();
        const int key = k0 + lane;
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
            // warp-uniform: every key of the tile is masked for this row
            if (k0 >= lim[r] || k0 + kKeys <= lo[r]) continue;
            const float* qr = sq + (warp * kRowsPerWarp + r) * hd;
            const float* kr = sk + lane * (hd + 1);
            const bool valid = key >= lo[r] && key < lim[r];
            float s = -FLT_MAX;
            if (valid) {
                float acc = 0.0f;
                for (int d = 0; d < hd; ++d) acc += qr[d] * kr[d];
                s = acc * scale;
            }
            const float mnew = fmaxf(m[r], warp_max(s));
            const float p = valid ? expf(s - mnew) : 0.0f;
            const float corr = expf(m[r] - mnew);
            l[r] = l[r] * corr + warp_sum(p);
#pragma unroll
            for (int dd = 0; dd < DPL; ++dd) o[r][dd] *= corr;
            const int jmin = max(0, lo[r] - k0), jmax = min(kKeys, lim[r] - k0);  // p = 0 outside
            for (int j = jmin; j < jmax; ++j) {
                const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
                for (int dd = 0; dd < DPL; ++dd) {
                    const int d = lane + 32 * dd;
                    if (d < hd) o[r][dd] += pj * sv[j * (hd + 1) + d];
                }
            }
            m[r] = mnew;
        }
    }

#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
        const int row = row0 + warp * kRowsPerWarp + r;
        if (row >= total_rows) continue;
        const int t = row / group, h = g * group + (row - t * group);
        const float inv = 1.0f / l[r];
#pragma unroll
        for (int dd = 0; dd < DPL; ++dd) {
            const int d = lane + 32 * dd;
            if (d < hd) out[((size_t)t * heads + h) * hd + d] = o[r][dd] * inv;
        }
    }
}

template <int DPL>
void launch(const float* q, const float* kc, const float* vc, int n, int pos0, const int* pos_dev,
            const int* positions, const int* kv_rows, const int* blocks, int n_blocks, int heads, int kv_heads, int hd,
            float* out, cudaStream_t s, const KvPacked& pk) {
    const size_t smem = attention_smem(hd);
    if (smem > 48 * 1024) {
        // Above the default 48 KB a kernel must opt in (hd > 128).
        SQ_CUDA(cudaFuncSetAttribute(attention_kernel<DPL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    }
    const int group = heads / kv_heads;
    dim3 grid((unsigned)(blocks ? n_blocks : (n * group + kRows - 1) / kRows), (unsigned)kv_heads);
    attention_kernel<DPL><<<grid, kWarps * 32, smem, s>>>(q, kc, vc, n, pos0, pos_dev, positions, kv_rows, blocks,
                                                          heads, kv_heads, hd, 1.0f / sqrtf((float)hd), out, pk);
    SQ_CUDA_LAUNCH("attention");
}

void dispatch(const float* q, const float* kc, const float* vc, int n, int pos0, const int* pos_dev,
              const int* positions, const int* kv_rows, const int* blocks, int n_blocks, int heads, int kv_heads,
              int hd, float* out, cudaStream_t s, const KvPacked& pk) {
    if (n <= 0) return;
    SQ_CHECK(pk || (kc && vc), "CUDA attention: no KV cache (fp32 or packed)");
    SQ_CHECK(hd >= 1 && hd <= 256, "CUDA attention: head_dim ", hd, " unsupported (1..256)");
    SQ_CHECK(kv_heads > 0 && heads % kv_heads == 0, "CUDA attention: ", heads, " heads not a multiple of ", kv_heads,
             " KV heads");
    auto go = [&](auto fn) {
        fn(q, kc, vc, n, pos0, pos_dev, positions, kv_rows, blocks, n_blocks, heads, kv_heads, hd, out, s, pk);
    };
    if (hd <= 32) go(launch<1>);
    else if (hd <= 64) go(launch<2>);
    else if (hd <= 128) go(launch<4>);
    else go(launch<8>);
}

}  // namespace

void attention(const float* q, const float* kc, const float* vc, int n, int pos0, const int* pos_dev, int heads,
               int kv_heads, int hd, float* out, cudaStream_t s, const KvPacked& pk) {
    dispatch(q, kc, vc, n, pos0, pos_dev, nullptr, nullptr, nullptr, 0, heads, kv_heads, hd, out, s, pk);
}

// ---- decode: one query token per sequence, keys split across blocks ----
//
// Flash-decoding: the (prefill) kernel above gives a one-token query one block
// per KV head that walks every key alone (8 blocks for LLaMA-3-8B, ~450 µs per
// layer at 512 keys on the H100, 70% of a decode step). Here block (split c,
// KV head g, sequence b) takes keys [lo + c·kDecKeys, +kDecKeys) of its
// sequence for the group's query heads: scores by warp per key (a warp reads
// one 4·hd-byte key row, coalesced), softmax of the chunk, P·V by thread per
// (head, dim); partial (o, max, sum) per split, merged by a second kernel.
// Splits past a sequence's length write an empty partial (max −FLT_MAX, sum 0).
namespace {

constexpr int kDecKeys = 32, kDecThreads = 128, kDecMaxGroup = 16;

__global__ void __launch_bounds__(kDecThreads) attention_decode_part(
    const float* __restrict__ q, const float* __restrict__ kc, const float* __restrict__ vc,
    const int* __restrict__ kv_rows, const int* __restrict__ positions, int heads, int kv_heads, int hd, float scale,
    int splits, float* __restrict__ part) {
    extern __shared__ float sm[];
    pdl_trigger_then_wait();  // q, the cache, rows: earlier kernels' outputs
    const int c = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int group = heads / kv_heads, kvd = kv_heads * hd;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = kDecThreads / 32;
    float* sq = sm;                          // [group][hd]
    float* ss = sq + group * hd;             // [group][kDecKeys]: scores, then probabilities
    float* sml = ss + group * kDecKeys;      // [group][2]: chunk max, sum
    const int lo = kv_rows[b] - positions[b], hi = kv_rows[b] + 1;
    const int k0 = lo + c * kDecKeys, nk = min(kDecKeys, hi - k0);
    const size_t stride = (size_t)hd + 2;
    float* out0 = part + (((size_t)b * heads + (size_t)g * group) * splits + c) * stride;  // head h: + h·splits·stride
    if (nk <= 0) {
        for (int i = threadIdx.x; i < group * hd; i += kDecThreads) out0[(i / hd) * splits * stride + i % hd] = 0.0f;
        for (int h = threadIdx.x; h < group; h += kDecThreads) {
            out0[h * splits * stride + hd] = -FLT_MAX;
            out0[h * splits * stride + hd + 1] = 0.0f;
        }
        return;
    }
    for (int i = threadIdx.x; i < group * hd; i += kDecThreads) {
        const int h = i / hd, d = i - h * hd;
        sq[i] = q[((size_t)b * heads + (size_t)g * group + h) * hd + d];
    }
    __syncthreads();
    for (int j = warp; j < nk; j += nwarps) {
        const float* kr = kc + (size_t)(k0 + j) * kvd + (size_t)g * hd;
        for (int h = 0; h < group; ++h) {
            float acc = 0.0f;
            for (int d = lane; d < hd; d += 32) acc += sq[h * hd + d] * kr[d];
            acc = warp_sum(acc);
            if (lane == 0) ss[h * kDecKeys + j] = acc * scale;
        }
    }
    __syncthreads();
    for (int h = warp; h < group; h += nwarps) {
        const float sv = lane < nk ? ss[h * kDecKeys + lane] : -FLT_MAX;
        const float m = warp_max(sv);
        const float p = lane < nk ? expf(sv - m) : 0.0f;
        if (lane < kDecKeys) ss[h * kDecKeys + lane] = p;
        const float l = warp_sum(p);
        if (lane == 0) sml[2 * h] = m, sml[2 * h + 1] = l;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < group * hd; i += kDecThreads) {
        const int h = i / hd, d = i - h * hd;
        const float* vr = vc + (size_t)k0 * kvd + (size_t)g * hd + d;
        float o = 0.0f;
        // Unrolled: the value loads of 8 keys are issued together (the sum keeps its order: same bits).
#pragma unroll 8
        for (int j = 0; j < nk; ++j) o += ss[h * kDecKeys + j] * vr[(size_t)j * kvd];
        out0[h * splits * stride + d] = o;
        if (d == 0) {
            out0[h * splits * stride + hd] = sml[2 * h];
            out0[h * splits * stride + hd + 1] = sml[2 * h + 1];
        }
    }
}

// The merge of one (sequence, head)'s partials: M = max_c m_c, inv = 1 / Σ_c l_c·e^{m_c−M};
// both merge kernels call these, so their outputs are the same bits.
__device__ __forceinline__ void merge_stats(const float* __restrict__ p, int hd, int splits, float* M_out,
                                            float* inv_out) {
    const size_t stride = (size_t)hd + 2;
    float M = -FLT_MAX;
    for (int c = 0; c < splits; ++c) M = fmaxf(M, p[c * stride + hd]);
    float L = 0.0f;
#pragma unroll 4
    for (int c = 0; c < splits; ++c) L += p[c * stride + hd + 1] * expf(p[c * stride + hd] - M);
    *M_out = M;
    *inv_out = 1.0f / L;
}
__device__ __forceinline__ float merge_one(const float* __restrict__ p, int hd, int splits, int d, float M, float inv) {
    const size_t stride = (size_t)hd + 2;
    float o = 0.0f;
#pragma unroll 4
    for (int c = 0; c < splits; ++c) o += p[c * stride + d] * expf(p[c * stride + hd] - M);
    return o * inv;
}

// One block per (sequence, query head): out = Σ_c o_c·e^{m_c−M} / Σ_c l_c·e^{m_c−M}.
__global__ void attention_decode_merge(const float* __restrict__ part, int heads, int hd, int splits,
                                       float* __restrict__ out) {
    pdl_trigger_then_wait();
    const size_t bh = blockIdx.x, stride = (size_t)hd + 2;
    const float* p = part + bh * splits * stride;
    float M, inv;
    merge_stats(p, hd, splits, &M, &inv);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) out[bh * hd + d] = merge_one(p, hd, splits, d, M, inv);
}

// Decode v4: one block per sequence merges all its heads (the same per-output code as
// attention_decode_merge) and, in the same pass, makes the o projection's input: its
// activation codes (act_quant semantics, order-free max/min) and/or its bf16 copy.
// Each thread keeps up to kMergeV outputs in registers (heads·hd ≤ kMergeV·1024).
constexpr int kMergeV = 8, kMergeThreads = 1024;
__global__ void __launch_bounds__(kMergeThreads) attention_decode_merge_rows(
    const float* __restrict__ part, int heads, int hd, int splits, float* __restrict__ out, int bits, float clip,
    uint8_t* __restrict__ q8, float* __restrict__ q_scale, int32_t* __restrict__ q_zero,
    __nv_bfloat16* __restrict__ ob) {
    __shared__ float red[64];
    pdl_trigger_then_wait();
    const int b = blockIdx.x, tid = threadIdx.x, width = heads * hd;
    const size_t stride = (size_t)hd + 2;
    float ov[kMergeV];
    float mx = 0.0f, mn = 0.0f;
#pragma unroll
    for (int j = 0; j < kMergeV; ++j) {
        const int i = tid + j * kMergeThreads;
        if (i >= width) continue;
        const int h = i / hd, d = i - h * hd;
        const float* p = part + ((size_t)b * heads + h) * splits * stride;
        float M, inv;
        merge_stats(p, hd, splits, &M, &inv);
        ov[j] = merge_one(p, hd, splits, d, M, inv);
        out[(size_t)b * width + i] = ov[j];
        mx = ref_max(mx, ov[j]);
        mn = ref_min(mn, ov[j]);
        if (ob) ob[(size_t)b * width + i] = __float2bfloat16_rn(ov[j]);
    }
    if (!q8) return;
    float s;
    int z;
    block_row_params(mx, mn, red, bits, clip, &q_scale[b], &q_zero[b], &s, &z);
    const int qmax = (1 << bits) - 1;
#pragma unroll
    for (int j = 0; j < kMergeV; ++j) {
        const int i = tid + j * kMergeThreads;
        if (i < width) q8[(size_t)b * width + i] = (uint8_t)quant_one(ov[j], s, z, qmax);
    }
}

// Scores of one key (row skj of hd floats in shared memory) for the group's heads (q rows
// sq [group][hd]): per head v4's lane-strided FMA chain and warp butterfly, 4 heads at a
// time so that their shuffle chains overlap (each sum keeps its own order: same bits);
// lane 0 stores head h's score at out[h · kDecKeys]. Decode v5 and v6.
template <int DPL>
__device__ __forceinline__ void score_key(const float* sq, const float* skj, int hd,
                                          int group, float scale, int lane, float* out) {
    float kr[DPL];
#pragma unroll
    for (int dd = 0; dd < DPL; ++dd) {
        const int d = lane + 32 * dd;
        kr[dd] = d < hd ? skj[d] : 0.0f;
    }
    for (int h0 = 0; h0 < group; h0 += 4) {
        float acc[4];
#pragma unroll
        for (int hh = 0; hh < 4; ++hh) {
            const int h = min(h0 + hh, group - 1);  // past the group: a duplicate, not stored
            acc[hh] = 0.0f;
#pragma unroll
            for (int dd = 0; dd < DPL; ++dd) {
                const int d = lane + 32 * dd;
                if (d < hd) acc[hh] += sq[h * hd + d] * kr[dd];
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
            for (int hh = 0; hh < 4; ++hh) acc[hh] += __shfl_xor_sync(0xffffffffu, acc[hh], o);
        }
        if (lane == 0) {
#pragma unroll
            for (int hh = 0; hh < 4; ++hh)
                if (h0 + hh < group) out[(h0 + hh) * kDecKeys] = acc[hh] * scale;
        }
    }
}

// ---- decode v5: one kernel, the merge by the last block, optionally over the packed cache ----
//
// v4 ran attention_decode_part, then a merge kernel, then act_quant for o's codes: three
// launches of a few µs each, the last two nearly serial (26 µs per layer eager at 544 keys,
// docs/perf.md "Decode v4"). v5 is one launch with the same blocks (chunk c of 32 keys of
// (sequence b, KV head g)) and the same float operations in the same order, so the same
// bits: scores as the warp-per-key dot (lane-strided FMA chain, then warp_sum), the chunk's
// softmax by one warp, P·V in key order, the partial (o, m, l) in the v4 layout. Then the
// block that finishes last (atomic counter per (b, g)) merges that head's partials in split
// order with the v4 formulas (merge_stats / merge_one: M by fmaxf, L and o as FMA chains
// over c; the weights e^{m_c−M} are the same expf values, computed once per (head, c)), and
// the last of the kv_heads mergers of sequence b makes o's codes from the finished row as
// act_quant does (order-free max/min). The chunk's K/V are staged in shared memory (from the
// packed cache: 2 × 32 × 64 B + params per block at hd = 128, instead of 2 × 16 KB of fp32).
// Splits past a sequence's length exit at once: v4's empty partials (m = −FLT_MAX, l = 0,
// o = 0) add exact zeros to every merge sum (fma(0, 0, x) = x), so leaving them out keeps
// the bits. Counters go back to zero in the block that consumed them (graph replays).
// 512 threads (16 warps) per block: at 256 one block per SM issued 0.24 instructions per cycle per
// scheduler (ncu: latency-bound chains of shuffles, shared and global loads), 29.7 µs per launch at
// B = 1; the work per block is the same, split over twice the warps (the arithmetic of each value
// does not depend on which thread computes it, so the bits do not change).
constexpr int kD5Threads = 512, kD5WCache = 4096;  // (m_c, l_c) cached in smem up to this many floats

template <int DPL, bool kPacked>
__global__ void __launch_bounds__(kD5Threads) attention_decode_v5(
    const float* __restrict__ q, const float* __restrict__ kc, const float* __restrict__ vc, KvPacked pk,
    const int* __restrict__ kv_rows, const int* __restrict__ positions, int heads, int kv_heads, int hd, float scale,
    int splits, bool wcache, float* __restrict__ part, int* __restrict__ counters, float* __restrict__ out, int bits,
    float clip, uint8_t* __restrict__ q8, float* __restrict__ q_scale, int32_t* __restrict__ q_zero,
    __nv_bfloat16* __restrict__ ob) {
    extern __shared__ float sm[];
    __shared__ int s_last;
    __shared__ float red[64];
    pdl_trigger_then_wait();  // q, the cache, rows: earlier kernels' outputs
    const int c = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int group = heads / kv_heads, kvd = kv_heads * hd;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, nwarps = kD5Threads / 32;
    const int lo = kv_rows[b] - positions[b], hi = kv_rows[b] + 1;
    const int nsplit = (hi - lo + kDecKeys - 1) / kDecKeys;
    if (c >= nsplit) return;
    const int k0 = lo + c * kDecKeys, nk = min(kDecKeys, hi - k0), ld = hd + 1;
    float* sq = sm;                         // [group][hd]
    float* sk = sq + group * hd;            // [kDecKeys][ld]
    float* sv = sk + kDecKeys * ld;         // [kDecKeys][ld]
    float* ss = sv + kDecKeys * ld;         // [group][kDecKeys]: scores, then probabilities
    float* sml = ss + group * kDecKeys;     // [group][2]: chunk max, sum; then (M, 1/L) of the merge
    float* sw = sml + 2 * group;            // [group][splits]: m_c, then e^{m_c − M} (wcache)
    float* sl = sw + group * splits;        // [group][splits]: l_c (wcache)
    const size_t stride = (size_t)hd + 2;

    for (int i = tid; i < group * hd; i += kD5Threads) sq[i] = q[((size_t)b * heads + (size_t)g * group) * hd + i];
    if (kPacked && (hd & 7) == 0) {
        kv_tile_packed8(pk, k0, hi, kv_heads, g, hd, ld, sk, sv, tid, kD5Threads);
    } else if (kPacked) {
        const float* sh = pk.k_shift ? pk.k_shift + (size_t)g * hd : nullptr;
        for (int i = tid; i < nk * hd; i += kD5Threads) {
            const int j = i / hd, d = i - j * hd;
            const int64_t vec = (int64_t)(k0 + j) * kv_heads + g;
            sk[j * ld + d] = kv_unpack(pk.k, pk.kp[vec], vec, d, hd, sh);
            sv[j * ld + d] = kv_unpack(pk.v, pk.vp[vec], vec, d, hd, nullptr);
        }
    } else {
        for (int i = tid; i < nk * hd; i += kD5Threads) {
            const int j = i / hd, d = i - j * hd;
            const size_t off = (size_t)(k0 + j) * kvd + (size_t)g * hd + d;
            sk[j * ld + d] = kc[off];
            sv[j * ld + d] = vc[off];
        }
    }
    __syncthreads();
    // Scores: per key, v4's lane-strided FMA chain and warp_sum for each head, 4 heads at a
    // time so that their shuffle chains overlap (each sum keeps its own order: same bits).
    for (int j = warp; j < nk; j += nwarps) score_key<DPL>(sq, sk + j * ld, hd, group, scale, lane, ss + j);
    __syncthreads();
    for (int h = warp; h < group; h += nwarps) {
        const float sv_ = lane < nk ? ss[h * kDecKeys + lane] : -FLT_MAX;
        const float m = warp_max(sv_);
        const float p = lane < nk ? expf(sv_ - m) : 0.0f;
        if (lane < kDecKeys) ss[h * kDecKeys + lane] = p;
        const float l = warp_sum(p);
        if (lane == 0) sml[2 * h] = m, sml[2 * h + 1] = l;
    }
    __syncthreads();
    float* out0 = part + (((size_t)b * heads + (size_t)g * group) * splits + c) * stride;  // head h: + h·splits·stride
    for (int i = tid; i < group * hd; i += kD5Threads) {
        const int h = i / hd, d = i - h * hd;
        float o = 0.0f;
#pragma unroll 8
        for (int j = 0; j < nk; ++j) o += ss[h * kDecKeys + j] * sv[j * ld + d];
        out0[h * splits * stride + d] = o;
        if (d == 0) {
            out0[h * splits * stride + hd] = sml[2 * h];
            out0[h * splits * stride + hd + 1] = sml[2 * h + 1];
        }
    }

    // The last block of (b, g) to finish merges: every block's partial stores, then a fence,
    // then the counter; the last one reads the partials from L2 (__ldcg: no stale L1 lines).
    __threadfence();
    __syncthreads();
    int* cnt = counters + (size_t)b * kv_heads + g;
    if (tid == 0) s_last = atomicAdd(cnt, 1) == nsplit - 1;
    __syncthreads();
    if (!s_last) return;
    if (tid == 0) *cnt = 0;
    __threadfence();
    const float* pg = part + ((size_t)b * heads + (size_t)g * group) * splits * stride;
    if (wcache) {  // every (m_c, l_c) of the group in one round of loads
        for (int i = tid; i < group * nsplit; i += kD5Threads) {
            const int h = i / nsplit, cc = i - h * nsplit;
            const float* p = pg + (size_t)h * splits * stride + (size_t)cc * stride;
            sw[h * splits + cc] = __ldcg(p + hd);
            sl[h * splits + cc] = __ldcg(p + hd + 1);
        }
        __syncthreads();
    }
    for (int h = warp; h < group; h += nwarps) {  // merge_stats, once per head
        const float* p = pg + (size_t)h * splits * stride;
        auto m_of = [&](int cc) { return wcache ? sw[h * splits + cc] : __ldcg(p + cc * stride + hd); };
        float M = -FLT_MAX;
        for (int cc = lane; cc < nsplit; cc += 32) M = fmaxf(M, m_of(cc));
        M = warp_max(M);  // fmaxf: order-free
        __syncwarp();
        if (wcache)
            for (int cc = lane; cc < nsplit; cc += 32) sw[h * splits + cc] = expf(sw[h * splits + cc] - M);
        __syncwarp();
        if (lane == 0) {
            float L = 0.0f;
            for (int cc = 0; cc < nsplit; ++cc)
                L += (wcache ? sl[h * splits + cc] : __ldcg(p + cc * stride + hd + 1)) *
                     (wcache ? sw[h * splits + cc] : expf(__ldcg(p + cc * stride + hd) - M));
            sml[2 * h] = M, sml[2 * h + 1] = 1.0f / L;
        }
    }
    __syncthreads();
    for (int i = tid; i < group * hd; i += kD5Threads) {  // merge_one: loads 16 splits at a time
        const int h = i / hd, d = i - h * hd;
        const float* p = pg + (size_t)h * splits * stride;
        const float M = sml[2 * h];
        float o = 0.0f;
        for (int c0 = 0; c0 < nsplit; c0 += 16) {
            float pv[16];
#pragma unroll
            for (int e = 0; e < 16; ++e) pv[e] = c0 + e < nsplit ? __ldcg(p + (size_t)(c0 + e) * stride + d) : 0.0f;
#pragma unroll
            for (int e = 0; e < 16; ++e) {
                const int cc = c0 + e;
                if (cc < nsplit)
                    o += pv[e] * (wcache ? sw[h * splits + cc] : expf(__ldcg(p + (size_t)cc * stride + hd) - M));
            }
        }
        const float val = o * sml[2 * h + 1];
        const size_t oi = ((size_t)b * heads + (size_t)g * group) * hd + i;
        out[oi] = val;
        if (ob) ob[oi] = __float2bfloat16_rn(val);
    }
    if (!q8) return;
    // o's codes: the last of sequence b's kv_heads mergers quantizes the whole row.
    __threadfence();
    __syncthreads();
    int* cnt2 = counters + (size_t)gridDim.z * kv_heads + b;
    if (tid == 0) s_last = atomicAdd(cnt2, 1) == kv_heads - 1;
    __syncthreads();
    if (!s_last) return;
    if (tid == 0) *cnt2 = 0;
    __threadfence();
    const int width = heads * hd;
    const float* orow = out + (size_t)b * width;
    const int qmax = (1 << bits) - 1;
    float mx = 0.0f, mn = 0.0f, sc;
    int z;
    constexpr int kV = 16;
    if (width <= kV * kD5Threads) {  // the row in registers: one round of loads
        float xv[kV];
#pragma unroll
        for (int j = 0; j < kV; ++j) {
            const int i = tid + j * kD5Threads;
            xv[j] = i < width ? __ldcg(orow + i) : 0.0f;
            if (i < width) mx = ref_max(mx, xv[j]), mn = ref_min(mn, xv[j]);
        }
        block_row_params(mx, mn, red, bits, clip, &q_scale[b], &q_zero[b], &sc, &z);
#pragma unroll
        for (int j = 0; j < kV; ++j) {
            const int i = tid + j * kD5Threads;
            if (i < width) q8[(size_t)b * width + i] = (uint8_t)quant_one(xv[j], sc, z, qmax);
        }
        return;
    }
    for (int i = tid; i < width; i += kD5Threads) {
        const float v = __ldcg(orow + i);
        mx = ref_max(mx, v);
        mn = ref_min(mn, v);
    }
    block_row_params(mx, mn, red, bits, clip, &q_scale[b], &q_zero[b], &sc, &z);
    for (int i = tid; i < width; i += kD5Threads) q8[(size_t)b * width + i] = (uint8_t)quant_one(__ldcg(orow + i), sc, z, qmax);
}

template <int DPL, bool kPacked>
void launch_v5(const float* q, const float* kc, const float* vc, const KvPacked& pk, int n, const int* kv_rows,
               const int* positions, int heads, int kv_heads, int hd, int splits, float* part, int* counters,
               float* out, const RowQuant& o, cudaStream_t s) {
    const int group = heads / kv_heads;
    const bool wcache = 2 * (size_t)group * splits <= (size_t)kD5WCache;
    const size_t smem = (size_t)(group * hd + 2 * kDecKeys * (hd + 1) + group * kDecKeys + 2 * group +
                                 (wcache ? 2 * group * splits : 0)) * sizeof(float);
    if (smem > 48 * 1024)  // above the default 48 KB a kernel must opt in (large hd or group)
        SQ_CUDA(cudaFuncSetAttribute(attention_decode_v5<DPL, kPacked>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)smem));
    launch_pdl("attention_decode_v5", attention_decode_v5<DPL, kPacked>,
               dim3((unsigned)splits, (unsigned)kv_heads, (unsigned)n), dim3(kD5Threads), smem, s, q, kc, vc, pk,
               kv_rows, positions, heads, kv_heads, hd, 1.0f / sqrtf((float)hd), splits, wcache, part, counters, out,
               o.bits, o.clip, o.q8, o.scale, o.zero, reinterpret_cast<__nv_bfloat16*>(o.bf16));
}


// ---- decode v6: a cluster of 8 blocks per (sequence, KV head), the merge through DSMEM ----
//
// v5 spent ~12 µs per layer in the graph (15–20 µs eager) for ~0.3 MB of packed K/V: 17
// blocks per (b, g) at 544 keys, then a global-memory hand-over (partials to L2, a fence, an
// atomic counter, the last block re-reading 17 partials from L2: four dependent L2 round
// trips after the slowest block). v6 launches a thread-block cluster of kD6Cluster blocks per
// (b, g). Block r takes chunks c = r, r + 8, r + 16, … (v5's chunks of 32 keys) and stages up
// to R of them at once (one round of loads for all their K/V instead of one per block), with
// v5's per-chunk arithmetic unchanged: the same scores (lane-strided FMA chain + butterfly,
// × scale), chunk softmax, P·V in key order; the partial (o, m, l) of chunk c stays in block
// c % 8's shared memory. After one cluster barrier every block merges a slice of the group's
// outputs reading the partials over DSMEM, with v5's merge formulas in v5's order (M by
// fmaxf, L and o as FMA chains over c = 0 … nsplit−1, w_c = expf(m_c − M), × 1/L): the same
// bits as v5 and v4 (CudaKv4.DecodeAttentionV6IsBitIdentical). No scratch, no counters, no
// second kernel. o's codes (RowQuant::q8) need the whole row of every KV head: v5 does that.
constexpr int kD6Cluster = 8, kD6Threads = 512, kD6Words = 4;

struct D6Smem {  // float offsets of the dynamic shared memory (same layout in every block)
    int sk, sv, ss, sml, spart, sw, sl, total;
    __host__ __device__ D6Smem(int group, int hd, int R, int U, int splits) {
        const int ld = hd + 1;
        sk = group * hd;                         // sq [group][hd] at 0
        sv = sk + R * kDecKeys * ld;             // sk, sv [R][32][ld]
        ss = sv + R * kDecKeys * ld;             // [R][group][32]: scores, then probabilities
        sml = ss + R * group * kDecKeys;         // [R][group][2]: chunk (max, sum); then (M, 1/L)
        spart = sml + R * group * 2;             // [U][group][hd + 2]: partials (o, m, l), read over DSMEM
        sw = spart + U * group * (hd + 2);       // [group][splits]: m_c, then e^{m_c − M}
        sl = sw + group * splits;                // [group][splits]: l_c
        total = sl + group * splits;
    }
};

template <int DPL, bool kPacked>
__global__ void __launch_bounds__(kD6Threads) attention_decode_v6(
    const float* __restrict__ q, const float* __restrict__ kc, const float* __restrict__ vc, KvPacked pk,
    const int* __restrict__ kv_rows, const int* __restrict__ positions, int heads, int kv_heads, int hd, float scale,
    int splits, int U, int R, float* __restrict__ out, __nv_bfloat16* __restrict__ ob) {
    extern __shared__ float sm[];
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    pdl_trigger_then_wait();  // q, the cache, rows: earlier kernels' outputs
    const int r = (int)cluster.block_rank(), g = blockIdx.y, b = blockIdx.z;
    const int group = heads / kv_heads, kvd = kv_heads * hd, ld = hd + 1;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, nwarps = kD6Threads / 32;
    const int lo = kv_rows[b] - positions[b], hi = kv_rows[b] + 1;
    const int nsplit = (hi - lo + kDecKeys - 1) / kDecKeys;
    const int nu = nsplit > r ? (nsplit - r + kD6Cluster - 1) / kD6Cluster : 0;  // my chunks: r + 8u, u < nu
    const D6Smem L(group, hd, R, U, splits);
    const size_t pst = (size_t)hd + 2;
    float *sq = sm, *sk = sm + L.sk, *sv = sm + L.sv, *ss = sm + L.ss, *sml = sm + L.sml, *spart = sm + L.spart;
    float *sw = sm + L.sw, *sl = sm + L.sl;
    auto chunk_k0 = [&](int u) { return lo + (r + kD6Cluster * u) * kDecKeys; };

    if (nu > 0)
        for (int i = tid; i < group * hd; i += kD6Threads) sq[i] = q[((size_t)b * heads + (size_t)g * group) * hd + i];
    for (int u0 = 0; u0 < nu; u0 += R) {
        const int nr = min(R, nu - u0);
        if (kPacked && (hd & 7) == 0) {
            // kv_tile_packed8's words (a lane per key, 8 codes per 32-bit load) for nr chunks, with
            // kD6Words words per thread loaded before the first is unpacked (one round trip).
            const int wpv = hd >> 3, pb = kv_packed_bytes(hd), per = kDecKeys * wpv, total = nr * per;
            const float* sh = pk.k_shift ? pk.k_shift + (size_t)g * hd : nullptr;
            for (int w0 = tid; w0 < total; w0 += kD6Words * kD6Threads) {
                uint32_t kw[kD6Words], vw[kD6Words];
                float2 kp[kD6Words], vp[kD6Words];
#pragma unroll
                for (int e = 0; e < kD6Words; ++e) {
                    const int w = w0 + e * kD6Threads, t = w / per, wi = w - t * per;
                    const int key = chunk_k0(u0 + t) + (wi & 31);
                    kw[e] = vw[e] = 0u, kp[e] = vp[e] = make_float2(0.0f, 0.0f);
                    if (w < total && key < hi) {
                        const int64_t vec = (int64_t)key * kv_heads + g;
                        kw[e] = reinterpret_cast<const uint32_t*>(pk.k + vec * pb)[wi >> 5];
                        vw[e] = reinterpret_cast<const uint32_t*>(pk.v + vec * pb)[wi >> 5];
                        kp[e] = pk.kp[vec], vp[e] = pk.vp[vec];
                    }
                }
#pragma unroll
                for (int e = 0; e < kD6Words; ++e) {
                    const int w = w0 + e * kD6Threads, t = w / per, wi = w - t * per;
                    if (w >= total) continue;
                    const int j = wi & 31, dw = wi >> 5, key = chunk_k0(u0 + t) + j;
                    float* kd = sk + (t * kDecKeys + j) * ld + dw * 8;
                    float* vd = sv + (t * kDecKeys + j) * ld + dw * 8;
                    if (key >= hi) {
#pragma unroll
                        for (int x = 0; x < 8; ++x) kd[x] = 0.0f, vd[x] = 0.0f;
                        continue;
                    }
                    const int kz = (int)kp[e].y, vz = (int)vp[e].y;
#pragma unroll
                    for (int x = 0; x < 8; ++x) {  // kv_unpack's operations, element dw·8 + x
                        const float rr = __fmul_rn((float)((int)((kw[e] >> (4 * x)) & 15u) - kz), kp[e].x);
                        kd[x] = sh ? __fadd_rn(rr, sh[dw * 8 + x]) : rr;
                        vd[x] = __fmul_rn((float)((int)((vw[e] >> (4 * x)) & 15u) - vz), vp[e].x);
                    }
                }
            }
        } else {
            const float* sh = kPacked && pk.k_shift ? pk.k_shift + (size_t)g * hd : nullptr;
            for (int i = tid; i < nr * kDecKeys * hd; i += kD6Threads) {
                const int t = i / (kDecKeys * hd), jd = i - t * kDecKeys * hd, j = jd / hd, d = jd - j * hd;
                const int key = chunk_k0(u0 + t) + j;
                float kx = 0.0f, vx = 0.0f;
                if (key < hi) {
                    const int64_t vec = (int64_t)key * kv_heads + g;
                    if (kPacked) {
                        kx = kv_unpack(pk.k, pk.kp[vec], vec, d, hd, sh);
                        vx = kv_unpack(pk.v, pk.vp[vec], vec, d, hd, nullptr);
                    } else {
                        kx = kc[(size_t)key * kvd + (size_t)g * hd + d];
                        vx = vc[(size_t)key * kvd + (size_t)g * hd + d];
                    }
                }
                sk[(t * kDecKeys + j) * ld + d] = kx;
                sv[(t * kDecKeys + j) * ld + d] = vx;
            }
        }
        __syncthreads();
        // Scores: v5's per-key code (4 heads at a time, each its own FMA chain and butterfly).
        for (int kk = warp; kk < nr * kDecKeys; kk += nwarps) {
            const int t = kk / kDecKeys, j = kk - t * kDecKeys;
            if (j >= min(kDecKeys, hi - chunk_k0(u0 + t))) continue;  // warp-uniform
            const float* skj = sk + (t * kDecKeys + j) * ld;
            float* sst = ss + t * group * kDecKeys;
            score_key<DPL>(sq, skj, hd, group, scale, lane, sst + j);
        }
        __syncthreads();
        for (int th = warp; th < nr * group; th += nwarps) {  // chunk softmax, one warp per (chunk, head)
            const int t = th / group;
            const int nk = min(kDecKeys, hi - chunk_k0(u0 + t));
            float* row = ss + th * kDecKeys;
            const float sv_ = lane < nk ? row[lane] : -FLT_MAX;
            const float m = warp_max(sv_);
            const float p = lane < nk ? expf(sv_ - m) : 0.0f;
            row[lane] = p;
            const float l = warp_sum(p);
            if (lane == 0) sml[2 * th] = m, sml[2 * th + 1] = l;
        }
        __syncthreads();
        for (int i = tid; i < nr * group * hd; i += kD6Threads) {  // P·V in key order, into spart
            const int th = i / hd, d = i - th * hd, t = th / group;
            const int nk = min(kDecKeys, hi - chunk_k0(u0 + t));
            const float* pr = ss + th * kDecKeys;
            const float* svt = sv + t * kDecKeys * ld + d;
            float o = 0.0f;
#pragma unroll 8
            for (int j = 0; j < nk; ++j) o += pr[j] * svt[j * ld];
            float* pp = spart + ((size_t)u0 * group + th) * pst;  // (u0 + t)·group + h = u0·group + th
            pp[d] = o;
            if (d == 0) pp[hd] = sml[2 * th], pp[hd + 1] = sml[2 * th + 1];
        }
        __syncthreads();  // sk, sv, ss, sml are restaged by the next round
    }
    cluster.sync();  // every chunk's partial is in its block's shared memory (release / acquire)

    // merge_stats of v5 (wcache path), once per head in every block: chunk cc lives in block cc % 8
    // at local slot cc / 8; lane's chunks cc ≡ lane (mod 8), so one mapped base per lane.
    {
        const float* rbase = cluster.map_shared_rank(spart, lane & (kD6Cluster - 1));
        for (int h = warp; h < group; h += nwarps) {
            float M = -FLT_MAX;
            for (int cc = lane; cc < nsplit; cc += 32) {
                const float* p = rbase + ((size_t)(cc / kD6Cluster) * group + h) * pst;
                const float m = p[hd];
                sw[h * splits + cc] = m;
                sl[h * splits + cc] = p[hd + 1];
                M = fmaxf(M, m);
            }
            M = warp_max(M);  // fmaxf: order-free
            for (int cc = lane; cc < nsplit; cc += 32) sw[h * splits + cc] = expf(sw[h * splits + cc] - M);
            __syncwarp();
            if (lane == 0) {
                float Ls = 0.0f;
                for (int cc = 0; cc < nsplit; ++cc) Ls += sl[h * splits + cc] * sw[h * splits + cc];
                sml[2 * h] = M, sml[2 * h + 1] = 1.0f / Ls;
            }
        }
    }
    __syncthreads();
    // merge_one of v5, for block r's slice of the group's outputs; 16 chunks' loads in flight,
    // chunk c0 + e (c0 a multiple of 16) in block e % 8 at slot c0 / 8 + e / 8.
    const int width = group * hd, slice = (width + kD6Cluster - 1) / kD6Cluster;
    const int i_end = min(width, (r + 1) * slice);
    const float* rb[kD6Cluster];
#pragma unroll
    for (int k = 0; k < kD6Cluster; ++k) rb[k] = cluster.map_shared_rank(spart, k);
    for (int i = r * slice + tid; i < i_end; i += kD6Threads) {
        const int h = i / hd, d = i - h * hd;
        float o = 0.0f;
        for (int c0 = 0; c0 < nsplit; c0 += 16) {
            float pv[16];
#pragma unroll
            for (int e = 0; e < 16; ++e)
                pv[e] = c0 + e < nsplit
                            ? rb[e % kD6Cluster][((size_t)(c0 / kD6Cluster + e / kD6Cluster) * group + h) * pst + d]
                            : 0.0f;
#pragma unroll
            for (int e = 0; e < 16; ++e)
                if (c0 + e < nsplit) o += pv[e] * sw[h * splits + c0 + e];
        }
        const float val = o * sml[2 * h + 1];
        const size_t oi = ((size_t)b * heads + (size_t)g * group) * hd + i;
        out[oi] = val;
        if (ob) ob[oi] = __float2bfloat16_rn(val);
    }
    cluster.sync();  // no block leaves while another still reads its partials
}

// Chunks per block U (fixed by max_keys, like the grid) and chunks staged at once R: all of
// them up to kD6Round for a few sequences (latency: one round), one for larger batches (the
// shared memory of one chunk, ~42 KB at hd = 128, keeps several blocks per SM), fewer where
// they would pass kD6MaxSmem. The bytes returned exceed kD6MaxSmem only if even R = 1 does
// (very long max_keys: the partials stay in shared memory): v5 then.
constexpr int kD6Round = 3;
constexpr size_t kD6MaxSmem = 200 * 1024;
size_t d6_smem(int n, int group, int hd, int splits, int* U_out, int* R_out) {
    const int U = (splits + kD6Cluster - 1) / kD6Cluster;
    int R = std::min(U, n <= 4 ? kD6Round : 1);
    auto bytes = [&] { return (size_t)D6Smem(group, hd, R, U, splits).total * sizeof(float); };
    while (R > 1 && bytes() > kD6MaxSmem) --R;
    *U_out = U, *R_out = R;
    return bytes();
}

// False (nothing launched) when the device cannot hold even one such cluster at once
// (cudaOccupancyMaxActiveClusters: a host-side query, allowed while a graph is captured).
template <int DPL, bool kPacked>
bool launch_v6(const float* q, const float* kc, const float* vc, const KvPacked& pk, int n, const int* kv_rows,
               const int* positions, int heads, int kv_heads, int hd, int splits, float* out, const RowQuant& o,
               cudaStream_t s) {
    int U = 0, R = 0;
    const size_t smem = d6_smem(n, heads / kv_heads, hd, splits, &U, &R);
    auto kern = attention_decode_v6<DPL, kPacked>;
    if (smem > 48 * 1024) SQ_CUDA(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const PdlLaunch L(dim3((unsigned)kD6Cluster, (unsigned)kv_heads, (unsigned)n), dim3(kD6Threads), smem, s,
                      kD6Cluster);
    if (L.max_clusters(kern) < 1) return false;
    L.launch("attention_decode_v6", kern, q, kc, vc, pk, kv_rows, positions, heads, kv_heads, hd,
             1.0f / sqrtf((float)hd), splits, U, R, out, reinterpret_cast<__nv_bfloat16*>(o.bf16));
    return true;
}

}  // namespace

size_t attention_decode_scratch(int n, int heads, int hd, int max_keys) {
    const size_t splits = (size_t)(max_keys + kDecKeys - 1) / kDecKeys;
    return (size_t)n * heads * splits * ((size_t)hd + 2);
}

size_t attention_decode_counters(int n, int kv_heads) { return (size_t)n * kv_heads + (size_t)n; }

void attention_decode(const float* q, const float* kc, const float* vc, int n, const int* kv_rows, const int* positions,
                      int heads, int kv_heads, int hd, int max_keys, float* part, float* out, cudaStream_t s,
                      const RowQuant& o, int* counters, const KvPacked& pk, int variant) {
    if (n <= 0) return;
    SQ_CHECK(kv_rows && positions && part, "CUDA attention_decode: no rows, positions or scratch");
    SQ_CHECK(hd >= 1 && hd <= 256 && max_keys >= 1, "CUDA attention_decode: head_dim ", hd, ", max_keys ", max_keys);
    SQ_CHECK(kv_heads > 0 && heads % kv_heads == 0 && heads / kv_heads <= kDecMaxGroup, "CUDA attention_decode: ",
             heads, " heads over ", kv_heads, " KV heads (group ≤ ", kDecMaxGroup, ")");
    const int group = heads / kv_heads, splits = (max_keys + kDecKeys - 1) / kDecKeys;
    SQ_CHECK(variant == 0 || variant == 5 || variant == 6, "CUDA attention_decode: variant ", variant,
             " (0 or 5 = v5, 6 = v6 where it applies)");
    if (counters) {  // v5: one kernel (see attention_decode_v5)
        SQ_CHECK(!o.q8 || (o.scale && o.zero && o.bits >= 1 && o.bits <= 8),
                 "CUDA attention_decode: codes need scale, zero and 1..8 bits (", o.bits, ")");
        SQ_CHECK(pk || (kc && vc), "CUDA attention_decode: no KV cache (fp32 or packed)");
        int U = 0, R = 0;
        const bool v6_ok = !o.q8 && d6_smem(n, group, hd, splits, &U, &R) <= kD6MaxSmem;
        if (v6_ok && variant == 6) {  // v6: one cluster per (sequence, KV head), see attention_decode_v6
            auto go6 = [&](auto fn) {
                return fn(q, kc, vc, pk, n, kv_rows, positions, heads, kv_heads, hd, splits, out, o, s);
            };
            const bool pkd = (bool)pk;
            bool done;
            if (hd <= 32) done = pkd ? go6(launch_v6<1, true>) : go6(launch_v6<1, false>);
            else if (hd <= 64) done = pkd ? go6(launch_v6<2, true>) : go6(launch_v6<2, false>);
            else if (hd <= 128) done = pkd ? go6(launch_v6<4, true>) : go6(launch_v6<4, false>);
            else done = pkd ? go6(launch_v6<8, true>) : go6(launch_v6<8, false>);
            if (done) return;
            static bool told = false;  // once per process: the bench must not report v5 as v6 unnoticed
            if (!told) std::fprintf(stderr, "[cuda] attention_decode: v6 cluster not schedulable here, v5 instead\n");
            told = true;
        }
        auto go = [&](auto fn) { fn(q, kc, vc, pk, n, kv_rows, positions, heads, kv_heads, hd, splits, part, counters, out, o, s); };
        const bool pkd = (bool)pk;
        if (hd <= 32) pkd ? go(launch_v5<1, true>) : go(launch_v5<1, false>);
        else if (hd <= 64) pkd ? go(launch_v5<2, true>) : go(launch_v5<2, false>);
        else if (hd <= 128) pkd ? go(launch_v5<4, true>) : go(launch_v5<4, false>);
        else pkd ? go(launch_v5<8, true>) : go(launch_v5<8, false>);
        return;
    }
    SQ_CHECK(!pk, "CUDA attention_decode: the packed KV cache needs the v5 kernel (counters)");
    const size_t smem = (size_t)(group * hd + group * kDecKeys + 2 * group) * sizeof(float);  // ≤ 18.6 KB
    launch_pdl("attention_decode_part", attention_decode_part,
               dim3((unsigned)splits, (unsigned)kv_heads, (unsigned)n), dim3(kDecThreads), smem, s, q, kc, vc, kv_rows,
               positions, heads, kv_heads, hd, 1.0f / sqrtf((float)hd), splits, part);
    if ((o.q8 || o.bf16) && !o.plain && heads * hd <= kMergeV * kMergeThreads) {
        SQ_CHECK(!o.q8 || (o.scale && o.zero && o.bits >= 1 && o.bits <= 8),
                 "CUDA attention_decode: codes need scale, zero and 1..8 bits (", o.bits, ")");
        launch_pdl("attention_decode_merge_rows", attention_decode_merge_rows, dim3((unsigned)n), dim3(kMergeThreads),
                   0, s, (const float*)part, heads, hd, splits, out, o.bits, o.clip, o.q8, o.scale, o.zero,
                   reinterpret_cast<__nv_bfloat16*>(o.bf16));
        return;
    }
    launch_pdl("attention_decode_merge", attention_decode_merge, dim3((unsigned)(n * heads)), dim3(128), 0, s,
               (const float*)part, heads, hd, splits, out);
    // The codes asked for but not fused (plain, or rows too wide): as act_quant / f32_to_bf16 would make them.
    if (o.q8) act_quant(out, n, (int64_t)heads * hd, o.bits, o.clip, nullptr, o.q8, o.scale, o.zero, s);
    if (o.bf16) f32_to_bf16(out, (int64_t)n * heads * hd, o.bf16, s);
}

std::vector<int> attention_blocks(const std::vector<int>& seq_lens, int group) {
    SQ_CHECK(group > 0, "attention_blocks: group ", group);
    std::vector<int> b;
    int row = 0;
    for (int len : seq_lens) {
        SQ_CHECK(len > 0, "attention_blocks: empty sequence");
        const int end = row + len * group;
        for (; row < end; row += kRows) b.push_back(row), b.push_back(std::min(row + kRows, end));
        row = end;
    }
    return b;
}

void attention_varlen(const float* q, const float* kc, const float* vc, int n, const int* positions, int heads,
                      int kv_heads, int hd, float* out, cudaStream_t s, const int* blocks, int n_blocks,
                      const KvPacked& pk) {
    SQ_CHECK(positions, "CUDA attention_varlen: no positions");
    SQ_CHECK(!blocks || n_blocks > 0, "CUDA attention_varlen: empty block table");
    dispatch(q, kc, vc, n, 0, nullptr, positions, nullptr, blocks, n_blocks, heads, kv_heads, hd, out, s, pk);
}

void attention_rows(const float* q, const float* kc, const float* vc, int n, const int* kv_rows, const int* positions,
                    int heads, int kv_heads, int hd, float* out, cudaStream_t s, const int* blocks, int n_blocks) {
    SQ_CHECK(kv_rows && positions, "CUDA attention_rows: no rows or positions");
    SQ_CHECK(!blocks || n_blocks > 0, "CUDA attention_rows: empty block table");
    dispatch(q, kc, vc, n, 0, nullptr, positions, kv_rows, blocks, n_blocks, heads, kv_heads, hd, out, s, KvPacked{});
}

}  // namespace sq::cuda
