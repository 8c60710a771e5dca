// AVX2 W4A4 / W4A16 kernels. Layout and API: w4a4_avx2.h. Versions and
// measurements: docs/kernels-cpu-notes.md ("W4A4").
//
// Integer micro-kernel (int_tile<MR>): MR (1..3) activation rows × one group
// of 4 weight rows, per 64 weights: 4 × 32-byte loads of packed weights, each
// split into 32 low and 32 high nibbles (and / srli+and), 2·MR·4 maddubs
// (vpmaddubsw u8 × s8 → int16 pair sums) with the activations as the memory
// operand, added into MR·4 int16 accumulators (12 ymm at MR = 3, + 1 weight
// vector + 1 product + the 0x0F mask = 15 registers). madd with ones
// (int16 pairs → int32) runs only once per `flush` blocks:
//   - maddubs: |u0·a0 + u1·a1| ≤ 2·15·128 = 3840 < 32767, never saturates
//     (u ≤ 15 unsigned, a ∈ [−128, 127]; at 4-bit activations a ≤ 15: ≤ 450).
//   - int16 accumulator lane: + 2 products per 64-weight block, so
//     flush = ⌊32767 / (4·15·amax)⌋ blocks keep it exact (amax = max |a|:
//     15 at 4 bits → 36 blocks = 2304 weights; 128 at 8 bits → 4 blocks).
// Everything integer is exact, so tiling and threads cannot change a bit.
//
// Exactness of the offset weights (u = code + 8, a = q − o, pads a = 0):
//   Σ q·code = Σ (a + o)(u − 8) = Σ a·u − 8 Σ a + o (Σ u − 8K) = Σ a·u − 8 Σ a + o·rowsum.
//
// Float epilogue per output, in the reference's order:
//   y = (s_t · scale_j) · float(acc − z_t·rowsum_j)    bitwise = w4a4_epilogue_ref
//     + Σ_r zb[t, r]·C[j, r]   (8-lane FMA chain over r, fixed hadd tree: the
//                               same for every element whatever the tile)
//     + bias_j
#include "kernels/cpu/w4a4_avx2.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/avx2.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/ref/w4a4_ref.h"
#include "kernels/w4a4_format.h"

// GCC contracts a·b + c into an FMA by default in C++ (-ffp-contract=fast,
// even with -std=c++20) once "fma" is a target feature, intrinsics included.
// The act-quant parameters and the epilogue must round like the reference
// (compiled without FMA), so contraction is off in this file; the FMAs we
// want are written as _mm256_fmadd_ps.
#pragma GCC optimize("fp-contract=off")

namespace sq {

namespace {

constexpr int64_t kGroup = W4A4Weights::kRows;
constexpr int64_t kBlock = 64;       // weights per 32-byte block
constexpr int64_t kGroupBlock = 128; // bytes per (group, block)
constexpr int kMR = 3;               // activation rows per tile (3 spills, see notes)

void require_avx2(const char* fn) {
    SQ_CHECK(w4a4_avx2_available(), fn, ": needs AVX2+FMA+F16C (", cpu_describe(),
             (cpu_use_avx2() ? "" : ", or scalar forced"), "); use make_linear_w4a4(..., auto) for the reference");
}

// ---------------------------------------------------------------- act quant

// 8 codes: clamp(rint(x / s) + z, 0, qmax), NaN → z (std::clamp on a
// non-NaN v is max(v, 0) then min(·, qmax); −0 and +0 convert alike).
SQ_AVX2 inline __m256i codes8(const float* p, __m256 sv, __m256 zf, __m256 hi) {
    const __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(p), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 v = _mm256_add_ps(r, zf);
    v = _mm256_blendv_ps(v, zf, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    v = _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), hi);
    return _mm256_cvtps_epi32(v);
}

// One row, the reference's arithmetic op for op (see act_quant_ref):
// max/min against 0 ignoring NaN (max_ps(v, acc) returns acc when v is NaN,
// as std::max(acc, v) does; lanes start at +0 and are replaced only by
// strictly larger/smaller values, so no −0 appears and the order of the
// reduction cannot matter), then q = clamp(rint(x / s) + z, 0, qmax) with
// a true division and round-half-even, NaN → z.
SQ_AVX2 void quant_row(const float* x, int64_t k, int bits, float clip, uint8_t* q, float* s_out, int32_t* z_out) {
    __m256 mx0 = _mm256_setzero_ps(), mx1 = mx0, mn0 = mx0, mn1 = mx0;
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
        mx0 = _mm256_max_ps(v0, mx0);
        mx1 = _mm256_max_ps(v1, mx1);
        mn0 = _mm256_min_ps(v0, mn0);
        mn1 = _mm256_min_ps(v1, mn1);
    }
    alignas(32) float hx[8], hn[8];
    _mm256_store_ps(hx, _mm256_max_ps(mx0, mx1));
    _mm256_store_ps(hn, _mm256_min_ps(mn0, mn1));
    float mx = 0.0f, mn = 0.0f;
    for (int l = 0; l < 8; ++l) {
        mx = std::max(mx, hx[l]);
        mn = std::min(mn, hn[l]);
    }
    for (; i < k; ++i) {
        mx = std::max(mx, x[i]);
        mn = std::min(mn, x[i]);
    }
    const int qmax = (1 << bits) - 1;
    float s;
    int32_t z;
    act_params_from_range(mx, mn, bits, clip, &s, &z);
    *s_out = s;
    *z_out = z;

