// CudaLoglik: LoglikSource on ModelCuda, and the cpu|cuda factory.
//
// The plan is ModelLoglik's (group_plan: common prefix once, each request
// branches from its KV cache), but each forward call asks the device only for
// the rows it scores: the shared prefix in one call (all its scored rows,
// every request's targets), then one call per request that extends past it.
// A perplexity window is one call of n − 1 tokens.
//
// Batched (score_batch, rolling_logprobs_batch; the harness hands over
// chunks of documents filling batch_tokens()): every request's whole scored
// input is its own sequence in a varlen batch of up to batch_tokens() tokens
// (eval/batch.h, ModelCuda::forward_score_varlen), no prefix sharing: the
// GPU has compute to spare and one call per batch replaces a few hundred
// latency-bound small calls. SQ_CUDA_BATCH_TOKENS sets the batch size
// (default kBatchTokens; 0 = the one-document path above).
#include "eval/loglik_cuda.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "core/error.h"

#ifdef SPECQUANT_HAS_CUDA
#include <cstdio>

#include "eval/batch.h"

#include "kernels/cuda/device_info.h"
#include "model/model_cuda.h"
#endif

namespace sq {

#ifdef SPECQUANT_HAS_CUDA

namespace {

// Tokens per varlen batch: 16384 rows make every GEMM of a 135M model
// (K, N = 576..1536) a few waves of 128×128 tiles on 132 SMs, and the
// scratch (KV cache of 16384 rows per layer, activations) stays ~2 GB there.
constexpr int kBatchTokens = 16384;

int batch_tokens_from_env(int max_length) {
    const char* e = std::getenv("SQ_CUDA_BATCH_TOKENS");
    if (!e || !*e) return std::max(kBatchTokens, max_length);
    char* end = nullptr;
    const long v = std::strtol(e, &end, 10);
    SQ_CHECK(end && *end == 0 && v >= 0 && v <= (1L << 24), "SQ_CUDA_BATCH_TOKENS='", e,
             "': expected a token count (0 = no batching)");
    SQ_CHECK(v == 0 || v >= max_length, "SQ_CUDA_BATCH_TOKENS=", v, " is below the context length ", max_length,
             " (a request of that length would not fit; 0 = no batching)");
    return (int)v;
}

class CudaLoglik : public LoglikSource {
public:
    CudaLoglik(const Model& model, int max_length, int batch)
        : m_(model.weights(), std::max(max_length, batch)), max_length_(max_length), batch_(batch) {
        SQ_CHECK(max_length >= 2, "context length ", max_length, " too small");
        std::fprintf(stderr, "%sCUDA model: %.0f MiB on the device (weights, KV cache of %d, scratch); %s\n",
                     cuda_device_summary().c_str(), (double)m_.device_bytes() / (1 << 20), m_.capacity(),
                     batch_ > 0 ? str("varlen batches of ", batch_, " tokens").c_str() : "one document per call");
    }

    std::vector<std::vector<ContinuationScore>> score_batch(const std::vector<std::vector<TokenPair>>& groups) override {
        if (batch_ <= 0) return LoglikSource::score_batch(groups);
        return score_packed(groups, max_length_, batch_, [this](const PackedBatch& b) { return run_packed(b); });
    }

    std::vector<std::vector<double>> rolling_logprobs_batch(const std::vector<std::vector<int>>& windows) override {
        if (batch_ <= 0) return LoglikSource::rolling_logprobs_batch(windows);
        for (const auto& w : windows)
            SQ_CHECK(w.size() >= 2 && (int)w.size() <= max_length_, "perplexity window of ", w.size(),
                     " tokens (need 2..", max_length_, ")");
        return rolling_packed(windows, batch_, [this](const PackedBatch& b) { return run_packed(b); });
    }

    int64_t batch_tokens() const override { return batch_; }

