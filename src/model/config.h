// LLaMA-family hyper-parameters, filled by the loaders (HF config.json or
// GGUF metadata) and checked once by config_validate().
#pragma once
#include <cstdint>
#include <string>

namespace sq {

enum RopeScaling { ROPE_SCALING_NONE, ROPE_SCALING_LINEAR, ROPE_SCALING_LLAMA3 };

struct ModelConfig {
    std::string arch = "llama";  // "llama" (LLaMA 1/2/3, Mistral, SmolLM, TinyLlama) or "qwen2"
    std::string name;            // free text for reports
    int n_layers = 0;
    int d_model = 0;
    int n_heads = 0;
    int n_kv_heads = 0;
    int head_dim = 0;  // d_model / n_heads unless the checkpoint says otherwise
    int d_ff = 0;
    int vocab = 0;
    int max_ctx = 2048;
    float rms_eps = 1e-5f;
    float rope_theta = 10000.0f;
    RopeScaling rope_scaling = ROPE_SCALING_NONE;
    float rope_factor = 1.0f;          // linear and llama3
    float rope_low_freq_factor = 1.0f;   // llama3
    float rope_high_freq_factor = 4.0f;  // llama3
    int rope_original_max_pos = 8192;    // llama3
    bool tied_embeddings = false;
    bool qkv_bias = false;  // Qwen2
};

// Throws sq::Error naming `source` and the offending field.
void config_validate(const ModelConfig& c, const std::string& source);

}  // namespace sq
