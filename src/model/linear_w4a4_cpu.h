// The W4A4 / W4A16 linear layer on the AVX2 kernels (kernels/cpu/w4a4_avx2.h),
// and the factory that picks a backend for a QLinearData.
//
// Same semantics as LinearW4A4Ref (the specification, model/linear_w4a4.h):
// online Hadamard, per-token activation quantization (bit-identical codes),
// integer GEMM (bit-exact accumulators), epilogue, spectral branch
// y += (x·B)·Cᵀ in the specification's order (linear_w4a4.h: zb through the
// same float GEMM, zb·Cᵀ fused into the GEMM epilogue as spectral_dot_ref
// sums it) and bias: at a_bits < 16 the output is bitwise the reference's.
// Only the W4A16 dot products (dequantize-on-the-fly) round differently.
// Test: build-avx2/specquant_tests --gtest_filter='W4A4Avx2*'
#pragma once
#include <memory>
#include <string>

#include "kernels/cpu/gemm_f32.h"
#include "kernels/cpu/w4a4_avx2.h"
#include "model/linear_w4a4.h"

namespace sq {

enum class W4A4Backend { kAuto, kRef, kAvx2 };

// "auto" | "ref" | "avx2" → backend; anything else is an error naming `s`.
W4A4Backend w4a4_backend_from_string(const std::string& s);

class LinearW4A4Cpu : public Linear {
public:
    explicit LinearW4A4Cpu(QLinearData d);
    void forward(const float* x, int64_t n, float* y) const override;
    // Other LinearW4A4Cpu layers with the same input width, activation bits
    // and clip, and online Hadamard: one activation quantization, one x·B per
    // distinct basis and one parallel region for all (bitwise their own
    // forward). False (caller loops) for W4A16 or a mismatch.
    bool forward_same_input(const Linear* const* layers, int count, const float* x, int64_t n,
                            float* const* y) const override;
    std::string kind() const override { return meta_.a_bits >= 16 ? "w4a16-avx2" : "w4a4-avx2"; }
    size_t weight_bytes() const override;
    // The canonical data back (codes rebuilt from the kernel layout): saving, tests.
    QLinearData data() const;
    const W4A4Weights& weights() const { return w_; }

private:
    // The W4A4 path of forward / forward_same_input (ls: compatible layers).
    static void forward_w4a4(const LinearW4A4Cpu* const* ls, int count, const float* x, int64_t n, float* const* y);
    QLinearData meta_;  // everything but codes/scale/rowsum/coef/bias (those live in w_)
    W4A4Weights w_;
    // zb [n, rp] = x·B, bitwise the reference's gemm_any on spectral_basis_t;
    // rows [r0, r1) only (decode, inside a parallel region) or all (threads).
    void basis_gemm(const float* x, int64_t n, float* zb) const;
    void basis_gemv_rows(const float* x, int64_t n, float* zb, int64_t r0, int64_t r1) const;
    const void* basis_key() const { return basis_t_ ? (const void*)basis_t_.get() : (const void*)basis_t16_.get(); }
    // Bᵀ [rp, in]: a Fourier basis as float32, shared by all layers of a shape;
    // an explicit (SVD) basis as fp16 (its file values, converted exactly in
    // the GEMV: half the bytes per decode token of a float32 copy).
    std::shared_ptr<const std::vector<float>> basis_t_;
    std::shared_ptr<const std::vector<uint16_t>> basis_t16_;
    std::vector<float> had_signs_;
    std::vector<int> order_;  // spectral_column_order: stored column order_[c] sits at c
};

// Backend choice for a quantized layer: kAuto = AVX2 when the CPU has it
// (w4a4_avx2_available), else the reference after one loud line on stderr;
// env SQ_FORCE_SCALAR=1 forces the reference (and every other scalar kernel);
// env SQ_W4A4_BACKEND=ref|avx2 overrides kAuto for W4A4 layers only (A/B runs
// of whole models). kAvx2 without AVX2 is an error.
std::unique_ptr<Linear> make_linear_w4a4(QLinearData d, W4A4Backend backend = W4A4Backend::kAuto);

// The QLinearData behind a W4A4 layer of either backend, or false for other layers.
bool linear_w4a4_data(const Linear& L, QLinearData* out);

}  // namespace sq
