// A loaded checkpoint: config, tokenizer data and lazily dequantized tensors
// under canonical names. Canonical layout is Hugging Face's: a linear weight
// is [out, in] row-major, q/k rows in HF order (rotate-half RoPE); GGUF llama
// q/k rows are un-permuted on load.
//
// Canonical names:
//   embed [vocab, d]   lm_head [vocab, d] (absent when tied)   final_norm [d]
//   layers.{i}.attn_norm [d]  .q [H*hd, d]  .k [KV*hd, d]  .v [KV*hd, d]  .o [d, H*hd]
//   layers.{i}.q_bias / .k_bias / .v_bias (Qwen2)
//   layers.{i}.ffn_norm [d]   .gate [ff, d]  .up [ff, d]  .down [d, ff]
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/tokenizer_data.h"
#include "model/config.h"

namespace sq {

struct TensorF32 {
    std::vector<int64_t> shape;
    std::vector<float> data;
    int64_t numel() const {
        int64_t n = 1;
        for (auto s : shape) n *= s;
        return n;
    }
};

struct TensorSource {
    std::vector<int64_t> shape;  // canonical shape
    std::string dtype;           // as stored: "F32", "F16", "BF16", "Q8_0", "Q4_1", ...
    std::string origin;          // "file.gguf: blk.3.attn_q.weight", for errors and `info`
    std::function<TensorF32()> load;  // dequantizes to float32 in canonical layout
};

struct Checkpoint {
    std::string path;    // file or directory it came from
    std::string format;  // "gguf" or "safetensors"
    ModelConfig config;
    TokenizerData tokenizer;
    std::map<std::string, TensorSource> tensors;
    std::vector<std::shared_ptr<void>> keep_alive;  // mappings the sources read from

    bool has(const std::string& name) const { return tensors.count(name) != 0; }
    // Loads a tensor and checks its shape; throws naming the tensor when
    // missing or misshapen.
    TensorF32 load(const std::string& name, const std::vector<int64_t>& expect_shape) const;
};

// Opens a GGUF file or a Hugging Face directory (config.json + *.safetensors
// [+ model.safetensors.index.json] + tokenizer.json). Validates structure and
// config; tensor data is read lazily.
Checkpoint checkpoint_open(const std::string& path);

}  // namespace sq
