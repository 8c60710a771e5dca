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
//
// specquant bench --device cuda (--shape llama3-8b|llama2-7b|smollm2 | -m MODEL) [--prefill-lens 256,2048,8192]
//                 [--batches 1,8,32] [--ctx 512] [--decode 32] [--rank 31] [--kv-bits 16] [--reps 3]
//                 [--spectral auto|fused|separate] [--fuse 1|0] [--bf16-kv-bits N] [--json FILE]
// (built with -DSPECQUANT_CUDA=ON): the GPU engine (model/model_cuda.h) in the
// same process for W4A4 on the INT8 tensor cores (spectral branch off and,
// with --rank R > 0, on at rank R), and every linear layer in BF16 through
// cuBLAS (bf16 in, fp32 accumulate and out). --shape: synthetic weights of
// the real shapes made on the device (W4A4: random codes, scales, row sums;
// lm_head BF16 in both); -m: a real model (W4A4 as packed; BF16 = its weights
// rounded, quantized layers as bf16(scale·code + C·Bᵀ)). Prefill: one forward
// of N tokens plus the last token's logits, from an empty cache (best of
// --reps). Decode: B independent sequences, each with its own cache region
// filled with --ctx random positions, then --decode steps of one token per
// sequence (logits for all B rows, no sampling) replayed as a CUDA graph.
// A per-op breakdown (CUDA events around every op, run eagerly) follows each.
// Attention, norms, RoPE and the KV cache are the same code in every variant: fp32
// storage at --kv-bits 16 (or 5..8: fake-quantized values), packed 4-bit codes at
// --kv-bits ≤ 4 (decode v5; SQ_CUDA_KV=f32 for the fake-quantized fp32 cache).
// --bf16-kv-bits N gives the BF16 baseline its own KV bits (default: --kv-bits).
// Decode v7's side-stream L2 prefetch (ModelCudaOptions::l2_prefetch_mib): every run takes SQ_CUDA_L2PF
// (default 32 MiB); SQ_CUDA_BF16_L2PF=N gives the BF16 run its own (off vs 32 MiB moved its decode by
// +1% in one H100 call and −1.4% in another, docs/perf.md "Session 13": no better setting for it).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sys/resource.h>

#include "cli/common.h"
#include "core/env.h"
#include "core/error.h"
#include "core/threads.h"
#include "eval/report.h"
#include "kernels/cpu/cpu_features.h"
#ifdef SPECQUANT_HAS_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.h"
#include "model/model_cuda.h"
#endif

