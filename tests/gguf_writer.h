// Test-only writers for GGUF and safetensors files, plus tiny complete model
// builders and a scratch directory, for the I/O tests (test_gguf.cpp,
// test_safetensors.cpp, test_io_errors.cpp). Written from the format specs,
// byte by byte, so tests can also write what no real tool would (corrupt
// counts, truncated data).
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"

namespace sqt_io {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed at scope exit.
// in_memory: under /dev/shm when it exists, for tests that write thousands of
// files (on a busy disk each write-and-map can take milliseconds).
struct TempDir {
    fs::path path;
    explicit TempDir(bool in_memory = false) {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "sq_io";
        std::error_code ec;
        const fs::path base = in_memory && fs::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0
                                  ? fs::path("/dev/shm")
                                  : fs::temp_directory_path();
        path = base / ("sq_io_" + std::to_string(::getpid()) + "_" + name);
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string file(const std::string& name) const { return (path / name).string(); }
};

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
    std::ofstream out(path, std::ios::binary);
    out.write((const char*)b.data(), (std::streamsize)b.size());
}

inline void write_text(const std::string& path, const std::string& s) {
    std::ofstream out(path, std::ios::binary);
    out << s;
}

template <class T>
void put(std::vector<uint8_t>& b, T v) {
    uint8_t tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof(T));
    for (uint8_t x : tmp) b.push_back(x);  // (insert() trips a g++ 12 -Wstringop-overflow false positive)
}

inline void put_str(std::vector<uint8_t>& b, const std::string& s) {
    put<uint64_t>(b, s.size());
    b.insert(b.end(), s.begin(), s.end());
}

inline std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
    std::vector<uint8_t> b(v.size() * 4);
    std::memcpy(b.data(), v.data(), b.size());
    return b;
}

// GGUF writer. Value type ids as in the spec (UINT8 = 0 ... FLOAT64 = 12).
struct GgufWriter {
    uint32_t version = 3;
    uint32_t alignment = 32;  // also written as general.alignment when != 32
    std::vector<uint8_t> kv;  // serialized key/values
    uint64_t n_kv = 0;
    struct Tensor {
        std::string name;
        std::vector<uint64_t> ne;  // innermost first
        uint32_t type;
        std::vector<uint8_t> data;
    };
    std::vector<Tensor> tensors;
    // filled by bytes(): where things landed, for targeted corruption
    std::vector<size_t> tensor_info_pos;  // offset of each tensor info (its name length)
    size_t data_pos = 0;

    void key(const std::string& k, uint32_t type) {
        put_str(kv, k);
        put<uint32_t>(kv, type);
        ++n_kv;
    }
    void u8(const std::string& k, uint8_t v) { key(k, 0); put(kv, v); }
    void i8(const std::string& k, int8_t v) { key(k, 1); put(kv, v); }
    void u16(const std::string& k, uint16_t v) { key(k, 2); put(kv, v); }
    void i16(const std::string& k, int16_t v) { key(k, 3); put(kv, v); }
    void u32(const std::string& k, uint32_t v) { key(k, 4); put(kv, v); }
    void i32(const std::string& k, int32_t v) { key(k, 5); put(kv, v); }
    void f32(const std::string& k, float v) { key(k, 6); put(kv, v); }
    void boolean(const std::string& k, bool v) { key(k, 7); put<uint8_t>(kv, v ? 1 : 0); }
    void str(const std::string& k, const std::string& v) { key(k, 8); put_str(kv, v); }
    void u64(const std::string& k, uint64_t v) { key(k, 10); put(kv, v); }
    void i64(const std::string& k, int64_t v) { key(k, 11); put(kv, v); }
    void f64(const std::string& k, double v) { key(k, 12); put(kv, v); }
    void str_array(const std::string& k, const std::vector<std::string>& v) {
        key(k, 9);
        put<uint32_t>(kv, 8);
        put<uint64_t>(kv, v.size());
        for (const auto& s : v) put_str(kv, s);
    }
    void f32_array(const std::string& k, const std::vector<float>& v) {
        key(k, 9);
        put<uint32_t>(kv, 6);
        put<uint64_t>(kv, v.size());
        for (float x : v) put(kv, x);
    }
    void i32_array(const std::string& k, const std::vector<int32_t>& v) {
        key(k, 9);
        put<uint32_t>(kv, 5);
        put<uint64_t>(kv, v.size());
        for (int32_t x : v) put(kv, x);
    }
    void tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, std::vector<uint8_t> data) {
        tensors.push_back({name, std::move(ne), type, std::move(data)});
    }
    // F32 tensor in canonical [out, in] terms: ne = {in, out}
    void tensor_f32(const std::string& name, std::vector<uint64_t> ne, const std::vector<float>& v) {
        tensor(name, std::move(ne), 0, f32_bytes(v));
    }
    void remove_tensor(const std::string& name) {
        for (size_t i = 0; i < tensors.size(); ++i)
            if (tensors[i].name == name) {
                tensors.erase(tensors.begin() + (long)i);
                return;
            }
    }

    std::vector<uint8_t> bytes() {
        std::vector<uint8_t> b = {'G', 'G', 'U', 'F'};
        put<uint32_t>(b, version);
        std::vector<uint8_t> kvs = kv;
        uint64_t nkv = n_kv;
        if (alignment != 32) {
            put_str(kvs, "general.alignment");
            put<uint32_t>(kvs, 4);
            put<uint32_t>(kvs, alignment);
            ++nkv;
        }
        put<uint64_t>(b, tensors.size());
        put<uint64_t>(b, nkv);
        b.insert(b.end(), kvs.begin(), kvs.end());
        std::vector<uint64_t> offsets;
        uint64_t off = 0;
        for (const auto& t : tensors) {
            offsets.push_back(off);
            off += (t.data.size() + alignment - 1) / alignment * alignment;
        }
        tensor_info_pos.clear();
        for (size_t i = 0; i < tensors.size(); ++i) {
            tensor_info_pos.push_back(b.size());
            put_str(b, tensors[i].name);
            put<uint32_t>(b, (uint32_t)tensors[i].ne.size());
            for (auto d : tensors[i].ne) put<uint64_t>(b, d);
            put<uint32_t>(b, tensors[i].type);
            put<uint64_t>(b, offsets[i]);
        }
        while (b.size() % alignment) b.push_back(0);
        data_pos = b.size();
        for (const auto& t : tensors) {
            b.insert(b.end(), t.data.begin(), t.data.end());
            while ((b.size() - data_pos) % alignment) b.push_back(0);
        }
        return b;
    }
    void write(const std::string& path) { write_bytes(path, bytes()); }
};

