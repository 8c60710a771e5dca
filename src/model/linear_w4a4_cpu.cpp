#include "model/linear_w4a4_cpu.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

#include "core/error.h"
#include "core/fp16.h"
#include "core/threads.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/w4a4_format.h"
#include "quant/hadamard.h"

namespace sq {

namespace {

// Bᵀ [rp, in] fp32 from B [in, rank] (rows rank..rp−1 zero, so gemm_f32
// writes zb [n, rp] already padded for the epilogue's 8-lane loop).
std::vector<float> basis_transposed(const std::vector<float>& B, int64_t in, int rank, int rp) {
    std::vector<float> Bt((size_t)rp * in, 0.0f);
    for (int64_t k = 0; k < in; ++k)
        for (int r = 0; r < rank; ++r) Bt[(size_t)r * in + k] = B[(size_t)k * rank + r];
    return Bt;
}

// Column order for the Fourier basis: quant/spectral.h stores [DC, cos 1..K−1,
// sin 1..K−1], so a row keeping k bins has nonzeros at [0, k) and [K, K−1+k).
// Interleaved [DC, cos 1, sin 1, cos 2, sin 2, …] makes them the prefix
// [0, 2k−1), and the epilogue stops at its group's last nonzero (w4a4_pack's
// coef_len). B's and C's columns are permuted alike: (x·B)·Cᵀ is unchanged.
// perm[c] = the stored column that goes to position c.
std::vector<int> fourier_interleave(int rank) {
    const int K = (rank + 1) / 2;
    std::vector<int> p = {0};
    for (int f = 1; f < K; ++f) {
        p.push_back(f);
        p.push_back(K - 1 + f);
    }
    return p;
}

// The Fourier basis depends on (in, rank) only: one copy shared by every
// layer of that shape (SmolLM2: 210 layers, 2 shapes → 145 KB each instead of
// 30 MB). Entries live while a layer holds them.
std::shared_ptr<const std::vector<float>> fourier_basis_t_shared(int64_t in, int rank, int rp) {
    static std::mutex mu;
    static std::map<std::pair<int64_t, int>, std::weak_ptr<const std::vector<float>>> cache;
    std::lock_guard<std::mutex> lock(mu);
    auto& slot = cache[{in, rank}];
    if (auto p = slot.lock()) return p;
    const std::vector<float> B = fourier_basis_f16(in, rank);
    const std::vector<int> perm = fourier_interleave(rank);
    std::vector<float> Bp(B.size());
    for (int64_t k = 0; k < in; ++k)
        for (int c = 0; c < rank; ++c) Bp[(size_t)k * rank + c] = B[(size_t)k * rank + perm[c]];
    auto p = std::make_shared<const std::vector<float>>(basis_transposed(Bp, in, rank, rp));
    slot = p;
    return p;
}

void gemm_any(const float* x, int64_t m, const PackedF32& w, float* y) {
    if (m <= gemv_f32_max_m) gemv_f32(x, m, w, y);
    else gemm_f32(x, m, w, y);
}

}  // namespace

W4A4Backend w4a4_backend_from_string(const std::string& s) {
    if (s == "auto") return W4A4Backend::kAuto;
    if (s == "ref") return W4A4Backend::kRef;
    if (s == "avx2") return W4A4Backend::kAvx2;
    fail("unknown W4A4 backend '", s, "' (auto, ref, avx2)");
}

LinearW4A4Cpu::LinearW4A4Cpu(QLinearData d, bool spectral_fused) : fused_(spectral_fused) {
    d.validate("w4a4 linear");
    SQ_CHECK(w4a4_avx2_available(), "w4a4 linear: the AVX2 backend needs AVX2+FMA+F16C (CPU: ", cpu_describe(),
             ", SQ_FORCE_SCALAR ", cpu_use_avx2() ? "unset" : "set or no AVX2", ")");
    in = d.in;
    out = d.out;
    if (d.rank > 0 && d.basis == "fourier" && fused_) perm_ = fourier_interleave(d.rank);
    std::vector<uint16_t> coef = d.coef;  // C's columns in B's (permuted) order
    if (!perm_.empty())
        for (int64_t j = 0; j < out; ++j)
            for (int c = 0; c < d.rank; ++c) coef[j * d.rank + c] = d.coef[j * d.rank + perm_[c]];
    w_ = w4a4_pack(d.codes.data(), out, in, d.scale.data(), d.bias.empty() ? nullptr : d.bias.data(),
                   d.rank > 0 ? coef.data() : nullptr, d.rank);
    if (d.had_in) had_signs_ = hadamard_signs(d.had_in, d.had_seed);
    if (d.rank > 0) {
        if (d.basis == "fourier") {
            basis_t_ = fourier_basis_t_shared(in, d.rank, w_.rp);
        } else {
            std::vector<float> B((size_t)in * d.rank);
            for (size_t i = 0; i < B.size(); ++i) B[i] = fp16_to_fp32(d.basis_f16[i]);
            basis_t_ = std::make_shared<const std::vector<float>>(basis_transposed(B, in, d.rank, w_.rp));
        }
        if (!fused_) {  // the reference's own operands: Bᵀ [rank, in], C [out, rank] fp32, stored order
            std::vector<float> B = d.basis == "fourier" ? fourier_basis_f16(in, d.rank) : std::vector<float>();
            if (B.empty())
                for (uint16_t h : d.basis_f16) B.push_back(fp16_to_fp32(h));
            basis_t_ = std::make_shared<const std::vector<float>>(basis_transposed(B, in, d.rank, d.rank));
            std::vector<float> C(d.coef.size());
            for (size_t i = 0; i < C.size(); ++i) C[i] = fp16_to_fp32(d.coef[i]);
            coef_f_ = gemm_f32_pack(C.data(), out, d.rank);
        }
    }
    // The kernel layout holds codes, scales, rowsums, coefficients and bias;
    // keep only the rest (one copy of the weights in memory).
    meta_ = std::move(d);
    meta_.codes = {};
    meta_.scale = {};
    meta_.rowsum = {};
    meta_.coef = {};
    meta_.bias = {};
}

size_t LinearW4A4Cpu::weight_bytes() const { return w_.bytes() + meta_.basis_f16.size() * 2; }

QLinearData LinearW4A4Cpu::data() const {
    QLinearData d = meta_;
    const int64_t rb = w4_row_bytes(in);
    d.codes.assign(out * rb, 0);
    for (int64_t j = 0; j < out; ++j) w4a4_unpack_row(w_, j, &d.codes[j * rb]);
    d.scale.assign(w_.scale.begin(), w_.scale.begin() + out);
    d.rowsum.assign(w_.rowsum.begin(), w_.rowsum.begin() + out);
    if (!w_.bias.empty()) d.bias.assign(w_.bias.begin(), w_.bias.begin() + out);
    d.coef.resize(out * d.rank);
    for (int64_t j = 0; j < out; ++j)
        for (int r = 0; r < d.rank; ++r) d.coef[j * d.rank + (perm_.empty() ? r : perm_[r])] = w_.coef[j * w_.rp + r];
    return d;
}

void LinearW4A4Cpu::forward(const float* x_in, int64_t n, float* y) const {
    if (n == 0) return;
    // Per-thread scratch: decode calls this ~200 times per token.
    thread_local std::vector<float> rotated, xp, ys, sep;
    thread_local W4A4Act act;
    const float* x = x_in;
    if (meta_.had_in) {  // online Hadamard, exactly the reference's call
        rotated.assign(x_in, x_in + n * in);
        hadamard_transform(rotated.data(), n, (int)in, had_signs_.data());
        x = rotated.data();
    }
    const int rank = meta_.rank, rp = w_.rp;
    const float* zbp = nullptr;
    if (rank > 0) {
        // zb = x·B, the reference's GEMM on the same values. q/k/v and
        // gate/up read the same input through the same shared Fourier basis:
        // the last result is reused when basis and input are identical
        // (memcmp of x costs ~1/rank of the GEMM; exact by construction).
        thread_local struct {
            std::shared_ptr<const std::vector<float>> basis;
            int64_t n = 0;
            std::vector<float> x, zb;
        } last;
        if (!(last.basis == basis_t_ && last.n == n && last.x.size() == (size_t)(n * in) &&
              std::memcmp(last.x.data(), x, n * in * sizeof(float)) == 0)) {
            last.basis = basis_t_;
            last.n = n;
            last.x.assign(x, x + n * in);
            // fused: Bᵀ [rp, in] (permuted, zero padded); separate: the reference's Bᵀ [rank, in]
            const int64_t cols = fused_ ? rp : rank;
            last.zb.resize((size_t)n * cols);
            gemm_any(x, n, gemm_f32_view(basis_t_->data(), cols, in), last.zb.data());
        }
        zbp = last.zb.data();
    }
    const float* zb_fused = fused_ ? zbp : nullptr;
    if (meta_.a_bits >= 16) {
        const float* xk = x;
        if (w_.kp != in) {  // the kernel reads whole 64-wide blocks: zero-padded copy
            xp.assign((size_t)n * w_.kp, 0.0f);
            for (int64_t t = 0; t < n; ++t) std::memcpy(&xp[t * w_.kp], x + t * in, in * sizeof(float));
            xk = xp.data();
        }
        w4a16_gemm(xk, n, w_, zb_fused, y, fused_);
    } else {
        w4a4_act_prepare(x, n, in, meta_.a_bits, meta_.a_clip, w_.kp, act);
        w4a4_gemm(act, w_, zb_fused, y, fused_);
    }
    if (!fused_) {  // separate passes in the reference's order: y += zb·Cᵀ, then y += bias
        if (rank > 0) {
            sep.resize((size_t)n * out);
            gemm_any(zbp, n, coef_f_, sep.data());
            for (size_t i = 0; i < sep.size(); ++i) y[i] += sep[i];
        }
        if (!w_.bias.empty())
            for (int64_t t = 0; t < n; ++t)
                for (int64_t j = 0; j < out; ++j) y[t * out + j] += w_.bias[j];
    }
}

std::unique_ptr<Linear> make_linear_w4a4(QLinearData d, W4A4Backend backend) {
    // Default: the spectral branch in the reference's operation order, so the
    // fast path's output is bitwise the reference's at a_bits < 16. The fused
    // order is ~20% faster per layer but moves a layer output by ~1 ulp, and at
    // 4-bit activations such ulps flip codes and cascade over 30 layers (+4.8%
    // PPL on 4×512 WikiText-2 tokens, docs/perf.md): opt in with
    // SQ_W4A4_SPECTRAL=fused.
    const char* sp = std::getenv("SQ_W4A4_SPECTRAL");
    const bool fused = sp && std::string(sp) == "fused";
    if (backend == W4A4Backend::kAuto) {  // A/B runs of whole models: SQ_W4A4_BACKEND=ref|avx2
        const char* e = std::getenv("SQ_W4A4_BACKEND");
        if (e && *e) backend = w4a4_backend_from_string(e);
    }
    switch (backend) {
    case W4A4Backend::kRef:
        return std::make_unique<LinearW4A4Ref>(std::move(d));
    case W4A4Backend::kAvx2:
        return std::make_unique<LinearW4A4Cpu>(std::move(d), fused);
    case W4A4Backend::kAuto:
        break;
    }
    if (w4a4_avx2_available()) return std::make_unique<LinearW4A4Cpu>(std::move(d), fused);
    cpu_warn_fallback("w4a4 linear");
    return std::make_unique<LinearW4A4Ref>(std::move(d));
}

bool linear_w4a4_data(const Linear& L, QLinearData* out) {
    if (auto* r = dynamic_cast<const LinearW4A4Ref*>(&L)) {
        *out = r->data();
        return true;
    }
    if (auto* c = dynamic_cast<const LinearW4A4Cpu*>(&L)) {
        *out = c->data();
        return true;
    }
    return false;
}

}  // namespace sq
