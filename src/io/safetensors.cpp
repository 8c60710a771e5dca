// safetensors parsing, the sharded index, and a Hugging Face directory as a
// Checkpoint. config.json parsing lives in io/hf_config.cpp.
#include "io/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/dequant.h"
#include "io/tokenizer.h"

namespace sq {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A header larger than this is corrupt (the largest real ones, ~1000-tensor
// shards, are a few hundred KB); the safetensors spec uses the same bound.
constexpr uint64_t k_max_header_bytes = 100ull << 20;

uint64_t json_u64(const json& j, const std::string& path, const std::string& name, const char* field) {
    if (!j.is_number_unsigned() && !(j.is_number_integer() && j.get<int64_t>() >= 0))
        fail(path, ": tensor ", name, ": ", field, " must hold non-negative integers, got ", j.dump());
    return j.get<uint64_t>();
}

}  // namespace

int safetensors_dtype_size(const std::string& d) {
    if (d == "F32" || d == "I32" || d == "U32") return 4;
    if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
    if (d == "F64" || d == "I64" || d == "U64") return 8;
    if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
    return 0;
}

bool safetensors_dtype_readable(const std::string& d) { return d == "F32" || d == "F16" || d == "BF16"; }

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
    const uint64_t size = file_.size();
    if (size < 8) fail(path, ": truncated safetensors file (", size, " bytes, no header length)");
    uint64_t n;
    std::memcpy(&n, file_.data(), 8);
    if (n > k_max_header_bytes)
        fail(path, ": safetensors header length ", n, " exceeds the 100 MB limit (corrupt file?)");
    if (n > size - 8)
        fail(path, ": truncated safetensors file: header length ", n, " exceeds the ", size - 8,
             " bytes after the length field");
    data_start_ = 8 + n;
    const uint64_t data_size = size - data_start_;

    json h;
    try {
        h = json::parse(file_.data() + 8, file_.data() + 8 + n);
    } catch (const json::exception& e) {
        fail(path, ": safetensors header is not valid JSON: ", e.what());
    }
    if (!h.is_object()) fail(path, ": safetensors header is not a JSON object");

    for (auto it = h.begin(); it != h.end(); ++it) {
        const std::string& name = it.key();
        if (name == "__metadata__") continue;
        const json& v = it.value();
        if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
            fail(path, ": tensor ", name, ": header entry needs dtype, shape and data_offsets");
        SafetensorsTensor t;
        if (!v["dtype"].is_string()) fail(path, ": tensor ", name, ": dtype is not a string");
        t.dtype = v["dtype"].get<std::string>();
        const int es = safetensors_dtype_size(t.dtype);
        if (es == 0) fail(path, ": tensor ", name, ": unknown dtype \"", t.dtype, "\"");
        if (!v["shape"].is_array()) fail(path, ": tensor ", name, ": shape is not an array");
        uint64_t numel = 1;
        for (const json& d : v["shape"]) {
            const uint64_t x = json_u64(d, path, name, "shape");
            if (__builtin_mul_overflow(numel, x, &numel) || x > (uint64_t)INT64_MAX)
                fail(path, ": tensor ", name, ": shape ", v["shape"].dump(), " is impossibly large");
            t.shape.push_back((int64_t)x);
        }
        const json& off = v["data_offsets"];
        if (!off.is_array() || off.size() != 2) fail(path, ": tensor ", name, ": data_offsets must be [begin, end]");
        t.begin = json_u64(off[0], path, name, "data_offsets");
        t.end = json_u64(off[1], path, name, "data_offsets");
        if (t.begin > t.end || t.end > data_size)
            fail(path, ": tensor ", name, ": data_offsets [", t.begin, ", ", t.end,
                 "] lie outside the data region (", data_size, " bytes): truncated or corrupt file");
        uint64_t nbytes;
        if (__builtin_mul_overflow(numel, (uint64_t)es, &nbytes) || nbytes != t.end - t.begin)
            fail(path, ": tensor ", name, ": data_offsets span ", t.end - t.begin, " bytes but shape ",
                 v["shape"].dump(), " of ", t.dtype, " needs ", numel, " x ", es);
        tensors_.emplace(name, std::move(t));
    }
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<float> SafetensorsFile::tensor_f32(const std::string& name) const {
    const SafetensorsTensor* t = find(name);
    if (!t) fail(path(), ": tensor ", name, " not found");
    std::vector<float> out((size_t)t->numel());
    const uint8_t* src = data(*t);
    if (t->dtype == "F32") dequantize_f32(src, out.data(), t->numel());
    else if (t->dtype == "F16") dequantize_f16(src, out.data(), t->numel());
    else if (t->dtype == "BF16") dequantize_bf16(src, out.data(), t->numel());
    else fail(path(), ": tensor ", name, ": dtype ", t->dtype, " is unsupported (supported: F32, F16, BF16)");
    return out;
}

std::map<std::string, std::string> safetensors_index_read(const std::string& index_path) {
    std::ifstream in(index_path, std::ios::binary);
    if (!in) fail(index_path, ": cannot open");
    json j;
    try {
        j = json::parse(in);
    } catch (const json::exception& e) {
        fail(index_path, ": not valid JSON: ", e.what());
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        fail(index_path, ": missing \"weight_map\" object");
    std::map<std::string, std::string> out;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        if (!it.value().is_string()) fail(index_path, ": weight_map entry ", it.key(), " is not a file name");
        const std::string file = it.value().get<std::string>();
        // shards must sit next to the index: no directories, no ".."
        if (file.empty() || file.find('/') != std::string::npos || file.find('\\') != std::string::npos ||
            file == "." || file == "..")
            fail(index_path, ": weight_map entry ", it.key(), " names \"", file, "\", expected a plain file name");
        out.emplace(it.key(), file);
    }
    return out;
}

std::string hf_canonical_name(const std::string& n) {
    if (n == "model.embed_tokens.weight") return "embed";
    if (n == "model.norm.weight") return "final_norm";
    if (n == "lm_head.weight") return "lm_head";
    const std::string prefix = "model.layers.";
    if (n.rfind(prefix, 0) != 0) return "";
    size_t i = prefix.size(), j = i;
    while (j < n.size() && n[j] >= '0' && n[j] <= '9') ++j;
    if (j == i || j - i > 6 || j >= n.size() || n[j] != '.') return "";
    const std::string layer = std::to_string(std::stoi(n.substr(i, j - i)));
    const std::string rest = n.substr(j + 1);
    static const std::pair<const char*, const char*> table[] = {
        {"input_layernorm.weight", "attn_norm"},
        {"self_attn.q_proj.weight", "q"},
        {"self_attn.k_proj.weight", "k"},
        {"self_attn.v_proj.weight", "v"},
        {"self_attn.o_proj.weight", "o"},
        {"self_attn.q_proj.bias", "q_bias"},
        {"self_attn.k_proj.bias", "k_bias"},
        {"self_attn.v_proj.bias", "v_bias"},
        {"post_attention_layernorm.weight", "ffn_norm"},
        {"mlp.gate_proj.weight", "gate"},
        {"mlp.up_proj.weight", "up"},
        {"mlp.down_proj.weight", "down"},
    };
    for (const auto& [h, c] : table)
        if (rest == h) return "layers." + layer + "." + c;
    return "";
}

Checkpoint hf_checkpoint_open(const std::string& dir) {
    const fs::path d(dir);
    Checkpoint ck;
    ck.path = dir;
    ck.format = "safetensors";
    const fs::path cfg_path = d / "config.json";
    if (!fs::exists(cfg_path)) fail(dir, ": no config.json (expected a Hugging Face model directory)");
    ck.config = hf_config_read(cfg_path.string());

    // tensor name -> shard file name
    std::map<std::string, std::string> where;
    std::vector<std::string> shard_names;
    const fs::path index = d / "model.safetensors.index.json";
    if (fs::exists(index)) {
        where = safetensors_index_read(index.string());
        for (const auto& [name, file] : where) shard_names.push_back(file);
    } else if (fs::exists(d / "model.safetensors")) {
        // the standard single file; ignore others (Mistral repos also ship
        // consolidated.safetensors in another naming scheme)
        shard_names.push_back("model.safetensors");
    } else {
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(d, ec))
            if (e.path().extension() == ".safetensors") shard_names.push_back(e.path().filename().string());
        if (ec) fail(dir, ": cannot list directory: ", ec.message());
    }
    std::sort(shard_names.begin(), shard_names.end());
    shard_names.erase(std::unique(shard_names.begin(), shard_names.end()), shard_names.end());
    if (shard_names.empty()) fail(dir, ": no *.safetensors files and no model.safetensors.index.json");

