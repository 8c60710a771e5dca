// AVX2 W4A4 kernels and LinearW4A4Cpu against the scalar reference
// (kernels/ref/w4a4_ref.h, LinearW4A4Ref): integer accumulators and
// activation codes exact, float parts within a bound derived from rounding.
//   build-avx2/specquant_tests --gtest_filter='W4A4Avx2*'   (SQ_TEST_SEED=n replays)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "core/error.h"
#include "core/fp16.h"
#include "core/threads.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/w4a4_avx2.h"
#include "kernels/ref/w4a4_ref.h"
#include "kernels/w4a4_format.h"
#include "model/linear_w4a4_cpu.h"
#include "quant/hadamard.h"
#include "test_w4a4_data.h"
#include "test_random.h"

using namespace sq;

namespace {

#define SKIP_WITHOUT_AVX2() \
    if (!w4a4_avx2_available()) GTEST_SKIP() << "no AVX2+FMA+F16C on this CPU (or SQ_FORCE_SCALAR)"

constexpr float kU = 1.0f / (1 << 24);  // unit roundoff of float32
double gamma_n(double n) { return n * kU / (1.0 - n * kU); }


}  // namespace

TEST(W4A4Avx2, PackUnpackRoundTrip) {
    std::mt19937 rng(test_seed());
    for (auto [in, out] : std::vector<std::pair<int64_t, int64_t>>{{33, 5}, {64, 4}, {100, 7}, {576, 9}}) {
        QLinearData d = random_qlinear(in, out, 4, 3, true, rng);
        W4A4Weights w = w4a4_pack(d.codes.data(), out, in, d.scale.data(), d.bias.data(), d.coef.data(), 3);
        EXPECT_EQ(w.kp % 64, 0);
        EXPECT_EQ(w.groups, (out + 3) / 4);
        std::vector<uint8_t> row(w4_row_bytes(in));
        for (int64_t j = 0; j < out; ++j) {
            w4a4_unpack_row(w, j, row.data());
            ASSERT_EQ(0, std::memcmp(row.data(), &d.codes[j * row.size()], row.size())) << "row " << j;
            EXPECT_EQ(w.rowsum[j], d.rowsum[j]);
        }
    }
}

// Integer accumulators bit for bit, awkward m and K, every activation width.
// Both integer tiles (vpmaddubsw and, where the CPU has AVX512-VNNI, vpdpbusd).
TEST(W4A4Avx2, AccumulatorsExact) {
    SKIP_WITHOUT_AVX2();
    std::mt19937 rng(test_seed() + 1);
    const bool saved = w4a4_vnni_enabled();
    for (bool vnni : {false, true}) {
    if (vnni && !cpu_features().avx512vnni) break;
    w4a4_set_vnni(vnni);
    ASSERT_EQ(vnni, w4a4_vnni_enabled());
    for (int bits : {4, 2, 7, 8})
        for (int64_t m : {1, 2, 3, 7, 16, 17, 64, 129})
            for (int64_t K : {576, 1536, 100, 33, 4097}) {
                if (bits != 4 && (m > 17 || K > 1536)) continue;  // other widths: a smaller sweep
                const int64_t N = (m == 17 && K == 576) ? 193 : 37;
                QLinearData d = random_qlinear(K, N, bits, 0, false, rng);
                W4A4Weights w = w4a4_pack(d.codes.data(), N, K, d.scale.data(), nullptr, nullptr, 0);
                std::uniform_int_distribution<int> qv(0, (1 << bits) - 1);
                std::vector<uint8_t> q(m * K);
                for (auto& v : q) v = (uint8_t)qv(rng);
                q[0] = (uint8_t)((1 << bits) - 1);  // extremes: qmax against −8 and 7
                W4A4Act act;
                w4a4_act_from_codes(q.data(), m, K, bits, w.kp, act);
                std::vector<int32_t> ref(m * N), got(m * N, 0x7fc00000);  // poison: NaN's bit pattern
                gemm_w4a4_acc_ref(q.data(), m, K, d.codes.data(), N, ref.data());
                w4a4_gemm_acc(act, w, got.data());
                ASSERT_EQ(ref, got) << "bits=" << bits << " m=" << m << " K=" << K << " N=" << N << " vnni=" << vnni;
            }
    }
    w4a4_set_vnni(saved);
}

