// Decode attention (kernels/cpu/attention_decode.h) bitwise its scalar
// reference (kernels/ref/attention_ref.h) on awkward shapes, and the
// reference against attention computed in double.
//   build-avx2/specquant_tests --gtest_filter='AttentionDecode*'
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/threads.h"
#include "kernels/cpu/attention_decode.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/ops.h"
#include "kernels/ref/w4a4_ref.h"
#include "kernels/ref/attention_ref.h"
#include "test_random.h"

using namespace sq;

namespace {

struct Shape {
    int H, KV, hd;
};

}  // namespace

TEST(AttentionDecode, BitwiseReference) {
    if (!cpu_use_avx2()) GTEST_SKIP() << "no AVX2";
    std::mt19937 rng(test_seed() + 41);
    const int saved = threads_count();
    for (Shape s : {Shape{9, 3, 64}, Shape{4, 4, 8}, Shape{8, 2, 128}, Shape{6, 1, 24}, Shape{3, 3, 16}, Shape{14, 2, 32},
                    Shape{10, 1, 64}})
        for (int pos0 : {0, 5, 31, 32, 100, 637})
            for (int64_t n : {1, 2, 3, 7, 15}) {
                const int64_t stride = (int64_t)s.KV * s.hd + (pos0 % 2 ? 8 : 0);  // padded rows too
                const int64_t len = pos0 + n;
                const auto q = gaussian(n * s.H * s.hd, rng), k = gaussian(len * stride, rng, 2.0f),
                           v = gaussian(len * stride, rng);
                std::vector<float> yr(n * s.H * s.hd, NAN), ya(n * s.H * s.hd, NAN);
                attention_decode_ref(q.data(), k.data(), v.data(), stride, n, pos0, s.H, s.KV, s.hd, yr.data());
                for (int t : {1, 2}) {
                    threads_set(t);
                    std::fill(ya.begin(), ya.end(), NAN);
                    attention_decode(q.data(), k.data(), v.data(), stride, n, pos0, s.H, s.KV, s.hd, ya.data());
                    ASSERT_EQ(0, std::memcmp(yr.data(), ya.data(), yr.size() * 4))
                        << "H " << s.H << " KV " << s.KV << " hd " << s.hd << " pos0 " << pos0 << " n " << n
                        << " threads " << t;
                }
            }
    threads_set(saved);
}

// The specification is attention: against double precision, error within a
// few float roundings of the weighted sum (|o| ≤ max|v|, weights sum to 1).
TEST(AttentionDecode, ReferenceIsAttention) {
    std::mt19937 rng(test_seed() + 42);
    const int H = 6, KV = 2, hd = 32, pos0 = 50, n = 3;
    const int64_t stride = KV * hd, len = pos0 + n;
    const auto q = gaussian(n * H * hd, rng), k = gaussian(len * stride, rng), v = gaussian(len * stride, rng);
    std::vector<float> y(n * H * hd);
    attention_decode_ref(q.data(), k.data(), v.data(), stride, n, pos0, H, KV, hd, y.data());
    for (int t = 0; t < n; ++t)
        for (int h = 0; h < H; ++h) {
            const int g = h / (H / KV), L = pos0 + t + 1;
            std::vector<double> s(L);
            double m = -1e300, sum = 0;
            for (int j = 0; j < L; ++j) {
                double d = 0;
                for (int i = 0; i < hd; ++i) d += (double)q[(t * H + h) * hd + i] * k[j * stride + g * hd + i];
                s[j] = d / std::sqrt((double)hd);
                m = std::max(m, s[j]);
            }
            for (int j = 0; j < L; ++j) sum += s[j] = std::exp(s[j] - m);
            for (int i = 0; i < hd; ++i) {
                double o = 0;
                for (int j = 0; j < L; ++j) o += s[j] / sum * v[j * stride + g * hd + i];
                EXPECT_NEAR(y[(t * H + h) * hd + i], o, 1e-4) << t << " " << h << " " << i;
            }
        }
}

// ---- 4-bit KV cache (KvQ4View, kernels/ref/attention_ref.h) ----

namespace {

// A random 4-bit cache side of len positions: rows quantized from gaussians
// (some constant or zero, where s = 1 and every code is z).
struct Q4Side {
    std::vector<uint8_t> codes, zero;
    std::vector<float> scale, shift;
    KvQ4View view(int kv, int hd) const {
        return {codes.data(), scale.data(), zero.data(), shift.empty() ? nullptr : shift.data(), kv, hd};
    }
};

Q4Side q4_side(int64_t len, int kv, int hd, bool with_shift, std::mt19937& rng) {
    Q4Side s;
    s.codes.assign(len * kv * hd / 2, 0xAB);
    s.scale.assign(len * kv, NAN);
    s.zero.assign(len * kv, 0xEE);
    if (with_shift) s.shift = gaussian((size_t)kv * hd, rng, 0.5f);
    for (int64_t r = 0; r < len * kv; ++r) {
        auto x = gaussian(hd, rng, 2.0f);
        if (r % 37 == 5) std::fill(x.begin(), x.end(), 0.0f);
        if (r % 41 == 7) std::fill(x.begin(), x.end(), -1.5f);
        kv_q4_store_ref(x.data(), hd, 0.95f, with_shift ? s.shift.data() + (r % kv) * hd : nullptr,
                        &s.codes[r * hd / 2], &s.scale[r], &s.zero[r]);
    }
    return s;
}

}  // namespace

