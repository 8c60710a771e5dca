// FP32 GEMM/GEMV benchmarks with their rooflines.
//
//   cmake --build build --target specquant_bench -j2
//   build/specquant_bench --benchmark_filter='Clock|MemBw|BM_GemmF32/|BM_GemvF32/1/' \
//       --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
//
// Counters. GEMM: GFLOPs and pct_peak, peak = 2 FMA pipes × 8 fp32 lanes ×
// 2 flop × the all-core clock measured by BM_Clock (dependent integer adds,
// 1 per cycle) × threads. GEMV: GBs = weight bytes / s and pct_bw against
// stream_GBs, a streaming AVX2 sum over the same weight copies on the same
// threads, measured right before and after the timed loop (the machine is
// shared and the bandwidth left to us drifts). GEMV cycles through enough
// copies of W (≥ 256 MiB, 8× the L3) that every call reads its weights from
// DRAM, as decode does. BM_MemBw is the 1 GiB streaming sum on its own.
// *_best: the fastest single call (least disturbed by other processes).
// Numbers, dates and the machine: docs/kernels-cpu-notes.md.
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "bench_common.h"
#include "core/threads.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/gemm_f32.h"
#include "kernels/ref/gemm_ref.h"

namespace {

using sq::PackedF32;

std::vector<float> bench_random(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& e : v) e = d(rng);
    return v;
}

// Clock: a chain of dependent integer adds retires one add per cycle, so
// adds / second = cycles / second. Runs are short (8M adds ≈ 2 ms) and we keep
// the best of many, so a run that lost its core to another process (this
// machine is shared) does not lower the estimate.
double bench_clock_ghz_once() {
#if defined(__x86_64__)
    uint64_t iters = 1'000'000, a = 0;
    const auto t0 = std::chrono::steady_clock::now();
    asm volatile(
        "1:\n\t"
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
        "dec %1\n\tjnz 1b\n\t"
        : "+r"(a), "+r"(iters));
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return 8 * 1e6 / s / 1e9;
#else
    return 0.0;
#endif
}

// All threads at once (the all-core clock, not a 1-core boost): per run the
// slowest thread, over runs the best.
double bench_clock_ghz() {
    static const double ghz = [] {
        double best = 0.0;
        for (int r = 0; r < 100; ++r) {
            std::vector<double> g(sq::threads_count());
            sq::parallel_for((int64_t)g.size(), [&](int64_t t) { g[t] = bench_clock_ghz_once(); });
            double lo = g[0];
            for (double v : g) lo = std::min(lo, v);
            best = std::max(best, lo);
        }
        return best;
    }();
    return ghz;
}

double bench_peak_gflops() { return 2.0 * 8 * 2 * bench_clock_ghz() * sq::threads_count(); }

__attribute__((target("avx2"))) double bench_sum_avx2(const float* p, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
    }
    alignas(32) float t[8];
    _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    return (double)t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

// Streaming read of `bytes` on all threads, each thread one contiguous part.
double bench_stream_sum(const float* p, int64_t nf) {
    const int64_t nt = sq::threads_count(), per = (nf / nt) / 32 * 32;
    std::vector<double> part(nt);
    sq::parallel_for(nt, [&](int64_t t) { part[t] = bench_sum_avx2(p + t * per, per); });
    double s = 0;
    for (double v : part) s += v;
    return s;
}

// With --benchmark_repetitions=N: best and worst of N next to mean/median
// (counters such as GFLOPs: "max" is the best run).
void bench_stats(benchmark::internal::Benchmark* b) {
    b->ComputeStatistics("max", [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); })
        ->ComputeStatistics("min", [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); });
}

using sq_bench::CallTimer;

constexpr int64_t kMemBwBytes = int64_t(1) << 30;

void BM_Clock(benchmark::State& st) {
    double ghz = 0;
    for (auto _ : st)
        for (int r = 0; r < 50; ++r) ghz = std::max(ghz, bench_clock_ghz_once());
    st.counters["GHz_1core"] = ghz;
    st.counters["GHz_allcore"] = bench_clock_ghz();
    st.counters["peak_GFLOPs"] = bench_peak_gflops();
    st.counters["threads"] = sq::threads_count();
    st.SetLabel(sq::cpu_describe());
}
BENCHMARK(BM_Clock)->Apply(bench_stats)->Iterations(3)->Unit(benchmark::kMillisecond);

