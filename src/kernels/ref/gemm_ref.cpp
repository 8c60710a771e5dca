#include "kernels/ref/gemm_ref.h"

namespace sq {

void gemm_f32_ref(const float* x, int64_t m, const float* w, int64_t n, int64_t k, float* y) {
    for (int64_t i = 0; i < m; ++i) {
        const float* xi = x + i * k;
        for (int64_t j = 0; j < n; ++j) {
            const float* wj = w + j * k;
            double s = 0.0;
            for (int64_t p = 0; p < k; ++p) s += (double)xi[p] * (double)wj[p];
            y[i * n + j] = (float)s;
        }
    }
}

}  // namespace sq
