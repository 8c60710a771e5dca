#include "kernels/cpu/cpu_features.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>

namespace sq {

namespace {

bool env_force_scalar() {
    const char* v = std::getenv("SQ_FORCE_SCALAR");
    return v && *v && std::strcmp(v, "0") != 0;
}

std::atomic<bool>& forced() {
    static std::atomic<bool> f{env_force_scalar()};
    return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
    static const CpuFeatures f = [] {
        CpuFeatures c;
        __builtin_cpu_init();
        c.avx2 = __builtin_cpu_supports("avx2");
        c.fma = __builtin_cpu_supports("fma");
        c.f16c = __builtin_cpu_supports("f16c");
        c.avx512f = __builtin_cpu_supports("avx512f");
        c.avx512vnni = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
        return c;
    }();
    return f;
}

bool cpu_use_avx2() {
    const CpuFeatures& f = cpu_features();
    return f.avx2 && f.fma && !forced().load(std::memory_order_relaxed);
}

void cpu_force_scalar(bool on) { forced().store(on, std::memory_order_relaxed); }

void cpu_warn_fallback(const char* kernel) {
    static std::mutex mu;
    static std::set<std::string> warned;
    std::lock_guard<std::mutex> lock(mu);
    if (!warned.insert(kernel).second) return;
    const CpuFeatures& f = cpu_features();
    const char* why = forced().load() ? "scalar forced (SQ_FORCE_SCALAR or cpu_force_scalar)"
                      : !f.avx2       ? "this CPU has no AVX2"
                      : !f.fma        ? "this CPU has no FMA"
                                      : "AVX2 path unavailable";
    std::fprintf(stderr, "specquant: %s: %s; running the scalar reference (slow)\n", kernel, why);
}

std::string cpu_describe() {
    const CpuFeatures& f = cpu_features();
    std::string s;
    auto add = [&](bool on, const char* name) {
        if (!on) return;
        if (!s.empty()) s += ' ';
        s += name;
    };
    add(f.avx2, "avx2");
    add(f.fma, "fma");
    add(f.f16c, "f16c");
    add(f.avx512f, "avx512f");
    add(f.avx512vnni, "avx512vnni");
    return s.empty() ? "no avx2" : s;
}

}  // namespace sq
