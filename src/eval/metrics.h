// Scoring of zero-shot tasks from per-request log-likelihoods, with the
// standard errors lm-eval reports. Pure functions: unit-tested with mocked
// log-likelihoods.
//
//   acc       argmax_i ll_i == gold            (ties: first index, like np.argmax)
//   acc_norm  argmax_i ll_i / bytes(choice_i)  (UTF-8 bytes of the choice text,
//             without the " " delimiter; lm-eval divides by len(choice) in
//             characters, identical for ASCII choices)
//   greedy    LAMBADA acc: the continuation is the argmax at every position
//   ppl       LAMBADA perplexity as lm-eval: exp(-mean_doc ll_doc)
//
// Standard errors: accuracies sqrt(p(1-p)/(n-1)) (lm-eval's mean_stderr of a
// 0/1 variable); LAMBADA perplexity exp(m)·sd(nll_doc)/sqrt(n) (delta method).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "eval/loglik.h"
#include "eval/tasks.h"

namespace sq {

struct Metric {
    std::string task, metric;
    double value = 0.0, se = 0.0;  // standard error; NaN when undefined (n < 2)
    int64_t n = 0;
};

int argmax_first(const std::vector<double>& v);
double binomial_stderr(double p, int64_t n);  // sqrt(p(1-p)/(n-1)); NaN for n < 2
double mean_stderr(const std::vector<double>& x);  // sample sd / sqrt(n); NaN for n < 2

// Metrics of one task. scores[k] holds one ContinuationScore per request of docs[k].
std::vector<Metric> task_metrics(const TaskSpec& spec, const std::vector<const TaskDoc*>& docs,
                                 const std::vector<std::vector<ContinuationScore>>& scores);

// Mean of independent task metrics; stderr sqrt(sum se_i^2) / k.
Metric metric_mean(const std::string& name, const std::vector<Metric>& parts);

}  // namespace sq
