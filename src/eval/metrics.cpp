#include "eval/metrics.h"

#include <cmath>
#include <limits>

#include "core/error.h"

namespace sq {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
}

int argmax_first(const std::vector<double>& v) {
    SQ_CHECK(!v.empty(), "argmax of an empty list");
    int best = 0;
    for (int i = 1; i < (int)v.size(); ++i)
        if (v[i] > v[best]) best = i;
    return best;
}

double binomial_stderr(double p, int64_t n) { return n < 2 ? kNaN : std::sqrt(p * (1.0 - p) / (double)(n - 1)); }

double mean_stderr(const std::vector<double>& x) {
    const int64_t n = (int64_t)x.size();
    if (n < 2) return kNaN;
    double m = 0.0;
    for (double v : x) m += v;
    m /= (double)n;
    double ss = 0.0;
    for (double v : x) ss += (v - m) * (v - m);
    return std::sqrt(ss / (double)(n - 1)) / std::sqrt((double)n);
}

std::vector<Metric> task_metrics(const TaskSpec& spec, const std::vector<const TaskDoc*>& docs,
                                 const std::vector<std::vector<ContinuationScore>>& scores) {
    SQ_CHECK(docs.size() == scores.size(), "task_metrics: ", docs.size(), " docs but ", scores.size(), " scores");
    const int64_t n = (int64_t)docs.size();
    SQ_CHECK(n > 0, spec.name, ": no documents scored");
    std::vector<Metric> out;
    if (spec.kind == TASK_GREEDY) {
        double hits = 0.0, sum_ll = 0.0;
        std::vector<double> nll;
        for (const auto& s : scores) {
            SQ_CHECK(s.size() == 1, spec.name, ": expected one request per document");
            hits += s[0].greedy ? 1.0 : 0.0;
            sum_ll += s[0].logprob;
            nll.push_back(-s[0].logprob);
        }
        double acc = hits / (double)n, ppl = std::exp(-sum_ll / (double)n);
        out.push_back({spec.name, "acc", acc, binomial_stderr(acc, n), n});
        out.push_back({spec.name, "ppl", ppl, ppl * mean_stderr(nll), n});
        return out;
    }
    double hits = 0.0, hits_norm = 0.0;
    for (int64_t k = 0; k < n; ++k) {
        const TaskDoc& d = *docs[k];
        const auto& s = scores[k];
        SQ_CHECK(s.size() == d.contexts.size(), spec.name, " line ", d.line, ": ", s.size(), " scores for ",
                 d.contexts.size(), " requests");
        std::vector<double> ll, ll_norm;
        for (size_t i = 0; i < s.size(); ++i) {
            ll.push_back(s[i].logprob);
            if (spec.has_acc_norm) ll_norm.push_back(s[i].logprob / (double)d.choices.at(i).size());
        }
        hits += argmax_first(ll) == d.gold ? 1.0 : 0.0;
        if (spec.has_acc_norm) hits_norm += argmax_first(ll_norm) == d.gold ? 1.0 : 0.0;
    }
    double acc = hits / (double)n;
    out.push_back({spec.name, "acc", acc, binomial_stderr(acc, n), n});
    if (spec.has_acc_norm) {
        double an = hits_norm / (double)n;
        out.push_back({spec.name, "acc_norm", an, binomial_stderr(an, n), n});
    }
    return out;
}

Metric metric_mean(const std::string& name, const std::vector<Metric>& parts) {
    Metric m;
    m.task = name;
    m.metric = "mean";
    if (parts.empty()) return m;
    double var = 0.0;
    for (const auto& p : parts) {
        m.value += p.value;
        var += p.se * p.se;
        m.n += p.n;
    }
    m.value /= (double)parts.size();
    m.se = std::sqrt(var) / (double)parts.size();
    return m;
}

}  // namespace sq
