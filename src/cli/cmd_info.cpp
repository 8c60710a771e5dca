// specquant info -m PATH [--json]: architecture, sizes, parameter count,
// dtypes; for a packed model (.sqm) also how it was quantized and where its
// bytes go.
#include <cstdio>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/error.h"
#include "io/packed_file.h"
#include "quant/packed_model.h"

namespace sq {

// A packed model: header and metadata only (the tensors stay unread).
static int info_packed(const std::string& path, bool as_json) {
    const PackedFile pf = packed_open(path);
    const nlohmann::json& meta = pf.meta;
    SQ_CHECK(meta.value("format", "") == "specquant-packed", path, ": not a SpecQuant model file");
    const ModelConfig c = config_from_json(meta.at("config"), path);
    // bytes by what they hold: the suffix of the tensor name (codes, coef, scale, q8, …)
    std::map<std::string, uint64_t> by_kind;
    std::map<std::string, int> linear_types;
    uint64_t total = 0;
    for (auto& [name, v] : pf.tensors) {
        const auto dot = name.rfind('.');
        std::string kind = dot == std::string::npos ? name : name.substr(dot + 1);
        if (name.rfind("layers.", 0) == 0 && (kind == "attn_norm" || kind == "ffn_norm")) kind = "norms";
        by_kind[kind] += v.nbytes;
        total += v.nbytes;
    }
    for (auto& [name, l] : meta.at("linears").items()) linear_types[l.value("type", "?")]++;
    const uint64_t file = std::filesystem::file_size(path);
    const nlohmann::json& q = meta.at("quant");
    if (as_json) {
        nlohmann::json j = {{"path", path}, {"format", "packed"}, {"file_bytes", file}, {"config", meta.at("config")},
                            {"quant", q}, {"kv_bits", meta.at("kv_bits")}, {"embed_type", meta.value("embed_type", "f16")},
                            {"lm_head_tied", meta.value("lm_head_tied", false)}, {"linear_types", linear_types},
                            {"tensor_bytes", by_kind}, {"tensors", pf.tensors.size()}};
        std::printf("%s\n", j.dump(2).c_str());
        return 0;
    }
    auto str = [&](const char* key) {
        if (!q.contains(key)) return std::string("-");
        return q.at(key).is_string() ? q.at(key).get<std::string>() : q.at(key).dump();
    };
    std::printf("%-16s %s (packed, %.1f MB)\n", "model", path.c_str(), file / 1e6);
    std::printf("%-16s %s  %s, %d layers, d_model %d, %d q / %d kv heads, d_ff %d, vocab %d\n", "arch",
                c.arch.c_str(), c.name.c_str(), c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab);
    std::printf("%-16s %s W%sA%sKV%d\n", "method", q.value("method", "?").c_str(), str("w_bits").c_str(),
                str("a_bits").c_str(), (int)meta.at("kv_bits"));
    std::printf("%-16s smooth %s, spectral %s (k̄ %s, %s, basis %s), rotate %s, weights %s\n", "options",
                str("smooth").c_str(), str("spectral").c_str(), str("k_bar").c_str(), str("importance").c_str(),
                str("basis").c_str(), str("rotate").c_str(), str("weight_quantizer").c_str());
    std::printf("%-16s %s, %s x %s tokens, seed %s\n", "calibration", str("calib").c_str(), str("calib_n").c_str(),
                str("calib_len").c_str(), str("seed").c_str());
    std::printf("%-16s %s (sha256 %s)\n", "source", str("source").c_str(), str("source_sha256").c_str());
    std::printf("%-16s %s, lm_head %s\n", "embedding", meta.value("embed_type", "f16").c_str(),
                meta.value("lm_head_tied", false) ? "tied" : "its own");
    for (auto& [t, n] : linear_types) std::printf("%-16s %-5s %4d layers\n", "linear", t.c_str(), n);
    for (auto& [k, b] : by_kind)
        std::printf("%-16s %-10s %8.2f MB (%4.1f%%)\n", "bytes", k.c_str(), b / 1e6, 100.0 * b / std::max<uint64_t>(total, 1));
    return 0;
}

static CommandAction info_setup(CLI::App& app) {
    auto model = std::make_shared<std::string>();
    auto as_json = std::make_shared<bool>(false);
    app.add_option("-m,--model", *model, "GGUF file, Hugging Face directory or packed model (.sqm)")->required();
    app.add_flag("--json", *as_json, "print JSON instead of a table");
    return [=]() {
        if (packed_is(*model)) return info_packed(*model, *as_json);
        Checkpoint ck = checkpoint_open(*model);
        const ModelConfig& c = ck.config;
        int64_t params = 0;
        std::map<std::string, int64_t> dtype_count, dtype_params;
        for (auto& [name, t] : ck.tensors) {
            int64_t n = 1;
            for (auto s : t.shape) n *= s;
            params += n;
            dtype_count[t.dtype]++;
            dtype_params[t.dtype] += n;
        }
        if (*as_json) {
            nlohmann::json j = {{"path", ck.path}, {"format", ck.format}, {"arch", c.arch}, {"name", c.name},
                                {"n_layers", c.n_layers}, {"d_model", c.d_model}, {"n_heads", c.n_heads},
                                {"n_kv_heads", c.n_kv_heads}, {"head_dim", c.head_dim}, {"d_ff", c.d_ff},
                                {"vocab", c.vocab}, {"max_ctx", c.max_ctx}, {"rope_theta", c.rope_theta},
                                {"rms_eps", c.rms_eps}, {"tied_embeddings", c.tied_embeddings},
                                {"qkv_bias", c.qkv_bias}, {"params", params}, {"tensors", ck.tensors.size()}};
            for (auto& [dt, n] : dtype_count) j["dtypes"][dt] = {{"tensors", n}, {"params", dtype_params[dt]}};
            std::printf("%s\n", j.dump(2).c_str());
            return 0;
        }
        const char* scaling[] = {"none", "linear", "llama3"};
        std::printf("%-16s %s (%s)\n", "model", ck.path.c_str(), ck.format.c_str());
        std::printf("%-16s %s  %s\n", "arch", c.arch.c_str(), c.name.c_str());
        std::printf("%-16s %d\n", "layers", c.n_layers);
        std::printf("%-16s %d\n", "d_model", c.d_model);
        std::printf("%-16s %d q / %d kv, head_dim %d\n", "heads", c.n_heads, c.n_kv_heads, c.head_dim);
        std::printf("%-16s %d\n", "d_ff", c.d_ff);
        std::printf("%-16s %d\n", "vocab", c.vocab);
        std::printf("%-16s %d\n", "max_ctx", c.max_ctx);
        std::printf("%-16s theta %g, scaling %s (factor %g)\n", "rope", c.rope_theta, scaling[c.rope_scaling],
                    c.rope_factor);
        std::printf("%-16s %g\n", "rms_eps", c.rms_eps);
        std::printf("%-16s %s\n", "embeddings", c.tied_embeddings ? "tied" : "untied");
        std::printf("%-16s %s\n", "qkv bias", c.qkv_bias ? "yes" : "no");
        std::printf("%-16s %.2fM in %zu tensors\n", "parameters", params / 1e6, ck.tensors.size());
        for (auto& [dt, n] : dtype_count)
            std::printf("%-16s %-5s %4lld tensors, %.2fM params\n", "dtype", dt.c_str(), (long long)n,
                        dtype_params[dt] / 1e6);
        std::printf("%-16s %s, %zu tokens, bos %d, eos %d\n", "tokenizer",
                    ck.tokenizer.kind == TOKENIZER_BPE_BYTE ? ("byte-level BPE/" + ck.tokenizer.pre).c_str()
                                                            : "SentencePiece BPE",
                    ck.tokenizer.tokens.size(), ck.tokenizer.bos, ck.tokenizer.eos);
        return 0;
    };
}

SQ_COMMAND(info, "info", "Print a model's architecture, sizes, tensor dtypes (and, packed, how it was quantized)", info_setup);

}  // namespace sq
