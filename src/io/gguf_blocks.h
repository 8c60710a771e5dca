// GGML block formats read from GGUF files, bit-compatible with ggml's
// block_q8_0 / block_q4_0 / block_q4_1 / block_q4_K / block_q5_K / block_q6_K.
// Plain structs (no constructors) so C++ and CUDA can share this header.
// Half-precision fields are raw IEEE fp16 bits (sq::fp16_to_fp32 decodes them).
//
// A tensor row of n weights (n = GGUF ne[0], the input dimension) is n / QK
// consecutive blocks; rows follow each other with no padding.
#pragma once
#include <cstddef>
#include <cstdint>

namespace sq {

constexpr int QK8_0 = 32;
constexpr int QK4_0 = 32;
constexpr int QK4_1 = 32;
constexpr int QK_K = 256;     // super-block of the K-quants
constexpr int K_SCALE_SIZE = 12;  // 8 six-bit scales + 8 six-bit mins, packed

// Q8_0: x[i] = d * qs[i].   (2 + 32) bytes / 32 weights = 8.5 bits/weight.
struct block_q8_0 {
    uint16_t d;         // fp16 scale
    int8_t qs[QK8_0];   // signed quants
};
static_assert(sizeof(block_q8_0) == 2 + QK8_0, "block_q8_0 must be 34 bytes");

// Q4_0: x[i] = d * (q[i] - 8), q in [0, 15].   (2 + 16) / 32 = 4.5 bits/weight.
// Byte j holds weight j in its low nibble and weight j + 16 in its high nibble.
struct block_q4_0 {
    uint16_t d;
    uint8_t qs[QK4_0 / 2];
};
static_assert(sizeof(block_q4_0) == 2 + QK4_0 / 2, "block_q4_0 must be 18 bytes");

// Q4_1: x[i] = d * q[i] + m, q in [0, 15].   (2 + 2 + 16) / 32 = 5 bits/weight.
// Nibble order as Q4_0 (low nibbles: weights 0..15, high nibbles: 16..31).
struct block_q4_1 {
    uint16_t d;  // fp16 scale
    uint16_t m;  // fp16 minimum (offset)
    uint8_t qs[QK4_1 / 2];
};
static_assert(sizeof(block_q4_1) == 4 + QK4_1 / 2, "block_q4_1 must be 20 bytes");

// Q4_K: 256 weights in 8 sub-blocks of 32; sub-block s has a 6-bit scale sc_s
// and 6-bit min m_s:  x = d * sc_s * q - dmin * m_s, q in [0, 15].
// (2 + 2 + 12 + 128) bytes / 256 = 4.5 bits/weight.
// scales[12] packing (get_scale_min below): for s < 4, sc = scales[s] & 63,
// m = scales[s + 4] & 63; for s >= 4, the low 4 bits come from scales[s + 4]
// (sc: low nibble, m: high nibble) and the top 2 bits from the top 2 bits of
// scales[s - 4] (sc) and scales[s] (m).
// qs: 4 chunks of 32 bytes; chunk c holds sub-block 2c in its low nibbles and
// sub-block 2c + 1 in its high nibbles.
struct block_q4_K {
    uint16_t d;     // fp16 super-block scale for the scales
    uint16_t dmin;  // fp16 super-block scale for the mins
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q4_K) == 4 + K_SCALE_SIZE + QK_K / 2, "block_q4_K must be 144 bytes");

// Q5_K: as Q4_K plus a fifth bit per weight: q = nibble + 16 * bit, q in [0, 31].
// (2 + 2 + 12 + 32 + 128) bytes / 256 = 5.5 bits/weight.
// qh[l] bit 2c holds the fifth bit of weight l of sub-block 2c, bit 2c + 1
// that of weight l of sub-block 2c + 1 (l in [0, 32)).
struct block_q5_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q5_K) == 4 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2, "block_q5_K must be 176 bytes");

// Q6_K: 256 weights in 16 sub-blocks of 16 with int8 scales:
// x = d * scales[s] * (q - 32), q in [0, 63] (4 low bits in ql, 2 high in qh).
// (128 + 64 + 16 + 2) bytes / 256 = 6.5625 bits/weight.
// Two halves of 128 weights; in half h (ql += 64h, qh += 32h), for l < 32:
//   w[l]      = ql[l]      & 15 | ((qh[l] >> 0) & 3) << 4
//   w[l + 32] = ql[l + 32] & 15 | ((qh[l] >> 2) & 3) << 4
//   w[l + 64] = ql[l]      >> 4 | ((qh[l] >> 4) & 3) << 4
//   w[l + 96] = ql[l + 32] >> 4 | ((qh[l] >> 6) & 3) << 4
struct block_q6_K {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d;
};
static_assert(sizeof(block_q6_K) == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, "block_q6_K must be 210 bytes");

// Six-bit scale and min of sub-block s (0..7) of a Q4_K / Q5_K block.
inline void get_scale_min_k4(int s, const uint8_t* q, uint8_t* sc, uint8_t* m) {
    if (s < 4) {
        *sc = q[s] & 63;
        *m = q[s + 4] & 63;
    } else {
        *sc = (uint8_t)((q[s + 4] & 0x0f) | ((q[s - 4] >> 6) << 4));
        *m = (uint8_t)((q[s + 4] >> 4) | ((q[s] >> 6) << 4));
    }
}

}  // namespace sq
