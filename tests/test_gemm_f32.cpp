// FP32 GEMM/GEMV (kernels/cpu/gemm_f32) against the scalar reference
// (kernels/ref/gemm_ref), and LinearF32 on top of them.
//
//   build/specquant_tests --gtest_filter='Gemm*'      (SQ_TEST_SEED=n to replay)
//
// Error bound (derived, not tuned). The fast kernel sums each output with
// FMAs along 8 lanes per k-block, 3 hadd levels, then one add per further
// k-block, so every product goes through at most d ≤ 2·ceil(k/8) + 2 ≤ k + 3
// roundings, and Higham's bound for any summation order gives
//     |fast − exact| ≤ γ_{k+3} · S,   γ_j = j·u / (1 − j·u),  u = 2^-24,
// with S = Σ_p |x_ip|·|w_jp|. The reference accumulates in double and rounds
// once: |ref − exact| ≤ u·S + k·2^-53·S. The test asserts
//     |fast − ref| ≤ (γ_{k+3} + 2u) · S        (S computed in double).
// Inputs are drawn with |v| in [0.5, 1] and a random sign, so every product is
// ≥ 0.25 while the bound is ≤ (k+5)·u·k: a dropped or doubled term (≥ 0.25)
// fails the test for every k used here (k ≤ 1100 → bound ≤ 0.08).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/threads.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/gemm_f32.h"
#include "kernels/ref/gemm_ref.h"
#include "model/linear.h"

namespace {

using sq::PackedF32;

uint32_t test_seed() {
    static const uint32_t s = [] {
        const char* e = std::getenv("SQ_TEST_SEED");
        return e ? (uint32_t)std::strtoul(e, nullptr, 10) : std::random_device{}();
    }();
    return s;
}

// |v| in [0.5, 1], random sign: never zero, every product ≥ 0.25.
std::vector<float> rand_signed(size_t n, std::mt19937& rng) {
    std::uniform_real_distribution<float> mag(0.5f, 1.0f);
    std::bernoulli_distribution neg(0.5);
    std::vector<float> v(n);
    for (auto& e : v) e = neg(rng) ? -mag(rng) : mag(rng);
    return v;
}

std::vector<float> poisoned(size_t n) { return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()); }

double gamma_u(int64_t j) {
    const double u = std::ldexp(1.0, -24);
    return j * u / (1.0 - j * u);
}

// Checks y against the reference with the bound in the file header.
// Returns the number of violations (NaN counts as one) and reports the first few.
int check_against_ref(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& y,
                      int64_t m, int64_t n, int64_t k, const char* what) {
    std::vector<float> ref(m * n);
    sq::gemm_f32_ref(x.data(), m, w.data(), n, k, ref.data());
    const double u = std::ldexp(1.0, -24);
    int bad = 0;
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            double s = 0;
            for (int64_t p = 0; p < k; ++p) s += std::fabs((double)x[i * k + p] * w[j * k + p]);
            const double bound = (gamma_u(k + 3) + 2 * u) * s;
            const double err = std::fabs((double)y[i * n + j] - ref[i * n + j]);
            if (!(err <= bound)) {  // also catches NaN left by an unwritten element
                if (++bad <= 3)
                    ADD_FAILURE() << what << " m=" << m << " n=" << n << " k=" << k << " y[" << i << "," << j
                                  << "]=" << y[i * n + j] << " ref=" << ref[i * n + j] << " err=" << err
                                  << " bound=" << bound;
            }
        }
    return bad;
}

struct Shape {
    int64_t m, n, k;
};

// Awkward on purpose: m = 1, 2, 3, 7, 129 (tile is 3 rows of x); n and k not
// multiples of the 4-row W tile or the 8-lane vector; k over kc_max (576)
// so the default blocking takes several k-blocks.
const Shape kShapes[] = {
    {1, 1, 1},     {1, 5, 7},     {2, 3, 9},       {3, 4, 8},      {3, 17, 33},    {7, 13, 31},
    {7, 64, 64},   {4, 1, 100},   {129, 37, 45},   {129, 130, 61}, {5, 192, 576},  {1, 131, 1100},
    {2, 33, 1100}, {31, 65, 800}, {129, 7, 1031},  {6, 4, 16},     {11, 259, 17},
};