// Codes, scales and zeros identical to act_quant_ref, including ties at .5,
// constant rows, zeros, signed zeros, NaN and infinities.
TEST(W4A4Avx2, ActQuantIdenticalToReference) {
    SKIP_WITHOUT_AVX2();
    std::mt19937 rng(test_seed() + 2);
    std::vector<std::vector<float>> rows;
    for (int64_t k : {1, 7, 31, 32, 33, 64, 100, 576, 1000}) rows.push_back(gaussian(k, rng, 3.0f));
    {  // ties: s = 1 exactly (max 15, min 0 at clip 1, 4 bits), values j + 0.5
        std::vector<float> t = {15.0f};
        for (int j = 0; j < 15; ++j) t.push_back(j + 0.5f);
        for (int j = 0; j < 40; ++j) t.push_back((float)(j % 15) + 0.5f);
        rows.push_back(t);
        // symmetric ties: max 7.5, min −7.5 → s = 1, z = rint(7.5) = 8
        std::vector<float> u = {7.5f, -7.5f};
        for (int j = -7; j < 7; ++j) u.push_back(j + 0.5f);
        for (int j = 0; j < 40; ++j) u.push_back(-2.5f + (j % 6));
        rows.push_back(u);
    }
    rows.push_back(std::vector<float>(77, 3.25f));    // all equal, positive
    rows.push_back(std::vector<float>(77, -0.125f));  // all equal, negative
    rows.push_back(std::vector<float>(77, 0.0f));     // zeros
    rows.push_back(std::vector<float>(77, -0.0f));    // negative zeros
    {
        auto r = gaussian(70, rng);
        r[3] = std::numeric_limits<float>::quiet_NaN();
        r[40] = std::numeric_limits<float>::quiet_NaN();
        rows.push_back(r);
        auto s = gaussian(70, rng);
        s[5] = std::numeric_limits<float>::infinity();
        rows.push_back(s);
        auto t = gaussian(70, rng);
        t[9] = -std::numeric_limits<float>::infinity();
        rows.push_back(t);
        rows.push_back(std::vector<float>(65, 1e-30f));  // tiny range
    }
    for (int bits : {2, 4, 8})
        for (float clip : {1.0f, 0.9f})
            for (const auto& x : rows) {
                const int64_t k = (int64_t)x.size();
                std::vector<uint8_t> qr(k), qa(k, 0xEE);
                float sr = 0, sa = NAN;
                int32_t zr = 0, za = -1;
                act_quant_ref(x.data(), 1, k, bits, clip, qr.data(), &sr, &zr);
                act_quant_avx2(x.data(), 1, k, bits, clip, qa.data(), &sa, &za);
                ASSERT_EQ(qr, qa) << "bits " << bits << " clip " << clip << " k " << k;
                ASSERT_EQ(std::memcmp(&sr, &sa, 4), 0) << sr << " vs " << sa;
                ASSERT_EQ(zr, za);
                // The kernel's form: a = q − o, zero padded, Σ a.
                W4A4Act act;
                const int64_t kp = (k + 63) / 64 * 64;
                w4a4_act_prepare(x.data(), 1, k, bits, clip, kp, act);
                int32_t sum = 0;
                for (int64_t i = 0; i < kp; ++i) {
                    const int expect = i < k ? (int)qr[i] - act.offset : 0;
                    ASSERT_EQ((int)act.a[i], expect) << "i " << i;
                    sum += expect;
                }
                EXPECT_EQ(act.asum[0], sum);
                EXPECT_EQ(std::memcmp(&act.scale[0], &sr, 4), 0);
                EXPECT_EQ(act.zero[0], zr);
            }
}

