#include "kernels/cpu/attention_decode.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/threads.h"
#include "kernels/cpu/avx2.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/ref/attention_ref.h"

// The reference's order of operations exactly: no contraction beyond the
// written FMAs.
#pragma GCC optimize("fp-contract=off")

namespace sq {

namespace {

constexpr int kKeys = kAttentionChunk;  // cache rows per unit (all KV heads: 24 KB at SmolLM2)
constexpr int kMaxGroup = 8;  // query heads per KV head with a kernel (LLaMA-3: 4, SmolLM2: 3)

// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))
SQ_AVX2 inline float tree8(__m256 a) {
    const __m128 p = _mm_hadd_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 r = _mm_hadd_ps(p, p);
    return _mm_cvtss_f32(r) + _mm_cvtss_f32(_mm_shuffle_ps(r, r, 1));
}

// Cache rows as the phases read them: 8 consecutive dims of row j of the
// current KV head as floats. F32Rows: a float cache (kv_stride floats per
// position); Q4Rows: the 4-bit cache (kernels/ref/attention_ref.h layout),
// dequantized in registers with the reference's expression
// (float)(c − z) · s (+ shift), so the FMAs see the same floats.
struct F32Rows {
    const float* base;  // position 0, KV head 0
    int64_t stride;
    int hd;
    const float* row = nullptr;  // head g: base + g·hd
    SQ_AVX2 F32Rows head(int g) const {
        F32Rows r = *this;
        r.row = base + (int64_t)g * hd;
        return r;
    }
    SQ_AVX2 __m256 load(int64_t j, int i) const { return _mm256_loadu_ps(row + j * stride + i); }
    // All cache lines of rows [j0, j1): the phases read a run of rows in
    // several passes (one per KV head and dim block), and without this each
    // pass waits for its own line of every row (measured: the V loads of
    // phase 3 took half of its time).
    SQ_AVX2 void prefetch(int64_t j0, int64_t j1, int n_kv) const {
        for (int64_t j = j0; j < j1; ++j)
            for (int64_t f = 0; f < (int64_t)n_kv * hd; f += 16)
                _mm_prefetch((const char*)(base + j * stride + f), _MM_HINT_T0);
    }
};

struct Q4Rows {
    KvQ4View kv;
    int g = 0;
    SQ_AVX2 Q4Rows head(int gg) const {
        Q4Rows r = *this;
        r.g = gg;
        return r;
    }
    SQ_AVX2 __m256 load(int64_t j, int i) const {
        const int64_t r = j * kv.n_kv + g;
        __m128i b = _mm_loadl_epi64((const __m128i*)(kv.codes + r * (kv.hd / 2) + (i >> 4) * 8));
        if (i & 8) b = _mm_srli_epi16(b, 4);
        b = _mm_and_si128(b, _mm_set1_epi8(15));
        const __m256i c = _mm256_sub_epi32(_mm256_cvtepu8_epi32(b), _mm256_set1_epi32(kv.zero[r]));
        __m256 x = _mm256_mul_ps(_mm256_cvtepi32_ps(c), _mm256_set1_ps(kv.scale[r]));
        if (kv.shift) x = _mm256_add_ps(x, _mm256_loadu_ps(kv.shift + g * kv.hd + i));
        return x;
    }
    SQ_AVX2 void prefetch(int64_t j0, int64_t j1, int n_kv) const {  // codes of rows [j0, j1): 96 B each at SmolLM2
        const char* p0 = (const char*)(kv.codes + j0 * n_kv * (kv.hd / 2));
        const char* p1 = (const char*)(kv.codes + j1 * n_kv * (kv.hd / 2));
        for (const char* p = p0; p < p1; p += 64) _mm_prefetch(p, _MM_HINT_T0);
    }
};

// Phase 1 for keys [j0, j1) of one KV head, token t: NK keys at a time, each
// K row loaded once per 8 dims and dotted with the G query heads: NK·G
// independent FMA chains (12 at SmolLM2's G = 3) instead of one 8-deep chain
// per dot. Every dot is still its own 8-lane chain over ascending i.
template <int G, int NK, class Rows>
SQ_AVX2 void scores(const float* qt, const Rows& kg, int hd, int64_t j0, int64_t j1, float scale, float* srow,
                    int64_t lmax) {
    int64_t j = j0;
    for (; j + NK <= j1; j += NK) {
        __m256 acc[NK][G];
#pragma GCC unroll 8
        for (int kk = 0; kk < NK; ++kk)
#pragma GCC unroll 8
            for (int hh = 0; hh < G; ++hh) acc[kk][hh] = _mm256_setzero_ps();
        for (int i = 0; i < hd; i += 8) {
#pragma GCC unroll 8
            for (int kk = 0; kk < NK; ++kk) {
                const __m256 kv = kg.load(j + kk, i);
#pragma GCC unroll 8
                for (int hh = 0; hh < G; ++hh)
                    acc[kk][hh] = _mm256_fmadd_ps(_mm256_loadu_ps(qt + hh * hd + i), kv, acc[kk][hh]);
            }
        }
#pragma GCC unroll 8
        for (int kk = 0; kk < NK; ++kk)
#pragma GCC unroll 8
            for (int hh = 0; hh < G; ++hh) srow[hh * lmax + j + kk] = tree8(acc[kk][hh]) * scale;
    }
    for (; j < j1; ++j) {
        __m256 acc[G];
#pragma GCC unroll 8
        for (int hh = 0; hh < G; ++hh) acc[hh] = _mm256_setzero_ps();
        for (int i = 0; i < hd; i += 8) {
            const __m256 kv = kg.load(j, i);
#pragma GCC unroll 8
            for (int hh = 0; hh < G; ++hh) acc[hh] = _mm256_fmadd_ps(_mm256_loadu_ps(qt + hh * hd + i), kv, acc[hh]);
        }
#pragma GCC unroll 8
        for (int hh = 0; hh < G; ++hh) srow[hh * lmax + j] = tree8(acc[hh]) * scale;
    }
}

// Phase 3 for one chunk of keys [j0, j1) of one KV head: partial outputs
// P[h][i] of the G query heads, 8·C dims at a time in registers (the rows of
// the chunk stay in L1 across the dim blocks: 32 × 768 B at SmolLM2).
template <int G, int C, class Rows>
SQ_AVX2 void partials(const float* a, int64_t lmax, const Rows& vg, int64_t j0, int64_t j1, float* P, int hd) {
    for (int d0 = 0; d0 < hd; d0 += 8 * C) {
        __m256 acc[C][G];
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
            for (int hh = 0; hh < G; ++hh) acc[c][hh] = _mm256_setzero_ps();
        for (int64_t j = j0; j < j1; ++j) {
#pragma GCC unroll 8
            for (int c = 0; c < C; ++c) {
                const __m256 vj = vg.load(j, d0 + 8 * c);
#pragma GCC unroll 8
                for (int hh = 0; hh < G; ++hh)
                    acc[c][hh] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + hh * lmax + j), vj, acc[c][hh]);
            }
        }
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
            for (int hh = 0; hh < G; ++hh) _mm256_storeu_ps(P + hh * hd + d0 + 8 * c, acc[c][hh]);
    }
}

