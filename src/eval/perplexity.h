// WikiText-2 perplexity (data/README.md): strip '\r', join the file's lines
// with "\n\n", tokenize once (BOS first when the tokenizer asks for one),
// cut into non-overlapping windows of ctx tokens (tail dropped), score every
// token of a window but the first, PPL = exp(mean NLL).
//
// Standard error: every window scores the same ctx-1 tokens, so the mean NLL
// is the mean of the W window means; its stderr is sd(window means)/sqrt(W)
// (windows, not tokens, as the independent unit: token NLLs within a window
// are correlated). PPL's stderr is exp(m)·se(m) (delta method). NaN when W < 2.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eval/loglik.h"

namespace sq {

// The canonical perplexity text of a file; throws naming the path.
std::string wikitext_read(const std::string& path);

struct PplResult {
    int ctx = 0;
    int windows = 0, windows_total = 0;  // scored, available
    int64_t tokens_scored = 0;
    double nll = 0.0, nll_se = 0.0;  // mean NLL per token (nats)
    double ppl = 0.0, ppl_se = 0.0;
    std::vector<double> window_nll;  // each scored window's mean NLL, in text order
};

// Two runs over the same windows (same text, ctx and tokenizer; e.g. two engines
// or two kernels on one model), compared window by window: d_i = a_i − b_i. The
// windows are the independent unit, as for the stderr above, and pairing removes
// the spread between windows (±2.5% of PPL at 147 × 2048) that an unpaired
// comparison of two PPLs would carry. ratio = PPL_a / PPL_b = exp(mean d); the
// 95% interval is exp(mean d ± 1.96·se(d)) (NaN bounds when W < 2).
struct PplPaired {
    int windows = 0;
    double dnll = 0.0, dnll_se = 0.0;  // mean of a − b (nats per token), its stderr
    double ratio = 1.0, ratio_lo = 1.0, ratio_hi = 1.0;
};
PplPaired ppl_paired(const std::vector<double>& a, const std::vector<double>& b);

int ppl_windows_available(int64_t n_tokens, int ctx);

// Window means -> result (pure; unit-tested).
PplResult ppl_from_windows(const std::vector<double>& window_mean_nll, int ctx, int windows_total,
                           int64_t tokens_scored);

// Scores the first `max_windows` windows (<= 0: all). on_window(tokens) after
// each window; cancel is polled between windows (throws sq::Error when set).
PplResult perplexity_eval(LoglikSource& src, const std::vector<int>& tokens, int ctx, int max_windows,
                          const std::function<void(int64_t)>& on_window = {},
                          const std::atomic<bool>* cancel = nullptr);

}  // namespace sq
