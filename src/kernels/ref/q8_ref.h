// Scalar reference of the Q8_0 format (kernels/q8_format.h).
#pragma once
#include <cstdint>

#include "kernels/q8_format.h"

namespace sq {

// x [k] (k a multiple of 32) → k/32 blocks: d = fp16(max|x| / 127),
// q = clamp(round_half_even(x / d), −127, 127) with d as stored (0 when d = 0).
void q8_quantize_row(const float* x, int64_t k, BlockQ8* out);

// blocks of one row → x [k] = d · q (exact in float32).
void q8_dequant_row(const BlockQ8* b, int64_t k, float* out);

}  // namespace sq
