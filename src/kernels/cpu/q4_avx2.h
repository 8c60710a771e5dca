// Q4_0 GEMV on AVX2 (kernels/q4_format.h): the 4-bit embedding table as
// lm_head of decode steps (SmolLM2: 49152 × 576 weights per token, 15.9 MB
// against 30.1 MB in Q8_0).
//
// Build: part of specquant_lib.  Test: specquant_tests --gtest_filter='Q4*'
#pragma once
#include <cstdint>

#include "kernels/q4_format.h"

namespace sq {

// y [m, n] = x [m, k] · dequant(W)ᵀ, W given as n rows of k/32 blocks,
// k % 32 == 0, any m (meant for m ≤ 16: each weight byte is read once and
// applied to all m rows); threads take contiguous ranges of rows. Bitwise
// q4_gemv_ref (kernels/ref/q4_ref.h). Without AVX2 (or SQ_FORCE_SCALAR) the
// reference runs after one loud line on stderr.
void q4_gemv(const float* x, int64_t m, const BlockQ4* w, int64_t n, int64_t k, float* y);

}  // namespace sq