template <int G, class Rows>
SQ_AVX2 void run(const float* q, const Rows& k, const Rows& v, int64_t n, int pos0, int H, int KV, int hd, float* out,
                 float* S, float* Pb) {
    constexpr int NK = G >= 7 ? 1 : G >= 4 ? 2 : G == 3 ? 4 : 6 / G;  // NK·G ≤ 12 accumulators
    constexpr int C = G <= 6 ? 2 : 1;                    // C·G ≤ 12
    const int64_t lmax = pos0 + n;
    const int64_t chunks = (lmax + kKeys - 1) / kKeys;
    const float scale = 1.0f / std::sqrt((float)hd);
    const int64_t u1 = n * chunks, u2 = n * H;
    const int nt = std::max(1, threads_count());
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static)
        for (int64_t u = 0; u < u1; ++u) {  // 1. scores: a run of whole cache rows, every KV head
            const int64_t t = u / chunks, c = u % chunks;
            const int64_t len = pos0 + t + 1, j0 = c * kKeys, j1 = std::min(len, j0 + kKeys);
            k.prefetch(j0, j1, KV);
            for (int g = 0; g < KV && j0 < j1; ++g)
                scores<G, NK>(q + (t * H + g * G) * hd, k.head(g), hd, j0, j1, scale, S + (t * H + g * G) * lmax,
                              lmax);
        }
#pragma omp for schedule(static)
        for (int64_t u = 0; u < u2; ++u) {  // 2. softmax → weights a_j
            const int64_t t = u / H, len = pos0 + t + 1;
            float* s = S + u * lmax;
            float m = -INFINITY;
            for (int64_t j = 0; j < len; ++j) m = s[j] > m ? s[j] : m;
            float sum = 0.0f;
            for (int64_t j = 0; j < len; ++j) {
                s[j] = std::exp(s[j] - m);
                sum += s[j];
            }
            const float inv = 1.0f / sum;
            for (int64_t j = 0; j < len; ++j) s[j] = s[j] * inv;
        }
