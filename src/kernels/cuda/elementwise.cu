// Element-wise and row-wise ops of the decoder: embedding gather, RMSNorm
// (optionally fused with the residual add), RoPE, SwiGLU, bias, sign flips.
// Build: cmake -DSPECQUANT_CUDA=ON. Semantics: kernels/cpu/ops.h; multiplies
// whose order the CPU fixes use __fmul_rn/__fsub_rn/__fadd_rn (no FMA contraction).
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"
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

// One block per token row; the row is read twice (sum of squares, scale) from L1/L2.
__global__ void rmsnorm_kernel(float* __restrict__ h, const float* __restrict__ add, const float* __restrict__ w,
                               int d, float eps, float* __restrict__ y) {
    __shared__ float red[32];
    const size_t base = (size_t)blockIdx.x * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = h[base + i];
        if (add) {
            v = __fadd_rn(v, add[base + i]);
            h[base + i] = v;
        }
        ss += v * v;
    }
    ss = block_sum(ss, red);
    const float r = 1.0f / sqrtf(ss / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) y[base + i] = __fmul_rn(w[i], __fmul_rn(h[base + i], r));
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
    const float ang = __fmul_rn((float)p, inv_freq[i]);
    const float c = cosf(ang), sn = sinf(ang);
    float* v = x + th * hd;
    const float a = v[i], b = v[i + half];
    v[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, sn));
    v[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, sn));
}

__global__ void silu_mul_kernel(float* __restrict__ g, const float* __restrict__ u, int64_t count) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const float x = g[i];
    g[i] = __fmul_rn(__fdiv_rn(x, __fadd_rn(1.0f, expf(-x))), u[i]);
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

void rmsnorm(const float* x, const float* w, int n, int d, float eps, float* y, cudaStream_t s) {
    if (n <= 0) return;
    // h is only read when add is null
    rmsnorm_kernel<<<n, kRowThreads, 0, s>>>(const_cast<float*>(x), nullptr, w, d, eps, y);
    SQ_CUDA_LAUNCH("rmsnorm");
}

void add_rmsnorm(float* h, const float* add, const float* w, int n, int d, float eps, float* y, cudaStream_t s) {
    if (n <= 0) return;
    rmsnorm_kernel<<<n, kRowThreads, 0, s>>>(h, add, w, d, eps, y);
    SQ_CUDA_LAUNCH("add_rmsnorm");
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