namespace sq {

namespace {

struct BenchResult {
    std::string path, kind;
    double prefill_tps = 0, decode_tps = 0, prefill_s = 0, decode_s = 0, load_s = 0;
    uint64_t file_bytes = 0, weight_bytes = 0, rss = 0, hwm = 0;
    uint64_t load_rss = 0, load_hwm = 0, kv_bytes = 0;  // right after loading; the KV cache of a timed run
    int kv_bits = 16;
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
    uint64_t b = (w.embed.size() + w.final_norm.size()) * sizeof(float) + (w.embed_q8 ? w.embed_q8->bytes() : 0) +
                 (w.embed_q4 ? w.embed_q4->bytes() : 0);
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
    auto* lm4 = dynamic_cast<const LinearQ4*>(w.lm_head.get());
    if (lm8 && lm8->matrix() == w.embed_q8) k += ",q8 (tied)";  // the table, counted once above
    else if (lm4 && lm4->matrix() == w.embed_q4) k += ",q4 (tied)";
    else add(*w.lm_head);
    *kinds = k;
    return b;
}

BenchResult bench_one(const std::string& path, int prefill, int decode, int reps) {
    BenchResult r;
    r.path = path;
    LoadedModel m = model_open(path, false);
    r.load_s = m.load_s;
    r.load_rss = proc_status_kb("VmRSS");
    r.load_hwm = proc_status_kb("VmHWM");
    std::fprintf(stderr, "bench: %s loaded: RssAnon %.1f MB, RssFile %.1f MB\n", path.c_str(),
                 proc_status_kb("RssAnon") / 1e6, proc_status_kb("RssFile") / 1e6);
    r.file_bytes = path_bytes(path);
    r.weight_bytes = model_weight_bytes(*m.model, &r.kind);
    const ModelConfig& c = m.model->config();
    r.params = model_params(c);
    std::mt19937 rng(1234);
    std::vector<int> ids(std::max(prefill, 1));
    for (int& t : ids) t = (int)(rng() % (uint32_t)c.vocab);
    std::vector<float> logits(c.vocab);
    {  // warm-up: page in the weights, start the threads
        KVCache warm = m.model->make_cache(16);
        m.model->forward(ids.data(), std::min<int>(8, (int)ids.size()), warm, logits.data(), false);
    }
    r.prefill_s = r.decode_s = 1e30;
    for (int rep = 0; rep < reps; ++rep) {
        KVCache cache = m.model->make_cache(prefill + decode + 1);
        r.kv_bytes = cache.bytes(), r.kv_bits = cache.bits;
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
    std::fprintf(stderr, "bench: %s: after load RSS %.1f MB (peak %.1f); KV cache %.1f MB (%d-bit, %d positions)\n",
                 path.c_str(), r.load_rss / 1e6, r.load_hwm / 1e6, r.kv_bytes / 1e6, r.kv_bits, prefill + decode + 1);
    std::fprintf(stderr, "bench: %s: end RssAnon %.1f MB, RssFile %.1f MB, VmRSS %.1f, VmHWM %.1f\n", path.c_str(),
                 proc_status_kb("RssAnon") / 1e6, proc_status_kb("RssFile") / 1e6, r.rss / 1e6, r.hwm / 1e6);
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
            {"peak_rss_bytes", r.hwm},      {"load_rss_bytes", r.load_rss}, {"load_peak_rss_bytes", r.load_hwm},
            {"kv_cache_bytes", r.kv_bytes}, {"kv_cache_bits", r.kv_bits}, {"load_s", r.load_s},      {"params", r.params},
            {"fp16_bytes", 2 * r.params}};
}


// Options of `bench --device cuda` (declared in every build so that --help is the same).
struct CudaBenchOpts {
    std::string shape, model, json;
    std::vector<int> prefill = {256, 2048, 8192}, batches = {1, 8, 32};
    int ctx = 512, decode = 32, rank = 31, kv_bits = 16, reps = 3;
    int bf16_kv_bits = -1;  // −1: kv_bits
    std::string spectral = "auto";
    int fuse = 1;
    int lm_head_bits = 16;  // --shape: 8 = the W4A4 variants' lm_head as Q8_0 in decode (the BF16 run stays BF16)
};

#ifdef SPECQUANT_HAS_CUDA
// The real shapes of the models the issue names (config.json of each).
ModelConfig shape_config(const std::string& s) {
    ModelConfig c;
    c.name = s;
    if (s == "llama3-8b") {
        c.n_layers = 32, c.d_model = 4096, c.n_heads = 32, c.n_kv_heads = 8, c.head_dim = 128, c.d_ff = 14336;
        c.vocab = 128256, c.max_ctx = 8192, c.rope_theta = 500000.0f, c.rope_scaling = ROPE_SCALING_LLAMA3;
        c.rope_factor = 8.0f, c.rope_original_max_pos = 8192;
    } else if (s == "llama2-7b") {
        c.n_layers = 32, c.d_model = 4096, c.n_heads = 32, c.n_kv_heads = 32, c.head_dim = 128, c.d_ff = 11008;
        c.vocab = 32000, c.max_ctx = 4096;
    } else if (s == "smollm2") {  // SmolLM2-135M
        c.n_layers = 30, c.d_model = 576, c.n_heads = 9, c.n_kv_heads = 3, c.head_dim = 64, c.d_ff = 1536;
        c.vocab = 49152, c.max_ctx = 8192, c.rope_theta = 100000.0f, c.tied_embeddings = true;
    } else {
        fail("bench: --shape must be llama3-8b, llama2-7b or smollm2, got '", s, "'");
    }
    return c;
}

using Breakdown = std::vector<std::pair<std::string, double>>;

nlohmann::json breakdown_json(const Breakdown& b) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [k, v] : b) j[k] = v;
    return j;
}

// One line: the ops by decreasing time (those under 0.5% of the total left out), and the sum.
std::string breakdown_line(const Breakdown& b) {
    double total = 0;
    for (const auto& [k, v] : b) total += v;
    std::string out;
    std::vector<std::pair<std::string, double>> sorted = b;
    std::stable_sort(sorted.begin(), sorted.end(), [](auto& x, auto& y) { return x.second > y.second; });
    for (const auto& [k, v] : sorted) {
        if (v < 0.005 * total) continue;
        char buf[128];
        std::snprintf(buf, sizeof buf, "%s%s %.2f ms (%.0f%%)", out.empty() ? "" : ", ", k.c_str(), v,
                      100.0 * v / std::max(total, 1e-12));
        out += buf;
    }
    char buf[64];
    std::snprintf(buf, sizeof buf, " | sum %.2f ms", total);
    return out + buf;
}