void BM_MemBw(benchmark::State& st) {
    const int64_t nf = kMemBwBytes / 4;
    std::vector<float> buf(nf, 1.0f);
    CallTimer tm;
    for (auto _ : st) {
        tm.start();
        benchmark::DoNotOptimize(bench_stream_sum(buf.data(), nf));
        tm.stop();
    }
    st.counters["GBs"] = (double)kMemBwBytes * st.iterations() / tm.total / 1e9;
    st.counters["GBs_best"] = (double)kMemBwBytes / tm.best / 1e9;
    st.counters["threads"] = sq::threads_count();
}
BENCHMARK(BM_MemBw)->Apply(bench_stats)->Unit(benchmark::kMillisecond)->MinTime(1.0)->UseRealTime();

// args: m, n, k
void BM_GemmF32(benchmark::State& st) {
    const int64_t m = st.range(0), n = st.range(1), k = st.range(2);
    const auto x = bench_random(m * k, 1), wv = bench_random(n * k, 2);
    const PackedF32 w = sq::gemm_f32_pack(wv.data(), n, k);
    std::vector<float> y(m * n);
    sq::gemm_f32(x.data(), m, w, y.data());  // warm
    CallTimer tm;
    for (auto _ : st) {
        tm.start();
        sq::gemm_f32(x.data(), m, w, y.data());
        tm.stop();
    }
    const double flop = 2.0 * m * n * k, gflops = flop * st.iterations() / tm.total / 1e9;
    st.counters["GFLOPs"] = gflops;
    st.counters["pct_peak"] = 100.0 * gflops / bench_peak_gflops();
    st.counters["GFLOPs_best"] = flop / tm.best / 1e9;
    st.counters["pct_peak_best"] = 100.0 * flop / tm.best / 1e9 / bench_peak_gflops();
}
#define SQ_PREFILL(b) \
    b->Args({512, 576, 576})->Args({512, 192, 576})->Args({512, 1536, 576})->Args({512, 576, 1536})
SQ_PREFILL(BENCHMARK(BM_GemmF32)->Apply(bench_stats))->Args({512, 49152, 576})->Unit(benchmark::kMillisecond)->UseRealTime();

// Streaming-sum bandwidth over the very weight copies a GEMV benchmark uses
// (same bytes, same threads, each thread one contiguous half of each copy,
// as gemv_f32 splits W), taken right before and after the timed loop: the
// machine is shared, so the DRAM bandwidth left to us drifts by ±30% over
// minutes, and the roofline must be measured next to the kernel. Mean over
// 2 passes each side; the higher side is used (conservative).
double bench_stream_copies_gbs(const std::vector<PackedF32>& ws) {
    double secs = 0, bytes = 0;
    for (int pass = 0; pass < 2; ++pass)
        for (const auto& w : ws) {
            const auto t0 = std::chrono::steady_clock::now();
            benchmark::DoNotOptimize(bench_stream_sum(w.data(), w.n * w.k));
            secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            bytes += (double)w.bytes();
        }
    return bytes / secs / 1e9;
}

// GEMV (and small-m decode) with W read from DRAM: args m, n, k.
template <bool kGemv>
void gemv_like(benchmark::State& st) {
    const int64_t m = st.range(0), n = st.range(1), k = st.range(2);
    const int64_t bytes = n * k * 4;
    const int64_t copies = std::max<int64_t>(1, ((int64_t)256 << 20) / bytes + 1);
    std::vector<PackedF32> ws;
    for (int64_t c = 0; c < copies; ++c) {
        auto wv = bench_random(n * k, 100 + (uint32_t)c);
        ws.push_back(sq::gemm_f32_pack(wv.data(), n, k));
    }
    const auto x = bench_random(m * k, 3);
    std::vector<float> y(m * n);
    const double bw_before = bench_stream_copies_gbs(ws);
    int64_t c = 0;
    CallTimer tm;
    for (auto _ : st) {
        tm.start();
        if (kGemv) sq::gemv_f32(x.data(), m, ws[c], y.data());
        else sq::gemm_f32(x.data(), m, ws[c], y.data());
        tm.stop();
        benchmark::DoNotOptimize(y.data());
        c = (c + 1) % copies;
    }
    const double bw = std::max(bw_before, bench_stream_copies_gbs(ws));
    const double gbs = (double)bytes * st.iterations() / tm.total / 1e9;
    st.counters["GBs"] = gbs;
    st.counters["GBs_best"] = bytes / tm.best / 1e9;
    st.counters["GFLOPs"] = 2.0 * m * n * k * st.iterations() / tm.total / 1e9;
    st.counters["stream_GBs"] = bw;
    st.counters["pct_bw"] = 100.0 * gbs / bw;
}
void BM_GemvF32(benchmark::State& st) { gemv_like<true>(st); }
void BM_GemvViaGemmF32(benchmark::State& st) { gemv_like<false>(st); }

