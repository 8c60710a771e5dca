// The quantization pipeline on the tiny fixtures: exact folds (smoothing,
// rotation), determinism, packed round trip, and that the methods behave.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/tokenizer.h"
#include "model/linear_w4a4.h"
#include "model/linear_w4a4_cpu.h"
#include "model/model.h"
#include "quant/packed_model.h"
#include "quant/pipeline.h"

using namespace sq;
namespace fs = std::filesystem;

namespace {

const std::string kData = SQ_TEST_DATA;
const std::string kCalib = std::string(SQ_SOURCE_DIR) + "/../shared/data/calib/c4.utf8";

std::vector<float> logits_of(const Model& m, const std::vector<int>& toks) {
    KVCache c(m.config(), (int)toks.size());
    std::vector<float> out(toks.size() * m.config().vocab);
    m.forward(toks.data(), (int)toks.size(), c, out.data(), true);
    return out;
}

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        num = std::max(num, (double)std::fabs(a[i] - b[i]));
        den = std::max(den, (double)std::fabs(b[i]));
    }
    return num / den;
}

double frob_rel(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) num += (double)(a[i] - b[i]) * (a[i] - b[i]), den += (double)b[i] * b[i];
    return std::sqrt(num / den);
}

std::vector<int> some_tokens(int vocab, int n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int> t(n);
    for (auto& x : t) x = (int)(rng() % vocab);
    return t;
}

std::vector<float> random_scales(int64_t n, std::mt19937& rng) {
    std::lognormal_distribution<float> ln(0.0f, 1.0f);
    std::vector<float> s(n);
    for (auto& v : s) v = ln(rng);
    return s;
}

// A method's config on the tiny fixture: KV4, calibration n × len tokens of
// kCalib, k̄ 4 (the spectral rank must stay below in = 64).
QuantConfig tiny_config(const char* method, int calib_n, int calib_len) {
    QuantConfig qc = quant_config_for(method);
    qc.kv_bits = 4;
    qc.calib_path = kCalib;
    qc.calib_n = calib_n;
    qc.calib_len = calib_len;
    qc.k_bar = 4;
    return qc;
}

std::string read_bytes(const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

}  // namespace

// Smoothing folds leave the float model's function unchanged (GQA o_proj
// scales shared per KV head; Qwen2 v bias divided too).
TEST(Pipeline, SmoothingFoldsAreExact) {
    for (const char* name : {"tiny_llama", "tiny_qwen2"}) {
        Checkpoint ck = checkpoint_open(kData + "/models/" + name);
        const ModelConfig& c = ck.config;
        auto toks = some_tokens(c.vocab, 17, 5);
        const auto ref = logits_of(Model(model_load_f32(ck, false)), toks);
        ModelWeights w = model_load_f32(ck, false);
        std::mt19937 rng(9);
        const int64_t hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
        for (auto& L : w.layers) {
            fold_smooth_qkv(L, random_scales(c.d_model, rng));
            auto so = random_scales((int64_t)c.n_heads * hd, rng);
            for (int64_t h = 0; h < c.n_heads; ++h)
                for (int64_t i = 0; i < hd; ++i) so[h * hd + i] = so[(h / group * group) * hd + i];
            fold_smooth_o(L, c, so);
            fold_smooth_gate_up(L, random_scales(c.d_model, rng));
            fold_smooth_down(L, random_scales(c.d_ff, rng));
        }
        const auto got = logits_of(Model(std::move(w)), toks);
        EXPECT_LE(rel_diff(got, ref), 1e-5) << name;
    }
}

TEST(Pipeline, SmoothingFoldRejectsUntiedGqaScales) {
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    ModelWeights w = model_load_f32(ck, false);
    std::mt19937 rng(1);
    auto so = random_scales((int64_t)ck.config.n_heads * ck.config.head_dim, rng);  // differs across heads
    EXPECT_THROW(fold_smooth_o(w.layers[0], ck.config, so), Error);
}

// QuaRot's offline rotation (norm fusion, residual rotation, V per-head
// rotation + q/k rotation at run time) leaves the float model unchanged.
TEST(Pipeline, RotationIsExact) {
    for (const char* name : {"tiny_llama", "tiny_qwen2"}) {
        Checkpoint ck = checkpoint_open(kData + "/models/" + name);
        auto toks = some_tokens(ck.config.vocab, 17, 6);
        const auto ref = logits_of(Model(model_load_f32(ck, false)), toks);
        ModelWeights w = model_load_f32(ck, false);
        model_rotate(w, 77);
        EXPECT_TRUE(w.qk_rotate);
        const auto got = logits_of(Model(std::move(w)), toks);
        EXPECT_LE(rel_diff(got, ref), 1e-5) << name;
    }
}