struct VariantResult {
    std::string name;
    CudaMemory mem;
    std::vector<double> prefill_ms;                  // per --prefill-lens (NaN: skipped)
    std::vector<double> decode_ms;                   // per --batches: one step
    std::vector<Breakdown> prefill_bd, decode_bd;
};

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

VariantResult cuda_variant(const std::string& name, const CudaBenchOpts& o, std::unique_ptr<ModelCuda> m) {
    VariantResult r;
    r.name = name;
    r.mem = m->memory();
    const ModelConfig& c = m->config();
    std::mt19937 rng(1234);
    const int maxn = *std::max_element(o.prefill.begin(), o.prefill.end());
    std::vector<int> ids(std::max(maxn, *std::max_element(o.batches.begin(), o.batches.end())));
    for (int& t : ids) t = (int)(rng() % (uint32_t)c.vocab);
    std::vector<float> logits(c.vocab);
    for (int n : o.prefill) {
        std::fprintf(stderr, "bench: %s prefill %d\n", name.c_str(), n);
        double best = 1e30;
        for (int rep = 0; rep <= o.reps; ++rep) {  // rep 0: warm-up (cuBLAS heuristics, graphs, clocks)
            m->truncate(0);
            m->synchronize();
            const double t0 = now_s();
            m->forward_logits(ids.data(), n, logits.data(), false);
            const double t = now_s() - t0;
            if (rep > 0) best = std::min(best, t);
        }
        r.prefill_ms.push_back(best * 1e3);
        m->truncate(0);
        m->set_profile(true);
        m->forward_logits(ids.data(), n, logits.data(), false);
        r.prefill_bd.push_back(m->profile_take());
        m->set_profile(false);
    }
    m->truncate(0);
    for (int B : o.batches) {
        std::fprintf(stderr, "bench: %s decode batch %d\n", name.c_str(), B);
        m->decode_setup(B, o.ctx + o.decode + 3);
        m->decode_fill_random(o.ctx, 77);
        m->decode_step(ids.data(), nullptr);  // warm-up: captures the step's graph
        m->synchronize();
        const double t0 = now_s();
        for (int i = 0; i < o.decode; ++i) m->decode_step(ids.data(), nullptr);
        m->synchronize();
        r.decode_ms.push_back((now_s() - t0) * 1e3 / o.decode);
        m->set_profile(true);
        m->decode_step(ids.data(), nullptr);
        r.decode_bd.push_back(m->profile_take());
        m->set_profile(false);
    }
    return r;
}

