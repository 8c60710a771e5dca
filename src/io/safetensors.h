// Hugging Face checkpoints: safetensors files (memory-mapped), the sharded
// index (model.safetensors.index.json) and config.json -> ModelConfig.
//
// safetensors layout: u64 N (little-endian), N bytes of JSON header
//   {"name": {"dtype": "BF16", "shape": [out, in], "data_offsets": [b, e]}, ...,
//    "__metadata__": {...}}
// then the data region; offsets are relative to its start (byte 8 + N).
//
// Test: build/specquant_tests --gtest_filter='Safetensors*:IoErrors*'
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "io/checkpoint.h"
#include "model/config.h"

namespace sq {

struct SafetensorsTensor {
    std::string dtype;           // "F32", "F16", "BF16", "I8", ... (validated against the known set)
    std::vector<int64_t> shape;  // as stored (HF linear weights: [out, in])
    uint64_t begin = 0, end = 0;  // byte range within the data region
    int64_t numel() const {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        return n;
    }
};

class SafetensorsFile {
public:
    explicit SafetensorsFile(const std::string& path);  // throws sq::Error naming the path

    const std::string& path() const { return file_.path(); }
    const std::map<std::string, SafetensorsTensor>& tensors() const { return tensors_; }
    const SafetensorsTensor* find(const std::string& name) const;
    const uint8_t* data(const SafetensorsTensor& t) const { return file_.data() + data_start_ + t.begin; }
    // Converts an F32 / F16 / BF16 tensor to float32; throws for other dtypes.
    std::vector<float> tensor_f32(const std::string& name) const;

private:
    MappedFile file_;
    uint64_t data_start_ = 0;
    std::map<std::string, SafetensorsTensor> tensors_;
};

// Bytes per element of a safetensors dtype, 0 for unknown dtypes.
int safetensors_dtype_size(const std::string& dtype);
// True for the dtypes we convert to float32 (F32, F16, BF16).
bool safetensors_dtype_readable(const std::string& dtype);

// model.safetensors.index.json: tensor name -> shard file name (plain names,
// no directories; checked).
std::map<std::string, std::string> safetensors_index_read(const std::string& index_path);

// "model.layers.3.self_attn.q_proj.weight" -> "layers.3.q", ...; "" when unused.
std::string hf_canonical_name(const std::string& hf_name);

// config.json -> ModelConfig (model_type llama, mistral or qwen2). Throws
// naming the file and the field.
ModelConfig hf_config_read(const std::string& config_path);
ModelConfig hf_config_parse(const std::string& json_text, const std::string& source);

// A Hugging Face directory as a Checkpoint: config.json, the sharded index
// model.safetensors.index.json, else model.safetensors, else every
// *.safetensors in the directory (a tensor in two of them is an error), and
// tokenizer.json when present (when not, the tokenizer is left empty with
// source "<dir>/tokenizer.json (missing)", which Tokenizer's error names).
Checkpoint hf_checkpoint_open(const std::string& dir);

}  // namespace sq
