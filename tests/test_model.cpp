// Whole-model golden tests: tiny random LLaMA / Qwen2 fixtures against
// Hugging Face transformers logits (scripts/make_model_fixtures.py), and the
// default model's greedy tokens against transformers
// (scripts/make_smollm2_golden.py).
#include <gtest/gtest.h>

#include "test_random.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/tokenizer.h"
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