int cuda_bench(const CudaBenchOpts& o) {
    SQ_CHECK(o.shape.empty() != o.model.empty(), "bench --device cuda: give --shape or -m, not both");
    SQ_CHECK(!o.prefill.empty() && !o.batches.empty(), "bench: --prefill-lens and --batches must not be empty");
    for (int n : o.prefill) SQ_CHECK(n > 0, "bench: prefill length ", n);
    for (int b : o.batches) SQ_CHECK(b > 0 && b <= 512, "bench: batch ", b, " out of range 1..512");
    SQ_CHECK(o.ctx >= 1 && o.decode >= 1 && o.reps >= 1 && o.rank >= 0, "bench: --ctx/--decode/--reps/--rank");
    const int fuse_rows = spectral_fuse_rows_from_name(o.spectral, "bench: --spectral");
    const int maxn = *std::max_element(o.prefill.begin(), o.prefill.end());
    const int maxb = *std::max_element(o.batches.begin(), o.batches.end());
    const int cap = std::max(maxn, maxb * (o.ctx + o.decode + 3));
    cudaDeviceProp prop{};
    SQ_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::fprintf(stderr, "bench: %s, capacity %d rows\n", prop.name, cap);

    const int base_kv = o.bf16_kv_bits < 0 ? o.kv_bits : o.bf16_kv_bits;
    const ModelCudaOptions env = ModelCudaOptions::from_env();  // SQ_CUDA_KV, SQ_CUDA_DECODE_ATT (A/B runs)
    const int bf16_l2pf = env_int("SQ_CUDA_BF16_L2PF", env.l2_prefetch_mib, 0, 4096);  // MiB (header)
    auto kv_name = [&](int bits) {
        return bits >= 16 ? std::string("KV16 (fp32)")
                          : "KV" + std::to_string(bits) +
                                (bits <= 4 && env.kv_packed ? " (packed 4-bit codes)" : " (fake-quantized fp32)");
    };
    // Prefill attention: the synthetic runs take the tensor-core kernel unless SQ_CUDA_PREFILL_ATT
    // says otherwise, real models ModelCudaOptions' choice (the FP32 kernel by default).
    const bool flash = o.shape.empty() || std::getenv("SQ_CUDA_PREFILL_ATT") ? env.flash_attention : true;
    std::vector<VariantResult> res;
    std::string what;
    if (!o.shape.empty()) {
        const ModelConfig c = shape_config(o.shape);
        what = "synthetic " + o.shape;
        auto run = [&](const std::string& name, bool bf16, int rank) {
            CudaSynthetic s;
            s.bf16 = bf16, s.rank = rank, s.kv_bits = bf16 ? base_kv : o.kv_bits;
            s.kv_packed = env.kv_packed, s.decode_v5 = env.decode_v5, s.decode_cluster = env.decode_cluster;
            s.spectral_fuse_max_rows = fuse_rows;
            s.fuse = o.fuse != 0;
            s.lm_head_q8 = !bf16 && o.lm_head_bits == 8;
            s.flash_attention = flash;
            s.l2_prefetch_mib = bf16 ? bf16_l2pf : env.l2_prefetch_mib;
            s.norm_gemv = env.norm_gemv;
            res.push_back(cuda_variant(name, o, std::make_unique<ModelCuda>(c, s, cap)));
        };
        run("w4a4", false, 0);
        if (o.rank > 0) run("w4a4+spec" + std::to_string(o.rank), false, o.rank);
        run("bf16", true, 0);
    } else {
        what = o.model;
        LoadedModel lm = model_open(o.model, false);
        ModelCudaOptions native, bf16;
        native.flash_attention = bf16.flash_attention = flash;
        native.spectral_fuse_max_rows = fuse_rows;
        bf16.bf16 = true;
        native.l2_prefetch_mib = env.l2_prefetch_mib, bf16.l2_prefetch_mib = bf16_l2pf;
        native.fuse = bf16.fuse = o.fuse != 0;
        res.push_back(cuda_variant("native", o, std::make_unique<ModelCuda>(lm.model->weights(), cap, native)));
        res.push_back(cuda_variant("bf16", o, std::make_unique<ModelCuda>(lm.model->weights(), cap, bf16)));
    }
    const VariantResult& base = res.back();  // bf16
    const VariantResult& w4 = res.front();

    const std::string kv_line = o.shape.empty() ? std::string("as in the model file")
                                                : "W4A4 " + kv_name(o.kv_bits) + ", BF16 " + kv_name(base_kv);
    std::printf("\n%s on %s, KV cache %s, decode attention %s, decode at context %d..%d, %d steps, decode fusion %s, "
                "spectral branch %s\n",
                what.c_str(), prop.name, kv_line.c_str(), !env.decode_v5 ? "v4 (part + merge)" : env.decode_cluster ? "v6 (one cluster per KV head)" : "v5 (one kernel)", o.ctx,
                o.ctx + o.decode, o.decode, o.fuse ? "on" : "off", o.spectral == "fused" ? "x·B kernel, ·Cᵀ fused into the GEMM epilogue"
                : o.spectral == "separate" ? "x·B and ·Cᵀ kernels"
                                           : "x·B kernel, ·Cᵀ fused into the GEMV epilogue in decode, its own kernel in prefill");
    if (!o.shape.empty())
        std::printf("lm_head: %s\n", o.lm_head_bits == 8 ? "W4A4 runs Q8_0 (q8_gemv) in one-sequence decode steps and "
                                                           "a prompt's last row, bf16 (same matrix) above; BF16 run bf16"
                                                         : "bf16 in every run");
    std::printf("prefill attention: %s\n", flash ? "fp16 tensor cores (attention_flash; head_dim 64/128)" : "FP32 kernel");
    std::printf("decode L2 prefetch of the next weights: W4A4 %d MiB, BF16 %d MiB\n",
                env.l2_prefetch_mib, bf16_l2pf);
    std::printf("| metric |");
    for (const auto& v : res) std::printf(" %s |", v.name.c_str());
    for (size_t i = 0; i + 1 < res.size(); ++i) std::printf(" %s vs bf16 |", res[i].name.c_str());
    std::printf("\n| --- |");
    for (size_t i = 0; i < 2 * res.size() - 1; ++i) std::printf(" ---: |");
    std::printf("\n");
    auto row = [&](const std::string& label, auto get, bool higher_better, const char* fmt) {
        std::printf("| %s |", label.c_str());
        for (const auto& v : res) {
            std::printf(" ");
            std::printf(fmt, get(v));
            std::printf(" |");
        }
        for (size_t i = 0; i + 1 < res.size(); ++i) {
            const double a = get(res[i]), b = get(base);
            std::printf(" %.2fx |", higher_better ? a / b : b / a);
        }
        std::printf("\n");
    };
    for (size_t i = 0; i < o.prefill.size(); ++i)
        row("prefill " + std::to_string(o.prefill[i]) + " ms", [&](const VariantResult& v) { return v.prefill_ms[i]; },
            false, "%.2f");
    for (size_t i = 0; i < o.batches.size(); ++i)
        row("decode B=" + std::to_string(o.batches[i]) + " tok/s",
            [&](const VariantResult& v) { return o.batches[i] * 1e3 / v.decode_ms[i]; }, true, "%.1f");
    auto gb = [](size_t b) { return b / 1e9; };
    row("linear weights GB", [&](const VariantResult& v) { return gb(v.mem.linears); }, false, "%.3f");
    row("linears + lm_head GB", [&](const VariantResult& v) { return gb(v.mem.linears + v.mem.lm_head); }, false,
        "%.3f");
    row("all weights GB (fp32 embedding)",
        [&](const VariantResult& v) { return gb(v.mem.linears + v.mem.lm_head + v.mem.embed); }, false, "%.3f");
    row("KV cache GB", [&](const VariantResult& v) { return gb(v.mem.kv_cache); }, false, "%.3f");
    row("device total GB", [&](const VariantResult& v) { return gb(v.mem.total); }, false, "%.3f");
    std::printf("\nPer-op breakdown (CUDA events around every op, eager launches, ms):\n");
    for (const auto& v : res) {
        for (size_t i = 0; i < o.prefill.size(); ++i)
            std::printf("%s prefill %d: %s\n", v.name.c_str(), o.prefill[i], breakdown_line(v.prefill_bd[i]).c_str());
        for (size_t i = 0; i < o.batches.size(); ++i)
            std::printf("%s decode step B=%d: %s\n", v.name.c_str(), o.batches[i],
                        breakdown_line(v.decode_bd[i]).c_str());
    }
    (void)w4;
    if (!o.json.empty()) {
        nlohmann::json j = {{"device", prop.name},   {"what", what},         {"kv_bits", o.kv_bits}, {"lm_head_bits", o.lm_head_bits},
                            {"bf16_kv_bits", base_kv},
                            {"spectral", o.spectral}, {"fuse", o.fuse},
                            {"ctx", o.ctx},          {"decode_steps", o.decode}, {"reps", o.reps},
                            {"prefill_tokens", o.prefill}, {"batches", o.batches},
                            {"variants", nlohmann::json::array()}};
        for (const auto& v : res) {
            nlohmann::json x = {{"name", v.name},
                                {"memory", {{"linears", v.mem.linears}, {"lm_head", v.mem.lm_head},
                                            {"embed_norms", v.mem.embed}, {"kv_cache", v.mem.kv_cache},
                                            {"total", v.mem.total}}},
                                {"prefill", nlohmann::json::array()},
                                {"decode", nlohmann::json::array()}};
            for (size_t i = 0; i < o.prefill.size(); ++i)
                x["prefill"].push_back({{"tokens", o.prefill[i]}, {"ms", v.prefill_ms[i]},
                                        {"vs_bf16", base.prefill_ms[i] / v.prefill_ms[i]},
                                        {"breakdown_ms", breakdown_json(v.prefill_bd[i])}});
            for (size_t i = 0; i < o.batches.size(); ++i)
                x["decode"].push_back({{"batch", o.batches[i]}, {"ms_per_step", v.decode_ms[i]},
                                       {"tok_s", o.batches[i] * 1e3 / v.decode_ms[i]},
                                       {"vs_bf16", base.decode_ms[i] / v.decode_ms[i]},
                                       {"breakdown_ms", breakdown_json(v.decode_bd[i])}});
            j["variants"].push_back(x);
        }
        write_file_atomic(o.json, j.dump(2) + "\n");
    }
    return 0;
}
#endif

}  // namespace

