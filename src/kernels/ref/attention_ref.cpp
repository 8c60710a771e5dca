#include "kernels/ref/attention_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/ref/w4a4_ref.h"

namespace sq {

void attention_decode_ref(const float* q, const float* k, const float* v, int64_t kv_stride, int64_t n, int pos0,
                          int n_heads, int n_kv_heads, int hd, float* out) {
    const int group = n_heads / n_kv_heads;
    const float scale = 1.0f / std::sqrt((float)hd);
    std::vector<float> s;
    for (int64_t t = 0; t < n; ++t)
        for (int h = 0; h < n_heads; ++h) {
            const int g = h / group;
            const int len = pos0 + (int)t + 1;
            const float* qh = q + (t * n_heads + h) * hd;
            s.assign(len, 0.0f);
            for (int j = 0; j < len; ++j) {
                const float* kj = k + j * kv_stride + g * hd;
                float l[8] = {};
                for (int i = 0; i < hd; ++i) l[i % 8] = std::fma(qh[i], kj[i], l[i % 8]);
                s[j] = (((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))) * scale;
            }
            float m = -INFINITY;
            for (int j = 0; j < len; ++j) m = s[j] > m ? s[j] : m;
            float sum = 0.0f;
            for (int j = 0; j < len; ++j) {
                s[j] = std::exp(s[j] - m);
                sum += s[j];
            }
            const float inv = 1.0f / sum;
            float* o = out + (t * n_heads + h) * hd;
            std::vector<float> part(hd);
            for (int j0 = 0; j0 < len; j0 += kAttentionChunk) {
                std::fill(part.begin(), part.end(), 0.0f);
                for (int j = j0; j < std::min(len, j0 + kAttentionChunk); ++j) {
                    const float a = s[j] * inv;
                    const float* vj = v + j * kv_stride + g * hd;
                    for (int i = 0; i < hd; ++i) part[i] = std::fma(a, vj[i], part[i]);
                }
                for (int i = 0; i < hd; ++i) o[i] = j0 == 0 ? part[i] : o[i] + part[i];
            }
        }
}

void kv_q4_store_ref(const float* x, int hd, float clip, const float* shift, uint8_t* codes, float* scale,
                     uint8_t* zero) {
    thread_local std::vector<float> t;
    thread_local std::vector<uint8_t> q;
    t.assign(x, x + hd);
    q.resize(hd);
    if (shift)  // as kv_fake_quant_ref: quantize x − μ
        for (int i = 0; i < hd; ++i) t[i] -= shift[i];
    float s;
    int32_t z;
    act_quant_ref(t.data(), 1, hd, 4, clip, q.data(), &s, &z);
    for (int b = 0; b < hd / 16; ++b)
        for (int i = 0; i < 8; ++i) codes[b * 8 + i] = (uint8_t)(q[b * 16 + i] | (q[b * 16 + 8 + i] << 4));
    *scale = s;
    *zero = (uint8_t)z;
}

void kv_q4_row_ref(const KvQ4View& kv, int64_t p, int g, float* o) {
    const int hd = kv.hd;
    const int64_t r = p * kv.n_kv + g;
    const uint8_t* c = kv.codes + r * (hd / 2);
    const float s = kv.scale[r];
    const int32_t z = kv.zero[r];
    for (int i = 0; i < hd; ++i) {
        const int32_t code = (c[(i / 16) * 8 + i % 8] >> (i % 16 < 8 ? 0 : 4)) & 15;
        o[i] = (float)(code - z) * s;  // fake_quant_asym_ref's expression
        if (kv.shift) o[i] += kv.shift[g * hd + i];
    }
}

void kv_q4_load_ref(const KvQ4View& kv, int64_t p0, int64_t p1, float* out) {
    for (int64_t p = p0; p < p1; ++p)
        for (int g = 0; g < kv.n_kv; ++g) kv_q4_row_ref(kv, p, g, out + ((p - p0) * kv.n_kv + g) * kv.hd);
}

void attention_decode_q4_ref(const float* q, const KvQ4View& k, const KvQ4View& v, int64_t n, int pos0, int n_heads,
                             int n_kv_heads, int hd, float* out) {
    const int64_t len = pos0 + n, stride = (int64_t)n_kv_heads * hd;
    std::vector<float> kf(len * stride), vf(len * stride);
    kv_q4_load_ref(k, 0, len, kf.data());
    kv_q4_load_ref(v, 0, len, vf.data());
    attention_decode_ref(q, kf.data(), vf.data(), stride, n, pos0, n_heads, n_kv_heads, hd, out);
}

}  // namespace sq
