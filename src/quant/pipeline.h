// The quantization pipeline: every method (fp, rtn, smoothquant, gptq,
// quarot, specquant and the options beyond the paper) is one QuantConfig run
// through the same code, one decoder layer at a time (docs/method.md).
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "model/model.h"

namespace sq {

struct QuantConfig {
    std::string method = "specquant";  // fp | rtn | smoothquant | gptq | quarot | specquant
    int w_bits = 4;                    // 4 (the packed format's nibble)
    int a_bits = 4;                    // 2..8, or 16 for weight-only
    int kv_bits = 16;                  // 2..8, or 16
    float a_clip = 0.9f;
    float kv_clip = 1.0f;
    // Beyond the paper: choose each layer group's activation clip ratio
    // (q/k/v, o, gate/up, down) from this grid by the quantized group's output
    // error on search_tokens calibration tokens, instead of a_clip everywhere.
    bool a_clip_search = false;
    std::vector<float> a_clip_grid = {1.0f, 0.95f, 0.9f, 0.85f, 0.8f, 0.75f, 0.7f};
    // Stage 1: smoothing, α searched per layer group on this grid.
    bool smooth = false;
    std::vector<float> alpha_grid = {0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f};
    // Stage 2: spectral split with the adaptive truncation module.
    bool spectral = false;
    int k_bar = 32;                      // mean bins kept per output row (budget k̄·C_out)
    std::string importance = "entropy";  // entropy | abs_mean | abs_max | l2
    float temperature = 1.0f;
    // 16-bit branch basis: "fourier" (the paper), or "svd" (beyond the paper:
    // top-r right singular vectors of Ŵ, r = 2k̄−1 = the same 16-bit budget as
    // a uniform Fourier split, stored explicitly).
    std::string basis = "fourier";
    // Rotation (QuaRot-style): residual stream, o/down inputs online, q/k.
    bool rotate = false;
    uint64_t rotate_seed = 0x5eed;
    // Embedding table and lm_head: 8 = Q8_0 (kernels/q8_format.h; lossless for
    // a Q8_0 source such as the default GGUF when not rotated), 16 = fp16.
    int embed_bits = 8;
    // Weight quantizer of the 4-bit part.
    bool gptq = false;
    float gptq_damp = 0.01f;
    int gptq_block = 128;
    bool act_order = true;
    // Beyond the paper: GPTQ against the 4-bit inputs the kernel multiplies
    // (pipeline.cpp qinput_fit): the 4-bit part refit by ridge least squares
    // so Q(X)·Rᵀ predicts X·Rᵀ, then GPTQ with H = Q(X)ᵀQ(X).
    bool gptq_qinput = false;
    // Beyond the paper: quantize the keys around their calibration mean
    // (LayerWeights::k_shift); needs kv_bits < 16.
    bool k_center = false;
    // Calibration.
    std::string calib_path;
    int calib_n = 32;
    int calib_len = 512;
    uint64_t seed = 0;
    int search_tokens = 2048;  // calibration tokens the α search evaluates
};

// Defaults of a named method (throws sq::Error listing the methods).
QuantConfig quant_config_for(const std::string& method);
// Checks ranges and combinations; throws naming the option.
void quant_config_validate(const QuantConfig& qc);
nlohmann::json quant_config_to_json(const QuantConfig& qc);

// Exact (float32) transforms the methods are built from; each leaves the
// model's function unchanged (tests/test_pipeline.cpp). Layers must still be
// float32 (LinearF32).
//   qkv:     attn_norm /= s, W_q,k,v[:, j] *= s_j              s [d]
//   o:       W_v rows /= s (one scale per KV head and dim), W_o[:, j] *= s_j
//            s [H·hd] must be equal across the query heads of a KV head
//   gate_up: ffn_norm /= s, W_gate,up[:, j] *= s_j             s [d]
//   down:    W_up rows /= s, W_down[:, j] *= s_j                s [ff]
void fold_smooth_qkv(LayerWeights& L, const std::vector<float>& s);
void fold_smooth_o(LayerWeights& L, const ModelConfig& c, const std::vector<float>& s);
void fold_smooth_gate_up(LayerWeights& L, const std::vector<float>& s);
void fold_smooth_down(LayerWeights& L, const std::vector<float>& s);
// QuaRot's offline rotation: RMSNorm weights fused into the next linears,
// residual stream rotated by diag(±1)·H_d (seeded), V rotated per head by H_hd
// (undone in W_o), q/k rotated per head at run time (w.qk_rotate).
void model_rotate(ModelWeights& w, uint64_t seed);

// Returns layer l's float32 weights (streaming quantization: layer_load_f32).
using LayerLoader = std::function<LayerWeights(int)>;

// Quantizes `w` (float32, consumed) on calibration text. Prints progress;
// `report` (optional) receives per-layer statistics and timings. With `load`,
// w.layers may be empty entries (model_load_f32(ck, _, false)): each layer is
// loaded when the loop reaches it and replaced by its quantized form, so the
// float weights in memory are one layer's (plus embedding and lm_head), and
// the output is byte for byte that of the whole-model call.
ModelWeights quantize_model(ModelWeights w, const Tokenizer& tok, const QuantConfig& qc,
                            nlohmann::json* report = nullptr, const LayerLoader& load = {});

}  // namespace sq
