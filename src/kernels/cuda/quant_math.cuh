// The per-element rounding steps of the reference quantizers (kernels/ref/w4a4_ref.cpp),
// shared by every kernel that quantizes (quant.cu, elementwise.cu) so that they cannot
// drift: explicitly rounded intrinsics, no FMA contraction, NaN handled as the reference.
#pragma once
#include <cuda_runtime.h>

namespace sq::cuda {

// (s, z) of asym_params() from the row's max (≥ 0) and min (≤ 0).
__device__ __forceinline__ void asym_params(float mx, float mn, int bits, float clip, float* s_out, int* z_out) {
    const int qmax = (1 << bits) - 1;
    mx = __fmul_rn(mx, clip);
    mn = __fmul_rn(mn, clip);
    float s = __fdiv_rn(__fsub_rn(mx, mn), (float)qmax);
    if (!(s > 0.0f)) s = 1.0f;
    int z = (int)rintf(__fdiv_rn(-mn, s));
    z = z < 0 ? 0 : (z > qmax ? qmax : z);
    *s_out = s;
    *z_out = z;
}

// One element: clamp(round_half_even(x / s) + z, 0, qmax); NaN -> z.
__device__ __forceinline__ int quant_one(float x, float s, int z, int qmax) {
    const float v = __fadd_rn(rintf(__fdiv_rn(x, s)), (float)z);
    const float c = v != v ? (float)z : (v < 0.0f ? 0.0f : ((float)qmax < v ? (float)qmax : v));
    return (int)c;
}

// std::max / std::min as the reference applies them: NaN never replaces the running value.
__device__ __forceinline__ float ref_max(float a, float b) { return a < b ? b : a; }
__device__ __forceinline__ float ref_min(float a, float b) { return b < a ? b : a; }

// Max/min over a warp's running values; every lane gets both (order-free).
__device__ __forceinline__ void warp_range(float& mx, float& mn) {
    for (int o = 16; o > 0; o >>= 1) {
        mx = ref_max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        mn = ref_min(mn, __shfl_xor_sync(0xffffffffu, mn, o));
    }
}

// Row max/min (each thread's running values, started at 0: the range always contains 0)
// over the block; every thread gets both. Order-free, so any block size gives the same
// result. red: __shared__ scratch of 64 floats.
__device__ __forceinline__ void block_range(float& mx, float& mn, float* red) {
    warp_range(mx, mn);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();  // red may still be read by an earlier reduction
    if (lane == 0) red[warp] = mx, red[32 + warp] = mn;
    __syncthreads();
    float a = 0.0f, b = 0.0f;
    for (int w = 0; w < nw; ++w) a = ref_max(a, red[w]), b = ref_min(b, red[32 + w]);
    mx = a, mn = b;
}

// A row's quantizer from each thread's running (mx, mn): block_range, then
// asym_params; every thread gets (s, z), thread 0 also stores them at *scale, *zero.
__device__ __forceinline__ void block_row_params(float mx, float mn, float* red, int bits, float clip, float* scale,
                                                 int* zero, float* s, int* z) {
    block_range(mx, mn, red);
    asym_params(mx, mn, bits, clip, s, z);
    if (threadIdx.x == 0) *scale = *s, *zero = *z;
}

// The RoPE rotation of one pair (rope_kernel in elementwise.cu and rope_kv_kernel in
// quant.cu run this one function, so their bits agree).
__device__ __forceinline__ void rope_pair(float a, float b, int p, float inv_freq, float* ra, float* rb) {
    const float ang = __fmul_rn((float)p, inv_freq);
    const float c = cosf(ang), sn = sinf(ang);
    *ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, sn));
    *rb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, sn));
}

}  // namespace sq::cuda
