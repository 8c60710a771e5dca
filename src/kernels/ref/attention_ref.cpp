#include "kernels/ref/attention_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

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

}  // namespace sq
