// Varlen packing of log-likelihood requests and perplexity windows (batch.h).
#include "eval/batch.h"

#include "core/error.h"

namespace sq {

std::vector<PackedBatch> pack_requests(const std::vector<std::vector<TokenPair>>& groups, int max_length,
                                       int capacity) {
    SQ_CHECK(max_length >= 2, "pack_requests: max length ", max_length, " too small");
    SQ_CHECK(capacity >= max_length, "pack_requests: batch capacity ", capacity, " < max length ", max_length,
             " (a request of max length would not fit)");
    std::vector<PackedBatch> out;
    for (const auto& group : groups) {
        for (const TokenPair& p : group) {
            const ScoredInput s = scored_input(p, max_length);
            const int n = (int)s.input.size();
            if (out.empty() || (int)out.back().tokens.size() + n > capacity) out.emplace_back();
            PackedBatch& b = out.back();
            const int base = (int)b.tokens.size();
            b.tokens.insert(b.tokens.end(), s.input.begin(), s.input.end());
            b.seq_lens.push_back(n);
            for (int i = s.first; i < n; ++i) b.targets.push_back({base + i, p.continuation[i - s.first]});
        }
    }
    return out;
}

std::vector<std::vector<ContinuationScore>> score_packed(const std::vector<std::vector<TokenPair>>& groups,
                                                         int max_length, int capacity, const PackedScorer& scorer) {
    std::vector<std::vector<ContinuationScore>> out(groups.size());
    for (size_t g = 0; g < groups.size(); ++g) out[g].resize(groups[g].size());
    const std::vector<PackedBatch> batches = pack_requests(groups, max_length, capacity);
    // Results walk the requests in packing order: (group, request, continuation token).
    size_t g = 0, r = 0, i = 0;
    auto skip_empty = [&] {
        while (g < groups.size() && r >= groups[g].size()) ++g, r = 0;
    };
    skip_empty();
    for (const PackedBatch& b : batches) {
        const std::vector<RowScore> res = scorer(b);
        SQ_CHECK(res.size() == b.targets.size(), "packed scorer returned ", res.size(), " scores for ",
                 b.targets.size(), " targets");
        for (const RowScore& x : res) {
            SQ_CHECK(g < groups.size(), "score_packed: more scores than continuation tokens");
            ContinuationScore& cs = out[g][r];
            if (i == 0) cs.greedy = true;
            cs.logprob += x.logprob;
            cs.greedy = cs.greedy && x.greedy;
            if (++i == groups[g][r].continuation.size()) {
                i = 0, ++r;
                skip_empty();
            }
        }
    }
    SQ_CHECK(g == groups.size(), "score_packed: fewer scores than continuation tokens");
    return out;
}

std::vector<PackedBatch> pack_windows(const std::vector<std::vector<int>>& windows, int capacity) {
    std::vector<PackedBatch> out;
    for (const auto& w : windows) {
        const int n = (int)w.size() - 1;  // the last token is never an input
        SQ_CHECK(n >= 1, "perplexity window of ", w.size(), " tokens (need ≥ 2)");
        SQ_CHECK(n <= capacity, "perplexity window of ", w.size(), " tokens > batch capacity ", capacity, " + 1");
        if (out.empty() || (int)out.back().tokens.size() + n > capacity) out.emplace_back();
        PackedBatch& b = out.back();
        const int base = (int)b.tokens.size();
        b.tokens.insert(b.tokens.end(), w.begin(), w.end() - 1);
        b.seq_lens.push_back(n);
        for (int i = 0; i < n; ++i) b.targets.push_back({base + i, w[i + 1]});
    }
    return out;
}

std::vector<std::vector<double>> rolling_packed(const std::vector<std::vector<int>>& windows, int capacity,
                                                const PackedScorer& scorer) {
    std::vector<std::vector<double>> out(windows.size());
    size_t w = 0;
    for (const PackedBatch& b : pack_windows(windows, capacity)) {
        const std::vector<RowScore> res = scorer(b);
        SQ_CHECK(res.size() == b.targets.size(), "packed scorer returned ", res.size(), " scores for ",
                 b.targets.size(), " targets");
        size_t k = 0;
        for (int len : b.seq_lens) {
            out[w].resize(len);
            for (int i = 0; i < len; ++i) out[w][i] = res[k++].logprob;
            ++w;
        }
    }
    return out;
}

size_t chunk_end(const std::vector<int64_t>& tokens, size_t begin, int64_t budget) {
    SQ_CHECK(begin < tokens.size(), "chunk_end: begin ", begin, " past ", tokens.size(), " documents");
    size_t end = begin + 1;
    int64_t sum = tokens[begin];
    if (budget <= 0) return end;
    while (end < tokens.size() && sum + tokens[end] <= budget) sum += tokens[end++];
    return end;
}

}  // namespace sq
