#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/threads.h"
#include "kernels/cpu/attention_decode.h"
#include "kernels/cpu/gemm_f32.h"

#define SQ_CLONES __attribute__((target_clones("avx2,fma", "default")))

namespace sq {

SQ_CLONES static void rmsnorm_row(const float* x, const float* w, int64_t d, float eps, float* y) {
    float ss = 0.0f;
    for (int64_t i = 0; i < d; ++i) ss += x[i] * x[i];
    const float r = 1.0f / std::sqrt(ss / (float)d + eps);
    for (int64_t i = 0; i < d; ++i) y[i] = w[i] * (x[i] * r);
}

void rmsnorm_f32(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y) {
    if (n == 1) rmsnorm_row(x, w, d, eps, y);  // decode: a fork/join costs more than the row
    else parallel_for(n, [&](int64_t t) { rmsnorm_row(x + t * d, w, d, eps, y + t * d); });
}

void rope_f32(float* x, int64_t n, int n_heads, int head_dim, int pos0, const float* inv_freq) {
    const int half = head_dim / 2;
    auto one = [&](int64_t t) {
        // angles as Hugging Face computes them: float32 position × float32 inv_freq
        float c[512], s[512];
        for (int i = 0; i < half; ++i) {
            const float ang = (float)(pos0 + t) * inv_freq[i];
            c[i] = std::cos(ang);
            s[i] = std::sin(ang);
        }
        for (int h = 0; h < n_heads; ++h) {
            float* v = x + (t * n_heads + h) * head_dim;
            for (int i = 0; i < half; ++i) {
                const float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i] + a * s[i];
            }
        }
    };
    if (n == 1) one(0);  // decode: no fork/join for a few hundred values
    else parallel_for(n, one);
}