namespace {

struct LayerCase {
    int64_t in, out;
    int a_bits, rank;
    bool bias, had, explicit_basis;
};

// Σ_r |zb_r|·|C_jr| with zb = x·B in double, per (token, row): the
// magnitude the spectral branch's rounding is bounded by.
std::vector<double> spectral_magnitude(const QLinearData& d, const float* x, int64_t n) {
    std::vector<double> S(n * d.out, 0.0);
    if (d.rank == 0) return S;
    std::vector<float> B = d.basis == "fourier" ? fourier_basis_f16(d.in, d.rank) : std::vector<float>();
    if (B.empty())
        for (auto h : d.basis_f16) B.push_back(fp16_to_fp32(h));
    for (int64_t t = 0; t < n; ++t) {
        std::vector<double> zb(d.rank, 0.0);
        for (int64_t k = 0; k < d.in; ++k)
            for (int r = 0; r < d.rank; ++r) zb[r] += (double)x[t * d.in + k] * B[k * d.rank + r];
        for (int64_t j = 0; j < d.out; ++j)
            for (int r = 0; r < d.rank; ++r) S[t * d.out + j] += std::fabs(zb[r] * fp16_to_fp32(d.coef[j * d.rank + r]));
    }
    return S;
}

// Σ_k |x_k|·|scale_j·code_jk| (W4A16 magnitude).
std::vector<double> w4a16_magnitude(const QLinearData& d, const float* x, int64_t n) {
    std::vector<double> S(n * d.out, 0.0);
    for (int64_t t = 0; t < n; ++t)
        for (int64_t j = 0; j < d.out; ++j)
            for (int64_t k = 0; k < d.in; ++k)
                S[t * d.out + j] +=
                    std::fabs((double)x[t * d.in + k] * d.scale[j] * w4_get(&d.codes[j * w4_row_bytes(d.in)], k));
    return S;
}

}  // namespace

