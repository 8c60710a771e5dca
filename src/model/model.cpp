#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/progress.h"
#include "core/threads.h"
#include "kernels/cpu/gemm_f32.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/w4a4_avx2.h"
#include "kernels/ref/attention_ref.h"
#include "kernels/ref/w4a4_ref.h"
#include "quant/hadamard.h"

namespace sq {

bool kv_q4_fits(int kv_bits, int head_dim) { return kv_bits == 4 && head_dim % 16 == 0 && head_dim <= 512; }

KVCache::KVCache(const ModelConfig& c, int cap, int b)
    : n_layers(c.n_layers), n_kv(c.n_kv_heads), head_dim(c.head_dim), capacity(cap), bits(b) {
    SQ_CHECK(cap > 0, "KV cache: capacity must be positive, got ", cap);
    SQ_CHECK(b == 16 || kv_q4_fits(b, head_dim), "KV cache: ", b, " bits with head_dim ", head_dim,
             " (4-bit form needs head_dim % 16 == 0 and ≤ 512; else 16)");
    const size_t count = (size_t)n_layers * cap * n_kv * head_dim, rows = (size_t)n_layers * cap * n_kv;
    if (b == 16) {
        k.assign(count, 0.0f);
        v.assign(count, 0.0f);
    } else {
        kq.assign(count / 2, 0);
        vq.assign(count / 2, 0);
        ks.assign(rows, 0.0f);
        vs.assign(rows, 0.0f);
        kz.assign(rows, 0);
        vz.assign(rows, 0);
    }
}

size_t KVCache::bytes() const {
    return (k.size() + v.size() + ks.size() + vs.size()) * sizeof(float) + kq.size() + vq.size() + kz.size() +
           vz.size();
}

std::vector<float> rope_inv_freq(const ModelConfig& c) {
    const int half = c.head_dim / 2;
    std::vector<float> f(half);
    for (int i = 0; i < half; ++i) {
        // Hugging Face: 1 / theta^(2i/hd), computed in float32
        const float expo = (float)(2 * i) / (float)c.head_dim;
        f[i] = 1.0f / std::pow(c.rope_theta, expo);
    }
    if (c.rope_scaling == ROPE_SCALING_LINEAR) {
        for (auto& x : f) x /= c.rope_factor;
    } else if (c.rope_scaling == ROPE_SCALING_LLAMA3) {
        // Long wavelengths are slowed by `factor`, short ones kept, the band
        // between blended (Llama 3.1 "llama3" rope_scaling).
        const float lo_wl = (float)c.rope_original_max_pos / c.rope_low_freq_factor;
        const float hi_wl = (float)c.rope_original_max_pos / c.rope_high_freq_factor;
        for (auto& x : f) {
            const float wl = 2.0f * (float)M_PI / x;
            if (wl < hi_wl) continue;
            if (wl > lo_wl) {
                x = x / c.rope_factor;
            } else {
                const float smooth = ((float)c.rope_original_max_pos / wl - c.rope_low_freq_factor) /
                                     (c.rope_high_freq_factor - c.rope_low_freq_factor);
                x = (1.0f - smooth) * x / c.rope_factor + smooth * x;
            }
        }
    }
    return f;
}

namespace {
std::unique_ptr<LinearF32> load_linear(const Checkpoint& ck, const std::string& name, int64_t out, int64_t in,
                                       const std::string& bias = "") {
    TensorF32 t = ck.load(name, {out, in});
    std::vector<float> b;
    if (!bias.empty()) b = ck.load(bias, {out}).data;
    return std::make_unique<LinearF32>(in, out, std::move(t.data), std::move(b));
}
}  // namespace

LayerWeights layer_load_f32(const Checkpoint& ck, int i) {
    const ModelConfig& c = ck.config;
    SQ_CHECK(i >= 0 && i < c.n_layers, "layer ", i, " out of range (", c.n_layers, " layers)");
    const int64_t d = c.d_model, hd = c.head_dim, qd = (int64_t)c.n_heads * hd, kvd = (int64_t)c.n_kv_heads * hd,
                  ff = c.d_ff;
    const std::string p = "layers." + std::to_string(i) + ".";
    LayerWeights L;
    L.attn_norm = ck.load(p + "attn_norm", {d}).data;
    L.ffn_norm = ck.load(p + "ffn_norm", {d}).data;
    L.q = load_linear(ck, p + "q", qd, d, c.qkv_bias ? p + "q_bias" : "");
    L.k = load_linear(ck, p + "k", kvd, d, c.qkv_bias ? p + "k_bias" : "");
    L.v = load_linear(ck, p + "v", kvd, d, c.qkv_bias ? p + "v_bias" : "");
    L.o = load_linear(ck, p + "o", d, qd);
    L.gate = load_linear(ck, p + "gate", ff, d);
    L.up = load_linear(ck, p + "up", ff, d);
    L.down = load_linear(ck, p + "down", d, ff);
    return L;
}

ModelWeights model_load_f32(const Checkpoint& ck, bool progress, bool layers) {
    const ModelConfig& c = ck.config;
    const int64_t d = c.d_model, V = c.vocab;
    ModelWeights w;
    w.cfg = c;
    w.embed = ck.load("embed", {V, d}).data;
    w.final_norm = ck.load("final_norm", {d}).data;
    std::unique_ptr<Progress> bar;
    if (progress && layers) bar = std::make_unique<Progress>("load", c.n_layers + 1, "layer");
    w.layers.resize(c.n_layers);
    for (int i = 0; i < c.n_layers && layers; ++i) {
        w.layers[i] = layer_load_f32(ck, i);
        if (bar) bar->add();
    }
    if (c.tied_embeddings || !ck.has("lm_head")) {
        w.lm_head = std::make_unique<LinearF32>(d, V, w.embed);
    } else {
        w.lm_head = load_linear(ck, "lm_head", V, d);
    }
    if (bar) bar->finish();
    return w;
}

namespace {

// RoPE of x [n, heads, hd] at positions pos0.., then the q/k rotation.
void rope_and_rotate(const ModelWeights& w, float* x, int n, int heads, int pos0, const float* inv_freq) {
    rope_f32(x, n, heads, w.cfg.head_dim, pos0, inv_freq);
    if (w.qk_rotate) hadamard_transform(x, (int64_t)n * heads, w.cfg.head_dim);
}

}  // namespace

std::vector<float> key_mean(const ModelWeights& w, int l, const float* inv_freq, const float* x, int n_seq, int len) {
    const ModelConfig& c = w.cfg;
    const int64_t d = c.d_model, kvd = (int64_t)c.n_kv_heads * c.head_dim;
    std::vector<double> sum(kvd, 0.0);
    std::vector<float> k((size_t)len * kvd);
    for (int s = 0; s < n_seq; ++s) {
        w.layers[l].k->forward(x + (size_t)s * len * d, len, k.data());
        rope_and_rotate(w, k.data(), len, c.n_kv_heads, 0, inv_freq);
        for (int t = 0; t < len; ++t)
            for (int64_t j = 0; j < kvd; ++j) sum[j] += k[(size_t)t * kvd + j];
    }
    std::vector<float> mu(kvd);
    for (int64_t j = 0; j < kvd; ++j) mu[j] = (float)(sum[j] / ((double)n_seq * len));
    return mu;
}

namespace {
// q [n, H·hd], k, v [n, KV·hd] of layer l for x, RoPE'd (and rotated).
void qkv_block(const ModelWeights& w, int l, const float* inv_freq, const float* x, int n, int pos0, float* q, float* k,
               float* v) {
    const ModelConfig& c = w.cfg;
    const LayerWeights& L = w.layers[l];
    {  // one call: a backend may share the activation quantization and the parallel region
        const Linear* ls[3] = {L.q.get(), L.k.get(), L.v.get()};
        float* ys[3] = {q, k, v};
        linear_forward_same_input(ls, 3, x, n, ys);
    }
    rope_and_rotate(w, q, n, c.n_heads, pos0, inv_freq);
    rope_and_rotate(w, k, n, c.n_kv_heads, pos0, inv_freq);
}

// attention_block over a bits-4 cache: the new rows stored as codes, the
// attention read from the codes.
void attention_block_q4(const ModelWeights& w, int l, const float* inv_freq, const float* x, int n, int pos0,
                        KVCache& cache, float* att) {
    const ModelConfig& c = w.cfg;
    const LayerWeights& L = w.layers[l];
    const int64_t hd = c.head_dim, H = c.n_heads, KV = c.n_kv_heads, qd = H * hd, kvd = KV * hd;
    // decode: no allocation per layer (thread_local; the lambda below runs on
    // other threads too, so it gets raw pointers, never these names); prefill:
    // freed on return.
    thread_local std::vector<float> qt, kt, vt;
    std::vector<float> qp, kp, vp;
    std::vector<float>&qb = n == 1 ? qt : qp, &kb = n == 1 ? kt : kp, &vb = n == 1 ? vt : vp;
    qb.resize(n * qd), kb.resize(n * kvd), vb.resize(n * kvd);
    float* q = qb.data();
    const float* k = kb.data();
    const float* v = vb.data();
    qkv_block(w, l, inv_freq, x, n, pos0, q, kb.data(), vb.data());
    const float* shift = L.k_shift.empty() ? nullptr : L.k_shift.data();
    const size_t r0 = cache.row(l, pos0);
    auto store = [&](int64_t i) {  // i = t·KV + g: cache row r0 + i
        const size_t r = r0 + i;
        kv_q4_store_ref(k + i * hd, (int)hd, w.kv_clip, shift ? shift + (i % KV) * hd : nullptr,
                        &cache.kq[r * (hd / 2)], &cache.ks[r], &cache.kz[r]);
        kv_q4_store_ref(v + i * hd, (int)hd, w.kv_clip, nullptr, &cache.vq[r * (hd / 2)], &cache.vs[r], &cache.vz[r]);
    };
    if (n == 1) {  // decode: KV heads × head_dim values, less work than a fork/join
        for (int64_t i = 0; i < KV; ++i) store(i);
    } else {
        parallel_for((int64_t)n * KV, store);
    }
    const size_t rl = cache.row(l, 0);
    const KvQ4View kv{&cache.kq[rl * (hd / 2)], &cache.ks[rl], &cache.kz[rl], shift, (int)KV, (int)hd};
    const KvQ4View vv{&cache.vq[rl * (hd / 2)], &cache.vs[rl], &cache.vz[rl], nullptr, (int)KV, (int)hd};
    attention_q4(q, kv, vv, n, pos0, (int)H, (int)KV, (int)hd, att);
}
}  // namespace

void attention_block(const ModelWeights& w, int l, const float* inv_freq, const float* x, int n, int pos0, float* kc,
                     float* vc, float* att) {
    const ModelConfig& c = w.cfg;
    const LayerWeights& L = w.layers[l];
    const int64_t hd = c.head_dim, H = c.n_heads, KV = c.n_kv_heads, qd = H * hd, kvd = KV * hd;
    std::vector<float> q(n * qd), k(n * kvd), v(n * kvd);
    qkv_block(w, l, inv_freq, x, n, pos0, q.data(), k.data(), v.data());
    if (w.kv_bits < 16) {
        const float* shift = L.k_shift.empty() ? nullptr : L.k_shift.data();
        auto quant = [&](int64_t i) {
            kv_fake_quant_ref(&k[i * hd], hd, w.kv_bits, w.kv_clip, shift ? shift + (i % KV) * hd : nullptr);
            fake_quant_asym_ref(&v[i * hd], hd, w.kv_bits, w.kv_clip);
        };
        if (n == 1) {  // decode: KV heads × head_dim values, less work than a fork/join
            for (int64_t i = 0; i < KV; ++i) quant(i);
        } else {
            parallel_for((int64_t)n * KV, quant);
        }
    }
    std::memcpy(kc + (size_t)pos0 * kvd, k.data(), (size_t)n * kvd * sizeof(float));
    std::memcpy(vc + (size_t)pos0 * kvd, v.data(), (size_t)n * kvd * sizeof(float));
    attention_f32(q.data(), kc, vc, kvd, n, pos0, (int)H, (int)KV, (int)hd, att);
}

void mlp_block(const LayerWeights& L, int64_t ff, const float* x, int64_t n, float* act) {
    std::vector<float> up(n * ff);
    const Linear* ls[2] = {L.gate.get(), L.up.get()};
    float* ys[2] = {act, up.data()};
    linear_forward_same_input(ls, 2, x, n, ys);
    silu_mul_f32(act, up.data(), n * ff);
}

// The W4A4 / W4A16 entry points switch to their GEMV form at ≤ 16 rows and the
// attention to its decode kernel below 16 query rows, which sum in other
// orders: no chunk may be that short unless n is (gemv_f32 / gemm_f32 agree).
// Chunks start at multiples of 64, the prefill attention's query block, so
// every block sees the same keys and GEMM shapes as in one call.
static_assert(gemv_f32_max_m == 16 && w4a4_gemv_max_m == 16, "prefill_chunk_len: GEMV row limit changed");
static_assert(kPrefillChunk % 64 == 0, "prefill chunks must start on attention query blocks");

int64_t prefill_chunk_len(int64_t n, int64_t t0) {
    const int64_t left = n - t0, short_rows = 16;
    return left <= kPrefillChunk + short_rows ? left : kPrefillChunk;
}

void model_embed_quant(ModelWeights& w, int bits) {
    const ModelConfig& c = w.cfg;
    SQ_CHECK(bits == 8 || bits == 4, "--embed-bits ", bits, ": the table is quantized to 8 or 4 bits");
    SQ_CHECK(!w.embed_q8 && !w.embed_q4 && !w.embed.empty(), "--embed-bits ", bits, ": the embedding is not a float table");
    SQ_CHECK(bits == 8 ? q8_fits(c.d_model) : q4_fits(c.d_model), "--embed-bits ", bits, ": d_model ", c.d_model,
             " is not a multiple of ", bits == 8 ? Q8_BLOCK : Q4_BLOCK, " (use --embed-bits 16)");
    auto* lm = dynamic_cast<const LinearF32*>(w.lm_head.get());
    SQ_CHECK(lm && lm->bias.empty(), "--embed-bits ", bits, ": lm_head must be a bias-free float32 layer, got ",
             w.lm_head->kind());
    const bool tied = lm->w == w.embed;
    if (bits == 8) {
        w.embed_q8 = std::make_shared<const Q8Matrix>(Q8Matrix::quantize(w.embed.data(), c.vocab, c.d_model));
        if (tied) w.lm_head = std::make_unique<LinearQ8>(w.embed_q8);
    } else {
        w.embed_q4 = std::make_shared<const Q4Matrix>(Q4Matrix::quantize(w.embed.data(), c.vocab, c.d_model));
        if (tied) w.lm_head = std::make_unique<LinearQ4>(w.embed_q4);
    }
    if (!tied)  // the output layer keeps 8 bits
        w.lm_head = std::make_unique<LinearQ8>(
            std::make_shared<const Q8Matrix>(Q8Matrix::quantize(lm->w.data(), lm->out, lm->in)));
    std::vector<float>().swap(w.embed);  // = {} would keep the capacity (113 MB for SmolLM2)
}

Model::Model(ModelWeights w) : w_(std::move(w)) {
    config_validate(w_.cfg, "model");
    SQ_CHECK(w_.kv_bits == 16 || (w_.kv_bits >= 2 && w_.kv_bits <= 8), "model: KV cache bits ", w_.kv_bits,
             " out of range (2..8 or 16)");
    rope_inv_freq_ = rope_inv_freq(w_.cfg);
}

KVCache Model::make_cache(int capacity) const {
    return KVCache(w_.cfg, capacity, kv_q4_fits(w_.kv_bits, w_.cfg.head_dim) ? 4 : 16);
}

void embed_tokens(const ModelWeights& w, const int* tokens, int n, float* h) {
    const int64_t d = w.cfg.d_model;
    for (int t = 0; t < n; ++t) {
        if (w.embed_q8) w.embed_q8->dequant_row(tokens[t], h + t * d);
        else if (w.embed_q4) w.embed_q4->dequant_row(tokens[t], h + t * d);
        else std::memcpy(h + t * d, &w.embed[(size_t)tokens[t] * d], d * sizeof(float));
    }
}

std::vector<float> embed_f32(const ModelWeights& w) {
    if (w.embed_q8) return w.embed_q8->dequant();
    if (w.embed_q4) return w.embed_q4->dequant();
    return w.embed;
}

namespace {
// Model::forward for one chunk of n tokens at cache.pos; logits: [n, vocab]
// when all_logits, [1, vocab] for the last token, or null (not the last chunk).
void forward_rows(const ModelWeights& w, const float* inv_freq, const int* tokens, int n, KVCache& cache, float* logits,
                  bool all_logits) {
    const ModelConfig& c = w.cfg;
    const int64_t d = c.d_model, qd = (int64_t)c.n_heads * c.head_dim, ff = c.d_ff;
    const int pos0 = cache.pos;

    // Named intermediates, [n, width] row-major.
    std::vector<float> h(n * d), x(n * d), att(n * qd), proj(n * d), act(n * ff);
    embed_tokens(w, tokens, n, h.data());

    for (int l = 0; l < c.n_layers; ++l) {
        const LayerWeights& L = w.layers[l];
        rmsnorm_f32(h.data(), L.attn_norm.data(), n, d, c.rms_eps, x.data());
        if (cache.bits == 4)
            attention_block_q4(w, l, inv_freq, x.data(), n, pos0, cache, att.data());
        else
            attention_block(w, l, inv_freq, x.data(), n, pos0, cache.k_at(l, 0), cache.v_at(l, 0), att.data());
        L.o->forward(att.data(), n, proj.data());
        for (int64_t i = 0; i < n * d; ++i) h[i] += proj[i];
        rmsnorm_f32(h.data(), L.ffn_norm.data(), n, d, c.rms_eps, x.data());
        mlp_block(L, ff, x.data(), n, act.data());
        L.down->forward(act.data(), n, proj.data());
        for (int64_t i = 0; i < n * d; ++i) h[i] += proj[i];
    }
    cache.pos = pos0 + n;
    if (!logits) return;

    const int first = all_logits ? 0 : n - 1;
    const int rows = n - first;
    rmsnorm_f32(&h[first * d], w.final_norm.data(), rows, d, c.rms_eps, x.data());
    w.lm_head->forward(x.data(), rows, logits);
}
}  // namespace

void Model::forward(const int* tokens, int n, KVCache& cache, float* logits, bool all_logits) const {
    const ModelConfig& c = w_.cfg;
    SQ_CHECK(n > 0, "forward: no tokens");
    SQ_CHECK(cache.pos + n <= cache.capacity, "forward: context overflow: ", cache.pos, " + ", n,
             " tokens > KV cache capacity ", cache.capacity, " (raise -c)");
    SQ_CHECK(cache.n_layers == c.n_layers && cache.n_kv == c.n_kv_heads && cache.head_dim == c.head_dim,
             "forward: KV cache shape does not match the model");
    SQ_CHECK(cache.bits == 16 || cache.bits == w_.kv_bits, "forward: ", cache.bits, "-bit KV cache for a model with kv_bits ",
             w_.kv_bits, " (use Model::make_cache)");
    for (int t = 0; t < n; ++t) {
        SQ_CHECK(tokens[t] >= 0 && tokens[t] < c.vocab, "forward: token id ", tokens[t], " out of range [0, ",
                 c.vocab, ")");
    }
    // A long prompt runs as chunks of ≤ kPrefillChunk (+16) tokens, each
    // attending to the cache the earlier ones filled: the working set is that
    // of one chunk (SmolLM2 at 512 tokens: ~9 MB of activations, q/k/v, the
    // MLP halves and kernel scratch → ~2.5 MB) and the logits are the same
    // bits as in one call (prefill_chunk_len; test ModelPrefillChunks.*).
    for (int t0 = 0; t0 < n;) {
        const int r = (int)prefill_chunk_len(n, t0);
        float* out = all_logits ? logits + (size_t)t0 * c.vocab : t0 + r == n ? logits : nullptr;
        forward_rows(w_, rope_inv_freq_.data(), tokens + t0, r, cache, out, all_logits);
        t0 += r;
    }
}

}  // namespace sq
