// The quantization pipeline, one decoder layer at a time (docs/method.md):
//
//   for each layer, with H = hidden states of the calibration tokens as the
//   already-quantized previous layers produce them:
//     X  = rmsnorm(H)·attn_norm
//     [smooth]  α search for q/k/v → fold s into attn_norm and W_qkv columns
//     [smooth]  α search for o on the FP attention output → fold into v rows
//     quantize q, k, v  (spectral split, GPTQ/RTN on the residual)
//     A  = attention with the quantized q/k/v (and KV cache quantization)
//     quantize o on A;  H += o(A)
//     the same for gate/up (ffn_norm), down (folded into up rows);  H += down(G)
//
// The α search scores each candidate by the relative output error of the
// group with the method's own quantizer (RTN in place of GPTQ, for speed) on
// `search_tokens` calibration tokens; "no smoothing" is always a candidate.
#include "quant/pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/fp16.h"
#include "core/progress.h"
#include "core/threads.h"
#include "kernels/cpu/gemm_f32.h"
#include "kernels/cpu/ops.h"
#include "kernels/w4a4_format.h"
#include "model/linear_w4a4.h"
#include "model/linear_w4a4_cpu.h"
#include "quant/calib_data.h"
#include "quant/gptq.h"
#include "quant/hadamard.h"
#include "quant/lowrank.h"
#include "quant/quantizer.h"
#include "quant/smooth.h"
#include "quant/spectral.h"