#pragma omp for schedule(static)
        for (int64_t u = 0; u < u1; ++u) {  // 3. partial outputs per run of 32 whole cache rows
            const int64_t t = u / chunks, c = u % chunks;
            const int64_t len = pos0 + t + 1, j0 = c * kKeys, j1 = std::min(len, j0 + kKeys);
            v.prefetch(j0, j1, KV);
            for (int g = 0; g < KV && j0 < j1; ++g) {
                const float* a = S + (t * H + g * G) * lmax;
                float* P = Pb + ((t * chunks + c) * H + g * G) * hd;
                if (hd % (8 * C) == 0) partials<G, C>(a, lmax, v.head(g), j0, j1, P, hd);
                else partials<G, 1>(a, lmax, v.head(g), j0, j1, P, hd);
            }
        }
#pragma omp for schedule(static)
        for (int64_t u = 0; u < u2; ++u) {  // 4. o = P_0 + P_1 + … in chunk order
            const int64_t t = u / H, h = u % H, len = pos0 + t + 1, nc = (len + kKeys - 1) / kKeys;
            float* o = out + u * hd;
            for (int64_t c = 0; c < nc; ++c) {
                const float* P = Pb + ((t * chunks + c) * H + h) * hd;
                if (c == 0) {
                    for (int i = 0; i < hd; i += 8) _mm256_storeu_ps(o + i, _mm256_loadu_ps(P + i));
                } else {
                    for (int i = 0; i < hd; i += 8)
                        _mm256_storeu_ps(o + i, _mm256_add_ps(_mm256_loadu_ps(o + i), _mm256_loadu_ps(P + i)));
                }
            }
        }
    }
}

template <class Rows>
void dispatch(const float* q, const Rows& k, const Rows& v, int64_t n, int pos0, int n_heads, int n_kv_heads, int hd,
              float* out) {
    thread_local std::vector<float> S, P;  // [n, n_heads, pos0 + n] scores, then weights; partial outputs
    S.resize((size_t)n * n_heads * (pos0 + n));
    P.resize((size_t)n * ((pos0 + n + kKeys - 1) / kKeys) * n_heads * hd);
    float* sp = S.data();
    float* pp = P.data();
    switch (n_heads / n_kv_heads) {
#define SQ_ATT_CASE(g) \
    case g: return run<g>(q, k, v, n, pos0, n_heads, n_kv_heads, hd, out, sp, pp);
        SQ_ATT_CASE(1) SQ_ATT_CASE(2) SQ_ATT_CASE(3) SQ_ATT_CASE(4) SQ_ATT_CASE(5) SQ_ATT_CASE(6) SQ_ATT_CASE(7)
        SQ_ATT_CASE(8)
#undef SQ_ATT_CASE
    }
}

}  // namespace

void attention_decode(const float* q, const float* k, const float* v, int64_t kv_stride, int64_t n, int pos0,
                      int n_heads, int n_kv_heads, int hd, float* out) {
    if (n <= 0) return;
    const int G = n_heads / n_kv_heads;
    if (!cpu_use_avx2() || hd % 8 != 0 || G > kMaxGroup) {
        if (!cpu_use_avx2()) cpu_warn_fallback("attention_decode");
        attention_decode_ref(q, k, v, kv_stride, n, pos0, n_heads, n_kv_heads, hd, out);
        return;
    }
    const F32Rows kr{k, kv_stride, hd}, vr{v, kv_stride, hd};
    dispatch(q, kr, vr, n, pos0, n_heads, n_kv_heads, hd, out);
}

void attention_decode_q4(const float* q, const KvQ4View& k, const KvQ4View& v, int64_t n, int pos0, int n_heads,
                         int n_kv_heads, int hd, float* out) {
    if (n <= 0) return;
    const int G = n_heads / n_kv_heads;
    if (!cpu_use_avx2() || hd % 16 != 0 || G > kMaxGroup) {
        if (!cpu_use_avx2()) cpu_warn_fallback("attention_decode_q4");
        attention_decode_q4_ref(q, k, v, n, pos0, n_heads, n_kv_heads, hd, out);
        return;
    }
    const Q4Rows kr{k}, vr{v};
    dispatch(q, kr, vr, n, pos0, n_heads, n_kv_heads, hd, out);
}

}  // namespace sq