// Every method runs end to end on a tiny model; W4A16 stays close to FP,
// the output is deterministic (byte-identical files) and round-trips.
TEST(Pipeline, MethodsRunDeterministicallyAndRoundTrip) {
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    Tokenizer tok(ck.tokenizer);
    auto toks = some_tokens(ck.config.vocab, 20, 7);
    const auto ref = logits_of(Model(model_load_f32(ck, false)), toks);
    const std::string dir = fs::temp_directory_path().string();
    for (const char* method : {"rtn", "smoothquant", "gptq", "quarot", "specquant"}) {
        double w4a16_err = 0;
        for (int a_bits : {16, 4}) {
            QuantConfig qc = tiny_config(method, 4, 64);
            qc.a_bits = a_bits;
            qc.kv_bits = a_bits == 4 ? 4 : 16;
            nlohmann::json quant = quant_config_to_json(qc);
            std::string files[2];
            std::vector<float> in_memory;
            for (int rep = 0; rep < 2; ++rep) {
                ModelWeights w = quantize_model(model_load_f32(ck, false), tok, qc);
                files[rep] = dir + "/sq_pipe_" + method + std::to_string(rep) + ".sqm";
                packed_model_save(files[rep], w, ck.tokenizer, quant);
                if (rep == 0) in_memory = logits_of(Model(std::move(w)), toks);
            }
            EXPECT_EQ(read_bytes(files[0]), read_bytes(files[1])) << method << " not deterministic";
            // Load → save again: byte-identical.
            PackedModel pm = packed_model_load(files[0]);
            EXPECT_TRUE(pm.weights.embed_q8 && pm.weights.embed.empty()) << method << ": embedding not 8-bit";
            EXPECT_EQ(pm.weights.lm_head->kind(), "q8");
            const std::string again = dir + "/sq_pipe_again.sqm";
            packed_model_save(again, pm.weights, pm.tokenizer, pm.quant);
            EXPECT_EQ(read_bytes(again), read_bytes(files[0])) << method << " round trip";
            EXPECT_EQ(pm.weights.qk_rotate, std::string(method) == "quarot") << method;
            const auto got = logits_of(Model(std::move(pm.weights)), toks);
            // The loaded file computes exactly what the quantizer made (it
            // once lost the q/k rotation on the way: KV4 keys without it).
            EXPECT_EQ(got, in_memory) << method << " a" << a_bits << ": loaded model differs from the quantized one";
            // Relative Frobenius error of the logits. Unrelated logits of the
            // same scale give ≈ √2; a 4-bit per-channel step on 64-wide rows
            // (≈ 9% weight noise per linear, 14 linears) lands well below 1.
            const double err = frob_rel(got, ref);
            EXPECT_LT(err, 0.7) << method << " a" << a_bits;
            if (a_bits == 16) w4a16_err = err;
            else EXPECT_GT(err, w4a16_err) << method << ": 4-bit activations should add error";
            for (auto& f : files) fs::remove(f);
            fs::remove(again);
        }
    }
}

// --a-clip-search: one clip ratio per layer group (q/k/v, o, gate/up, down),
// taken from the grid, the group's lowest error, recorded in the report and
// carried by every linear of the group.
TEST(Pipeline, ActClipSearchSetsOneClipPerGroup) {
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    Tokenizer tok(ck.tokenizer);
    QuantConfig qc = tiny_config("quarot", 4, 64);
    qc.a_clip_search = true;
    qc.a_clip_grid = {1.0f, 0.8f, 0.6f};
    nlohmann::json rep;
    ModelWeights w = quantize_model(model_load_f32(ck, false), tok, qc, &rep);
    ASSERT_EQ(rep["layers"].size(), w.layers.size());
    for (size_t l = 0; l < w.layers.size(); ++l) {
        const nlohmann::json& lj = rep["layers"][l];
        const LayerWeights& L = w.layers[l];
        const std::pair<const char*, std::vector<const Linear*>> groups[] = {
            {"qkv_clip", {L.q.get(), L.k.get(), L.v.get()}},
            {"o", {L.o.get()}},
            {"gate_up_clip", {L.gate.get(), L.up.get()}},
            {"down", {L.down.get()}}};
        for (const auto& [key, lins] : groups) {
            const nlohmann::json& st = lj.at(key);
            const float clip = st.at("a_clip");
            EXPECT_TRUE(clip == 1.0f || clip == 0.8f || clip == 0.6f) << key << " " << clip;
            EXPECT_EQ(st.at("a_clip_tried").size(), 3u);
            for (const auto& [name, err] : st.at("a_clip_tried").items())
                EXPECT_LE((double)st.at("a_clip_err"), (double)err) << "layer " << l << " " << key << " " << name;
            for (const Linear* lin : lins) {
                QLinearData d;
                ASSERT_TRUE(linear_w4a4_data(*lin, &d));
                EXPECT_EQ(d.a_clip, clip) << "layer " << l << " " << key;
            }
        }
    }
    // A one-value grid forces that ratio everywhere.
    qc.a_clip_grid = {0.55f};
    w = quantize_model(model_load_f32(ck, false), tok, qc);
    for (const LayerWeights& L : w.layers)
        for (const Linear* lin : {L.q.get(), L.k.get(), L.v.get(), L.o.get(), L.gate.get(), L.up.get(), L.down.get()}) {
            QLinearData d;
            ASSERT_TRUE(linear_w4a4_data(*lin, &d));
            EXPECT_EQ(d.a_clip, 0.55f);
        }
}