namespace sq {

using json = nlohmann::json;

static const char* const METHODS = "fp, rtn, smoothquant, gptq, quarot, specquant";

QuantConfig quant_config_for(const std::string& method) {
    QuantConfig qc;
    qc.method = method;
    if (method == "fp") {
        qc.w_bits = qc.a_bits = qc.kv_bits = 16;
    } else if (method == "rtn") {
    } else if (method == "smoothquant") {
        qc.smooth = true;
    } else if (method == "gptq") {
        qc.gptq = true;
    } else if (method == "quarot") {
        qc.rotate = true;
        qc.gptq = true;
    } else if (method == "specquant") {
        qc.smooth = true;
        qc.spectral = true;
        qc.gptq = true;
    } else {
        fail("unknown method '", method, "' (methods: ", METHODS, ")");
    }
    return qc;
}

void quant_config_validate(const QuantConfig& qc) {
    if (qc.method == "fp") return;
    SQ_CHECK(qc.w_bits == 4, "--w-bits ", qc.w_bits, " not supported: the packed format stores 4-bit weights");
    SQ_CHECK((qc.a_bits >= 2 && qc.a_bits <= 8) || qc.a_bits == 16, "--a-bits ", qc.a_bits,
             " out of range (2..8, or 16 for weight-only)");
    SQ_CHECK((qc.kv_bits >= 2 && qc.kv_bits <= 8) || qc.kv_bits == 16, "--kv-bits ", qc.kv_bits,
             " out of range (2..8, or 16)");
    SQ_CHECK(qc.a_clip > 0.0f && qc.a_clip <= 1.0f, "--a-clip ", qc.a_clip, " out of range (0, 1]");
    SQ_CHECK(qc.kv_clip > 0.0f && qc.kv_clip <= 1.0f, "--kv-clip ", qc.kv_clip, " out of range (0, 1]");
    SQ_CHECK(!qc.spectral || (qc.k_bar >= 1 && qc.k_bar <= 4096), "--k-bar ", qc.k_bar, " out of range");
    SQ_CHECK(qc.temperature > 0.0f, "--temperature must be > 0");
    SQ_CHECK(qc.embed_bits == 4 || qc.embed_bits == 8 || qc.embed_bits == 16, "--embed-bits ", qc.embed_bits,
             " not supported (4, 8 or 16)");
    SQ_CHECK(qc.basis == "fourier" || qc.basis == "svd", "--basis ", qc.basis, " unknown (fourier | svd)");
    importance_from_name(qc.importance);
    SQ_CHECK(!qc.smooth || !qc.alpha_grid.empty(), "smoothing needs at least one alpha");
    for (float a : qc.alpha_grid) SQ_CHECK(a >= 0.0f && a <= 1.0f, "alpha ", a, " out of range [0, 1]");
    SQ_CHECK(qc.calib_n > 0 && qc.calib_len >= 16, "--calib-n must be > 0 and --calib-len >= 16");
    SQ_CHECK(qc.gptq_damp > 0.0f && qc.gptq_block > 0, "GPTQ damping and block must be positive");
    SQ_CHECK(qc.search_tokens > 0, "search tokens must be positive");
    SQ_CHECK(!qc.a_clip_search || !qc.a_clip_grid.empty(), "--a-clip-search needs at least one clip ratio");
    for (float c : qc.a_clip_grid) SQ_CHECK(c > 0.0f && c <= 1.0f, "activation clip ", c, " out of range (0, 1]");
    SQ_CHECK(!qc.gptq_qinput || (qc.gptq && qc.a_bits < 16),
             "--gptq-qinput needs GPTQ and quantized activations (--a-bits < 16)");
    SQ_CHECK(!qc.a_clip_search || qc.a_bits < 16, "--a-clip-search needs quantized activations (--a-bits < 16)");
    SQ_CHECK(!qc.k_center || qc.kv_bits < 16, "--k-center needs a quantized KV cache (--kv-bits < 16)");
}

json quant_config_to_json(const QuantConfig& qc) {
    json j = {{"method", qc.method}, {"w_bits", qc.w_bits}, {"a_bits", qc.a_bits}, {"kv_bits", qc.kv_bits}};
    if (qc.method == "fp") return j;
    j.update({{"a_clip", qc.a_clip}, {"kv_clip", qc.kv_clip}, {"smooth", qc.smooth}, {"spectral", qc.spectral},
              {"rotate", qc.rotate}, {"weight_quantizer", qc.gptq ? "gptq" : "rtn"}, {"calib", qc.calib_path},
              {"calib_n", qc.calib_n}, {"calib_len", qc.calib_len}, {"seed", qc.seed},
              {"embed_bits", qc.embed_bits}});
    if (qc.smooth) j["alpha_grid"] = qc.alpha_grid, j["search_tokens"] = qc.search_tokens;
    if (qc.spectral)
        j.update({{"k_bar", qc.k_bar}, {"importance", qc.importance}, {"temperature", qc.temperature},
                  {"basis", qc.basis}});
    if (qc.gptq)
        j.update({{"gptq_damp", qc.gptq_damp}, {"gptq_block", qc.gptq_block}, {"act_order", qc.act_order}});
    if (qc.rotate) j["rotate_seed"] = qc.rotate_seed;
    if (qc.gptq_qinput) j["gptq_qinput"] = true;
    if (qc.k_center) j["k_center"] = true;
    if (qc.a_clip_search) j["a_clip_grid"] = qc.a_clip_grid, j["search_tokens"] = qc.search_tokens;
    return j;
}

namespace {

// y [n, out] = x [n, in] · W [out, in]ᵀ
void matmul_t(const float* x, int64_t n, const float* w, int64_t out, int64_t in, float* y) {
    const PackedF32 p = gemm_f32_view(w, out, in);
    if (n <= gemv_f32_max_m) gemv_f32(x, n, p, y);
    else gemm_f32(x, n, p, y);
}

// G = XᵀY [in, in] for X, Y [n, in], in double, through the float GEMM in
// chunks of 512 tokens (each chunk's float sums are rounded once into the
// double total). hessian: XᵀX.
std::vector<double> gram(const float* x, const float* y, int64_t n, int64_t in) {
    std::vector<double> G((size_t)in * in, 0.0);
    const int64_t chunk = 512;
    std::vector<float> xt((size_t)in * chunk), yt(y == x ? 0 : (size_t)in * chunk), part((size_t)in * in);
    for (int64_t t0 = 0; t0 < n; t0 += chunk) {
        const int64_t tc = std::min(chunk, n - t0);
        for (int64_t t = 0; t < tc; ++t)
            for (int64_t j = 0; j < in; ++j) xt[(size_t)j * tc + t] = x[(t0 + t) * in + j];
        if (y != x)
            for (int64_t t = 0; t < tc; ++t)
                for (int64_t j = 0; j < in; ++j) yt[(size_t)j * tc + t] = y[(t0 + t) * in + j];
        matmul_t(xt.data(), in, y == x ? xt.data() : yt.data(), in, tc, part.data());
        for (size_t i = 0; i < G.size(); ++i) G[i] += part[i];
    }
    return G;
}

std::vector<double> hessian(const float* x, int64_t n, int64_t in) { return gram(x, x, n, in); }

// GPTQ on the activations the kernel multiplies (QuantConfig::gptq_qinput,
// beyond the paper). The 4-bit branch computes Q·R̂ᵀ with Q the 4-bit codes
// of X (per token, dequantized), not X·R̂ᵀ. So R is first refit by least
// squares to predict X·Rᵀ from Q, with a ridge toward R itself:
//   R* = argmin ‖X·Rᵀ − Q·R*ᵀ‖² + λ‖R* − R‖² = R·P,  P = (XᵀQ + λI)(QᵀQ + λI)⁻¹
// (λ = GPTQ's damping). The ridge pulls toward R, not toward 0: with fewer
// calibration tokens than inputs (or dead directions) a plain least-squares
// fit would zero R outside the span of the calibration data (measured: PPL
// 56 → 1159 on SmolLM2 with 4 × 256 tokens). GPTQ then quantizes R* with
// H = QᵀQ.
struct QinputFit {
    std::vector<double> Hq;  // QᵀQ [in, in]
    std::vector<float> Pt;   // Pᵀ [in, in]
};

QinputFit qinput_fit(const float* X, int64_t n, int64_t in, const QuantConfig& qc) {
    std::vector<float> Q(X, X + (size_t)n * in);
    act_fake_quant_asym(Q.data(), n, in, qc.a_bits, qc.a_clip);
    QinputFit f;
    f.Hq = gram(Q.data(), Q.data(), n, in);
    const std::vector<double> M = gram(X, Q.data(), n, in);  // XᵀQ
    std::vector<double> Hd = f.Hq;
    double mean = 0;
    for (int64_t j = 0; j < in; ++j) mean += Hd[j * in + j];
    const double lambda = qc.gptq_damp * std::max(mean / (double)in, 1e-12);
    for (int64_t j = 0; j < in; ++j) Hd[j * in + j] += lambda;
    const std::vector<double> U = gptq_inverse_cholesky(Hd.data(), in);  // UᵀU = (QᵀQ + λI)⁻¹
    std::vector<float> Ut((size_t)in * in), Mf(M.begin(), M.end()), Hinv((size_t)in * in);
    for (int64_t j = 0; j < in; ++j) Mf[j * in + j] += (float)lambda;
    for (int64_t i = 0; i < in; ++i)
        for (int64_t j = 0; j < in; ++j) Ut[j * in + i] = (float)U[i * in + j];
    matmul_t(Ut.data(), in, Ut.data(), in, in, Hinv.data());  // Uᵀ·U
    f.Pt.resize((size_t)in * in);
    matmul_t(Hinv.data(), in, Mf.data(), in, in, f.Pt.data());  // Pᵀ = (QᵀQ + λI)⁻¹·(XᵀQ + λI)ᵀ
    return f;
}

// What GPTQ gets for inputs X [n, in]: H = XᵀX, or with gptq_qinput the
// quantized inputs' Hessian and the refit (nothing without GPTQ).
struct GptqInputs {
    std::vector<double> H;  // XᵀX (plain GPTQ)
    QinputFit fit;          // gptq_qinput
    bool qinput = false;
    const double* h() const { return qinput ? fit.Hq.data() : H.empty() ? nullptr : H.data(); }
    const std::vector<float>* refit() const { return qinput ? &fit.Pt : nullptr; }
};

GptqInputs gptq_inputs(const float* X, int64_t n, int64_t in, const QuantConfig& qc) {
    GptqInputs g;
    g.qinput = qc.gptq && qc.gptq_qinput && qc.a_bits < 16;
    if (g.qinput) g.fit = qinput_fit(X, n, in, qc);
    else if (qc.gptq) g.H = hessian(X, n, in);
    return g;
}

std::vector<float> transpose_of(const std::vector<float>& a, int64_t r, int64_t c) {
    std::vector<float> t((size_t)r * c);
    for (int64_t i = 0; i < r; ++i)
        for (int64_t j = 0; j < c; ++j) t[j * r + i] = a[i * c + j];
    return t;
}

std::vector<float> col_absmax(const float* x, int64_t n, int64_t cols) {
    std::vector<float> m(cols, 0.0f);
    smooth_act_absmax(x, n, cols, m.data());
    return m;
}

struct LinearStats {
    json j;
};

// The method's quantizer for one weight matrix W [out, in] whose input is X
// [n, in] (after smoothing; not yet rotated when had_in): spectral split,
// then GPTQ or RTN on the residual. Returns the packed layer.
QLinearData quantize_linear(const std::vector<float>& W, int64_t out, int64_t in, const std::vector<float>& bias,
                            const double* H, const QuantConfig& qc, bool use_gptq, int had_in, uint64_t had_seed,
                            json* stats, bool coarse_clip = false, const std::vector<float>* refit_pt = nullptr) {
    QLinearData d;
    d.in = in;
    d.out = out;
    d.a_bits = qc.a_bits;
    d.a_clip = qc.a_clip;
    d.bias = bias;
    d.had_in = had_in;
    d.had_seed = had_seed;
    std::vector<float> R = W;
    if (qc.spectral && qc.basis == "svd") {
        const int r = (int)std::min<int64_t>(2 * qc.k_bar - 1, std::min(in, out));
        std::vector<float> B = lowrank_basis(W.data(), out, in, r);
        for (auto& b : B) b = fp16_to_fp32(fp32_to_fp16(b));
        std::vector<float> C((size_t)out * r);
        matmul_t(W.data(), out, std::vector<float>(transpose_of(B, in, r)).data(), r, in, C.data());
        for (auto& c : C) c = fp16_to_fp32(fp32_to_fp16(c));
        spectral_residual(W.data(), out, in, C.data(), B.data(), r, R.data());
        d.rank = r;
        d.basis = "explicit";
        d.basis_f16.resize(B.size());
        for (size_t i = 0; i < B.size(); ++i) d.basis_f16[i] = fp32_to_fp16(B[i]);
        d.coef.resize(C.size());
        for (size_t i = 0; i < C.size(); ++i) d.coef[i] = fp32_to_fp16(C[i]);
        if (stats) {
            double ew = 0, er = 0;
            for (size_t i = 0; i < W.size(); ++i) ew += (double)W[i] * W[i], er += (double)R[i] * R[i];
            (*stats)["rank"] = r;
            (*stats)["kept_energy"] = ew > 0 ? 1.0 - er / ew : 0.0;
        }
    } else if (qc.spectral) {
        const Importance imp = importance_from_name(qc.importance);
        const int k_max = std::min<int>((int)(in / 2 + 1), 2 * qc.k_bar);
        const int64_t budget = std::min<int64_t>((int64_t)qc.k_bar * out, (int64_t)k_max * out);
        std::vector<int> k = allocate_bins(row_importance(W.data(), out, in, imp), budget, 1, k_max, qc.temperature);
        SpectralSplit sp = spectral_split(W.data(), out, in, k);
        spectral_round_fp16(W.data(), sp, true);
        d.rank = 2 * sp.K - 1;
        d.basis = "fourier";
        d.coef.resize(sp.coef.size());
        for (size_t i = 0; i < sp.coef.size(); ++i) d.coef[i] = fp32_to_fp16(sp.coef[i]);
        double ew = 0, er = 0;
        for (size_t i = 0; i < W.size(); ++i) ew += (double)W[i] * W[i], er += (double)sp.residual[i] * sp.residual[i];
        if (stats) {
            (*stats)["K"] = sp.K;
            (*stats)["kept_energy"] = ew > 0 ? 1.0 - er / ew : 0.0;
            (*stats)["k_min"] = *std::min_element(k.begin(), k.end());
            (*stats)["k_max"] = *std::max_element(k.begin(), k.end());
        }
        R = std::move(sp.residual);
    }
    if (refit_pt) {  // gptq_qinput: R* = R·P (qinput_fit)
        std::vector<float> Rs(R.size());
        matmul_t(R.data(), out, refit_pt->data(), in, in, Rs.data());
        R = std::move(Rs);
    }
    WeightQuantParams wp;
    wp.bits = qc.w_bits;
    if (coarse_clip) wp.clip_step = 0.05f;  // α-search proxy: 11 clip ratios instead of 51
    QuantWeights qw;
    if (use_gptq) {
        GptqParams gp;
        gp.quant = wp;
        gp.damp = qc.gptq_damp;
        gp.block = qc.gptq_block;
        gp.act_order = qc.act_order;
        qw = gptq_quantize(R.data(), out, in, H, gp);
    } else {
        qw = weight_quantize_rtn(R.data(), out, in, wp);
    }
    const int64_t rb = w4_row_bytes(in);
    d.codes.assign(out * rb, 0);
    d.scale = qw.scales;
    d.rowsum.assign(out, 0);
    for (int64_t j = 0; j < out; ++j)
        for (int64_t k = 0; k < in; ++k) {
            const int c = qw.codes[j * in + k];
            d.codes[j * rb + k / 2] |= (uint8_t)((c & 0xF) << ((k & 1) * 4));
            d.rowsum[j] += c;
        }
    if (stats && H) {
        // Output error on the calibration inputs, relative: tr(E H Eᵀ) / tr(W H Wᵀ), E = W − Ŵ
        // (the activation quantization is not included here).
        std::vector<float> deq((size_t)out * in);
        weight_dequantize(qw, deq.data());
        double num = 0, den = 0;
        for (int64_t j = 0; j < out; j += std::max<int64_t>(1, out / 64)) {
            std::vector<double> e(in), w(in);
            for (int64_t k = 0; k < in; ++k) e[k] = (double)R[j * in + k] - deq[j * in + k], w[k] = W[j * in + k];
            for (int64_t a = 0; a < in; ++a) {
                double he = 0, hw = 0;
                for (int64_t b = 0; b < in; ++b) he += H[a * in + b] * e[b], hw += H[a * in + b] * w[b];
                num += e[a] * he;
                den += w[a] * hw;
            }
        }
        (*stats)["w_err"] = den > 0 ? num / den : 0.0;
    }
    return d;
}

// Dequantized proxy of the method's quantizer (RTN instead of GPTQ):
// returns Ŵ [out, in] including the (fp16) spectral part.
std::vector<float> proxy_quantize(const std::vector<float>& W, int64_t out, int64_t in, const QuantConfig& qc) {
    QLinearData d = quantize_linear(W, out, in, {}, nullptr, qc, false, 0, 0, nullptr, true);
    std::vector<float> deq((size_t)out * in);
    const int64_t rb = w4_row_bytes(in);
    for (int64_t j = 0; j < out; ++j)
        for (int64_t k = 0; k < in; ++k) deq[j * in + k] = d.scale[j] * (float)w4_get(&d.codes[j * rb], k);
    if (d.rank > 0) {
        std::vector<float> B;
        if (d.basis == "explicit")
            for (uint16_t h : d.basis_f16) B.push_back(fp16_to_fp32(h));
        else
            B = fourier_basis_f16(in, d.rank);
        for (int64_t j = 0; j < out; ++j)
            for (int r = 0; r < d.rank; ++r) {
                const float c = fp16_to_fp32(d.coef[j * d.rank + r]);
                if (c == 0.0f) continue;
                for (int64_t k = 0; k < in; ++k) deq[j * in + k] += c * B[k * d.rank + r];
            }
    }
    return deq;
}

// The rows the searches evaluate: T = min(n, search_tokens) evenly spaced rows of X [n, in].
std::vector<float> search_rows(const float* X, int64_t n, int64_t in, const QuantConfig& qc, int64_t* T_out) {
    const int64_t T = std::min<int64_t>(n, qc.search_tokens);
    std::vector<float> xs((size_t)T * in);
    for (int64_t t = 0; t < T; ++t) std::memcpy(&xs[t * in], &X[(t * n / T) * in], in * 4);
    *T_out = T;
    return xs;
}

double rel_err(const std::vector<float>& y, const std::vector<float>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < y.size(); ++i) {
        const double e = (double)y[i] - ref[i];
        num += e * e;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : 0.0;
}

// Activation clip search (QuantConfig::a_clip_search) for quantized layers
// sharing the input xs [T, in]: every layer of the group runs, as packed,
// with each clip ratio of the grid; the ratio with the lowest mean relative
// output error against yref (the float layers on the same rows) is set in
// all of them (one ratio per group, so a fused kernel can quantize the
// shared input once).
void search_act_clip(const std::vector<QLinearData*>& qs, const std::vector<float>& xs, int64_t T,
                     const std::vector<std::vector<float>>& yref, const QuantConfig& qc, json* stats) {
    float best = qs[0]->a_clip;
    double best_err = std::numeric_limits<double>::infinity();
    json tried = json::object();
    for (float c : qc.a_clip_grid) {
        double err = 0;
        for (size_t m = 0; m < qs.size(); ++m) {
            QLinearData d = *qs[m];
            d.a_clip = c;
            std::vector<float> y((size_t)T * d.out);
            make_linear_w4a4(std::move(d))->forward(xs.data(), T, y.data());
            err += rel_err(y, yref[m]);
        }
        err /= (double)qs.size();
        tried[std::to_string(c).substr(0, 4)] = err;
        if (err < best_err) best_err = err, best = c;
    }
    for (QLinearData* q : qs) q->a_clip = best;
    if (stats) (*stats)["a_clip"] = best, (*stats)["a_clip_err"] = best_err, (*stats)["a_clip_tried"] = tried;
}

// Float outputs [T, out] of a float32 linear on the search rows.
std::vector<float> float_outputs(const Linear& L, const std::vector<float>& xs, int64_t T) {
    std::vector<float> y((size_t)T * L.out);
    L.forward(xs.data(), T, y.data());
    return y;
}

// α search for a group of linears sharing the input X [n, in]. `tie` maps
// each input channel to a class whose channels must share one scale (GQA:
// o_proj channels of query heads reading the same KV head); empty = none.
// Returns s (all ones when no smoothing wins) and the chosen α (-1 = none).
std::vector<float> search_smoothing(const std::vector<const std::vector<float>*>& Ws,
                                    const std::vector<int64_t>& outs, int64_t in, const float* X, int64_t n,
                                    const std::vector<int>& tie, const QuantConfig& qc, float* alpha_out,
                                    json* stats) {
    std::vector<float> a_max = col_absmax(X, n, in);
    std::vector<float> w_max(in, 0.0f);
    for (size_t m = 0; m < Ws.size(); ++m) smooth_weight_absmax(Ws[m]->data(), outs[m], in, w_max.data());
    if (!tie.empty()) {
        const int classes = *std::max_element(tie.begin(), tie.end()) + 1;
        std::vector<float> ca(classes, 0.0f), cw(classes, 0.0f);
        for (int64_t j = 0; j < in; ++j) ca[tie[j]] = std::max(ca[tie[j]], a_max[j]), cw[tie[j]] = std::max(cw[tie[j]], w_max[j]);
        for (int64_t j = 0; j < in; ++j) a_max[j] = ca[tie[j]], w_max[j] = cw[tie[j]];
    }
    int64_t T;
    const std::vector<float> xs = search_rows(X, n, in, qc, &T);
    std::vector<std::vector<float>> yref(Ws.size());
    for (size_t m = 0; m < Ws.size(); ++m) {
        yref[m].resize((size_t)T * outs[m]);
        matmul_t(xs.data(), T, Ws[m]->data(), outs[m], in, yref[m].data());
    }
    auto score = [&](const std::vector<float>& s) {
        std::vector<float> xq = xs;
        smooth_apply_act(xq.data(), T, in, s.data());
        if (qc.a_bits < 16) act_fake_quant_asym(xq.data(), T, in, qc.a_bits, qc.a_clip);
        double err = 0;
        for (size_t m = 0; m < Ws.size(); ++m) {
            std::vector<float> w = *Ws[m];
            smooth_apply_weight(w.data(), outs[m], in, s.data());
            std::vector<float> wq = proxy_quantize(w, outs[m], in, qc);
            std::vector<float> y((size_t)T * outs[m]);
            matmul_t(xq.data(), T, wq.data(), outs[m], in, y.data());
            err += rel_err(y, yref[m]);
        }
        return err / (double)Ws.size();
    };
    std::vector<float> best(in, 1.0f);
    double best_err = score(best);
    float best_alpha = -1.0f;
    json tried = json::object();
    tried["none"] = best_err;
    for (float a : qc.alpha_grid) {
        std::vector<float> s = smooth_scales(a_max.data(), w_max.data(), in, a);
        const double e = score(s);
        tried[std::to_string(a).substr(0, 4)] = e;
        if (e < best_err) best_err = e, best = std::move(s), best_alpha = a;
    }
    if (stats) (*stats)["alpha"] = best_alpha, (*stats)["proxy_err"] = best_err, (*stats)["tried"] = tried;
    *alpha_out = best_alpha;
    return best;
}

LinearF32& as_f32(std::unique_ptr<Linear>& L) {
    auto* f = dynamic_cast<LinearF32*>(L.get());
    SQ_CHECK(f, "quantize: expected a float32 layer, got ", L->kind());
    return *f;
}

// W [rows, cols] ← Rᵀ·W per column block... implemented as: transpose, rotate
// rows of Wᵀ by x·R, transpose back (so y' = y·R for the layer's output).
void rotate_output(std::vector<float>& W, int64_t rows, int64_t cols, int n, const float* signs, int64_t block = 0) {
    std::vector<float> t((size_t)rows * cols);
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) t[j * rows + i] = W[i * cols + j];
    const int64_t blk = block ? block : rows;
    hadamard_transform(t.data(), cols * (rows / blk), (int)blk, signs);
    (void)n;
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) W[i * cols + j] = t[j * rows + i];
}

}  // namespace

