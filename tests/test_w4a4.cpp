// The W4A4 reference backend against the scalar specification, and the packed
// model container round trip.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "core/fp16.h"
#include "io/packed_file.h"
#include "kernels/ref/w4a4_ref.h"
#include "kernels/w4a4_format.h"
#include "model/linear_w4a4.h"
#include "test_w4a4_data.h"

using namespace sq;

TEST(W4A4Ref, PackUnpackNibbles) {
    for (int lo = -8; lo <= 7; ++lo)
        for (int hi = -8; hi <= 7; ++hi) {
            uint8_t b = w4_pack(lo, hi);
            EXPECT_EQ(w4_get(&b, 0), lo);
            EXPECT_EQ(w4_get(&b, 1), hi);
        }
}

TEST(W4A4Ref, ActQuantRangeAndError) {
    std::mt19937 rng(1);
    for (int bits : {2, 4, 8}) {
        const int64_t k = 301;
        auto x = random_x(3, k, rng);
        std::vector<uint8_t> q(3 * k, 0xEE);
        std::vector<float> s(3);
        std::vector<int32_t> z(3);
        act_quant_ref(x.data(), 3, k, bits, 1.0f, q.data(), s.data(), z.data());
        for (int t = 0; t < 3; ++t) {
            EXPECT_GE(z[t], 0);
            EXPECT_LE(z[t], (1 << bits) - 1);
            for (int64_t i = 0; i < k; ++i) {
                ASSERT_LE(q[t * k + i], (1 << bits) - 1);
                // clip = 1: every value within half a step of its code
                EXPECT_LE(std::fabs(s[t] * (q[t * k + i] - z[t]) - x[t * k + i]), 0.5f * s[t] * 1.0001f);
            }
        }
    }
}

// The fast accumulators (float GEMM on integer-valued operands) equal the
// int32 scalar reference bit for bit, over awkward shapes.
TEST(W4A4Ref, AccumulatorsExactAgainstScalarReference) {
    std::mt19937 rng(2);
    for (int64_t n : {1, 2, 3, 7, 64, 129})
        for (auto [in, out] : std::vector<std::pair<int64_t, int64_t>>{{33, 5}, {576, 192}, {1536, 17}, {64, 64}}) {
            QLinearData d = random_qlinear(in, out, 4, 0, false, rng);
            LinearW4A4Ref L(d);
            std::uniform_int_distribution<int> qv(0, 15);
            std::vector<uint8_t> q(n * in);
            for (auto& v : q) v = (uint8_t)qv(rng);
            std::vector<int32_t> ref(n * out, -7), got(n * out, -9);
            gemm_w4a4_acc_ref(q.data(), n, in, d.codes.data(), out, ref.data());
            L.accumulators(q.data(), n, got.data());
            ASSERT_EQ(ref, got) << "n=" << n << " in=" << in << " out=" << out;
        }
}

// forward() against a straightforward float emulation of the format:
// dequantize activations and weights, multiply in double, add the spectral
// branch. Error budget: float32 rounding of the epilogue only (~1e-6 rel).
TEST(W4A4Ref, ForwardMatchesFloatEmulation) {
    std::mt19937 rng(3);
    const int64_t n = 5, in = 96, out = 40;
    for (int rank : {0, 1, 7}) {
        QLinearData d = random_qlinear(in, out, 4, rank, false, rng);
        LinearW4A4Ref L(d);
        auto x = random_x(n, in, rng);
        std::vector<float> y(n * out, NAN);
        L.forward(x.data(), n, y.data());
        std::vector<uint8_t> q(n * in);
        std::vector<float> s(n);
        std::vector<int32_t> z(n);
        act_quant_ref(x.data(), n, in, 4, d.a_clip, q.data(), s.data(), z.data());
        auto B = fourier_basis_f16(in, rank);
        for (int64_t t = 0; t < n; ++t)
            for (int64_t j = 0; j < out; ++j) {
                double e = 0, mag = 0;
                for (int64_t k = 0; k < in; ++k) {
                    const double term =
                        (double)s[t] * (q[t * in + k] - z[t]) * d.scale[j] * w4_get(&d.codes[j * w4_row_bytes(in)], k);
                    e += term;
                    mag += std::fabs(term);
                }
                for (int r = 0; r < rank; ++r) {
                    double xb = 0;
                    for (int64_t k = 0; k < in; ++k) xb += (double)x[t * in + k] * B[k * rank + r];
                    e += xb * fp16_to_fp32(d.coef[j * rank + r]);
                    mag += std::fabs(xb * fp16_to_fp32(d.coef[j * rank + r]));
                }
                EXPECT_NEAR(y[t * out + j], e, 1e-5 * (mag + 1e-3)) << "rank " << rank;
            }
    }
}

TEST(W4A4Ref, InvalidDataIsAnError) {
    std::mt19937 rng(4);
    QLinearData d = random_qlinear(16, 4, 4, 0, false, rng);
    d.rowsum[2] += 1;
    EXPECT_THROW(LinearW4A4Ref{d}, Error);
    QLinearData e = random_qlinear(16, 4, 4, 0, false, rng);
    e.a_bits = 12;
    EXPECT_THROW(LinearW4A4Ref{e}, Error);
}

TEST(PackedFile, RoundTripAndCorruption) {
    namespace fs = std::filesystem;
    const std::string path = (fs::temp_directory_path() / "sq_packed_rt.sqm").string();
    std::vector<PackedTensor> ts = {{"a", "f32", {2, 3}, std::vector<uint8_t>(24, 7)},
                                    {"b", "u8", {5}, {1, 2, 3, 4, 5}}};
    packed_write(path, {{"hello", "world"}}, ts);
    ASSERT_TRUE(packed_is(path));
    {
        PackedFile pf = packed_open(path);
        EXPECT_EQ(pf.meta["hello"], "world");
        const PackedView& b = pf.get("b", "u8", {5});
        EXPECT_EQ(std::vector<uint8_t>(b.data, b.data + 5), (std::vector<uint8_t>{1, 2, 3, 4, 5}));
        EXPECT_THROW(pf.get("a", "f16", {2, 3}), Error);
        EXPECT_THROW(pf.get("zz", "u8", {5}), Error);
    }
    // Truncate: the last tensor now lies past the end.
    const auto size = fs::file_size(path);
    fs::resize_file(path, size - 70);
    try {
        packed_open(path);
        FAIL() << "truncated file accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos);
    }
    // Foreign file.
    { std::ofstream(path, std::ios::trunc) << "GGUF not ours"; }
    EXPECT_FALSE(packed_is(path));
    EXPECT_THROW(packed_open(path), Error);
    fs::remove(path);
}
