// Shared by the AVX2 kernel files (gemm_f32, w4a4_avx2, q8_avx2): the target
// attribute of their AVX2 functions and the one horizontal sum they reduce
// with. Its lane order is part of what the kernels compute: gemm_f32 reduces
// every output element identically with it, and the W4A4 spectral epilogue's
// tree is the specification's (kernels/ref/w4a4_ref.h, spectral_dot_ref).
#pragma once
#include <immintrin.h>

#define SQ_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace sq {

// [Σ a0, Σ a1, Σ a2, Σ a3] over 8 lanes each, lanes summed as
// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
SQ_AVX2 inline __m128 hsum4_ps(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 h01 = _mm256_hadd_ps(a0, a1);  // a0 01 23, a1 01 23 | a0 45 67, a1 45 67
    const __m256 h23 = _mm256_hadd_ps(a2, a3);
    const __m256 h = _mm256_hadd_ps(h01, h23);  // a0..a3 lanes 0-3 | a0..a3 lanes 4-7
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

}  // namespace sq