// Whole layers against the reference backend. Error budget:
//  - a_bits < 16: bitwise equal, spectral branch or not (integer part exact;
//    the epilogue, zb = x·B through the same GEMM, zb·Cᵀ in spectral_dot_ref's
//    lane order, + spectral, + bias: the reference's float ops in its order).
//  - W4A16: reference Σ_k x·fl(scale·code) vs ours scale·Σ_k x·code: each
//    within γ_{k+4}·S_w of the exact value, so ≤ 2γ_{k+4}·S_w apart; the
//    spectral sum is the same value on both sides, and the two following adds
//    (+ spectral, + bias) round differently by at most u each per side:
//    + 4u·(|y| + S), S = Σ_r |zb_r||C_r|.
TEST(W4A4Avx2, LayerMatchesReference) {
    SKIP_WITHOUT_AVX2();
    std::mt19937 rng(test_seed() + 3);
    const std::vector<LayerCase> cases = {
        {576, 192, 4, 0, false, false, false}, {576, 70, 4, 63, true, false, false},
        {576, 40, 4, 7, false, true, false},   {100, 33, 4, 5, true, false, true},
        {1536, 24, 4, 31, false, true, false}, {64, 9, 8, 3, false, false, false},
        {96, 13, 2, 0, true, false, false},    {576, 30, 16, 0, false, false, false},
        {100, 21, 16, 9, true, false, false},  {576, 17, 16, 15, true, true, false},
        {576, 50, 4, 127, false, true, false},  // SmolLM2's rank, rows keeping 1..64 bins
        {576, 41, 4, 63, false, true, true},    // explicit (SVD-like) basis at SmolLM2's width: fp16 Bᵀ GEMV / GEMM
        {1536, 18, 4, 127, false, false, true},
    };
    for (const LayerCase& c : cases) {
        QLinearData d = random_qlinear(c.in, c.out, c.a_bits, c.rank, c.bias, rng);
        if (c.rank >= 31) {  // as the quantizer stores it: row j keeps k_j bins, C zero beyond
            const int K = (c.rank + 1) / 2;
            std::uniform_int_distribution<int> kb(1, K);
            for (int64_t j = 0; j < c.out; ++j) {
                const int kj = j == 0 ? K : kb(rng);
                for (int f = kj; f < K; ++f) {
                    d.coef[j * c.rank + f] = 0;
                    d.coef[j * c.rank + K - 1 + f] = 0;
                }
            }
        }
        if (c.had) {
            d.had_in = (int)c.in;
            d.had_seed = rng();
        }
        if (c.explicit_basis) {
            d.basis = "explicit";
            std::normal_distribution<float> g(0.0f, 0.2f);
            for (int64_t i = 0; i < c.in * c.rank; ++i) d.basis_f16.push_back(fp32_to_fp16(g(rng)));
        }
        LinearW4A4Ref ref(d);
        LinearW4A4Cpu cpu(d);
        EXPECT_EQ(cpu.kind(), c.a_bits >= 16 ? "w4a16-avx2" : "w4a4-avx2");
        for (int64_t n : {1, 3, 16, 17, 64}) {
            auto x = random_x(n, c.in, rng);
            std::vector<float> yr(n * c.out, NAN), yc(n * c.out, NAN);
            ref.forward(x.data(), n, yr.data());
            cpu.forward(x.data(), n, yc.data());
            // magnitudes on the rotated input the layer actually multiplies
            std::vector<float> xr = x;
            if (c.had) {
                const auto sg = hadamard_signs((int)c.in, d.had_seed);
                hadamard_transform(xr.data(), n, (int)c.in, sg.data());
            }
            const auto S = spectral_magnitude(d, xr.data(), n);
            const auto Sw = c.a_bits >= 16 ? w4a16_magnitude(d, xr.data(), n) : std::vector<double>(n * c.out, 0.0);
            for (int64_t i = 0; i < n * c.out; ++i) {
                ASSERT_TRUE(std::isfinite(yc[i])) << "output " << i << " not written";
                if (c.a_bits < 16) {
                    ASSERT_EQ(std::memcmp(&yr[i], &yc[i], 4), 0)
                        << "in=" << c.in << " n=" << n << " i=" << i << ": " << yr[i] << " vs " << yc[i];
                    continue;
                }
                const double tol = 4 * kU * (std::fabs(yr[i]) + S[i]) + 2 * gamma_n(c.in + 4) * Sw[i];
                ASSERT_LE(std::fabs((double)yr[i] - yc[i]), tol)
                    << "in=" << c.in << " out=" << c.out << " bits=" << c.a_bits << " rank=" << c.rank << " n=" << n
                    << " i=" << i << ": " << yr[i] << " vs " << yc[i];
            }
        }
    }
}

// The lane order of spectral_dot_ref is the AVX2 loop's: a hand-written
// 8-lane sum agrees bitwise, and a reordered sum does not always (so the
// bitwise assertion above can fail when the order drifts).
TEST(W4A4Ref, SpectralDotLaneOrder) {
    std::mt19937 rng(test_seed() + 4);
    std::normal_distribution<float> g(0.0f, 1.0f);
    int differs = 0;
    for (int64_t len : {1, 7, 8, 9, 63, 127, 128}) {
        for (int trial = 0; trial < 50; ++trial) {
            std::vector<float> z(len), c(len);
            for (auto& v : z) v = g(rng);
            for (auto& v : c) v = g(rng);
            float lane[8] = {};
            for (int64_t q = 0; q < len; q += 8)
                for (int l = 0; l < 8 && q + l < len; ++l) lane[l] = std::fma(z[q + l], c[q + l], lane[l]);
            const float want = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
            const float got = spectral_dot_ref(z.data(), c.data(), len);
            ASSERT_EQ(std::memcmp(&want, &got, 4), 0) << "len " << len;
            float seq = 0.0f;
            for (int64_t r = 0; r < len; ++r) seq = std::fma(z[r], c[r], seq);
            differs += std::memcmp(&seq, &got, 4) != 0;
        }
    }
    EXPECT_GT(differs, 0) << "sequential and lane sums never differed: the test cannot see an order change";
}

