// GPTQ (quant/gptq): the inverse Cholesky factor, the reduction to RTN for a
// diagonal H, the error reduction on correlated inputs, dead columns.
//
//   build/specquant_tests --gtest_filter='Gptq*'      (SQ_TEST_SEED=n to replay)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "core/error.h"
#include "quant/gptq.h"
#include "quant/quantizer.h"

#include "test_random.h"

namespace {

using namespace sq;

// ‖X (W - Ŵ)ᵀ‖² in double, X [tokens, cols], W [rows, cols].
double output_error(const std::vector<float>& x, int64_t tokens, const std::vector<float>& w, const QuantWeights& q) {
    const int64_t rows = q.rows, cols = q.cols;
    std::vector<double> d(rows * cols);
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j)
            d[i * cols + j] = (double)w[i * cols + j] - (double)q.codes[i * cols + j] * q.scales[i];
    double e = 0;
    for (int64_t t = 0; t < tokens; ++t)
        for (int64_t i = 0; i < rows; ++i) {
            double y = 0;
            for (int64_t j = 0; j < cols; ++j) y += (double)x[t * cols + j] * d[i * cols + j];
            e += y * y;
        }
    return e;
}

double output_energy(const std::vector<float>& x, int64_t tokens, const std::vector<float>& w, int64_t rows,
                     int64_t cols) {
    double e = 0;
    for (int64_t t = 0; t < tokens; ++t)
        for (int64_t i = 0; i < rows; ++i) {
            double y = 0;
            for (int64_t j = 0; j < cols; ++j) y += (double)x[t * cols + j] * w[i * cols + j];
            e += y * y;
        }
    return e;
}

std::vector<double> hessian(const std::vector<float>& x, int64_t tokens, int64_t cols) {
    std::vector<double> h(cols * cols, 0.0);
    hessian_accumulate(x.data(), tokens, cols, h.data());
    return h;
}

void expect_codes_in_range(const QuantWeights& q) {
    int qmin, qmax;
    weight_qrange(q.bits, true, &qmin, &qmax);
    for (int8_t c : q.codes) {
        ASSERT_GE(c, qmin);
        ASSERT_LE(c, qmax);
    }
}

TEST(Gptq, HessianAccumulateMatchesNaive) {
    std::mt19937 rng(test_seed());
    const int64_t tokens = 23, cols = 19;
    const std::vector<float> x = gaussian(tokens * cols, rng);
    std::vector<double> h(cols * cols, 1.0);  // accumulates onto existing values
    hessian_accumulate(x.data(), tokens, cols, h.data());
    for (int64_t a = 0; a < cols; ++a)
        for (int64_t b = 0; b < cols; ++b) {
            double s = 1.0;
            for (int64_t t = 0; t < tokens; ++t) s += (double)x[t * cols + a] * x[t * cols + b];
            EXPECT_NEAR(h[a * cols + b], s, 1e-12 * (1 + std::fabs(s)));
        }
}

TEST(Gptq, InverseCholeskyFactor) {
    std::mt19937 rng(test_seed() + 1);
    for (int64_t n : {1, 2, 5, 37, 130}) {
        const std::vector<float> a = gaussian(n * n, rng);
        std::vector<double> h(n * n);
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < n; ++j) {
                double s = i == j ? 0.5 * n : 0.0;
                for (int64_t k = 0; k < n; ++k) s += (double)a[i * n + k] * a[j * n + k];
                h[i * n + j] = s;
            }
        const std::vector<double> u = gptq_inverse_cholesky(h.data(), n);
        for (int64_t i = 0; i < n; ++i) {
            ASSERT_GT(u[i * n + i], 0.0);
            for (int64_t j = 0; j < i; ++j) ASSERT_EQ(u[i * n + j], 0.0) << "U must be upper triangular";
        }
        // (Uᵀ U) H = I
        std::vector<double> hinv(n * n, 0.0);
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < n; ++j) {
                double s = 0;
                for (int64_t k = 0; k <= std::min(i, j); ++k) s += u[k * n + i] * u[k * n + j];
                hinv[i * n + j] = s;
            }
        double worst = 0;
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < n; ++j) {
                double s = 0;
                for (int64_t k = 0; k < n; ++k) s += hinv[i * n + k] * h[k * n + j];
                worst = std::max(worst, std::fabs(s - (i == j ? 1.0 : 0.0)));
            }
        EXPECT_LT(worst, 1e-9) << "n " << n;
    }
    const double neg[4] = {-1.0, 0.0, 0.0, 1.0};
    EXPECT_THROW(gptq_inverse_cholesky(neg, 2), Error);
}

