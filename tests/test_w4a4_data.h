// Random W4A4 layers and activations shared by the reference and AVX2 tests.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "core/fp16.h"
#include "kernels/w4a4_format.h"
#include "model/linear_w4a4.h"
#include "test_random.h"

namespace {

using sq::QLinearData;

// Random codes with both extremes present in every row, so saturation and
// sign handling are exercised.
QLinearData random_qlinear(int64_t in, int64_t out, int a_bits, int rank, bool bias, std::mt19937& rng) {
    QLinearData d;
    d.in = in;
    d.out = out;
    d.a_bits = a_bits;
    const int64_t rb = sq::w4_row_bytes(in);
    d.codes.assign(out * rb, 0);
    d.scale.resize(out);
    d.rowsum.assign(out, 0);
    std::uniform_int_distribution<int> code(-8, 7);
    std::uniform_real_distribution<float> sc(0.001f, 0.05f);
    for (int64_t j = 0; j < out; ++j) {
        uint8_t* row = &d.codes[j * rb];
        for (int64_t k = 0; k < in; ++k) {
            const int c = k == 0 ? -8 : k == 1 ? 7 : code(rng);
            row[k / 2] |= (uint8_t)((c & 0xF) << ((k & 1) * 4));
            d.rowsum[j] += c;
        }
        d.scale[j] = sc(rng);
    }
    d.rank = rank;
    std::normal_distribution<float> g(0.0f, 0.1f);
    for (int64_t i = 0; i < out * rank; ++i) d.coef.push_back(sq::fp32_to_fp16(g(rng)));
    if (bias)
        for (int64_t j = 0; j < out; ++j) d.bias.push_back(g(rng));
    return d;
}

[[maybe_unused]] std::vector<float> random_x(int64_t n, int64_t k, std::mt19937& rng) {
    auto x = gaussian(n * k, rng);
    x[0] = 25.0f;  // an outlier, as real activations have
    return x;
}

}  // namespace
