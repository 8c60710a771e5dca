// The LLaMA-family decoder: weights, KV cache and one flat per-layer forward.
//
//   h = embed[tokens]
//   for each layer:  a = rmsnorm(h)·attn_norm;  q,k,v = a·Wqᵀ, a·Wkᵀ, a·Wvᵀ (+bias)
//                    rope(q,k); attend over the cache (GQA, causal); h += (attn)·Woᵀ
//                    f = rmsnorm(h)·ffn_norm;  h += (silu(f·Wgᵀ) ⊙ f·Wuᵀ)·Wdᵀ
//   logits = rmsnorm(h)·final_norm · lm_headᵀ
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "model/config.h"
#include "model/linear.h"
#include "model/linear_q4.h"
#include "model/linear_q8.h"

namespace sq {

struct LayerWeights {
    std::vector<float> attn_norm;  // [d]
    std::vector<float> ffn_norm;   // [d]
    std::unique_ptr<Linear> q, k, v, o;     // [H*hd, d], [KV*hd, d], [KV*hd, d], [d, H*hd]
    std::unique_ptr<Linear> gate, up, down;  // [ff, d], [ff, d], [d, ff]
    // Key centering (beyond the paper, `--k-center`): [KV·hd] or empty. With a
    // quantized KV cache the keys are stored as μ + Q(k − μ), μ the calibration
    // mean of the keys after RoPE (and the q/k rotation). Scores change only by
    // q·μ, the same for every key of a query, which softmax cancels; what is
    // gained is that Q no longer spends its 4-bit range on the keys' constant
    // offset.
    std::vector<float> k_shift;
};

struct ModelWeights {
    ModelConfig cfg;
    std::vector<float> embed;       // [vocab, d] float32, or empty when embed_q8 holds the table
    std::shared_ptr<const Q8Matrix> embed_q8;  // [vocab, d] 8-bit (packed models); lm_head shares it when tied
    std::shared_ptr<const Q4Matrix> embed_q4;  // [vocab, d] 4-bit (packed, --embed-bits 4); likewise
    std::vector<float> final_norm;  // [d]
    std::unique_ptr<Linear> lm_head;  // [vocab, d]; a copy of embed when tied
    std::vector<LayerWeights> layers;
    // KV cache precision: 16 = float; 2..8 = asymmetric per token and KV head
    // (codes dequantized on write: numerically the reference of a packed cache).
    int kv_bits = 16;
    float kv_clip = 1.0f;
    // QuaRot: rotate q and k of every head by a Hadamard after RoPE (scores
    // are unchanged: q·kᵀ = (qH)(kH)ᵀ) so that the 4-bit keys have no outliers.
    bool qk_rotate = false;
};

// h [n, d] = the embedding rows of tokens (ids must be valid).
void embed_tokens(const ModelWeights& w, const int* tokens, int n, float* h);
// The whole table [vocab, d] as float32 (dequantized when 8- or 4-bit).
std::vector<float> embed_f32(const ModelWeights& w);

// Embedding table → Q8_0 (bits 8, w.embed_q8) or Q4_0 (bits 4, w.embed_q4);
// w.embed emptied and freed. A tied lm_head becomes the layer of the same
// table (LinearQ8 / LinearQ4), an untied one its own Q8_0 matrix (the output
// layer keeps 8 bits). Needs a float table, a bias-free float32 lm_head and
// d_model % 32 == 0 (throws otherwise). `--embed-bits 8|4`.
void model_embed_quant(ModelWeights& w, int bits);

// RoPE inverse frequencies [head_dim/2] with the config's scaling applied.
std::vector<float> rope_inv_freq(const ModelConfig& c);

// The attention half of layer `l` up to the o_proj input, for n tokens of one
// sequence at positions pos0..pos0+n-1:
//   x [n, d] normed input; kc, vc: the layer's cache [capacity, KV·hd] with
//   positions < pos0 filled (the new k, v are appended, RoPE'd and quantized
//   as the model says); att [n, H·hd] receives the attention output.
void attention_block(const ModelWeights& w, int l, const float* inv_freq, const float* x, int n, int pos0, float* kc,
                     float* vc, float* att);

// The keys of layer l as the cache receives them before quantization (k_proj,
// RoPE at positions 0..len-1 of each sequence, the q/k rotation when the
// model has it), averaged over every token of the n_seq sequences of x
// [n_seq·len, d] (normed inputs): the μ of LayerWeights::k_shift.
std::vector<float> key_mean(const ModelWeights& w, int l, const float* inv_freq, const float* x, int n_seq, int len);

// The MLP half up to the down_proj input: act [n, ff] = silu(x·Wgᵀ) ⊙ (x·Wuᵀ).
void mlp_block(const LayerWeights& L, int64_t ff, const float* x, int64_t n, float* act);

// Model::forward runs n tokens as chunks: the chunk starting at token t0 has
// prefill_chunk_len(n, t0) tokens — kPrefillChunk, or all that are left when
// that is ≤ kPrefillChunk + 16 — so every chunk but the last starts and ends
// on the prefill attention's 64-row query blocks and each has more than 16
// tokens whenever n has: every GEMM and the attention take the path and the
// shapes they take in one call, and the logits are the same bits.
inline constexpr int64_t kPrefillChunk = 128;
int64_t prefill_chunk_len(int64_t n, int64_t t0);

// Builds float32 weights from a checkpoint (progress bar per layer). With
// layers = false only the embedding, final norm and lm_head are loaded and
// w.layers holds n_layers empty entries, to be filled one at a time by
// layer_load_f32 (streaming quantization: memory of one float layer).
ModelWeights model_load_f32(const Checkpoint& ck, bool progress = true, bool layers = true);
LayerWeights layer_load_f32(const Checkpoint& ck, int i);

// KV cache, [layer][pos][kv_head][head_dim] for k and v, in one of two forms:
//   bits 16: float32 rows (k, v). With a model of kv_bits < 16 the forward
//            writes fake-quantized values (kv_fake_quant_ref): the reference
//            form, and the only one for kv_bits other than 4;
//   bits 4:  packed codes (kq, vq: head_dim/2 bytes per (pos, kv head), 16
//            dims per 8 bytes) + float32 scale (ks, vs) + zero point 0..15 (kz,
//            vz) per (pos, kv head); layout in kernels/ref/attention_ref.h.
//            Dequantizes to exactly the floats of the bits-16 form, so the
//            logits are the same bits (test ModelKvQ4.*); per token at SmolLM2
//            6.7 KB instead of 46 KB (30 layers × 2 × 3 heads × (32 + 4 + 1 B)).
// Model::make_cache picks the form for a model.
struct KVCache {
    int n_layers = 0, n_kv = 0, head_dim = 0, capacity = 0;
    int pos = 0;    // tokens already in the cache
    int bits = 16;  // 16 or 4, as above
    std::vector<float> k, v;
    std::vector<uint8_t> kq, vq, kz, vz;
    std::vector<float> ks, vs;
    KVCache() = default;
    KVCache(const ModelConfig& c, int capacity, int bits = 16);
    float* k_at(int layer, int p) { return &k[(((size_t)layer * capacity + p) * n_kv) * head_dim]; }
    float* v_at(int layer, int p) { return &v[(((size_t)layer * capacity + p) * n_kv) * head_dim]; }
    // bits 4: row index of (layer, pos, kv head 0) into ks/kz (× head_dim/2 into kq)
    size_t row(int layer, int p) const { return ((size_t)layer * capacity + p) * n_kv; }
    void truncate(int n) { pos = n; }  // forget tokens from n on (branching in eval)
    size_t bytes() const;              // allocated storage
};
// Whether kv_bits / head_dim allow the 4-bit form (kv_bits 4, head_dim % 16 == 0, ≤ 512).
bool kv_q4_fits(int kv_bits, int head_dim);

class Model {
public:
    explicit Model(ModelWeights w);
    const ModelConfig& config() const { return w_.cfg; }
    const ModelWeights& weights() const { return w_; }
    ModelWeights& weights() { return w_; }

    // Runs n tokens starting at cache.pos, appends them to the cache.
    // logits: [n, vocab] when all_logits, else [1, vocab] for the last token.
    // With a bits-4 cache the model must have kv_bits 4.
    void forward(const int* tokens, int n, KVCache& cache, float* logits, bool all_logits) const;
    // A cache for this model: bits 4 when kv_q4_fits(kv_bits, head_dim), else float32.
    KVCache make_cache(int capacity) const;

private:
    ModelWeights w_;
    std::vector<float> rope_inv_freq_;  // [head_dim/2], scaling applied
};

}  // namespace sq
