// Q4_0: 4-bit weights in blocks of 32 along a row, one fp16 scale per block
// (ggml's block_q4_0 layout; our own code). An option for the embedding
// table and lm_head of packed models (`--embed-bits 4`): SmolLM2's tied
// 49152 × 576 table is 15.9 MB instead of 30.1 MB in Q8_0. Plain C++17.
//
//   w[i] = d · c_i,  c_i ∈ [−8, 7],  d fp16    → 18 B per 32 weights = 4.5 bits/weight
//   qs[i] low nibble = c_i + 8 (i < 16), high nibble = c_{i+16} + 8
//
// d·c needs at most 11 + 4 significant bits, so it is exact in float32: a
// Q4 matrix is a float32 matrix stored in 4.5 bits (as for Q8_0).
#pragma once
#include <cstdint>

namespace sq {

constexpr int Q4_BLOCK = 32;

struct BlockQ4 {
    uint16_t d;                 // fp16 scale
    uint8_t qs[Q4_BLOCK / 2];   // codes + 8, two per byte (see above)
};
static_assert(sizeof(BlockQ4) == 18, "BlockQ4 must be 18 bytes (2 + 16)");

}  // namespace sq
