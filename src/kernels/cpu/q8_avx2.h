// Q8_0 GEMV on AVX2 (kernels/q8_format.h): the lm_head of decode steps and
// of the last prompt token, where it streams 49152 × 576 weights per token
// (SmolLM2) — 30 MB in Q8_0 against 113 MB in float32.
//
// Build: part of specquant_lib.  Test: specquant_tests --gtest_filter='Q8*'
// Bench: specquant_bench --benchmark_filter='Q8'
#pragma once
#include <cstdint>

#include "kernels/q8_format.h"

namespace sq {

// y [m, n] = x [m, k] · Wᵀ, W = dequant(w) [n, k] given as n rows of k/32
// blocks, k % 32 == 0, any m (meant for m ≤ 16: every weight byte is read
// once and applied to all m rows). Threads split the rows of W into
// contiguous ranges. Without AVX2 (or SQ_FORCE_SCALAR) a scalar loop runs
// after one loud line on stderr. Sums: per block Σ x·q in 8 lanes, times d,
// into 8 lane accumulators, then a horizontal add: LinearF32 on the
// dequantized weights rounds differently (within float error of the sum).
void q8_gemv(const float* x, int64_t m, const BlockQ8* w, int64_t n, int64_t k, float* y);

}  // namespace sq
