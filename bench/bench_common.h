// Helpers shared by the micro-benchmarks (bench/*.cpp, one specquant_bench binary).
#pragma once
#include <algorithm>
#include <chrono>

namespace sq_bench {

// Per-call wall times: mean (what a user sees on this machine now) and best
// (closest to an unshared machine: other processes steal whole time slices).
struct CallTimer {
    double total = 0, best = 1e30;
    std::chrono::steady_clock::time_point t0;
    void start() { t0 = std::chrono::steady_clock::now(); }
    void stop() {
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        total += s;
        best = std::min(best, s);
    }
};

}  // namespace sq_bench
