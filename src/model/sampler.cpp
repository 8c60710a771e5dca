#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace sq {

int argmax(const float* x, int n) {
    int best = 0;
    for (int i = 1; i < n; ++i)
        if (x[i] > x[best]) best = i;
    return best;
}

int Sampler::sample(const float* logits, int vocab) {
    if (p_.temperature <= 0.0f) return argmax(logits, vocab);
    std::vector<int> idx(vocab);
    std::iota(idx.begin(), idx.end(), 0);
    int keep = (p_.top_k > 0 && p_.top_k < vocab) ? p_.top_k : vocab;
    std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(),
                      [&](int a, int b) { return logits[a] > logits[b]; });
    std::vector<double> prob(keep);
    const double mx = logits[idx[0]];
    double sum = 0.0;
    for (int i = 0; i < keep; ++i) sum += prob[i] = std::exp((logits[idx[i]] - mx) / p_.temperature);
    double cum = 0.0;
    int cut = keep;
    for (int i = 0; i < keep; ++i) {
        cum += prob[i] / sum;
        if (cum >= p_.top_p) {
            cut = i + 1;
            break;
        }
    }
    std::discrete_distribution<int> dist(prob.begin(), prob.begin() + cut);
    return idx[dist(rng_)];
}

}  // namespace sq
