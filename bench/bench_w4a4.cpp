// W4A4 / W4A16 kernel benchmarks with their rooflines, next to FP32 on the same shape.
//
//   cmake --build build-avx2 --target specquant_bench -j2
//   setsid bash -c 'echo -20 > /proc/$$/autogroup; exec build-avx2/specquant_bench \
//       --benchmark_filter=W4A4 --benchmark_repetitions=3 --benchmark_report_aggregates_only=true'
//
// BM_W4A4Gemv (m = 1..16, W from DRAM): GBs = 4-bit weight bytes / s
// (n·kp/2, the kernel layout's bytes), pct_bw against stream_GBs, an AVX2
// streaming read of the very weight copies on the same threads right before
// and after the timed loop (the shared box's bandwidth drifts, see
// docs/kernels-cpu-notes.md); f32_us = gemv_f32 on the same shape (its own
// DRAM-resident copies), x_f32 = f32_us / our µs. Activations are prepared
// outside the timed loop (kernel only); BM_W4A4Layer times whole layers.
// BM_W4A4Gemm (m = 512): GOPs = 2·m·n·k / s, x_f32 against gemm_f32.
// Numbers, dates, versions: docs/kernels-cpu-notes.md ("W4A4"), docs/perf.md.
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

#include "core/fp16.h"
#include "bench_common.h"
#include "core/threads.h"
#include "kernels/cpu/gemm_f32.h"
#include "kernels/cpu/q8_avx2.h"
#include "kernels/cpu/w4a4_avx2.h"
#include "kernels/w4a4_format.h"
#include "model/linear.h"
#include "model/linear_w4a4_cpu.h"

namespace {

using sq::W4A4Weights;

using sq_bench::CallTimer;

// Random weights straight in the kernel layout (any bytes are valid codes).
W4A4Weights bench_weights(int64_t n, int64_t k, uint32_t seed) {
    W4A4Weights w;
    w.n = n;
    w.k = k;
    w.kp = (k + 63) / 64 * 64;
    w.groups = (n + 3) / 4;
    std::mt19937 rng(seed);
    w.data.resize(w.groups * w.kp * 2);
    for (size_t i = 0; i < w.data.size(); i += 4) {
        const uint32_t r = rng();
        std::copy((const uint8_t*)&r, (const uint8_t*)&r + std::min<size_t>(4, w.data.size() - i), &w.data[i]);
    }
    w.rowsum.assign(w.groups * 4, 3);
    w.scale.assign(w.groups * 4, 0.01f);
    return w;
}

std::vector<float> bench_random(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& e : v) e = d(rng);
    return v;
}

__attribute__((target("avx2"))) uint64_t bench_xor_stream(const uint8_t* p, int64_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i + 128 <= n; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i*)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i*)(p + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i*)(p + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i*)(p + i + 96)));
    }
    alignas(32) uint64_t t[4];
    _mm256_store_si256((__m256i*)t, _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3)));
    return t[0] ^ t[1] ^ t[2] ^ t[3];
}

// Streaming read of the copies, each thread one contiguous part of each (as
// the GEMV splits its row groups); 2 passes, GB/s.
double bench_stream_gbs(const std::vector<W4A4Weights>& ws) {
    const int64_t nt = sq::threads_count();
    double secs = 0, bytes = 0;
    for (int pass = 0; pass < 2; ++pass)
        for (const auto& w : ws) {
            const int64_t n = (int64_t)w.data.size(), per = n / nt / 128 * 128;
            std::vector<uint64_t> part(nt);
            const auto t0 = std::chrono::steady_clock::now();
            sq::parallel_for(nt, [&](int64_t t) { part[t] = bench_xor_stream(w.data.data() + t * per, per); });
            secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            benchmark::DoNotOptimize(part.data());
            bytes += (double)nt * per;
        }
    return bytes / secs / 1e9;
}