namespace {
void rotation_check(const ModelConfig& c) {
    for (int n : {c.d_model, c.head_dim, c.n_heads * c.head_dim, c.d_ff})
        SQ_CHECK(hadamard_supported(n), "quarot: no Hadamard matrix of order ", n, " for this model");
}

void fuse_cols(std::vector<float>& W, int64_t rows, int64_t cols, const std::vector<float>& g) {
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) W[i * cols + j] *= g[j];
}

// The embedding and lm_head part of model_rotate (layers untouched).
void rotate_head(ModelWeights& w, uint64_t seed) {
    const ModelConfig& c = w.cfg;
    rotation_check(c);
    const int64_t d = c.d_model, V = c.vocab;
    const std::vector<float> signs = hadamard_signs((int)d, seed);
    // lm_head gets its own copy (no longer tied once the norm is fused).
    LinearF32& lm = as_f32(w.lm_head);
    std::vector<float> lmw = lm.w;
    fuse_cols(lmw, V, d, w.final_norm);
    hadamard_transform(lmw.data(), V, (int)d, signs.data());
    w.lm_head = std::make_unique<LinearF32>(d, V, std::move(lmw), lm.bias);
    std::fill(w.final_norm.begin(), w.final_norm.end(), 1.0f);
    hadamard_transform(w.embed.data(), V, (int)d, signs.data());
    w.qk_rotate = true;
}

