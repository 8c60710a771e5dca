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
