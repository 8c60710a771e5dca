// specquant bench -m MODEL [--prefill N] [--decode N] [-t T] [--reps R] [--vs fp32 --vs-model FILE] [--json FILE]
//
// End-to-end speed and memory of one model: prefill tokens/s (one forward of
// N tokens), decode tokens/s (N single-token forwards after the prefill,
// greedy), the model file's bytes, the weights' bytes in memory, and the
// resident set (VmRSS after the run, peak VmHWM). With --vs fp32 the same is
// measured for the float32 path of the same model (--vs-model: the original
// checkpoint, e.g. models/SmolLM2-135M-Instruct.Q4_1.gguf) in the same
// process, after the first model is freed, and ratios are printed.
// Token ids are a fixed pseudo-random sequence (no tokenizer work is timed).
// Time the runs as the notes say: in a nice −20 autogroup on this shared box.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sys/resource.h>

#include "cli/common.h"
#include "core/error.h"
#include "core/threads.h"
#include "eval/report.h"
#include "kernels/cpu/cpu_features.h"

namespace sq {

namespace {

struct BenchResult {
    std::string path, kind;
    double prefill_tps = 0, decode_tps = 0, prefill_s = 0, decode_s = 0, load_s = 0;
    uint64_t file_bytes = 0, weight_bytes = 0, rss = 0, hwm = 0;
    int64_t params = 0;  // parameters of the architecture (the FP16 size is 2 bytes each)
};

// Parameters of a LLaMA-family model of this shape: embedding (+ lm_head when
// untied), per layer the norms and the seven linears (+ q/k/v bias), final norm.
int64_t model_params(const ModelConfig& c) {
    const int64_t d = c.d_model, qd = (int64_t)c.n_heads * c.head_dim, kvd = (int64_t)c.n_kv_heads * c.head_dim,
                  ff = c.d_ff, V = c.vocab;
    const int64_t layer = 2 * d + d * qd + 2 * d * kvd + qd * d + 3 * d * ff + (c.qkv_bias ? qd + 2 * kvd : 0);
    return V * d * (c.tied_embeddings ? 1 : 2) + c.n_layers * layer + d;
}

// VmRSS / VmHWM of this process in bytes.
uint64_t proc_status_kb(const char* key) {
    std::ifstream f("/proc/self/status");
    std::string line;
    const std::string k = std::string(key) + ":";
    while (std::getline(f, line))
        if (line.rfind(k, 0) == 0) return std::stoull(line.substr(k.size())) * 1024;
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)ru.ru_maxrss * 1024;  // no /proc: the peak from getrusage
}

uint64_t path_bytes(const std::string& p) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) return fs::file_size(p, ec);
    uint64_t s = 0;
    if (fs::is_directory(p, ec))
        for (const auto& e : fs::recursive_directory_iterator(p, ec))
            if (e.is_regular_file(ec)) s += e.file_size(ec);
    return s;
}

// Bytes of everything the forward pass reads that is a weight.
uint64_t model_weight_bytes(const Model& m, std::string* kinds) {
    const ModelWeights& w = m.weights();
    uint64_t b = (w.embed.size() + w.final_norm.size()) * sizeof(float) + (w.embed_q8 ? w.embed_q8->bytes() : 0);
    std::string k;
    auto add = [&](const Linear& L) {
        b += L.weight_bytes();
        if (k.find(L.kind()) == std::string::npos) k += (k.empty() ? "" : ",") + L.kind();
    };
    for (const LayerWeights& L : w.layers) {
        b += (L.attn_norm.size() + L.ffn_norm.size()) * sizeof(float);
        for (const Linear* p : {L.q.get(), L.k.get(), L.v.get(), L.o.get(), L.gate.get(), L.up.get(), L.down.get()})
            add(*p);
    }
    auto* lm8 = dynamic_cast<const LinearQ8*>(w.lm_head.get());
    if (lm8 && lm8->matrix() == w.embed_q8) k += ",q8 (tied)";  // the table, counted once above
    else add(*w.lm_head);
    *kinds = k;
    return b;
}

BenchResult bench_one(const std::string& path, int prefill, int decode, int reps) {
    BenchResult r;
    r.path = path;
    LoadedModel m = model_open(path, false);
    r.load_s = m.load_s;
    r.file_bytes = path_bytes(path);
    r.weight_bytes = model_weight_bytes(*m.model, &r.kind);
    const ModelConfig& c = m.model->config();
    r.params = model_params(c);
    std::mt19937 rng(1234);
    std::vector<int> ids(std::max(prefill, 1));
    for (int& t : ids) t = (int)(rng() % (uint32_t)c.vocab);
    std::vector<float> logits(c.vocab);
    {  // warm-up: page in the weights, start the threads
        KVCache warm(c, 16);
        m.model->forward(ids.data(), std::min<int>(8, (int)ids.size()), warm, logits.data(), false);
    }
    r.prefill_s = r.decode_s = 1e30;
    for (int rep = 0; rep < reps; ++rep) {
        KVCache cache(c, prefill + decode + 1);
        const auto t0 = std::chrono::steady_clock::now();
        if (prefill > 0) m.model->forward(ids.data(), prefill, cache, logits.data(), false);
        const auto t1 = std::chrono::steady_clock::now();
        int next = ids.back();
        for (int i = 0; i < decode; ++i) {
            m.model->forward(&next, 1, cache, logits.data(), false);
            next = (int)(std::max_element(logits.begin(), logits.end()) - logits.begin());
        }
        const auto t2 = std::chrono::steady_clock::now();
        r.prefill_s = std::min(r.prefill_s, std::chrono::duration<double>(t1 - t0).count());
        r.decode_s = std::min(r.decode_s, std::chrono::duration<double>(t2 - t1).count());
    }
    r.prefill_tps = prefill > 0 ? prefill / r.prefill_s : 0;
    r.decode_tps = decode > 0 ? decode / r.decode_s : 0;
    r.rss = proc_status_kb("VmRSS");
    r.hwm = proc_status_kb("VmHWM");
    return r;
}