// One layer's part of model_rotate: independent of every other layer, so a
// streaming quantizer can rotate each layer as it loads it.
void rotate_layer(LayerWeights& L, const ModelConfig& c, uint64_t seed) {
    const int64_t d = c.d_model, hd = c.head_dim, qd = (int64_t)c.n_heads * hd, kvd = (int64_t)c.n_kv_heads * hd;
    const std::vector<float> signs = hadamard_signs((int)d, seed);
    for (auto* p : {&L.q, &L.k, &L.v}) {
        LinearF32& f = as_f32(*p);
        fuse_cols(f.w, f.out, d, L.attn_norm);
        hadamard_transform(f.w.data(), f.out, (int)d, signs.data());
    }
    for (auto* p : {&L.gate, &L.up}) {
        LinearF32& f = as_f32(*p);
        fuse_cols(f.w, f.out, d, L.ffn_norm);
        hadamard_transform(f.w.data(), f.out, (int)d, signs.data());
    }
    std::fill(L.attn_norm.begin(), L.attn_norm.end(), 1.0f);
    std::fill(L.ffn_norm.begin(), L.ffn_norm.end(), 1.0f);
    // Writers to the residual: y' = y·R.
    rotate_output(as_f32(L.o).w, d, qd, (int)d, signs.data());
    rotate_output(as_f32(L.down).w, d, c.d_ff, (int)d, signs.data());
    // V per head: v' = v·H_hd (output blocks of hd), o columns undo it.
    LinearF32& v = as_f32(L.v);
    rotate_output(v.w, kvd, d, (int)hd, nullptr, hd);
    if (!v.bias.empty()) hadamard_transform(v.bias.data(), c.n_kv_heads, (int)hd);
    LinearF32& o = as_f32(L.o);
    hadamard_transform(o.w.data(), d * c.n_heads, (int)hd);
}
}  // namespace

