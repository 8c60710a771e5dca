#include "kernels/ref/w4a4_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/w4a4_format.h"

namespace sq {

// Returns (s, z) for one row; s > 0 always (a constant row gets s = 1 so
// q = z and it dequantizes to exactly 0 … its value is then lost, as in
// every asymmetric quantizer with the zero kept in range).
static inline void asym_params(const float* x, int64_t k, int bits, float clip, float* s_out, int32_t* z_out) {
    float mx = 0.0f, mn = 0.0f;  // the range always contains 0 so that z is in [0, qmax]
    for (int64_t i = 0; i < k; ++i) {
        mx = std::max(mx, x[i]);
        mn = std::min(mn, x[i]);
    }
    act_params_from_range(mx, mn, bits, clip, s_out, z_out);
}

void act_quant_ref(const float* x, int64_t n, int64_t k, int bits, float clip, uint8_t* q, float* scale,
                   int32_t* zero) {
    const int qmax = (1 << bits) - 1;
    for (int64_t t = 0; t < n; ++t) {
        const float* xr = x + t * k;
        float s;
        int32_t z;
        asym_params(xr, k, bits, clip, &s, &z);
                for (int64_t i = 0; i < k; ++i) {
            // Clamp in float: x/s leaves the int range only for non-finite input; NaN -> the zero code.
            const float v = std::nearbyint(xr[i] / s) + (float)z;
            q[t * k + i] = (uint8_t)(int32_t)(v != v ? (float)z : std::clamp(v, 0.0f, (float)qmax));
        }
        scale[t] = s;
        zero[t] = z;
    }
}

void gemm_w4a4_acc_ref(const uint8_t* q, int64_t n, int64_t k, const uint8_t* codes, int64_t m, int32_t* acc) {
    const int64_t rb = w4_row_bytes(k);
    for (int64_t t = 0; t < n; ++t)
        for (int64_t j = 0; j < m; ++j) {
            const uint8_t* row = codes + j * rb;
            int32_t a = 0;
            for (int64_t i = 0; i < k; ++i) a += (int32_t)q[t * k + i] * w4_get(row, i);
            acc[t * m + j] = a;
        }
}

void w4a4_epilogue_ref(const int32_t* acc, int64_t n, int64_t m, const float* act_scale, const int32_t* act_zero,
                       const float* w_scale, const int32_t* w_rowsum, float* y) {
    for (int64_t t = 0; t < n; ++t)
        for (int64_t j = 0; j < m; ++j)
            y[t * m + j] = act_scale[t] * w_scale[j] * (float)(acc[t * m + j] - act_zero[t] * w_rowsum[j]);
}

float spectral_dot_ref(const float* zb, const float* c, int64_t len) {
    float l[8] = {};
    for (int64_t r = 0; r < len; ++r) l[r & 7] = std::fma(zb[r], c[r], l[r & 7]);
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

void fake_quant_asym_ref(float* x, int64_t k, int bits, float clip) {
    thread_local std::vector<uint8_t> q;  // KV path: once per token and head, no allocation
    q.resize(k);
    float s;
    int32_t z;
    act_quant_ref(x, 1, k, bits, clip, q.data(), &s, &z);
    for (int64_t i = 0; i < k; ++i) x[i] = (float)((int32_t)q[i] - z) * s;
}

void kv_fake_quant_ref(float* x, int64_t k, int bits, float clip, const float* shift) {
    if (!shift) return fake_quant_asym_ref(x, k, bits, clip);
    for (int64_t i = 0; i < k; ++i) x[i] -= shift[i];
    fake_quant_asym_ref(x, k, bits, clip);
    for (int64_t i = 0; i < k; ++i) x[i] += shift[i];
}

}  // namespace sq
