// Log-likelihood of continuations given a context, as lm-evaluation-harness
// computes it, behind an interface that tests can mock.
//
//   encode_pair: lm-eval's context/continuation tokenization
//   LoglikSource: scores token requests (ModelLoglik runs a Model; tests mock it)
//
// Requests of one document are scored as a group: their longest common token
// prefix is run once and every request branches from its KV cache
// (KVCache::truncate), so a 4-choice question costs one context plus four
// short continuations.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "model/model.h"

namespace sq {

class Tokenizer;

// Text -> tokens, with the sequence-start conventions of the checkpoint.
struct TextEncoder {
    std::function<std::vector<int>(std::string_view)> encode;  // never adds BOS
    int bos = -1;     // >= 0: prepended to every context (tokenizer's add_bos_default)
    int prefix = -1;  // lm-eval prefix_token_id: stands in for an empty context (BOS, else EOS)
};
TextEncoder text_encoder(const Tokenizer& tok);  // uses tok.add_bos_default()

struct TokenPair {
    std::vector<int> context, continuation;
};

// lm-eval HFLM._encode_pair: trailing whitespace of the context moves to the
// front of the continuation; whole = encode(context + continuation), ctx =
// encode(context), continuation tokens = whole[len(ctx):]. The scored input is
// ctx + continuation tokens (not `whole`), exactly as lm-eval feeds the model.
// Throws sq::Error when the continuation encodes to no tokens.
TokenPair encode_pair(const TextEncoder& enc, std::string_view context, std::string_view continuation);

struct ContinuationScore {
    double logprob = 0.0;  // sum over continuation tokens of log p(token | everything before)
    bool greedy = false;   // argmax at every continuation position equals the token
};

class LoglikSource {
public:
    virtual ~LoglikSource() = default;
    // One score per request, in order.
    virtual std::vector<ContinuationScore> score(const std::vector<TokenPair>& group) = 0;
    // out[i] = log p(tokens[i+1] | tokens[0..i]) for i in [0, n-1): one window of perplexity.
    virtual std::vector<double> rolling_logprobs(const std::vector<int>& tokens) = 0;
    // Many documents at once: out[g] = score(groups[g]). The default scores
    // group by group; a source that packs requests of several documents into
    // one forward call (CudaLoglik) overrides it and batch_tokens().
    virtual std::vector<std::vector<ContinuationScore>> score_batch(const std::vector<std::vector<TokenPair>>& groups);
    // Many windows at once: out[w] = rolling_logprobs(windows[w]).
    virtual std::vector<std::vector<double>> rolling_logprobs_batch(const std::vector<std::vector<int>>& windows);
    // Tokens of packed scored inputs (GroupPlan::packed_tokens) the harness
    // should hand score_batch per call; 0: one document per call.
    virtual int64_t batch_tokens() const { return 0; }
    virtual int max_length() const = 0;
    virtual int64_t tokens_forwarded() const { return 0; }  // for tokens/s
    virtual int64_t forward_calls() const { return 0; }
};

// Rows of logits one Model::forward materializes at most: 256 x 49152 vocab x
// 4 B = 50 MB, so a 2048-token window never holds 400 MB of logits at once.
constexpr int kLogitChunk = 256;

// lm-eval truncation: input = (context + continuation)[-(max_length + 1):][:-1].
// first = index in `input` of the logits row that predicts continuation[0].
struct ScoredInput {
    std::vector<int> input;
    int first = 0;
};
ScoredInput scored_input(const TokenPair& p, int max_length);

// How the group is run: common prefix length, where its logits start, and
// the tokens forwarded in total (also the progress bar's unit of work).
struct GroupPlan {
    std::vector<ScoredInput> inputs;
    int shared = 0;         // tokens run once for all requests
    int shared_logits = 0;  // logits needed from position shared_logits on within the shared part
    int64_t forward_tokens = 0;
    int64_t forward_calls = 0;  // Model::forward calls ModelLoglik makes for it
    int64_t packed_tokens = 0;  // Σ input sizes: tokens a varlen batch forwards for it (eval/batch.h)
};
GroupPlan group_plan(const std::vector<TokenPair>& group, int max_length);

// log_softmax(row)[target] in double, and whether target is the first argmax.
double logprob_of(const float* row, int vocab, int target, bool* is_argmax);

// The real source: a Model (any Linear backend), one KV cache of max_length.
class ModelLoglik : public LoglikSource {
public:
    ModelLoglik(const Model& model, int max_length);
    std::vector<ContinuationScore> score(const std::vector<TokenPair>& group) override;
    std::vector<double> rolling_logprobs(const std::vector<int>& tokens) override;
    int max_length() const override { return max_length_; }
    int64_t tokens_forwarded() const override { return forwarded_; }
    int64_t forward_calls() const override { return calls_; }

private:
    void run(const int* tokens, int n, bool all_logits, std::vector<float>& logits);
    const Model& model_;
    int max_length_;
    KVCache cache_;
    int64_t forwarded_ = 0, calls_ = 0;
};

}  // namespace sq