// --gptq-qinput refits the 4-bit part toward Q(X) with a ridge toward R, so
// directions the calibration never excites keep their weights. With 24
// calibration tokens (< d_model 64, < d_ff 96) a fit without that ridge
// zeroed them (SmolLM2: PPL 56 → 1159); here the logits error must stay
// within 1.5× of plain GPTQ's (both at W4A4KV4, the same calibration).
TEST(Pipeline, GptqQinputKeepsUncalibratedDirections) {
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    Tokenizer tok(ck.tokenizer);
    auto toks = some_tokens(ck.config.vocab, 20, 11);
    const auto ref = logits_of(Model(model_load_f32(ck, false)), toks);
    double err[2];
    for (int qi = 0; qi < 2; ++qi) {
        QuantConfig qc = tiny_config("quarot", 1, 24);
        qc.gptq_qinput = qi == 1;
        err[qi] = frob_rel(logits_of(Model(quantize_model(model_load_f32(ck, false), tok, qc)), toks), ref);
    }
    EXPECT_LT(err[1], 1.5 * err[0]) << "plain GPTQ " << err[0] << ", qinput " << err[1];
    EXPECT_GT(err[1], 0.0);
}

// Streaming quantization (layers loaded one at a time, as `quantize` does)
// writes the same bytes as the whole-model call, with and without rotation.
TEST(Pipeline, StreamingEqualsWholeModel) {
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    Tokenizer tok(ck.tokenizer);
    const std::string dir = fs::temp_directory_path().string();
    for (const char* method : {"quarot", "specquant"}) {
        const QuantConfig qc = tiny_config(method, 2, 64);
        const nlohmann::json quant = quant_config_to_json(qc);
        const std::string a = dir + "/sq_stream_whole.sqm", b = dir + "/sq_stream_layers.sqm";
        packed_model_save(a, quantize_model(model_load_f32(ck, false), tok, qc), ck.tokenizer, quant);
        int loads = 0;
        ModelWeights head = model_load_f32(ck, false, false);
        for (const LayerWeights& L : head.layers) EXPECT_FALSE(L.q) << "layers loaded although layers = false";
        packed_model_save(b,
                          quantize_model(std::move(head), tok, qc, nullptr,
                                         [&](int l) { ++loads; return layer_load_f32(ck, l); }),
                          ck.tokenizer, quant);
        EXPECT_EQ(loads, ck.config.n_layers);
        EXPECT_EQ(read_bytes(a), read_bytes(b)) << method;
        fs::remove(a);
        fs::remove(b);
    }
    // Without weights and without a loader: a clear error, not a crash.
    EXPECT_THROW(quantize_model(model_load_f32(ck, false, false), tok, tiny_config("rtn", 1, 32)), Error);
    EXPECT_THROW(layer_load_f32(ck, ck.config.n_layers), Error);
}

// key_mean averages exactly the keys the cache receives (k_proj, RoPE, q/k
// rotation): checked against the cache that attention_block fills.
TEST(Pipeline, KeyMeanIsTheMeanOfTheCachedKeys) {
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    const ModelConfig& c = ck.config;
    ModelWeights w = model_load_f32(ck, false);
    model_rotate(w, 5);
    const int len = 23, n_seq = 2, l = 1;
    const int64_t d = c.d_model, kvd = (int64_t)c.n_kv_heads * c.head_dim, qd = (int64_t)c.n_heads * c.head_dim;
    std::mt19937 rng(4);
    std::normal_distribution<float> nd;
    std::vector<float> x((size_t)n_seq * len * d);
    for (auto& v : x) v = nd(rng);
    const std::vector<float> inv = rope_inv_freq(c);
    const std::vector<float> mu = key_mean(w, l, inv.data(), x.data(), n_seq, len);
    ASSERT_EQ((int64_t)mu.size(), kvd);
    std::vector<double> want(kvd, 0.0);
    std::vector<float> kc((size_t)len * kvd), vc((size_t)len * kvd), att((size_t)len * qd);
    for (int s = 0; s < n_seq; ++s) {
        attention_block(w, l, inv.data(), &x[(size_t)s * len * d], len, 0, kc.data(), vc.data(), att.data());
        for (int t = 0; t < len; ++t)
            for (int64_t j = 0; j < kvd; ++j) want[j] += kc[(size_t)t * kvd + j];
    }
    double worst = 0, scale = 0;
    for (int64_t j = 0; j < kvd; ++j) {
        want[j] /= n_seq * len;
        worst = std::max(worst, std::fabs(mu[j] - want[j]));
        scale = std::max(scale, std::fabs(want[j]));
    }
    EXPECT_GT(scale, 0.0);
    EXPECT_LE(worst, 1e-6 * scale);
}

