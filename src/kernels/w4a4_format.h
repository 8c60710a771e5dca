// The W4A4 packed formats, shared by the reference, AVX2 and CUDA kernels.
// Plain C++17 (nvcc compiles it too). Sizes in bits per weight are exact.
//
// Weights (per output channel, symmetric INT4):
//   codes   [C_out, ceil(C_in/2)] uint8: weight k of a row is the nibble
//           (k & 1 ? hi : lo) of byte k/2, two's complement in [-8, 7].
//   scale   [C_out] float32: w ≈ scale · code
//   rowsum  [C_out] int32: Σ_k code_k (zero-point correction, see below)
//   → 4 bits/weight + 64 bits/row (4.11 bpw at C_in = 576, 4.02 at 4096).
//
// Activations (per token, asymmetric, dynamic, INT4 by default):
//   q = clamp(round_half_even(x / s) + z, 0, 2^b − 1),
//   s = (clip·max(x) − clip·min(x)) / (2^b − 1)  (max ≥ 0 ≥ min forced),
//   z = round_half_even(−clip·min(x) / s)      → x ≈ s · (q − z)
//
// Integer GEMM and float epilogue (the specification of every backend):
//   acc[t, j] = Σ_k q[t, k] · code[j, k]                    (int32, exact)
//   y[t, j]   = s_t · scale_j · (acc[t, j] − z_t · rowsum_j)
//             + spectral[t, j] + bias_j                      (float32)
//   spectral  = (x̂ · B) · C16ᵀ   B [C_in, r] fixed basis, C16 [C_out, r] fp16
#pragma once
#include <cstdint>

namespace sq {

constexpr int W4_MIN = -8, W4_MAX = 7;

inline uint8_t w4_pack(int lo, int hi) { return (uint8_t)((lo & 0xF) | ((hi & 0xF) << 4)); }

// Nibble k of a packed row, sign-extended to [-8, 7].
inline int w4_get(const uint8_t* row, int64_t k) {
    const int nib = (row[k >> 1] >> ((k & 1) * 4)) & 0xF;
    return nib >= 8 ? nib - 16 : nib;
}

inline int64_t w4_row_bytes(int64_t c_in) { return (c_in + 1) / 2; }

}  // namespace sq
