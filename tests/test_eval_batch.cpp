// Varlen batching of log-likelihood requests (eval/batch.h) without a GPU:
// which requests go into which batch, truncation, targets, results routed
// back in order, a packed scorer built from the CPU model against
// ModelLoglik, and the harness handing a batching source chunks of
// documents with results identical to the one-document path.
// The GPU side (ModelCuda::forward_score_varlen) is tested in
// tests/test_cuda_model.cpp (CudaBatch*).
// Run: specquant_tests --gtest_filter='EvalBatch*'
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "eval/batch.h"
#include "eval/eval.h"
#include "eval/loglik.h"
#include "io/checkpoint.h"
#include "model/model.h"
#include "test_random.h"

namespace sq {
namespace {

namespace fs = std::filesystem;

std::vector<int> random_tokens(int n, int vocab, std::mt19937& rng) {
    std::uniform_int_distribution<int> tok(0, vocab - 1);
    std::vector<int> t(n);
    for (auto& x : t) x = tok(rng);
    return t;
}

// Groups of 1..4 requests: shared contexts (multiple choice), different
// contexts (partial scoring), contexts past max_length (left truncation).
std::vector<std::vector<TokenPair>> random_groups(int n_groups, int max_length, int vocab, std::mt19937& rng) {
    std::uniform_int_distribution<int> nreq(1, 4), clen(1, max_length + 10), klen(1, 6), coin(0, 1);
    std::vector<std::vector<TokenPair>> groups;
    for (int g = 0; g < n_groups; ++g) {
        std::vector<TokenPair> grp;
        const std::vector<int> shared = random_tokens(clen(rng), vocab, rng);
        const int n = nreq(rng);
        for (int r = 0; r < n; ++r)
            grp.push_back({coin(rng) ? shared : random_tokens(clen(rng), vocab, rng), random_tokens(klen(rng), vocab, rng)});
        groups.push_back(std::move(grp));
    }
    return groups;
}

// One forward per sequence on a fresh cache: what a varlen batch computes,
// sequence by sequence, on the CPU.
PackedScorer cpu_scorer(const Model& m, int* calls) {
    return [&m, calls](const PackedBatch& b) {
        const int V = m.config().vocab;
        std::vector<float> logits(b.tokens.size() * (size_t)V);
        int base = 0;
        for (int len : b.seq_lens) {
            KVCache cache(m.config(), len);
            m.forward(&b.tokens[base], len, cache, &logits[(size_t)base * V], true);
            base += len;
        }
        std::vector<RowScore> out;
        for (const RowTarget& t : b.targets) {
            RowScore s;
            s.logprob = logprob_of(&logits[(size_t)t.row * V], V, t.target, &s.greedy);
            out.push_back(s);
        }
        ++*calls;
        return out;
    };
}

TEST(EvalBatch, PackRequestsFillsBatchesInOrder) {
    std::mt19937 rng(test_seed());
    const int max_length = 24, capacity = 40, vocab = 100;
    const auto groups = random_groups(40, max_length, vocab, rng);
    const std::vector<PackedBatch> batches = pack_requests(groups, max_length, capacity);
    std::vector<ScoredInput> want;
    std::vector<const TokenPair*> req;
    for (const auto& g : groups)
        for (const auto& p : g) want.push_back(scored_input(p, max_length)), req.push_back(&p);
    size_t k = 0;  // request index across batches
    for (size_t b = 0; b < batches.size(); ++b) {
        const PackedBatch& pb = batches[b];
        ASSERT_FALSE(pb.seq_lens.empty());
        EXPECT_LE((int)pb.tokens.size(), capacity);
        size_t base = 0, t = 0;
        for (int len : pb.seq_lens) {
            ASSERT_LT(k, want.size());
            const ScoredInput& s = want[k];
            ASSERT_EQ(len, (int)s.input.size()) << "batch " << b;
            EXPECT_LE(len, max_length);
            EXPECT_TRUE(std::equal(s.input.begin(), s.input.end(), pb.tokens.begin() + (ptrdiff_t)base));
            for (int i = s.first; i < len; ++i, ++t) {  // every continuation token, in order
                ASSERT_LT(t, pb.targets.size());
                EXPECT_EQ(pb.targets[t].row, (int)base + i);
                EXPECT_EQ(pb.targets[t].target, req[k]->continuation[i - s.first]);
            }
            base += len, ++k;
        }
        EXPECT_EQ(base, pb.tokens.size());
        EXPECT_EQ(t, pb.targets.size());
        if (b + 1 < batches.size()) {  // greedy: the next batch's first request did not fit
            EXPECT_GT(pb.tokens.size() + batches[b + 1].seq_lens[0], (size_t)capacity) << "batch " << b;
        }
    }
    EXPECT_EQ(k, want.size());
}

TEST(EvalBatch, TruncationAndCapacityLimits) {
    // A request longer than max_length keeps its last max_length + 1 tokens
    // minus the last one: exactly max_length inputs, which fill a batch of
    // capacity max_length alone.
    std::vector<int> ctx(30);
    for (int i = 0; i < 30; ++i) ctx[i] = i;
    const std::vector<std::vector<TokenPair>> groups = {{{ctx, {100, 101}}}, {{{7}, {8}}}};
    const auto b = pack_requests(groups, 16, 16);
    ASSERT_EQ(b.size(), 2u);
    EXPECT_EQ(b[0].seq_lens, std::vector<int>{16});
    EXPECT_EQ(b[0].tokens.front(), 30 + 2 - 17);  // (ctx + cont)[-17:][:-1]
    EXPECT_EQ(b[0].tokens.back(), 100);
    ASSERT_EQ(b[0].targets.size(), 2u);
    EXPECT_EQ(b[0].targets[0].row, 14);
    EXPECT_EQ(b[0].targets[0].target, 100);
    EXPECT_EQ(b[0].targets[1].row, 15);
    EXPECT_EQ(b[1].tokens, std::vector<int>{7});
    EXPECT_THROW(pack_requests(groups, 16, 15), Error);  // a max-length request would not fit
    EXPECT_THROW(pack_requests({{{{1}, {}}}}, 16, 32), Error);  // empty continuation
    EXPECT_TRUE(pack_requests({}, 16, 32).empty());
    EXPECT_THROW(pack_windows({{1, 2, 3, 4}}, 2), Error);  // 3 inputs > capacity 2
}

TEST(EvalBatch, ScoresRouteBackPerRequestInOrder) {
    // A scorer whose answer identifies the target: each request must get the
    // sum over exactly its own continuation tokens, in every batch layout.
    std::mt19937 rng(test_seed() + 1);
    const int max_length = 20;
    auto groups = random_groups(25, max_length, 1000, rng);
    groups.insert(groups.begin() + 3, std::vector<TokenPair>{});  // a document without requests
    for (int capacity : {20, 33, 64, 100000}) {
        int calls = 0;
        const auto got = score_packed(groups, max_length, capacity, [&calls](const PackedBatch& b) {
            ++calls;
            std::vector<RowScore> out;
            for (const RowTarget& t : b.targets) out.push_back({-(double)t.target, t.target % 3 != 0});
            return out;
        });
        EXPECT_EQ(calls, (int)pack_requests(groups, max_length, capacity).size());
        ASSERT_EQ(got.size(), groups.size());
        for (size_t g = 0; g < groups.size(); ++g) {
            ASSERT_EQ(got[g].size(), groups[g].size());
            for (size_t r = 0; r < groups[g].size(); ++r) {
                double sum = 0;
                bool greedy = true;
                for (int t : groups[g][r].continuation) sum -= t, greedy = greedy && t % 3 != 0;
                EXPECT_EQ(got[g][r].logprob, sum) << "capacity " << capacity << " group " << g << " request " << r;
                EXPECT_EQ(got[g][r].greedy, greedy) << "capacity " << capacity << " group " << g << " request " << r;
            }
        }
    }
    // A scorer that returns the wrong count is an error, not a silent shift.
    EXPECT_THROW(score_packed(groups, max_length, 64, [](const PackedBatch&) { return std::vector<RowScore>(1); }),
                 Error);
}

// The CPU model run sequence by sequence behind the packing equals the
// shared-prefix ModelLoglik up to float rounding (the prefix-sharing CPU
// path splits its forward calls differently): 1e-4 relative, as the
// existing from-scratch comparison (test_eval.cpp).
TEST(EvalBatch, PackedCpuScoresMatchModelLoglik) {
    std::mt19937 rng(test_seed() + 2);
    Checkpoint ck = checkpoint_open(std::string(SQ_TEST_DATA) + "/models/tiny_llama");
    Model m(model_load_f32(ck, false));
    const int max_length = 32;
    const auto groups = random_groups(12, max_length, m.config().vocab, rng);
    ModelLoglik ref(m, max_length);
    int calls = 0;
    const auto got = score_packed(groups, max_length, 80, cpu_scorer(m, &calls));
    EXPECT_GT(calls, 1);
    for (size_t g = 0; g < groups.size(); ++g) {
        const auto want = ref.score(groups[g]);
        for (size_t r = 0; r < want.size(); ++r) {
            EXPECT_NEAR(got[g][r].logprob, want[r].logprob, 1e-4 * (1 + std::fabs(want[r].logprob)))
                << "group " << g << " request " << r;
            EXPECT_EQ(got[g][r].greedy, want[r].greedy) << "group " << g << " request " << r;
        }
    }
    // Windows: two per batch of 20 (9 inputs each), the odd one alone.
    std::vector<std::vector<int>> wins;
    for (int w = 0; w < 5; ++w) wins.push_back(random_tokens(10, m.config().vocab, rng));
    calls = 0;
    const auto lps = rolling_packed(wins, 20, cpu_scorer(m, &calls));
    EXPECT_EQ(calls, 3);
    ASSERT_EQ(lps.size(), wins.size());
    for (size_t w = 0; w < wins.size(); ++w) {
        const auto want = ref.rolling_logprobs(wins[w]);
        ASSERT_EQ(lps[w].size(), want.size());
        for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(lps[w][i], want[i], 1e-4) << "window " << w << " token " << i;
    }
}

TEST(EvalBatch, ChunkEndFillsTheBudget) {
    const std::vector<int64_t> t = {5, 5, 5, 20, 1, 1};
    EXPECT_EQ(chunk_end(t, 0, 0), 1u);    // no batching: one document
    EXPECT_EQ(chunk_end(t, 0, 10), 2u);   // 5 + 5
    EXPECT_EQ(chunk_end(t, 0, 14), 2u);
    EXPECT_EQ(chunk_end(t, 2, 10), 3u);   // 20 alone would not fit: at least one
    EXPECT_EQ(chunk_end(t, 3, 10), 4u);   // a document over budget still goes alone
    EXPECT_EQ(chunk_end(t, 4, 10), 6u);
    EXPECT_THROW(chunk_end(t, 6, 10), Error);
}

// ---------- the harness with a batching source ----------

std::vector<int> bytes(std::string_view s) { return std::vector<int>(s.begin(), s.end()); }

TextEncoder byte_encoder() {
    TextEncoder e;
    e.encode = [](std::string_view s) { return bytes(s); };
    e.prefix = 0;
    return e;
}

// Scores from the request's bytes; batch_tokens > 0 makes it a batching
// source that records the chunks it is given (and still answers per group).
struct RecordingSource : LoglikSource {
    int64_t batch = 0;
    std::vector<size_t> chunk_docs;
    std::vector<int64_t> chunk_tokens;
    std::vector<size_t> window_batches;
    std::vector<ContinuationScore> score(const std::vector<TokenPair>& group) override {
        std::vector<ContinuationScore> out;
        for (const auto& p : group) {
            double h = 0;
            for (int c : p.context) h = std::fmod(h * 31 + c, 997.0);
            for (int c : p.continuation) h = std::fmod(h * 17 + c, 991.0);
            out.push_back({-h / 100.0, p.continuation.size() % 2 == 0});
        }
        return out;
    }
    std::vector<std::vector<ContinuationScore>> score_batch(const std::vector<std::vector<TokenPair>>& groups) override {
        chunk_docs.push_back(groups.size());
        int64_t tok = 0;
        for (const auto& g : groups) tok += group_plan(g, max_length()).packed_tokens;
        chunk_tokens.push_back(tok);
        return LoglikSource::score_batch(groups);
    }
    std::vector<double> rolling_logprobs(const std::vector<int>& t) override {
        std::vector<double> out;
        for (size_t i = 1; i < t.size(); ++i) out.push_back(-0.001 * t[i] - 0.01 * (double)i);
        return out;
    }
    std::vector<std::vector<double>> rolling_logprobs_batch(const std::vector<std::vector<int>>& w) override {
        window_batches.push_back(w.size());
        return LoglikSource::rolling_logprobs_batch(w);
    }
    int64_t batch_tokens() const override { return batch; }
    int max_length() const override { return 16; }
};

TEST(EvalBatch, HarnessChunksDocumentsAndKeepsResults) {
    const fs::path dir = fs::temp_directory_path() / ("sq_test_eval_batch_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir / "tasks");
    fs::create_directories(dir / "wikitext2");
    {
        std::ofstream f(dir / "tasks" / "openbook_qa.jsonl");
        for (int i = 0; i < 23; ++i)
            f << R"({"query":"question )" << i << std::string(i % 7, 'q') << R"(","choices":["a)" << i
              << R"(","bb","ccc )" << i % 3 << R"("],"gold":)" << i % 3 << "}\n";
    }
    {
        std::ofstream f(dir / "wikitext2" / "wiki.test.raw");
        for (int i = 0; i < 40; ++i) f << "line " << i << " of text\n";
    }
    EvalOptions o;
    eval_select("wikitext2,openbookqa", o);
    o.data_dir = dir.string();
    o.ctx = 16;
    o.progress = false;
    RecordingSource one, many;
    many.batch = 100;
    const EvalResult a = eval_run(one, byte_encoder(), o), b = eval_run(many, byte_encoder(), o);
    // One document per call without batching; chunks within the budget with it.
    EXPECT_EQ(one.chunk_docs, std::vector<size_t>(23, 1));
    EXPECT_GT(many.chunk_docs.size(), 1u);
    EXPECT_LT(many.chunk_docs.size(), 23u);
    size_t docs = 0;
    for (size_t c = 0; c < many.chunk_docs.size(); ++c) {
        docs += many.chunk_docs[c];
        if (many.chunk_docs[c] > 1) {
            EXPECT_LE(many.chunk_tokens[c], many.batch) << "chunk " << c;
        }
    }
    EXPECT_EQ(docs, 23u);
    // Windows of 16 tokens: 15 inputs each, 100 / 15 = 6 windows per call.
    ASSERT_FALSE(many.window_batches.empty());
    EXPECT_EQ(many.window_batches[0], std::min<size_t>(6, (size_t)b.runs[0].ppl.windows));
    EXPECT_EQ(one.window_batches, std::vector<size_t>(a.runs[0].ppl.windows, 1));
    // Identical results, in order.
    ASSERT_EQ(a.runs.size(), b.runs.size());
    for (size_t i = 0; i < a.runs.size(); ++i) {
        EXPECT_EQ(a.runs[i].lines, b.runs[i].lines);
        ASSERT_EQ(a.runs[i].scores.size(), b.runs[i].scores.size());
        for (size_t d = 0; d < a.runs[i].scores.size(); ++d)
            for (size_t r = 0; r < a.runs[i].scores[d].size(); ++r) {
                EXPECT_EQ(a.runs[i].scores[d][r].logprob, b.runs[i].scores[d][r].logprob);
                EXPECT_EQ(a.runs[i].scores[d][r].greedy, b.runs[i].scores[d][r].greedy);
            }
        ASSERT_EQ(a.runs[i].metrics.size(), b.runs[i].metrics.size());
        for (size_t k = 0; k < a.runs[i].metrics.size(); ++k)
            EXPECT_EQ(a.runs[i].metrics[k].value, b.runs[i].metrics[k].value) << a.runs[i].task;
    }
    EXPECT_EQ(a.runs[0].ppl.ppl, b.runs[0].ppl.ppl);
    fs::remove_all(dir);
}

}  // namespace
}  // namespace sq