    const __m256 sv = _mm256_set1_ps(s), zf = _mm256_set1_ps((float)z), hi = _mm256_set1_ps((float)qmax);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    i = 0;
    for (; i + 32 <= k; i += 32) {
        const __m256i a = codes8(x + i, sv, zf, hi), b = codes8(x + i + 8, sv, zf, hi),
                      c = codes8(x + i + 16, sv, zf, hi), d = codes8(x + i + 24, sv, zf, hi);
        const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
        const __m256i v = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), perm);
        _mm256_storeu_si256((__m256i*)(q + i), v);
    }
    for (; i < k; ++i) {
        const float v = std::nearbyint(x[i] / s) + (float)z;
        q[i] = (uint8_t)(int32_t)(v != v ? (float)z : std::clamp(v, 0.0f, (float)qmax));
    }
}

// Σ of kp bytes (kp multiple of 64) as unsigned.
SQ_AVX2 int64_t byte_sum(const uint8_t* p, int64_t kp) {
    __m256i s = _mm256_setzero_si256();
    for (int64_t i = 0; i < kp; i += 32)
        s = _mm256_add_epi64(s, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i)), _mm256_setzero_si256()));
    alignas(32) int64_t t[4];
    _mm256_store_si256((__m256i*)t, s);
    return t[0] + t[1] + t[2] + t[3];
}

// Row t of `act` from its codes (already in act.a as unsigned q): offset and asum.
SQ_AVX2 void finish_row(W4A4Act& act, int64_t t, int64_t k) {
    uint8_t* row = (uint8_t*)act.a.data() + t * act.kp;
    std::memset(row + k, 0, act.kp - k);
    const int64_t sq = byte_sum(row, act.kp);
    if (act.offset) {
        const __m256i flip = _mm256_set1_epi8((char)0x80);
        int64_t i = 0;
        for (; i + 32 <= k; i += 32)
            _mm256_storeu_si256((__m256i*)(row + i),
                                _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(row + i)), flip));
        for (; i < k; ++i) row[i] ^= 0x80;
    }
    act.asum[t] = (int32_t)(sq - (int64_t)act.offset * k);
}

// ---------------------------------------------------------------- integer tile

