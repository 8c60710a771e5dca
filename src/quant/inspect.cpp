#include "quant/inspect.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/progress.h"
#include "kernels/cpu/ops.h"
#include "quant/calib_data.h"
#include "quant/smooth.h"
#include "quant/spectral.h"

namespace sq {

using json = nlohmann::json;

namespace {

const float* f32_weights(const std::unique_ptr<Linear>& L) {
    auto* f = dynamic_cast<const LinearF32*>(L.get());
    SQ_CHECK(f, "inspect: needs a float32 model, got a ", L->kind(), " layer");
    return f->w.data();
}

float abs_max(const float* p, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(p[i]));
    return m;
}

// Mean (over rows) normalized power spectrum, binned into `bins` equal bands.
std::vector<float> mean_spectrum(const float* w, int64_t rows, int64_t cols, int bins) {
    const std::vector<float> P = spectral_power(w, rows, cols);
    const int64_t nb = cols / 2 + 1;
    std::vector<double> acc(bins, 0.0);
    for (int64_t i = 0; i < rows; ++i) {
        double tot = 0;
        for (int64_t f = 0; f < nb; ++f) tot += P[i * nb + f];
        if (tot <= 0) continue;
        for (int64_t f = 0; f < nb; ++f) acc[std::min<int64_t>(bins - 1, f * bins / nb)] += P[i * nb + f] / tot;
    }
    std::vector<float> out(bins);
    for (int b = 0; b < bins; ++b) out[b] = (float)(acc[b] / rows);
    return out;
}

json linear_stats(const std::string& name, const float* w, int64_t rows, int64_t cols, const float* act_absmax,
                  const InspectOptions& o) {
    json j = {{"name", name}, {"rows", rows}, {"cols", cols}};
    for (double fr : {0.1, 0.2, 0.5})
        j["energy_lowest_" + std::to_string((int)(fr * 100))] = spectral_energy_fraction_lowest(w, rows, cols, fr);
    j["max_abs_w"] = abs_max(w, (size_t)rows * cols);
    j["spectrum"] = mean_spectrum(w, rows, cols, o.spectrum_bins);
    if (act_absmax) {
        std::vector<float> wmax(cols, 0.0f);
        smooth_weight_absmax(w, rows, cols, wmax.data());
        const std::vector<float> s = smooth_scales(act_absmax, wmax.data(), cols, o.alpha);
        std::vector<float> ws(w, w + rows * cols);
        smooth_apply_weight(ws.data(), rows, cols, s.data());
        j["max_abs_w_smoothed"] = abs_max(ws.data(), ws.size());
        j["energy_lowest_20_smoothed"] = spectral_energy_fraction_lowest(ws.data(), rows, cols, 0.2);
        j["spectrum_smoothed"] = mean_spectrum(ws.data(), rows, cols, o.spectrum_bins);
        const int K = std::min<int>((int)(cols / 2 + 1), o.k_bar);
        SpectralSplit sp = spectral_split(ws.data(), rows, cols, std::vector<int>(rows, K));
        j["max_abs_residual"] = abs_max(sp.residual.data(), sp.residual.size());
        double er = 0, ew = 0;
        for (size_t i = 0; i < ws.size(); ++i) er += (double)sp.residual[i] * sp.residual[i], ew += (double)ws[i] * ws[i];
        j["kept_energy_uniform_kbar"] = ew > 0 ? 1.0 - er / ew : 0.0;
    }
    return j;
}

// max channel absmax / median channel absmax of the activations.
double outlier_ratio(const std::vector<float>& absmax) {
    std::vector<float> v = absmax;
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    const float med = v[v.size() / 2];
    return med > 0 ? *std::max_element(absmax.begin(), absmax.end()) / med : 0.0;
}

}  // namespace

json inspect_model(const ModelWeights& w, const Tokenizer& tok, const InspectOptions& o) {
    const ModelConfig& c = w.cfg;
    const int64_t d = c.d_model, qd = (int64_t)c.n_heads * c.head_dim, ff = c.d_ff;
    json out = {{"alpha", o.alpha}, {"k_bar", o.k_bar}};
    // Float forward over the calibration tokens, recording each layer's inputs.
    CalibData cd = calib_load(o.calib_path, tok, o.calib_n, o.calib_len, o.seed);
    const int n_seq = (int)cd.seqs.size(), len = o.calib_len;
    const int64_t N = (int64_t)n_seq * len;
    out["calib_tokens"] = N;
    out["calib_sha256"] = cd.sha256;
    std::vector<float> H((size_t)N * d), X((size_t)N * d), A((size_t)N * qd), G((size_t)N * ff), Y;
    for (int s = 0; s < n_seq; ++s)
        for (int t = 0; t < len; ++t)
            embed_tokens(w, &cd.seqs[s][t], 1, &H[((size_t)s * len + t) * d]);
    const std::vector<float> inv_freq = rope_inv_freq(c);
    std::vector<float> kc((size_t)len * c.n_kv_heads * c.head_dim), vc(kc.size());
    json layers = json::array();
    Progress bar("inspect", c.n_layers, "layer");
    for (int l = 0; l < c.n_layers; ++l) {
        const LayerWeights& L = w.layers[l];
        json lj = {{"layer", l}};
        rmsnorm_f32(H.data(), L.attn_norm.data(), N, d, c.rms_eps, X.data());
        std::vector<float> ax(d, 0.0f), aa(qd, 0.0f), ag(ff, 0.0f);
        smooth_act_absmax(X.data(), N, d, ax.data());
        for (int s = 0; s < n_seq; ++s)
            attention_block(w, l, inv_freq.data(), &X[(size_t)s * len * d], len, 0, kc.data(), vc.data(),
                            &A[(size_t)s * len * qd]);
        smooth_act_absmax(A.data(), N, qd, aa.data());
        Y.resize((size_t)N * d);
        L.o->forward(A.data(), N, Y.data());
        for (size_t i = 0; i < H.size(); ++i) H[i] += Y[i];
        rmsnorm_f32(H.data(), L.ffn_norm.data(), N, d, c.rms_eps, X.data());
        std::vector<float> ax2(d, 0.0f);
        smooth_act_absmax(X.data(), N, d, ax2.data());
        mlp_block(L, ff, X.data(), N, G.data());
        smooth_act_absmax(G.data(), N, ff, ag.data());
        L.down->forward(G.data(), N, Y.data());
        for (size_t i = 0; i < H.size(); ++i) H[i] += Y[i];
        lj["act_outlier_ratio"] = {{"qkv_in", outlier_ratio(ax)}, {"o_in", outlier_ratio(aa)},
                                   {"gate_up_in", outlier_ratio(ax2)}, {"down_in", outlier_ratio(ag)}};
        json lin = json::array();
        lin.push_back(linear_stats("q", f32_weights(L.q), L.q->out, d, ax.data(), o));
        lin.push_back(linear_stats("k", f32_weights(L.k), L.k->out, d, ax.data(), o));
        lin.push_back(linear_stats("v", f32_weights(L.v), L.v->out, d, ax.data(), o));
        lin.push_back(linear_stats("o", f32_weights(L.o), d, qd, aa.data(), o));
        lin.push_back(linear_stats("gate", f32_weights(L.gate), ff, d, ax2.data(), o));
        lin.push_back(linear_stats("up", f32_weights(L.up), ff, d, ax2.data(), o));
        lin.push_back(linear_stats("down", f32_weights(L.down), d, ff, ag.data(), o));
        lj["linears"] = lin;
        layers.push_back(lj);
        bar.add();
    }
    bar.finish();
    out["layers"] = layers;
    return out;
}

}  // namespace sq
