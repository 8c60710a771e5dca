// Fresh random inputs for every test run, replayable: SQ_TEST_SEED=n fixes
// the seed, otherwise it is drawn and printed once per test binary.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

inline uint32_t test_seed() {
    static const uint32_t s = [] {
        const char* e = std::getenv("SQ_TEST_SEED");
        const uint32_t v = e ? (uint32_t)std::strtoul(e, nullptr, 10) : std::random_device{}();
        std::printf("[tests] SQ_TEST_SEED=%u\n", v);
        return v;
    }();
    return s;
}

inline std::vector<float> gaussian(size_t n, std::mt19937& rng, float sd = 1.0f) {
    std::normal_distribution<float> nd(0.0f, sd);
    std::vector<float> v(n);
    for (auto& e : v) e = nd(rng);
    return v;
}

// Relative error of one logits row: max|a - r| / max|r|. Float32 against a
// float64 reference over a few layers lands near 1e-6; the model tests' bar is 1e-4.
inline double row_rel_err(const float* a, const float* r, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; ++i) {
        num = std::max(num, (double)std::fabs(a[i] - r[i]));
        den = std::max(den, (double)std::fabs(r[i]));
    }
    return num / den;
}