// [Σ a0, Σ a1, Σ a2, Σ a3] over the 8 int32 lanes of each.
SQ_AVX2 inline __m128i hsum4_epi32(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// One 64-weight block of the 3 × 4 tile in asm. With intrinsics GCC either
// keeps the 6 activation vectors of the block in registers or reassociates
// the adds, and in both cases spills the 12 accumulators to the stack every
// block (v1: 3×4 with spills 370 GOP/s vs 2×4 without 300 at 576², notes).
// Here: 12 accumulators + mask + 3 temporaries = 16 ymm, activations are the
// memory operand of vpmaddubsw (AT&T: mem, unsigned weights, dst).
#define SQ_W4_HALF(a, c0, c1, c2)                                                 \
    "vpand %%ymm15, %[m], %%ymm14\n\t"                                             \
    "vpmaddubsw " a "(%[a0]), %%ymm14, %%ymm13\n\t"                                \
    "vpaddw %%ymm13, %[" c0 "], %[" c0 "]\n\t"                                     \
    "vpmaddubsw " a "(%[a1]), %%ymm14, %%ymm13\n\t"                                \
    "vpaddw %%ymm13, %[" c1 "], %[" c1 "]\n\t"                                     \
    "vpmaddubsw " a "(%[a2]), %%ymm14, %%ymm13\n\t"                                \
    "vpaddw %%ymm13, %[" c2 "], %[" c2 "]\n\t"
#define SQ_W4_ROW(off, c0, c1, c2)                                                \
    "vmovdqu " off "(%[w]), %%ymm15\n\t" SQ_W4_HALF("", c0, c1, c2)                \
    "vpsrlw $4, %%ymm15, %%ymm15\n\t" SQ_W4_HALF("32", c0, c1, c2)

struct Acc3x4 {
    __m256i c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23;
};

SQ_AVX2 inline void block_3x4(const uint8_t* w, const int8_t* a0, const int8_t* a1, const int8_t* a2, __m256i m,
                              Acc3x4& c) {
    asm(SQ_W4_ROW("0", "c00", "c10", "c20") SQ_W4_ROW("32", "c01", "c11", "c21")
            SQ_W4_ROW("64", "c02", "c12", "c22") SQ_W4_ROW("96", "c03", "c13", "c23")
        : [c00] "+x"(c.c00), [c01] "+x"(c.c01), [c02] "+x"(c.c02), [c03] "+x"(c.c03), [c10] "+x"(c.c10),
          [c11] "+x"(c.c11), [c12] "+x"(c.c12), [c13] "+x"(c.c13), [c20] "+x"(c.c20), [c21] "+x"(c.c21),
          [c22] "+x"(c.c22), [c23] "+x"(c.c23)
        : [w] "r"(w), [a0] "r"(a0), [a1] "r"(a1), [a2] "r"(a2), [m] "x"(m)
        : "xmm13", "xmm14", "xmm15", "memory");  // reads w[0, 128) and a_i[0, 64); 29 of GCC's 30 operands
}
#undef SQ_W4_ROW
#undef SQ_W4_HALF

// The same block with vpdpbusd into int32 accumulators (EVEX, AVX512-VNNI +
// VL; only called when the CPU has both): 24 instructions of multiply-add
// instead of 24 vpmaddubsw + 24 vpaddw, and no int16 flush.
#define SQ_W4_HALF(a, c0, c1, c2)                                                 \
    "vpand %%ymm15, %[m], %%ymm14\n\t"                                             \
    "vpdpbusd " a "(%[a0]), %%ymm14, %[" c0 "]\n\t"                                \
    "vpdpbusd " a "(%[a1]), %%ymm14, %[" c1 "]\n\t"                                \
    "vpdpbusd " a "(%[a2]), %%ymm14, %[" c2 "]\n\t"
#define SQ_W4_ROW(off, c0, c1, c2)                                                \
    "vmovdqu " off "(%[w]), %%ymm15\n\t" SQ_W4_HALF("", c0, c1, c2)                \
    "vpsrlw $4, %%ymm15, %%ymm15\n\t" SQ_W4_HALF("32", c0, c1, c2)

inline void block_3x4_vnni(const uint8_t* w, const int8_t* a0, const int8_t* a1, const int8_t* a2, __m256i m,
                           Acc3x4& c) {
    asm(SQ_W4_ROW("0", "c00", "c10", "c20") SQ_W4_ROW("32", "c01", "c11", "c21")
            SQ_W4_ROW("64", "c02", "c12", "c22") SQ_W4_ROW("96", "c03", "c13", "c23")
        : [c00] "+x"(c.c00), [c01] "+x"(c.c01), [c02] "+x"(c.c02), [c03] "+x"(c.c03), [c10] "+x"(c.c10),
          [c11] "+x"(c.c11), [c12] "+x"(c.c12), [c13] "+x"(c.c13), [c20] "+x"(c.c20), [c21] "+x"(c.c21),
          [c22] "+x"(c.c22), [c23] "+x"(c.c23)
        : [w] "r"(w), [a0] "r"(a0), [a1] "r"(a1), [a2] "r"(a2), [m] "x"(m)
        : "xmm14", "xmm15", "memory");
}
#undef SQ_W4_ROW
#undef SQ_W4_HALF

bool vnni_from_env() {
    const char* e = std::getenv("SQ_W4A4_VNNI");
    return cpu_features().avx512vnni && !(e && std::strcmp(e, "0") == 0);
}
std::atomic<bool> g_vnni{vnni_from_env()};

// res[i] = [Σ_k a_i·u_j for j < 4] over nkb blocks of one group.
// kPrefetch (GEMV): pull the next group's bytes (the next in memory) into L2
// at the rate this group's are consumed, 2 lines per block.
template <int MR, bool kPrefetch>
SQ_AVX2 inline void int_tile(const int8_t* a, int64_t lda, const uint8_t* wg, int64_t nkb, int64_t flush,
                             __m128i* res) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    for (int i = 0; i < MR; ++i) res[i] = _mm_setzero_si128();
    const uint8_t* ahead = wg + nkb * kGroupBlock;
    for (int64_t b0 = 0; b0 < nkb; b0 += flush) {
        const int64_t b1 = std::min(nkb, b0 + flush);
        if constexpr (MR == 3) {
            const __m256i z = _mm256_setzero_si256();
            Acc3x4 c{z, z, z, z, z, z, z, z, z, z, z, z};
            if (g_vnni.load(std::memory_order_relaxed)) {  // int32 lanes: no flush, all blocks at once
                for (int64_t b = 0; b < nkb; ++b) {
                    if constexpr (kPrefetch) {
                        _mm_prefetch((const char*)(ahead + b * kGroupBlock), _MM_HINT_T1);
                        _mm_prefetch((const char*)(ahead + b * kGroupBlock + 64), _MM_HINT_T1);
                    }
                    const int8_t* ab = a + b * kBlock;
                    block_3x4_vnni(wg + b * kGroupBlock, ab, ab + lda, ab + 2 * lda, m4, c);
                }
                res[0] = hsum4_epi32(c.c00, c.c01, c.c02, c.c03);
                res[1] = hsum4_epi32(c.c10, c.c11, c.c12, c.c13);
                res[2] = hsum4_epi32(c.c20, c.c21, c.c22, c.c23);
                return;
            }
            for (int64_t b = b0; b < b1; ++b) {
                if constexpr (kPrefetch) {
                    _mm_prefetch((const char*)(ahead + b * kGroupBlock), _MM_HINT_T1);
                    _mm_prefetch((const char*)(ahead + b * kGroupBlock + 64), _MM_HINT_T1);
                }
                const int8_t* ab = a + b * kBlock;
                block_3x4(wg + b * kGroupBlock, ab, ab + lda, ab + 2 * lda, m4, c);
            }
            res[0] = _mm_add_epi32(res[0], hsum4_epi32(_mm256_madd_epi16(c.c00, ones), _mm256_madd_epi16(c.c01, ones),
                                                       _mm256_madd_epi16(c.c02, ones), _mm256_madd_epi16(c.c03, ones)));
            res[1] = _mm_add_epi32(res[1], hsum4_epi32(_mm256_madd_epi16(c.c10, ones), _mm256_madd_epi16(c.c11, ones),
                                                       _mm256_madd_epi16(c.c12, ones), _mm256_madd_epi16(c.c13, ones)));
            res[2] = _mm_add_epi32(res[2], hsum4_epi32(_mm256_madd_epi16(c.c20, ones), _mm256_madd_epi16(c.c21, ones),
                                                       _mm256_madd_epi16(c.c22, ones), _mm256_madd_epi16(c.c23, ones)));
            continue;
        }
        __m256i acc[MR][4];
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) acc[i][j] = _mm256_setzero_si256();
        for (int64_t b = b0; b < b1; ++b) {
            const uint8_t* wb = wg + b * kGroupBlock;
            const int8_t* ab = a + b * kBlock;
            if constexpr (kPrefetch) {
                _mm_prefetch((const char*)(ahead + b * kGroupBlock), _MM_HINT_T1);
                _mm_prefetch((const char*)(ahead + b * kGroupBlock + 64), _MM_HINT_T1);
            }
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) {
                const __m256i v = _mm256_loadu_si256((const __m256i*)(wb + 32 * j));
#pragma GCC unroll 2
                for (int h = 0; h < 2; ++h) {
                    const __m256i u = _mm256_and_si256(h ? _mm256_srli_epi16(v, 4) : v, m4);
#pragma GCC unroll 4
                    for (int i = 0; i < MR; ++i)
                        acc[i][j] = _mm256_add_epi16(
                            acc[i][j], _mm256_maddubs_epi16(u, _mm256_loadu_si256((const __m256i*)(ab + i * lda + 32 * h))));
                }
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i)
            res[i] = _mm_add_epi32(res[i], hsum4_epi32(_mm256_madd_epi16(acc[i][0], ones), _mm256_madd_epi16(acc[i][1], ones),
                                                       _mm256_madd_epi16(acc[i][2], ones), _mm256_madd_epi16(acc[i][3], ones)));
    }
}

