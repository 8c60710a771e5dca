// Integer switches from the environment (A/B knobs such as SQ_CUDA_GEMV_STAGE_MIN_M): unset or
// empty gives the default; anything but a whole number in [lo, hi] is an sq::Error naming the
// variable. Callers read them once (function-local statics).
#pragma once
#include <cstdlib>

#include "core/error.h"

namespace sq {

inline int env_int(const char* name, int def, int lo, int hi) {
    const char* e = std::getenv(name);
    if (!e || !*e) return def;
    char* end = nullptr;
    const long v = std::strtol(e, &end, 10);
    SQ_CHECK(*end == 0 && v >= lo && v <= hi, name, " must be a whole number in ", lo, "..", hi, ", got '", e, "'");
    return (int)v;
}

}  // namespace sq
