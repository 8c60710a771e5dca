// Pure parts of the log-likelihood machinery: tokenization of requests,
// truncation, grouping plans, log-softmax. No Model or Tokenizer calls here.
#include "eval/loglik.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace sq {

namespace {

// Python's str.isspace() for the ASCII range (what str.rstrip() removes);
// non-ASCII spaces (U+00A0, U+3000, ...) never end a prompt in our data.
bool py_space(unsigned char c) { return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f); }

std::vector<int> with_bos(const TextEncoder& enc, std::string_view s) {
    std::vector<int> t;
    if (enc.bos >= 0) t.push_back(enc.bos);
    std::vector<int> body = enc.encode(s);
    t.insert(t.end(), body.begin(), body.end());
    return t;
}

}  // namespace

TokenPair encode_pair(const TextEncoder& enc, std::string_view context, std::string_view continuation) {
    TokenPair p;
    if (context.empty()) {
        // lm-eval: an empty context becomes the prefix token and the continuation is encoded alone.
        SQ_CHECK(enc.prefix >= 0, "encode_pair: empty context and the tokenizer has neither BOS nor EOS");
        p.context = {enc.prefix};
        p.continuation = enc.encode(continuation);
    } else {
        size_t keep = context.size();
        while (keep > 0 && py_space((unsigned char)context[keep - 1])) --keep;
        std::string ctx(context.substr(0, keep));
        std::string cont = std::string(context.substr(keep)) + std::string(continuation);
        std::vector<int> whole = with_bos(enc, ctx + cont);
        p.context = with_bos(enc, ctx);
        if (whole.size() > p.context.size())
            p.continuation.assign(whole.begin() + (ptrdiff_t)p.context.size(), whole.end());
    }
    SQ_CHECK(!p.continuation.empty(), "encode_pair: continuation \"", std::string(continuation),
             "\" encodes to no tokens after the context");
    return p;
}

ScoredInput scored_input(const TokenPair& p, int max_length) {
    SQ_CHECK(!p.continuation.empty() && !p.context.empty(), "scored_input: empty context or continuation");
    SQ_CHECK((int64_t)p.continuation.size() <= max_length, "continuation of ", p.continuation.size(),
             " tokens does not fit the context length ", max_length, " (raise -c)");
    std::vector<int> full = p.context;
    full.insert(full.end(), p.continuation.begin(), p.continuation.end());
    size_t drop = full.size() > (size_t)max_length + 1 ? full.size() - (size_t)max_length - 1 : 0;
    ScoredInput s;
    s.input.assign(full.begin() + (ptrdiff_t)drop, full.end() - 1);
    s.first = (int)(full.size() - drop - p.continuation.size()) - 1;
    return s;
}

GroupPlan group_plan(const std::vector<TokenPair>& group, int max_length) {
    SQ_CHECK(!group.empty(), "group_plan: no requests");
    GroupPlan g;
    for (const auto& p : group) g.inputs.push_back(scored_input(p, max_length));
    size_t shared = g.inputs[0].input.size();
    int first = g.inputs[0].first;
    for (const auto& s : g.inputs) {
        size_t n = std::min(shared, s.input.size()), k = 0;
        while (k < n && s.input[k] == g.inputs[0].input[k]) ++k;
        shared = k;
        first = std::min(first, s.first);
    }
    g.shared = (int)shared;
    g.shared_logits = std::min(g.shared, first);
    // Mirrors ModelLoglik::score: the shared part in one last-row call when it
    // holds a single scored row, else a prefix call and an all-logits call;
    // then one all-logits call per request that extends past the shared part.
    auto calls = [](int n, bool all) -> int64_t { return n <= 0 ? 0 : all ? (n + kLogitChunk - 1) / kLogitChunk : 1; };
    if (g.shared - g.shared_logits == 1) {
        g.forward_calls = calls(g.shared, false);
    } else {
        g.forward_calls = calls(g.shared_logits, false) + calls(g.shared - g.shared_logits, true);
    }
    g.forward_tokens = g.shared;
    for (const auto& s : g.inputs) {
        g.packed_tokens += (int64_t)s.input.size();
        const int rest = (int)s.input.size() - g.shared;
        g.forward_tokens += rest;
        g.forward_calls += calls(rest, true);
    }
    return g;
}

std::vector<std::vector<ContinuationScore>> LoglikSource::score_batch(
    const std::vector<std::vector<TokenPair>>& groups) {
    std::vector<std::vector<ContinuationScore>> out;
    out.reserve(groups.size());
    for (const auto& g : groups) out.push_back(score(g));
    return out;
}

std::vector<std::vector<double>> LoglikSource::rolling_logprobs_batch(const std::vector<std::vector<int>>& windows) {
    std::vector<std::vector<double>> out;
    out.reserve(windows.size());
    for (const auto& w : windows) out.push_back(rolling_logprobs(w));
    return out;
}

double logprob_of(const float* row, int vocab, int target, bool* is_argmax) {
    SQ_CHECK(target >= 0 && target < vocab, "token id ", target, " out of range [0, ", vocab, ")");
    int best = 0;
    for (int i = 1; i < vocab; ++i)
        if (row[i] > row[best]) best = i;
    const double mx = row[best];
    double sum = 0.0;
    for (int i = 0; i < vocab; ++i) sum += std::exp((double)row[i] - mx);
    if (is_argmax) *is_argmax = (best == target);
    return (double)row[target] - mx - std::log(sum);
}

}  // namespace sq
