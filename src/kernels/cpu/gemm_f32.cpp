// AVX2+FMA FP32 GEMM/GEMV. See gemm_f32.h for the layout and
// docs/kernels-cpu-notes.md for the measurements behind the numbers below.
//
// Micro-kernel (tile<3, 4>): per 8 k-lanes, 3 loads of x + 4 loads of W feed
// 12 FMAs into 12 ymm accumulators (16 ymm registers in all: 12 acc, 3 x, 1 W).
// Zen 4 issues 2 FMAs and 2–3 loads per cycle, so 7 loads per 12 FMAs leave
// the FMA pipes as the bottleneck; 12 independent chains cover the 4-cycle
// FMA latency × 2 pipes = 8 in flight. The 8 lanes of each accumulator are
// summed with 3 hadds per 4 accumulators once per k-block (≤ 5% of the FMAs
// for kc ≥ 288).
#include "kernels/cpu/gemm_f32.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "core/threads.h"
#include "kernels/cpu/avx2.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/ref/gemm_ref.h"

namespace sq {

namespace {

constexpr int64_t kMR = 3;  // rows of x per tile
constexpr int64_t kNR = 4;  // rows of W per tile (= one hadd reduction)

// Mask selecting the first r (1..7) of 8 lanes, for the k tail.
SQ_AVX2 inline __m256i tail_mask(int64_t r) {
    alignas(32) static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i*)(m + 8 - r));
}

// y[i, j] (+)= sum_{p<kc} x[i*ldx + p] * w[j*ldw + p] for i < MR, j < NR.
// add = false on the first k-block (y may hold NaN poison), true after.
// kPrefetch (GEMV only, where the NR rows are whole and contiguous, ldw == kc):
// the bytes that come next in memory are the next tile's NR rows; pull them
// into L2 at the rate this tile consumes its own (2 lines per 8 k-lanes of 4
// rows). Short rows (k = 576: 2.3 KB) restart the hardware prefetcher's
// streams every tile; this kept decode at ~55–75% of the streaming bandwidth
// without and ~80–90% with (notes, v2).
// W as float32 or as fp16 (uint16_t, converted with F16C: exact, so an fp16
// W gives the bits of the float32 W holding the same values).
SQ_AVX2 inline __m256 load_w(const float* p) { return _mm256_loadu_ps(p); }
SQ_AVX2 inline __m256 load_w(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
SQ_AVX2 inline __m256 load_w_tail(const float* p, int64_t r, __m256i mk) { return _mm256_maskload_ps(p, mk); }
SQ_AVX2 inline __m256 load_w_tail(const uint16_t* p, int64_t r, __m256i) {
    alignas(16) uint16_t t[8] = {};  // zeros past the row end, as maskload gives
    std::memcpy(t, p, r * sizeof(uint16_t));
    return _mm256_cvtph_ps(_mm_load_si128((const __m128i*)t));
}

template <int MR, int NR, bool kPrefetch, class WT = float>
SQ_AVX2 inline void tile(const float* x, int64_t ldx, const WT* w, int64_t ldw, int64_t kc,
                         float* y, int64_t ldy, bool add) {
    __m256 acc[MR][NR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();

    const char* ahead = (const char*)(w + NR * ldw);
    int64_t p = 0;
    for (; p + 8 <= kc; p += 8) {
        if constexpr (kPrefetch) {
            _mm_prefetch(ahead + p * NR * sizeof(WT), _MM_HINT_T1);
            if constexpr (sizeof(WT) == 4) _mm_prefetch(ahead + p * NR * 4 + 64, _MM_HINT_T1);
        }
        __m256 xv[MR];
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) xv[i] = _mm256_loadu_ps(x + i * ldx + p);
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) {
            const __m256 wv = load_w(w + j * ldw + p);
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }
    if (p < kc) {  // k tail: masked loads read nothing past the row end
        const __m256i mk = tail_mask(kc - p);
        __m256 xv[MR];
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) xv[i] = _mm256_maskload_ps(x + i * ldx + p, mk);
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) {
            const __m256 wv = load_w_tail(w + j * ldw + p, kc - p, mk);
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }

    const __m256 z = _mm256_setzero_ps();
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
        __m128 s = hsum4_ps(acc[i][0], NR > 1 ? acc[i][NR > 1 ? 1 : 0] : z, NR > 2 ? acc[i][NR > 2 ? 2 : 0] : z,
                         NR > 3 ? acc[i][NR > 3 ? 3 : 0] : z);
        float* yi = y + i * ldy;
        if constexpr (NR == 4) {
            if (add) s = _mm_add_ps(s, _mm_loadu_ps(yi));
            _mm_storeu_ps(yi, s);
        } else {
            alignas(16) float t[4];
            _mm_store_ps(t, s);
            for (int j = 0; j < NR; ++j) yi[j] = add ? yi[j] + t[j] : t[j];
        }
    }
}

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t, bool);
using TileFn16 = void (*)(const float*, int64_t, const uint16_t*, int64_t, int64_t, float*, int64_t, bool);
const TileFn16 tile_table_gemv16[kMR][kNR] = {
    {tile<1, 1, true, uint16_t>, tile<1, 2, true, uint16_t>, tile<1, 3, true, uint16_t>, tile<1, 4, true, uint16_t>},
    {tile<2, 1, true, uint16_t>, tile<2, 2, true, uint16_t>, tile<2, 3, true, uint16_t>, tile<2, 4, true, uint16_t>},
    {tile<3, 1, true, uint16_t>, tile<3, 2, true, uint16_t>, tile<3, 3, true, uint16_t>, tile<3, 4, true, uint16_t>},
};

