#include "model/linear_q8.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/gemm_f32.h"
#include "kernels/cpu/q8_avx2.h"
#include "kernels/ref/q8_ref.h"
#include "model/linear_q4.h"

namespace sq {

Q8Matrix Q8Matrix::quantize(const float* w, int64_t rows, int64_t cols) {
    SQ_CHECK(rows > 0 && q8_fits(cols), "Q8: a [", rows, ", ", cols, "] matrix needs rows > 0 and cols % 32 == 0");
    Q8Matrix m;
    m.rows = rows;
    m.cols = cols;
    m.blocks.resize((size_t)rows * (cols / Q8_BLOCK));
    parallel_for(rows, [&](int64_t r) { q8_quantize_row(w + r * cols, cols, &m.blocks[r * (cols / Q8_BLOCK)]); });
    return m;
}

void Q8Matrix::dequant_row(int64_t r, float* out) const { q8_dequant_row(row(r), cols, out); }

std::vector<float> Q8Matrix::dequant() const {
    std::vector<float> w((size_t)rows * cols);
    parallel_for(rows, [&](int64_t r) { dequant_row(r, &w[r * cols]); });
    return w;
}

LinearQ8::LinearQ8(std::shared_ptr<const Q8Matrix> w) : w_(std::move(w)) {
    SQ_CHECK(w_ && w_->rows > 0 && q8_fits(w_->cols) &&
                 w_->blocks.size() == (size_t)w_->rows * (w_->cols / Q8_BLOCK),
             "LinearQ8: malformed Q8 matrix");
    in = w_->cols;
    out = w_->rows;
}

void LinearQ8::forward(const float* x, int64_t n, float* y) const {
    if (n <= 0) return;
    if (n <= gemv_f32_max_m) {
        q8_gemv(x, n, w_->blocks.data(), out, in, y);
        return;
    }
    // Prefill / evaluation: dequantized slabs through the float GEMM.
    const Q8Matrix& m = *w_;
    gemm_f32_rows(x, n, out, in, [&m](int64_t r, float* dst) { m.dequant_row(r, dst); }, y);
}

bool linear_dense_f32(const Linear& L, std::vector<float>* w, std::vector<float>* bias) {
    if (auto* f = dynamic_cast<const LinearF32*>(&L)) {
        *w = f->w;
        *bias = f->bias;
        return true;
    }
    if (auto* q = dynamic_cast<const LinearQ8*>(&L)) {
        *w = q->matrix()->dequant();
        bias->clear();
        return true;
    }
    if (auto* q = dynamic_cast<const LinearQ4*>(&L)) {
        *w = q->matrix()->dequant();
        bias->clear();
        return true;
    }
    return false;
}

}  // namespace sq