void model_rotate(ModelWeights& w, uint64_t seed) {
    rotate_head(w, seed);
    for (auto& L : w.layers) rotate_layer(L, w.cfg, seed);
}

void fold_smooth_qkv(LayerWeights& L, const std::vector<float>& s) {
    const int64_t d = (int64_t)L.attn_norm.size();
    for (int64_t j = 0; j < d; ++j) L.attn_norm[j] /= s[j];
    for (auto* p : {&L.q, &L.k, &L.v}) smooth_apply_weight(as_f32(*p).w.data(), (*p)->out, d, s.data());
}

void fold_smooth_gate_up(LayerWeights& L, const std::vector<float>& s) {
    const int64_t d = (int64_t)L.ffn_norm.size();
    for (int64_t j = 0; j < d; ++j) L.ffn_norm[j] /= s[j];
    for (auto* p : {&L.gate, &L.up}) smooth_apply_weight(as_f32(*p).w.data(), (*p)->out, d, s.data());
}

void fold_smooth_o(LayerWeights& L, const ModelConfig& c, const std::vector<float>& s) {
    const int64_t hd = c.head_dim, qd = (int64_t)c.n_heads * hd, group = c.n_heads / c.n_kv_heads;
    LinearF32& v = as_f32(L.v);
    const int64_t d = v.in;
    for (int64_t g = 0; g < c.n_kv_heads; ++g)
        for (int64_t i = 0; i < hd; ++i) {
            const float sc = s[(g * group) * hd + i];  // first query head of the group
            for (int64_t h = g * group; h < (g + 1) * group; ++h)
                SQ_CHECK(s[h * hd + i] == sc, "fold_smooth_o: scales differ across the query heads of KV head ", g);
            const int64_t row = g * hd + i;
            for (int64_t k = 0; k < d; ++k) v.w[row * d + k] /= sc;
            if (!v.bias.empty()) v.bias[row] /= sc;
        }
    smooth_apply_weight(as_f32(L.o).w.data(), L.o->out, qd, s.data());
}

