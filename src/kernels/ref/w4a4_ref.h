// Scalar reference of the W4A4 kernels: the specification the AVX2 and CUDA
// versions are tested against (integer parts bit-exact). Formats: w4a4_format.h.
#pragma once
#include <cmath>
#include <cstdint>

namespace sq {

// Scale and zero point of one row from its range [mn, mx] (mn <= 0 <= mx;
// the range always holds 0 so z lands in [0, 2^bits − 1]): every backend's
// activation quantizer derives them here, so there is one formula. s > 0
// always: a constant-zero row gets s = 1 (codes = z, dequantized to 0).
// static inline: each translation unit (scalar or AVX2 target) keeps its own
// plain-float copy, bitwise the same operations.
static inline void act_params_from_range(float mx, float mn, int bits, float clip, float* s_out, int32_t* z_out) {
    const int qmax = (1 << bits) - 1;
    mx *= clip;
    mn *= clip;
    float s = (mx - mn) / (float)qmax;
    if (!(s > 0.0f)) s = 1.0f;
    const int32_t z = (int32_t)std::nearbyint(-mn / s);  // default rounding: half to even
    *s_out = s;
    *z_out = z < 0 ? 0 : (z > qmax ? qmax : z);
}

// Per-token asymmetric quantization of x [n, k] to `bits` (2..8).
// q [n, k] codes in [0, 2^bits − 1]; scale [n]; zero [n].
void act_quant_ref(const float* x, int64_t n, int64_t k, int bits, float clip, uint8_t* q, float* scale,
                   int32_t* zero);

// acc [n, m] = q [n, k] · codes [m, k]ᵀ in int32.
void gemm_w4a4_acc_ref(const uint8_t* q, int64_t n, int64_t k, const uint8_t* codes, int64_t m, int32_t* acc);

// y [n, m] = s_t · scale_j · (acc − z_t · rowsum_j)  (overwrites y).
void w4a4_epilogue_ref(const int32_t* acc, int64_t n, int64_t m, const float* act_scale, const int32_t* act_zero,
                       const float* w_scale, const int32_t* w_rowsum, float* y);

// The spectral branch's dot product Σ_{r < len} zb[r]·c[r] in the one order
// every CPU backend sums it: 8 lanes (lane l takes r ≡ l mod 8, r ascending,
// fused multiply-add), then ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)),
// which is what an 8-wide FMA loop and two horizontal adds compute. Terms
// with c[r] = 0 leave the lanes unchanged, so a kernel may stop at a row's
// last nonzero coefficient.
float spectral_dot_ref(const float* zb, const float* c, int64_t len);

// Per-token asymmetric fake quantization of one vector (KV cache entries):
// x ← s · (q − z) with the same rounding as act_quant_ref.
void fake_quant_asym_ref(float* x, int64_t k, int bits, float clip);

// A KV cache entry: fake_quant_asym_ref, around shift when one is given:
// x ← shift + s·(q − z) of (x − shift), each step rounded to float
// (the subtraction, then the fake quantization, then the addition).
void kv_fake_quant_ref(float* x, int64_t k, int bits, float clip, const float* shift);

}  // namespace sq
