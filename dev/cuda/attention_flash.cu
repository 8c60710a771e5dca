// Sandbox of the tensor-core flash attention (src/kernels/cuda/attention_flash.cu):
// correctness of sampled rows against a float64 host reference, next to the FP32 kernel
// (attention.cu), and event timings of both at prefill shapes, with TFLOP/s
// (causal FLOPs = 2·2·n²/2·hd·heads: Q·Kᵀ and P·V over the lower triangle).
// Build and run ON the device (no -dev packages needed):
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Isrc -o /tmp/fa dev/cuda/attention_flash.cu \
//        src/kernels/cuda/attention.cu src/kernels/cuda/attention_flash.cu src/kernels/cuda/quant.cu \
//        src/kernels/cuda/elementwise.cu && /tmp/fa
// The library's test with the derived error bound is tests/test_cuda_flash.cpp.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"

using namespace sq;

namespace {

template <class T>
T* dev(size_t n) {
    T* p = nullptr;
    SQ_CUDA(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
    SQ_CUDA(cudaMemset(p, 0xFF, std::max<size_t>(n, 1) * sizeof(T)));  // NaN poison
    return p;
}
template <class T>
T* dev(const std::vector<T>& h) {
    T* p = dev<T>(h.size());
    SQ_CUDA(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return p;
}
template <class T>
std::vector<T> host(const T* p, size_t n) {
    std::vector<T> h(n);
    SQ_CUDA(cudaDeviceSynchronize());
    SQ_CUDA(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

struct Problem {
    int n, pos0, heads, kv, hd;
    bool packed, shifted;
    std::vector<float> q, kc, vc;  // host: the cache's fp32 values (fake-quantized when packed)
    float *dq = nullptr, *dkc = nullptr, *dvc = nullptr, *dsh = nullptr;
    cuda::KvPacked pk;
};

Problem make(int n, int pos0, int heads, int kv, int hd, bool packed, bool shifted, std::mt19937& rng) {
    Problem p{n, pos0, heads, kv, hd, packed, shifted};
    const int rows = pos0 + n;
    const size_t cnt = (size_t)rows * kv * hd;
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> off((size_t)kv * hd), k(cnt), v(cnt);
    for (auto& x : off) x = 1.5f * nd(rng);
    for (size_t i = 0; i < cnt; ++i) k[i] = 1.5f * nd(rng) + off[i % off.size()], v[i] = nd(rng);
    p.q.resize((size_t)n * heads * hd);
    for (auto& x : p.q) x = 1.5f * nd(rng);
    p.dq = dev(p.q);
    p.dkc = dev<float>(cnt), p.dvc = dev<float>(cnt);
    if (!packed) {
        SQ_CUDA(cudaMemcpy(p.dkc, k.data(), cnt * 4, cudaMemcpyHostToDevice));
        SQ_CUDA(cudaMemcpy(p.dvc, v.data(), cnt * 4, cudaMemcpyHostToDevice));
        p.kc = k, p.vc = v;
        return p;
    }
    for (auto& x : off) x *= 0.9f;
    p.dsh = dev(off);
    const size_t vecs = (size_t)rows * kv;
    p.pk.k = dev<uint8_t>(vecs * cuda::kv_packed_bytes(hd)), p.pk.v = dev<uint8_t>(vecs * cuda::kv_packed_bytes(hd));
    p.pk.kp = dev<float2>(vecs), p.pk.vp = dev<float2>(vecs);
    p.pk.k_shift = shifted ? p.dsh : nullptr;
    float *dk = dev(k), *dv = dev(v);
    cuda::kv_store(dk, dv, rows, kv, hd, 4, 1.0f, p.dkc, p.dvc, nullptr, nullptr, p.pk.k_shift, p.pk);
    p.kc = host(p.dkc, cnt), p.vc = host(p.dvc, cnt);
    SQ_CUDA(cudaFree(dk));
    SQ_CUDA(cudaFree(dv));
    return p;
}

// max |got − ref| / max |ref| over sampled tokens (all heads), float64 reference.
double rel_err(const Problem& p, const std::vector<float>& got, const std::vector<int>& toks) {
    const int group = p.heads / p.kv;
    double num = 0, den = 0;
    for (int t : toks) {
        if (t >= p.n) continue;
        for (int h = 0; h < p.heads; ++h) {
            const int g = h / group, nk = p.pos0 + t + 1;
            const float* qr = &p.q[((size_t)t * p.heads + h) * p.hd];
            std::vector<double> s(nk), o(p.hd, 0.0);
            double mx = -1e300, l = 0;
            for (int j = 0; j < nk; ++j) {
                double d = 0;
                for (int e = 0; e < p.hd; ++e) d += (double)qr[e] * p.kc[((size_t)j * p.kv + g) * p.hd + e];
                s[j] = d / std::sqrt((double)p.hd);
                mx = std::max(mx, s[j]);
            }
            for (int j = 0; j < nk; ++j) {
                const double w = std::exp(s[j] - mx);
                l += w;
                for (int e = 0; e < p.hd; ++e) o[e] += w * p.vc[((size_t)j * p.kv + g) * p.hd + e];
            }
            for (int e = 0; e < p.hd; ++e) {
                const double r = o[e] / l, x = got[((size_t)t * p.heads + h) * p.hd + e];
                num = std::max(num, std::isnan(x) ? 1e30 : std::fabs(x - r));
                den = std::max(den, std::fabs(r));
            }
        }
    }
    return num / den;
}

template <class F>
float time_ms(F&& f, int reps) {
    cudaEvent_t a, b;
    SQ_CUDA(cudaEventCreate(&a));
    SQ_CUDA(cudaEventCreate(&b));
    f();  // warm-up
    SQ_CUDA(cudaEventRecord(a));
    for (int i = 0; i < reps; ++i) f();
    SQ_CUDA(cudaEventRecord(b));
    SQ_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    SQ_CUDA(cudaEventElapsedTime(&ms, a, b));
    return ms / reps;
}

}  // namespace

int main(int argc, char** argv) {
    // "check": the small correctness cases only (compute-sanitizer runs).
    const bool check_only = argc > 1 && std::string(argv[1]) == "check";
    const bool time_only = argc > 1 && std::string(argv[1]) == "time";  // "time": the timings only
    std::mt19937 rng(1234);
    // Correctness: awkward shapes, relative error of flash and of the FP32 kernel.
    struct C {
        int n, pos0, heads, kv, hd;
    };
    double worst_fl = 0, worst_f32 = 0;
    for (C c : {C{1, 0, 9, 3, 64}, C{2, 45, 9, 3, 64}, C{17, 0, 8, 2, 128}, C{129, 45, 9, 3, 64}, C{200, 0, 3, 3, 128},
                C{1000, 3, 8, 2, 128}, C{64, 0, 32, 8, 128}}) {
        if ((check_only && c.n > 200) || time_only) continue;
        for (int mode = 0; mode < 4; ++mode) {  // fp32, kv4, kv4 + shift (values), kv4 + shift as codes
            Problem p = make(c.n, c.pos0, c.heads, c.kv, c.hd, mode > 0, mode >= 2, rng);
            const cuda::FlashKv4 kv4 = mode == 3 ? cuda::FlashKv4::codes : cuda::FlashKv4::values;
            const size_t cnt = (size_t)c.n * c.heads * c.hd;
            float *o1 = dev<float>(cnt), *o2 = dev<float>(cnt);
            const float* kc = p.packed ? nullptr : p.dkc;
            const float* vc = p.packed ? nullptr : p.dvc;
            cuda::attention_flash(p.dq, kc, vc, c.n, c.pos0, nullptr, c.heads, c.kv, c.hd, o1, nullptr, p.pk, kv4);
            cuda::attention(p.dq, kc, vc, c.n, c.pos0, nullptr, c.heads, c.kv, c.hd, o2, nullptr, p.pk);
            const std::vector<int> toks = {0, 1, 2, 16, 17, 63, 64, 65, 128, 199, 500, 999};
            const double e1 = rel_err(p, host(o1, cnt), toks), e2 = rel_err(p, host(o2, cnt), toks);
            worst_fl = std::max(worst_fl, e1), worst_f32 = std::max(worst_f32, e2);
            std::printf("n %4d pos0 %2d heads %2d/%d hd %3d %-12s: rel err flash %.3e  f32 %.3e\n", c.n, c.pos0, c.heads,
                        c.kv, c.hd, mode == 0 ? "fp32" : mode == 1 ? "kv4" : mode == 2 ? "kv4+shift" : "kv4+sh codes", e1, e2);
            SQ_CUDA(cudaFree(o1));
            SQ_CUDA(cudaFree(o2));
        }
    }
    std::printf("worst rel err: flash %.3e, f32 %.3e\n", worst_fl, worst_f32);
    if (check_only) return 0;
    // Timing at prefill shapes (LLaMA-3-8B: 32/8 heads hd 128; SmolLM2: 9/3 hd 64).
    for (C c : {C{2048, 0, 32, 8, 128}, C{8192, 0, 32, 8, 128}, C{2048, 0, 9, 3, 64}}) {
        for (int mode = 0; mode < 3; ++mode) {  // fp32, kv4 values, kv4 codes
            Problem p = make(c.n, 0, c.heads, c.kv, c.hd, mode > 0, false, rng);
            const cuda::FlashKv4 kv4 = mode == 2 ? cuda::FlashKv4::codes : cuda::FlashKv4::values;
            const size_t cnt = (size_t)c.n * c.heads * c.hd;
            float* o = dev<float>(cnt);
            const float* kc = p.packed ? nullptr : p.dkc;
            const float* vc = p.packed ? nullptr : p.dvc;
            const double flop = 2.0 * 2.0 * (double)c.n * c.n / 2 * c.hd * c.heads;
            const int reps = c.n > 4096 ? 3 : 10;
            const float t1 = time_ms([&] { cuda::attention_flash(p.dq, kc, vc, c.n, 0, nullptr, c.heads, c.kv, c.hd, o,
                                                                 nullptr, p.pk, kv4); }, reps);
            const float t2 = time_ms([&] { cuda::attention(p.dq, kc, vc, c.n, 0, nullptr, c.heads, c.kv, c.hd, o,
                                                           nullptr, p.pk); }, c.n > 4096 ? 1 : 3);
            std::printf("timing n %d heads %d/%d hd %d %s: flash %.3f ms (%.1f TFLOP/s), f32 %.3f ms (%.1f TFLOP/s), "
                        "%.1fx\n",
                        c.n, c.heads, c.kv, c.hd, mode == 0 ? "fp32" : mode == 1 ? "kv4" : "kv4 codes", t1, flop / t1 / 1e9, t2, flop / t2 / 1e9,
                        t2 / t1);
            SQ_CUDA(cudaFree(o));
        }
    }
    return 0;
}