void fold_smooth_down(LayerWeights& L, const std::vector<float>& s) {
    LinearF32& up = as_f32(L.up);
    for (int64_t r = 0; r < up.out; ++r)
        for (int64_t k = 0; k < up.in; ++k) up.w[r * up.in + k] /= s[r];
    smooth_apply_weight(as_f32(L.down).w.data(), L.down->out, up.out, s.data());
}

namespace {

// Per-sequence attention of one layer for all calibration tokens.
void calib_attention(const ModelWeights& w, int l, const float* inv_freq, const std::vector<float>& X, int n_seq,
                     int len, std::vector<float>& A) {
    const ModelConfig& c = w.cfg;
    const int64_t d = c.d_model, qd = (int64_t)c.n_heads * c.head_dim, kvd = (int64_t)c.n_kv_heads * c.head_dim;
    A.resize((size_t)n_seq * len * qd);
    std::vector<float> kc((size_t)len * kvd), vc((size_t)len * kvd);
    for (int s = 0; s < n_seq; ++s)
        attention_block(w, l, inv_freq, &X[(size_t)s * len * d], len, 0, kc.data(), vc.data(), &A[(size_t)s * len * qd]);
}

// Quantizes one float linear whose input is X [n, in]. had > 0: QuaRot's
// online Hadamard on the input — the weights are rotated here (W·R) and the
// GPTQ Hessian is taken on the rotated inputs, as the layer will see them.
void quantize_single(std::unique_ptr<Linear>& L, const std::vector<float>& X, int64_t n, int had, uint64_t had_seed,
                     const QuantConfig& qc, json& stats) {
    LinearF32& f = as_f32(L);
    const bool clip_search = qc.a_clip_search && qc.a_bits < 16;
    int64_t T = 0;
    std::vector<float> xs, yref;
    if (clip_search) xs = search_rows(X.data(), n, f.in, qc, &T), yref = float_outputs(f, xs, T);
    std::vector<float> Xr;
    const float* xin = X.data();
    if (had) {
        Xr = X;
        const std::vector<float> sg = hadamard_signs(had, had_seed);
        hadamard_transform(Xr.data(), n, had, sg.data());
        xin = Xr.data();
        hadamard_transform(f.w.data(), f.out, had, sg.data());
    }
    const GptqInputs gi = gptq_inputs(xin, n, f.in, qc);
    QLinearData q = quantize_linear(f.w, f.out, f.in, f.bias, gi.h(), qc, qc.gptq, had, had_seed, &stats, false,
                                    gi.refit());
    if (clip_search) search_act_clip({&q}, xs, T, {yref}, qc, &stats);
    L = make_linear_w4a4(std::move(q));
}

// Quantizes float linears that share the input X [n, in] (q/k/v, gate/up):
// one Hessian, and with a_clip_search one activation clip for the group.
void quantize_group(const std::vector<std::pair<std::unique_ptr<Linear>*, const char*>>& group,
                    const std::vector<float>& X, int64_t n, int64_t in, const QuantConfig& qc, json& lj,
                    const char* clip_key) {
    const GptqInputs gi = gptq_inputs(X.data(), n, in, qc);
    const bool clip_search = qc.a_clip_search && qc.a_bits < 16;
    int64_t T = 0;
    std::vector<float> xs;
    std::vector<std::vector<float>> yref;
    if (clip_search) xs = search_rows(X.data(), n, in, qc, &T);
    std::vector<QLinearData> qs;
    for (auto [p, name] : group) {
        LinearF32& f = as_f32(*p);
        if (clip_search) yref.push_back(float_outputs(f, xs, T));
        json st;
        qs.push_back(quantize_linear(f.w, f.out, f.in, f.bias, gi.h(), qc, qc.gptq, 0, 0, &st, false, gi.refit()));
        lj[name] = st;
    }
    if (clip_search) {
        std::vector<QLinearData*> ptrs;
        for (QLinearData& q : qs) ptrs.push_back(&q);
        search_act_clip(ptrs, xs, T, yref, qc, &lj[clip_key]);
    }
    for (size_t i = 0; i < group.size(); ++i) *group[i].first = make_linear_w4a4(std::move(qs[i]));
}

void add_linear_out(const Linear& L, const std::vector<float>& x, int64_t n, std::vector<float>& h) {
    std::vector<float> y((size_t)n * L.out);
    const int64_t chunk = 4096;
    for (int64_t t0 = 0; t0 < n; t0 += chunk) {
        const int64_t tc = std::min(chunk, n - t0);
        L.forward(&x[t0 * L.in], tc, &y[t0 * L.out]);
    }
    for (size_t i = 0; i < h.size(); ++i) h[i] += y[i];
}

}  // namespace