// spec[i] = [Σ_{r < len} zb_i[r]·C_j[r] for j < 4]; C group fp16 [4][rp],
// zero beyond len.
template <int MR>
SQ_AVX2 inline void spec_tile(const float* zb, int64_t ldz, const uint16_t* cg, int64_t rp, int64_t len,
                              __m128* spec) {
    __m256 acc[MR][4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm256_setzero_ps();
    for (int64_t r = 0; r < len; r += 8) {
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
            const __m256 c = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(cg + j * rp + r)));
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_fmadd_ps(_mm256_loadu_ps(zb + i * ldz + r), c, acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) spec[i] = hsum4_ps(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
}

// W4A16 tile: out[i] = [Σ_k x_i[k]·code_j[k] for j < 4] in fp32.
template <int MR, bool kPrefetch>
SQ_AVX2 inline void f32_tile(const float* x, int64_t ldx, const uint8_t* wg, int64_t nkb, __m128* out) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
    __m256 acc[MR][4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm256_setzero_ps();
    const uint8_t* ahead = wg + nkb * kGroupBlock;
    for (int64_t b = 0; b < nkb; ++b) {
        const uint8_t* wb = wg + b * kGroupBlock;
        const float* xb = x + b * kBlock;
        if constexpr (kPrefetch) {
            _mm_prefetch((const char*)(ahead + b * kGroupBlock), _MM_HINT_T1);
            _mm_prefetch((const char*)(ahead + b * kGroupBlock + 64), _MM_HINT_T1);
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
            const __m256i v = _mm256_loadu_si256((const __m256i*)(wb + 32 * j));
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
                const __m256i c = _mm256_sub_epi8(_mm256_and_si256(h ? _mm256_srli_epi16(v, 4) : v, m4), eight);
                const __m128i c0 = _mm256_castsi256_si128(c), c1 = _mm256_extracti128_si256(c, 1);
                const __m128i parts[4] = {c0, _mm_srli_si128(c0, 8), c1, _mm_srli_si128(c1, 8)};
#pragma GCC unroll 4
                for (int p = 0; p < 4; ++p) {
                    const __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[p]));
#pragma GCC unroll 4
                    for (int i = 0; i < MR; ++i)
                        acc[i][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xb + i * ldx + h * 32 + p * 8), w, acc[i][j]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) out[i] = hsum4_ps(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
}

// ---------------------------------------------------------------- drivers

struct Job {
    const W4A4Weights* w;
    int64_t nkb, gstride;  // blocks per row, bytes per group
    // integer path
    const W4A4Act* act = nullptr;
    int64_t flush = 1;
    int32_t* acc = nullptr;  // acc output (tests) or
    float* y = nullptr;      // float output
    const float* zb = nullptr;
    bool bias = true;
    // W4A16 path
    const float* x = nullptr;  // [m, kp] padded
};

SQ_AVX2 inline void store4(float* y, int64_t valid, __m128 v) {
    if (valid >= 4) {
        _mm_storeu_ps(y, v);
    } else {
        alignas(16) float t[4];
        _mm_store_ps(t, v);
        for (int64_t j = 0; j < valid; ++j) y[j] = t[j];
    }
}

// Output column of slot s.
inline int64_t out_col(const W4A4Weights& w, int64_t s) { return w.slot_row.empty() ? s : w.slot_row[s]; }

// Rows [i, i + MR) of the activations × group g, with its epilogue.
template <int MR, bool kPrefetch>
SQ_AVX2 void run_tile(const Job& jb, int64_t i, int64_t g) {
    const W4A4Weights& w = *jb.w;
    const int64_t n = w.n, j0 = g * kGroup, valid = std::min<int64_t>(kGroup, n - j0);
    const uint8_t* wg = w.data.data() + g * jb.gstride;
    __m128 base[MR];
    if (jb.act) {
        const W4A4Act& act = *jb.act;
        __m128i res[MR];
        int_tile<MR, kPrefetch>(act.a.data() + i * act.kp, act.kp, wg, jb.nkb, jb.flush, res);
        const __m128i rs = _mm_loadu_si128((const __m128i*)(w.rowsum.data() + j0));
        if (jb.acc) {  // acc = Σ a·u − 8 Σ a + o·rowsum
            const __m128i ors = _mm_mullo_epi32(_mm_set1_epi32(act.offset), rs);
            for (int r = 0; r < MR; ++r) {
                alignas(16) int32_t t[4];
                _mm_store_si128((__m128i*)t,
                                _mm_add_epi32(_mm_sub_epi32(res[r], _mm_set1_epi32(8 * act.asum[i + r])), ors));
                for (int64_t j = 0; j < valid; ++j) jb.acc[(i + r) * n + out_col(w, j0 + j)] = t[j];
            }
            return;
        }
        const __m128 sc = _mm_loadu_ps(w.scale.data() + j0);
        for (int r = 0; r < MR; ++r) {
            // acc − z·rowsum = Σ a·u − 8 Σ a − (z − o)·rowsum, exact in int32
            const __m128i d = _mm_sub_epi32(_mm_sub_epi32(res[r], _mm_set1_epi32(8 * act.asum[i + r])),
                                            _mm_mullo_epi32(_mm_set1_epi32(act.zero[i + r] - act.offset), rs));
            base[r] = _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(act.scale[i + r]), sc), _mm_cvtepi32_ps(d));
        }
    } else {
        f32_tile<MR, kPrefetch>(jb.x + i * w.kp, w.kp, wg, jb.nkb, base);
        const __m128 sc = _mm_loadu_ps(w.scale.data() + j0);
        for (int r = 0; r < MR; ++r) base[r] = _mm_mul_ps(base[r], sc);
    }
    if (jb.zb && w.rank > 0) {
        __m128 spec[MR];
        spec_tile<MR>(jb.zb + i * w.rp, w.rp, w.coef.data() + w.coef_off[g], w.coef_len[g], w.coef_len[g], spec);
        for (int r = 0; r < MR; ++r) base[r] = _mm_add_ps(base[r], spec[r]);
    }
    if (jb.bias && !w.bias.empty()) {
        const __m128 bv = _mm_loadu_ps(w.bias.data() + j0);
        for (int r = 0; r < MR; ++r) base[r] = _mm_add_ps(base[r], bv);
    }
    if (w.slot_row.empty()) {
        for (int r = 0; r < MR; ++r) store4(jb.y + (i + r) * n + j0, valid, base[r]);
    } else {  // slots → original rows
        for (int r = 0; r < MR; ++r) {
            alignas(16) float t[4];
            _mm_store_ps(t, base[r]);
            for (int64_t j = 0; j < valid; ++j) jb.y[(i + r) * n + w.slot_row[j0 + j]] = t[j];
        }
    }
}

