// Stage 1 of SpecQuant (SmoothQuant-style): per-input-channel scales that move
// activation outliers into the weights. X [tokens, C_in], W [C_out, C_in], y = x Wᵀ:
//
//     s_j = max_t |X_tj|^α / max_i |W_ij|^(1-α)       (computed in double)
//     X̂ = X · diag(s)⁻¹,   Ŵ = W · diag(s),   X̂ Ŵᵀ = X Wᵀ
//
// s_j is clamped to [s_min, s_max] (default [1e-5, 1e5]) so a near-dead
// channel cannot produce inf/0 scales that overflow fp16 weights or zero an
// activation. A channel whose activation max or weight max is 0 gets s_j = 1:
// the channel contributes nothing to y, any s is exact, and 1 leaves it as is.
// With several linears sharing the input (q/k/v, gate/up), weight_absmax is
// the max over all their rows (accumulate with smooth_weight_absmax).
#pragma once
#include <cstdint>
#include <vector>

namespace sq {

// s [n] from act_absmax [n] and weight_absmax [n]; 0 ≤ alpha ≤ 1.
std::vector<float> smooth_scales(const float* act_absmax, const float* weight_absmax, int64_t n, float alpha,
                                 float s_min = 1e-5f, float s_max = 1e5f);

// absmax [cols] = max(absmax, max_i |W_ij|): call once per linear sharing the
// input, starting from zeros.
void smooth_weight_absmax(const float* w, int64_t rows, int64_t cols, float* absmax);

// absmax [cols] = max(absmax, max_t |X_tj|) over a batch of activations x [tokens, cols].
void smooth_act_absmax(const float* x, int64_t tokens, int64_t cols, float* absmax);

// W [rows, cols] ← W · diag(s) (in place).
void smooth_apply_weight(float* w, int64_t rows, int64_t cols, const float* s);

// X [rows, cols] ← X · diag(s)⁻¹ (in place; x / s_j, a division so that the
// fold into an RMSNorm weight g_j / s_j rounds the same way).
void smooth_apply_act(float* x, int64_t rows, int64_t cols, const float* s);

}  // namespace sq