#define SQ_DECODE(b)                                                                                         \
    b->Args({1, 576, 576})->Args({1, 192, 576})->Args({1, 1536, 576})->Args({1, 576, 1536})                  \
        ->Args({1, 49152, 576})->Args({1, 4096, 4096})->Args({1, 14336, 4096})->Args({1, 4096, 14336})
SQ_DECODE(BENCHMARK(BM_GemvF32)->Apply(bench_stats))->Unit(benchmark::kMicrosecond)->UseRealTime();
// Crossover GEMV vs blocked GEMM for small m (sets gemv_f32_max_m).
BENCHMARK(BM_GemvF32)
    ->ArgsProduct({{2, 3, 4, 6, 8, 12, 16, 24, 32}, {1536}, {576}})
    ->ArgsProduct({{2, 3, 4, 8, 16}, {4096}, {4096}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(BM_GemvViaGemmF32)
    ->ArgsProduct({{1, 2, 3, 4, 6, 8, 12, 16, 24, 32}, {1536}, {576}})
    ->ArgsProduct({{1, 2, 3, 4, 8, 16}, {4096}, {4096}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Blocking sweep: args kc_max, mc, nc, n, k (m = 512).
void BM_GemmF32Blocking(benchmark::State& st) {
    const int64_t m = 512, n = st.range(3), k = st.range(4);
    const sq::GemmF32Blocking b{st.range(0), st.range(1), st.range(2)};
    const auto x = bench_random(m * k, 1), wv = bench_random(n * k, 2);
    const PackedF32 w = sq::gemm_f32_view(wv.data(), n, k);
    std::vector<float> y(m * n);
    CallTimer tm;
    for (auto _ : st) {
        tm.start();
        sq::gemm_f32(x.data(), m, w, y.data(), b);
        tm.stop();
    }
    const double flop = 2.0 * m * n * k;
    st.counters["GFLOPs"] = flop * st.iterations() / tm.total / 1e9;
    st.counters["GFLOPs_best"] = flop / tm.best / 1e9;
    st.counters["pct_peak_best"] = 100.0 * flop / tm.best / 1e9 / bench_peak_gflops();
}
BENCHMARK(BM_GemmF32Blocking)
    ->ArgsProduct({{288, 576, 768}, {72, 144, 288}, {64, 128}, {1536}, {576}})
    ->ArgsProduct({{384, 512, 768, 1536}, {72, 144, 288}, {64, 128}, {576}, {1536}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The scalar reference on the smallest prefill shape: what the loud fallback costs.
void BM_GemmF32Ref(benchmark::State& st) {
    const int64_t m = st.range(0), n = st.range(1), k = st.range(2);
    const auto x = bench_random(m * k, 1), w = bench_random(n * k, 2);
    std::vector<float> y(m * n);
    CallTimer tm;
    for (auto _ : st) {
        tm.start();
        sq::gemm_f32_ref(x.data(), m, w.data(), n, k, y.data());
        tm.stop();
    }
    st.counters["GFLOPs"] = 2.0 * m * n * k * st.iterations() / tm.total / 1e9;
    st.counters["GFLOPs_best"] = 2.0 * m * n * k / tm.best / 1e9;
}
BENCHMARK(BM_GemmF32Ref)->Args({64, 192, 576})->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
