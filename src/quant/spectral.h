// Stage 2 of SpecQuant: per-row low-frequency Fourier split of a weight
// matrix W [rows = C_out, cols = C_in = N] (y = x Wᵀ), plus the adaptive
// truncation module (row importance, bin allocation).
//
// Spectrum of row i: F_i = rfft(W_i), nb = N/2 + 1 bins f = 0..N/2 (FFTW
// r2c, unnormalized: F_f = Σ_n W_n e^{-2πi f n / N}). Keeping the lowest k_i
// bins gives W'_i = irfft(F_i masked) and the residual R = W - W'.
//
// Basis and coefficients (our choice; the paper gives none): orthonormal
// columns, so that x·B is no larger than x (fp16-safe) and ‖C_i‖ = ‖W'_i‖.
// With K = max_i k_i, B [N, 2K-1] and C [rows, 2K-1] have columns
//     0          DC        B[n, 0]       = 1/√N            C[i, 0]       = Re F_0 / √N
//     f          cos f     B[n, f]       = √(2/N) cos θ    C[i, f]       =  √(2/N) Re F_f
//     K-1+f      sin f     B[n, K-1+f]   = √(2/N) sin θ    C[i, K-1+f]   = -√(2/N) Im F_f
// for f = 1..K-1, θ = 2π f n / N, so that W'_i = C_i · Bᵀ. The Nyquist bin
// (N even, f = N/2, only when K = N/2 + 1) has no sine and no factor 2: its
// cos column is (-1)^n / √N with C = Re F_{N/2} / √N, and its sin column and
// coefficient are zero. C[i, f] and C[i, K-1+f] are zero for f ≥ k_i.
// The layer then runs as y = (x B) Cᵀ + Q(x) Q(R)ᵀ.
#pragma once
#include <complex>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace sq {

// FFTW's planner is not thread-safe: every fftwf_plan_* / fftwf_destroy_plan
// in the project should hold this mutex (executing a plan is thread-safe).
std::mutex& fftw_planner_mutex();

// Unnormalized rFFT of every row: out [rows, cols/2 + 1] (parallel over rows).
std::vector<std::complex<float>> spectral_rfft(const float* w, int64_t rows, int64_t cols);

// Parseval-weighted power per bin, P [rows, cols/2 + 1]:
// P[i, f] = g_f |F_f|² / N with g_f = 1 for DC and Nyquist, 2 otherwise, so
// Σ_f P[i, f] = ‖W_i‖² (double sums, rounded to float at the end).
std::vector<float> spectral_power(const float* w, int64_t rows, int64_t cols);

// Fraction of each row's energy in its lowest ⌈fraction · (N/2 + 1)⌉ bins
// (Parseval-weighted as in spectral_power). per_row (optional) gets [rows]
// values; returns their mean. A zero row counts as fraction 1.
double spectral_energy_fraction_lowest(const float* w, int64_t rows, int64_t cols, double fraction,
                                       std::vector<float>* per_row = nullptr);

// The basis B [cols, 2K-1] described above, 1 ≤ K ≤ cols/2 + 1.
std::vector<float> spectral_basis(int64_t cols, int K);

struct SpectralSplit {
    int64_t rows = 0, cols = 0;
    int K = 1;                    // max k_i (at least 1); C has 2K-1 columns
    std::vector<int> k;           // [rows] bins kept per row
    std::vector<float> coef;      // C [rows, 2K-1], layout above
    std::vector<float> residual;  // R [rows, cols] = W - C·Bᵀ
};

// Split W with k [rows] bins kept per row, 0 ≤ k_i ≤ cols/2 + 1 (k_i = 0:
// nothing kept, R_i = W_i). C from the rFFT, R = W - irfft(masked spectrum)
// (float FFT, c2r; agrees with W - C·Bᵀ to float rounding).
SpectralSplit spectral_split(const float* w, int64_t rows, int64_t cols, const std::vector<int>& k);

// residual [rows, cols] = W - coef · basisᵀ, coef [rows, nc], basis [cols, nc]
// (double accumulation; zero coefficients are skipped).
void spectral_residual(const float* w, int64_t rows, int64_t cols, const float* coef, const float* basis, int64_t nc,
                       float* residual);

// For 16-bit storage of the spectral branch: rounds s.coef to fp16 values (in
// place, still stored as float) and recomputes s.residual = W - C16 · B16ᵀ,
// with B16 = spectral_basis(cols, K) rounded to fp16 when round_basis (else
// the float basis), so that the 4-bit residual absorbs the 16-bit rounding.
// w must be the matrix that was split.
void spectral_round_fp16(const float* w, SpectralSplit& s, bool round_basis = true);

// ---- adaptive truncation module ----

enum class Importance { abs_mean, abs_max, l2, spectral_entropy };

// "abs_mean", "abs_max", "l2", "entropy" (or "spectral_entropy"); sq::Error otherwise.
Importance importance_from_name(const std::string& name);
const char* importance_name(Importance kind);

// Importance score per row [rows]: mean |W_ij|, max |W_ij|, ‖W_i‖₂, or the
// spectral entropy H_i = -Σ_f p_f ln p_f of p_f = P[i, f] / Σ P[i, :]
// (spectral_power; a zero row has H = 0). Larger score -> more bins.
std::vector<float> row_importance(const float* w, int64_t rows, int64_t cols, Importance kind);

// Bins per row [rows] with Σ k_i == budget exactly, k_min ≤ k_i ≤ k_max:
//   z_i = (s_i - mean s) / std s      (population std; z = 0 when all scores are equal)
//   p_i = softmax(z / temperature)
//   t_i = clamp(λ p_i, k_min, k_max)  with λ such that Σ t_i = budget, i.e. the
//         mass clipped at k_max (k_min) is redistributed proportionally to p
//         among the unclipped rows (solved for log λ by bisection to double
//         resolution, in the log domain so no p_i underflows: T -> 0 is greedy
//         in score order)
//   k_i = floor(t_i), then +1 for the (budget - Σ floor) rows with the largest
//         fractional part (ties: higher score, then lower row index).
// Deterministic, monotone (s_i > s_j implies k_i ≥ k_j); temperature > 0,
// +inf gives the uniform split (all k_i within 1 of budget / rows).
// sq::Error when budget < rows·k_min or budget > rows·k_max, or arguments are invalid.
std::vector<int> allocate_bins(const std::vector<float>& importance, int64_t budget, int k_min, int k_max,
                               float temperature);

}  // namespace sq