// FP32 time per call of the same shape: GEMV with W from DRAM (≥ 256 MiB of
// copies) for m ≤ 16, gemm_f32 otherwise; best of `reps` calls.
double f32_seconds(int64_t m, int64_t n, int64_t k, int reps) {
    const int64_t bytes = n * k * 4;
    const int64_t copies = m <= sq::gemv_f32_max_m ? std::max<int64_t>(1, ((int64_t)256 << 20) / bytes + 1) : 1;
    std::vector<sq::PackedF32> ws;
    for (int64_t c = 0; c < copies; ++c) {
        auto wv = bench_random(n * k, 500 + (uint32_t)c);
        ws.push_back(sq::gemm_f32_pack(wv.data(), n, k));
    }
    const auto x = bench_random(m * k, 7);
    std::vector<float> y(m * n);
    CallTimer tm;
    for (int r = 0; r < reps; ++r) {
        const auto& w = ws[r % copies];
        tm.start();
        if (m <= sq::gemv_f32_max_m) sq::gemv_f32(x.data(), m, w, y.data());
        else sq::gemm_f32(x.data(), m, w, y.data());
        tm.stop();
    }
    benchmark::DoNotOptimize(y.data());
    return tm.best;
}

// args: m, n, k
void BM_W4A4Gemv(benchmark::State& st) {
    const int64_t m = st.range(0), n = st.range(1), k = st.range(2);
    const int64_t wbytes = bench_weights(4, k, 1).kp / 2 * n;
    const int64_t copies = std::max<int64_t>(1, ((int64_t)256 << 20) / wbytes + 1);
    std::vector<W4A4Weights> ws;
    for (int64_t c = 0; c < copies; ++c) ws.push_back(bench_weights(n, k, 100 + (uint32_t)c));
    const auto x = bench_random(m * k, 3);
    sq::W4A4Act act;
    sq::w4a4_act_prepare(x.data(), m, k, 4, 0.9f, ws[0].kp, act);
    std::vector<float> y(m * n);
    const double bw_before = bench_stream_gbs(ws);
    int64_t c = 0;
    CallTimer tm;
    for (auto _ : st) {
        tm.start();
        sq::w4a4_gemm(act, ws[c], nullptr, y.data());
        tm.stop();
        benchmark::DoNotOptimize(y.data());
        c = (c + 1) % copies;
    }
    const double bw = std::max(bw_before, bench_stream_gbs(ws));
    ws.clear();
    const double per_call = tm.total / st.iterations();
    const double f32 = f32_seconds(m, n, k, 30);
    st.counters["GBs"] = wbytes / per_call / 1e9;
    st.counters["GBs_best"] = wbytes / tm.best / 1e9;
    st.counters["stream_GBs"] = bw;
    st.counters["pct_bw"] = 100.0 * wbytes / per_call / 1e9 / bw;
    st.counters["GOPs"] = 2.0 * m * n * k / per_call / 1e9;
    st.counters["f32_us_best"] = f32 * 1e6;
    st.counters["x_f32_best"] = f32 / tm.best;
}
#define SQ_W4_SHAPES(b, m)                                                                              \
    b->Args({m, 576, 576})->Args({m, 192, 576})->Args({m, 1536, 576})->Args({m, 576, 1536})             \
        ->Args({m, 4096, 4096})->Args({m, 6144, 4096})->Args({m, 28672, 4096})->Args({m, 4096, 14336})
