// Packing many log-likelihood requests into few forward calls (varlen
// batches) for sources with compute to spare (CudaLoglik): every request's
// scored input (scored_input(): context + continuation, truncated to
// max_length exactly as lm-eval) is its own sequence, no prefix sharing, and
// sequences are concatenated into batches of at most `capacity` tokens. The
// scorer runs one batch and returns one RowScore per target; the results
// are summed back per request in continuation order, as ModelLoglik sums.
// Pure: no Model here, so the planning is unit-tested without a GPU
// (tests/test_eval.cpp, EvalBatch*).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "eval/loglik.h"
#include "model/row_score.h"

namespace sq {

// One forward call's worth of independent sequences, back to back.
struct PackedBatch {
    std::vector<int> tokens;         // Σ seq_lens tokens
    std::vector<int> seq_lens;       // one per sequence, each ≥ 1
    std::vector<RowTarget> targets;  // rows of `tokens` to score, with their target ids
};

// Scores one batch: one RowScore per target, in order.
using PackedScorer = std::function<std::vector<RowScore>(const PackedBatch&)>;

// Requests in order (group by group, request by request), each its own
// sequence, filled greedily into batches of ≤ capacity tokens; a request
// never straddles two batches, so a batch is full when the next request
// does not fit. Targets: every continuation token, in continuation order.
// Throws when capacity < max_length (a request might not fit) or a request
// is malformed (scored_input's errors).
std::vector<PackedBatch> pack_requests(const std::vector<std::vector<TokenPair>>& groups, int max_length,
                                       int capacity);

// out[g][r] = score of request r of group g: pack_requests, then the scorer
// batch by batch; logprob summed in continuation order, greedy = all rows.
std::vector<std::vector<ContinuationScore>> score_packed(const std::vector<std::vector<TokenPair>>& groups,
                                                         int max_length, int capacity, const PackedScorer& scorer);

// Perplexity windows (rolling_logprobs semantics): window w is one sequence
// of its first n − 1 tokens, row i scoring token i + 1; whole windows per
// batch of ≤ capacity tokens. out[w][i] = log p(w[i+1] | w[0..i]).
std::vector<PackedBatch> pack_windows(const std::vector<std::vector<int>>& windows, int capacity);
std::vector<std::vector<double>> rolling_packed(const std::vector<std::vector<int>>& windows, int capacity,
                                                const PackedScorer& scorer);

// The harness's chunks of documents: the chunk starting at `begin` ends
// before the first document that would take the sum of `tokens` over
// `budget`; it holds at least one document. budget ≤ 0: one document each.
size_t chunk_end(const std::vector<int64_t>& tokens, size_t begin, int64_t budget);

}  // namespace sq
