// GPTQ (Frantar et al. 2022) for one linear layer W [rows = C_out, cols = C_in],
// y = x Wᵀ, with the proxy Hessian H = XᵀX [cols, cols] of its calibration inputs.
//
// Quantizes columns left to right (or in act_order: decreasing diag H); after
// each column the rounding error e = (w - q) / U_tt is fed back into the not
// yet quantized columns through U, the upper Cholesky factor of
// (H + λI)⁻¹ = Uᵀ U, λ = damp · mean(diag H). Updates inside a block of
// `block` columns are immediate, to later columns they are applied once per
// block (lazy batch). Per-row scales are static: found before the loop on the
// (dead-column-zeroed) W with weight_scales (RTN grid + clip search), as in
// GPTQ's per-channel mode. Dead columns (H_jj == 0: the input channel is
// always 0) get W[:, j] = 0 and H_jj = 1, so they quantize to code 0.
//
// Cost: U in O(cols³/3) double flops (cols = 4096: ~2·10^10), the sweep in
// O(rows · cols²) float flops; parallel over columns (U) and row groups (sweep).
#pragma once
#include <cstdint>
#include <vector>

#include "quant/quantizer.h"

namespace sq {

struct GptqParams {
    WeightQuantParams quant;     // bits, grid and clip search of the static per-row scales
    float damp = 0.01f;          // λ = damp · mean(diag H)
    int block = 128;             // lazy-batch block width in columns
    bool act_order = true;       // process columns by decreasing diag H
    bool hdiag_scales = false;   // weight the scales' clip search by diag H
};

struct GptqStats {
    int64_t dead_columns = 0;
    double lambda = 0;           // the damping added to diag H
};

// H [cols, cols] += xᵀ x for a batch x [tokens, cols] (double accumulation,
// symmetric, parallel over rows of H).
void hessian_accumulate(const float* x, int64_t tokens, int64_t cols, double* H);

// U [n, n] upper triangular (row-major, zeros below the diagonal) with
// Uᵀ U = H⁻¹ for symmetric positive definite H [n, n], computed in double.
// sq::Error when H is not numerically positive definite.
std::vector<double> gptq_inverse_cholesky(const double* H, int64_t n);

// Returns codes (original column order) and the static per-row scales.
QuantWeights gptq_quantize(const float* w, int64_t rows, int64_t cols, const double* H, const GptqParams& p,
                           GptqStats* stats = nullptr);

}  // namespace sq