    std::vector<ContinuationScore> score(const std::vector<TokenPair>& group) override {
        const GroupPlan plan = group_plan(group, max_length_);
        // lp[r][i]: log-prob of continuation token i of request r (filled by the calls below).
        std::vector<std::vector<RowScore>> per(group.size());
        for (size_t r = 0; r < group.size(); ++r)
            per[r].resize(plan.inputs[r].input.size() - plan.inputs[r].first);
        m_.truncate(0);
        if (plan.shared > 0) {
            std::vector<RowTarget> tq;
            std::vector<std::pair<int, int>> who;  // (request, continuation index)
            for (size_t r = 0; r < group.size(); ++r) {
                const ScoredInput& s = plan.inputs[r];
                const int n = (int)s.input.size();
                for (int p = s.first; p < std::min(n, plan.shared); ++p) {
                    tq.push_back({p, group[r].continuation[p - s.first]});
                    who.push_back({(int)r, p - s.first});
                }
            }
            const std::vector<RowScore> res = run(plan.inputs[0].input.data(), plan.shared, tq);
            for (size_t i = 0; i < res.size(); ++i) per[who[i].first][who[i].second] = res[i];
        }
        for (size_t r = 0; r < group.size(); ++r) {
            const ScoredInput& s = plan.inputs[r];
            const int n = (int)s.input.size();
            if (n <= plan.shared) continue;
            m_.truncate(plan.shared);
            std::vector<RowTarget> tq;
            for (int p = std::max(s.first, plan.shared); p < n; ++p)
                tq.push_back({p - plan.shared, group[r].continuation[p - s.first]});
            const std::vector<RowScore> res = run(s.input.data() + plan.shared, n - plan.shared, tq);
            const int c0 = std::max(s.first, plan.shared) - s.first;
            for (size_t i = 0; i < res.size(); ++i) per[r][c0 + i] = res[i];
        }
        std::vector<ContinuationScore> out(group.size());
        for (size_t r = 0; r < group.size(); ++r) {
            ContinuationScore cs;
            cs.greedy = true;
            for (const RowScore& x : per[r]) {  // continuation order, as ModelLoglik sums
                cs.logprob += x.logprob;
                cs.greedy = cs.greedy && x.greedy;
            }
            out[r] = cs;
        }
        return out;
    }

    std::vector<double> rolling_logprobs(const std::vector<int>& tokens) override {
        const int n = (int)tokens.size();
        SQ_CHECK(n >= 2 && n <= max_length_, "perplexity window of ", n, " tokens (need 2..", max_length_, ")");
        m_.truncate(0);
        std::vector<RowTarget> tq(n - 1);
        for (int i = 0; i < n - 1; ++i) tq[i] = {i, tokens[i + 1]};
        const std::vector<RowScore> res = run(tokens.data(), n - 1, tq);  // the last token is never an input
        std::vector<double> out(n - 1);
        for (int i = 0; i < n - 1; ++i) out[i] = res[i].logprob;
        return out;
    }

    int max_length() const override { return max_length_; }
    int64_t tokens_forwarded() const override { return forwarded_; }
    int64_t forward_calls() const override { return calls_; }

private:
    std::vector<RowScore> run(const int* tokens, int n, const std::vector<RowTarget>& tq) {
        forwarded_ += n;
        ++calls_;
        return m_.forward_score(tokens, n, tq);
    }
    std::vector<RowScore> run_packed(const PackedBatch& b) {
        forwarded_ += (int64_t)b.tokens.size();
        ++calls_;
        return m_.forward_score_varlen(b.tokens.data(), b.seq_lens, b.targets);
    }

    ModelCuda m_;
    int max_length_, batch_;
    int64_t forwarded_ = 0, calls_ = 0;
};

}  // namespace

bool cuda_built() { return true; }

#else

bool cuda_built() { return false; }

#endif

std::unique_ptr<LoglikSource> loglik_source_make(const Model& model, int max_length, const std::string& device,
                                                 int batch_tokens) {
    if (device == "cpu") return std::make_unique<ModelLoglik>(model, max_length);
    if (device == "cuda") {
#ifdef SPECQUANT_HAS_CUDA
        if (batch_tokens < 0) batch_tokens = batch_tokens_from_env(max_length);
        SQ_CHECK(batch_tokens == 0 || batch_tokens >= max_length, "CUDA source: batch of ", batch_tokens,
                 " tokens below the context length ", max_length);
        return std::make_unique<CudaLoglik>(model, max_length, batch_tokens);
#else
        (void)batch_tokens;
        fail("--device cuda: this specquant was built without CUDA (configure with -DSPECQUANT_CUDA=ON)");
#endif
    }
    fail("--device: unknown device '", device, "' (cpu or cuda)");
}

}  // namespace sq