void print_row(const char* label, const BenchResult& r) {
    std::printf("| %-8s | %-34s | %10.1f | %10.2f | %9.1f | %9.1f | %9.1f | %9.1f |\n", label, r.kind.c_str(),
                r.prefill_tps, r.decode_tps, r.file_bytes / 1e6, r.weight_bytes / 1e6, r.rss / 1e6, r.hwm / 1e6);
}

nlohmann::json to_json(const BenchResult& r) {
    return {{"model", r.path},           {"linear_kinds", r.kind},     {"prefill_tok_s", r.prefill_tps},
            {"decode_tok_s", r.decode_tps}, {"prefill_s", r.prefill_s}, {"decode_s", r.decode_s},
            {"file_bytes", r.file_bytes},   {"weight_bytes", r.weight_bytes}, {"rss_bytes", r.rss},
            {"peak_rss_bytes", r.hwm},      {"load_s", r.load_s},      {"params", r.params},
            {"fp16_bytes", 2 * r.params}};
}

}  // namespace

static CommandAction bench_setup(CLI::App& app) {
    struct Opts {
        std::string model, vs = "none", vs_model, json;
        int prefill = 512, decode = 64, threads = 0, reps = 1;
    };
    auto o = std::make_shared<Opts>();
    app.add_option("-m,--model", o->model, "model: packed .sqm, GGUF file or Hugging Face directory")->required();
    app.add_option("--prefill", o->prefill, "prompt tokens in one forward (0 = skip)")->capture_default_str();
    app.add_option("--decode", o->decode, "tokens generated one at a time after the prompt")->capture_default_str();
    app.add_option("-t,--threads", o->threads, "threads (0 = all)")->capture_default_str();
    app.add_option("--reps", o->reps, "repetitions; the fastest is reported")->capture_default_str();
    app.add_option("--vs", o->vs, "baseline in the same process: none | fp32 (needs --vs-model)")
        ->capture_default_str();
    app.add_option("--vs-model", o->vs_model, "the float32 baseline model (the checkpoint the packed model came from)");
    app.add_option("--json", o->json, "also write the results as JSON to this file");
    return [o]() {
        SQ_CHECK(o->prefill >= 0 && o->decode >= 0 && o->prefill + o->decode > 0, "bench: --prefill/--decode");
        SQ_CHECK(o->reps >= 1, "bench: --reps must be >= 1");
        SQ_CHECK(o->vs == "none" || o->vs == "fp32", "bench: --vs must be none or fp32, got '", o->vs, "'");
        if (!o->vs_model.empty() && o->vs == "none") o->vs = "fp32";
        SQ_CHECK(o->vs == "none" || !o->vs_model.empty(),
                 "bench: --vs fp32 needs --vs-model FILE (the float checkpoint, e.g. "
                 "models/SmolLM2-135M-Instruct.Q4_1.gguf)");
        threads_set(o->threads);
        std::fprintf(stderr, "bench: %d threads, cpu %s, prefill %d, decode %d, best of %d\n", threads_count(),
                     cpu_describe().c_str(), o->prefill, o->decode, o->reps);
        const BenchResult a = bench_one(o->model, o->prefill, o->decode, o->reps);
        BenchResult b;
        if (o->vs == "fp32") b = bench_one(o->vs_model, o->prefill, o->decode, o->reps);
        std::printf("| model    | linear layers                      | prefill t/s | decode t/s | file MB   | weights MB | RSS MB    | peak RSS MB |\n");
        std::printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
        print_row("model", a);
        const double fp16 = 2.0 * (double)a.params;
        std::printf("FP16 size of this architecture: %.1f MB (%.2fM parameters); the model's file is %.2fx, its "
                    "weights in memory %.2fx, its RSS %.2fx smaller\n",
                    fp16 / 1e6, a.params / 1e6, fp16 / std::max<uint64_t>(a.file_bytes, 1),
                    fp16 / std::max<uint64_t>(a.weight_bytes, 1), fp16 / std::max<uint64_t>(a.rss, 1));
        nlohmann::json j = {{"threads", threads_count()}, {"prefill_tokens", o->prefill},
                            {"decode_tokens", o->decode}, {"model", to_json(a)}};
        if (o->vs == "fp32") {
            print_row("fp32", b);
            std::printf("ratios (model vs fp32): prefill %.2fx, decode %.2fx faster; file %.2fx, weights %.2fx, "
                        "RSS %.2fx smaller\n",
                        a.prefill_tps / std::max(b.prefill_tps, 1e-9), a.decode_tps / std::max(b.decode_tps, 1e-9),
                        (double)b.file_bytes / std::max<uint64_t>(a.file_bytes, 1),
                        (double)b.weight_bytes / std::max<uint64_t>(a.weight_bytes, 1),
                        (double)b.rss / std::max<uint64_t>(a.rss, 1));
            std::printf("(peak RSS of the second row includes the first model's peak: one process)\n");
            j["fp32"] = to_json(b);
        }
        if (!o->json.empty()) write_file_atomic(o->json, j.dump(2) + "\n");
        return 0;
    };
}

SQ_COMMAND(bench, "bench", "Prefill/decode tokens/s, model bytes and RSS (optionally against the float32 model)",
           bench_setup);

}  // namespace sq