SQ_CLONES static void silu_mul_block(float* g, const float* u, int64_t n) {
    for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void silu_mul_f32(float* g, const float* u, int64_t count) {
    const int64_t block = 4096;
    if (count <= block) return silu_mul_block(g, u, count);  // decode: one block, no fork/join
    parallel_for((count + block - 1) / block, [&](int64_t b) {
        const int64_t lo = b * block, hi = std::min(count, lo + block);
        silu_mul_block(g + lo, u + lo, hi - lo);
    });
}

// Prefill path: S = Q Kᵀ and O = P V through the float GEMM (≈ 180 GFLOP/s
// here against ≈ 15 for a dot-product loop). Causal by blocks of kRows query
// rows: block [t0, t1) multiplies only the keys it can see (pos0 + t1), so at
// pos0 = 0 and 512 tokens the GEMMs do 9/16 of the square instead of all of
// it (what is left of the mask is the diagonal block's upper triangle, zeroed
// after the softmax). Units (head, block) run in one parallel region, the
// largest first, each GEMM on its own thread (inside the region gemm_f32's
// own loop is a team of one), so a layer pays one fork/join for its
// attention instead of ~3 per head.
// gather(j, g, kdst, vdst) writes position j of KV head g: its key and value [hd].
template <class Gather>
static void attention_gemm(const float* q, const Gather& gather, int64_t n, int pos0, int n_heads, int n_kv_heads,
                           int hd, float* out) {
    constexpr int64_t kRows = 64;
    const int group = n_heads / n_kv_heads;
    const int64_t len = pos0 + n, nb = (n + kRows - 1) / kRows;
    const float scale = 1.0f / std::sqrt((float)hd);
    // kg [KV][len, hd]; vt [KV][hd, len] (transposed: P V is x·Wᵀ with W = Vᵀ)
    std::vector<float> kgb((size_t)n_kv_heads * len * hd), vtb((size_t)n_kv_heads * hd * len);
    float* kg = kgb.data();
    float* vt = vtb.data();
    const int64_t units = (int64_t)n_heads * nb;
#pragma omp parallel num_threads(std::max(1, threads_count()))
    {
#pragma omp for schedule(static)
        for (int64_t j = 0; j < len; ++j) {
            float kr[512], vr[512];  // hd ≤ 512
            for (int g = 0; g < n_kv_heads; ++g) {
                gather(j, g, kr, vr);
                std::copy(kr, kr + hd, kg + ((size_t)g * len + j) * hd);
                for (int i = 0; i < hd; ++i) vt[((size_t)g * hd + i) * len + j] = vr[i];
            }
        }
        std::vector<float> qh, S, vb, oh;
#pragma omp for schedule(dynamic, 1)
        for (int64_t u = 0; u < units; ++u) {
            const int64_t b = nb - 1 - u / n_heads, h = u % n_heads, g = h / group;  // largest blocks first
            const int64_t t0 = b * kRows, t1 = std::min(n, t0 + kRows), rows = t1 - t0, keys = pos0 + t1;
            qh.resize(rows * hd), S.resize(rows * keys), vb.resize((size_t)hd * keys), oh.resize(rows * hd);
            for (int64_t t = t0; t < t1; ++t)
                for (int i = 0; i < hd; ++i) qh[(t - t0) * hd + i] = q[(t * n_heads + h) * hd + i] * scale;
            gemm_f32(qh.data(), rows, gemm_f32_view(kg + (size_t)g * len * hd, keys, hd), S.data());
            for (int64_t t = t0; t < t1; ++t) {
                float* row = &S[(t - t0) * keys];
                const int64_t valid = pos0 + t + 1;
                float mx = -INFINITY;
                for (int64_t j = 0; j < valid; ++j) mx = row[j] > mx ? row[j] : mx;
                float sum = 0.0f;
                for (int64_t j = 0; j < valid; ++j) sum += row[j] = std::exp(row[j] - mx);
                const float inv = 1.0f / sum;
                for (int64_t j = 0; j < valid; ++j) row[j] *= inv;
                for (int64_t j = valid; j < keys; ++j) row[j] = 0.0f;
            }
            const float* vg = vt + (size_t)g * hd * len;
            for (int i = 0; i < hd; ++i) std::copy(vg + (size_t)i * len, vg + (size_t)i * len + keys, &vb[(size_t)i * keys]);
            gemm_f32(S.data(), rows, gemm_f32_view(vb.data(), hd, keys), oh.data());
            for (int64_t t = t0; t < t1; ++t)
                std::copy(&oh[(t - t0) * hd], &oh[(t - t0) * hd] + hd, out + (t * n_heads + h) * hd);
        }
    }
}

void attention_f32(const float* q, const float* k, const float* v, int64_t kv_stride, int64_t n, int pos0,
                   int n_heads, int n_kv_heads, int hd, float* out) {
    if (n >= 16) {
        auto gather = [&](int64_t j, int g, float* kr, float* vr) {
            std::copy(k + j * kv_stride + g * hd, k + j * kv_stride + g * hd + hd, kr);
            std::copy(v + j * kv_stride + g * hd, v + j * kv_stride + g * hd + hd, vr);
        };
        return attention_gemm(q, gather, n, pos0, n_heads, n_kv_heads, hd, out);
    }
    attention_decode(q, k, v, kv_stride, n, pos0, n_heads, n_kv_heads, hd, out);
}

void attention_q4(const float* q, const KvQ4View& k, const KvQ4View& v, int64_t n, int pos0, int n_heads,
                  int n_kv_heads, int hd, float* out) {
    if (n >= 16) {
        auto gather = [&](int64_t j, int g, float* kr, float* vr) {
            kv_q4_row_ref(k, j, g, kr);
            kv_q4_row_ref(v, j, g, vr);
        };
        return attention_gemm(q, gather, n, pos0, n_heads, n_kv_heads, hd, out);
    }
    attention_decode_q4(q, k, v, n, pos0, n_heads, n_kv_heads, hd, out);
}

}  // namespace sq
