// config_validate: one place that rejects impossible hyper-parameters, so the
// forward pass can assume them (head_dim even for RoPE's pairs, GQA groups
// whole, every size positive).
#include "model/config.h"

#include <cmath>

#include "core/error.h"

namespace sq {

void config_validate(const ModelConfig& c, const std::string& source) {
    auto positive = [&](const char* field, long long v) {
        if (v <= 0) fail(source, ": config field ", field, " = ", v, " must be positive");
    };
    if (c.arch != "llama" && c.arch != "qwen2")
        fail(source, ": config field arch = \"", c.arch, "\" is unsupported (llama, qwen2)");
    positive("n_layers", c.n_layers);
    positive("d_model", c.d_model);
    positive("n_heads", c.n_heads);
    positive("n_kv_heads", c.n_kv_heads);
    positive("d_ff", c.d_ff);
    positive("vocab", c.vocab);
    positive("max_ctx", c.max_ctx);
    if (c.head_dim < 0) fail(source, ": config field head_dim = ", c.head_dim, " must be positive");
    // head_dim 0 means d_model / n_heads, which must then be whole
    if (c.head_dim == 0 && c.d_model % c.n_heads != 0)
        fail(source, ": config field d_model = ", c.d_model, " is not divisible by n_heads = ", c.n_heads,
             " and no head_dim is given");
    const int hd = c.head_dim > 0 ? c.head_dim : c.d_model / c.n_heads;
    if (hd % 2 != 0) fail(source, ": config field head_dim = ", hd, " must be even (RoPE rotates pairs)");
    if (c.n_heads % c.n_kv_heads != 0)
        fail(source, ": config field n_heads = ", c.n_heads, " is not a multiple of n_kv_heads = ", c.n_kv_heads);
    if (!(c.rms_eps > 0.0f) || !std::isfinite(c.rms_eps))
        fail(source, ": config field rms_eps = ", c.rms_eps, " must be positive");
    if (!(c.rope_theta > 0.0f) || !std::isfinite(c.rope_theta))
        fail(source, ": config field rope_theta = ", c.rope_theta, " must be positive");
    if (c.rope_scaling != ROPE_SCALING_NONE && (!(c.rope_factor > 0.0f) || !std::isfinite(c.rope_factor)))
        fail(source, ": config field rope_factor = ", c.rope_factor, " must be positive");
    if (c.rope_scaling == ROPE_SCALING_LLAMA3) {
        // the llama3 formula divides by (high - low) and by original / factor
        if (!(c.rope_high_freq_factor > c.rope_low_freq_factor) || !(c.rope_low_freq_factor > 0.0f))
            fail(source, ": config fields rope_low_freq_factor = ", c.rope_low_freq_factor,
                 " and rope_high_freq_factor = ", c.rope_high_freq_factor, " need 0 < low < high");
        positive("rope_original_max_pos", c.rope_original_max_pos);
    }
}

}  // namespace sq
