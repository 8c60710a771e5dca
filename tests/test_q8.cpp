// Q8_0 embedding / lm_head format (kernels/q8_format.h): quantizer, GEMV
// kernel and LinearQ8 against float32 on the dequantized weights, lossless
// requantization of a Q8_0 source, packed-file round trip.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "core/error.h"
#include "core/fp16.h"
#include "io/checkpoint.h"
#include "kernels/cpu/q8_avx2.h"
#include "kernels/ref/q8_ref.h"
#include "model/linear_q8.h"
#include "model/model.h"
#include "test_random.h"

using namespace sq;

namespace {

constexpr double kU = 1.0 / (1 << 24);
double gamma_n(double n) { return n * kU / (1.0 - n * kU); }

// Random blocks as a Q8_0 writer makes them: some |q| = 127 in each block.
std::vector<BlockQ8> random_blocks(int64_t rows, int64_t cols, std::mt19937& rng) {
    std::vector<BlockQ8> b((size_t)rows * cols / Q8_BLOCK);
    std::uniform_int_distribution<int> q(-127, 127), pos(0, Q8_BLOCK - 1);
    std::uniform_real_distribution<float> d(1e-4f, 0.05f);
    for (auto& blk : b) {
        blk.d = fp32_to_fp16(d(rng));
        for (auto& v : blk.q) v = (int8_t)q(rng);
        blk.q[pos(rng)] = (rng() & 1) ? 127 : -127;
    }
    return b;
}

}  // namespace

TEST(Q8, RequantizingDequantizedBlocksIsLossless) {
    std::mt19937 rng(test_seed() + 21);
    const int64_t rows = 37, cols = 96;
    const auto blocks = random_blocks(rows, cols, rng);
    std::vector<float> x((size_t)rows * cols);
    for (int64_t r = 0; r < rows; ++r) q8_dequant_row(&blocks[r * 3], cols, &x[r * cols]);
    const Q8Matrix m = Q8Matrix::quantize(x.data(), rows, cols);
    ASSERT_EQ(m.blocks.size(), blocks.size());
    EXPECT_EQ(0, std::memcmp(m.blocks.data(), blocks.data(), blocks.size() * sizeof(BlockQ8)));
}

TEST(Q8, QuantizationErrorIsHalfAStep) {
    std::mt19937 rng(test_seed() + 22);
    const int64_t cols = 576;
    std::vector<float> x = gaussian(cols, rng);
    x[5] = 0.0f;
    for (int i = 64; i < 96; ++i) x[i] = 0.0f;  // an all-zero block: d = 0, codes 0
    std::vector<BlockQ8> b(cols / Q8_BLOCK);
    q8_quantize_row(x.data(), cols, b.data());
    std::vector<float> y(cols);
    q8_dequant_row(b.data(), cols, y.data());
    for (int64_t i = 0; i < cols; ++i) {
        const float d = fp16_to_fp32(b[i / Q8_BLOCK].d);
        ASSERT_LE(std::fabs(x[i] - y[i]), 0.5f * d * (1 + 1e-6f)) << i;
    }
    EXPECT_EQ(b[2].d, 0);
    EXPECT_THROW(Q8Matrix::quantize(x.data(), 1, 100), Error);  // 100 is not a multiple of 32
}

// LinearQ8 (q8_gemv for n ≤ 16, dequantized slabs + gemm_f32 above) against
// LinearF32 on the dequantized weights: both sums are within γ_{k+2}·S of
// the exact value, S = Σ |x||w|, so they differ by at most 2γ_{k+2}·S.
TEST(Q8, LinearMatchesFloatOnDequantizedWeights) {
    std::mt19937 rng(test_seed() + 23);
    for (int64_t k : {32, 576, 1536}) {
        for (int64_t out : {1, 5, 131, 600}) {
            auto m = std::make_shared<Q8Matrix>();
            m->rows = out;
            m->cols = k;
            m->blocks = random_blocks(out, k, rng);
            const std::vector<float> wf = m->dequant();
            LinearQ8 q(m);
            LinearF32 f(k, out, wf);
            EXPECT_EQ(q.kind(), "q8");
            EXPECT_EQ(q.weight_bytes(), (size_t)out * k / 32 * 34);
            for (int64_t n : {1, 2, 3, 4, 7, 16, 17, 40}) {
                const std::vector<float> x = gaussian(n * k, rng);
                std::vector<float> yq(n * out, NAN), yf(n * out, NAN);
                q.forward(x.data(), n, yq.data());
                f.forward(x.data(), n, yf.data());
                for (int64_t t = 0; t < n; ++t)
                    for (int64_t j = 0; j < out; ++j) {
                        double S = 0;
                        for (int64_t c = 0; c < k; ++c) S += std::fabs((double)x[t * k + c] * wf[j * k + c]);
                        const float a = yq[t * out + j], b = yf[t * out + j];
                        ASSERT_TRUE(std::isfinite(a)) << "k " << k << " out " << out << " n " << n;
                        ASSERT_LE(std::fabs((double)a - b), 2 * gamma_n(k + 2) * S)
                            << "k " << k << " out " << out << " n " << n << " t " << t << " j " << j;
                    }
            }
        }
    }
}

// The default model's embedding is Q8_0 in the GGUF: our 8-bit table is that
// table again, value for value.
TEST(Q8, DefaultModelEmbeddingIsLossless) {
    const std::string path = std::string(SQ_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present";
    Checkpoint ck = checkpoint_open(path);
    const auto embed = ck.load("embed", {ck.config.vocab, ck.config.d_model}).data;
    const Q8Matrix m = Q8Matrix::quantize(embed.data(), ck.config.vocab, ck.config.d_model);
    const std::vector<float> back = m.dequant();
    ASSERT_EQ(back.size(), embed.size());
    EXPECT_EQ(0, std::memcmp(back.data(), embed.data(), back.size() * sizeof(float)));
}
