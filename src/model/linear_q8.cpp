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
    // Prefill / evaluation: dequantize a slab of rows (512 × in floats, 1.2 MB
    // at in = 576) and multiply it through the float GEMM; the dequantization
    // is ~1/n of the slab's GEMM work.
    const int64_t slab = 512;
    // (thread_local buffers: the lambdas below run on other threads, so they
    // get raw pointers, never the names.)
    thread_local std::vector<float> wbuf, ybuf;
    wbuf.resize((size_t)std::min(slab, out) * in);
    ybuf.resize((size_t)n * std::min(slab, out));
    float* wf = wbuf.data();
    float* yt = ybuf.data();
    const Q8Matrix& m = *w_;
    const int64_t o = out, k = in;
    for (int64_t j0 = 0; j0 < o; j0 += slab) {
        const int64_t nj = std::min(slab, o - j0);
        parallel_for(nj, [&](int64_t r) { m.dequant_row(j0 + r, wf + r * k); });
        gemm_f32(x, n, gemm_f32_view(wf, nj, k), yt);
        parallel_for(n, [&](int64_t t) { std::memcpy(y + t * o + j0, yt + t * nj, nj * sizeof(float)); });
    }
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
