// Next-token choice from logits: greedy at temperature 0, else temperature +
// top-k + top-p (nucleus) sampling with a seeded generator.
#pragma once
#include <cstdint>
#include <random>

namespace sq {

struct SamplerParams {
    float temperature = 0.0f;  // 0 = greedy
    int top_k = 40;            // 0 = off
    float top_p = 0.95f;       // 1 = off
    uint64_t seed = 42;
};

class Sampler {
public:
    explicit Sampler(SamplerParams p) : p_(p), rng_(p.seed) {}
    int sample(const float* logits, int vocab);

private:
    SamplerParams p_;
    std::mt19937_64 rng_;
};

int argmax(const float* x, int n);

}  // namespace sq
