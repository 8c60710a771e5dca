// checkpoint_open: a GGUF file or a Hugging Face directory, then one check
// that every tensor the model needs is present with the shape the config
// implies, so a bad checkpoint fails at open, not halfway through a load.
#include "io/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/gguf.h"
#include "io/safetensors.h"

namespace sq {

namespace fs = std::filesystem;

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

void require(const Checkpoint& ck, const std::string& name, const std::vector<int64_t>& shape) {
    auto it = ck.tensors.find(name);
    if (it == ck.tensors.end())
        fail(ck.path, ": required tensor ", name, " is missing (", ck.format, " checkpoint)");
    const TensorSource& t = it->second;
    if (t.shape != shape)
        fail(t.origin, ": shape mismatch for ", name, ": has ", shape_str(t.shape), ", config implies ",
             shape_str(shape));
    if (ck.format == "safetensors" && !safetensors_dtype_readable(t.dtype))
        fail(t.origin, ": dtype ", t.dtype, " is unsupported (supported: F32, F16, BF16)");
}

void checkpoint_validate(const Checkpoint& ck) {
    const ModelConfig& c = ck.config;
    const int64_t d = c.d_model, q = (int64_t)c.n_heads * c.head_dim, kv = (int64_t)c.n_kv_heads * c.head_dim;
    require(ck, "embed", {c.vocab, d});
    require(ck, "final_norm", {d});
    if (!c.tied_embeddings) require(ck, "lm_head", {c.vocab, d});
    for (int i = 0; i < c.n_layers; ++i) {
        const std::string p = "layers." + std::to_string(i) + ".";
        require(ck, p + "attn_norm", {d});
        require(ck, p + "q", {q, d});
        require(ck, p + "k", {kv, d});
        require(ck, p + "v", {kv, d});
        require(ck, p + "o", {d, q});
        require(ck, p + "ffn_norm", {d});
        require(ck, p + "gate", {c.d_ff, d});
        require(ck, p + "up", {c.d_ff, d});
        require(ck, p + "down", {d, c.d_ff});
        if (c.qkv_bias) {
            require(ck, p + "q_bias", {q});
            require(ck, p + "k_bias", {kv});
            require(ck, p + "v_bias", {kv});
        }
    }
}

bool has_gguf_magic(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    char m[4] = {};
    in.read(m, 4);
    return in.gcount() == 4 && std::memcmp(m, "GGUF", 4) == 0;
}

}  // namespace

TensorF32 Checkpoint::load(const std::string& name, const std::vector<int64_t>& expect_shape) const {
    auto it = tensors.find(name);
    if (it == tensors.end()) fail(path, ": tensor ", name, " not found (", format, " checkpoint)");
    const TensorSource& src = it->second;
    // an empty expect_shape means "any shape"
    if (!expect_shape.empty() && src.shape != expect_shape)
        fail(src.origin, ": shape mismatch for ", name, ": has ", shape_str(src.shape), ", expected ",
             shape_str(expect_shape));
    TensorF32 t = src.load();
    SQ_CHECK(t.shape == src.shape && (int64_t)t.data.size() == t.numel(), src.origin, ": loaded ", name,
             " has shape ", shape_str(t.shape), " and ", t.data.size(), " values, expected ", shape_str(src.shape));
    return t;
}

Checkpoint checkpoint_open(const std::string& path) {
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    if (ec || !fs::exists(st)) fail(path, ": no such file or directory");
    Checkpoint ck;
    if (fs::is_directory(st)) {
        ck = hf_checkpoint_open(path);
    } else if (has_gguf_magic(path)) {
        ck = gguf_checkpoint_open(path);
    } else if (fs::path(path).extension() == ".safetensors") {
        fail(path, ": a lone .safetensors file has no config; pass its directory (with config.json)");
    } else {
        fail(path, ": not a GGUF file (bad magic) and not a directory");
    }
    config_validate(ck.config, path);
    checkpoint_validate(ck);
    return ck;
}

}  // namespace sq
