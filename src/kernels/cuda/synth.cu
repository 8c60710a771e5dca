// Synthetic weights made on the device (specquant bench --shape: LLaMA-3-8B has
// 7.5G linear weights, which must not be built as floats on the host) and the
// fp32 → bf16 conversion of the BF16 baseline's activations.
// Build: cmake -DSPECQUANT_CUDA=ON. Used by src/model/model_cuda.cpp.
//
// Random values: splitmix64 of (seed, index), so a buffer's contents depend on
// its seed and size only (no RNG state, any grid).
#include <cmath>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/w4a4_gemm.h"

namespace sq::cuda {

namespace {

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform in [-1, 1): the top 24 bits of the hash.
__device__ __forceinline__ float unit(uint64_t seed, int64_t i) {
    return (float)(mix64(seed * 0x2545F4914F6CDD1Dull + (uint64_t)i) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

__global__ void fill_f32_kernel(float* p, int64_t count, float center, float amp, uint64_t seed) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
        p[i] = center + amp * unit(seed, i);
}

__global__ void fill_bf16_kernel(__nv_bfloat16* p, int64_t count, float amp, uint64_t seed) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
        p[i] = __float2bfloat16_rn(amp * unit(seed, i));
}

__global__ void f32_to_bf16_kernel(const float* __restrict__ x, int64_t count, __nv_bfloat16* __restrict__ y) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(x[i]);
}

// One thread per Q8_0 block (row j, block b): codes round(127·u) in [-127, 127] and a
// power-of-two scale 2^e, e ∈ {e0, e0 − 1} by hash, so d·q has ≤ 8 significant bits and the
// bf16 copy bf16(d·q) is exact: both hold the same matrix.
__global__ void q8_fill_kernel(int8_t* codes, uint16_t* scales, __nv_bfloat16* wb, int64_t n, int64_t k, int e0,
                               uint64_t seed) {
    const int64_t kb = k / 32;
    for (int64_t blk = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; blk < n * kb;
         blk += (int64_t)gridDim.x * blockDim.x) {
        const int e = e0 - (int)(mix64(seed ^ 0x5851F42D4C957F2Dull ^ (uint64_t)blk) & 1);
        const float dv = ldexpf(1.0f, e);
        scales[blk] = __half_as_ushort(__float2half_rn(dv));
        const int64_t j = blk / kb, i0 = (blk - j * kb) * 32;
        for (int x = 0; x < 32; ++x) {
            const int64_t i = j * k + i0 + x;
            const int c = max(-127, min(127, __float2int_rn(127.0f * unit(seed, i))));
            codes[i] = (int8_t)c;
            if (wb) wb[i] = __float2bfloat16_rn(dv * (float)c);
        }
    }
}

// One thread per layout byte: (row, k) of its two nibbles by inverting w4g_offset;
// random codes in [-8, 7] inside [n, k], 0 in the padding (the layout's invariant).
__global__ void w4g_fill_kernel(uint8_t* w, int64_t bytes, int64_t n, int64_t k, int64_t kblocks, uint64_t seed) {
    for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < bytes; o += (int64_t)gridDim.x * blockDim.x) {
        const int64_t blk = o / 512, within = o % 512, nb = blk / kblocks, kb = blk % kblocks;
        const int lane = (int)(within / 16), s = (int)(within % 16) / 4, j = (int)(within % 4);
        const int64_t row = nb * W4G_NB + lane / 4, col = kb * W4G_KB + 32 * s + 4 * (lane % 4) + j;
        const uint64_t h = mix64(seed + (uint64_t)o);
        const int lo = row < n && col < k ? (int)(h & 15) : 8, hi = row < n && col + 16 < k ? (int)((h >> 4) & 15) : 8;
        w[o] = (uint8_t)(((lo - 8) & 15) | (((hi - 8) & 15) << 4));
    }
}

__global__ void w4g_rowsum_kernel(const uint8_t* __restrict__ w, int64_t n, int64_t k, int64_t kblocks,
                                  int32_t* __restrict__ rowsum) {
    const int64_t row = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= n) return;
    const int64_t nb = row / W4G_NB, g = row % W4G_NB;
    int32_t sum = 0;
    for (int64_t i = 0; i < k; ++i) {
        const int64_t kb = i / W4G_KB, r = i % W4G_KB, s = r / 32, q = r % 32, hi = q / 16, t = (q % 16) / 4, b = q % 4;
        const uint8_t byte = w[(nb * kblocks + kb) * 512 + (g * 4 + t) * 16 + s * 4 + b];
        const int nib = hi ? byte >> 4 : byte & 15;
        sum += nib >= 8 ? nib - 16 : nib;
    }
    rowsum[row] = sum;
}

unsigned grid_for(int64_t count) { return (unsigned)std::min<int64_t>((count + 255) / 256, 132 * 16); }

}  // namespace

void fill_uniform_f32(float* p, int64_t count, float center, float amp, uint64_t seed, cudaStream_t s) {
    if (count <= 0) return;
    fill_f32_kernel<<<grid_for(count), 256, 0, s>>>(p, count, center, amp, seed);
    SQ_CUDA_LAUNCH("fill_uniform_f32");
}

void fill_uniform_bf16(uint16_t* p, int64_t count, float amp, uint64_t seed, cudaStream_t s) {
    if (count <= 0) return;
    fill_bf16_kernel<<<grid_for(count), 256, 0, s>>>(reinterpret_cast<__nv_bfloat16*>(p), count, amp, seed);
    SQ_CUDA_LAUNCH("fill_uniform_bf16");
}

void f32_to_bf16(const float* x, int64_t count, uint16_t* y, cudaStream_t s) {
    if (count <= 0) return;
    f32_to_bf16_kernel<<<grid_for(count), 256, 0, s>>>(x, count, reinterpret_cast<__nv_bfloat16*>(y));
    SQ_CUDA_LAUNCH("f32_to_bf16");
}

void q8_fill_random(int8_t* codes, uint16_t* scales, uint16_t* bf16, int64_t n, int64_t k, float amp, uint64_t seed,
                    cudaStream_t s) {
    SQ_CHECK(n > 0 && k > 0 && k % 32 == 0 && amp > 0.0f, "q8_fill_random: shape ", n, "x", k, ", amp ", amp);
    const int e0 = (int)std::floor(std::log2(amp / 127.0f));  // |d·q| ≤ amp, like fill_uniform's range
    SQ_CHECK(e0 - 1 >= -14 && e0 <= 15, "q8_fill_random: amp ", amp, " gives a scale outside fp16's normal range");
    q8_fill_kernel<<<grid_for(n * k / 32), 256, 0, s>>>(codes, scales, reinterpret_cast<__nv_bfloat16*>(bf16), n, k,
                                                        e0, seed);
    SQ_CUDA_LAUNCH("q8_fill_random");
}

void w4g_fill_random(uint8_t* w, int64_t n, int64_t k, uint64_t seed, int32_t* rowsum, cudaStream_t s) {
    SQ_CHECK(n > 0 && k > 0, "w4g_fill_random: shape ", n, "x", k);
    const int64_t bytes = w4g_bytes(n, k), kblocks = w4g_k_pad(k) / W4G_KB;
    w4g_fill_kernel<<<grid_for(bytes), 256, 0, s>>>(w, bytes, n, k, kblocks, seed);
    SQ_CUDA_LAUNCH("w4g_fill_random");
    w4g_rowsum_kernel<<<(unsigned)((n + 127) / 128), 128, 0, s>>>(w, n, k, kblocks, rowsum);
    SQ_CUDA_LAUNCH("w4g_rowsum");
}

}  // namespace sq::cuda