// With a diagonal H, U is diagonal, no error is propagated, and GPTQ must give
// exactly the RTN codes for the same scales, in either column order.
TEST(Gptq, DiagonalHessianReducesToRtn) {
    std::mt19937 rng(test_seed() + 2);
    const int64_t rows = 37, cols = 150;
    const std::vector<float> w = gaussian(rows * cols, rng);
    std::vector<double> h(cols * cols, 0.0);
    std::uniform_real_distribution<double> ud(0.1, 10.0);
    for (int64_t j = 0; j < cols; ++j) h[j * cols + j] = ud(rng);
    for (bool act_order : {false, true})
        for (int block : {1, 7, 128, 1000}) {
            GptqParams p;
            p.act_order = act_order;
            p.block = block;
            const QuantWeights g = gptq_quantize(w.data(), rows, cols, h.data(), p);
            const QuantWeights r = weight_quantize_rtn(w.data(), rows, cols, p.quant);
            ASSERT_EQ(g.scales, r.scales);
            ASSERT_EQ(g.codes, r.codes) << "act_order " << act_order << " block " << block;
        }
}

// The block size only changes when updates are applied, not what they are:
// results must agree up to float reassociation (compare output error, and
// nearly all codes).
TEST(Gptq, BlockSizeInvariance) {
    std::mt19937 rng(test_seed() + 3);
    const int64_t tokens = 300, cols = 96, rows = 24;
    const std::vector<float> z = gaussian(tokens * cols, rng), a = gaussian(cols * cols, rng);
    std::vector<float> x(tokens * cols, 0.0f);
    for (int64_t t = 0; t < tokens; ++t)
        for (int64_t k = 0; k < cols; ++k)
            for (int64_t j = 0; j < cols; ++j) x[t * cols + j] += z[t * cols + k] * a[k * cols + j];
    const std::vector<double> h = hessian(x, tokens, cols);
    const std::vector<float> w = gaussian(rows * cols, rng);
    GptqParams p;
    p.block = cols;  // one block: all updates immediate
    const QuantWeights ref = gptq_quantize(w.data(), rows, cols, h.data(), p);
    for (int block : {1, 5, 32}) {
        p.block = block;
        const QuantWeights q = gptq_quantize(w.data(), rows, cols, h.data(), p);
        int64_t diff = 0;
        for (size_t i = 0; i < q.codes.size(); ++i) diff += q.codes[i] != ref.codes[i];
        EXPECT_LE(diff, (int64_t)q.codes.size() / 100) << "block " << block;
        const double e0 = output_error(x, tokens, w, ref), e1 = output_error(x, tokens, w, q);
        EXPECT_NEAR(e1, e0, 0.02 * e0) << "block " << block;
    }
}

// Fixed layer: X = Z·A (512 tokens, C_in 256, Gaussian Z and mixing A), W
// Gaussian [64, 256], 4 bits, the same static scales for both methods.
// Derivation: RTN's rounding errors δ (variance σ² per weight, independent)
// cost E‖X δᵀ‖² = σ² Σ_t H_tt per row. GPTQ pays for column t only
// δ_t² / [H_F⁻¹]_tt = δ_t² / U_tt² (F = the columns not yet quantized), the
// variance of x_t left unexplained by the later columns, so
//     GPTQ / RTN ≈ Σ_t 1/U_tt² / Σ_t H_tt        (damped, in processing order).
// For this H that predicts 0.42 (act_order) / 0.45 (natural order), ≈ (n+1)/2n
// for a square Gaussian mixing; measured 0.40 / 0.45 here and 0.41-0.46 on
// five other seeds. Asserted: within 20% of the prediction (clamping at the
// clip range makes GPTQ's errors slightly non-uniform) and below 0.6.
TEST(Gptq, BeatsRtnOnCorrelatedInputs) {
    std::mt19937 rng(20240611);
    const int64_t tokens = 512, cols = 256, rows = 64;
    const std::vector<float> z = gaussian(tokens * cols, rng), a = gaussian(cols * cols, rng, 1.0f / 16.0f);
    std::vector<float> x(tokens * cols, 0.0f);
    for (int64_t t = 0; t < tokens; ++t)
        for (int64_t k = 0; k < cols; ++k) {
            const float zk = z[t * cols + k];
            for (int64_t j = 0; j < cols; ++j) x[t * cols + j] += zk * a[k * cols + j];
        }
    const std::vector<double> h = hessian(x, tokens, cols);
    const std::vector<float> w = gaussian(rows * cols, rng, 0.05f);
    GptqParams p;
    const QuantWeights rtn = weight_quantize_rtn(w.data(), rows, cols, p.quant);
    const double e_rtn = output_error(x, tokens, w, rtn);
    double mean_diag = 0;
    for (int64_t j = 0; j < cols; ++j) mean_diag += h[j * cols + j];
    mean_diag /= (double)cols;
    for (bool act_order : {true, false}) {
        // Prediction from the damped H in processing order.
        std::vector<int64_t> perm(cols);
        for (int64_t j = 0; j < cols; ++j) perm[j] = j;
        if (act_order)
            std::stable_sort(perm.begin(), perm.end(),
                             [&](int64_t i, int64_t j) { return h[i * cols + i] > h[j * cols + j]; });
        std::vector<double> hp(cols * cols);
        for (int64_t i = 0; i < cols; ++i)
            for (int64_t j = 0; j < cols; ++j)
                hp[i * cols + j] = h[perm[i] * cols + perm[j]] + (i == j ? p.damp * mean_diag : 0.0);
        const std::vector<double> u = gptq_inverse_cholesky(hp.data(), cols);
        double num = 0, den = 0;
        for (int64_t t = 0; t < cols; ++t) num += 1.0 / (u[t * cols + t] * u[t * cols + t]), den += hp[t * cols + t];
        const double predicted = num / den;

        p.act_order = act_order;
        const QuantWeights g = gptq_quantize(w.data(), rows, cols, h.data(), p);
        expect_codes_in_range(g);
        const double ratio = output_error(x, tokens, w, g) / e_rtn;
        std::printf("[quant_gptq] act_order=%d: GPTQ/RTN output error %.4f, predicted %.4f\n", (int)act_order, ratio,
                    predicted);
        EXPECT_LT(ratio, 0.6) << "act_order " << act_order;
        EXPECT_NEAR(ratio, predicted, 0.2 * predicted) << "act_order " << act_order;
    }
}

