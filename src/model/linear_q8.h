// 8-bit weights for the embedding table and lm_head (kernels/q8_format.h):
// Q8Matrix holds the blocks, LinearQ8 multiplies by them. A tied model keeps
// one Q8Matrix for both (shared_ptr), so the table is in memory once.
//
// The dequantized values are exact float32 (d·q), so LinearQ8 computes the
// function of LinearF32 on dequant(W); only the summation order differs.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/q8_format.h"
#include "model/linear.h"

namespace sq {

struct Q8Matrix {
    int64_t rows = 0, cols = 0;    // cols % 32 == 0
    std::vector<BlockQ8> blocks;   // [rows][cols / 32]

    // Quantizes W [rows, cols] (q8_quantize_row per row); throws unless cols % 32 == 0.
    static Q8Matrix quantize(const float* w, int64_t rows, int64_t cols);
    const BlockQ8* row(int64_t r) const { return blocks.data() + r * (cols / Q8_BLOCK); }
    void dequant_row(int64_t r, float* out) const;
    std::vector<float> dequant() const;  // [rows, cols]
    size_t bytes() const { return blocks.size() * sizeof(BlockQ8); }
};

// True when Q8_0 can hold a [*, cols] matrix.
inline bool q8_fits(int64_t cols) { return cols > 0 && cols % Q8_BLOCK == 0; }

class LinearQ8 : public Linear {
public:
    explicit LinearQ8(std::shared_ptr<const Q8Matrix> w);
    // n ≤ 16: q8_gemv streams the blocks once; above: 512 rows of W at a time
    // are dequantized to float32 and go through gemm_f32.
    void forward(const float* x, int64_t n, float* y) const override;
    std::string kind() const override { return "q8"; }
    size_t weight_bytes() const override { return w_->bytes(); }
    const std::shared_ptr<const Q8Matrix>& matrix() const { return w_; }

private:
    std::shared_ptr<const Q8Matrix> w_;
};

// W [out, in] float32 of a float32, Q8 or Q4 layer (dequantized), e.g. for a
// device upload; false for other kinds.
bool linear_dense_f32(const Linear& L, std::vector<float>* w, std::vector<float>* bias);

}  // namespace sq
