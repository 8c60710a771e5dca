// Evaluation harness tests: lm-eval's context/continuation split, acc vs
// acc_norm, byte-length normalisation, WinoGrande partial scoring, LAMBADA
// exact match, shared-prefix KV branching against from-scratch scoring on a
// tiny random model, perplexity math, data errors, reports.
// Build: cmake --build build --target specquant_tests; run: ctest -R Eval
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "core/sha256.h"
#include "eval/eval.h"
#include "eval/loglik.h"
#include "eval/metrics.h"
#include "eval/perplexity.h"
#include "eval/report.h"
#include "eval/tasks.h"
#include "model/model.h"

namespace sq {
namespace {

namespace fs = std::filesystem;

// ---------- helpers ----------

// One token per byte (id = byte value): decoding is trivial for mocks.
TextEncoder byte_encoder() {
    TextEncoder e;
    e.encode = [](std::string_view s) {
        std::vector<int> t;
        for (unsigned char c : s) t.push_back(c);
        return t;
    };
    e.prefix = 0;
    return e;
}

std::string bytes_of(const std::vector<int>& t) {
    std::string s;
    for (int c : t) s += (char)c;
    return s;
}

// GPT-2-like pieces: a run of spaces glued to the word that follows it;
// trailing spaces form their own piece. Ids assigned on first sight.
struct WordEncoder {
    std::map<std::string, int> ids;
    int id(const std::string& p) {
        auto it = ids.find(p);
        if (it != ids.end()) return it->second;
        int n = (int)ids.size();
        ids[p] = n;
        return n;
    }
    std::vector<int> encode(std::string_view s) {
        std::vector<int> out;
        size_t i = 0;
        while (i < s.size()) {
            size_t j = i;
            while (j < s.size() && s[j] == ' ') ++j;
            while (j < s.size() && s[j] != ' ') ++j;
            out.push_back(id(std::string(s.substr(i, j - i))));
            i = j;
        }
        return out;
    }
};

// Scores requests with a function of the decoded (context, continuation)
// strings and records the calls.
struct MockSource : LoglikSource {
    std::function<ContinuationScore(const std::string&, const std::string&)> f;
    std::vector<std::pair<std::string, std::string>> calls;
    double rolling_value = -1.0;
    std::vector<ContinuationScore> score(const std::vector<TokenPair>& group) override {
        std::vector<ContinuationScore> out;
        for (const auto& p : group) {
            calls.emplace_back(bytes_of(p.context), bytes_of(p.continuation));
            out.push_back(f(calls.back().first, calls.back().second));
        }
        return out;
    }
    std::vector<double> rolling_logprobs(const std::vector<int>& t) override {
        return std::vector<double>(t.size() - 1, rolling_value);
    }
    int max_length() const override { return 4096; }
};

fs::path temp_dir(const std::string& name) {
    fs::path d = fs::temp_directory_path() / ("sq_test_eval_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d / "tasks");
    fs::create_directories(d / "wikitext2");
    return d;
}

void write(const fs::path& p, const std::string& text) {
    std::ofstream f(p, std::ios::binary);
    f << text;
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "(no error)";
}

const TaskSpec& spec(const char* name) {
    const TaskSpec* s = task_find(name);
    EXPECT_NE(s, nullptr) << name;
    return *s;
}

// A tiny random LLaMA: 2 layers, d 16, 4 heads over 2 KV heads, vocab 40.
Model tiny_model(uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 0.5f);
    auto rnd = [&](size_t n) {
        std::vector<float> v(n);
        for (auto& x : v) x = nd(rng);
        return v;
    };
    ModelConfig c;
    c.arch = "llama";
    c.n_layers = 2;
    c.d_model = 16;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 4;
    c.d_ff = 24;
    c.vocab = 40;
    c.max_ctx = 64;
    ModelWeights w;
    w.cfg = c;
    w.embed = rnd((size_t)c.vocab * c.d_model);
    w.final_norm.assign(c.d_model, 1.0f);
    w.lm_head = std::make_unique<LinearF32>(c.d_model, c.vocab, rnd((size_t)c.vocab * c.d_model));
    const int d = c.d_model, qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim, ff = c.d_ff;
    w.layers.resize(c.n_layers);
    for (auto& L : w.layers) {
        L.attn_norm.assign(d, 1.0f);
        L.ffn_norm.assign(d, 1.0f);
        L.q = std::make_unique<LinearF32>(d, qd, rnd((size_t)qd * d));
        L.k = std::make_unique<LinearF32>(d, kvd, rnd((size_t)kvd * d));
        L.v = std::make_unique<LinearF32>(d, kvd, rnd((size_t)kvd * d));
        L.o = std::make_unique<LinearF32>(qd, d, rnd((size_t)d * qd));
        L.gate = std::make_unique<LinearF32>(d, ff, rnd((size_t)ff * d));
        L.up = std::make_unique<LinearF32>(d, ff, rnd((size_t)ff * d));
        L.down = std::make_unique<LinearF32>(ff, d, rnd((size_t)d * ff));
    }
    return Model(std::move(w));
}

// From-scratch reference: one forward of context + continuation[:-1] on a
// fresh cache, log-softmax in double at every continuation position.
ContinuationScore naive_score(const Model& m, const TokenPair& p) {
    std::vector<int> in = p.context;
    in.insert(in.end(), p.continuation.begin(), p.continuation.end() - 1);
    const int V = m.config().vocab;
    KVCache cache(m.config(), (int)in.size());
    std::vector<float> logits(in.size() * V);
    m.forward(in.data(), (int)in.size(), cache, logits.data(), true);
    ContinuationScore s;
    s.greedy = true;
    for (size_t j = 0; j < p.continuation.size(); ++j) {
        const float* row = &logits[(p.context.size() - 1 + j) * V];
        double mx = row[0];
        int best = 0;
        for (int v = 1; v < V; ++v)
            if (row[v] > row[best]) best = v;
        mx = row[best];
        double z = 0;
        for (int v = 0; v < V; ++v) z += std::exp(row[v] - mx);
        s.logprob += row[p.continuation[j]] - mx - std::log(z);
        s.greedy = s.greedy && best == p.continuation[j];
    }
    return s;
}

// ---------- context / continuation split ----------

TEST(EvalEncodePair, TrailingContextSpaceMovesIntoContinuation) {
    WordEncoder we;
    TextEncoder enc;
    enc.encode = [&we](std::string_view s) { return we.encode(s); };
    TokenPair p = encode_pair(enc, "Question: why?\nAnswer: ", "yes");
    // lm-eval: context "Question: why?\nAnswer:", continuation " yes" (one piece).
    EXPECT_EQ(p.context, we.encode("Question: why?\nAnswer:"));
    EXPECT_EQ(p.continuation, std::vector<int>{we.id(" yes")});
}

TEST(EvalEncodePair, ContinuationIsWholeMinusContextLength) {
    // Char-level tokens with one merge "ab": "xa" + "bc" encodes whole as [x, ab, c],
    // context as [x, a]; lm-eval takes whole[2:] = [c] (the "b" is lost, by design).
    TextEncoder enc;
    enc.encode = [](std::string_view s) {
        std::vector<int> t;
        for (size_t i = 0; i < s.size(); ++i) {
            if (s[i] == 'a' && i + 1 < s.size() && s[i + 1] == 'b') t.push_back(256), ++i;
            else t.push_back((unsigned char)s[i]);
        }
        return t;
    };
    TokenPair p = encode_pair(enc, "xa", "bc");
    EXPECT_EQ(p.context, (std::vector<int>{'x', 'a'}));
    EXPECT_EQ(p.continuation, std::vector<int>{'c'});
}

TEST(EvalEncodePair, BosPrefixesContextOnly) {
    TextEncoder enc = byte_encoder();
    enc.bos = 1;
    TokenPair p = encode_pair(enc, "ab", " c");
    EXPECT_EQ(p.context, (std::vector<int>{1, 'a', 'b'}));
    EXPECT_EQ(p.continuation, (std::vector<int>{' ', 'c'}));
}

TEST(EvalEncodePair, ContinuationWithoutTokensIsAnError) {
    WordEncoder we;
    TextEncoder enc;
    enc.encode = [&we](std::string_view s) { return we.encode(s); };
    // "foo" + "bar" is one piece: whole has as many tokens as the context.
    EXPECT_NE(error_of([&] { encode_pair(enc, "foo", "bar"); }).find("encodes to no tokens"), std::string::npos);
}

TEST(EvalEncodePair, LeftTruncationKeepsTheContinuation) {
    TokenPair p{{1, 2, 3, 4, 5, 6}, {7, 8}};
    ScoredInput s = scored_input(p, 4);  // keep the last 5 of 8 tokens, drop the final one
    EXPECT_EQ(s.input, (std::vector<int>{4, 5, 6, 7}));
    EXPECT_EQ(s.first, 2);  // input[2] = 6 predicts 7
}

// ---------- prompts ----------

TEST(EvalTasks, PromptsMatchLmEval) {
    EXPECT_EQ(task_prompt(spec("piqa"), "Question: How?\n"), "Question: How?\nAnswer:");
    EXPECT_EQ(task_prompt(spec("arc_easy"), "Question: Why?"), "Question: Why?\nAnswer:");
    EXPECT_EQ(task_prompt(spec("arc_challenge"), "Question: Why?"), "Question: Why?\nAnswer:");
    EXPECT_EQ(task_prompt(spec("boolq"), "Passage: Text.\nQuestion: is it?"), "Text.\nQuestion: is it?\nAnswer:");
    EXPECT_EQ(task_prompt(spec("siqa"), "Ann ran. Why?"), "Q: Ann ran. Why?\nA:");
    EXPECT_EQ(task_prompt(spec("openbookqa"), "Predators eat"), "Predators eat");
    EXPECT_EQ(task_prompt(spec("hellaswag"), "Cooking: A man stirs. he"), "Cooking: A man stirs. he");
}

TEST(EvalTasks, ChoiceDocumentGetsDelimiter) {
    TaskDoc d = task_parse_line(spec("arc_easy"), R"({"query":"Question: Q","choices":["a b","c"],"gold":1})", "f", 3);
    ASSERT_EQ(d.contexts.size(), 2u);
    EXPECT_EQ(d.contexts[0], "Question: Q\nAnswer:");
    EXPECT_EQ(d.continuations[0], " a b");
    EXPECT_EQ(d.continuations[1], " c");
    EXPECT_EQ(d.gold, 1);
    EXPECT_EQ(d.line, 3);
}

// ---------- scoring ----------

TEST(EvalScoring, AccAndAccNormPickDifferentChoices) {
    TaskDoc d = task_parse_line(spec("hellaswag"), R"({"query":"q","choices":["a","bbbbbbbb"],"gold":1})", "f", 1);
    // acc: -2 > -4 picks 0; acc_norm: -2/1 < -4/8 picks 1 (gold).
    std::vector<std::vector<ContinuationScore>> s = {{{-2.0, false}, {-4.0, false}}};
    auto m = task_metrics(spec("hellaswag"), {&d}, s);
    ASSERT_EQ(m.size(), 2u);
    EXPECT_EQ(m[0].metric, "acc");
    EXPECT_EQ(m[0].value, 0.0);
    EXPECT_EQ(m[1].metric, "acc_norm");
    EXPECT_EQ(m[1].value, 1.0);
}

TEST(EvalScoring, AccNormDividesByUtf8Bytes) {
    // "ééé" is 3 characters but 6 bytes. Bytes: -3/6 = -0.5 > -2.2/4 = -0.55 -> choice 0.
    // Characters would give -1.0 < -0.55 -> choice 1.
    TaskDoc d = task_parse_line(spec("piqa"), R"({"query":"Question: q\n","choices":["\u00e9\u00e9\u00e9","abcd"],"gold":0})",
                                "f", 1);
    ASSERT_EQ(d.choices[0].size(), 6u);
    std::vector<std::vector<ContinuationScore>> s = {{{-3.0, false}, {-2.2, false}}};
    auto m = task_metrics(spec("piqa"), {&d}, s);
    EXPECT_EQ(m[1].metric, "acc_norm");
    EXPECT_EQ(m[1].value, 1.0);
    EXPECT_EQ(m[0].value, 0.0);  // acc: -2.2 wins
}

TEST(EvalScoring, AccNormLengthExcludesTheDelimiter) {
    // lm-eval divides by the choice's length, not by that of " " + choice:
    // "a": -1.0/1 = -1.0 < "bbb": -2.4/3 = -0.8 -> choice 1 (gold). Counting the
    // space would give -0.5 > -0.6 -> choice 0.
    TaskDoc d = task_parse_line(spec("arc_easy"), R"({"query":"Question: q","choices":["a","bbb"],"gold":1})", "f", 1);
    auto m = task_metrics(spec("arc_easy"), {&d}, {{{-1.0, false}, {-2.4, false}}});
    EXPECT_EQ(m[0].value, 0.0);  // acc picks "a"
    EXPECT_EQ(m[1].value, 1.0);  // acc_norm picks "bbb"
}

TEST(EvalScoring, ArgmaxTiesTakeTheFirst) {
    EXPECT_EQ(argmax_first({-1.0, -0.5, -0.5}), 1);
    EXPECT_EQ(argmax_first({-3.0}), 0);
}

TEST(EvalScoring, BinomialStderrAsLmEval) {
    EXPECT_NEAR(binomial_stderr(0.5, 101), 0.05, 1e-12);
    EXPECT_TRUE(std::isnan(binomial_stderr(1.0, 1)));
    EXPECT_NEAR(mean_stderr({0, 1, 1, 0}), std::sqrt(1.0 / 3.0) / 2.0, 1e-12);
}

TEST(EvalScoring, MeanOfTasksPropagatesStderr) {
    Metric m = metric_mean("m", {{"a", "acc", 0.4, 0.03, 10}, {"b", "acc", 0.6, 0.04, 20}});
    EXPECT_NEAR(m.value, 0.5, 1e-12);
    EXPECT_NEAR(m.se, 0.025, 1e-12);  // sqrt(.03^2 + .04^2) / 2
}

TEST(EvalScoring, WinoGrandePartialScoring) {
    // The same continuation is scored after each context option; the option
    // under which it is more likely wins.
    const fs::path dir = temp_dir("wino");
    write(dir / "tasks" / "winogrande.jsonl",
          R"({"context_options":["The cup fell on the plate so the cup","The cup fell on the plate so the plate"],"continuation":"broke.","gold":1})"
          "\n"
          R"({"context_options":["Ann beat Bo so Ann","Ann beat Bo so Bo"],"continuation":"cheered.","gold":0})"
          "\n");
    MockSource src;
    src.f = [](const std::string& ctx, const std::string& cont) {
        bool good = (ctx.ends_with("plate") && cont == " broke.") || (ctx.ends_with("Bo") && cont == " cheered.");
        return ContinuationScore{good ? -1.0 : -5.0, false};
    };
    EvalOptions o;
    o.tasks = {"winogrande"};
    o.data_dir = dir.string();
    o.progress = false;
    EvalResult r = eval_run(src, byte_encoder(), o);
    ASSERT_EQ(src.calls.size(), 4u);
    EXPECT_EQ(src.calls[0].second, " broke.");
    EXPECT_EQ(src.calls[1].second, " broke.");
    EXPECT_TRUE(src.calls[1].first.ends_with("the plate"));
    ASSERT_EQ(r.runs.size(), 1u);
    ASSERT_EQ(r.runs[0].metrics.size(), 1u);  // winogrande: acc only
    EXPECT_DOUBLE_EQ(r.runs[0].metrics[0].value, 0.5);  // doc 1 right (gold 1), doc 2 wrong (gold 0)
    fs::remove_all(dir);
}

TEST(EvalScoring, LambadaExactMatchAndPerplexity) {
    std::vector<const TaskDoc*> docs;
    TaskDoc a = task_parse_line(spec("lambada"), R"({"context":"He said","continuation":"hi"})", "f", 1);
    TaskDoc b = task_parse_line(spec("lambada"), R"({"context":"She said","continuation":"bye"})", "f", 2);
    EXPECT_EQ(a.continuations[0], " hi");
    docs = {&a, &b};
    auto m = task_metrics(spec("lambada"), docs, {{{-1.0, true}}, {{-3.0, false}}});
    ASSERT_EQ(m.size(), 2u);
    EXPECT_EQ(m[0].metric, "acc");
    EXPECT_DOUBLE_EQ(m[0].value, 0.5);
    EXPECT_EQ(m[1].metric, "ppl");
    EXPECT_NEAR(m[1].value, std::exp(2.0), 1e-9);                           // exp(-mean ll)
    EXPECT_NEAR(m[1].se, std::exp(2.0) * (std::sqrt(2.0) / std::sqrt(2.0)), 1e-9);  // sd(1,3)=sqrt2, /sqrt2
}

// ---------- the model-backed source ----------

TEST(EvalModelLoglik, GreedyFlagIsExactMatch) {
    Model m = tiny_model(7);
    const int V = m.config().vocab;
    std::vector<int> ctx = {3, 14, 15, 9, 26};
    // Greedy continuation of 3 tokens from the model itself.
    std::vector<int> seq = ctx, cont;
    for (int k = 0; k < 3; ++k) {
        KVCache cache(m.config(), 16);
        std::vector<float> logits(V);
        m.forward(seq.data(), (int)seq.size(), cache, logits.data(), false);
        int best = 0;
        for (int v = 1; v < V; ++v)
            if (logits[v] > logits[best]) best = v;
        cont.push_back(best);
        seq.push_back(best);
    }
    ModelLoglik src(m, 32);
    auto hit = src.score({{ctx, cont}});
    std::vector<int> wrong = cont;
    wrong[2] = (wrong[2] + 1) % V;
    auto miss = src.score({{ctx, wrong}});
    EXPECT_TRUE(hit[0].greedy);
    EXPECT_FALSE(miss[0].greedy);
    EXPECT_GT(hit[0].logprob, miss[0].logprob);
}

TEST(EvalModelLoglik, SharedPrefixBranchesMatchScoringFromScratch) {
    Model m = tiny_model(11);
    // Multi-token continuations of different lengths after one context, as a
    // 4-choice question; shared continuation prefix [5, 6] on two of them.
    std::vector<TokenPair> group = {
        {{1, 2, 3, 4}, {5}},
        {{1, 2, 3, 4}, {5, 6, 7, 8}},
        {{1, 2, 3, 4}, {5, 6, 9}},
        {{1, 2, 3, 4}, {10, 11}},
    };
    ModelLoglik src(m, 32);
    GroupPlan plan = group_plan(group, 32);
    // Request 0 (one-token continuation) needs only the context as input, so the
    // common prefix is the 4 context tokens; logits from the last one on.
    EXPECT_EQ(plan.shared, 4);
    EXPECT_EQ(plan.shared_logits, 3);
    const int64_t before = src.tokens_forwarded(), calls_before = src.forward_calls();
    auto got = src.score(group);
    EXPECT_EQ(src.tokens_forwarded() - before, plan.forward_tokens);
    EXPECT_EQ(src.forward_calls() - calls_before, plan.forward_calls);
    EXPECT_EQ(plan.forward_calls, 1 + 0 + 1 + 1 + 1);  // context (last row) + 3 branches
    EXPECT_EQ(plan.forward_tokens, 4 + 0 + 3 + 2 + 1);  // context once, then each branch
    for (size_t i = 0; i < group.size(); ++i) {
        ContinuationScore ref = naive_score(m, group[i]);
        EXPECT_NEAR(got[i].logprob, ref.logprob, 1e-4 * (1 + std::fabs(ref.logprob))) << "request " << i;
        EXPECT_EQ(got[i].greedy, ref.greedy) << "request " << i;
    }
    // Continuations sharing two tokens: the shared part then holds three
    // scored rows (last context token, 5, 6), read from one all-logits call.
    std::vector<TokenPair> deep = {{{1, 2, 3, 4}, {5, 6, 7}}, {{1, 2, 3, 4}, {5, 6, 9}}};
    GroupPlan dp = group_plan(deep, 32);
    EXPECT_EQ(dp.shared, 6);
    EXPECT_EQ(dp.shared_logits, 3);
    const int64_t deep_calls = src.forward_calls();
    auto dg = src.score(deep);
    EXPECT_EQ(src.forward_calls() - deep_calls, dp.forward_calls);
    EXPECT_EQ(dp.forward_calls, 2);  // prefix + one all-logits call, no branches
    for (size_t i = 0; i < deep.size(); ++i) {
        ContinuationScore ref = naive_score(m, deep[i]);
        EXPECT_NEAR(dg[i].logprob, ref.logprob, 1e-4 * (1 + std::fabs(ref.logprob))) << "deep request " << i;
        EXPECT_EQ(dg[i].greedy, ref.greedy) << "deep request " << i;
    }
    // WinoGrande shape: different contexts, same continuation.
    std::vector<TokenPair> wino = {{{1, 2, 30}, {7, 8}}, {{1, 2, 31, 32}, {7, 8}}};
    auto w = src.score(wino);
    for (size_t i = 0; i < wino.size(); ++i)
        EXPECT_NEAR(w[i].logprob, naive_score(m, wino[i]).logprob, 1e-4 * (1 + std::fabs(w[i].logprob)));
}

TEST(EvalModelLoglik, RollingLogprobsMatchSingleForward) {
    Model m = tiny_model(5);
    std::vector<int> t = {1, 7, 3, 9, 12, 4, 4, 30, 2, 8};
    ModelLoglik src(m, 16);
    auto lp = src.rolling_logprobs(t);
    ASSERT_EQ(lp.size(), t.size() - 1);
    for (size_t i = 1; i < t.size(); ++i) {
        TokenPair p{std::vector<int>(t.begin(), t.begin() + i), {t[i]}};
        EXPECT_NEAR(lp[i - 1], naive_score(m, p).logprob, 1e-4) << "position " << i;
    }
}

// ---------- perplexity ----------

TEST(EvalPerplexity, WindowMeansAndDeltaMethod) {
    PplResult r = ppl_from_windows({1.0, 2.0}, 8, 5, 14);
    EXPECT_DOUBLE_EQ(r.nll, 1.5);
    EXPECT_NEAR(r.nll_se, 0.5, 1e-12);  // sd(1,2) = 0.7071, / sqrt(2)
    EXPECT_NEAR(r.ppl, std::exp(1.5), 1e-12);
    EXPECT_NEAR(r.ppl_se, std::exp(1.5) * 0.5, 1e-12);
    EXPECT_TRUE(std::isnan(ppl_from_windows({1.0}, 8, 5, 7).ppl_se));
}

TEST(EvalPerplexity, WindowsKeptForPairedComparison) {
    EXPECT_EQ(ppl_from_windows({1.0, 2.0, 4.0}, 8, 5, 21).window_nll, (std::vector<double>{1.0, 2.0, 4.0}));
    // d = a − b = {0.1, 0.3}: mean 0.2, sd 0.1414, se 0.1; ratio e^0.2, interval e^(0.2 ± 0.196).
    const PplPaired p = ppl_paired({1.1, 2.3}, {1.0, 2.0});
    EXPECT_EQ(p.windows, 2);
    EXPECT_NEAR(p.dnll, 0.2, 1e-12);
    EXPECT_NEAR(p.dnll_se, 0.1, 1e-12);
    EXPECT_NEAR(p.ratio, std::exp(0.2), 1e-12);
    EXPECT_NEAR(p.ratio_lo, std::exp(0.2 - 0.196), 1e-12);
    EXPECT_NEAR(p.ratio_hi, std::exp(0.2 + 0.196), 1e-12);
    // Pairing removes the spread between windows: a constant shift has zero stderr.
    const PplPaired q = ppl_paired({3.0, 5.0, 9.0}, {2.99, 4.99, 8.99});
    EXPECT_NEAR(q.dnll, 0.01, 1e-12);
    EXPECT_NEAR(q.dnll_se, 0.0, 1e-12);
    EXPECT_NE(error_of([] { ppl_paired({1.0}, {1.0, 2.0}); }).find("the same windows"), std::string::npos);
    EXPECT_THROW(ppl_paired({}, {}), Error);
}

TEST(EvalPerplexity, WikitextTextJoinsLinesWithBlankLines) {
    const fs::path dir = temp_dir("wiki");
    write(dir / "w.raw", " = T = \r\n line one \r\n last\r\n");
    EXPECT_EQ(wikitext_read((dir / "w.raw").string()), " = T = \n\n line one \n\n last");
    fs::remove_all(dir);
}

TEST(EvalPerplexity, WindowsDropTheTail) {
    MockSource src;
    src.rolling_value = -2.0;
    std::vector<int> t(8 * 3 + 5, 1);
    int windows_seen = 0;
    PplResult r = perplexity_eval(src, t, 8, 0, [&](int64_t) { ++windows_seen; });
    EXPECT_EQ(r.windows, 3);
    EXPECT_EQ(windows_seen, 3);
    EXPECT_EQ(r.tokens_scored, 3 * 7);
    EXPECT_NEAR(r.ppl, std::exp(2.0), 1e-9);
    EXPECT_EQ(perplexity_eval(src, t, 8, 2).windows, 2);
}

// ---------- data errors ----------

TEST(EvalData, MissingFileNamesThePath) {
    const fs::path dir = temp_dir("missing");
    std::string e = error_of([&] { task_load(spec("piqa"), dir.string()); });
    EXPECT_NE(e.find((dir / "tasks" / "piqa.jsonl").string()), std::string::npos) << e;
    fs::remove_all(dir);
}

TEST(EvalData, MalformedJsonNamesFileAndLine) {
    const fs::path dir = temp_dir("badjson");
    write(dir / "tasks" / "siqa.jsonl", R"({"query":"q","choices":["a","b","c"],"gold":0})"
                                        "\n"
                                        R"({"query":"q","choices":["a","b",)"
                                        "\n");
    std::string e = error_of([&] { task_load(spec("siqa"), dir.string()); });
    EXPECT_NE(e.find("siqa.jsonl:2: malformed JSON"), std::string::npos) << e;
    fs::remove_all(dir);
}

TEST(EvalData, GoldOutOfRange) {
    std::string e = error_of([] {
        task_parse_line(spec("arc_easy"), R"({"query":"Question: q","choices":["a","b"],"gold":2})", "arc.jsonl", 17);
    });
    EXPECT_NE(e.find("arc.jsonl:17: gold 2 out of range [0, 2)"), std::string::npos) << e;
    e = error_of([] {
        task_parse_line(spec("winogrande"), R"({"context_options":["a","b"],"continuation":"c","gold":-1})", "w", 1);
    });
    EXPECT_NE(e.find("w:1: gold -1 out of range"), std::string::npos) << e;
}

TEST(EvalData, EmptyChoice) {
    std::string e = error_of([] {
        task_parse_line(spec("hellaswag"), R"({"query":"q","choices":["a",""],"gold":0})", "hs.jsonl", 4);
    });
    EXPECT_NE(e.find("hs.jsonl:4: choices[1] is empty"), std::string::npos) << e;
}

TEST(EvalData, MissingFieldAndWrongType) {
    std::string e = error_of([] { task_parse_line(spec("lambada"), R"({"context":"x"})", "l.jsonl", 9); });
    EXPECT_NE(e.find("l.jsonl:9: missing field \"continuation\""), std::string::npos) << e;
    e = error_of([] { task_parse_line(spec("boolq"), R"({"query":"q","choices":["no","yes"],"gold":"1"})", "b", 2); });
    EXPECT_NE(e.find("b:2: field \"gold\" is not an integer"), std::string::npos) << e;
}

TEST(EvalData, BadLineFailsTheRunBeforeScoring) {
    const fs::path dir = temp_dir("failfast");
    write(dir / "tasks" / "openbook_qa.jsonl", R"({"query":"q","choices":["a","b"],"gold":0})"
                                               "\n");
    write(dir / "tasks" / "piqa.jsonl", R"({"query":"Question: q\n","choices":["a","b"],"gold":5})"
                                        "\n");
    MockSource src;
    src.f = [](const std::string&, const std::string&) { return ContinuationScore{-1.0, false}; };
    EvalOptions o;
    o.tasks = {"openbookqa", "piqa"};
    o.data_dir = dir.string();
    o.progress = false;
    std::string e = error_of([&] { eval_run(src, byte_encoder(), o); });
    EXPECT_NE(e.find("piqa.jsonl:1: gold 5"), std::string::npos) << e;
    EXPECT_TRUE(src.calls.empty());  // nothing scored, nothing half-done
    fs::remove_all(dir);
}

// ---------- selection, subsets, reports ----------

TEST(EvalSelect, NamesAllQuickAndUnknown) {
    EvalOptions o;
    eval_select("piqa,wikitext2,piqa", o);
    EXPECT_EQ(o.tasks, (std::vector<std::string>{"piqa", "wikitext2"}));
    eval_select("all", o);
    EXPECT_EQ(o.tasks.size(), 10u);
    eval_select("quick", o);
    EXPECT_EQ(o.task_limits.size(), 9u);
    EXPECT_GT(o.ppl_windows, 0);
    EXPECT_NE(error_of([&] { eval_select("piqa,mmlu", o); }).find("unknown task \"mmlu\""), std::string::npos);
}

TEST(EvalSelect, SeededSubsetIsDeterministic) {
    auto a = subset_indices(1000, 50, 1234), b = subset_indices(1000, 50, 1234), c = subset_indices(1000, 50, 99);
    EXPECT_EQ(a, b);
    EXPECT_NE(a, c);
    ASSERT_EQ(a.size(), 50u);
    EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
    EXPECT_EQ(std::adjacent_find(a.begin(), a.end()), a.end());
    EXPECT_GE(a.front(), 0);
    EXPECT_LT(a.back(), 1000);
    EXPECT_EQ(subset_indices(5, 0, 1).size(), 5u);
    EXPECT_EQ(subset_indices(5, 9, 1).size(), 5u);
    // Pinned values guard the documented algorithm (splitmix64 Fisher-Yates)
    // that scripts/eval_reference.py reproduces.
    EXPECT_EQ(subset_indices(10, 3, 1234), (std::vector<int>{0, 6, 8}));  // computed in Python
}

TEST(EvalReport, EndToEndJsonWithHashesAndHeadline) {
    const fs::path dir = temp_dir("report");
    const std::string obqa = R"({"query":"q1","choices":["right","wrong"],"gold":0})"
                             "\n"
                             R"({"query":"q2","choices":["wrong","right"],"gold":1})"
                             "\n";
    write(dir / "tasks" / "openbook_qa.jsonl", obqa);
    write(dir / "tasks" / "boolq.jsonl", R"({"query":"Passage: p\nQuestion: q?","choices":["no","yes"],"gold":1})"
                                         "\n");
    write(dir / "wikitext2" / "wiki.test.raw", std::string(40, 'x') + "\r\n");
    MockSource src;
    src.f = [](const std::string&, const std::string& cont) {
        return ContinuationScore{cont == " right" || cont == " yes" ? -1.0 : -2.0, false};
    };
    EvalOptions o;
    eval_select("wikitext2,openbookqa,boolq", o);
    o.data_dir = dir.string();
    o.ctx = 8;
    o.progress = false;
    EvalResult r = eval_run(src, byte_encoder(), o);
    ASSERT_EQ(r.runs.size(), 3u);
    EXPECT_EQ(r.runs[0].task, "wikitext2");
    EXPECT_EQ(r.runs[0].ppl.windows, 5);  // 40 byte-tokens / 8
    EXPECT_EQ(r.zero_shot_tasks, 2);
    EXPECT_DOUBLE_EQ(r.headline.value, 1.0);
    // boolq saw lm-eval's prompt: no "Passage: " label.
    auto boolq = std::find_if(src.calls.begin(), src.calls.end(),
                              [](const auto& c) { return c.second == " yes"; });
    ASSERT_NE(boolq, src.calls.end());
    EXPECT_EQ(boolq->first, "p\nQuestion: q?\nAnswer:");

    RunInfo info;
    info.model = "m.gguf";
    info.method = "fp";
    info.git_rev = "unknown";
    auto j = nlohmann::json::parse(report_json(info, o, r));
    EXPECT_EQ(j["method"], "fp");
    EXPECT_EQ(j["bits"]["w"], "32");
    EXPECT_EQ(j["ctx"], 8);
    EXPECT_EQ(j["tasks"]["openbookqa"]["sha256"], sha256_hex(obqa));
    EXPECT_EQ(j["tasks"]["openbookqa"]["n"], 2);
    EXPECT_DOUBLE_EQ(j["tasks"]["openbookqa"]["metrics"]["acc_norm"]["value"].get<double>(), 1.0);
    EXPECT_TRUE(j["tasks"]["boolq"]["metrics"]["acc"]["stderr"].is_null());  // n = 1: undefined
    EXPECT_EQ(j["zero_shot"]["complete"], false);

    const fs::path out = dir / "r.json";
    write_file_atomic(out.string(), report_json(info, o, r));
    EXPECT_TRUE(fs::exists(out));
    // Per-window NLLs, read back for `ppl --paired`; the report must match ctx and text.
    ASSERT_EQ(j["tasks"]["wikitext2"]["window_nll"].size(), 5u);
    const std::string text_sha = r.runs[0].sha256;
    EXPECT_EQ(report_window_nll(out.string(), 8, text_sha), r.runs[0].ppl.window_nll);
    EXPECT_NE(error_of([&] { report_window_nll(out.string(), 16, text_sha); }).find("ctx 8, this run 16"),
              std::string::npos);
    EXPECT_NE(error_of([&] { report_window_nll(out.string(), 8, "abc"); }).find("scored another text"),
              std::string::npos);
    EXPECT_NE(error_of([&] { report_window_nll((dir / "none.json").string(), 8, text_sha); }).find("cannot open"),
              std::string::npos);
    write(dir / "bad.json", "{\"ctx\": 8, \"tasks\": {}}");
    EXPECT_NE(error_of([&] { report_window_nll((dir / "bad.json").string(), 8, text_sha); }).find("bad.json: no tasks.wikitext2"),
              std::string::npos);
    write(dir / "junk.json", "{not json");
    EXPECT_NE(error_of([&] { report_window_nll((dir / "junk.json").string(), 8, text_sha); }).find("not a JSON report"),
              std::string::npos);
    for (auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos);
    EXPECT_NE(error_of([&] { write_file_atomic((dir / "no" / "such" / "r.json").string(), "{}"); }).find("cannot create"),
              std::string::npos);
    fs::remove_all(dir);
}

TEST(EvalReport, Sha256KnownVectors) {
    EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    Sha256 h;  // streaming across block boundaries
    std::string million(1000000, 'a');
    for (size_t i = 0; i < million.size(); i += 777) h.update(million.substr(i, 777));
    EXPECT_EQ(h.hex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(EvalReport, GitRevisionReadsHead) {
    const fs::path dir = temp_dir("git");
    fs::create_directories(dir / ".git" / "refs" / "heads");
    write(dir / ".git" / "HEAD", "ref: refs/heads/main\n");
    const std::string rev = "0123456789abcdef0123456789abcdef01234567";
    write(dir / ".git" / "refs" / "heads" / "main", rev + "\n");
    EXPECT_EQ(git_revision(dir.string()), rev);
    fs::remove(dir / ".git" / "refs" / "heads" / "main");
    write(dir / ".git" / "packed-refs", "# pack-refs\n" + rev + " refs/heads/main\n");
    EXPECT_EQ(git_revision(dir.string()), rev);
    EXPECT_EQ(git_revision(""), "unknown");
    fs::remove_all(dir);
}

}  // namespace
}  // namespace sq
