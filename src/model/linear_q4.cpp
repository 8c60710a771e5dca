#include "model/linear_q4.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/gemm_f32.h"
#include "kernels/cpu/q4_avx2.h"
#include "kernels/ref/q4_ref.h"

namespace sq {

Q4Matrix Q4Matrix::quantize(const float* w, int64_t rows, int64_t cols) {
    SQ_CHECK(rows > 0 && q4_fits(cols), "Q4: a [", rows, ", ", cols, "] matrix needs rows > 0 and cols % 32 == 0");
    Q4Matrix m;
    m.rows = rows;
    m.cols = cols;
    m.blocks.resize((size_t)rows * (cols / Q4_BLOCK));
    parallel_for(rows, [&](int64_t r) { q4_quantize_row(w + r * cols, cols, &m.blocks[r * (cols / Q4_BLOCK)]); });
    return m;
}

void Q4Matrix::dequant_row(int64_t r, float* out) const { q4_dequant_row(row(r), cols, out); }

std::vector<float> Q4Matrix::dequant() const {
    std::vector<float> w((size_t)rows * cols);
    parallel_for(rows, [&](int64_t r) { dequant_row(r, &w[r * cols]); });
    return w;
}

LinearQ4::LinearQ4(std::shared_ptr<const Q4Matrix> w) : w_(std::move(w)) {
    SQ_CHECK(w_ && w_->rows > 0 && q4_fits(w_->cols) &&
                 w_->blocks.size() == (size_t)w_->rows * (w_->cols / Q4_BLOCK),
             "LinearQ4: malformed Q4 matrix");
    in = w_->cols;
    out = w_->rows;
}

void LinearQ4::forward(const float* x, int64_t n, float* y) const {
    if (n <= 0) return;
    if (n <= gemv_f32_max_m) {
        q4_gemv(x, n, w_->blocks.data(), out, in, y);
        return;
    }
    // Prefill / evaluation: dequantized slabs through the float GEMM.
    const Q4Matrix& m = *w_;
    gemm_f32_rows(x, n, out, in, [&m](int64_t r, float* dst) { m.dequant_row(r, dst); }, y);
}

}  // namespace sq