// Bitwise the same output on 1 and 2 threads (GEMV and GEMM partitions).
TEST(W4A4Avx2, ThreadCountIndependent) {
    SKIP_WITHOUT_AVX2();
    std::mt19937 rng(test_seed() + 5);
    const int saved = threads_count();
    for (int a_bits : {4, 16}) {
        QLinearData d = random_qlinear(576, 100, a_bits, 31, true, rng);
        LinearW4A4Cpu L(d);
        for (int64_t n : {1, 5, 16, 64, 100}) {
            auto x = random_x(n, 576, rng);
            std::vector<float> y1(n * 100, NAN), y2(n * 100, NAN);
            threads_set(1);
            L.forward(x.data(), n, y1.data());
            threads_set(2);
            L.forward(x.data(), n, y2.data());
            ASSERT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * 4)) << "a_bits " << a_bits << " n " << n;
        }
    }
    threads_set(saved);
}

TEST(W4A4Avx2, FactoryAndDataRoundTrip) {
    std::mt19937 rng(test_seed() + 6);
    QLinearData d = random_qlinear(100, 10, 4, 5, true, rng);
    auto r = make_linear_w4a4(d, W4A4Backend::kRef);
    EXPECT_EQ(r->kind(), "w4a4-ref");
    if (w4a4_avx2_available()) {
        auto a = make_linear_w4a4(d, W4A4Backend::kAuto);
        EXPECT_EQ(a->kind(), "w4a4-avx2");
        QLinearData back;
        ASSERT_TRUE(linear_w4a4_data(*a, &back));
        EXPECT_EQ(back.codes, d.codes);
        EXPECT_EQ(back.scale, d.scale);
        EXPECT_EQ(back.rowsum, d.rowsum);
        EXPECT_EQ(back.coef, d.coef);
        EXPECT_EQ(back.bias, d.bias);
        EXPECT_EQ(back.rank, d.rank);
        // An explicit basis: only Bᵀ is kept, the fp16 basis comes back exactly.
        QLinearData e = random_qlinear(100, 10, 4, 5, false, rng);
        e.basis = "explicit";
        std::normal_distribution<float> nd(0.0f, 0.2f);
        for (int64_t i = 0; i < 100 * 5; ++i) e.basis_f16.push_back(fp32_to_fp16(nd(rng)));
        QLinearData eback;
        ASSERT_TRUE(linear_w4a4_data(*make_linear_w4a4(e, W4A4Backend::kAvx2), &eback));
        EXPECT_EQ(eback.basis_f16, e.basis_f16);
        EXPECT_EQ(eback.coef, e.coef);
        cpu_force_scalar(true);  // the loud fallback
        EXPECT_EQ(make_linear_w4a4(d, W4A4Backend::kAuto)->kind(), "w4a4-ref");
        EXPECT_THROW(make_linear_w4a4(d, W4A4Backend::kAvx2), Error);
        cpu_force_scalar(false);
    }
    EXPECT_EQ(w4a4_backend_from_string("avx2"), W4A4Backend::kAvx2);
    EXPECT_THROW(w4a4_backend_from_string("gpu"), Error);
    LinearF32 f(2, 2, {1, 2, 3, 4});
    QLinearData none;
    EXPECT_FALSE(linear_w4a4_data(f, &none));
}