// tile_table[mr-1][nr-1]: edge tiles for m % 3 and n % 4 remainders.
const TileFn tile_table[kMR][kNR] = {
    {tile<1, 1, false>, tile<1, 2, false>, tile<1, 3, false>, tile<1, 4, false>},
    {tile<2, 1, false>, tile<2, 2, false>, tile<2, 3, false>, tile<2, 4, false>},
    {tile<3, 1, false>, tile<3, 2, false>, tile<3, 3, false>, tile<3, 4, false>},
};
const TileFn tile_table_gemv[kMR][kNR] = {
    {tile<1, 1, true>, tile<1, 2, true>, tile<1, 3, true>, tile<1, 4, true>},
    {tile<2, 1, true>, tile<2, 2, true>, tile<2, 3, true>, tile<2, 4, true>},
    {tile<3, 1, true>, tile<3, 2, true>, tile<3, 3, true>, tile<3, 4, true>},
};

// One task of gemm_f32: rows [i0, i1) of x against rows [j0, j1) of W.
// Loop order (outer→inner): k-block, W strip of 4 rows (stays in L1 while
// the 3-row x strips of the mc block stream from L2), x strip. While one W
// strip is in use, the next one (from DRAM for large n, e.g. lm_head) is
// prefetched into L2, a few lines per x strip, so the first tile of each
// strip does not stall on memory.
SQ_AVX2 void gemm_task(const float* x, const float* w, float* y, int64_t n, int64_t k, int64_t kc, int64_t i0,
                       int64_t i1, int64_t j0, int64_t j1) {
    const int64_t tiles = (i1 - i0 + kMR - 1) / kMR;
    for (int64_t p0 = 0; p0 < k; p0 += kc) {
        const int64_t kb = std::min(kc, k - p0);
        const bool add = p0 > 0;
        const int64_t row_lines = (kb * 4 + 63) / 64;
        for (int64_t j = j0; j < j1; j += kNR) {
            const int64_t nr = std::min(kNR, j1 - j);
            const float* wj = w + j * k + p0;
            // next strip: rows [j + 4, j + 8) of this k-block, if in this task
            const int64_t next_rows = std::min(kNR, j1 - j - kNR);
            const int64_t pf_lines = std::max<int64_t>(0, next_rows) * row_lines;
            const int64_t pf_per_tile = (pf_lines + tiles - 1) / tiles;
            int64_t pf = 0;
            auto prefetch_some = [&] {
                for (int64_t e = std::min(pf_lines, pf + pf_per_tile); pf < e; ++pf) {
                    const int64_t r = pf / row_lines, off = (pf % row_lines) * 16;
                    _mm_prefetch((const char*)(wj + (kNR + r) * k + off), _MM_HINT_T1);
                }
            };
            int64_t i = i0;
            const TileFn full = tile_table[kMR - 1][nr - 1];
            for (; i + kMR <= i1; i += kMR) {
                prefetch_some();
                full(x + i * k + p0, k, wj, k, kb, y + i * n + j, n, add);
            }
            if (i < i1) {
                prefetch_some();
                tile_table[i1 - i - 1][nr - 1](x + i * k + p0, k, wj, k, kb, y + i * n + j, n, add);
            }
        }
    }
}

// Rows [j0, j1) of W against all m rows of x, whole k at once: W streams once.
// W is float32 or fp16 (uint16_t bits): the same tiles in the same order.
const auto& gemv_tiles(const float*) { return tile_table_gemv; }
const auto& gemv_tiles(const uint16_t*) { return tile_table_gemv16; }

