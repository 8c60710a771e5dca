// CudaLoglik: LoglikSource on ModelCuda, and the cpu|cuda factory.
//
// The plan is ModelLoglik's (group_plan: common prefix once, each request
// branches from its KV cache), but each forward call asks the device only for
// the rows it scores: the shared prefix in one call (all its scored rows,
// every request's targets), then one call per request that extends past it.
// A perplexity window is one call of n − 1 tokens.
#include "eval/loglik_cuda.h"

#include <algorithm>

#include "core/error.h"

#ifdef SPECQUANT_HAS_CUDA
#include <cstdio>

#include "kernels/cuda/device_info.h"
#include "model/model_cuda.h"
#endif

namespace sq {

#ifdef SPECQUANT_HAS_CUDA

namespace {

class CudaLoglik : public LoglikSource {
public:
    CudaLoglik(const Model& model, int max_length) : m_(model.weights(), max_length), max_length_(max_length) {
        SQ_CHECK(max_length >= 2, "context length ", max_length, " too small");
        std::fprintf(stderr, "%sCUDA model: %.0f MiB on the device (weights, KV cache of %d, scratch)\n",
                     cuda_device_summary().c_str(), (double)m_.device_bytes() / (1 << 20), max_length);
    }

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

    ModelCuda m_;
    int max_length_;
    int64_t forwarded_ = 0, calls_ = 0;
};

}  // namespace

bool cuda_built() { return true; }

#else

bool cuda_built() { return false; }

#endif

std::unique_ptr<LoglikSource> loglik_source_make(const Model& model, int max_length, const std::string& device) {
    if (device == "cpu") return std::make_unique<ModelLoglik>(model, max_length);
    if (device == "cuda") {
#ifdef SPECQUANT_HAS_CUDA
        return std::make_unique<CudaLoglik>(model, max_length);
#else
        fail("--device cuda: this specquant was built without CUDA (configure with -DSPECQUANT_CUDA=ON)");
#endif
    }
    fail("--device: unknown device '", device, "' (cpu or cuda)");
}

}  // namespace sq
