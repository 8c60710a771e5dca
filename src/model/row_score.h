// What a scoring forward call is asked for and returns: log-probabilities of
// chosen target tokens at chosen rows, computed where the logits are (the
// GPU's ModelCuda, or any backend behind eval/batch.h's PackedScorer), so
// only these numbers leave the device. Plain structs, no CUDA dependency.
#pragma once

namespace sq {

struct RowTarget {
    int row = 0;     // row of this forward call's tokens, [0, n)
    int target = 0;  // token id whose log-probability is wanted
};

struct RowScore {
    double logprob = 0.0;  // log_softmax(logits[row])[target], in double as logprob_of()
    bool greedy = false;   // target is the first argmax of the row
};

}  // namespace sq