static CommandAction bench_setup(CLI::App& app) {
    struct Opts {
        std::string model, vs = "none", vs_model, json;
        int prefill = 512, decode = 64, threads = 0, reps = 1;
    };
    auto o = std::make_shared<Opts>();
    auto g = std::make_shared<std::string>("cpu");
    auto co = std::make_shared<CudaBenchOpts>();
    app.add_option("-m,--model", o->model, "model: packed .sqm, GGUF file or Hugging Face directory");
    app.add_option("--device", *g, "cpu | cuda (cuda: W4A4 vs BF16 on the GPU, see the file header)")
        ->capture_default_str();
    app.add_option("--shape", co->shape, "cuda: synthetic weights of llama3-8b | llama2-7b | smollm2 (no -m)");
    app.add_option("--prefill-lens", co->prefill, "cuda: prefill lengths")->delimiter(',')->capture_default_str();
    app.add_option("--batches", co->batches, "cuda: decode batch sizes")->delimiter(',')->capture_default_str();
    app.add_option("--ctx", co->ctx, "cuda: cached positions per sequence before decoding")->capture_default_str();
    app.add_option("--rank", co->rank, "cuda --shape: spectral rank of the second W4A4 run (0 = skip; k̄=16 → 31)")
        ->capture_default_str();
    app.add_option("--kv-bits", co->kv_bits,
                   "cuda --shape: KV cache bits (16 = fp32; ≤ 4: packed codes; 5..8: fake-quantized fp32)")
        ->capture_default_str();
    app.add_option("--bf16-kv-bits", co->bf16_kv_bits, "cuda --shape: the BF16 baseline's KV bits (default: --kv-bits)");
    app.add_option("--spectral", co->spectral,
                   "cuda: W4A4 spectral branch: ·Cᵀ fused into the GEMM epilogue (fused), its own [n, out] kernel "
                   "(separate), or fused in the GEMV calls of ≤ 64 rows only, i.e. decode (auto); same bits")
        ->capture_default_str();
    app.add_option("--fuse", co->fuse,
                   "cuda: decode fusion (q/k/v and gate/up as one layer, norm/SwiGLU writing the next codes, "
                   "RoPE + KV store in one kernel) in every variant: 1 (default) or 0 (the unfused engine)")
        ->check(CLI::Range(0, 1))
        ->capture_default_str();
    app.add_option("--lm-head-bits", co->lm_head_bits,
                   "cuda --shape: the W4A4 variants' lm_head in one-row calls (decode at B = 1): 16 (bf16, as the "
                   "BF16 run) or 8 (Q8_0, as packed files with --embed-bits 8; the bf16 copy serves larger calls)")
        ->check(CLI::IsMember({8, 16}))
        ->capture_default_str();
    app.add_option("--prefill", o->prefill, "prompt tokens in one forward (0 = skip)")->capture_default_str();
    app.add_option("--decode", o->decode, "tokens generated one at a time after the prompt")->capture_default_str();
    app.add_option("-t,--threads", o->threads, "threads (0 = all)")->capture_default_str();
    app.add_option("--reps", o->reps, "repetitions; the fastest is reported")->capture_default_str();
    app.add_option("--vs", o->vs, "baseline in the same process: none | fp32 (needs --vs-model)")
        ->capture_default_str();
    app.add_option("--vs-model", o->vs_model, "the float32 baseline model (the checkpoint the packed model came from)");
    app.add_option("--json", o->json, "also write the results as JSON to this file");
    return [o, g, co, &app]() {
        SQ_CHECK(*g == "cpu" || *g == "cuda", "bench: --device must be cpu or cuda, got '", *g, "'");
        if (*g == "cuda") {
#ifdef SPECQUANT_HAS_CUDA
            CudaBenchOpts c = *co;
            c.model = o->model, c.json = o->json;
            if (app.count("--decode")) c.decode = o->decode;
            if (app.count("--reps")) c.reps = o->reps;
            return cuda_bench(c);
#else
            fail("bench --device cuda: this build has no CUDA backend (cmake -DSPECQUANT_CUDA=ON)");
#endif
        }
        SQ_CHECK(!o->model.empty(), "bench: -m MODEL is required (on the CPU)");
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