TEST(GemmF32, MatchesReferenceAwkwardShapes) {
    std::mt19937 rng(test_seed());
    SCOPED_TRACE(::testing::Message() << "SQ_TEST_SEED=" << test_seed());
    ASSERT_TRUE(sq::cpu_use_avx2()) << "this CPU lacks AVX2+FMA: the fast path is not under test here";
    for (const Shape& s : kShapes) {
        const auto x = rand_signed(s.m * s.k, rng), wv = rand_signed(s.n * s.k, rng);
        const PackedF32 w = sq::gemm_f32_pack(wv.data(), s.n, s.k);
        auto y = poisoned(s.m * s.n);
        sq::gemm_f32(x.data(), s.m, w, y.data());
        EXPECT_EQ(check_against_ref(x, wv, y, s.m, s.n, s.k, "gemm_f32"), 0);
        y = poisoned(s.m * s.n);
        sq::gemv_f32(x.data(), s.m, w, y.data());
        EXPECT_EQ(check_against_ref(x, wv, y, s.m, s.n, s.k, "gemv_f32"), 0);
    }
}

// Tiny blocks: many k-blocks (accumulate into y), many tasks, edge tiles everywhere.
TEST(GemmF32, MatchesReferenceSmallBlocking) {
    std::mt19937 rng(test_seed() + 1);
    SCOPED_TRACE(::testing::Message() << "SQ_TEST_SEED=" << test_seed());
    const sq::GemmF32Blocking blockings[] = {{8, 3, 4}, {16, 6, 8}, {24, 9, 12}, {64, 30, 20}};
    for (const auto& b : blockings)
        for (const Shape& s : {Shape{7, 13, 31}, Shape{129, 37, 45}, Shape{2, 9, 100}, Shape{10, 11, 57}}) {
            const auto x = rand_signed(s.m * s.k, rng), wv = rand_signed(s.n * s.k, rng);
            const PackedF32 w = sq::gemm_f32_view(wv.data(), s.n, s.k);
            auto y = poisoned(s.m * s.n);
            sq::gemm_f32(x.data(), s.m, w, y.data(), b);
            EXPECT_EQ(check_against_ref(x, wv, y, s.m, s.n, s.k, "gemm_f32 small blocking"), 0)
                << "kc_max=" << b.kc_max << " mc=" << b.mc << " nc=" << b.nc;
        }
}

// Every element sees the same k-blocks, lane order and reduction whatever the
// thread count and task split, so results are bitwise reproducible.
TEST(GemmF32, BitwiseIndependentOfThreadsAndTiling) {
    std::mt19937 rng(test_seed() + 2);
    const int64_t m = 50, n = 70, k = 900;
    const auto x = rand_signed(m * k, rng), wv = rand_signed(n * k, rng);
    const PackedF32 w = sq::gemm_f32_view(wv.data(), n, k);
    const int saved = sq::threads_count();
    std::vector<float> y1 = poisoned(m * n), y2 = poisoned(m * n), y3 = poisoned(m * n);
    sq::threads_set(1);
    sq::gemm_f32(x.data(), m, w, y1.data());
    sq::threads_set(2);
    sq::gemm_f32(x.data(), m, w, y2.data());
    sq::GemmF32Blocking small;  // same k-blocks as the default, tiny tasks
    small.mc = 6;
    small.nc = 8;
    sq::gemm_f32(x.data(), m, w, y3.data(), small);
    EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * 4)) << "1 vs 2 threads";
    EXPECT_EQ(0, std::memcmp(y1.data(), y3.data(), y1.size() * 4)) << "default vs small mc/nc";
    std::vector<float> g1 = poisoned(3 * n), g2 = poisoned(3 * n);
    sq::threads_set(1);
    sq::gemv_f32(x.data(), 3, w, g1.data());
    sq::threads_set(2);
    sq::gemv_f32(x.data(), 3, w, g2.data());
    EXPECT_EQ(0, std::memcmp(g1.data(), g2.data(), g1.size() * 4)) << "gemv 1 vs 2 threads";
    sq::threads_set(saved);
}

