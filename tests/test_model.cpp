// Whole-model golden tests: tiny random LLaMA / Qwen2 fixtures against
// Hugging Face transformers logits (scripts/make_model_fixtures.py), and the
// default model's greedy tokens against transformers
// (scripts/make_smollm2_golden.py).
#include <gtest/gtest.h>

#include "test_random.h"
#include "test_w4a4_data.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/tokenizer.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/w4a4_avx2.h"
#include "model/linear_w4a4_cpu.h"
#include "model/model.h"
#include "model/sampler.h"

using namespace sq;

namespace {

struct Fixture {
    std::vector<int> tokens;
    int vocab = 0;
    std::vector<float> logits;  // [tokens, vocab]
};

Fixture read_fixture(const std::string& dir) {
    Fixture f;
    std::ifstream tj(dir + "/ref_tokens.json");
    auto j = nlohmann::json::parse(tj);
    f.tokens = j["tokens"].get<std::vector<int>>();
    f.vocab = j["vocab"];
    std::ifstream lb(dir + "/ref_logits.f32", std::ios::binary);
    f.logits.resize(f.tokens.size() * f.vocab);
    lb.read(reinterpret_cast<char*>(f.logits.data()), f.logits.size() * sizeof(float));
    EXPECT_TRUE(lb.good()) << dir;
    return f;
}


void check_fixture(const std::string& name) {
    const std::string dir = std::string(SQ_TEST_DATA) + "/models/" + name;
    Fixture f = read_fixture(dir);
    Checkpoint ck = checkpoint_open(dir);
    Model model(model_load_f32(ck, false));
    ASSERT_EQ(model.config().vocab, f.vocab);
    const int n = (int)f.tokens.size();

    // Prefill: all positions at once.
    KVCache cache(model.config(), n);
    std::vector<float> logits((size_t)n * f.vocab, NAN);
    model.forward(f.tokens.data(), n, cache, logits.data(), true);
    double worst = 0;
    for (int t = 0; t < n; ++t)
        worst = std::max(worst, row_rel_err(&logits[(size_t)t * f.vocab], &f.logits[(size_t)t * f.vocab], f.vocab));
    EXPECT_LE(worst, 1e-4) << name << " prefill";

    // Decode: a 5-token prefill then one token at a time through the KV cache.
    KVCache c2(model.config(), n);
    std::vector<float> last(f.vocab, NAN);
    model.forward(f.tokens.data(), 5, c2, last.data(), false);
    double worst_dec = row_rel_err(last.data(), &f.logits[(size_t)4 * f.vocab], f.vocab);
    for (int t = 5; t < n; ++t) {
        model.forward(&f.tokens[t], 1, c2, last.data(), false);
        worst_dec = std::max(worst_dec, row_rel_err(last.data(), &f.logits[(size_t)t * f.vocab], f.vocab));
    }
    EXPECT_LE(worst_dec, 1e-4) << name << " decode";
    EXPECT_EQ(c2.pos, n);
}

}  // namespace

TEST(ModelGolden, TinyLlamaGqaUntiedLlama3Rope) { check_fixture("tiny_llama"); }
TEST(ModelGolden, TinyQwen2BiasTied) { check_fixture("tiny_qwen2"); }
TEST(ModelGolden, TinyLlamaSpmLinearRope) { check_fixture("tiny_llama_spm"); }

TEST(ModelGolden, KvCacheOverflowIsAnError) {
    Checkpoint ck = checkpoint_open(std::string(SQ_TEST_DATA) + "/models/tiny_llama");
    Model model(model_load_f32(ck, false));
    KVCache cache(model.config(), 4);
    std::vector<int> toks = {1, 2, 3, 4, 5};
    std::vector<float> logits(model.config().vocab);
    EXPECT_THROW(model.forward(toks.data(), 5, cache, logits.data(), false), Error);
}