// Tiny LLaMA-shaped sizes shared by the builders: d 8, 2 heads, 1 kv head, hd 4.
struct TinyDims {
    int d = 8, heads = 2, kv_heads = 1, hd = 4, ff = 12, vocab = 6, layers = 2;
};

// Deterministic non-trivial values: v[i] = ((i * 7 + seed) % 23 - 11) / 8.
inline std::vector<float> ramp(size_t n, int seed) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = (float)((int)((i * 7 + seed) % 23) - 11) / 8.0f;
    return v;
}

// A complete valid llama (or qwen2) GGUF model with F32 tensors, byte-level
// tokenizer, untied unless tied = true.
inline GgufWriter tiny_gguf(const std::string& arch = "llama", bool tied = false, TinyDims t = {}) {
    GgufWriter w;
    w.str("general.architecture", arch);
    w.str("general.name", "tiny");
    const std::string a = arch + ".";
    w.u32(a + "block_count", t.layers);
    w.u32(a + "context_length", 128);
    w.u32(a + "embedding_length", t.d);
    w.u32(a + "feed_forward_length", t.ff);
    w.u32(a + "attention.head_count", t.heads);
    w.u32(a + "attention.head_count_kv", t.kv_heads);
    w.f32(a + "rope.freq_base", 10000.0f);
    w.f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
    w.str("tokenizer.ggml.model", "gpt2");
    w.str("tokenizer.ggml.pre", "smollm");
    std::vector<std::string> toks;
    for (int i = 0; i < t.vocab; ++i) toks.push_back(std::string(1, (char)('a' + i)));
    w.str_array("tokenizer.ggml.tokens", toks);
    w.str_array("tokenizer.ggml.merges", {"a b", "c d"});
    w.u32("tokenizer.ggml.eos_token_id", 1);
    const uint64_t d = t.d, q = (uint64_t)t.heads * t.hd, kv = (uint64_t)t.kv_heads * t.hd, ff = t.ff, V = t.vocab;
    int seed = 0;
    auto add = [&](const std::string& name, std::vector<uint64_t> ne) {
        size_t n = 1;
        for (auto x : ne) n *= x;
        w.tensor_f32(name, ne, ramp(n, seed++));
    };
    add("token_embd.weight", {d, V});
    add("output_norm.weight", {d});
    if (!tied) add("output.weight", {d, V});
    for (int l = 0; l < t.layers; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        add(p + "attn_norm.weight", {d});
        add(p + "attn_q.weight", {d, q});
        add(p + "attn_k.weight", {d, kv});
        add(p + "attn_v.weight", {d, kv});
        add(p + "attn_output.weight", {q, d});
        add(p + "ffn_norm.weight", {d});
        add(p + "ffn_gate.weight", {d, ff});
        add(p + "ffn_up.weight", {d, ff});
        add(p + "ffn_down.weight", {ff, d});
        if (arch == "qwen2") {
            add(p + "attn_q.bias", {q});
            add(p + "attn_k.bias", {kv});
            add(p + "attn_v.bias", {kv});
        }
    }
    return w;
}

