// GGUF v2/v3 reader (llama.cpp's model file): header, metadata key/values,
// tensor infos, aligned data section, all parsed straight from a memory map
// with every count and length bounded by the file size before anything is
// allocated. gguf_checkpoint_open() turns a llama/qwen2 GGUF into a
// Checkpoint (config from "<arch>.*" keys, tokenizer from "tokenizer.ggml.*",
// tensors renamed to canonical names, q/k rows un-permuted for arch llama).
//
// File layout (little-endian):
//   "GGUF" u32 version u64 n_tensors u64 n_kv
//   n_kv × { string key, u32 value_type, value }       string = u64 len + bytes
//   n_tensors × { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//   padding to general.alignment (default 32), then the data section;
//   tensor offsets are relative to it and multiples of the alignment.
//
// Test: build/specquant_tests --gtest_filter='Gguf*:IoErrors*'
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "io/checkpoint.h"

namespace sq {

enum GgufType : uint32_t {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
};

const char* gguf_type_name(uint32_t type);  // "UINT32", ..., "?" for unknown ids

// One metadata value, decoded lazily from the mapping by GgufFile's getters.
struct GgufValue {
    uint32_t type = 0;       // GgufType
    uint32_t elem_type = 0;  // arrays: element type (GGUF_TYPE_ARRAY: nested, unreadable)
    uint64_t count = 0;      // arrays: number of elements
    const uint8_t* data = nullptr;  // scalar: the value; array: its first element
};

struct GgufTensorInfo {
    std::string name;
    std::vector<int64_t> ne;  // GGUF order, innermost first: ne[0] = in-features
    uint32_t type = 0;        // GgmlType (only readable types get this far)
    uint64_t offset = 0;      // from the start of the data section
    uint64_t nbytes = 0;
    int64_t numel() const {
        int64_t n = 1;
        for (auto d : ne) n *= d;
        return n;
    }
};

class GgufFile {
public:
    explicit GgufFile(const std::string& path);  // throws sq::Error naming the path

    const std::string& path() const { return file_.path(); }
    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }
    uint64_t file_size() const { return file_.size(); }

    const std::vector<std::string>& keys() const { return keys_; }  // in file order
    const GgufValue* find(const std::string& key) const;
    bool has(const std::string& key) const { return find(key) != nullptr; }

    // Typed getters. Integer getters accept any integer or bool type; float
    // getters any float or integer type. The one-argument forms throw when the
    // key is missing; all throw (naming file and key) on a type mismatch.
    int64_t get_int(const std::string& key) const;
    int64_t get_int(const std::string& key, int64_t def) const;
    double get_float(const std::string& key) const;
    double get_float(const std::string& key, double def) const;
    bool get_bool(const std::string& key, bool def) const;
    std::string get_string(const std::string& key) const;
    std::string get_string(const std::string& key, const std::string& def) const;
    std::vector<std::string> get_string_array(const std::string& key) const;
    std::vector<float> get_float_array(const std::string& key) const;
    std::vector<int32_t> get_int_array(const std::string& key) const;
    uint64_t array_length(const std::string& key) const;  // throws unless an array

    const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
    const GgufTensorInfo* tensor(const std::string& name) const;
    const uint8_t* tensor_data(const GgufTensorInfo& t) const { return file_.data() + data_offset_ + t.offset; }
    // Dequantizes a whole tensor to float32 in GGUF order (ne[0] fastest).
    std::vector<float> tensor_f32(const GgufTensorInfo& t) const;

private:
    const GgufValue& need(const std::string& key) const;
    MappedFile file_;
    uint32_t version_ = 0;
    uint64_t alignment_ = 32;
    uint64_t data_offset_ = 0;
    std::vector<std::string> keys_;
    std::map<std::string, GgufValue> kv_;
    std::vector<GgufTensorInfo> tensors_;
    std::map<std::string, size_t> tensor_index_;
};

// "blk.3.attn_q.weight" -> "layers.3.q", ...; "" for tensors the model does not use.
std::string gguf_canonical_name(const std::string& gguf_name);

// Metadata -> config / tokenizer (arch llama or qwen2; throws otherwise).
ModelConfig gguf_model_config(const GgufFile& f);
TokenizerData gguf_tokenizer_data(const GgufFile& f);

// Undoes llama.cpp's q/k row permutation in place: w is [n_head * hd, cols]
// in GGUF row order; on return row h*hd + j*hd/2 + i holds what GGUF row
// h*hd + 2*i + j held (i < hd/2, j in {0, 1}), i.e. HF's rotate-half order.
void gguf_unpermute_qk(float* w, int64_t n_head, int64_t hd, int64_t cols);

// A GGUF file as a Checkpoint (config validated, required tensors checked by
// checkpoint_open). Tensor loads dequantize lazily from the mapping.
Checkpoint gguf_checkpoint_open(const std::string& path);

}  // namespace sq
