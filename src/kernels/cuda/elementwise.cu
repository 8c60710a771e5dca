// Element-wise and row-wise ops of the decoder: embedding gather, RMSNorm
// (optionally fused with the residual add), RoPE, SwiGLU, bias, sign flips.
// Build: cmake -DSPECQUANT_CUDA=ON. Semantics: kernels/cpu/ops.h; multiplies
// whose order the CPU fixes use __fmul_rn/__fsub_rn/__fadd_rn (no FMA contraction).
#include "kernels/cuda/cuda_check.h"
#include <cuda_bf16.h>

#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/quant_math.cuh"
#include "kernels/cuda/reduce.cuh"

namespace sq::cuda {

namespace {

constexpr int kRowThreads = 256;  // one block per row: d = 576 → 2-3 elements per thread

__global__ void embed_kernel(const float* __restrict__ table, const int* __restrict__ tokens, int d,
                             float* __restrict__ out) {
    const int t = blockIdx.x;
    const float* src = table + (size_t)tokens[t] * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) out[(size_t)t * d + i] = src[i];
}

// One block of kRowThreads per token row. Optionally (fused consumers of y, decode):
// the activation codes of y for the next W4A4 layer (q8, scale, zero: act_quant's
// semantics, bit for bit, since max/min are order-free and the rounding is
// quant_math.cuh's), and/or y in bf16 (yb, the BF16 baseline's conversion).
//
// V > 0 (v4, d ≤ V·kRowThreads): each thread's V elements of h, add and w are loaded
// into registers up front (one memory round trip instead of one per element: the plain
// loop, V = 0, was latency bound at one row per block) and kept for the three passes.
// The sum of squares runs over the same elements in the same order (thread t: t, t+256,
// …, one fma chain, then block_sum), so y has the same bits either way (tested).
template <int V>
__global__ void __launch_bounds__(kRowThreads) rmsnorm_kernel(float* __restrict__ h, const float* __restrict__ add,
                                                              const float* __restrict__ w, int d, float eps,
                                                              float* __restrict__ y, int bits, float clip,
                                                              uint8_t* __restrict__ q8, float* __restrict__ q_scale,
                                                              int32_t* __restrict__ q_zero,
                                                              __nv_bfloat16* __restrict__ yb) {
    __shared__ float red[64];
    const size_t base = (size_t)blockIdx.x * d;
    const int tid = threadIdx.x;
    float ss = 0.0f, mx = 0.0f, mn = 0.0f;
    if constexpr (V > 0) {
        // Before the wait (decode v7): w is a weight (constant), and h's row is asked of L2. h was
        // written kernels ago, so at a decode step's first norm it has left L2 under the GEMVs'
        // weight streams; its loads after the wait then hit L2. A prefetch is a hint into L2, the
        // point of coherence, so it is safe whichever kernel writes h.
        float hv[V], wv[V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const int i = tid + j * kRowThreads;
            wv[j] = i < d ? w[i] : 0.0f;
        }
        for (int i = tid * 32; i < d; i += kRowThreads * 32) prefetch_l2(h + base + i);
        pdl_trigger_then_wait();  // h, add: earlier kernels' outputs
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const int i = tid + j * kRowThreads;
            hv[j] = i < d ? h[base + i] : 0.0f;
        }
        if (add) {
            float av[V];
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const int i = tid + j * kRowThreads;
                av[j] = i < d ? add[base + i] : 0.0f;
            }
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const int i = tid + j * kRowThreads;
                if (i < d) {
                    hv[j] = __fadd_rn(hv[j], av[j]);
                    h[base + i] = hv[j];
                }
            }
        }
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const float v = hv[j];
            if (tid + j * kRowThreads < d) ss = __fmaf_rn(v, v, ss);  // pinned: w4a4_gemv_norm repeats it
        }
        ss = block_sum(ss, red);
        const float r = 1.0f / sqrtf(ss / (float)d + eps);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const int i = tid + j * kRowThreads;
            if (i >= d) continue;
            const float yv = __fmul_rn(wv[j], __fmul_rn(hv[j], r));
            hv[j] = yv;
            y[base + i] = yv;
            mx = ref_max(mx, yv);
            mn = ref_min(mn, yv);
            if (yb) yb[base + i] = __float2bfloat16_rn(yv);
        }
        if (!q8) return;
        float s;
        int z;
        block_row_params(mx, mn, red, bits, clip, &q_scale[blockIdx.x], &q_zero[blockIdx.x], &s, &z);
        const int qmax = (1 << bits) - 1;
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const int i = tid + j * kRowThreads;
            if (i < d) q8[base + i] = (uint8_t)quant_one(hv[j], s, z, qmax);
        }
    } else {
        pdl_trigger_then_wait();  // h, add: earlier kernels' outputs
        for (int i = tid; i < d; i += blockDim.x) {
            float v = h[base + i];
            if (add) {
                v = __fadd_rn(v, add[base + i]);
                h[base + i] = v;
            }
            ss = __fmaf_rn(v, v, ss);
        }
        ss = block_sum(ss, red);
        const float r = 1.0f / sqrtf(ss / (float)d + eps);
        for (int i = tid; i < d; i += blockDim.x) {
            const float yv = __fmul_rn(w[i], __fmul_rn(h[base + i], r));
            y[base + i] = yv;
            mx = ref_max(mx, yv);
            mn = ref_min(mn, yv);
            if (yb) yb[base + i] = __float2bfloat16_rn(yv);
        }
        if (!q8) return;
        float s;
        int z;
        block_row_params(mx, mn, red, bits, clip, &q_scale[blockIdx.x], &q_zero[blockIdx.x], &s, &z);
        const int qmax = (1 << bits) - 1;
        for (int i = tid; i < d; i += blockDim.x) q8[base + i] = (uint8_t)quant_one(y[base + i], s, z, qmax);
    }
}

