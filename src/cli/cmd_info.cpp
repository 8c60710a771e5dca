// specquant info -m PATH [--json]: architecture, sizes, parameter count, dtypes.
#include <cstdio>
#include <map>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/error.h"

namespace sq {

static CommandAction info_setup(CLI::App& app) {
    auto model = std::make_shared<std::string>();
    auto as_json = std::make_shared<bool>(false);
    app.add_option("-m,--model", *model, "GGUF file or Hugging Face directory")->required();
    app.add_flag("--json", *as_json, "print JSON instead of a table");
    return [=]() {
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

SQ_COMMAND(info, "info", "Print a checkpoint's architecture, sizes and tensor dtypes", info_setup);

}  // namespace sq
