#include "kernels/cpu/q4_avx2.h"

#include <algorithm>

#include "core/threads.h"
#include "kernels/cpu/avx2.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/ref/q4_ref.h"

// The order of the float operations is q4_gemv_ref's; no contraction of
// a·b + c beyond the written FMAs.
#pragma GCC optimize("fp-contract=off")

namespace sq {

namespace {

// out[i] = [x_i · W_{r} for the 4 rows], i < MR. Per block and row: the 16
// code bytes → 32 signed codes (low nibbles: weights 0..15, high: 16..31),
// p = Σ x·c in 8 lanes (a mul and 3 FMAs), acc = fma(p, d, acc); MR·4
// accumulators ≤ 12 ymm. pf: bytes further down the stream to prefetch.
template <int MR>
SQ_AVX2 inline void tile(const float* x, int64_t ldx, const BlockQ4* const rows[4], int64_t nb, const char* pf,
                         __m128* out) {
    const __m128i m4 = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    __m256 acc[MR][4];
    for (int i = 0; i < MR; ++i)
        for (int r = 0; r < 4; ++r) acc[i][r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const float* xb = x + b * Q4_BLOCK;
        if (pf) {
            _mm_prefetch(pf + b * 72, _MM_HINT_T0);
            _mm_prefetch(pf + b * 72 + 64, _MM_HINT_T0);
        }
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
            const BlockQ4& blk = rows[r][b];
            const __m128i q = _mm_loadu_si128((const __m128i*)blk.qs);
            const __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m4), eight);                    // weights 0..15
            const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), eight);  // weights 16..31
            const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
            __m256 p[MR];
#pragma GCC unroll 4
            for (int s = 0; s < 4; ++s) {
                const __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[s]));
#pragma GCC unroll 3
                for (int i = 0; i < MR; ++i)
                    p[i] = s == 0 ? _mm256_mul_ps(_mm256_loadu_ps(xb + i * ldx), w)
                                  : _mm256_fmadd_ps(_mm256_loadu_ps(xb + i * ldx + 8 * s), w, p[i]);
            }
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(blk.d));
#pragma GCC unroll 3
            for (int i = 0; i < MR; ++i) acc[i][r] = _mm256_fmadd_ps(p[i], d, acc[i][r]);
        }
    }
    for (int i = 0; i < MR; ++i) out[i] = hsum4_ps(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
}

// Rows [j0, j1) of W (j1 − j0 ≤ 4) against all m rows of x.
SQ_AVX2 void group(const float* x, int64_t m, const BlockQ4* w, int64_t nb, int64_t n, int64_t j0, int64_t j1,
                   float* y) {
    const char* pf = j0 + 12 <= n ? (const char*)(w + (j0 + 8) * nb) : nullptr;  // two groups ahead
    const BlockQ4* rows[4];
    for (int r = 0; r < 4; ++r) rows[r] = w + std::min(j0 + r, j1 - 1) * nb;  // short group: repeat the last row
    const int64_t k = nb * Q4_BLOCK;
    auto store = [&](int64_t row, __m128 v) {
        alignas(16) float t[4];
        _mm_store_ps(t, v);
        for (int64_t r = 0; r < j1 - j0; ++r) y[row * n + j0 + r] = t[r];
    };
    int64_t i = 0;
    for (; i + 3 <= m; i += 3) {
        __m128 o[3];
        tile<3>(x + i * k, k, rows, nb, i == 0 ? pf : nullptr, o);
        for (int r = 0; r < 3; ++r) store(i + r, o[r]);
    }
    if (m - i == 2) {
        __m128 o[2];
        tile<2>(x + i * k, k, rows, nb, i == 0 ? pf : nullptr, o);
        store(i, o[0]);
        store(i + 1, o[1]);
    } else if (m - i == 1) {
        __m128 o[1];
        tile<1>(x + i * k, k, rows, nb, i == 0 ? pf : nullptr, o);
        store(i, o[0]);
    }
}

}  // namespace

void q4_gemv(const float* x, int64_t m, const BlockQ4* w, int64_t n, int64_t k, float* y) {
    if (m <= 0 || n <= 0) return;
    if (!(cpu_use_avx2() && cpu_features().f16c)) {
        cpu_warn_fallback("q4_gemv");
        q4_gemv_ref(x, m, w, n, k, y);
        return;
    }
    const int64_t nb = k / Q4_BLOCK;
    // Groups of 4 rows, a contiguous range per thread (rows are independent).
    parallel_for((n + 3) / 4, [&](int64_t g) { group(x, m, w, nb, n, g * 4, std::min(n, g * 4 + 4), y); });
}

}  // namespace sq