SQ_W4_SHAPES(BENCHMARK(BM_W4A4Gemv), 1)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_W4A4Gemv)
    ->ArgsProduct({{2, 4, 8, 16}, {1536}, {576}})
    ->ArgsProduct({{4, 16}, {4096}, {4096}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// args: m, n, k (prefill; weights fit or stream from L3/DRAM once per call)
void BM_W4A4Gemm(benchmark::State& st) {
    const int64_t m = st.range(0), n = st.range(1), k = st.range(2);
    const W4A4Weights w = bench_weights(n, k, 9);
    const auto x = bench_random(m * k, 3);
    sq::W4A4Act act;
    sq::w4a4_act_prepare(x.data(), m, k, 4, 0.9f, w.kp, act);
    std::vector<float> y(m * n);
    sq::w4a4_gemm(act, w, nullptr, y.data());  // warm
    CallTimer tm;
    for (auto _ : st) {
        tm.start();
        sq::w4a4_gemm(act, w, nullptr, y.data());
        tm.stop();
    }
    const double op = 2.0 * m * n * k;
    const double f32 = f32_seconds(m, n, k, 3);
    st.counters["GOPs"] = op * st.iterations() / tm.total / 1e9;
    st.counters["GOPs_best"] = op / tm.best / 1e9;
    st.counters["f32_GFLOPs_best"] = op / f32 / 1e9;
    st.counters["x_f32_best"] = f32 / tm.best;
}
SQ_W4_SHAPES(BENCHMARK(BM_W4A4Gemm), 512)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_W4A4Gemm)->ArgsProduct({{17, 32, 64, 128}, {1536}, {576}})->Unit(benchmark::kMillisecond)->UseRealTime();

// W4A16 (a_bits 16): dequantize on the fly in FP32. args: m, n, k.
void BM_W4A16Gemm(benchmark::State& st) {
    const int64_t m = st.range(0), n = st.range(1), k = st.range(2);
    const int64_t wbytes = bench_weights(4, k, 1).kp / 2 * n;
    const int64_t copies = m <= 16 ? std::max<int64_t>(1, ((int64_t)256 << 20) / wbytes + 1) : 1;
    std::vector<W4A4Weights> ws;
    for (int64_t c = 0; c < copies; ++c) ws.push_back(bench_weights(n, k, 100 + (uint32_t)c));
    const auto x = bench_random(m * ws[0].kp, 3);
    std::vector<float> y(m * n);
    int64_t c = 0;
    CallTimer tm;
    for (auto _ : st) {
        tm.start();
        sq::w4a16_gemm(x.data(), m, ws[c], nullptr, y.data());
        tm.stop();
        c = (c + 1) % copies;
    }
    const double per_call = tm.total / st.iterations();
    st.counters["GBs"] = wbytes / per_call / 1e9;
    st.counters["GFLOPs"] = 2.0 * m * n * k / per_call / 1e9;
    ws.clear();
    const double f32 = f32_seconds(m, n, k, m <= 16 ? 30 : 3);
    st.counters["x_f32_best"] = f32 / tm.best;
}
BENCHMARK(BM_W4A16Gemm)
    ->Args({1, 1536, 576})->Args({1, 4096, 4096})->Args({1, 4096, 14336})
    ->Args({512, 1536, 576})->Args({512, 576, 1536})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Whole layers (act quant, spectral branch, epilogue) against LinearF32 of
// the same shape. args: m, n (out), k (in), rank, variant (0 = AVX2 layer,
// 1 = the reference backend, bitwise the same output at 4-bit activations,
// 2 = LinearF32). Weights stay in cache
// between calls here (one copy): it measures compute, not DRAM.
void BM_W4A4Layer(benchmark::State& st) {
    const int64_t m = st.range(0), n = st.range(1), k = st.range(2);
    const int rank = (int)st.range(3), variant = (int)st.range(4);
    std::mt19937 rng(5);
    std::unique_ptr<sq::Linear> L;
    if (variant == 2) {
        L = std::make_unique<sq::LinearF32>(k, n, bench_random(n * k, 11));
    } else {
        sq::QLinearData d;
        d.in = k;
        d.out = n;
        d.a_bits = 4;
        d.codes.resize(n * sq::w4_row_bytes(k));
        for (auto& b : d.codes) b = (uint8_t)rng();
        d.scale.assign(n, 0.01f);
        d.rowsum.assign(n, 0);
        for (int64_t j = 0; j < n; ++j)
            for (int64_t i = 0; i < k; ++i) d.rowsum[j] += sq::w4_get(&d.codes[j * sq::w4_row_bytes(k)], i);
        d.rank = rank;
        for (int64_t i = 0; i < n * rank; ++i) d.coef.push_back(sq::fp32_to_fp16(0.01f * (float)(i % 7)));
        if (variant == 0) L = std::make_unique<sq::LinearW4A4Cpu>(std::move(d));
        else L = std::make_unique<sq::LinearW4A4Ref>(std::move(d));
    }
    const auto x = bench_random(m * k, 3);
    std::vector<float> y(m * n);
    L->forward(x.data(), m, y.data());
    CallTimer tm;
    for (auto _ : st) {
        tm.start();
        L->forward(x.data(), m, y.data());
        tm.stop();
    }
    st.counters["us_best"] = tm.best * 1e6;
    st.counters["GOPs_best"] = 2.0 * m * n * k / tm.best / 1e9;
    st.SetLabel(variant == 0 ? "w4a4 avx2" : variant == 1 ? "w4a4 reference" : "f32");
}
BENCHMARK(BM_W4A4Layer)
    ->ArgsProduct({{1, 512}, {576}, {576}, {63}, {0, 1, 2}})
    ->ArgsProduct({{1, 512}, {1536}, {576}, {63}, {0, 1}})
    ->ArgsProduct({{1, 512}, {576}, {576}, {0}, {0}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Q8_0 GEMV (lm_head / embedding table), W from DRAM. args: m, n, k.
// GBs on the Q8 bytes (34 per 32 weights); stream_GBs: an AVX2 read of the
// same buffers on the same threads; x_f32: gemv_f32 of the shape (its own
// DRAM-resident copies) / ours.
void BM_Q8Gemv(benchmark::State& st) {
    const int64_t m = st.range(0), n = st.range(1), k = st.range(2);
    const int64_t wbytes = n * k / 32 * 34;
    const int64_t copies = std::max<int64_t>(1, ((int64_t)256 << 20) / wbytes + 1);
    std::vector<std::vector<sq::BlockQ8>> ws(copies);
    std::mt19937 rng(9);
    for (auto& w : ws) {
        w.resize(n * k / 32);
        for (auto& b : w) {
            b.d = sq::fp32_to_fp16(0.01f);
            for (auto& q : b.q) q = (int8_t)(rng() % 255 - 127);
        }
    }
    auto stream = [&]() {
        const int64_t nt = sq::threads_count();
        double secs = 0, bytes = 0;
        for (const auto& w : ws) {
            const int64_t per = wbytes / nt / 128 * 128;
            std::vector<uint64_t> part(nt);
            const auto t0 = std::chrono::steady_clock::now();
            sq::parallel_for(nt, [&](int64_t t) { part[t] = bench_xor_stream((const uint8_t*)w.data() + t * per, per); });
            secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            benchmark::DoNotOptimize(part.data());
            bytes += (double)nt * per;
        }
        return bytes / secs / 1e9;
    };
    const auto x = bench_random(m * k, 3);
    std::vector<float> y(m * n);
    const double bw_before = stream();
    int64_t c = 0;
    CallTimer tm;
    for (auto _ : st) {
        tm.start();
        sq::q8_gemv(x.data(), m, ws[c].data(), n, k, y.data());
        tm.stop();
        benchmark::DoNotOptimize(y.data());
        c = (c + 1) % copies;
    }
    const double bw = std::max(bw_before, stream());
    ws.clear();
    const double per_call = tm.total / st.iterations();
    const double f32 = f32_seconds(m, n, k, 10);
    st.counters["GBs"] = wbytes / per_call / 1e9;
    st.counters["stream_GBs"] = bw;
    st.counters["pct_bw"] = 100.0 * wbytes / per_call / 1e9 / bw;
    st.counters["f32_us_best"] = f32 * 1e6;
    st.counters["x_f32_best"] = f32 / tm.best;
}
BENCHMARK(BM_Q8Gemv)
    ->Args({1, 49152, 576})->Args({4, 49152, 576})->Args({1, 32000, 4096})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Per-token activation quantization alone. args: m, k.
void BM_W4A4ActQuant(benchmark::State& st) {
    const int64_t m = st.range(0), k = st.range(1);
    const auto x = bench_random(m * k, 3);
    sq::W4A4Act act;
    for (auto _ : st) sq::w4a4_act_prepare(x.data(), m, k, 4, 0.9f, (k + 63) / 64 * 64, act);
    st.counters["Gelem_s"] = benchmark::Counter((double)m * k, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_W4A4ActQuant)->Args({1, 576})->Args({512, 576})->Args({1, 4096})->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
