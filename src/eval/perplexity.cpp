#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "eval/metrics.h"

namespace sq {

std::string wikitext_read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    SQ_CHECK(in, path, ": cannot open perplexity text (set --data-dir or -f)");
    std::ostringstream ss;
    ss << in.rdbuf();
    SQ_CHECK(!in.bad(), path, ": read error");
    std::string raw = ss.str(), text;
    text.reserve(raw.size() + raw.size() / 64);
    size_t start = 0;
    bool first = true;
    while (start < raw.size()) {
        size_t end = raw.find('\n', start);
        if (end == std::string::npos) end = raw.size();
        std::string line = raw.substr(start, end - start);
        std::string clean;
        for (char c : line)
            if (c != '\r') clean += c;
        if (!first) text += "\n\n";
        text += clean;
        first = false;
        start = end + 1;
    }
    SQ_CHECK(!text.empty(), path, ": empty perplexity text");
    return text;
}

int ppl_windows_available(int64_t n_tokens, int ctx) { return ctx < 2 ? 0 : (int)(n_tokens / ctx); }

PplResult ppl_from_windows(const std::vector<double>& w, int ctx, int windows_total, int64_t tokens_scored) {
    PplResult r;
    r.ctx = ctx;
    r.windows = (int)w.size();
    r.windows_total = windows_total;
    r.tokens_scored = tokens_scored;
    SQ_CHECK(!w.empty(), "perplexity: no windows scored");
    for (double v : w) r.nll += v;
    r.nll /= (double)w.size();
    r.nll_se = mean_stderr(w);
    r.ppl = std::exp(r.nll);
    r.ppl_se = r.ppl * r.nll_se;
    r.window_nll = w;
    return r;
}

PplPaired ppl_paired(const std::vector<double>& a, const std::vector<double>& b) {
    SQ_CHECK(!a.empty() && a.size() == b.size(), "paired perplexity: ", a.size(), " windows against ", b.size(),
             " (the runs must score the same windows)");
    std::vector<double> d(a.size());
    for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
    PplPaired p;
    p.windows = (int)d.size();
    for (double v : d) p.dnll += v;
    p.dnll /= (double)d.size();
    p.dnll_se = mean_stderr(d);
    p.ratio = std::exp(p.dnll);
    p.ratio_lo = std::exp(p.dnll - 1.96 * p.dnll_se);
    p.ratio_hi = std::exp(p.dnll + 1.96 * p.dnll_se);
    return p;
}

PplResult perplexity_eval(LoglikSource& src, const std::vector<int>& tokens, int ctx, int max_windows,
                          const std::function<void(int64_t)>& on_window, const std::atomic<bool>* cancel) {
    const int total = ppl_windows_available((int64_t)tokens.size(), ctx);
    SQ_CHECK(total > 0, "perplexity: text of ", tokens.size(), " tokens has no full window of ", ctx, " tokens");
    const int W = max_windows > 0 && max_windows < total ? max_windows : total;
    std::vector<double> means;
    int64_t scored = 0;
    // A batching source gets as many windows (ctx − 1 inputs each) as fill one batch.
    const int per = (int)std::clamp<int64_t>(src.batch_tokens() / std::max(1, ctx - 1), 1, std::max(1, W));
    for (int w0 = 0; w0 < W; w0 += per) {
        if (cancel && cancel->load()) fail("interrupted");
        std::vector<std::vector<int>> wins;
        for (int w = w0; w < std::min(W, w0 + per); ++w)
            wins.emplace_back(tokens.begin() + (ptrdiff_t)w * ctx, tokens.begin() + (ptrdiff_t)(w + 1) * ctx);
        const std::vector<std::vector<double>> lps = src.rolling_logprobs_batch(wins);
        SQ_CHECK(lps.size() == wins.size(), "perplexity: source returned ", lps.size(), " windows for ", wins.size());
        for (const std::vector<double>& lp : lps) {
            SQ_CHECK((int)lp.size() == ctx - 1, "perplexity: source returned ", lp.size(),
                     " log-probs for a window of ", ctx);
            double s = 0.0;
            for (double v : lp) s -= v;
            means.push_back(s / (double)lp.size());
            scored += (int64_t)lp.size();
            if (on_window) on_window(ctx);
        }
    }
    return ppl_from_windows(means, ctx, total, scored);
}

}  // namespace sq
