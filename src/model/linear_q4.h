// 4-bit weights for the embedding table and lm_head (kernels/q4_format.h),
// the option `quantize --embed-bits 4`: Q4Matrix holds the blocks, LinearQ4
// multiplies by them; a tied model keeps one Q4Matrix for both.
//
// The dequantized values are exact float32 (d·c), so LinearQ4 computes the
// function of LinearF32 on dequant(W): for n > 16 bitwise (gemm_f32 on
// dequantized slabs), for n ≤ 16 in q4_gemv's specified order.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/q4_format.h"
#include "model/linear.h"

namespace sq {

struct Q4Matrix {
    int64_t rows = 0, cols = 0;    // cols % 32 == 0
    std::vector<BlockQ4> blocks;   // [rows][cols / 32]

    // Quantizes W [rows, cols] (q4_quantize_row per row); throws unless cols % 32 == 0.
    static Q4Matrix quantize(const float* w, int64_t rows, int64_t cols);
    const BlockQ4* row(int64_t r) const { return blocks.data() + r * (cols / Q4_BLOCK); }
    void dequant_row(int64_t r, float* out) const;
    std::vector<float> dequant() const;  // [rows, cols]
    size_t bytes() const { return blocks.size() * sizeof(BlockQ4); }
};

inline bool q4_fits(int64_t cols) { return cols > 0 && cols % Q4_BLOCK == 0; }

class LinearQ4 : public Linear {
public:
    explicit LinearQ4(std::shared_ptr<const Q4Matrix> w);
    void forward(const float* x, int64_t n, float* y) const override;
    std::string kind() const override { return "q4"; }
    size_t weight_bytes() const override { return w_->bytes(); }
    const std::shared_ptr<const Q4Matrix>& matrix() const { return w_; }

private:
    std::shared_ptr<const Q4Matrix> w_;
};

}  // namespace sq
