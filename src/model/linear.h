// The one interface every linear layer goes through: y[n, out] = x[n, in] · Wᵀ (+ b).
// The model never branches on the weight format; quantized backends
// (reference W4A4, AVX2, CUDA) are other implementations of this interface.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sq {

struct Linear {
    int64_t in = 0, out = 0;
    virtual ~Linear() = default;
    // x: [n, in] row-major, y: [n, out] row-major (overwritten).
    virtual void forward(const float* x, int64_t n, float* y) const = 0;
    virtual std::string kind() const = 0;  // "f32", "w4a4-ref", ...
    virtual size_t weight_bytes() const = 0;
    // y[i] [n, layers[i]->out] = x · W_iᵀ for `count` layers that read the
    // same input x [n, in] (q/k/v, gate/up), with this == layers[0]. A
    // backend may share work between them (one activation quantization, one
    // parallel region) and return true; every output must equal the layer's
    // own forward bitwise. Default: false, the caller runs forward on each.
    virtual bool forward_same_input(const Linear* const* layers, int count, const float* x, int64_t n,
                                    float* const* y) const {
        (void)layers, (void)count, (void)x, (void)n, (void)y;
        return false;
    }
};

// layers[0]->forward_same_input when it takes them, else one forward each.
void linear_forward_same_input(const Linear* const* layers, int count, const float* x, int64_t n, float* const* y);

// Plain float32 weights W [out, in] and an optional bias [out].
struct LinearF32 : Linear {
    std::vector<float> w;
    std::vector<float> bias;
    LinearF32(int64_t in_, int64_t out_, std::vector<float> w_, std::vector<float> b_ = {});
    void forward(const float* x, int64_t n, float* y) const override;
    std::string kind() const override { return "f32"; }
    size_t weight_bytes() const override { return (w.size() + bias.size()) * sizeof(float); }
};

}  // namespace sq
