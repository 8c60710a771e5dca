// Scalar weight and activation quantizers (definitions in quantizer.h).
#include "quant/quantizer.h"

#include "kernels/ref/w4a4_ref.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/threads.h"

namespace sq {

namespace {

void check_bits(int bits, const char* what) {
    SQ_CHECK(bits >= 2 && bits <= 8, what, ": bits must be in [2, 8], got ", bits);
}

}  // namespace

void weight_qrange(int bits, bool full_range, int* qmin, int* qmax) {
    check_bits(bits, "weight_qrange");
    *qmax = (1 << (bits - 1)) - 1;
    *qmin = full_range ? -(*qmax) - 1 : -(*qmax);
}

int weight_quant_value(float w, float scale, int qmin, int qmax) {
    const float r = std::nearbyint(w / scale);
    // Compare in float before converting so that huge ratios cannot overflow int.
    if (!(r >= (float)qmin)) return r != r ? 0 : qmin;  // NaN -> 0
    if (r > (float)qmax) return qmax;
    return (int)r;
}

float weight_row_scale(const float* w, int64_t cols, const WeightQuantParams& p, const float* h_diag) {
    int qmin, qmax;
    weight_qrange(p.bits, p.full_range, &qmin, &qmax);
    SQ_CHECK(p.clip_min > 0.0f && p.clip_min <= 1.0f, "weight quantizer: clip_min must be in (0, 1], got ",
             p.clip_min);
    SQ_CHECK(!p.clip_search || p.clip_step > 0.0f, "weight quantizer: clip_step must be > 0, got ", p.clip_step);
    float amax = 0.0f;
    for (int64_t j = 0; j < cols; ++j) amax = std::max(amax, std::fabs(w[j]));
    if (!(amax > 0.0f)) return 1.0f;
    const float denom = p.full_range ? (float)(qmax + 1) : (float)qmax;
    float best_scale = 1.0f;
    double best_err = INFINITY;
    const int steps = p.clip_search ? (int)std::floor((1.0 - p.clip_min) / p.clip_step + 1e-6) : 0;
    for (int s = 0; s <= steps; ++s) {
        const float c = (float)(1.0 - s * (double)p.clip_step);
        const float scale = c * amax / denom;
        if (!(scale > 0.0f)) continue;
        double err = 0.0;
        for (int64_t j = 0; j < cols; ++j) {
            const double d = (double)w[j] - (double)weight_quant_value(w[j], scale, qmin, qmax) * scale;
            err += h_diag ? (double)h_diag[j] * d * d : d * d;
        }
        if (err < best_err) {  // strict: ties keep the larger clip
            best_err = err;
            best_scale = scale;
        }
    }
    return best_scale;
}

std::vector<float> weight_scales(const float* w, int64_t rows, int64_t cols, const WeightQuantParams& p,
                                 const float* h_diag) {
    check_bits(p.bits, "weight_scales");
    std::vector<float> scales(rows);
    parallel_for(rows, [&](int64_t i) { scales[i] = weight_row_scale(w + i * cols, cols, p, h_diag); });
    return scales;
}

QuantWeights weight_quantize_with_scales(const float* w, int64_t rows, int64_t cols, const float* scales, int bits,
                                         bool full_range) {
    int qmin, qmax;
    weight_qrange(bits, full_range, &qmin, &qmax);
    QuantWeights q;
    q.rows = rows;
    q.cols = cols;
    q.bits = bits;
    q.scales.assign(scales, scales + rows);
    q.codes.resize(rows * cols);
    for (int64_t i = 0; i < rows; ++i)
        SQ_CHECK(scales[i] > 0.0f && std::isfinite(scales[i]), "weight quantizer: row ", i, " has scale ",
                 scales[i], " (must be finite and > 0)");
    parallel_for(rows, [&](int64_t i) {
        for (int64_t j = 0; j < cols; ++j)
            q.codes[i * cols + j] = (int8_t)weight_quant_value(w[i * cols + j], scales[i], qmin, qmax);
    });
    return q;
}

QuantWeights weight_quantize_rtn(const float* w, int64_t rows, int64_t cols, const WeightQuantParams& p,
                                 const float* h_diag) {
    const std::vector<float> scales = weight_scales(w, rows, cols, p, h_diag);
    return weight_quantize_with_scales(w, rows, cols, scales.data(), p.bits, p.full_range);
}

void weight_dequantize(const QuantWeights& q, float* out) {
    SQ_CHECK((int64_t)q.codes.size() == q.rows * q.cols && (int64_t)q.scales.size() == q.rows,
             "weight_dequantize: codes/scales do not match the shape [", q.rows, ", ", q.cols, "]");
    for (int64_t i = 0; i < q.rows; ++i)
        for (int64_t j = 0; j < q.cols; ++j) out[i * q.cols + j] = (float)q.codes[i * q.cols + j] * q.scales[i];
}

void act_quant_asym(const float* x, int64_t n, int bits, float clip, uint8_t* q, float* scale, int32_t* zero) {
    check_bits(bits, "act_quant_asym");
    SQ_CHECK(clip > 0.0f && clip <= 1.0f, "act_quant_asym: clip must be in (0, 1], got ", clip);
    act_quant_ref(x, 1, n, bits, clip, q, scale, zero);  // the kernels' reference is the definition
}

void act_dequant_asym(const uint8_t* q, int64_t n, float scale, int32_t zero, float* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = (float)((int32_t)q[i] - zero) * scale;
}

void act_fake_quant_asym(float* x, int64_t rows, int64_t n, int bits, float clip) {
    check_bits(bits, "act_fake_quant_asym");
    SQ_CHECK(clip > 0.0f && clip <= 1.0f, "act_fake_quant_asym: clip must be in (0, 1], got ", clip);
    parallel_for(rows, [&](int64_t r) { fake_quant_asym_ref(x + r * n, n, bits, clip); });
}

}  // namespace sq
