// Scalar quantizers: the numeric definition every packed format and kernel
// must reproduce bit for bit. Model-agnostic, float matrices, row-major.
//
// Weights (W [rows = C_out, cols = C_in], y = x Wᵀ): INT-b symmetric, one
// float scale per output row, codes in [-2^(b-1), 2^(b-1)-1] stored as int8:
//
//     scale_i = clip_i · max_j |W_ij| / 2^(b-1)          (full_range, default)
//     scale_i = clip_i · max_j |W_ij| / (2^(b-1) - 1)    (full_range = false)
//     q_ij    = clamp(nearbyint(W_ij / scale_i), qmin, qmax)
//     Ŵ_ij    = q_ij · scale_i
//
// full_range uses all 2^b levels (for 4 bits: -8..7, the positive side
// clamps at 7·scale); the symmetric grid uses -qmax..qmax. On Gaussian rows
// with the clip search, full_range has 8% lower MSE at 4 bits for
// C_in ≥ 576 (docs/method.md, "Weight quantizer"; test
// QuantWeight.FullRangeBeatsSymmetricOnGaussianRows). clip_i is found per row
// on the grid 1.0, 0.99, ..., clip_min by minimising Σ_j d_j (W_ij - Ŵ_ij)²,
// d_j = 1 or, when given, diag(H)_j (H = XᵀX: the output error of a
// diagonal-only model of the layer input).
//
// Activations (one token = one row of n values): INT-b asymmetric, levels
// [0, 2^b - 1], dynamic per token; see act_quant_asym for the exact float
// operations (the reference for the AVX2 and CUDA quantizers).
//
// Rounding everywhere: std::nearbyint under the default rounding mode, i.e.
// round half to even, the same as _mm256_cvtps_epi32 (default MXCSR) and
// CUDA __float2int_rn, so SIMD/GPU kernels can match the reference exactly.
#pragma once
#include <cstdint>
#include <vector>

namespace sq {

struct WeightQuantParams {
    int bits = 4;              // 2..8
    bool full_range = true;    // scale denominator 2^(b-1) (true) or 2^(b-1)-1 (false)
    bool clip_search = true;   // false: clip = 1 for every row (plain RTN)
    float clip_min = 0.5f;     // grid 1.0 down to clip_min (inclusive) ...
    float clip_step = 0.01f;   // ... in steps of clip_step
};

// Codes and per-row scales of one quantized matrix: Ŵ[i, j] = codes[i*cols + j] * scales[i].
struct QuantWeights {
    int64_t rows = 0, cols = 0;
    int bits = 4;
    std::vector<int8_t> codes;  // [rows, cols], each in [qmin, qmax] of weight_qrange(bits)
    std::vector<float> scales;  // [rows], > 0 (an all-zero row gets scale 1 and codes 0)
};

// Integer range of a b-bit signed code: qmin = -2^(b-1), qmax = 2^(b-1) - 1,
// or qmin = -qmax when !full_range.
void weight_qrange(int bits, bool full_range, int* qmin, int* qmax);

// One row: the scale with the lowest (optionally diag-weighted) error on the
// clip grid; h_diag may be null (unweighted). Returns 1 for an all-zero row.
float weight_row_scale(const float* w, int64_t cols, const WeightQuantParams& p, const float* h_diag = nullptr);

// scales [rows] for every row of w [rows, cols] (parallel over rows).
std::vector<float> weight_scales(const float* w, int64_t rows, int64_t cols, const WeightQuantParams& p,
                                 const float* h_diag = nullptr);

// q = clamp(nearbyint(w / scale), qmin, qmax) for one value.
int weight_quant_value(float w, float scale, int qmin, int qmax);

// Round-to-nearest with the MSE clip search: scales from weight_scales, then codes.
QuantWeights weight_quantize_rtn(const float* w, int64_t rows, int64_t cols, const WeightQuantParams& p,
                                 const float* h_diag = nullptr);

// Codes for given scales [rows] (no search).
QuantWeights weight_quantize_with_scales(const float* w, int64_t rows, int64_t cols, const float* scales, int bits,
                                         bool full_range = true);

// out [rows, cols] = codes * scale.
void weight_dequantize(const QuantWeights& q, float* out);

// Per-token asymmetric activation quantization of one row x[0..n), exactly:
//
//     qmax  = 2^bits - 1                                       (bits 2..8)
//     hi    = clip * max(0, max_i x_i)        (float multiply)
//     lo    = clip * min(0, min_i x_i)
//     scale = (hi - lo) / (float)qmax         (float subtract, float divide)
//     if !(scale > 0): scale = 1              (all-zero row, or underflow)
//     zero  = (int32)nearbyint(-lo / scale)   (in [0, qmax] by construction, clamped anyway)
//     q_i   = clamp((int32)nearbyint(x_i / scale) + zero, 0, qmax)
//     x̂_i   = (q_i - zero) * scale
//
// The range always contains 0 so that zero is a valid code and x = 0 is
// exact. Division (not multiplication by 1/scale): kernels that multiply by a
// reciprocal differ in the last bit of x/scale and may flip a tie; they must
// divide, or be tested with a one-level tolerance.
void act_quant_asym(const float* x, int64_t n, int bits, float clip, uint8_t* q, float* scale, int32_t* zero);

// x̂ = (q - zero) * scale for one row.
void act_dequant_asym(const uint8_t* q, int64_t n, float scale, int32_t zero, float* out);

// Quantize-dequantize every row of x [rows, n] in place (the "fake quant"
// reference the W4A4 reference backend can call; parallel over rows).
void act_fake_quant_asym(float* x, int64_t rows, int64_t n, int bits, float clip);

}  // namespace sq