ModelWeights quantize_model(ModelWeights w, const Tokenizer& tok, const QuantConfig& qc, json* report,
                            const LayerLoader& load) {
    quant_config_validate(qc);
    if (qc.method == "fp") return w;
    const auto t_start = std::chrono::steady_clock::now();
    const ModelConfig& c = w.cfg;
    const int64_t d = c.d_model, hd = c.head_dim, qd = (int64_t)c.n_heads * hd, kvd = (int64_t)c.n_kv_heads * hd,
                  ff = c.d_ff;
    CalibData cd = calib_load(qc.calib_path, tok, qc.calib_n, qc.calib_len, qc.seed);
    const int n_seq = (int)cd.seqs.size(), len = qc.calib_len;
    const int64_t N = (int64_t)n_seq * len;
    json rep = {{"calib_sha256", cd.sha256}, {"calib_tokens", N}, {"calib_file_tokens", cd.file_tokens}};
    if (qc.rotate) rotate_head(w, qc.rotate_seed);  // each layer is rotated as the loop reaches it
    w.kv_bits = qc.kv_bits;
    w.kv_clip = qc.kv_clip;
    const std::vector<float> inv_freq = rope_inv_freq(c);

    std::vector<float> H((size_t)N * d);
    for (int s = 0; s < n_seq; ++s)
        for (int t = 0; t < len; ++t)
            embed_tokens(w, &cd.seqs[s][t], 1, &H[((size_t)s * len + t) * d]);

    // GQA tie classes for o_proj's input channels: (head h, dim i) -> (kv group, i).
    std::vector<int> o_tie(qd);
    const int group = c.n_heads / c.n_kv_heads;
    for (int64_t ch = 0; ch < qd; ++ch) o_tie[ch] = (int)(((ch / hd) / group) * hd + ch % hd);

    Progress bar("quantize", c.n_layers, "layer");
    json layers = json::array();
    std::vector<float> X((size_t)N * d), A, G((size_t)N * ff);
    const uint64_t had_seed_o = qc.rotate_seed + 1, had_seed_down = qc.rotate_seed + 2;
    for (int l = 0; l < c.n_layers; ++l) {
        LayerWeights& L = w.layers[l];
        if (load) L = load(l);  // streaming: this layer's float weights only now
        SQ_CHECK(L.q && L.down, "quantize: layer ", l, " has no weights (model loaded without layers and no loader)");
        if (qc.rotate) rotate_layer(L, c, qc.rotate_seed);
        json lj = {{"layer", l}};
        // ---------------- q, k, v ----------------
        rmsnorm_f32(H.data(), L.attn_norm.data(), N, d, c.rms_eps, X.data());
        if (qc.smooth) {
            float alpha;
            json st;
            std::vector<float> s = search_smoothing({&as_f32(L.q).w, &as_f32(L.k).w, &as_f32(L.v).w}, {qd, kvd, kvd},
                                                    d, X.data(), N, {}, qc, &alpha, &st);
            lj["qkv_smooth"] = st;
            fold_smooth_qkv(L, s);
            rmsnorm_f32(H.data(), L.attn_norm.data(), N, d, c.rms_eps, X.data());
            // o_proj smoothing decided on the float attention output, folded into v rows.
            calib_attention(w, l, inv_freq.data(), X, n_seq, len, A);
            json so;
            std::vector<float> s_o = search_smoothing({&as_f32(L.o).w}, {d}, qd, A.data(), N, o_tie, qc, &alpha, &so);
            lj["o_smooth"] = so;
            fold_smooth_o(L, c, s_o);
        }
        quantize_group({{&L.q, "q"}, {&L.k, "k"}, {&L.v, "v"}}, X, N, d, qc, lj, "qkv_clip");
        // The keys' mean as the quantized k_proj makes them, before the cache
        // sees them (so the attention below, and o_proj's calibration, do too).
        if (qc.k_center) L.k_shift = key_mean(w, l, inv_freq.data(), X.data(), n_seq, len);
        // ---------------- o ----------------
        calib_attention(w, l, inv_freq.data(), X, n_seq, len, A);
        quantize_single(L.o, A, N, qc.rotate ? (int)qd : 0, had_seed_o, qc, lj["o"]);
        add_linear_out(*L.o, A, N, H);
        // ---------------- gate, up ----------------
        rmsnorm_f32(H.data(), L.ffn_norm.data(), N, d, c.rms_eps, X.data());
        if (qc.smooth) {
            float alpha;
            json st;
            std::vector<float> s = search_smoothing({&as_f32(L.gate).w, &as_f32(L.up).w}, {ff, ff}, d, X.data(), N, {},
                                                    qc, &alpha, &st);
            lj["gate_up_smooth"] = st;
            fold_smooth_gate_up(L, s);
            rmsnorm_f32(H.data(), L.ffn_norm.data(), N, d, c.rms_eps, X.data());
            // down_proj smoothing on the float SwiGLU output, folded into up rows.
            mlp_block(L, ff, X.data(), N, G.data());
            json sd;
            std::vector<float> s_d = search_smoothing({&as_f32(L.down).w}, {d}, ff, G.data(), N, {}, qc, &alpha, &sd);
            lj["down_smooth"] = sd;
            fold_smooth_down(L, s_d);
        }
        quantize_group({{&L.gate, "gate"}, {&L.up, "up"}}, X, N, d, qc, lj, "gate_up_clip");
        // ---------------- down ----------------
        mlp_block(L, ff, X.data(), N, G.data());
        quantize_single(L.down, G, N, qc.rotate ? (int)ff : 0, had_seed_down, qc, lj["down"]);
        add_linear_out(*L.down, G, N, H);
        layers.push_back(lj);
        bar.add();
    }
    bar.finish();
    rep["layers"] = layers;
    rep["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    if (qc.embed_bits < 16) model_embed_quant(w, qc.embed_bits);
    if (report) *report = rep;
    return w;
}

}  // namespace sq