    // each shard mapped once, shared by the loaders of its tensors
    std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
    for (const auto& s : shard_names) {
        const fs::path p = d / s;
        if (!fs::exists(p)) fail(index.string(), ": shard ", s, " listed in weight_map does not exist in ", dir);
        auto f = std::make_shared<SafetensorsFile>(p.string());
        shards.emplace(s, f);
        ck.keep_alive.push_back(f);
    }

    // (hf name, shard) for every tensor: from the index when there is one
    std::vector<std::pair<std::string, std::string>> entries;
    if (!where.empty()) {
        for (const auto& [name, file] : where) {
            if (!shards.at(file)->find(name))
                fail(shards.at(file)->path(), ": tensor ", name, " is listed in ", index.string(),
                     " but not present in the shard");
            entries.emplace_back(name, file);
        }
    } else {
        std::map<std::string, std::string> seen;
        for (const auto& [file, f] : shards)
            for (const auto& [name, t] : f->tensors()) {
                auto [it, fresh] = seen.emplace(name, file);
                if (!fresh) fail(dir, ": tensor ", name, " appears in both ", it->second, " and ", file);
                entries.emplace_back(name, file);
            }
    }

    bool has_lm_head = false;
    for (const auto& [name, file] : entries) {
        const std::string canon = hf_canonical_name(name);
        if (canon.empty()) continue;
        if (canon == "lm_head") has_lm_head = true;
        const auto f = shards.at(file);
        const SafetensorsTensor& t = *f->find(name);
        TensorSource src;
        src.shape = t.shape;
        src.dtype = t.dtype;
        src.origin = f->path() + ": " + name;
        src.load = [f, name, shape = t.shape]() {
            TensorF32 out;
            out.shape = shape;
            out.data = f->tensor_f32(name);
            return out;
        };
        ck.tensors.emplace(canon, std::move(src));
    }
    if (ck.config.tied_embeddings || !has_lm_head) {
        ck.config.tied_embeddings = true;
        ck.tensors.erase("lm_head");
    }

    const fs::path tok = d / "tokenizer.json";
    if (fs::exists(tok)) {
        ck.tokenizer = tokenizer_data_from_json(tok.string());
    } else {
        // no warning here: quantization needs no tokenizer, and Tokenizer's
        // constructor fails naming this source when one is needed
        ck.tokenizer.source = (d / "tokenizer.json").string() + " (missing)";
    }
    return ck;
}

}  // namespace sq
