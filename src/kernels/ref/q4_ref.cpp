#include "kernels/ref/q4_ref.h"

#include <algorithm>
#include <cmath>

#include "core/fp16.h"

namespace sq {

namespace {
int code_at(const BlockQ4& b, int i) { return (i < 16 ? (b.qs[i] & 0x0F) : (b.qs[i - 16] >> 4)) - 8; }
}  // namespace

void q4_quantize_row(const float* x, int64_t k, BlockQ4* out) {
    for (int64_t b = 0; b < k / Q4_BLOCK; ++b) {
        const float* v = x + b * Q4_BLOCK;
        BlockQ4& o = out[b];
        float m = 0.0f;
        for (int i = 0; i < Q4_BLOCK; ++i)
            if (std::fabs(v[i]) > std::fabs(m)) m = v[i];
        o.d = 0;
        std::fill(o.qs, o.qs + Q4_BLOCK / 2, (uint8_t)0x88);
        if (m == 0.0f) continue;
        double best = INFINITY;
        for (int t = 0; t < 16; ++t) {
            const uint16_t dh = fp32_to_fp16(-m * (1.0f - (float)t / 64.0f) / 8.0f);
            const float d = fp16_to_fp32(dh);
            if (d == 0.0f || !std::isfinite(d)) continue;
            int c[Q4_BLOCK];
            double err = 0;
            for (int i = 0; i < Q4_BLOCK; ++i) {
                c[i] = (int)std::clamp(std::nearbyint(v[i] / d), -8.0f, 7.0f);
                const double e = (double)v[i] - (double)d * c[i];
                err += e * e;
            }
            if (err < best) {
                best = err;
                o.d = dh;
                for (int i = 0; i < 16; ++i) o.qs[i] = (uint8_t)((c[i] + 8) | ((c[i + 16] + 8) << 4));
            }
        }
    }
}

void q4_dequant_row(const BlockQ4* b, int64_t k, float* out) {
    for (int64_t j = 0; j < k / Q4_BLOCK; ++j) {
        const float d = fp16_to_fp32(b[j].d);
        for (int i = 0; i < Q4_BLOCK; ++i) out[j * Q4_BLOCK + i] = d * (float)code_at(b[j], i);
    }
}

void q4_gemv_ref(const float* x, int64_t m, const BlockQ4* w, int64_t n, int64_t k, float* y) {
    const int64_t nb = k / Q4_BLOCK;
    for (int64_t t = 0; t < m; ++t)
        for (int64_t j = 0; j < n; ++j) {
            float acc[8] = {};
            for (int64_t b = 0; b < nb; ++b) {
                const BlockQ4& blk = w[j * nb + b];
                const float* xb = x + t * k + b * Q4_BLOCK;
                const float d = fp16_to_fp32(blk.d);
                for (int l = 0; l < 8; ++l) {
                    float p = xb[l] * (float)code_at(blk, l);
                    for (int s = 1; s < 4; ++s) p = std::fma(xb[8 * s + l], (float)code_at(blk, 8 * s + l), p);
                    acc[l] = std::fma(p, d, acc[l]);
                }
            }
            y[t * n + j] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        }
}

}  // namespace sq
