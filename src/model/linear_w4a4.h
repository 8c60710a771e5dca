// The W4A4 (and W4A16) linear layer in its packed form (w4a4_format.h), and
// its reference backend. The reference computes exactly what the format
// specifies: activations quantized per token to integers, integer dot
// products, the float epilogue, plus the 16-bit spectral branch.
//
// Speed trick that keeps the semantics exact: the integer dot products run
// through the float32 GEMM on integer-valued operands. Every partial sum is
// an integer below 2^24 (checked: qmax·8·K_chunk < 2^24), so float32
// accumulation is exact in any order and the accumulators equal the scalar
// int32 reference bit for bit (tests/test_w4a4.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/gemm_f32.h"
#include "model/linear.h"

namespace sq {

struct QLinearData {
    int64_t in = 0, out = 0;
    int a_bits = 4;       // activation bits: 2..8, or 16 for weight-only (W4A16)
    float a_clip = 0.9f;  // activation clip ratio
    std::vector<uint8_t> codes;   // [out, (in+1)/2] two's complement nibbles
    std::vector<float> scale;     // [out]
    std::vector<int32_t> rowsum;  // [out]
    // Spectral branch y += (x·B)·Cᵀ. rank 0 = none. basis "fourier": B is the
    // DC/cos/sin basis of the lowest (rank+1)/2 bins, rebuilt from (in, rank);
    // basis "explicit": B stored as fp16 [in, rank] (SVD, permuted Fourier).
    int rank = 0;
    std::string basis = "fourier";
    std::vector<uint16_t> coef;       // [out, rank] fp16
    std::vector<uint16_t> basis_f16;  // [in, rank] fp16, explicit basis only
    std::vector<float> bias;          // [out] or empty
    // Online Hadamard on the input (QuaRot's down_proj): 0 = none, else the
    // transform size (== in); sign vector seeded by had_seed.
    int had_in = 0;
    uint64_t had_seed = 0;

    void validate(const std::string& where) const;  // throws naming `where`
    size_t bytes() const;
};

// The run-time Fourier basis B [in, rank] (rank = 2K−1): spectral_basis(in, K)
// (orthonormal DC/cos/sin columns, quant/spectral.h) rounded to fp16, the
// values the quantizer's residual was computed against.
std::vector<float> fourier_basis_f16(int64_t in, int rank);

// The spectral branch y += (x·B)·Cᵀ as every CPU backend computes it (the
// specification; kernels/ref/w4a4_ref.h spectral_dot_ref):
//   zb [n, rp] = gemm_f32(x, Bᵀ)  with Bᵀ = spectral_basis_t(d) [rp, in],
//                rp = rank rounded up to 8, rows past rank zero;
//   y[t, j]   += spectral_dot_ref(zb_t, C_j in column order, rank).
// Column order: the Fourier basis is stored [DC, cos 1..K−1, sin 1..K−1];
// run time interleaves it [DC, cos 1, sin 1, cos 2, …] so that a row keeping
// k bins has its nonzeros in the prefix [0, 2k−1) (kernels stop there). An
// explicit basis keeps its stored order.
inline int spectral_rp(int rank) { return (rank + 7) / 8 * 8; }
// order[c] = the stored column at run-time position c.
std::vector<int> spectral_column_order(const QLinearData& d);
std::vector<float> spectral_basis_t(const QLinearData& d);

class LinearW4A4Ref : public Linear {
public:
    explicit LinearW4A4Ref(QLinearData d);
    void forward(const float* x, int64_t n, float* y) const override;
    std::string kind() const override { return d_.a_bits >= 16 ? "w4a16-ref" : "w4a4-ref"; }
    size_t weight_bytes() const override { return d_.bytes(); }
    const QLinearData& data() const { return d_; }

    // Exposed for tests: the integer accumulators for given activation codes.
    void accumulators(const uint8_t* q, int64_t n, int32_t* acc) const;

private:
    QLinearData d_;
    PackedF32 codes_f_;      // codes as integer-valued floats [out, in]
    PackedF32 w_deq_;        // scale·code [out, in] for W4A16
    PackedF32 basis_t_;      // Bᵀ [rp, in], spectral_basis_t
    std::vector<float> coef_;  // C [out, rank] fp32 (fp16 values), run-time column order
    std::vector<float> had_signs_;
    int64_t k_chunk_ = 0;    // K split so integer sums stay below 2^24
};

}  // namespace sq