// One thread per (token, head, i < hd/2) pair of rotated elements. Token t
// sits at positions[t] when given (varlen), else at pos0 (+ *pos_dev) + t.
__global__ void rope_kernel(float* __restrict__ x, int n, int heads, int hd, int pos0, const int* __restrict__ pos_dev,
                            const int* __restrict__ positions, const float* __restrict__ inv_freq) {
    const int half = hd / 2;
    const int64_t total = (int64_t)n * heads * half;
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int i = (int)(idx % half);
    const int64_t th = idx / half;  // t * heads + h
    const int t = (int)(th / heads);
    if (pos_dev) pos0 += *pos_dev;
    const int p = positions ? positions[t] : pos0 + t;
    float* v = x + th * hd;
    rope_pair(v[i], v[i + half], p, inv_freq[i], &v[i], &v[i + half]);
}

__device__ __forceinline__ float silu_mul_one(float x, float u) {
    return __fmul_rn(__fdiv_rn(x, __fadd_rn(1.0f, expf(-x))), u);
}

__global__ void silu_mul_kernel(float* __restrict__ g, const float* __restrict__ u, int64_t count) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    g[i] = silu_mul_one(g[i], u[i]);
}

// One block per token row: act[t, :] = silu(g[t, :]) ⊙ u[t, :] (g, u with row stride ld: the
// fused [gate | up] output), optionally with its activation codes / bf16 copy (as rmsnorm_kernel).
// V > 0: ff ≤ V·blockDim.x, every load issued up front and the values kept in registers
// (element-wise and order-free, so the bits do not depend on V or the block size).
template <int V>
__global__ void __launch_bounds__(1024) silu_mul_rows_kernel(const float* __restrict__ g, const float* __restrict__ u, int64_t ld, int ff,
                                     float* __restrict__ act, int bits, float clip, uint8_t* __restrict__ q8,
                                     float* __restrict__ q_scale, int32_t* __restrict__ q_zero,
                                     __nv_bfloat16* __restrict__ ab) {
    __shared__ float red[64];
    pdl_trigger_then_wait();
    const int64_t t = blockIdx.x;
    const int tid = threadIdx.x, nt = blockDim.x;
    const float *gr = g + t * ld, *ur = u + t * ld;
    float* ar = act ? act + t * ff : nullptr;
    float mx = 0.0f, mn = 0.0f;
    if constexpr (V > 0) {
        float gv[V], uv[V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const int i = tid + j * nt;
            gv[j] = i < ff ? gr[i] : 0.0f;
            uv[j] = i < ff ? ur[i] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const int i = tid + j * nt;
            if (i >= ff) continue;
            const float v = silu_mul_one(gv[j], uv[j]);
            gv[j] = v;
            if (act) ar[i] = v;
            mx = ref_max(mx, v);
            mn = ref_min(mn, v);
            if (ab) ab[t * ff + i] = __float2bfloat16_rn(v);
        }
        if (!q8) return;
        float s;
        int z;
        block_row_params(mx, mn, red, bits, clip, &q_scale[t], &q_zero[t], &s, &z);
        const int qmax = (1 << bits) - 1;
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const int i = tid + j * nt;
            if (i < ff) q8[t * ff + i] = (uint8_t)quant_one(gv[j], s, z, qmax);
        }
    } else {
        for (int i = tid; i < ff; i += nt) {
            const float v = silu_mul_one(gr[i], ur[i]);
            if (act) ar[i] = v;
            mx = ref_max(mx, v);
            mn = ref_min(mn, v);
            if (ab) ab[t * ff + i] = __float2bfloat16_rn(v);
        }
        if (!q8) return;
        float s;
        int z;
        block_row_params(mx, mn, red, bits, clip, &q_scale[t], &q_zero[t], &s, &z);
        const int qmax = (1 << bits) - 1;
        for (int i = tid; i < ff; i += nt)  // without act: the same value computed again (same bits)
            q8[t * ff + i] = (uint8_t)quant_one(act ? ar[i] : silu_mul_one(gr[i], ur[i]), s, z, qmax);
    }
}

