#include "model/linear_w4a4_cpu.h"

#include <algorithm>
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

// Bᵀ of a Fourier basis depends on (in, rank) only: one copy shared by
// every layer of that shape (SmolLM2: 210 layers, 2 shapes → 295 KB and
// 786 KB instead of 50 MB). Entries live while a layer holds them.
std::shared_ptr<const std::vector<float>> basis_t_shared(const QLinearData& d) {
    if (d.basis != "fourier") return std::make_shared<const std::vector<float>>(spectral_basis_t(d));
    static std::mutex mu;
    static std::map<std::pair<int64_t, int>, std::weak_ptr<const std::vector<float>>> cache;
    std::lock_guard<std::mutex> lock(mu);
    auto& slot = cache[{d.in, d.rank}];
    if (auto p = slot.lock()) return p;
    auto p = std::make_shared<const std::vector<float>>(spectral_basis_t(d));
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

LinearW4A4Cpu::LinearW4A4Cpu(QLinearData d) {
    d.validate("w4a4 linear");
    SQ_CHECK(w4a4_avx2_available(), "w4a4 linear: the AVX2 backend needs AVX2+FMA+F16C (CPU: ", cpu_describe(),
             ", SQ_FORCE_SCALAR ", cpu_use_avx2() ? "unset" : "set or no AVX2", ")");
    in = d.in;
    out = d.out;
    order_ = spectral_column_order(d);
    std::vector<uint16_t> coef = d.coef;  // C's columns in run-time order
    for (int64_t j = 0; j < out; ++j)
        for (int c = 0; c < d.rank; ++c) coef[j * d.rank + c] = d.coef[j * d.rank + order_[c]];
    w_ = w4a4_pack(d.codes.data(), out, in, d.scale.data(), d.bias.empty() ? nullptr : d.bias.data(),
                   d.rank > 0 ? coef.data() : nullptr, d.rank);
    SQ_CHECK(d.rank == 0 || w_.rp == spectral_rp(d.rank), "w4a4 linear: kernel rank padding ", w_.rp);
    if (d.had_in) had_signs_ = hadamard_signs(d.had_in, d.had_seed);
    if (d.rank > 0 && d.basis == "fourier") {
        basis_t_ = basis_t_shared(d);
    } else if (d.rank > 0) {
        const std::vector<float> bt = spectral_basis_t(d);  // fp16 values as float32: back to fp16 exactly
        auto h = std::make_shared<std::vector<uint16_t>>(bt.size());
        for (size_t i = 0; i < bt.size(); ++i) {
            (*h)[i] = fp32_to_fp16(bt[i]);
            SQ_CHECK(fp16_to_fp32((*h)[i]) == bt[i] || (bt[i] != bt[i]), "w4a4 linear: explicit basis value ", bt[i],
                     " is not an fp16 value");
        }
        basis_t16_ = std::move(h);
    }
    // The kernel layout holds codes, scales, rowsums, coefficients and bias;
    // keep only the rest (one copy of the weights in memory). Swap with
    // empty vectors: `v = {}` is assign(initializer_list), which keeps the
    // capacity — it kept the canonical codes and dense C of every layer
    // allocated (93 MB of SmolLM2's RSS at k̄ 32, found with heaptrack).
    meta_ = std::move(d);
    std::vector<uint8_t>().swap(meta_.codes);
    std::vector<float>().swap(meta_.scale);
    std::vector<int32_t>().swap(meta_.rowsum);
    std::vector<uint16_t>().swap(meta_.coef);
    std::vector<float>().swap(meta_.bias);
    // An explicit basis lives on as fp16 Bᵀ in run-time order (basis_t16_):
    // data() rebuilds the stored layout from it (SVD at k̄ 64 on SmolLM2: 77 MB
    // as float32 Bᵀ, 38.5 MB as fp16, read once per decode token).
    std::vector<uint16_t>().swap(meta_.basis_f16);
}

// An explicit basis (SVD) is held once, as the fp16 Bᵀ the x·B GEMV reads
// (a Fourier Bᵀ is shared by all layers of a shape and not counted).
size_t LinearW4A4Cpu::weight_bytes() const {
    return w_.bytes() + (basis_t16_ ? basis_t16_->size() * sizeof(uint16_t) : 0);
}

void LinearW4A4Cpu::basis_gemm(const float* x, int64_t n, float* zb) const {
    if (basis_t_) gemm_any(x, n, gemm_f32_view(basis_t_->data(), w_.rp, in), zb);
    else gemm_f16(x, n, basis_t16_->data(), w_.rp, in, zb);
}

void LinearW4A4Cpu::basis_gemv_rows(const float* x, int64_t n, float* zb, int64_t r0, int64_t r1) const {
    if (basis_t_) gemv_f32_rows(x, n, gemm_f32_view(basis_t_->data(), w_.rp, in), zb, r0, r1);
    else gemv_f16_rows(x, n, basis_t16_->data(), w_.rp, in, zb, r0, r1);
}

QLinearData LinearW4A4Cpu::data() const {
    QLinearData d = meta_;
    const int64_t rb = w4_row_bytes(in);
    d.codes.assign(out * rb, 0);
    d.scale.resize(out);
    d.rowsum.resize(out);
    if (!w_.bias.empty()) d.bias.resize(out);
    d.coef.assign(out * d.rank, 0);
    for (int64_t j = 0; j < out; ++j) {  // slot s of the kernel layout holds row j
        const int64_t s = w_.slot_of(j);
        w4a4_unpack_row(w_, j, &d.codes[j * rb]);
        d.scale[j] = w_.scale[s];
        d.rowsum[j] = w_.rowsum[s];
        if (!w_.bias.empty()) d.bias[j] = w_.bias[s];
        if (d.rank == 0) continue;
        const int64_t cl = w_.coef_len[s / W4A4Weights::kRows];
        const uint16_t* src = w_.coef_of_slot(s);
        for (int64_t c = 0; c < std::min<int64_t>(cl, d.rank); ++c) d.coef[j * d.rank + order_[c]] = src[c];
    }
    if (d.basis != "fourier" && d.rank > 0) {  // B [in, rank] stored order from Bᵀ [rp, in] run-time order
        d.basis_f16.assign(in * d.rank, 0);
        for (int c = 0; c < d.rank; ++c)
            for (int64_t k = 0; k < in; ++k)
                d.basis_f16[k * d.rank + order_[c]] = (*basis_t16_)[(size_t)c * in + k];
    }
    return d;
}

void LinearW4A4Cpu::forward(const float* x_in, int64_t n, float* y) const {
    if (n == 0) return;
    if (meta_.a_bits < 16) {
        const LinearW4A4Cpu* self = this;
        forward_w4a4(&self, 1, x_in, n, &y);
        return;
    }
    // W4A16 (weight-only): float activations against the codes.
    thread_local std::vector<float> rotated, xp;
    const float* x = x_in;
    if (meta_.had_in) {  // online Hadamard, exactly the reference's call
        rotated.assign(x_in, x_in + n * in);
        hadamard_transform(rotated.data(), n, (int)in, had_signs_.data());
        x = rotated.data();
    }
    thread_local std::vector<float> zb;
    if (meta_.rank > 0) {
        zb.resize((size_t)n * w_.rp);
        basis_gemm(x, n, zb.data());
    }
    const float* xk = x;
    if (w_.kp != in) {  // the kernel reads whole 64-wide blocks: zero-padded copy
        xp.assign((size_t)n * w_.kp, 0.0f);
        for (int64_t t = 0; t < n; ++t) std::memcpy(&xp[t * w_.kp], x + t * in, in * sizeof(float));
        xk = xp.data();
    }
    w4a16_gemm(xk, n, w_, meta_.rank > 0 ? zb.data() : nullptr, y);
}

bool LinearW4A4Cpu::forward_same_input(const Linear* const* layers, int count, const float* x, int64_t n,
                                       float* const* y) const {
    if (meta_.a_bits >= 16 || count > 16) return false;
    const LinearW4A4Cpu* ls[16];
    for (int i = 0; i < count; ++i) {
        const auto* c = dynamic_cast<const LinearW4A4Cpu*>(layers[i]);
        if (!c || c->in != in || c->meta_.a_bits != meta_.a_bits || c->meta_.a_clip != meta_.a_clip ||
            c->meta_.had_in != meta_.had_in || c->meta_.had_seed != meta_.had_seed)
            return false;
        ls[i] = c;
    }
    if (n > 0) forward_w4a4(ls, count, x, n, y);
    return true;
}

void LinearW4A4Cpu::forward_w4a4(const LinearW4A4Cpu* const* ls, int count, const float* x_in, int64_t n,
                                 float* const* y) {
    const LinearW4A4Cpu& L0 = *ls[0];
    const int64_t in = L0.in;
    // Per-thread scratch for decode (this runs ~150 times per token); prefill
    // (n > w4a4_gemv_max_m) uses scratch freed on return, so that the
    // resident set after a 512-token prompt is not ~8 MB of its buffers.
    const bool small = n <= w4a4_gemv_max_m;
    thread_local std::vector<float> rotated_tl;
    thread_local W4A4Act act_tl;
    std::vector<float> rotated_big;
    W4A4Act act_big;
    std::vector<float>& rotated = small ? rotated_tl : rotated_big;
    W4A4Act& act = small ? act_tl : act_big;
    const float* x = x_in;
    if (L0.meta_.had_in) {  // online Hadamard, exactly the reference's call
        rotated.assign(x_in, x_in + n * in);
        hadamard_transform(rotated.data(), n, (int)in, L0.had_signs_.data());
        x = rotated.data();
    }
    // zb = x·B per distinct basis (q/k/v and gate/up share the Fourier basis
    // of their width): the reference's GEMM on the same operands (bitwise).
    // A single layer reuses the last result when basis and input are
    // identical (memcmp of x costs ~1/rank of the GEMM; exact by construction).
    thread_local struct {
        const void* basis = nullptr;  // LinearW4A4Cpu::basis_key of the layer that made zb
        std::shared_ptr<const void> keep;  // keeps that basis (and so the key) alive
        int64_t n = 0;
        std::vector<float> x, zb;
    } last;
    thread_local std::vector<std::vector<float>> zbuf_tl;
    std::vector<std::vector<float>> zbuf_big;
    std::vector<std::vector<float>>& zbuf = small ? zbuf_tl : zbuf_big;
    struct Todo {
        const LinearW4A4Cpu* layer;  // its basis
        int rp;
        float* out;
    };
    Todo todo[16];
    int ntodo = 0;
    const void* bases[16];
    const float* zbs[16];
    int nbases = 0;
    W4A4Out outs[16];
    for (int i = 0; i < count; ++i) {
        const LinearW4A4Cpu& L = *ls[i];
        outs[i] = {&L.w_, nullptr, y[i]};
        if (L.meta_.rank == 0) continue;
        int u = 0;
        while (u < nbases && bases[u] != L.basis_key()) ++u;
        if (u == nbases) {
            bases[nbases] = L.basis_key();
            float* out = nullptr;
            if (count == 1 && small) {
                if (last.basis == L.basis_key() && last.n == n && last.x.size() == (size_t)(n * in) &&
                    std::memcmp(last.x.data(), x, n * in * sizeof(float)) == 0) {
                    zbs[nbases++] = last.zb.data();
                    outs[i].zb = zbs[u];
                    continue;
                }
                last.basis = L.basis_key();
                last.keep = L.basis_t_ ? std::shared_ptr<const void>(L.basis_t_) : std::shared_ptr<const void>(L.basis_t16_);
                last.n = n;
                last.x.assign(x, x + n * in);
                last.zb.resize((size_t)n * L.w_.rp);
                out = last.zb.data();
            } else {
                if ((int)zbuf.size() <= nbases) zbuf.resize(nbases + 1);
                zbuf[nbases].resize((size_t)n * L.w_.rp);
                out = zbuf[nbases].data();
            }
            todo[ntodo++] = {&L, L.w_.rp, out};
            zbs[nbases++] = out;
        }
        outs[i].zb = zbs[u];
    }
    std::function<void(int, int)> pre;
    if (ntodo > 0 && n <= w4a4_gemv_max_m) {
        // Decode: every thread computes its share of the rows of all x·B
        // (4-row units) inside the GEMM's region, then a barrier.
        int64_t units = 0;
        for (int u = 0; u < ntodo; ++u) units += todo[u].rp / 4;
        pre = [&, units](int t, int nt) {
            const int64_t per = (units + nt - 1) / nt, a = std::min(units, t * per), b = std::min(units, a + per);
            int64_t base = 0;
            for (int u = 0; u < ntodo; ++u) {
                const int64_t nu = todo[u].rp / 4, lo = std::max(a, base), hi = std::min(b, base + nu);
                if (lo < hi) todo[u].layer->basis_gemv_rows(x, n, todo[u].out, (lo - base) * 4, (hi - base) * 4);
                base += nu;
            }
        };
    } else {
        for (int u = 0; u < ntodo; ++u) todo[u].layer->basis_gemm(x, n, todo[u].out);
    }
    w4a4_act_prepare(x, n, in, L0.meta_.a_bits, L0.meta_.a_clip, L0.w_.kp, act);
    w4a4_gemm_multi(act, outs, count, pre);
}

std::unique_ptr<Linear> make_linear_w4a4(QLinearData d, W4A4Backend backend) {
    if (backend == W4A4Backend::kAuto) {  // A/B runs of whole models: SQ_W4A4_BACKEND=ref|avx2
        const char* e = std::getenv("SQ_W4A4_BACKEND");
        if (e && *e) backend = w4a4_backend_from_string(e);
    }
    switch (backend) {
    case W4A4Backend::kRef:
        return std::make_unique<LinearW4A4Ref>(std::move(d));
    case W4A4Backend::kAvx2:
        return std::make_unique<LinearW4A4Cpu>(std::move(d));
    case W4A4Backend::kAuto:
        break;
    }
    if (w4a4_avx2_available()) return std::make_unique<LinearW4A4Cpu>(std::move(d));
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