// gemv_f32 sums each output in gemm_f32's k-blocks: the same bits for every m (so a row's
// result does not depend on how many rows its call has; the GPU's spectral x·B relies on it).
TEST(GemmF32, GemvEqualsGemmBitForBit) {
    std::mt19937 rng(test_seed() + 7);
    for (int64_t k : {13, 576, 577, 1000, 1536, 4100}) {
        const int64_t n = 11, m = 7;
        const auto x = rand_signed(m * k, rng), wv = rand_signed(n * k, rng);
        const PackedF32 w = sq::gemm_f32_view(wv.data(), n, k);
        std::vector<float> g = poisoned(m * n), y = poisoned(m * n), r = poisoned(m * n);
        sq::gemv_f32(x.data(), m, w, g.data());
        sq::gemm_f32(x.data(), m, w, y.data());
        sq::gemv_f32_rows(x.data(), m, w, r.data(), 4, n);
        EXPECT_EQ(0, std::memcmp(g.data(), y.data(), g.size() * 4)) << "k=" << k;
        for (int64_t t = 0; t < m; ++t)
            EXPECT_EQ(0, std::memcmp(&g[t * n + 4], &r[t * n + 4], (n - 4) * 4)) << "rows, k=" << k;
    }
}

TEST(GemmF32, PackOwnsCopyViewBorrows) {
    std::mt19937 rng(test_seed() + 3);
    const int64_t m = 4, n = 9, k = 19;
    const auto x = rand_signed(m * k, rng);
    auto wv = rand_signed(n * k, rng);
    const PackedF32 packed = sq::gemm_f32_pack(wv.data(), n, k);
    const PackedF32 copy = packed;  // a copy must not point into the original's buffer
    EXPECT_EQ(packed.bytes(), (size_t)n * k * 4);
    std::vector<float> y0 = poisoned(m * n), y1 = poisoned(m * n);
    sq::gemm_f32(x.data(), m, copy, y0.data());
    for (auto& e : wv) e = -e;  // the owned copy must not see this
    sq::gemm_f32(x.data(), m, packed, y1.data());
    EXPECT_EQ(0, std::memcmp(y0.data(), y1.data(), y0.size() * 4));
    const PackedF32 view = sq::gemm_f32_view(wv.data(), n, k);
    sq::gemm_f32(x.data(), m, view, y1.data());
    for (int64_t i = 0; i < m * n; ++i) EXPECT_EQ(y1[i], -y0[i]) << i;  // negation is exact
}

TEST(GemmF32, EmptyShapesAndBadArguments) {
    std::mt19937 rng(test_seed() + 4);
    const auto x = rand_signed(3 * 5, rng), wv = rand_signed(4 * 5, rng);
    std::vector<float> y = poisoned(3 * 4);
    sq::gemm_f32(x.data(), 0, sq::gemm_f32_view(wv.data(), 4, 5), y.data());  // nothing written
    EXPECT_TRUE(std::isnan(y[0]));
    sq::gemm_f32(x.data(), 3, sq::gemm_f32_view(wv.data(), 4, 0), y.data());  // k = 0: y = 0
    sq::gemv_f32(x.data(), 3, sq::gemm_f32_view(wv.data(), 4, 0), y.data());
    for (float v : y) EXPECT_EQ(v, 0.0f);
    EXPECT_THROW(sq::gemm_f32_pack(wv.data(), -1, 5), sq::Error);
    EXPECT_THROW(sq::gemm_f32(x.data(), -2, sq::gemm_f32_view(wv.data(), 4, 5), y.data()), sq::Error);
    EXPECT_THROW(sq::gemm_f32(x.data(), 3, sq::gemm_f32_view(wv.data(), 4, 5), y.data(),
                              sq::GemmF32Blocking{768, 4, 64}),
                 sq::Error);  // mc not a multiple of 3
}

// The fallback is the reference itself, so it matches bitwise (and says so on stderr).
TEST(GemmF32, ForcedScalarFallbackIsTheReference) {
    std::mt19937 rng(test_seed() + 5);
    const int64_t m = 5, n = 11, k = 37;
    const auto x = rand_signed(m * k, rng), wv = rand_signed(n * k, rng);
    std::vector<float> ref(m * n), y = poisoned(m * n), g = poisoned(m * n);
    sq::gemm_f32_ref(x.data(), m, wv.data(), n, k, ref.data());
    sq::cpu_force_scalar(true);
    ::testing::internal::CaptureStderr();
    sq::gemm_f32(x.data(), m, sq::gemm_f32_view(wv.data(), n, k), y.data());
    sq::gemv_f32(x.data(), m, sq::gemm_f32_view(wv.data(), n, k), g.data());
    const std::string err = ::testing::internal::GetCapturedStderr();
    sq::cpu_force_scalar(false);
    EXPECT_EQ(0, std::memcmp(ref.data(), y.data(), y.size() * 4));
    EXPECT_EQ(0, std::memcmp(ref.data(), g.data(), g.size() * 4));
    EXPECT_NE(err.find("gemm_f32"), std::string::npos) << "fallback must be loud, stderr was: " << err;
}