// Each 4-row group of W is streamed front to back once, k-block after k-block (gemm_f32's blocks,
// gemm_f32_kc: every output gets gemm_f32's bits, whatever m).
template <class T>
SQ_AVX2 void gemv_rows(const float* x, int64_t m, const T* w, float* y, int64_t n, int64_t k, int64_t j0, int64_t j1) {
    const auto& table = gemv_tiles(w);
    const int64_t kc = gemm_f32_kc(k);
    for (int64_t j = j0; j < j1; j += kNR) {
        const int64_t nr = std::min(kNR, j1 - j);
        for (int64_t i = 0; i < m; i += kMR) {
            const int64_t mr = std::min(kMR, m - i);
            for (int64_t p0 = 0; p0 < k; p0 += kc)
                table[mr - 1][nr - 1](x + i * k + p0, k, w + j * k + p0, k, std::min(kc, k - p0), y + i * n + j, n,
                                      p0 > 0);
        }
    }
}

void check_args(const char* fn, const float* x, int64_t m, const PackedF32& w, const float* y) {
    SQ_CHECK(m >= 0 && w.n >= 0 && w.k >= 0, fn, ": negative shape m=", m, " n=", w.n, " k=", w.k);
    SQ_CHECK(m == 0 || w.n == 0 || (x && y && (w.k == 0 || w.data())), fn, ": null pointer for m=", m,
             " n=", w.n, " k=", w.k);
}

}  // namespace

PackedF32 gemm_f32_pack(const float* w, int64_t n, int64_t k) {
    SQ_CHECK(n >= 0 && k >= 0, "gemm_f32_pack: negative shape n=", n, " k=", k);
    PackedF32 p;
    p.n = n;
    p.k = k;
    p.owned.assign(w, w + n * k);
    return p;
}

PackedF32 gemm_f32_view(const float* w, int64_t n, int64_t k) {
    SQ_CHECK(n >= 0 && k >= 0, "gemm_f32_view: negative shape n=", n, " k=", k);
    PackedF32 p;
    p.n = n;
    p.k = k;
    p.borrowed = w;
    return p;
}

void gemm_f32(const float* x, int64_t m, const PackedF32& w, float* y) { gemm_f32(x, m, w, y, GemmF32Blocking{}); }

void gemm_f32(const float* x, int64_t m, const PackedF32& w, float* y, const GemmF32Blocking& b) {
    check_args("gemm_f32", x, m, w, y);
    SQ_CHECK(b.kc_max >= 8 && b.mc >= kMR && b.mc % kMR == 0 && b.nc >= kNR && b.nc % kNR == 0,
             "gemm_f32: bad blocking kc_max=", b.kc_max, " mc=", b.mc, " nc=", b.nc);
    const int64_t n = w.n, k = w.k;
    if (m == 0 || n == 0) return;
    if (k == 0) {
        std::fill(y, y + m * n, 0.0f);
        return;
    }
    const float* wd = w.data();
    if (!cpu_use_avx2()) {
        cpu_warn_fallback("gemm_f32");
        gemm_f32_ref(x, m, wd, n, k, y);
        return;
    }
    const int64_t kc = gemm_f32_kc(k, b.kc_max);
    // Equal-sized blocks not above mc × nc (multiples of the 3×4 tile), so no
    // short task is left for one thread at the end: with n = 576, nc = 128
    // gave 4.5 W blocks per x block and cost ~10% on 2 threads.
    const int64_t mb = (m + b.mc - 1) / b.mc, nb = (n + b.nc - 1) / b.nc;
    const int64_t mc = ((m + mb - 1) / mb + kMR - 1) / kMR * kMR;
    const int64_t nc = ((n + nb - 1) / nb + kNR - 1) / kNR * kNR;
    // Task t = (x block t / nb, W block t % nb): consecutive tasks share the
    // x block, which each core then keeps in its L2; W blocks stream.
    parallel_for_dynamic(mb * nb, [&](int64_t t) {
        const int64_t ib = t / nb, jb = t % nb;
        const int64_t i0 = std::min(m, ib * mc), j0 = std::min(n, jb * nc);
        const int64_t i1 = std::min(m, i0 + mc), j1 = std::min(n, j0 + nc);
        if (i0 < i1 && j0 < j1) gemm_task(x, wd, y, n, k, kc, i0, i1, j0, j1);
    });
}

void gemv_f32_rows(const float* x, int64_t m, const PackedF32& w, float* y, int64_t j0, int64_t j1) {
    check_args("gemv_f32_rows", x, m, w, y);
    SQ_CHECK(0 <= j0 && j0 <= j1 && j1 <= w.n && j0 % kNR == 0, "gemv_f32_rows: rows [", j0, ", ", j1, ") of ", w.n);
    if (m == 0 || j0 == j1) return;
    if (w.k == 0) {
        for (int64_t t = 0; t < m; ++t) std::fill(y + t * w.n + j0, y + t * w.n + j1, 0.0f);
        return;
    }
    if (!cpu_use_avx2()) {
        cpu_warn_fallback("gemv_f32");
        for (int64_t t = 0; t < m; ++t)
            for (int64_t j = j0; j < j1; ++j) gemm_f32_ref(x + t * w.k, 1, w.data() + j * w.k, 1, w.k, y + t * w.n + j);
        return;
    }
    gemv_rows(x, m, w.data(), y, w.n, w.k, j0, j1);
}

