// ModelLoglik: LoglikSource backed by a Model. Kept apart from loglik.cpp
// (pure) and text_encoder.cpp (Tokenizer) so each links on its own.
#include <algorithm>

#include "core/error.h"
#include "core/threads.h"
#include "eval/loglik.h"

namespace sq {

ModelLoglik::ModelLoglik(const Model& model, int max_length)
    : model_(model), max_length_(max_length), cache_(model.make_cache(max_length)) {
    SQ_CHECK(max_length >= 2, "context length ", max_length, " too small");
}

// Forwards tokens from cache_.pos; with all_logits the rows are appended to
// `logits` (chunked so a 2048-token window never holds 400 MB of logits at once
// inside the model), else `logits` gets the last row only.
// group_plan() counts the same tokens and calls; keep the two in step.
void ModelLoglik::run(const int* tokens, int n, bool all_logits, std::vector<float>& logits) {
    const int V = model_.config().vocab;
    forwarded_ += n;
    if (!all_logits) {
        ++calls_;
        logits.resize(V);
        model_.forward(tokens, n, cache_, logits.data(), false);
        return;
    }
    size_t base = logits.size();
    logits.resize(base + (size_t)n * V);
    for (int i = 0; i < n; i += kLogitChunk) {
        int m = std::min(kLogitChunk, n - i);
        ++calls_;
        model_.forward(tokens + i, m, cache_, logits.data() + base + (size_t)i * V, true);
    }
}

std::vector<ContinuationScore> ModelLoglik::score(const std::vector<TokenPair>& group) {
    const int V = model_.config().vocab;
    GroupPlan plan = group_plan(group, max_length_);
    const std::vector<int>& in0 = plan.inputs[0].input;
    std::vector<float> shared_rows, scratch;
    cache_.truncate(0);
    if (plan.shared - plan.shared_logits == 1) {
        // Multiple choice: only the last context row is needed, which is what a
        // last-row forward returns. One call: at small n a forward costs about a
        // full pass over the weights whatever n is (measured: n=1 0.44 s, n=8 1.0 s).
        run(in0.data(), plan.shared, false, shared_rows);
    } else {
        if (plan.shared_logits > 0) run(in0.data(), plan.shared_logits, false, scratch);
        if (plan.shared > plan.shared_logits)
            run(in0.data() + plan.shared_logits, plan.shared - plan.shared_logits, true, shared_rows);
    }

    std::vector<ContinuationScore> out(group.size());
    for (size_t r = 0; r < group.size(); ++r) {
        const ScoredInput& s = plan.inputs[r];
        const int n = (int)s.input.size();
        std::vector<float> branch;
        if (n > plan.shared) {
            cache_.truncate(plan.shared);
            run(s.input.data() + plan.shared, n - plan.shared, true, branch);
        }
        ContinuationScore cs;
        cs.greedy = true;
        const std::vector<int>& cont = group[r].continuation;
        for (int p = s.first; p < n; ++p) {
            const float* row = p < plan.shared ? &shared_rows[(size_t)(p - plan.shared_logits) * V]
                                               : &branch[(size_t)(p - plan.shared) * V];
            bool top = false;
            cs.logprob += logprob_of(row, V, cont[p - s.first], &top);
            cs.greedy = cs.greedy && top;
        }
        out[r] = cs;
    }
    return out;
}

std::vector<double> ModelLoglik::rolling_logprobs(const std::vector<int>& tokens) {
    const int V = model_.config().vocab;
    const int n = (int)tokens.size();
    SQ_CHECK(n >= 2 && n <= max_length_, "perplexity window of ", n, " tokens (need 2..", max_length_, ")");
    std::vector<double> out(n - 1);
    std::vector<float> rows;
    cache_.truncate(0);
    for (int i = 0; i < n - 1; i += kLogitChunk) {
        int m = std::min(kLogitChunk, n - 1 - i);  // the last token is never an input
        rows.clear();
        run(tokens.data() + i, m, true, rows);
        parallel_for(m, [&](int64_t r) { out[i + r] = logprob_of(&rows[(size_t)r * V], V, tokens[i + r + 1], nullptr); });
    }
    return out;
}

}  // namespace sq
