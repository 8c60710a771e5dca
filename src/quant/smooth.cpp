// Smoothing scales and their application; see smooth.h.
#include "quant/smooth.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/threads.h"

namespace sq {

std::vector<float> smooth_scales(const float* act_absmax, const float* weight_absmax, int64_t n, float alpha,
                                 float s_min, float s_max) {
    SQ_CHECK(alpha >= 0.0f && alpha <= 1.0f, "smooth_scales: alpha must be in [0, 1], got ", alpha);
    SQ_CHECK(s_min > 0.0f && s_max >= s_min, "smooth_scales: need 0 < s_min ≤ s_max, got [", s_min, ", ", s_max, "]");
    std::vector<float> s(n);
    for (int64_t j = 0; j < n; ++j) {
        const double a = std::fabs((double)act_absmax[j]), w = std::fabs((double)weight_absmax[j]);
        SQ_CHECK(std::isfinite(a) && std::isfinite(w), "smooth_scales: channel ", j, " has a non-finite max (act ",
                 act_absmax[j], ", weight ", weight_absmax[j], ")");
        if (a == 0.0 || w == 0.0) {
            s[j] = 1.0f;
            continue;
        }
        const double v = std::pow(a, (double)alpha) / std::pow(w, 1.0 - (double)alpha);
        s[j] = (float)std::clamp(v, (double)s_min, (double)s_max);
    }
    return s;
}

void smooth_weight_absmax(const float* w, int64_t rows, int64_t cols, float* absmax) {
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) absmax[j] = std::max(absmax[j], std::fabs(w[i * cols + j]));
}

void smooth_act_absmax(const float* x, int64_t tokens, int64_t cols, float* absmax) {
    smooth_weight_absmax(x, tokens, cols, absmax);
}

void smooth_apply_weight(float* w, int64_t rows, int64_t cols, const float* s) {
    parallel_for(rows, [&](int64_t i) {
        for (int64_t j = 0; j < cols; ++j) w[i * cols + j] *= s[j];
    });
}

void smooth_apply_act(float* x, int64_t rows, int64_t cols, const float* s) {
    parallel_for(rows, [&](int64_t i) {
        for (int64_t j = 0; j < cols; ++j) x[i * cols + j] /= s[j];
    });
}

}  // namespace sq
