#include "kernels/cpu/q8_avx2.h"

#include <algorithm>
#include <vector>

#include "core/fp16.h"
#include "core/threads.h"
#include "kernels/cpu/avx2.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/ref/q8_ref.h"

namespace sq {

namespace {

// out[i] = [x_i · W_{j0+r} for r < 4], i < MR; rows of W: `rows[r]` (nb blocks each).
// Per block and row: Σ x·q over 32 weights in a temporary (3 uops per 8
// weights: sign-extending load, int→float, FMA with x from memory), then
// acc += d · temp. 4 rows × MR ≤ 3 accumulators + temporaries ≤ 16 ymm.
// pf: the bytes of a group further down the stream (rows are contiguous, 4·nb
// blocks per group), prefetched 136 bytes per block step so that the whole
// group is in flight by the time it is reached; null: no prefetch.
template <int MR>
SQ_AVX2 inline void tile(const float* x, int64_t ldx, const BlockQ8* const rows[4], int64_t nb, const char* pf,
                         __m128* out) {
    __m256 acc[MR][4];
    for (int i = 0; i < MR; ++i)
        for (int r = 0; r < 4; ++r) acc[i][r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const float* xb = x + b * Q8_BLOCK;
        if (pf) {
            _mm_prefetch(pf + b * 136, _MM_HINT_T0);
            _mm_prefetch(pf + b * 136 + 64, _MM_HINT_T0);
            _mm_prefetch(pf + b * 136 + 128, _MM_HINT_T0);
        }
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
            const BlockQ8& blk = rows[r][b];
            __m256 part[MR];
#pragma GCC unroll 4
            for (int s = 0; s < 4; ++s) {
                const __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(blk.q + 8 * s))));
#pragma GCC unroll 3
                for (int i = 0; i < MR; ++i)
                    part[i] = s == 0 ? _mm256_mul_ps(_mm256_loadu_ps(xb + i * ldx), w)
                                     : _mm256_fmadd_ps(_mm256_loadu_ps(xb + i * ldx + 8 * s), w, part[i]);
            }
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(blk.d));
#pragma GCC unroll 3
            for (int i = 0; i < MR; ++i) acc[i][r] = _mm256_fmadd_ps(part[i], d, acc[i][r]);
        }
    }
    for (int i = 0; i < MR; ++i) out[i] = hsum4_ps(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
}

// Rows [j0, j1) of W (j1 − j0 ≤ 4) against all m rows of x.
SQ_AVX2 void group(const float* x, int64_t m, const BlockQ8* w, int64_t nb, int64_t n, int64_t j0, int64_t j1,
                   float* y) {
    // Two groups ahead (~5 KB at k = 576); near a thread's range end this
    // fetches the next thread's first rows early, which is harmless.
    const char* pf = j0 + 12 <= n ? (const char*)(w + (j0 + 8) * nb) : nullptr;
    const BlockQ8* rows[4];
    for (int r = 0; r < 4; ++r) rows[r] = w + std::min(j0 + r, j1 - 1) * nb;  // short group: repeat the last row
    const int64_t k = nb * Q8_BLOCK;
    int64_t i = 0;
    auto store = [&](int64_t row, __m128 v) {
        alignas(16) float t[4];
        _mm_store_ps(t, v);
        for (int64_t r = 0; r < j1 - j0; ++r) y[row * n + j0 + r] = t[r];
    };
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

void gemv_scalar(const float* x, int64_t m, const BlockQ8* w, int64_t n, int64_t k, float* y) {
    const int64_t nb = k / Q8_BLOCK;
    parallel_for(n, [&](int64_t j) {
        std::vector<float> row(k);
        q8_dequant_row(w + j * nb, k, row.data());
        for (int64_t t = 0; t < m; ++t) {
            float s = 0.0f;
            for (int64_t c = 0; c < k; ++c) s += x[t * k + c] * row[c];
            y[t * n + j] = s;
        }
    });
}

}  // namespace

void q8_gemv(const float* x, int64_t m, const BlockQ8* w, int64_t n, int64_t k, float* y) {
    if (m <= 0 || n <= 0) return;
    if (!(cpu_use_avx2() && cpu_features().f16c)) {
        cpu_warn_fallback("q8_gemv");
        gemv_scalar(x, m, w, n, k, y);
        return;
    }
    const int64_t nb = k / Q8_BLOCK;
    // Groups of 4 rows, a contiguous range per thread (rows are independent).
    parallel_for((n + 3) / 4, [&](int64_t g) { group(x, m, w, nb, n, g * 4, std::min(n, g * 4 + 4), y); });
}

}  // namespace sq
