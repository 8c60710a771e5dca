// Scalar reference of the Q4_0 format (kernels/q4_format.h) and of its GEMV.
#pragma once
#include <cstdint>

#include "kernels/q4_format.h"

namespace sq {

// x [k] (k a multiple of 32) → k/32 blocks. Per block: m = the element of
// largest magnitude (first on ties), candidate scales d_i = fp16(−m·(1 −
// i/64) / 8), i = 0..15 (i = 0 is ggml's choice: m ↦ −8), codes
// c = clamp(round_half_even(x / d_i), −8, 7); the candidate with the least
// squared error Σ (x − d_i·c)² (in double; first on ties) is stored. d = 0
// (all codes 0) for an all-zero block.
void q4_quantize_row(const float* x, int64_t k, BlockQ4* out);

// blocks of one row → x [k] = d · c (exact in float32).
void q4_dequant_row(const BlockQ4* b, int64_t k, float* out);

// y [m, n] = x [m, k] · dequant(W)ᵀ in the order the AVX2 kernel sums
// (the specification of q4_gemv, bitwise): per output and block, 8 lanes
// l: p_l = x[8·0 + l]·w[l], then p_l = fma(x[8s + l], w[8s + l], p_l) for
// s = 1..3; acc_l = fma(p_l, d, acc_l) over the blocks in order; the result
// ((acc_0 + acc_1) + (acc_2 + acc_3)) + ((acc_4 + acc_5) + (acc_6 + acc_7)).
void q4_gemv_ref(const float* x, int64_t m, const BlockQ4* w, int64_t n, int64_t k, float* y);

}  // namespace sq