// 8 bits, X iid Gaussian (H ≈ tokens·I, well conditioned): the output error is
// at the level of 8-bit rounding: relative error ≈ scale²/12 / E[w²] with
// scale ≈ 0.8·3σ/128, i.e. ~4e-5; assert < 1e-4 and no worse than RTN.
TEST(Gptq, EightBitsWellConditionedIsTiny) {
    std::mt19937 rng(test_seed() + 4);
    const int64_t tokens = 2048, cols = 128, rows = 32;
    const std::vector<float> x = gaussian(tokens * cols, rng), w = gaussian(rows * cols, rng, 0.1f);
    const std::vector<double> h = hessian(x, tokens, cols);
    GptqParams p;
    p.quant.bits = 8;
    const QuantWeights g = gptq_quantize(w.data(), rows, cols, h.data(), p);
    expect_codes_in_range(g);
    const QuantWeights r = weight_quantize_rtn(w.data(), rows, cols, p.quant);
    const double e_g = output_error(x, tokens, w, g), e_r = output_error(x, tokens, w, r);
    const double energy = output_energy(x, tokens, w, rows, cols);
    EXPECT_LT(e_g / energy, 1e-4);
    EXPECT_LE(e_g, e_r * 1.02);
}

TEST(Gptq, DeadColumnsAndCodeRange) {
    std::mt19937 rng(test_seed() + 5);
    const int64_t tokens = 200, cols = 70, rows = 11;
    std::vector<float> x = gaussian(tokens * cols, rng);
    const int64_t dead[3] = {0, 33, 69};
    for (int64_t t = 0; t < tokens; ++t)
        for (int64_t j : dead) x[t * cols + j] = 0.0f;
    const std::vector<double> h = hessian(x, tokens, cols);
    std::vector<float> w = gaussian(rows * cols, rng);
    for (int64_t i = 0; i < rows; ++i) w[i * cols + 33] = 50.0f;  // a huge weight on a dead input must not set the scale
    for (int bits : {2, 3, 4, 8})
        for (bool act_order : {false, true}) {
            GptqParams p;
            p.quant.bits = bits;
            p.act_order = act_order;
            GptqStats st;
            const QuantWeights g = gptq_quantize(w.data(), rows, cols, h.data(), p, &st);
            EXPECT_EQ(st.dead_columns, 3);
            EXPECT_GT(st.lambda, 0.0);
            expect_codes_in_range(g);
            for (int64_t i = 0; i < rows; ++i) {
                for (int64_t j : dead) EXPECT_EQ(g.codes[i * cols + j], 0);
                EXPECT_LT(g.scales[i], 5.0f / (1 << (bits - 1))) << "scale taken from a dead column";
                EXPECT_TRUE(std::isfinite(g.scales[i]));
            }
        }
    GptqParams p;
    p.damp = -1.0f;
    EXPECT_THROW(gptq_quantize(w.data(), rows, cols, h.data(), p), Error);
}

}  // namespace