// Decode v5: one row over C = ceil(ff / 2048) blocks of 256 threads, 8 elements per thread
// (the one-block kernel put 14336 SiLUs, each an expf and an IEEE division, on one SM: ~10 µs
// at B = 1). act and bf16 are element-wise (same bits); the codes need the row's max/min:
// each block publishes its (max, min), then waits until all C blocks of the row have (an
// arrival counter), and every block derives the same (s, z) from the C partials (order-free
// max/min, so the bits of act_quant) and quantizes its own elements. The wait cannot
// deadlock: a block spins only after pdl_trigger, the next kernel starts only once every
// block of this grid has triggered (so all are resident), and the grid is small (≤ 8 rows
// × C blocks). The last block to leave puts both counters back to zero.
constexpr int kSplitThreads = 256, kSplitV = 8, kSplitCols = kSplitThreads * kSplitV;
__global__ void __launch_bounds__(kSplitThreads) silu_mul_split_kernel(
    const float* __restrict__ g, const float* __restrict__ u, int64_t ld, int ff, float* __restrict__ act, int bits,
    float clip, uint8_t* __restrict__ q8, float* __restrict__ q_scale, int32_t* __restrict__ q_zero,
    __nv_bfloat16* __restrict__ ab, float2* __restrict__ part, int* __restrict__ cnt) {
    __shared__ float red[64];
    __shared__ float s_sh;
    __shared__ int z_sh;
    pdl_trigger_then_wait();
    const int c = blockIdx.x, C = gridDim.x, tid = threadIdx.x;
    const int64_t t = blockIdx.y;
    const int i0 = c * kSplitCols;
    const float *gr = g + t * ld, *ur = u + t * ld;
    float gv[kSplitV], uv[kSplitV];
#pragma unroll
    for (int j = 0; j < kSplitV; ++j) {
        const int i = i0 + tid + j * kSplitThreads;
        gv[j] = i < ff ? gr[i] : 0.0f;
        uv[j] = i < ff ? ur[i] : 0.0f;
    }
    float mx = 0.0f, mn = 0.0f;
#pragma unroll
    for (int j = 0; j < kSplitV; ++j) {
        const int i = i0 + tid + j * kSplitThreads;
        if (i >= ff) continue;
        const float v = silu_mul_one(gv[j], uv[j]);
        gv[j] = v;
        if (act) act[t * ff + i] = v;
        mx = ref_max(mx, v);
        mn = ref_min(mn, v);
        if (ab) ab[t * ff + i] = __float2bfloat16_rn(v);
    }
    if (!q8) return;
    block_range(mx, mn, red);
    if (tid == 0) {
        int* arrive = cnt + 2 * t;
        int* depart = arrive + 1;
        part[t * C + c] = make_float2(mx, mn);
        __threadfence();
        atomicAdd(arrive, 1);
        while (*(volatile int*)arrive < C) __nanosleep(32);
        __threadfence();
        float a = 0.0f, b = 0.0f;
        for (int k = 0; k < C; ++k) {
            const float2 p = __ldcg(part + t * C + k);
            a = ref_max(a, p.x);
            b = ref_min(b, p.y);
        }
        float sc;
        int z;
        asym_params(a, b, bits, clip, &sc, &z);
        s_sh = sc, z_sh = z;
        if (c == 0) q_scale[t] = sc, q_zero[t] = z;
        if (atomicAdd(depart, 1) == C - 1) *arrive = 0, *depart = 0;  // every block is past its wait
    }
    __syncthreads();
    const float sc = s_sh;
    const int z = z_sh, qmax = (1 << bits) - 1;
#pragma unroll
    for (int j = 0; j < kSplitV; ++j) {
        const int i = i0 + tid + j * kSplitThreads;
        if (i < ff) q8[t * ff + i] = (uint8_t)quant_one(gv[j], sc, z, qmax);
    }
}