// All rows [i0, i1) of the activations against group g, in strips of kMR.
template <bool kPrefetch>
SQ_AVX2 void run_rows(const Job& jb, int64_t i0, int64_t i1, int64_t g) {
    int64_t i = i0;
    for (; i + kMR <= i1; i += kMR) run_tile<kMR, kPrefetch>(jb, i, g);
    if (i1 - i == 2) run_tile<kMR >= 3 ? 2 : 1, kPrefetch>(jb, i, g);  // only reachable when kMR ≥ 3
    else if (i1 - i == 1) run_tile<1, kPrefetch>(jb, i, g);
}

void run_job(const Job& jb, int64_t m) {
    const int64_t groups = jb.w->groups;
    if (m <= w4a4_gemv_max_m) {
        // One contiguous range of groups per thread: W streams once, in address order.
        const int64_t nt = std::max(1, threads_count());
        const int64_t per = (groups + nt - 1) / nt;
        parallel_for(nt, [&](int64_t t) {
            const int64_t g0 = std::min(groups, t * per), g1 = std::min(groups, (t + 1) * per);
            for (int64_t g = g0; g < g1; ++g) run_rows<true>(jb, 0, m, g);
        });
        return;
    }
    // Tasks = (activation block of mc rows, ≤ 512 KB of L2) × (16 groups = 64 rows).
    const int64_t kp = jb.w->kp;
    const int64_t mc_max = std::clamp<int64_t>((512 << 10) / kp / kMR * kMR, kMR, 144);
    const int64_t gc_max = 16;
    const int64_t mb = (m + mc_max - 1) / mc_max, nb = (groups + gc_max - 1) / gc_max;
    const int64_t mc = ((m + mb - 1) / mb + kMR - 1) / kMR * kMR, gc = (groups + nb - 1) / nb;
    parallel_for_dynamic(mb * nb, [&](int64_t t) {
        const int64_t ib = t / nb, gb = t % nb;
        const int64_t i0 = std::min(m, ib * mc), i1 = std::min(m, i0 + mc);
        const int64_t g0 = std::min(groups, gb * gc), g1 = std::min(groups, g0 + gc);
        for (int64_t g = g0; g < g1; ++g) run_rows<false>(jb, i0, i1, g);
    });
}