// q/k/v and gate/up in one call (shared activation quantization, x·B per
// distinct basis inside one parallel region): every output bitwise the
// layer's own forward, which is bitwise the reference (LayerMatchesReference).
// Awkward shapes: m = 1, 2, 3, 7, 17, 64, 129; K not a multiple of 64;
// mixed ranks (0, Fourier, an explicit basis) and out not a multiple of 4.
TEST(W4A4Avx2, SameInputGroupMatchesSeparateCalls) {
    SKIP_WITHOUT_AVX2();
    std::mt19937 rng(test_seed() + 7);
    struct Group {
        int64_t in;
        std::vector<int64_t> outs;
        std::vector<int> ranks;  // −r: explicit basis of rank r
        bool bias;
    };
    const std::vector<Group> groups = {
        {576, {576, 192, 192}, {127, 127, 127}, false},  // SmolLM2 q/k/v at k̄ 32
        {576, {1536, 1536}, {63, 63}, false},             // gate/up
        {100, {33, 10, 7}, {5, 0, -3}, true},             // K % 64 != 0, mixed bases
        {576, {70, 50}, {-31, -31}, false},               // SVD-style: one basis each
        {96, {13}, {7}, true},                            // a single layer through the group path
    };
    const int saved = threads_count();
    for (const Group& g : groups) {
        std::vector<std::unique_ptr<LinearW4A4Cpu>> ls;
        for (size_t i = 0; i < g.outs.size(); ++i) {
            const int r = std::abs(g.ranks[i]);
            QLinearData d = random_qlinear(g.in, g.outs[i], 4, r, g.bias, rng);
            if (g.ranks[i] < 0) {
                d.basis = "explicit";
                std::normal_distribution<float> nd(0.0f, 0.2f);
                for (int64_t e = 0; e < g.in * r; ++e) d.basis_f16.push_back(fp32_to_fp16(nd(rng)));
            }
            ls.push_back(std::make_unique<LinearW4A4Cpu>(d));
        }
        std::vector<const Linear*> lp;
        for (auto& l : ls) lp.push_back(l.get());
        for (int threads : {1, 2}) {
            threads_set(threads);
            for (int64_t n : {1, 2, 3, 7, 17, 64, 129}) {
                const auto x = random_x(n, g.in, rng);
                std::vector<std::vector<float>> ya, yb;
                std::vector<float*> yp;
                for (auto o : g.outs) {
                    ya.emplace_back(n * o, NAN);
                    yb.emplace_back(n * o, NAN);
                }
                for (auto& v : yb) yp.push_back(v.data());
                for (size_t i = 0; i < ls.size(); ++i) ls[i]->forward(x.data(), n, ya[i].data());
                linear_forward_same_input(lp.data(), (int)lp.size(), x.data(), n, yp.data());
                for (size_t i = 0; i < ls.size(); ++i)
                    ASSERT_EQ(0, std::memcmp(ya[i].data(), yb[i].data(), ya[i].size() * 4))
                        << "in " << g.in << " layer " << i << " n " << n << " threads " << threads;
            }
        }
    }
    threads_set(saved);
    // Incompatible layers (different activation bits) fall back to one forward each.
    QLinearData a = random_qlinear(64, 8, 4, 0, false, rng), b = random_qlinear(64, 8, 8, 0, false, rng);
    LinearW4A4Cpu la(a), lb(b);
    const Linear* lp[2] = {&la, &lb};
    const auto x = random_x(3, 64, rng);
    std::vector<float> y0(24, NAN), y1(24, NAN), r0(24), r1(24);
    float* yp[2] = {y0.data(), y1.data()};
    EXPECT_FALSE(la.forward_same_input(lp, 2, x.data(), 3, yp));
    linear_forward_same_input(lp, 2, x.data(), 3, yp);
    la.forward(x.data(), 3, r0.data());
    lb.forward(x.data(), 3, r1.data());
    EXPECT_EQ(0, std::memcmp(y0.data(), r0.data(), 96));
    EXPECT_EQ(0, std::memcmp(y1.data(), r1.data(), 96));
}
