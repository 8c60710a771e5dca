// Log-softmax of selected logits rows and the gather of target log-probs on
// the device, so an evaluation call copies back a few numbers per scored
// token instead of [n, vocab] logits (49152 floats = 192 KB a row for SmolLM2).
// Build: cmake -DSPECQUANT_CUDA=ON. Semantics: eval/loglik.cpp logprob_of:
// first argmax (strict >), max and sum of exp in double.
#include <cfloat>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/reduce.cuh"

namespace sq::cuda {

namespace {

constexpr int kThreads = 256;

// Better of two (value, index) candidates: larger value, then smaller index
// (the first argmax a left-to-right strict-> scan finds).
__device__ __forceinline__ void arg_better(float& v, int& i, float v2, int i2) {
    if (v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

// One block per query.
__global__ void logprob_kernel(const float* __restrict__ logits, int vocab, const int* __restrict__ rows,
                               const int* __restrict__ targets, double* __restrict__ logprob,
                               uint8_t* __restrict__ greedy) {
    __shared__ float red_v[32];
    __shared__ int red_i[32];
    __shared__ double red_d[32];
    const int qi = blockIdx.x;
    const float* row = logits + (size_t)rows[qi] * vocab;
    float best = -INFINITY;
    int bi = vocab;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) arg_better(best, bi, row[i], i);
    for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_xor_sync(0xffffffffu, best, o);
        const int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
        arg_better(best, bi, v2, i2);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        red_v[warp] = best;
        red_i[warp] = bi;
    }
    __syncthreads();
    best = red_v[0];
    bi = red_i[0];
    for (int w = 1; w < nw; ++w) arg_better(best, bi, red_v[w], red_i[w]);
    const double mx = (double)best;
    double sum = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) sum += exp((double)row[i] - mx);
    sum = block_sum(sum, red_d);
    if (threadIdx.x == 0) {
        const int tgt = targets[qi];
        logprob[qi] = (double)row[tgt] - mx - log(sum);
        greedy[qi] = bi == tgt ? 1 : 0;
    }
}

}  // namespace

void logprob_gather(const float* logits, int vocab, const int* rows, const int* targets, int nq, double* logprob,
                    uint8_t* greedy, cudaStream_t s) {
    if (nq <= 0) return;
    logprob_kernel<<<nq, kThreads, 0, s>>>(logits, vocab, rows, targets, logprob, greedy);
    SQ_CUDA_LAUNCH("logprob_gather");
}

}  // namespace sq::cuda