// SmolLM2-135M-Instruct (fetched by scripts/setup.sh): the first 32 greedy
// tokens equal those of Hugging Face transformers on the same GGUF.
TEST(ModelGolden, SmolLM2GreedyMatchesTransformers) {
    const std::string path = std::string(SQ_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    std::ifstream probe(path);
    ASSERT_TRUE(probe.good()) << path << " missing: run scripts/setup.sh";
    std::ifstream gj(std::string(SQ_TEST_DATA) + "/smollm2/greedy_golden.json");
    auto golden = nlohmann::json::parse(gj);
    Checkpoint ck = checkpoint_open(path);
    Tokenizer tok(ck.tokenizer);
    Model model(model_load_f32(ck, false));
    for (auto& c : golden["cases"]) {
        std::vector<int> ids = tok.encode(c["prompt"].get<std::string>(), false);
        ASSERT_EQ(ids, c["prompt_ids"].get<std::vector<int>>()) << c["prompt"];
        const int n_new = golden["n_new"];
        KVCache cache(model.config(), (int)ids.size() + n_new);
        std::vector<float> logits(model.config().vocab);
        model.forward(ids.data(), (int)ids.size(), cache, logits.data(), false);
        std::vector<int> out;
        for (int i = 0; i < n_new; ++i) {
            int next = argmax(logits.data(), model.config().vocab);
            out.push_back(next);
            if (i + 1 < n_new) model.forward(&next, 1, cache, logits.data(), false);
        }
        EXPECT_EQ(out, c["greedy_ids"].get<std::vector<int>>()) << c["prompt"] << " -> " << tok.decode(out);
    }
}

// The 4-bit KV cache (KVCache bits 4, Model::make_cache) against the float
// cache holding the fake-quantized values (the reference form): the same
// logits bit for bit, through a prefill (the attention GEMM path, n ≥ 16), a
// short chunk (the decode kernel, n = 3) and single-token steps, with and
// without the key shift; and a truncate (eval's branching) in between.
TEST(ModelKvQ4, LogitsBitwiseFloatCache) {
    Checkpoint ck = checkpoint_open(std::string(SQ_TEST_DATA) + "/models/tiny_llama");
    std::mt19937 rng(test_seed() + 90);
    for (int with_shift : {0, 1}) {
        ModelWeights w = model_load_f32(ck, false);
        w.kv_bits = 4, w.kv_clip = 0.95f;
        const ModelConfig& c = w.cfg;
        if (with_shift)
            for (auto& L : w.layers) L.k_shift = gaussian((size_t)c.n_kv_heads * c.head_dim, rng, 0.3f);
        Model model(std::move(w));
        const int cap = 40, V = c.vocab;
        KVCache packed = model.make_cache(cap), flt(c, cap);
        ASSERT_EQ(packed.bits, 4);
        ASSERT_EQ(flt.bits, 16);
        EXPECT_LT(packed.bytes() * 4, flt.bytes());  // head_dim 16: 13 B per row instead of 64
        std::vector<int> toks(cap);
        for (int& t : toks) t = (int)(rng() % (uint32_t)V);
        auto step = [&](int from, int n, bool all, const char* what) {
            std::vector<float> a((size_t)n * V, NAN), b((size_t)n * V, NAN);
            model.forward(&toks[from], n, packed, a.data(), all);
            model.forward(&toks[from], n, flt, b.data(), all);
            const size_t rows = all ? n : 1;
            ASSERT_EQ(0, std::memcmp(a.data(), b.data(), rows * V * 4)) << what << " shift " << with_shift;
        };
        step(0, 20, true, "prefill 20");
        step(20, 3, true, "chunk 3");
        for (int i = 23; i < 30; ++i) step(i, 1, false, "decode");
        packed.truncate(21), flt.truncate(21);
        step(21, 17, true, "after truncate");
    }
    // A 4-bit cache for a model without 4-bit KV is refused with a message.
    Model plain(model_load_f32(ck, false));
    KVCache q4(plain.config(), 8, 4);
    std::vector<int> t = {1, 2};
    std::vector<float> logits(plain.config().vocab);
    EXPECT_THROW(plain.forward(t.data(), 2, q4, logits.data(), false), Error);
    EXPECT_THROW(KVCache(plain.config(), 8, 3), Error);
}

namespace {
// Model::forward's steps written out over all n rows in one call (what
// forward did before the chunking): float cache, all logits.
std::vector<float> forward_unchunked(const Model& model, const std::vector<int>& toks, bool all_logits = true) {
    const ModelWeights& w = model.weights();
    const ModelConfig& c = w.cfg;
    const int n = (int)toks.size();
    const int64_t d = c.d_model, qd = (int64_t)c.n_heads * c.head_dim, ff = c.d_ff;
    const std::vector<float> inv = rope_inv_freq(c);
    KVCache cache(c, n);
    std::vector<float> h(n * d), x(n * d), att(n * qd), proj(n * d), act(n * ff);
    embed_tokens(w, toks.data(), n, h.data());  // (the float cache holds fake-quantized K/V when kv_bits < 16)
    for (int l = 0; l < c.n_layers; ++l) {
        const LayerWeights& L = w.layers[l];
        rmsnorm_f32(h.data(), L.attn_norm.data(), n, d, c.rms_eps, x.data());
        attention_block(w, l, inv.data(), x.data(), n, 0, cache.k_at(l, 0), cache.v_at(l, 0), att.data());
        L.o->forward(att.data(), n, proj.data());
        for (int64_t i = 0; i < n * d; ++i) h[i] += proj[i];
        rmsnorm_f32(h.data(), L.ffn_norm.data(), n, d, c.rms_eps, x.data());
        mlp_block(L, ff, x.data(), n, act.data());
        L.down->forward(act.data(), n, proj.data());
        for (int64_t i = 0; i < n * d; ++i) h[i] += proj[i];
    }
    const int first = all_logits ? 0 : n - 1;  // the lm_head sees the rows forward gives it
    rmsnorm_f32(&h[first * d], w.final_norm.data(), n - first, d, c.rms_eps, x.data());
    std::vector<float> logits((size_t)(n - first) * c.vocab, NAN);
    w.lm_head->forward(x.data(), n - first, logits.data());
    return logits;
}
}  // namespace

// Model::forward runs long prompts as chunks of ≤ kPrefillChunk (+16)
// tokens (peak memory): the logits are the same bits as the steps written out
// over all rows at once, for the float model, and for W4A4 layers (AVX2 and
// reference backends, spectral branch on) with a float and a 4-bit KV cache
// (and a Q4_0 tied lm_head when the width allows), at lengths around the
// chunk boundaries (145 = 128 + 17, 160 = 128 + 32, 300 = 128 + 128 + 44).
TEST(ModelPrefillChunks, LogitsBitwiseOneCall) {
    Checkpoint ck = checkpoint_open(std::string(SQ_TEST_DATA) + "/models/tiny_llama");
    std::mt19937 rng(test_seed() + 91);
    for (int n : {1, 16, 17, 128, 144}) EXPECT_EQ(prefill_chunk_len(n, 0), n);  // one chunk
    for (int n : {145, 160, 273, 300, 401}) {  // the chunks cover n, > 16 tokens each, all but the last 128
        int64_t t0 = 0;
        while (t0 < n) {
            const int64_t r = prefill_chunk_len(n, t0);
            EXPECT_GT(r, 16) << n << " at " << t0;
            if (t0 + r < n) EXPECT_EQ(r, kPrefillChunk) << n << " at " << t0;
            else EXPECT_LE(r, kPrefillChunk + 16) << n;
            t0 += r;
        }
        EXPECT_EQ(t0, n);
    }
    for (const char* backend : {"float", "avx2", "ref", "avx2-kv4"}) {
        ModelWeights w = model_load_f32(ck, false);
        const ModelConfig& c = w.cfg;
        const std::string be_name = backend;
        if (be_name != "float") {
            const W4A4Backend be = be_name == "ref" ? W4A4Backend::kRef : W4A4Backend::kAvx2;
            if (be == W4A4Backend::kAvx2 && !w4a4_avx2_available()) continue;
            for (auto& L : w.layers)
                for (std::unique_ptr<Linear>* p : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) {
                    const int64_t in = (*p)->in, out = (*p)->out;
                    *p = make_linear_w4a4(random_qlinear(in, out, 4, (int)std::min<int64_t>(in, 9), false, rng), be);
                }
            if (be_name == "avx2-kv4") w.kv_bits = 4, w.kv_clip = 0.95f;
            if (c.d_model % 32 == 0) model_embed_quant(w, 4);
        }
        Model model(std::move(w));
        for (int n : {17, 128, 130, 145, 160, 288, 300}) {
            std::vector<int> toks(n);
            for (int& t : toks) t = (int)(rng() % (uint32_t)c.vocab);
            KVCache cache = model.make_cache(n + 1);
            std::vector<float> got((size_t)n * c.vocab, NAN);
            model.forward(toks.data(), n, cache, got.data(), true);
            const std::vector<float> want = forward_unchunked(model, toks);
            ASSERT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * 4)) << backend << " n " << n;
            // last-token logits only (the lm_head on one row: its GEMV path)
            std::vector<float> last(c.vocab, NAN);
            KVCache c2 = model.make_cache(n + 1);
            model.forward(toks.data(), n, c2, last.data(), false);
            const std::vector<float> want_last = forward_unchunked(model, toks, false);
            ASSERT_EQ(0, std::memcmp(last.data(), want_last.data(), c.vocab * 4)) << backend << " n " << n;
            EXPECT_EQ(c2.pos, n);
        }
    }
}
