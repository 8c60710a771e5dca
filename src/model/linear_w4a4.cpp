#include "model/linear_w4a4.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "core/threads.h"
#include "kernels/ref/w4a4_ref.h"
#include "kernels/w4a4_format.h"
#include "quant/hadamard.h"
#include "quant/spectral.h"

namespace sq {

void QLinearData::validate(const std::string& where) const {
    SQ_CHECK(in > 0 && out > 0, where, ": bad shape ", out, "x", in);
    SQ_CHECK((a_bits >= 2 && a_bits <= 8) || a_bits == 16, where, ": activation bits ", a_bits,
             " out of range (2..8 or 16)");
    SQ_CHECK(a_clip > 0.0f && a_clip <= 1.0f, where, ": activation clip ", a_clip, " out of range (0, 1]");
    SQ_CHECK((int64_t)codes.size() == out * w4_row_bytes(in), where, ": codes have ", codes.size(), " bytes");
    SQ_CHECK((int64_t)scale.size() == out && (int64_t)rowsum.size() == out, where, ": scales/rowsums size");
    SQ_CHECK(rank >= 0 && rank <= in, where, ": spectral rank ", rank, " out of range");
    SQ_CHECK((int64_t)coef.size() == out * rank, where, ": spectral coefficients size");
    if (rank > 0 && basis == "fourier") {
        SQ_CHECK(rank % 2 == 1 && (rank + 1) / 2 <= in / 2 + 1, where, ": fourier rank ", rank, " invalid for in=", in);
    } else if (rank > 0) {
        SQ_CHECK(basis == "explicit", where, ": unknown basis '", basis, "'");
        SQ_CHECK((int64_t)basis_f16.size() == in * rank, where, ": explicit basis size");
    }
    SQ_CHECK(bias.empty() || (int64_t)bias.size() == out, where, ": bias size");
    SQ_CHECK(had_in == 0 || had_in == in, where, ": online Hadamard size ", had_in, " != in ", in);
    SQ_CHECK(had_in == 0 || hadamard_supported(had_in), where, ": no Hadamard matrix of order ", had_in);
    for (int64_t j = 0; j < out; ++j) {
        int32_t s = 0;
        const uint8_t* row = &codes[j * w4_row_bytes(in)];
        for (int64_t k = 0; k < in; ++k) s += w4_get(row, k);
        SQ_CHECK(s == rowsum[j], where, ": row ", j, " rowsum ", rowsum[j], " does not match its codes (", s, ")");
    }
}

size_t QLinearData::bytes() const {
    return codes.size() + scale.size() * 4 + rowsum.size() * 4 + coef.size() * 2 + basis_f16.size() * 2 +
           bias.size() * 4;
}

std::vector<float> fourier_basis_f16(int64_t in, int rank) {
    if (rank <= 0) return {};
    std::vector<float> B = spectral_basis(in, (rank + 1) / 2);
    for (auto& b : B) b = fp16_to_fp32(fp32_to_fp16(b));
    return B;
}

std::vector<int> spectral_column_order(const QLinearData& d) {
    std::vector<int> order(d.rank);
    if (d.rank == 0) return order;
    if (d.basis != "fourier") {
        for (int c = 0; c < d.rank; ++c) order[c] = c;
        return order;
    }
    const int K = (d.rank + 1) / 2;
    order[0] = 0;
    for (int f = 1; f < K; ++f) {
        order[2 * f - 1] = f;          // cos f
        order[2 * f] = K - 1 + f;      // sin f
    }
    return order;
}

std::vector<float> spectral_basis_t(const QLinearData& d) {
    const int rank = d.rank, rp = spectral_rp(rank);
    const int64_t in = d.in;
    std::vector<float> B;  // [in, rank] stored order
    if (d.basis == "fourier") {
        B = fourier_basis_f16(in, rank);
    } else {
        B.resize(d.basis_f16.size());
        for (size_t i = 0; i < B.size(); ++i) B[i] = fp16_to_fp32(d.basis_f16[i]);
    }
    const std::vector<int> order = spectral_column_order(d);
    std::vector<float> Bt((size_t)rp * in, 0.0f);
    for (int64_t k = 0; k < in; ++k)
        for (int c = 0; c < rank; ++c) Bt[(size_t)c * in + k] = B[(size_t)k * rank + order[c]];
    return Bt;
}

LinearW4A4Ref::LinearW4A4Ref(QLinearData d) : d_(std::move(d)) {
    d_.validate("w4a4 linear");
    if (d_.had_in) had_signs_ = hadamard_signs(d_.had_in, d_.had_seed);
    in = d_.in;
    out = d_.out;
    const int64_t rb = w4_row_bytes(in);
    std::vector<float> wf((size_t)out * in);
    for (int64_t j = 0; j < out; ++j)
        for (int64_t k = 0; k < in; ++k) wf[(size_t)j * in + k] = (float)w4_get(&d_.codes[j * rb], k);
    if (d_.a_bits >= 16) {
        for (int64_t j = 0; j < out; ++j)
            for (int64_t k = 0; k < in; ++k) wf[(size_t)j * in + k] *= d_.scale[j];
        w_deq_ = gemm_f32_pack(wf.data(), out, in);
    } else {
        codes_f_ = gemm_f32_pack(wf.data(), out, in);
        const int64_t qmax = (1 << d_.a_bits) - 1;
        k_chunk_ = std::min<int64_t>(in, ((int64_t)1 << 24) / (qmax * 8) - 1);
    }
    if (d_.rank > 0) {
        basis_t_ = gemm_f32_pack(spectral_basis_t(d_).data(), spectral_rp(d_.rank), in);
        const std::vector<int> order = spectral_column_order(d_);
        coef_.resize(d_.coef.size());
        for (int64_t j = 0; j < out; ++j)
            for (int c = 0; c < d_.rank; ++c)
                coef_[(size_t)j * d_.rank + c] = fp16_to_fp32(d_.coef[(size_t)j * d_.rank + order[c]]);
    }
}

static void gemm_any(const float* x, int64_t m, const PackedF32& w, float* y) {
    if (m <= gemv_f32_max_m) gemv_f32(x, m, w, y);
    else gemm_f32(x, m, w, y);
}

void LinearW4A4Ref::accumulators(const uint8_t* q, int64_t n, int32_t* acc) const {
    // Chunks of K columns: each chunk's float sum is an exact integer.
    std::vector<float> qf, part((size_t)n * out), wchunk;
    for (int64_t k0 = 0; k0 < in; k0 += k_chunk_) {
        const int64_t kc = std::min(k_chunk_, in - k0);
        qf.resize((size_t)n * kc);
        for (int64_t t = 0; t < n; ++t)
            for (int64_t k = 0; k < kc; ++k) qf[(size_t)t * kc + k] = (float)q[t * in + k0 + k];
        const float* wsrc = codes_f_.data();
        PackedF32 wv;
        if (kc == in) {
            wv = gemm_f32_view(wsrc, out, in);
        } else {
            wchunk.resize((size_t)out * kc);
            for (int64_t j = 0; j < out; ++j) std::memcpy(&wchunk[(size_t)j * kc], wsrc + j * in + k0, kc * 4);
            wv = gemm_f32_view(wchunk.data(), out, kc);
        }
        gemm_any(qf.data(), n, wv, part.data());
        for (size_t i = 0; i < part.size(); ++i) acc[i] = (k0 == 0 ? 0 : acc[i]) + (int32_t)part[i];
    }
}

void LinearW4A4Ref::forward(const float* x_in, int64_t n, float* y) const {
    std::vector<float> rotated;
    const float* x = x_in;
    if (d_.had_in) {  // online Hadamard: the weights were stored rotated (W·R)
        rotated.assign(x_in, x_in + n * in);
        hadamard_transform(rotated.data(), n, (int)in, had_signs_.data());
        x = rotated.data();
    }
    if (d_.a_bits >= 16) {
        gemm_any(x, n, w_deq_, y);
    } else {
        std::vector<uint8_t> q((size_t)n * in);
        std::vector<float> s(n);
        std::vector<int32_t> z(n), acc((size_t)n * out);
        parallel_for(n, [&](int64_t t) {
            act_quant_ref(x + t * in, 1, in, d_.a_bits, d_.a_clip, &q[t * in], &s[t], &z[t]);
        });
        accumulators(q.data(), n, acc.data());
        w4a4_epilogue_ref(acc.data(), n, out, s.data(), z.data(), d_.scale.data(), d_.rowsum.data(), y);
    }
    if (d_.rank > 0) {
        const int rank = d_.rank, rp = spectral_rp(rank);
        std::vector<float> zb((size_t)n * rp);
        gemm_any(x, n, basis_t_, zb.data());
        parallel_for(n, [&](int64_t t) {
            for (int64_t j = 0; j < out; ++j)
                y[t * out + j] += spectral_dot_ref(&zb[(size_t)t * rp], &coef_[(size_t)j * rank], rank);
        });
    }
    if (!d_.bias.empty())
        for (int64_t t = 0; t < n; ++t)
            for (int64_t j = 0; j < out; ++j) y[t * out + j] += d_.bias[j];
}

}  // namespace sq