// Several jobs (weight matrices of one input) in ONE parallel region: the
// fork/join of a 6–20 µs SmolLM2 decode GEMV is a large part of it. pre(t, T)
// runs on every thread first (decode: its share of zb = x·B), then a barrier.
// m ≤ gemv max: the groups of all jobs, concatenated, are split into one
// contiguous range per thread (each matrix still streams front to back);
// above: the (activation block × group block) tasks of all jobs in one
// dynamic pool. Each output element is computed exactly as by its own job.
void run_jobs(const Job* jobs, int count, int64_t m, const std::function<void(int, int)>& pre) {
    std::vector<int64_t> first(count + 1, 0);  // first[i]: index of job i's first unit (group or task)
    const int64_t kp = jobs[0].w->kp;
    const int64_t mc_max = std::clamp<int64_t>((512 << 10) / kp / kMR * kMR, kMR, 144);
    const int64_t mb = (m + mc_max - 1) / mc_max;
    const int64_t mc = ((m + mb - 1) / mb + kMR - 1) / kMR * kMR;
    // Tasks of ≤ 16 groups, fewer when a layer would get less than 8 tasks
    // per thread: a 128-token prefill chunk (one row block) of SmolLM2's o
    // and down (144 groups) gave 9 tasks, 5 on one thread and 4 on the other.
    const int64_t nt_tasks = 8 * std::max(1, threads_count());
    std::vector<int64_t> nbs(count), gcs(count);
    for (int i = 0; i < count; ++i) {
        const int64_t groups = jobs[i].w->groups;
        const int64_t gc_max = std::clamp<int64_t>(groups * mb / nt_tasks, 4, 16);
        nbs[i] = (groups + gc_max - 1) / gc_max;
        gcs[i] = (groups + nbs[i] - 1) / nbs[i];
        first[i + 1] = first[i] + (m <= w4a4_gemv_max_m ? groups : mb * nbs[i]);
    }
    const int64_t total = first[count];
    // GEMV: cost[u] = bytes read by units before u (codes + spectral C)
    std::vector<int64_t> cost;
    if (m <= w4a4_gemv_max_m) {
        cost.resize(total + 1, 0);
        for (int i = 0; i < count; ++i) {
            const W4A4Weights& w = *jobs[i].w;
            for (int64_t g = 0; g < w.groups; ++g) {
                const int64_t u = first[i] + g;
                cost[u + 1] = cost[u] + jobs[i].gstride + (jobs[i].zb && w.rank > 0 ? kGroup * 2 * w.coef_len[g] : 0);
            }
        }
    }
    const int nt_max = std::max(1, threads_count());
#pragma omp parallel num_threads(nt_max)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        if (pre) {
            pre(t, nt);
#pragma omp barrier
        }
        if (m <= w4a4_gemv_max_m) {
            // Contiguous ranges of equal bytes, not of equal groups: the
            // spectral rows are sorted longest first, so the first groups of
            // a layer read up to twice the bytes of the last (SmolLM2 q at
            // k̄ 32: 1152 code bytes + up to 1024 of C per group). Chunks
            // claimed dynamically (8 per thread, for robustness when a
            // neighbour takes a core) measured 164–172 decode t/s against
            // 190–196 for this split, alternating runs at load 5.7–5.9
            // (likely because SmolLM2's chunks are ~19 KB and each one
            // restarts the hardware prefetch stream; not profiled).
            const int64_t u0 = std::lower_bound(cost.begin(), cost.end(), cost.back() * t / nt) - cost.begin(),
                          u1 = std::lower_bound(cost.begin(), cost.end(), cost.back() * (t + 1) / nt) - cost.begin();
            int i = 0;
            for (int64_t u = u0; u < std::min(u1, total); ++u) {
                while (u >= first[i + 1]) ++i;
                run_rows<true>(jobs[i], 0, m, u - first[i]);
            }
        } else {
#pragma omp for schedule(dynamic, 1)
            for (int64_t u = 0; u < total; ++u) {
                const int i = (int)(std::upper_bound(first.begin(), first.end(), u) - first.begin()) - 1;
                const int64_t v = u - first[i], ib = v / nbs[i], gb = v % nbs[i], groups = jobs[i].w->groups;
                const int64_t i0 = std::min(m, ib * mc), i1 = std::min(m, i0 + mc);
                const int64_t g0 = std::min(groups, gb * gcs[i]), g1 = std::min(groups, g0 + gcs[i]);
                for (int64_t g = g0; g < g1; ++g) run_rows<false>(jobs[i], i0, i1, g);
            }
        }
    }
}

int64_t flush_blocks(const W4A4Act& act) {
    const int64_t amax = act.offset ? 128 : (1 << act.bits) - 1;
    return std::max<int64_t>(1, 32767 / (4 * 15 * std::max<int64_t>(1, amax)));
}

}  // namespace

