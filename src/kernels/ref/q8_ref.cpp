#include "kernels/ref/q8_ref.h"

#include <cmath>

#include "core/fp16.h"

namespace sq {

void q8_quantize_row(const float* x, int64_t k, BlockQ8* out) {
    for (int64_t b = 0; b < k / Q8_BLOCK; ++b) {
        const float* xb = x + b * Q8_BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < Q8_BLOCK; ++i) amax = std::fmax(amax, std::fabs(xb[i]));
        const uint16_t d16 = fp32_to_fp16(amax / 127.0f);
        const float d = fp16_to_fp32(d16);
        out[b].d = d16;
        for (int i = 0; i < Q8_BLOCK; ++i) {
            float q = d > 0.0f ? std::nearbyint(xb[i] / d) : 0.0f;
            q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
            out[b].q[i] = (int8_t)q;
        }
    }
}

void q8_dequant_row(const BlockQ8* b, int64_t k, float* out) {
    for (int64_t j = 0; j < k / Q8_BLOCK; ++j) {
        const float d = fp16_to_fp32(b[j].d);
        for (int i = 0; i < Q8_BLOCK; ++i) out[j * Q8_BLOCK + i] = d * (float)b[j].q[i];
    }
}

}  // namespace sq
