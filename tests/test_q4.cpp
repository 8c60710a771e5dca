// Q4_0 embedding / lm_head format (kernels/q4_format.h, `--embed-bits 4`):
// quantizer, the GEMV bitwise against its scalar reference on awkward
// shapes, LinearQ4 bitwise LinearF32 on the dequantized weights for n > 16.
//   build-avx2/specquant_tests --gtest_filter='Q4*'
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/fp16.h"
#include "core/threads.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/q4_avx2.h"
#include "kernels/ref/q4_ref.h"
#include "model/linear_q4.h"
#include "test_random.h"

using namespace sq;

namespace {

// Random blocks: codes over the whole range, scales of embedding size.
std::vector<BlockQ4> random_blocks(int64_t rows, int64_t cols, std::mt19937& rng) {
    std::vector<BlockQ4> b((size_t)rows * cols / Q4_BLOCK);
    std::uniform_real_distribution<float> d(1e-4f, 0.05f);
    for (auto& blk : b) {
        blk.d = fp32_to_fp16(d(rng));
        for (auto& v : blk.qs) v = (uint8_t)(rng() & 0xFF);
    }
    return b;
}

}  // namespace

// Codes in range, dequantization exact, and the stored candidate is never
// worse than ggml's scale (candidate 0: the largest element ↦ −8).
TEST(Q4, QuantizerPicksTheLeastSquaredError) {
    std::mt19937 rng(test_seed() + 31);
    const int64_t k = 576;
    std::vector<float> x = gaussian(k, rng);
    x[5] = 0.0f;
    for (int i = 64; i < 96; ++i) x[i] = 0.0f;  // an all-zero block
    std::vector<BlockQ4> b(k / Q4_BLOCK);
    q4_quantize_row(x.data(), k, b.data());
    std::vector<float> y(k);
    q4_dequant_row(b.data(), k, y.data());
    for (int64_t blk = 0; blk < k / Q4_BLOCK; ++blk) {
        const float* v = &x[blk * Q4_BLOCK];
        float m = 0.0f;
        for (int i = 0; i < Q4_BLOCK; ++i)
            if (std::fabs(v[i]) > std::fabs(m)) m = v[i];
        if (m == 0.0f) {
            EXPECT_EQ(b[blk].d, 0);
            for (int i = 0; i < Q4_BLOCK; ++i) EXPECT_EQ(y[blk * Q4_BLOCK + i], 0.0f);
            continue;
        }
        const float d0 = fp16_to_fp32(fp32_to_fp16(-m / 8.0f)), d = fp16_to_fp32(b[blk].d);
        double e0 = 0, e = 0;
        for (int i = 0; i < Q4_BLOCK; ++i) {
            const float c0 = std::clamp(std::nearbyint(v[i] / d0), -8.0f, 7.0f);
            e0 += std::pow((double)v[i] - (double)d0 * c0, 2);
            e += std::pow((double)v[i] - (double)y[blk * Q4_BLOCK + i], 2);
            const double c = y[blk * Q4_BLOCK + i] / (double)d;  // exact: d·c is exact in float
            EXPECT_EQ(c, std::round(c));
            EXPECT_GE(c, -8);
            EXPECT_LE(c, 7);
        }
        EXPECT_LE(e, e0) << "block " << blk;
    }
}

// The AVX2 GEMV is its reference, bit for bit: m = 1, 2, 3, 7, 16; rows not a
// multiple of 4; k one block and SmolLM2's 576; 1 and 2 threads.
TEST(Q4, GemvBitwiseReference) {
    if (!(cpu_use_avx2() && cpu_features().f16c)) GTEST_SKIP() << "no AVX2+F16C";
    std::mt19937 rng(test_seed() + 32);
    const int saved = threads_count();
    for (int64_t k : {32, 96, 576})
        for (int64_t n : {1, 3, 4, 9, 50, 131}) {
            const auto w = random_blocks(n, k, rng);
            for (int64_t m : {1, 2, 3, 7, 16}) {
                const std::vector<float> x = gaussian(m * k, rng);
                std::vector<float> yr(m * n, NAN), ya(m * n, NAN);
                q4_gemv_ref(x.data(), m, w.data(), n, k, yr.data());
                for (int t : {1, 2}) {
                    threads_set(t);
                    std::fill(ya.begin(), ya.end(), NAN);
                    q4_gemv(x.data(), m, w.data(), n, k, ya.data());
                    ASSERT_EQ(0, std::memcmp(yr.data(), ya.data(), yr.size() * 4))
                        << "k " << k << " n " << n << " m " << m << " threads " << t;
                }
            }
        }
    threads_set(saved);
}

// n > 16 (prefill, all-logits evaluation): dequantized slabs through the
// float GEMM, bitwise LinearF32 on the dequantized table.
TEST(Q4, LinearPrefillIsFloatOnDequantizedWeights) {
    std::mt19937 rng(test_seed() + 33);
    for (int64_t out : {5, 600}) {
        auto m = std::make_shared<Q4Matrix>();
        m->rows = out;
        m->cols = 576;
        m->blocks = random_blocks(out, 576, rng);
        LinearQ4 q(m);
        LinearF32 f(576, out, m->dequant());
        EXPECT_EQ(q.kind(), "q4");
        EXPECT_EQ(q.weight_bytes(), (size_t)out * 576 / 32 * 18);
        for (int64_t n : {17, 40}) {
            const std::vector<float> x = gaussian(n * 576, rng);
            std::vector<float> yq(n * out, NAN), yf(n * out, NAN);
            q.forward(x.data(), n, yq.data());
            f.forward(x.data(), n, yf.data());
            ASSERT_EQ(0, std::memcmp(yq.data(), yf.data(), yq.size() * 4)) << "out " << out << " n " << n;
        }
    }
}