bool w4a4_avx2_available() { return cpu_use_avx2() && cpu_features().f16c; }

W4A4Weights w4a4_pack(const uint8_t* codes, int64_t n, int64_t k, const float* scale, const float* bias,
                      const uint16_t* coef, int rank) {
    SQ_CHECK(n > 0 && k > 0 && rank >= 0, "w4a4_pack: bad shape ", n, "x", k, " rank ", rank);
    W4A4Weights w;
    w.n = n;
    w.k = k;
    w.kp = (k + kBlock - 1) / kBlock * kBlock;
    w.groups = (n + kGroup - 1) / kGroup;
    const int64_t nkb = w.kp / kBlock, np = w.groups * kGroup, rb = w4_row_bytes(k);
    w.data.assign(w.groups * nkb * kGroupBlock, 0x88);  // code 0 → u = 8 in both nibbles
    w.rowsum.assign(np, 0);
    w.scale.assign(np, 0.0f);
    // Spectral rows: length = last nonzero coefficient (±0 contributes
    // nothing) rounded up to 8; slots sorted by length, longest first.
    std::vector<int32_t> len(n, 0);
    if (rank > 0) {
        for (int64_t j = 0; j < n; ++j) {
            int32_t last = 0;
            for (int r = 0; r < rank; ++r)
                if (coef[j * rank + r] & 0x7FFF) last = r + 1;
            len[j] = (last + 7) / 8 * 8;
        }
        w.slot_row.resize(n);
        std::iota(w.slot_row.begin(), w.slot_row.end(), 0);
        std::stable_sort(w.slot_row.begin(), w.slot_row.end(), [&](int32_t a, int32_t b) { return len[a] > len[b]; });
        w.row_slot.resize(n);
        for (int64_t s = 0; s < n; ++s) w.row_slot[w.slot_row[s]] = (int32_t)s;
    }
    for (int64_t s = 0; s < n; ++s) {
        const int64_t j = w.slot_row.empty() ? s : w.slot_row[s];
        const uint8_t* row = codes + j * rb;
        uint8_t* dst = w.data.data() + (s / kGroup) * nkb * kGroupBlock + (s % kGroup) * 32;
        int32_t sum = 0;
        for (int64_t kk = 0; kk < k; ++kk) {
            const int c = w4_get(row, kk);
            sum += c;
            const int64_t b = kk / kBlock, p = kk % kBlock;
            uint8_t& byte = dst[b * kGroupBlock + (p % 32)];
            const int shift = p < 32 ? 0 : 4;
            byte = (uint8_t)((byte & ~(0xF << shift)) | ((c + 8) << shift));
        }
        w.rowsum[s] = sum;
        w.scale[s] = scale[j];
    }
    if (bias) {
        w.bias.assign(np, 0.0f);
        for (int64_t s = 0; s < n; ++s) w.bias[s] = bias[w.slot_row.empty() ? s : w.slot_row[s]];
    }
    w.rank = rank;
    if (rank > 0) {
        w.rp = (rank + 7) / 8 * 8;
        w.coef_len.assign(w.groups, 0);
        w.coef_off.assign(w.groups, 0);
        int64_t total = 0;
        for (int64_t g = 0; g < w.groups; ++g) {
            for (int64_t s = g * kGroup; s < std::min(n, (g + 1) * kGroup); ++s)
                w.coef_len[g] = std::max(w.coef_len[g], len[w.slot_row[s]]);
            w.coef_off[g] = total;
            total += kGroup * w.coef_len[g];
        }
        w.coef.assign(total, 0);
        for (int64_t s = 0; s < n; ++s) {
            const int64_t g = s / kGroup, cl = w.coef_len[g];
            const uint16_t* src = coef + (int64_t)w.slot_row[s] * rank;
            std::copy(src, src + std::min<int64_t>(cl, rank), &w.coef[w.coef_off[g] + (s % kGroup) * cl]);
        }
    }
    return w;
}

bool w4a4_vnni_enabled() { return g_vnni.load(); }
bool w4a4_set_vnni(bool on) { return g_vnni.exchange(on && cpu_features().avx512vnni); }

void w4a4_unpack_row(const W4A4Weights& w, int64_t j, uint8_t* codes_row) {
    const int64_t nkb = w.kp / kBlock, s = w.slot_of(j);
    const uint8_t* src = w.data.data() + (s / kGroup) * nkb * kGroupBlock + (s % kGroup) * 32;
    std::memset(codes_row, 0, w4_row_bytes(w.k));
    for (int64_t kk = 0; kk < w.k; ++kk) {
        const int64_t b = kk / kBlock, p = kk % kBlock;
        const int u = (src[b * kGroupBlock + (p % 32)] >> (p < 32 ? 0 : 4)) & 0xF;
        codes_row[kk / 2] |= (uint8_t)(((u - 8) & 0xF) << ((kk & 1) * 4));
    }
}

void act_quant_avx2(const float* x, int64_t n, int64_t k, int bits, float clip, uint8_t* q, float* scale,
                    int32_t* zero) {
    SQ_CHECK(bits >= 2 && bits <= 8 && n >= 0 && k > 0, "act_quant_avx2: bits ", bits, " shape ", n, "x", k);
    require_avx2("act_quant_avx2");
    for (int64_t t = 0; t < n; ++t) quant_row(x + t * k, k, bits, clip, q + t * k, scale + t, zero + t);
}

