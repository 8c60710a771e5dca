// Q8_0: 8-bit weights in blocks of 32 along a row, one fp16 scale per block
// (ggml's block_q8_0 layout; our own code). Used for the embedding table and
// lm_head of packed models. Plain C++17 (nvcc compiles it too).
//
//   w[k] = d · q[k],  q ∈ [−127, 127] int8, d fp16     → 34 B per 32 weights = 8.5 bits/weight
//
// d·q needs at most 11 + 7 significant bits, so it is exact in float32: a Q8
// matrix is a float32 matrix stored in 8.5 bits, and every kernel that
// multiplies the dequantized values computes what LinearF32 computes on them.
// Requantizing dequantized Q8_0 (e.g. a GGUF Q8_0 tensor) gives back the same
// blocks (q8_quantize_row divides by the stored fp16 scale).
#pragma once
#include <cstdint>

namespace sq {

constexpr int Q8_BLOCK = 32;

struct BlockQ8 {
    uint16_t d;           // fp16 scale
    int8_t q[Q8_BLOCK];   // codes
};
static_assert(sizeof(BlockQ8) == 34, "BlockQ8 must be 34 bytes (2 + 32)");

}  // namespace sq