// safetensors writer: tensors in insertion order, header padded to 8 bytes.
struct SafetensorsWriter {
    struct Tensor {
        std::string name, dtype;
        std::vector<int64_t> shape;
        std::vector<uint8_t> data;
    };
    std::vector<Tensor> tensors;
    nlohmann::json metadata = nullptr;

    void add(const std::string& name, const std::string& dtype, std::vector<int64_t> shape, std::vector<uint8_t> data) {
        tensors.push_back({name, dtype, std::move(shape), std::move(data)});
    }
    void add_f32(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
        add(name, "F32", std::move(shape), f32_bytes(v));
    }
    void add_f16(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
        std::vector<uint8_t> b;
        for (float x : v) put<uint16_t>(b, sq::fp32_to_fp16(x));
        add(name, "F16", std::move(shape), std::move(b));
    }
    void add_bf16(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
        std::vector<uint8_t> b;
        for (float x : v) put<uint16_t>(b, sq::fp32_to_bf16(x));
        add(name, "BF16", std::move(shape), std::move(b));
    }
    std::string header() const {
        nlohmann::json h = nlohmann::json::object();
        if (!metadata.is_null()) h["__metadata__"] = metadata;
        uint64_t off = 0;
        for (const auto& t : tensors) {
            h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.data.size()}}};
            off += t.data.size();
        }
        std::string s = h.dump();
        while (s.size() % 8) s += ' ';
        return s;
    }
    std::vector<uint8_t> bytes(const std::string& hdr) const {
        std::vector<uint8_t> b;
        put<uint64_t>(b, hdr.size());
        b.insert(b.end(), hdr.begin(), hdr.end());
        for (const auto& t : tensors) b.insert(b.end(), t.data.begin(), t.data.end());
        return b;
    }
    std::vector<uint8_t> bytes() const { return bytes(header()); }
    void write(const std::string& path) const { write_bytes(path, bytes()); }
};

inline std::string hf_name(int layer, const std::string& rest) {
    return "model.layers." + std::to_string(layer) + "." + rest;
}

// config.json for a tiny llama (or qwen2) model of TinyDims.
inline nlohmann::json tiny_hf_config(const std::string& model_type = "llama", TinyDims t = {}) {
    return {{"model_type", model_type},      {"hidden_size", t.d},          {"intermediate_size", t.ff},
            {"num_attention_heads", t.heads}, {"num_key_value_heads", t.kv_heads},
            {"num_hidden_layers", t.layers},  {"vocab_size", t.vocab},      {"max_position_embeddings", 64},
            {"rms_norm_eps", 1e-6},           {"rope_theta", 10000.0},      {"tie_word_embeddings", false}};
}

// Every tensor of a tiny HF model (F32), lm_head included unless tied.
inline SafetensorsWriter tiny_hf_tensors(const std::string& model_type = "llama", bool tied = false, TinyDims t = {}) {
    SafetensorsWriter w;
    const int64_t d = t.d, q = (int64_t)t.heads * t.hd, kv = (int64_t)t.kv_heads * t.hd, ff = t.ff, V = t.vocab;
    int seed = 100;
    auto add = [&](const std::string& name, std::vector<int64_t> shape) {
        size_t n = 1;
        for (auto x : shape) n *= (size_t)x;
        w.add_f32(name, shape, ramp(n, seed++));
    };
    add("model.embed_tokens.weight", {V, d});
    add("model.norm.weight", {d});
    if (!tied) add("lm_head.weight", {V, d});
    for (int l = 0; l < t.layers; ++l) {
        add(hf_name(l, "input_layernorm.weight"), {d});
        add(hf_name(l, "self_attn.q_proj.weight"), {q, d});
        add(hf_name(l, "self_attn.k_proj.weight"), {kv, d});
        add(hf_name(l, "self_attn.v_proj.weight"), {kv, d});
        add(hf_name(l, "self_attn.o_proj.weight"), {d, q});
        add(hf_name(l, "post_attention_layernorm.weight"), {d});
        add(hf_name(l, "mlp.gate_proj.weight"), {ff, d});
        add(hf_name(l, "mlp.up_proj.weight"), {ff, d});
        add(hf_name(l, "mlp.down_proj.weight"), {d, ff});
        if (model_type == "qwen2") {
            add(hf_name(l, "self_attn.q_proj.bias"), {q});
            add(hf_name(l, "self_attn.k_proj.bias"), {kv});
            add(hf_name(l, "self_attn.v_proj.bias"), {kv});
        }
    }
    return w;
}

// Runs f, expecting sq::Error whose message contains every needle.
template <class F>
void expect_error(F&& f, const std::vector<std::string>& needles) {
    try {
        f();
        ADD_FAILURE() << "expected sq::Error containing \"" << (needles.empty() ? "" : needles[0]) << "\"";
    } catch (const sq::Error& e) {
        const std::string msg = e.what();
        for (const auto& n : needles)
            EXPECT_NE(msg.find(n), std::string::npos) << "message \"" << msg << "\" lacks \"" << n << "\"";
    }
}

}  // namespace sqt_io
