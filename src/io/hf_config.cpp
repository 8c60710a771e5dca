// Hugging Face config.json -> ModelConfig for model_type llama, mistral and
// qwen2. Fields we read (HF names): num_hidden_layers, hidden_size,
// intermediate_size, num_attention_heads, num_key_value_heads, head_dim,
// vocab_size, max_position_embeddings, rms_norm_eps, rope_theta,
// rope_scaling {type | rope_type, factor, low_freq_factor, high_freq_factor,
// original_max_position_embeddings} or its transformers-5 form rope_parameters
// (same keys plus rope_theta), tie_word_embeddings, attention_bias.
// Absent optional fields take HF's defaults; null counts as absent.
#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/safetensors.h"

namespace sq {

using json = nlohmann::json;

namespace {

struct Fields {
    const json& j;
    const std::string& src;

    const json* get(const json& obj, const char* key) const {
        auto it = obj.find(key);
        return it == obj.end() || it->is_null() ? nullptr : &*it;
    }
    int integer(const json& obj, const char* key, const char* where) const {
        const json* v = get(obj, key);
        if (!v) fail(src, ": missing field ", where, key);
        if (!v->is_number_integer()) fail(src, ": field ", where, key, " must be an integer, got ", v->dump());
        const int64_t x = v->get<int64_t>();
        if (x < INT32_MIN || x > INT32_MAX) fail(src, ": field ", where, key, " = ", x, " is out of range");
        return (int)x;
    }
    int integer(const char* key) const { return integer(j, key, ""); }
    int integer(const char* key, int def) const { return get(j, key) ? integer(key) : def; }
    float number(const json& obj, const char* key, const char* where) const {
        const json* v = get(obj, key);
        if (!v) fail(src, ": missing field ", where, key);
        if (!v->is_number()) fail(src, ": field ", where, key, " must be a number, got ", v->dump());
        return v->get<float>();
    }
    float number(const char* key, float def) const { return get(j, key) ? number(j, key, "") : def; }
    bool boolean(const char* key, bool def) const {
        const json* v = get(j, key);
        if (!v) return def;
        if (!v->is_boolean()) fail(src, ": field ", key, " must be true or false, got ", v->dump());
        return v->get<bool>();
    }
    std::string string(const json& obj, const char* key, const char* where) const {
        const json* v = get(obj, key);
        if (!v) return "";
        if (!v->is_string()) fail(src, ": field ", where, key, " must be a string, got ", v->dump());
        return v->get<std::string>();
    }
};

}  // namespace

ModelConfig hf_config_parse(const std::string& text, const std::string& source) {
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception& e) {
        fail(source, ": not valid JSON: ", e.what());
    }
    if (!j.is_object()) fail(source, ": expected a JSON object");
    Fields f{j, source};

    ModelConfig c;
    const std::string type = f.string(j, "model_type", "");
    if (type.empty()) fail(source, ": missing field model_type");
    if (type != "llama" && type != "mistral" && type != "qwen2")
        fail(source, ": unsupported model_type \"", type, "\"; supported: llama, mistral, qwen2");
    c.arch = type == "qwen2" ? "qwen2" : "llama";  // Mistral is LLaMA-shaped
    c.qkv_bias = type == "qwen2";
    if (type != "qwen2" && f.boolean("attention_bias", false))
        fail(source, ": attention_bias = true is unsupported for model_type ", type);
    c.name = f.string(j, "_name_or_path", "");
    if (c.name.empty()) c.name = type;

    c.n_layers = f.integer("num_hidden_layers");
    c.d_model = f.integer("hidden_size");
    c.d_ff = f.integer("intermediate_size");
    c.n_heads = f.integer("num_attention_heads");
    c.n_kv_heads = f.integer("num_key_value_heads", c.n_heads);
    c.head_dim = f.integer("head_dim", c.n_heads > 0 && c.d_model % c.n_heads == 0 ? c.d_model / c.n_heads : 0);
    c.vocab = f.integer("vocab_size");
    c.max_ctx = f.integer("max_position_embeddings", c.max_ctx);
    c.rms_eps = f.number("rms_norm_eps", 1e-6f);  // HF LlamaConfig's default
    c.rope_theta = f.number("rope_theta", 10000.0f);
    c.tied_embeddings = f.boolean("tie_word_embeddings", false);

    // transformers >= 5 writes rope_parameters {rope_theta, rope_type, factor, ...};
    // older configs write rope_theta at top level and rope_scaling {type | rope_type, ...}
    const json* rp = f.get(j, "rope_parameters");
    const char* rp_name = "rope_parameters.";
    if (rp) {
        if (!rp->is_object()) fail(source, ": field rope_parameters must be an object or null");
        if (f.get(*rp, "rope_theta")) c.rope_theta = f.number(*rp, "rope_theta", rp_name);
    } else if ((rp = f.get(j, "rope_scaling"))) {
        rp_name = "rope_scaling.";
        if (!rp->is_object()) fail(source, ": field rope_scaling must be an object or null");
    }
    if (rp) {
        std::string kind = f.string(*rp, "rope_type", rp_name);
        if (kind.empty()) kind = f.string(*rp, "type", rp_name);
        if (kind.empty() && f.get(*rp, "rope_theta") && !f.get(*rp, "factor")) kind = "default";
        if (kind == "linear") {
            c.rope_scaling = ROPE_SCALING_LINEAR;
            c.rope_factor = f.number(*rp, "factor", rp_name);
        } else if (kind == "llama3") {
            c.rope_scaling = ROPE_SCALING_LLAMA3;
            c.rope_factor = f.number(*rp, "factor", rp_name);
            c.rope_low_freq_factor = f.number(*rp, "low_freq_factor", rp_name);
            c.rope_high_freq_factor = f.number(*rp, "high_freq_factor", rp_name);
            c.rope_original_max_pos = f.integer(*rp, "original_max_position_embeddings", rp_name);
        } else if (kind != "default") {
            fail(source, ": ", std::string(rp_name, std::strlen(rp_name) - 1), " type \"", kind,
                 "\" is unsupported; supported: default, linear, llama3");
        }
    }
    return c;
}

ModelConfig hf_config_read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, ": cannot open");
    std::ostringstream ss;
    ss << in.rdbuf();
    return hf_config_parse(ss.str(), path);
}

}  // namespace sq