__global__ void add_bias_kernel(float* __restrict__ y, const float* __restrict__ add, const float* __restrict__ bias,
                                int64_t count, int m) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float v = y[i];
    if (add) v = __fadd_rn(v, add[i]);
    if (bias) v = __fadd_rn(v, bias[i % m]);
    y[i] = v;
}

__global__ void mul_signs_kernel(const float* __restrict__ x, const float* __restrict__ signs, int64_t count, int k,
                                 float* __restrict__ y) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    y[i] = x[i] * signs[i % k];
}

unsigned blocks_for(int64_t count, int threads) { return (unsigned)((count + threads - 1) / threads); }

}  // namespace

void embed_gather(const float* table, const int* tokens, int n, int d, float* out, cudaStream_t s) {
    if (n <= 0) return;
    embed_kernel<<<n, kRowThreads, 0, s>>>(table, tokens, d, out);
    SQ_CUDA_LAUNCH("embed");
}

namespace {
// The register-cached kernel (V = 16 elements per thread: d ≤ 4096) unless the row is wider
// or the caller asks for the plain loop (RowQuant::plain, tests).
void launch_rmsnorm(float* h, const float* add, const float* w, int n, int d, float eps, float* y,
                    const RowQuant& o, const char* name, cudaStream_t s) {
    auto k = !o.plain && d <= 16 * kRowThreads ? rmsnorm_kernel<16> : rmsnorm_kernel<0>;
    launch_pdl(name, k, dim3((unsigned)n), dim3(kRowThreads), 0, s, h, add, w, d, eps, y, o.bits, o.clip, o.q8,
               o.scale, o.zero, reinterpret_cast<__nv_bfloat16*>(o.bf16));
}
}  // namespace

void rmsnorm(const float* x, const float* w, int n, int d, float eps, float* y, cudaStream_t s) {
    if (n <= 0) return;
    // h is only read when add is null
    launch_rmsnorm(const_cast<float*>(x), nullptr, w, n, d, eps, y, RowQuant{}, "rmsnorm", s);
}

void add_rmsnorm(float* h, const float* add, const float* w, int n, int d, float eps, float* y, cudaStream_t s) {
    add_rmsnorm_quant(h, add, w, n, d, eps, y, RowQuant{}, s);
}

void add_rmsnorm_quant(float* h, const float* add, const float* w, int n, int d, float eps, float* y,
                       const RowQuant& o, cudaStream_t s) {
    if (n <= 0) return;
    SQ_CHECK(!o.q8 || (o.scale && o.zero && o.bits >= 1 && o.bits <= 8), "CUDA add_rmsnorm_quant: codes need scale, "
             "zero and 1..8 bits (", o.bits, ")");
    launch_rmsnorm(h, add, w, n, d, eps, y, o, "add_rmsnorm", s);
}

size_t row_split_part(int n, int width) { return (size_t)n * ((width + kSplitCols - 1) / kSplitCols); }
size_t row_split_cnt(int n) { return 2 * (size_t)n; }

