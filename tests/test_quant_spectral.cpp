// Spectral split, energy statistics and the adaptive truncation module (quant/spectral).
//
//   build/specquant_tests --gtest_filter='Spectral*:AllocateBins*'   (SQ_TEST_SEED=n to replay)
//
// Float FFT bound used below: a radix-2-like FFT of length N has relative
// error ‖ΔF‖/‖F‖ ≲ c·log2(N)·u; r2c, mask and c2r twice that; we allow
// 20·log2(N)·u·‖W_i‖ per element (c = 10 per transform, generous against the
// ≈ 1 seen in practice, and still 10^4 times smaller than any dropped bin in
// these tests).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "quant/spectral.h"

#include "test_random.h"

namespace {

using namespace sq;

double row_norm(const float* v, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += (double)v[i] * v[i];
    return std::sqrt(s);
}

double fft_tol(int64_t n, double norm) {
    return 20.0 * std::max(1.0, std::log2((double)n)) * std::ldexp(1.0, -24) * norm;
}

// W' = C·Bᵀ in double.
std::vector<double> reconstruct(const SpectralSplit& s, const std::vector<float>& b) {
    const int64_t nc = 2 * (int64_t)s.K - 1;
    std::vector<double> out(s.rows * s.cols, 0.0);
    for (int64_t i = 0; i < s.rows; ++i)
        for (int64_t n = 0; n < s.cols; ++n) {
            double v = 0;
            for (int64_t c = 0; c < nc; ++c) v += (double)s.coef[i * nc + c] * b[n * nc + c];
            out[i * s.cols + n] = v;
        }
    return out;
}

const int64_t kLengths[] = {1, 2, 3, 8, 63, 64, 97, 576};

TEST(Spectral, AllBinsKeptGivesZeroResidual) {
    std::mt19937 rng(test_seed());
    for (int64_t n : kLengths) {
        const int64_t rows = 5, nb = n / 2 + 1;
        const std::vector<float> w = gaussian(rows * n, rng);
        const SpectralSplit s = spectral_split(w.data(), rows, n, std::vector<int>(rows, (int)nb));
        ASSERT_EQ(s.K, nb);
        const std::vector<float> b = spectral_basis(n, s.K);
        const std::vector<double> wp = reconstruct(s, b);
        for (int64_t i = 0; i < rows; ++i) {
            const double wn = row_norm(w.data() + i * n, n);
            EXPECT_LE(row_norm(s.residual.data() + i * n, n), 1e-5 * wn) << "N " << n;
            for (int64_t j = 0; j < n; ++j) ASSERT_NEAR(wp[i * n + j], w[i * n + j], 1e-5 * wn) << "N " << n;
        }
    }
}

TEST(Spectral, KeepingOneBinKeepsTheRowMean) {
    std::mt19937 rng(test_seed() + 1);
    for (int64_t n : kLengths) {
        const int64_t rows = 4;
        std::vector<float> w = gaussian(rows * n, rng);
        for (auto& v : w) v += 0.7f;
        std::vector<int> k(rows, 1);
        k[2] = 0;  // nothing kept: R = W exactly, C = 0
        const SpectralSplit s = spectral_split(w.data(), rows, n, k);
        ASSERT_EQ(s.K, 1);
        ASSERT_EQ((int64_t)s.coef.size(), rows);
        for (int64_t i = 0; i < rows; ++i) {
            double mean = 0;
            for (int64_t j = 0; j < n; ++j) mean += w[i * n + j];
            mean /= (double)n;
            if (k[i] == 0) {
                EXPECT_EQ(s.coef[i], 0.0f);
                for (int64_t j = 0; j < n; ++j) ASSERT_EQ(s.residual[i * n + j], w[i * n + j]);
                continue;
            }
            const double tol = fft_tol(n, row_norm(w.data() + i * n, n));
            EXPECT_NEAR(s.coef[i], mean * std::sqrt((double)n), tol);
            for (int64_t j = 0; j < n; ++j) ASSERT_NEAR(w[i * n + j] - s.residual[i * n + j], mean, tol) << "N " << n;
        }
    }
}

TEST(Spectral, BasisTimesCoefficientsMatchesFftPath) {
    std::mt19937 rng(test_seed() + 2);
    for (int64_t n : kLengths) {
        const int64_t rows = 9, nb = n / 2 + 1;
        const std::vector<float> w = gaussian(rows * n, rng);
        std::uniform_int_distribution<int> kd(0, (int)nb);
        std::vector<int> k(rows);
        for (auto& v : k) v = kd(rng);
        k[0] = (int)nb;  // Nyquist included whenever N is even
        const SpectralSplit s = spectral_split(w.data(), rows, n, k);
        const std::vector<float> b = spectral_basis(n, s.K);
        const std::vector<double> wp = reconstruct(s, b);
        const int64_t nc = 2 * (int64_t)s.K - 1;
        for (int64_t i = 0; i < rows; ++i) {
            const double wn = row_norm(w.data() + i * n, n), tol = fft_tol(n, wn);
            for (int64_t j = 0; j < n; ++j)
                ASSERT_NEAR(wp[i * n + j], (double)w[i * n + j] - s.residual[i * n + j], tol) << "N " << n << " k " << k[i];
            for (int64_t f = std::max(k[i], 1); f < s.K; ++f) {  // nothing beyond k_i
                ASSERT_EQ(s.coef[i * nc + f], 0.0f);
                ASSERT_EQ(s.coef[i * nc + s.K - 1 + f], 0.0f);
            }
            if (k[i] == 0) {
                ASSERT_EQ(s.coef[i * nc], 0.0f);
            }
            // Orthonormal basis: ‖C_i‖² = ‖W'_i‖² and ‖W_i‖² = ‖C_i‖² + ‖R_i‖².
            double c2 = 0, wp2 = 0, r2 = 0;
            for (int64_t c = 0; c < nc; ++c) c2 += (double)s.coef[i * nc + c] * s.coef[i * nc + c];
            for (int64_t j = 0; j < n; ++j)
                wp2 += wp[i * n + j] * wp[i * n + j], r2 += (double)s.residual[i * n + j] * s.residual[i * n + j];
            EXPECT_NEAR(c2, wp2, 1e-5 * wn * wn);
            EXPECT_NEAR(c2 + r2, wn * wn, 1e-5 * wn * wn);
        }
        // The library's own residual helper agrees with the FFT path.
        std::vector<float> r2(rows * n);
        spectral_residual(w.data(), rows, n, s.coef.data(), b.data(), nc, r2.data());
        for (int64_t i = 0; i < rows * n; ++i) ASSERT_NEAR(r2[i], s.residual[i], fft_tol(n, row_norm(w.data() + (i / n) * n, n)));
    }
}

TEST(Spectral, BasisIsOrthonormal) {
    for (int64_t n : {1, 2, 7, 8, 64, 97, 576}) {
        const int64_t nb = n / 2 + 1;
        for (int K : {1, 2, (int)nb}) {
            if (K > nb) continue;
            const std::vector<float> b = spectral_basis(n, K);
            const int64_t nc = 2 * (int64_t)K - 1;
            const bool nyq = (n % 2 == 0) && K == nb && K > 1;  // the sin column of Nyquist is zero
            for (int64_t c1 = 0; c1 < nc; ++c1)
                for (int64_t c2 = 0; c2 < nc; ++c2) {
                    double s = 0;
                    for (int64_t j = 0; j < n; ++j) s += (double)b[j * nc + c1] * b[j * nc + c2];
                    const bool zero_col = nyq && c1 == nc - 1;
                    const double expect = (c1 == c2 && !zero_col) ? 1.0 : 0.0;
                    ASSERT_NEAR(s, expect, 1e-5) << "N " << n << " K " << K << " cols " << c1 << "," << c2;
                }
        }
    }
    EXPECT_THROW(spectral_basis(64, 0), Error);
    EXPECT_THROW(spectral_basis(64, 34), Error);
}

TEST(Spectral, ParsevalAndEnergyFraction) {
    std::mt19937 rng(test_seed() + 3);
    for (int64_t n : kLengths) {
        const int64_t rows = 6, nb = n / 2 + 1;
        const std::vector<float> w = gaussian(rows * n, rng);
        const std::vector<float> p = spectral_power(w.data(), rows, n);
        for (int64_t i = 0; i < rows; ++i) {
            double s = 0;
            for (int64_t f = 0; f < nb; ++f) s += p[i * nb + f];
            const double e = row_norm(w.data() + i * n, n);
            EXPECT_NEAR(s, e * e, 1e-5 * e * e) << "N " << n;
        }
        std::vector<float> per;
        EXPECT_NEAR(spectral_energy_fraction_lowest(w.data(), rows, n, 1.0, &per), 1.0, 1e-6);
        EXPECT_EQ(spectral_energy_fraction_lowest(w.data(), rows, n, 0.0, &per), 0.0);
        ASSERT_EQ((int64_t)per.size(), rows);
    }
    // Hand cases, N = 100 (nb = 51, 20% -> 11 bins 0..10): a constant row has all
    // energy at DC; cos at f = 25 has none in the lowest 11; f = 10 has all.
    const int64_t n = 100;
    std::vector<float> w(4 * n);
    for (int64_t j = 0; j < n; ++j) {
        w[j] = 0.3f;
        w[n + j] = (float)std::cos(2 * M_PI * 25 * j / n);
        w[2 * n + j] = (float)std::sin(2 * M_PI * 10 * j / n);
        w[3 * n + j] = 0.0f;  // zero row counts as 1
    }
    std::vector<float> per;
    const double mean = spectral_energy_fraction_lowest(w.data(), 4, n, 0.2, &per);
    EXPECT_NEAR(per[0], 1.0, 1e-6);
    EXPECT_NEAR(per[1], 0.0, 1e-6);
    EXPECT_NEAR(per[2], 1.0, 1e-6);
    EXPECT_EQ(per[3], 1.0f);
    EXPECT_NEAR(mean, 0.75, 1e-6);
    // 0.19 -> ceil(9.69) = 10 bins 0..9: f = 10 falls out.
    spectral_energy_fraction_lowest(w.data(), 4, n, 0.19, &per);
    EXPECT_NEAR(per[2], 0.0, 1e-6);
    EXPECT_THROW(spectral_energy_fraction_lowest(w.data(), 4, n, 1.5), Error);
}

TEST(Spectral, Fp16RoundingIsAbsorbedByTheResidual) {
    std::mt19937 rng(test_seed() + 4);
    const int64_t rows = 7, n = 576;
    const std::vector<float> w = gaussian(rows * n, rng, 0.02f);
    std::vector<int> k = {1, 5, 16, 33, 64, 2, 289};
    SpectralSplit s = spectral_split(w.data(), rows, n, k);
    const std::vector<float> r_float = s.residual;
    spectral_round_fp16(w.data(), s);
    for (float c : s.coef) ASSERT_EQ(c, fp16_to_fp32(fp32_to_fp16(c)));
    std::vector<float> b = spectral_basis(n, s.K);
    for (float& v : b) v = fp16_to_fp32(fp32_to_fp16(v));
    const std::vector<double> wp = reconstruct(s, b);
    double moved = 0;
    for (int64_t i = 0; i < rows; ++i) {
        const double wn = row_norm(w.data() + i * n, n);
        for (int64_t j = 0; j < n; ++j) {
            // W = C16·B16ᵀ + R up to the float rounding of R (≤ u·|R| + accumulation).
            ASSERT_NEAR(wp[i * n + j] + s.residual[i * n + j], w[i * n + j], 1e-6 * wn);
            moved = std::max(moved, std::fabs((double)s.residual[i * n + j] - r_float[i * n + j]));
        }
    }
    EXPECT_GT(moved, 0.0) << "fp16 rounding of C and B must change the residual";
}

TEST(Spectral, SplitRejectsBadK) {
    std::vector<float> w(3 * 10, 1.0f);
    EXPECT_THROW(spectral_split(w.data(), 3, 10, {1, 2}), Error);
    EXPECT_THROW(spectral_split(w.data(), 3, 10, {1, 2, 7}), Error);  // nb = 6
    EXPECT_THROW(spectral_split(w.data(), 3, 10, {1, -1, 2}), Error);
    EXPECT_NO_THROW(spectral_split(w.data(), 3, 10, {0, 0, 0}));
}

// ---- truncation module ----

TEST(SpectralImportance, ScoresMatchDefinitions) {
    std::mt19937 rng(test_seed() + 5);
    const int64_t rows = 5, n = 64;
    std::vector<float> w = gaussian(rows * n, rng);
    for (int64_t j = 0; j < n; ++j) {
        w[3 * n + j] = 0.5f;                                            // DC only: entropy 0
        w[4 * n + j] = (float)std::cos(2 * M_PI * 7 * j / (double)n);   // one bin: entropy 0
    }
    const std::vector<float> am = row_importance(w.data(), rows, n, Importance::abs_mean);
    const std::vector<float> ax = row_importance(w.data(), rows, n, Importance::abs_max);
    const std::vector<float> l2 = row_importance(w.data(), rows, n, Importance::l2);
    const std::vector<float> en = row_importance(w.data(), rows, n, Importance::spectral_entropy);
    for (int64_t i = 0; i < rows; ++i) {
        double s = 0, mx = 0, q = 0;
        for (int64_t j = 0; j < n; ++j) {
            const double a = std::fabs(w[i * n + j]);
            s += a, mx = std::max(mx, a), q += a * a;
        }
        EXPECT_FLOAT_EQ(am[i], (float)(s / n));
        EXPECT_FLOAT_EQ(ax[i], (float)mx);
        EXPECT_FLOAT_EQ(l2[i], (float)std::sqrt(q));
        EXPECT_GE(en[i], 0.0f);
        EXPECT_LE(en[i], std::log(33.0) + 1e-5);
    }
    EXPECT_NEAR(en[3], 0.0, 1e-5);
    EXPECT_NEAR(en[4], 0.0, 1e-4);
    EXPECT_GT(en[0], 2.5f);  // white noise: close to ln 33 = 3.50 minus ~0.6 for exponential |F|² fluctuations
    EXPECT_EQ(importance_from_name("entropy"), Importance::spectral_entropy);
    EXPECT_EQ(importance_from_name("l2"), Importance::l2);
    EXPECT_STREQ(importance_name(Importance::abs_max), "abs_max");
    EXPECT_THROW(importance_from_name("svd"), Error);
}

void check_allocation(const std::vector<int>& k, const std::vector<float>& imp, int64_t budget, int kmin, int kmax) {
    int64_t sum = 0;
    for (int v : k) {
        ASSERT_GE(v, kmin);
        ASSERT_LE(v, kmax);
        sum += v;
    }
    ASSERT_EQ(sum, budget);
    for (size_t i = 0; i < k.size(); ++i)
        for (size_t j = 0; j < k.size(); ++j)
            if (imp[i] > imp[j]) {
                ASSERT_GE(k[i], k[j]) << "monotone: rows " << i << ", " << j;
            }
}

TEST(AllocateBins, BudgetMetExactlyAndMonotone) {
    std::mt19937 rng(test_seed() + 6);
    std::uniform_int_distribution<int> nd(1, 300), kmd(0, 3), span(0, 60), td(-3, 3), tie(0, 3);
    std::normal_distribution<float> g(0.0f, 1.0f);
    for (int trial = 0; trial < 500; ++trial) {
        const int64_t n = nd(rng);
        const int kmin = kmd(rng), kmax = kmin + span(rng);
        std::uniform_int_distribution<int64_t> bd(n * kmin, n * kmax);
        const int64_t budget = trial % 10 == 0 ? n * kmin + (trial % 20 == 0 ? 0 : n * (kmax - kmin)) : bd(rng);
        std::vector<float> imp(n);
        const bool ties = tie(rng) == 0;
        for (auto& v : imp) v = ties ? (float)(int)(2 * g(rng)) : std::exp(g(rng));  // heavy tails and exact ties
        const float temp = std::pow(10.0f, (float)td(rng));
        const std::vector<int> k = allocate_bins(imp, budget, kmin, kmax, temp);
        ASSERT_EQ((int64_t)k.size(), n);
        check_allocation(k, imp, budget, kmin, kmax);
        ASSERT_EQ(k, allocate_bins(imp, budget, kmin, kmax, temp)) << "deterministic";
    }
}

TEST(AllocateBins, TemperatureLimitsAndScaleFreedom) {
    std::mt19937 rng(test_seed() + 7);
    const int64_t n = 97;
    std::vector<float> imp(n);
    std::normal_distribution<float> g(0.0f, 1.0f);
    for (auto& v : imp) v = g(rng);
    const int64_t budget = 32 * n + 13;
    // T -> inf: uniform (every k in {32, 33}).
    for (float t : {std::numeric_limits<float>::infinity(), 1e6f}) {
        const std::vector<int> k = allocate_bins(imp, budget, 1, 289, t);
        for (int v : k) ASSERT_TRUE(v == 32 || v == 33) << v;
        check_allocation(k, imp, budget, 1, 289);
    }
    // Equal scores: uniform at any temperature.
    const std::vector<int> ku = allocate_bins(std::vector<float>(n, 3.0f), budget, 1, 289, 0.01f);
    for (int v : ku) ASSERT_TRUE(v == 32 || v == 33);
    // T -> 0: greedy. Scores 0..96 (z gap 0.036, logit gap 357 at T = 1e-4): the
    // top (budget - n·k_min) / (k_max - k_min) = 3020 / 288 = 10 rows saturate,
    // the next gets the remaining 140 bins on top of k_min, the rest stay at k_min.
    std::vector<float> ramp(n);
    for (int64_t i = 0; i < n; ++i) ramp[i] = (float)i;
    const std::vector<int> kg = allocate_bins(ramp, budget, 1, 289, 1e-4f);
    check_allocation(kg, ramp, budget, 1, 289);
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(kg[i], i >= n - 10 ? 289 : i == n - 11 ? 141 : 1) << i;
    // Lower temperature concentrates more: the spread of k grows.
    auto spread = [&](float t) {
        const std::vector<int> k = allocate_bins(imp, budget, 1, 289, t);
        return *std::max_element(k.begin(), k.end()) - *std::min_element(k.begin(), k.end());
    };
    EXPECT_GT(spread(0.5f), spread(2.0f));
    EXPECT_GT(spread(2.0f), spread(20.0f));
    // Scale-free: an affine change of the scores changes z only by rounding.
    std::vector<float> imp2 = imp;
    for (auto& v : imp2) v = 1000.0f * v + 5.0f;
    const std::vector<int> a = allocate_bins(imp, budget, 1, 289, 1.0f), b = allocate_bins(imp2, budget, 1, 289, 1.0f);
    for (int64_t i = 0; i < n; ++i) EXPECT_LE(std::abs(a[i] - b[i]), 1);
}

TEST(AllocateBins, RejectsInfeasibleBudgets) {
    const std::vector<float> imp = {1.0f, 2.0f, 3.0f};
    EXPECT_THROW(allocate_bins(imp, 2, 1, 10, 1.0f), Error);   // < 3·1
    EXPECT_THROW(allocate_bins(imp, 31, 1, 10, 1.0f), Error);  // > 3·10
    EXPECT_THROW(allocate_bins(imp, 6, 1, 10, 0.0f), Error);
    EXPECT_THROW(allocate_bins(imp, 6, 5, 4, 1.0f), Error);
    EXPECT_THROW(allocate_bins({}, 0, 1, 10, 1.0f), Error);
    EXPECT_THROW(allocate_bins({1.0f, std::numeric_limits<float>::quiet_NaN()}, 4, 1, 10, 1.0f), Error);
    EXPECT_EQ(allocate_bins(imp, 3, 1, 10, 1.0f), std::vector<int>({1, 1, 1}));
    EXPECT_EQ(allocate_bins(imp, 30, 1, 10, 1.0f), std::vector<int>({10, 10, 10}));
}

}  // namespace
