// The W4A4 CUDA epilogues' shared arithmetic (w4a4_gemm.cu, w4a4_wgmma.cu, quant.cu): y's scale
// product, and the fused spectral branch's dot product (spectral_dot_ref, kernels/ref/w4a4_ref.cpp)
// bit for bit.
#pragma once

namespace sq::cuda {

// y before the spectral branch and bias (w4a4_format.h, w4a4_epilogue_ref):
// (s_t · scale_j) · (float)(acc − z_t · rowsum_j), each product rounded.
__device__ __forceinline__ float epi_base(float st, float ws, int acc, int zt, int rs) {
    return __fmul_rn(__fmul_rn(st, ws), (float)(acc - zt * rs));
}

// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)): the 8 fma lanes' sum of spectral_dot_ref and of
// the CPU's gemm_f32 tiles (hsum4_ps), rounded at every step.
__device__ __forceinline__ float lane_sum(const float* a) {
    return __fadd_rn(__fadd_rn(__fadd_rn(a[0], a[1]), __fadd_rn(a[2], a[3])),
                     __fadd_rn(__fadd_rn(a[4], a[5]), __fadd_rn(a[6], a[7])));
}

// lane_sum over groups of 8 adjacent lanes of a warp (lane l % 8 holding fma lane l % 8), by
// shuffles in the same order: (l0 + l1), then pairs of those, then the halves. Every lane of
// a group gets its group's sum; all 32 lanes must call it (warp-uniform control flow).
__device__ __forceinline__ float lane8_sum(float a) {
    const float s1 = __fadd_rn(a, __shfl_xor_sync(0xffffffffu, a, 1));
    const float s2 = __fadd_rn(s1, __shfl_xor_sync(0xffffffffu, s1, 2));
    return __fadd_rn(s2, __shfl_xor_sync(0xffffffffu, s2, 4));
}

// spectral_dot_ref (kernels/ref/w4a4_ref.cpp) bit for bit: 8 fma lanes by r mod 8, pairwise sum.
__device__ __forceinline__ float spec_dot(const float* __restrict__ z, const float* __restrict__ c, int len) {
    float l0 = 0.0f, l1 = 0.0f, l2 = 0.0f, l3 = 0.0f, l4 = 0.0f, l5 = 0.0f, l6 = 0.0f, l7 = 0.0f;
    int r = 0;
    for (; r + 8 <= len; r += 8) {
        l0 = __fmaf_rn(z[r], c[r], l0), l1 = __fmaf_rn(z[r + 1], c[r + 1], l1);
        l2 = __fmaf_rn(z[r + 2], c[r + 2], l2), l3 = __fmaf_rn(z[r + 3], c[r + 3], l3);
        l4 = __fmaf_rn(z[r + 4], c[r + 4], l4), l5 = __fmaf_rn(z[r + 5], c[r + 5], l5);
        l6 = __fmaf_rn(z[r + 6], c[r + 6], l6), l7 = __fmaf_rn(z[r + 7], c[r + 7], l7);
    }
    if (r < len) l0 = __fmaf_rn(z[r], c[r], l0);
    if (r + 1 < len) l1 = __fmaf_rn(z[r + 1], c[r + 1], l1);
    if (r + 2 < len) l2 = __fmaf_rn(z[r + 2], c[r + 2], l2);
    if (r + 3 < len) l3 = __fmaf_rn(z[r + 3], c[r + 3], l3);
    if (r + 4 < len) l4 = __fmaf_rn(z[r + 4], c[r + 4], l4);
    if (r + 5 < len) l5 = __fmaf_rn(z[r + 5], c[r + 5], l5);
    if (r + 6 < len) l6 = __fmaf_rn(z[r + 6], c[r + 6], l6);
    const float l[8] = {l0, l1, l2, l3, l4, l5, l6, l7};
    return lane_sum(l);
}

}  // namespace sq::cuda
