// Run-time CPU feature detection for the AVX2 kernels, and the one place that
// announces a slow fallback.
//
// The library is built for generic x86-64 (no -march=native); AVX2 code is
// compiled per function with __attribute__((target("avx2,fma,f16c"))) and
// only called when cpu_use_avx2() says so. Otherwise a kernel runs its scalar
// reference from kernels/ref/ and calls cpu_warn_fallback() first, which
// prints one line per kernel to stderr: a slow path is never silent.
#pragma once
#include <string>

namespace sq {

struct CpuFeatures {
    bool avx2 = false;
    bool fma = false;
    bool f16c = false;
    bool avx512f = false;
    bool avx512vnni = false;  // AVX512-VNNI and AVX512VL: vpdpbusd on ymm (the W4A4 GEMM tile, w4a4_avx2.cpp)
};

// Detected once with __builtin_cpu_supports.
const CpuFeatures& cpu_features();

// True when the AVX2+FMA kernels may run: the CPU has both and the scalar
// path is not forced (environment SQ_FORCE_SCALAR=1, or cpu_force_scalar).
bool cpu_use_avx2();

// Force the scalar references (tests of the fallback, A/B timing).
void cpu_force_scalar(bool on);

// stderr, once per kernel name per process:
//   "specquant: <kernel>: <reason>; running the scalar reference (slow)"
void cpu_warn_fallback(const char* kernel);

// "avx2 fma f16c avx512f" style summary of what was detected, for banners.
std::string cpu_describe();

}  // namespace sq