// --k-center: every layer stores μ (finite, nonzero), the file carries it,
// the loaded model computes exactly what the quantizer made; without the
// option there is no k_shift, and it needs a quantized KV cache.
TEST(Pipeline, KeyCenteringIsStoredAndRoundTrips) {
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    Tokenizer tok(ck.tokenizer);
    const int64_t kvd = (int64_t)ck.config.n_kv_heads * ck.config.head_dim;
    auto toks = some_tokens(ck.config.vocab, 20, 8);
    const std::string f = fs::temp_directory_path().string() + "/sq_kcenter.sqm";
    for (bool center : {false, true}) {
        QuantConfig qc = tiny_config("quarot", 2, 64);
        qc.k_center = center;
        ModelWeights w = quantize_model(model_load_f32(ck, false), tok, qc);
        for (const LayerWeights& L : w.layers) {
            if (!center) {
                EXPECT_TRUE(L.k_shift.empty());
                continue;
            }
            ASSERT_EQ((int64_t)L.k_shift.size(), kvd);
            float mx = 0;
            for (float v : L.k_shift) {
                EXPECT_TRUE(std::isfinite(v));
                mx = std::max(mx, std::fabs(v));
            }
            EXPECT_GT(mx, 0.0f);
        }
        packed_model_save(f, w, ck.tokenizer, quant_config_to_json(qc));
        const auto in_memory = logits_of(Model(std::move(w)), toks);
        PackedModel pm = packed_model_load(f);
        for (const LayerWeights& L : pm.weights.layers) EXPECT_EQ(L.k_shift.empty(), !center);
        EXPECT_EQ(logits_of(Model(std::move(pm.weights)), toks), in_memory) << "center " << center;
        fs::remove(f);
    }
    QuantConfig qc = tiny_config("quarot", 2, 64);
    qc.k_center = true;
    qc.kv_bits = 16;
    EXPECT_THROW(quant_config_validate(qc), Error);
}

TEST(Pipeline, BadConfigurationsAreErrors) {
    EXPECT_THROW(quant_config_for("awq"), Error);
    QuantConfig qc = quant_config_for("specquant");
    qc.a_bits = 1;
    EXPECT_THROW(quant_config_validate(qc), Error);
    qc = quant_config_for("specquant");
    qc.w_bits = 3;
    EXPECT_THROW(quant_config_validate(qc), Error);
    qc = quant_config_for("specquant");
    qc.importance = "vibes";
    EXPECT_THROW(quant_config_validate(qc), Error);
    qc = quant_config_for("specquant");
    qc.embed_bits = 4;  // Q4_0 table: supported
    EXPECT_NO_THROW(quant_config_validate(qc));
    qc.embed_bits = 6;
    EXPECT_THROW(quant_config_validate(qc), Error);
    qc = quant_config_for("specquant");
    qc.basis = "wavelet";
    EXPECT_THROW(quant_config_validate(qc), Error);
    qc = quant_config_for("specquant");
    qc.a_clip_search = true;
    qc.a_clip_grid = {};
    EXPECT_THROW(quant_config_validate(qc), Error);
    qc.a_clip_grid = {0.9f, 1.5f};
    EXPECT_THROW(quant_config_validate(qc), Error);
    qc.a_clip_grid = {0.9f};
    qc.a_bits = 16;
    EXPECT_THROW(quant_config_validate(qc), Error);
    qc = quant_config_for("rtn");
    qc.gptq_qinput = true;  // needs GPTQ
    EXPECT_THROW(quant_config_validate(qc), Error);
    // Calibration file missing / too short.
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    Tokenizer tok(ck.tokenizer);
    qc = quant_config_for("rtn");
    qc.calib_path = "/nonexistent/calib.txt";
    EXPECT_THROW(quantize_model(model_load_f32(ck, false), tok, qc), Error);
    const std::string shortf = fs::temp_directory_path().string() + "/sq_short_calib.txt";
    { std::ofstream(shortf) << "just a few words"; }
    qc.calib_path = shortf;
    try {
        quantize_model(model_load_f32(ck, false), tok, qc);
        FAIL() << "short calibration accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("too short"), std::string::npos) << e.what();
    }
    fs::remove(shortf);
}
