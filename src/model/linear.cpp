// LinearF32: y = x·Wᵀ (+ b) on the FP32 kernels of kernels/cpu/gemm_f32.
//
// The kernels' packed format is W's own row-major layout (see gemm_f32.h),
// so the constructor only validates shapes and forward borrows `w`: no
// second copy of the weights, and `w` keeps its documented [out, in] meaning
// for code that reads it (quantizers, exporters).
#include <algorithm>
#include <utility>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/gemm_f32.h"
#include "model/linear.h"

namespace sq {

LinearF32::LinearF32(int64_t in_, int64_t out_, std::vector<float> w_, std::vector<float> b_)
    : w(std::move(w_)), bias(std::move(b_)) {
    in = in_;
    out = out_;
    SQ_CHECK(in > 0 && out > 0, "LinearF32: bad shape in=", in, " out=", out);
    SQ_CHECK((int64_t)w.size() == in * out, "LinearF32: weight has ", w.size(), " floats, expected out×in = ", out,
             "×", in);
    SQ_CHECK(bias.empty() || (int64_t)bias.size() == out, "LinearF32: bias has ", bias.size(),
             " floats, expected out = ", out);
}

void LinearF32::forward(const float* x, int64_t n, float* y) const {
    const PackedF32 p = gemm_f32_view(w.data(), out, in);
    // Decode and small batches (n ≤ 16 tokens): stream W once. Prefill:
    // cache-blocked GEMM. Crossover measured in bench BM_GemvF32 vs
    // BM_GemvViaGemmF32 (docs/kernels-cpu-notes.md).
    if (n <= gemv_f32_max_m) gemv_f32(x, n, p, y);
    else gemm_f32(x, n, p, y);
    if (bias.empty()) return;
    const float* b = bias.data();
    const int64_t o = out;
    parallel_for(n, [&](int64_t t) {
        float* yt = y + t * o;
        for (int64_t j = 0; j < o; ++j) yt[j] += b[j];
    });
}

void linear_forward_same_input(const Linear* const* layers, int count, const float* x, int64_t n, float* const* y) {
    if (count <= 0) return;
    if (layers[0]->forward_same_input(layers, count, x, n, y)) return;
    for (int i = 0; i < count; ++i) layers[i]->forward(x, n, y[i]);
}

}  // namespace sq