// LinearF32: GEMV path (n ≤ gemv_f32_max_m tokens) and GEMM path, with bias.
// One more rounding for the bias add: |y − ref| ≤ (γ_{k+4} + 2u)·(S + |b|).
TEST(GemmLinearF32, ForwardMatchesReferenceWithBias) {
    std::mt19937 rng(test_seed() + 6);
    const int64_t in = 77, out = 23;
    const auto wv = rand_signed(out * in, rng), b = rand_signed(out, rng);
    const sq::LinearF32 lin(in, out, wv, b);
    EXPECT_EQ(lin.weight_bytes(), (size_t)(out * in + out) * 4);
    const double u = std::ldexp(1.0, -24);
    for (int64_t n : {1, 2, 3, 4, 7, 16, 17, 40}) {
        const auto x = rand_signed(n * in, rng);
        auto y = poisoned(n * out);
        lin.forward(x.data(), n, y.data());
        for (int64_t t = 0; t < n; ++t)
            for (int64_t j = 0; j < out; ++j) {
                double exact = b[j], s = std::fabs((double)b[j]);
                for (int64_t p = 0; p < in; ++p) {
                    exact += (double)x[t * in + p] * wv[j * in + p];
                    s += std::fabs((double)x[t * in + p] * wv[j * in + p]);
                }
                const double err = std::fabs(y[t * out + j] - exact);
                EXPECT_LE(err, (gamma_u(in + 4) + 2 * u) * s) << "n=" << n << " t=" << t << " j=" << j;
            }
    }
}

TEST(GemmLinearF32, RejectsWrongSizes) {
    EXPECT_THROW(sq::LinearF32(4, 3, std::vector<float>(11)), sq::Error);
    EXPECT_THROW(sq::LinearF32(4, 3, std::vector<float>(12), std::vector<float>(4)), sq::Error);
}

}  // namespace

namespace {
using namespace sq;
// fp16 W (explicit spectral bases): gemm_f16 / gemv_f16_rows are bitwise the
// float32 kernels on the converted W (gemv_f32 for m ≤ 16, gemm_f32 above),
// for awkward shapes (k % 8 ≠ 0, n % 4 ≠ 0) and thread counts 1 and 2.
TEST(GemmF16, BitwiseFloat32OfSameValues) {
    std::mt19937 rng(test_seed() + 77);
    std::normal_distribution<float> g(0.0f, 0.3f);
    const int saved = threads_count();
    for (int64_t k : {576, 100, 33, 1536, 7})
        for (int64_t n : {64, 37, 8, 5})
            for (int64_t m : {1, 2, 3, 7, 16, 17, 64}) {
                std::vector<uint16_t> wh(n * k);
                for (auto& h : wh) h = fp32_to_fp16(g(rng));
                std::vector<float> wf(n * k);
                for (size_t i = 0; i < wh.size(); ++i) wf[i] = fp16_to_fp32(wh[i]);
                std::vector<float> x(m * k);
                for (auto& v : x) v = g(rng);
                std::vector<float> yr(m * n, NAN), yh(m * n, NAN);
                const PackedF32 wv = gemm_f32_view(wf.data(), n, k);
                if (m <= gemv_f32_max_m) gemv_f32(x.data(), m, wv, yr.data());
                else gemm_f32(x.data(), m, wv, yr.data());
                for (int t : {1, 2}) {
                    threads_set(t);
                    std::fill(yh.begin(), yh.end(), NAN);
                    gemm_f16(x.data(), m, wh.data(), n, k, yh.data());
                    ASSERT_EQ(0, std::memcmp(yr.data(), yh.data(), yr.size() * 4))
                        << "m " << m << " n " << n << " k " << k << " threads " << t;
                }
                if (m <= gemv_f32_max_m && n >= 8) {  // two row ranges, as the decode x·B splits them
                    std::fill(yh.begin(), yh.end(), NAN);
                    gemv_f16_rows(x.data(), m, wh.data(), n, k, yh.data(), 0, 4);
                    gemv_f16_rows(x.data(), m, wh.data(), n, k, yh.data(), 4, n);
                    ASSERT_EQ(0, std::memcmp(yr.data(), yh.data(), yr.size() * 4)) << "rows m " << m << " n " << n;
                }
            }
    threads_set(saved);
}

}  // namespace