void silu_mul_rows(const float* g, const float* u, int64_t ld, int n, int ff, float* act, const RowQuant& o,
                   cudaStream_t s, const RowSync& sync) {
    if (n <= 0 || ff <= 0) return;
    SQ_CHECK(ld >= ff, "CUDA silu_mul_rows: row stride ", ld, " < width ", ff);
    SQ_CHECK(!o.q8 || (o.scale && o.zero && o.bits >= 1 && o.bits <= 8), "CUDA silu_mul_rows: codes need scale, "
             "zero and 1..8 bits (", o.bits, ")");
    if (!o.plain && n <= kRowSplitMaxRows && ff >= kSplitCols && sync.part && sync.cnt) {
        const int C = (ff + kSplitCols - 1) / kSplitCols;
        launch_pdl("silu_mul_split", silu_mul_split_kernel, dim3((unsigned)C, (unsigned)n), dim3(kSplitThreads), 0, s,
                   g, u, ld, ff, act, o.bits, o.clip, o.q8, o.scale, o.zero, reinterpret_cast<__nv_bfloat16*>(o.bf16),
                   sync.part, sync.cnt);
        return;
    }
    SQ_CHECK(act || o.q8 || o.bf16, "CUDA silu_mul_rows: no output");
    // Few wide rows (decode), or no act (its values then stay in registers up to 16 per thread): 1024
    // threads per row (14336 wide: 14 elements per thread).
    const int threads = (n < 64 || !act) && ff >= 2048 ? 1024 : 256;
    // Registers per thread: the fewest V that hold the row (≤ 64 registers at 1024 threads).
    auto k = o.plain || ff > 16 * threads ? silu_mul_rows_kernel<0>
             : ff <= 4 * threads          ? silu_mul_rows_kernel<4>
                                          : silu_mul_rows_kernel<16>;
    launch_pdl("silu_mul_rows", k, dim3((unsigned)n), dim3(threads), 0, s, g, u, ld, ff, act, o.bits, o.clip, o.q8,
               o.scale, o.zero, reinterpret_cast<__nv_bfloat16*>(o.bf16));
}

void rope(float* x, int n, int heads, int hd, int pos0, const int* pos_dev, const float* inv_freq, cudaStream_t s) {
    const int64_t total = (int64_t)n * heads * (hd / 2);
    if (total <= 0) return;
    rope_kernel<<<blocks_for(total, 256), 256, 0, s>>>(x, n, heads, hd, pos0, pos_dev, nullptr, inv_freq);
    SQ_CUDA_LAUNCH("rope");
}

void rope_varlen(float* x, int n, int heads, int hd, const int* positions, const float* inv_freq, cudaStream_t s) {
    const int64_t total = (int64_t)n * heads * (hd / 2);
    if (total <= 0) return;
    SQ_CHECK(positions, "CUDA rope_varlen: no positions");
    rope_kernel<<<blocks_for(total, 256), 256, 0, s>>>(x, n, heads, hd, 0, nullptr, positions, inv_freq);
    SQ_CUDA_LAUNCH("rope_varlen");
}

void silu_mul(float* g, const float* u, int64_t count, cudaStream_t s) {
    if (count <= 0) return;
    silu_mul_kernel<<<blocks_for(count, 256), 256, 0, s>>>(g, u, count);
    SQ_CUDA_LAUNCH("silu_mul");
}

void add_bias(float* y, const float* add, const float* bias, int n, int m, cudaStream_t s) {
    const int64_t count = (int64_t)n * m;
    if (count <= 0 || (!add && !bias)) return;
    add_bias_kernel<<<blocks_for(count, 256), 256, 0, s>>>(y, add, bias, count, m);
    SQ_CUDA_LAUNCH("add_bias");
}

void mul_signs(const float* x, const float* signs, int n, int k, float* y, cudaStream_t s) {
    const int64_t count = (int64_t)n * k;
    if (count <= 0) return;
    mul_signs_kernel<<<blocks_for(count, 256), 256, 0, s>>>(x, signs, count, k, y);
    SQ_CUDA_LAUNCH("mul_signs");
}

}  // namespace sq::cuda