void gemv_f32(const float* x, int64_t m, const PackedF32& w, float* y) {
    check_args("gemv_f32", x, m, w, y);
    const int64_t n = w.n, k = w.k;
    if (m == 0 || n == 0) return;
    if (k == 0) {
        std::fill(y, y + m * n, 0.0f);
        return;
    }
    const float* wd = w.data();
    if (!cpu_use_avx2()) {
        cpu_warn_fallback("gemv_f32");
        gemm_f32_ref(x, m, wd, n, k, y);
        return;
    }
    // One contiguous range of W rows per thread (multiple of 4 rows), so
    // each core streams its part of W front to back exactly once.
    const int64_t nt = std::max(1, threads_count());
    const int64_t per = ((n + nt - 1) / nt + kNR - 1) / kNR * kNR;
    parallel_for(nt, [&](int64_t t) {
        const int64_t j0 = std::min(n, t * per), j1 = std::min(n, (t + 1) * per);
        if (j0 < j1) gemv_rows(x, m, wd, y, n, k, j0, j1);
    });
}

void gemm_f32_rows(const float* x, int64_t m, int64_t n, int64_t k,
                   const std::function<void(int64_t r, float* dst)>& row, float* y) {
    if (m <= 0 || n <= 0) return;
    // The slab (512 × k floats, 1.2 MB at k = 576) costs ~1/m of its GEMM to
    // make. thread_local buffers: the lambdas below run on other threads, so
    // they get raw pointers, never the names.
    const int64_t slab = 512;
    thread_local std::vector<float> wbuf, ybuf;
    wbuf.resize((size_t)std::min(slab, n) * k);
    ybuf.resize((size_t)m * std::min(slab, n));
    float* wf = wbuf.data();
    float* yt = ybuf.data();
    for (int64_t j0 = 0; j0 < n; j0 += slab) {
        const int64_t nj = std::min(slab, n - j0);
        parallel_for(nj, [&](int64_t r) { row(j0 + r, wf + r * k); });
        gemm_f32(x, m, gemm_f32_view(wf, nj, k), yt);
        parallel_for(m, [&](int64_t t) { std::memcpy(y + t * n + j0, yt + t * nj, nj * sizeof(float)); });
    }
}

void gemv_f16_rows(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, int64_t j0,
                   int64_t j1) {
    SQ_CHECK(m >= 0 && n >= 0 && k >= 0 && 0 <= j0 && j0 <= j1 && j1 <= n && j0 % kNR == 0, "gemv_f16_rows: rows [",
             j0, ", ", j1, ") of ", n, ", m ", m, ", k ", k);
    if (m == 0 || j0 == j1) return;
    if (k == 0) {
        for (int64_t t = 0; t < m; ++t) std::fill(y + t * n + j0, y + t * n + j1, 0.0f);
        return;
    }
    if (!cpu_use_avx2() || !cpu_features().f16c) {
        cpu_warn_fallback("gemv_f16");
        std::vector<float> row(k);
        for (int64_t j = j0; j < j1; ++j) {
            for (int64_t p = 0; p < k; ++p) row[p] = fp16_to_fp32(w[j * k + p]);
            for (int64_t t = 0; t < m; ++t) gemm_f32_ref(x + t * k, 1, row.data(), 1, k, y + t * n + j);
        }
        return;
    }
    gemv_rows(x, m, w, y, n, k, j0, j1);
}

void gemm_f16(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y) {
    if (m <= 0 || n <= 0) return;
    if (m <= gemv_f32_max_m) {  // as gemv_f32: one contiguous range of rows per thread
        const int64_t nt = std::max(1, threads_count());
        const int64_t per = ((n + nt - 1) / nt + kNR - 1) / kNR * kNR;
        parallel_for(nt, [&](int64_t t) {
            const int64_t j0 = std::min(n, t * per), j1 = std::min(n, (t + 1) * per);
            if (j0 < j1) gemv_f16_rows(x, m, w, n, k, y, j0, j1);
        });
        return;
    }
    gemm_f32_rows(x, m, n, k, [w, k](int64_t r, float* dst) {
        for (int64_t p = 0; p < k; ++p) dst[p] = fp16_to_fp32(w[r * k + p]);
    }, y);
}

}  // namespace sq