// Storing codes and reading them back gives the floats the fake-quant
// cache holds, bit for bit (with and without the key shift, clip 1 and 0.9).
TEST(KvQ4, StoreLoadIsFakeQuant) {
    std::mt19937 rng(test_seed() + 43);
    for (int hd : {16, 32, 64, 128, 256})
        for (int with_shift : {0, 1})
            for (float clip : {1.0f, 0.9f})
                for (int rep = 0; rep < 20; ++rep) {
                    auto x = gaussian(hd, rng, rep % 3 ? 1.0f : 30.0f);
                    if (rep == 7) std::fill(x.begin(), x.end(), 0.0f);
                    if (rep == 8) x[hd / 2] = 1e4f;  // one outlier
                    const auto sh = gaussian(hd, rng, 0.7f);
                    const float* shift = with_shift ? sh.data() : nullptr;
                    std::vector<float> fake = x;
                    kv_fake_quant_ref(fake.data(), hd, 4, clip, shift);
                    std::vector<uint8_t> codes(hd / 2, 0xCD);
                    float s = NAN;
                    uint8_t z = 0xEE;
                    kv_q4_store_ref(x.data(), hd, clip, shift, codes.data(), &s, &z);
                    EXPECT_LE(z, 15);
                    const KvQ4View v{codes.data(), &s, &z, shift, 1, hd};
                    std::vector<float> back(hd, NAN);
                    kv_q4_row_ref(v, 0, 0, back.data());
                    ASSERT_EQ(0, std::memcmp(fake.data(), back.data(), hd * 4))
                        << "hd " << hd << " shift " << with_shift << " clip " << clip << " rep " << rep;
                }
}

// AVX2 decode attention over the codes = the reference (= attention_decode_ref
// over the dequantized rows), bitwise; and attention_q4 (decode and the
// prefill GEMM path, n ≥ 16) = attention_f32 over the dequantized rows.
TEST(AttentionDecode, Q4BitwiseReference) {
    std::mt19937 rng(test_seed() + 44);
    const int saved = threads_count();
    for (Shape s : {Shape{9, 3, 64}, Shape{8, 2, 128}, Shape{3, 3, 16}, Shape{14, 2, 32}, Shape{10, 1, 64},
                    Shape{8, 1, 48}})
        for (int pos0 : {0, 5, 31, 32, 100, 637})
            for (int64_t n : {1, 2, 3, 7, 17, 64}) {
                if (n > 16 && pos0 > 100) continue;  // the GEMM path: keep the test short
                const int64_t len = pos0 + n, stride = (int64_t)s.KV * s.hd;
                const Q4Side K = q4_side(len, s.KV, s.hd, pos0 % 2 == 1, rng), V = q4_side(len, s.KV, s.hd, false, rng);
                const KvQ4View kv = K.view(s.KV, s.hd), vv = V.view(s.KV, s.hd);
                const auto q = gaussian(n * s.H * s.hd, rng);
                std::vector<float> kf(len * stride), vf(len * stride);
                kv_q4_load_ref(kv, 0, len, kf.data());
                kv_q4_load_ref(vv, 0, len, vf.data());
                std::vector<float> yr(n * s.H * s.hd, NAN), ya(n * s.H * s.hd, NAN);
                if (n < 16) attention_decode_q4_ref(q.data(), kv, vv, n, pos0, s.H, s.KV, s.hd, yr.data());
                else attention_f32(q.data(), kf.data(), vf.data(), stride, n, pos0, s.H, s.KV, s.hd, yr.data());
                for (int t : {1, 2}) {
                    threads_set(t);
                    if (n < 16 && cpu_use_avx2()) {
                        std::fill(ya.begin(), ya.end(), NAN);
                        attention_decode_q4(q.data(), kv, vv, n, pos0, s.H, s.KV, s.hd, ya.data());
                        ASSERT_EQ(0, std::memcmp(yr.data(), ya.data(), yr.size() * 4))
                            << "decode H " << s.H << " KV " << s.KV << " hd " << s.hd << " pos0 " << pos0 << " n " << n
                            << " threads " << t;
                    }
                    std::vector<float> yf(n * s.H * s.hd, NAN);
                    attention_f32(q.data(), kf.data(), vf.data(), stride, n, pos0, s.H, s.KV, s.hd, yf.data());
                    std::fill(ya.begin(), ya.end(), NAN);
                    attention_q4(q.data(), kv, vv, n, pos0, s.H, s.KV, s.hd, ya.data());
                    ASSERT_EQ(0, std::memcmp(yf.data(), ya.data(), yf.size() * 4))
                        << "attention_q4 H " << s.H << " KV " << s.KV << " hd " << s.hd << " pos0 " << pos0 << " n "
                        << n << " threads " << t;
                }
            }
    threads_set(saved);
}
