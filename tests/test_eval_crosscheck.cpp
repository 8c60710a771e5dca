// Cross-check of the evaluation harness against an independent implementation:
// Hugging Face transformers (float32, loading the same GGUF, its own tokenizer,
// every request scored from scratch) produced tests/data/smollm2/eval_reference.json
// with scripts/eval_reference.py --make-reference (command in the file's
// "generator" field and in docs/eval.md).
//
// Here the same documents run through our path (task parsing, prompts,
// encode_pair, shared-prefix branching in ModelLoglik, the FP32 forward) and
// must agree within 1e-3 nats per continuation token on average, with
// identical acc / acc_norm; the WikiText-2 windows within 1e-3 nats per token.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "eval/loglik.h"
#include "eval/perplexity.h"
#include "eval/tasks.h"
#include "io/checkpoint.h"
#include "io/tokenizer.h"
#include "model/model.h"

using namespace sq;

namespace {

int argmax_first(const std::vector<double>& v) {
    int best = 0;
    for (int i = 1; i < (int)v.size(); ++i)
        if (v[i] > v[best]) best = i;
    return best;
}

struct Fixture {
    nlohmann::json ref;
    Checkpoint ck;
    std::unique_ptr<Tokenizer> tok;
    std::unique_ptr<Model> model;
    std::string data_dir = std::string(SQ_SOURCE_DIR) + "/../shared/data";
};

Fixture& fixture() {
    static Fixture* f = [] {
        auto* f = new Fixture;
        std::ifstream rj(std::string(SQ_TEST_DATA) + "/smollm2/eval_reference.json");
        f->ref = nlohmann::json::parse(rj);
        const std::string path = std::string(SQ_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
        f->ck = checkpoint_open(path);
        f->tok = std::make_unique<Tokenizer>(f->ck.tokenizer);
        f->model = std::make_unique<Model>(model_load_f32(f->ck, false));
        return f;
    }();
    return *f;
}

void check_task(const std::string& name) {
    Fixture& f = fixture();
    ASSERT_TRUE(f.ref["tasks"].contains(name)) << name << " missing from the reference file";
    const auto& rt = f.ref["tasks"][name];
    const TaskSpec* spec = task_find(name);
    ASSERT_NE(spec, nullptr);
    TaskData data = task_load(*spec, f.data_dir);
    ASSERT_EQ(data.sha256, rt["file_sha256"].get<std::string>()) << data.path << " differs from the reference's";
    TextEncoder enc = text_encoder(*f.tok);
    ModelLoglik src(*f.model, f.ref["ctx"].get<int>());

    double sum_abs = 0.0, max_abs = 0.0;
    int64_t tokens = 0, requests = 0;
    int hits = 0, hits_ref = 0, hits_norm = 0, hits_norm_ref = 0, n = 0;
    for (const auto& rd : rt["docs"]) {
        const int line = rd["line"];
        const TaskDoc& doc = data.docs.at(line - 1);
        ASSERT_EQ(doc.line, line);
        std::vector<TokenPair> group;
        for (size_t r = 0; r < doc.contexts.size(); ++r)
            group.push_back(encode_pair(enc, doc.contexts[r], doc.continuations[r]));
        const auto ref_ll = rd["ll"].get<std::vector<double>>();
        const auto ref_tok = rd["tokens"].get<std::vector<int>>();
        ASSERT_EQ(group.size(), ref_ll.size()) << name << " line " << line;
        std::vector<ContinuationScore> ours = src.score(group);
        std::vector<double> ll, norm, norm_ref;
        for (size_t r = 0; r < group.size(); ++r) {
            // Same tokenization as transformers' tokenizer: same continuation length.
            ASSERT_EQ((int)group[r].continuation.size(), ref_tok[r]) << name << " line " << line << " request " << r;
            const double d = std::fabs(ours[r].logprob - ref_ll[r]);
            sum_abs += d;
            max_abs = std::max(max_abs, d / ref_tok[r]);
            tokens += ref_tok[r];
            ++requests;
            ll.push_back(ours[r].logprob);
            if (spec->has_acc_norm) {
                const double bytes = (double)doc.choices[r].size();
                norm.push_back(ours[r].logprob / bytes);
                norm_ref.push_back(ref_ll[r] / bytes);
            }
        }
        const int gold = rd["gold"];
        EXPECT_EQ(gold, doc.gold) << name << " line " << line;
        hits += argmax_first(ll) == gold;
        hits_ref += argmax_first(ref_ll) == gold;
        EXPECT_EQ(argmax_first(ll), argmax_first(ref_ll)) << name << " line " << line << ": acc prediction differs";
        if (spec->has_acc_norm) {
            hits_norm += argmax_first(norm) == gold;
            hits_norm_ref += argmax_first(norm_ref) == gold;
            EXPECT_EQ(argmax_first(norm), argmax_first(norm_ref))
                << name << " line " << line << ": acc_norm prediction differs";
        }
        ++n;
    }
    ASSERT_GE(n, 200) << "the acceptance needs >= 200 documents per task";
    const double mean_per_token = sum_abs / (double)tokens;
    std::printf("[%s] %d docs, %lld requests, %lld continuation tokens: mean |dll| %.3g nats/token, "
                "max %.3g; acc %d/%d (ref %d), acc_norm %d (ref %d)\n",
                name.c_str(), n, (long long)requests, (long long)tokens, mean_per_token, max_abs, hits, n, hits_ref,
                hits_norm, hits_norm_ref);
    EXPECT_LE(mean_per_token, 1e-3);
    EXPECT_EQ(hits, hits_ref);
    EXPECT_NEAR((double)hits_ref / n, rt["acc"].get<double>(), 1e-12);
    if (spec->has_acc_norm) {
        EXPECT_EQ(hits_norm, hits_norm_ref);
        EXPECT_NEAR((double)hits_norm_ref / n, rt["acc_norm"].get<double>(), 1e-12);
    }
}

}  // namespace

TEST(EvalCrossCheck, PiqaMatchesTransformers) { check_task("piqa"); }
TEST(EvalCrossCheck, ArcEasyMatchesTransformers) { check_task("arc_easy"); }

TEST(EvalCrossCheck, WikiText2WindowsMatchTransformers) {
    Fixture& f = fixture();
    const auto& rw = f.ref["wikitext2"];
    const int ctx = f.ref["ctx"];
    const std::string text = wikitext_read(f.data_dir + "/wikitext2/wiki.test.raw");
    const std::vector<int> ids = f.tok->encode(text, false);
    ASSERT_EQ((int64_t)ids.size(), rw["text_tokens"].get<int64_t>()) << "tokenization of wiki.test.raw differs";
    ModelLoglik src(*f.model, ctx);
    double total = 0.0, total_ref = 0.0;
    int64_t count = 0;
    ASSERT_GE(rw["windows"].size(), 8u);
    for (const auto& w : rw["windows"]) {
        const int i = w["window"];
        std::vector<int> win(ids.begin() + (int64_t)i * ctx, ids.begin() + (int64_t)(i + 1) * ctx);
        std::vector<double> lp = src.rolling_logprobs(win);
        ASSERT_EQ((int64_t)lp.size(), w["tokens"].get<int64_t>());
        double nll = 0.0;
        for (double v : lp) nll -= v;
        const double ref = w["nll"];
        EXPECT_LE(std::fabs(nll - ref) / (double)lp.size(), 1e-3) << "window " << i;
        total += nll;
        total_ref += ref;
        count += (int64_t)lp.size();
    }
    const double ppl = std::exp(total / count), ppl_ref = std::exp(total_ref / count);
    std::printf("[wikitext2] %zu windows x %d: mean |dnll| %.3g nats/token; PPL %.4f (ref %.4f)\n",
                rw["windows"].size(), ctx, std::fabs(total - total_ref) / count, ppl, ppl_ref);
    EXPECT_LE(std::fabs(total - total_ref) / count, 1e-3);
    EXPECT_NEAR(ppl_ref, rw["ppl"].get<double>(), 1e-9 * ppl_ref);
}