void W4A4Act::resize(int64_t m_, int64_t kp_) {
    m = m_;
    kp = kp_;
    a.resize(m * kp);
    scale.resize(m);
    zero.resize(m);
    asum.resize(m);
}

void w4a4_act_prepare(const float* x, int64_t m, int64_t k, int bits, float clip, int64_t kp, W4A4Act& act) {
    SQ_CHECK(bits >= 2 && bits <= 8 && k > 0 && kp >= k && kp % kBlock == 0, "w4a4_act_prepare: bits ", bits,
             " k ", k, " kp ", kp);
    require_avx2("w4a4_act_prepare");
    act.resize(m, kp);
    act.bits = bits;
    act.offset = bits == 8 ? 128 : 0;
    auto one = [&](int64_t t) {
        quant_row(x + t * k, k, bits, clip, (uint8_t*)act.a.data() + t * kp, &act.scale[t], &act.zero[t]);
        finish_row(act, t, k);
    };
    if (m == 1) one(0);
    else parallel_for(m, one);
}

void w4a4_act_from_codes(const uint8_t* q, int64_t m, int64_t k, int bits, int64_t kp, W4A4Act& act) {
    SQ_CHECK(bits >= 2 && bits <= 8 && kp >= k && kp % kBlock == 0, "w4a4_act_from_codes: bad arguments");
    require_avx2("w4a4_act_from_codes");
    act.resize(m, kp);
    act.bits = bits;
    act.offset = bits == 8 ? 128 : 0;
    for (int64_t t = 0; t < m; ++t) {
        std::memcpy(act.a.data() + t * kp, q + t * k, k);
        act.scale[t] = 1.0f;
        act.zero[t] = 0;
        finish_row(act, t, k);
    }
}

void w4a4_gemm_acc(const W4A4Act& act, const W4A4Weights& w, int32_t* acc) {
    SQ_CHECK(act.kp == w.kp, "w4a4_gemm_acc: activations padded to ", act.kp, ", weights to ", w.kp);
    require_avx2("w4a4_gemm_acc");
    if (act.m == 0) return;
    Job jb;
    jb.w = &w;
    jb.nkb = w.kp / kBlock;
    jb.gstride = jb.nkb * kGroupBlock;
    jb.act = &act;
    jb.flush = flush_blocks(act);
    jb.acc = acc;
    run_job(jb, act.m);
}

void w4a4_gemm(const W4A4Act& act, const W4A4Weights& w, const float* zb, float* y, bool add_bias) {
    SQ_CHECK(act.kp == w.kp, "w4a4_gemm: activations padded to ", act.kp, ", weights to ", w.kp);
    require_avx2("w4a4_gemm");
    if (act.m == 0) return;
    Job jb;
    jb.w = &w;
    jb.nkb = w.kp / kBlock;
    jb.gstride = jb.nkb * kGroupBlock;
    jb.act = &act;
    jb.flush = flush_blocks(act);
    jb.y = y;
    jb.zb = zb;
    jb.bias = add_bias;
    run_job(jb, act.m);
}

void w4a4_gemm_multi(const W4A4Act& act, const W4A4Out* outs, int count, const std::function<void(int, int)>& pre) {
    require_avx2("w4a4_gemm_multi");
    SQ_CHECK(count > 0, "w4a4_gemm_multi: no layers");
    std::vector<Job> jobs(count);
    for (int i = 0; i < count; ++i) {
        const W4A4Weights& w = *outs[i].w;
        SQ_CHECK(act.kp == w.kp, "w4a4_gemm_multi: activations padded to ", act.kp, ", weights ", i, " to ", w.kp);
        Job& jb = jobs[i];
        jb.w = &w;
        jb.nkb = w.kp / kBlock;
        jb.gstride = jb.nkb * kGroupBlock;
        jb.act = &act;
        jb.flush = flush_blocks(act);
        jb.y = outs[i].y;
        jb.zb = outs[i].zb;
    }
    if (act.m == 0) return;
    run_jobs(jobs.data(), count, act.m, pre);
}

void w4a16_gemm(const float* xp, int64_t m, const W4A4Weights& w, const float* zb, float* y, bool add_bias) {
    require_avx2("w4a16_gemm");
    if (m == 0) return;
    Job jb;
    jb.w = &w;
    jb.nkb = w.kp / kBlock;
    jb.gstride = jb.nkb * kGroupBlock;
    jb.x = xp;
    jb.y = y;
    jb.zb = zb;
    jb.bias = add_bias;
    run_job(jb, m);
}

void w4a4_dequant_rows(const W4A4Weights& w, int64_t j0, int64_t j1, float* out) {
    std::vector<uint8_t> row(w4_row_bytes(w.k));
    for (int64_t j = j0; j < j1; ++j) {
        w4a4_unpack_row(w, j, row.data());
        float* o = out + (j - j0) * w.k;
        for (int64_t kk = 0; kk < w.k; ++kk) o[kk] = (float)w4_get(row.data(), kk) * w.scale[w.slot_of(j)];
    }
}

}  // namespace sq
