// Scalar reference FP32 GEMM: the specification every fast GEMM is tested against.
//
//   y[i, j] = sum_p x[i, p] * w[j, p]        x: [m, k], w: [n, k], y: [m, n], all row-major
//
// i.e. y = x · Wᵀ with W in the PyTorch nn.Linear layout [out, in].
// Accumulation is in double and rounded to float once at the end, so the
// reference itself is accurate to 0.5 ulp of y plus k·2^-53·sum|x||w|
// (negligible next to any float-accumulating kernel); the tests compare
// fast kernels against it with a bound derived from float summation.
// Slow by design (one dot product at a time, no threads): tests and the
// loud fallback only.
#pragma once
#include <cstdint>

namespace sq {

void gemm_f32_ref(const float* x, int64_t m, const float* w, int64_t n, int64_t k, float* y);

}  // namespace sq
