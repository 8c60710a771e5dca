// CUDA kernels of the decoder forward pass (sm_90a), model-agnostic: each
// launcher takes device pointers, enqueues on `stream`, checks the launch and
// throws sq::Error on failure. Semantics are those of the CPU ops they mirror
// (kernels/cpu/ops.h, kernels/ref/w4a4_ref.h); where the reference fixes the
// rounding (activation and KV quantization, the W4A4 epilogue) the kernels use
// explicitly rounded intrinsics so that nvcc cannot contract or reorder them.
//
// Positions: where a kernel takes `pos0` and `pos_dev`, the first token sits
// at pos0 + *pos_dev (pos_dev may be null): the cache position is read on the
// device so that one captured CUDA graph serves every position.
//
// Build: cmake -DSPECQUANT_CUDA=ON; tests: tests/test_cuda_model.cpp.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace sq::cuda {

// out[t, :] = table[tokens[t], :]   table [vocab, d], tokens [n] (validated by the caller)
void embed_gather(const float* table, const int* tokens, int n, int d, float* out, cudaStream_t s);

// y[t, :] = x[t, :] / sqrt(mean(x[t, :]²) + eps) * w
void rmsnorm(const float* x, const float* w, int n, int d, float eps, float* y, cudaStream_t s);

// h[t, :] += add[t, :]; y[t, :] = rmsnorm(h[t, :]) * w   (residual add fused with the next norm)
void add_rmsnorm(float* h, const float* add, const float* w, int n, int d, float eps, float* y, cudaStream_t s);

// Optional outputs of a row kernel for the linear layer that reads its result
// (decode fusion, docs/kernels-cuda-notes.md "Decode v4"): with q8, the row's
// activation codes q8 [n, width], scale [n], zero [n] exactly as act_quant
// (bits, clip) would make them from the fp32 output; with bf16, the output
// rounded to bf16 [n, width] exactly as f32_to_bf16. Either or both may be null.
struct RowQuant {
    int bits = 0;
    float clip = 1.0f;
    uint8_t* q8 = nullptr;
    float* scale = nullptr;
    int32_t* zero = nullptr;
    uint16_t* bf16 = nullptr;
    bool plain = false;  // tests: the plain one-element-at-a-time loop instead of the register-cached kernel
};

// Packed KV cache (decode v5, kv_bits ≤ 4; docs/kernels-cuda-notes.md "Decode v5"): each
// (token, KV head) vector of hd elements as its codes, two per byte (element i in byte i/2,
// the low nibble for even i), [rows][kv_heads][kv_packed_bytes(hd)], and (scale, zero) as
// float2 [rows][kv_heads] (zero ≤ 15, exact in a float), for keys and values. An element is
// (code − zero)·scale, plus k_shift[head][i] for keys: the very float kv_store writes into the
// fp32 cache (same rounded operations), so every reader sees the fake-quantized cache's bits.
// 72 bytes per vector at hd = 128 instead of 512. Writers take the shift separately (their
// argument k_shift); readers read it from here. A null k means "no packed cache".
struct KvPacked {
    uint8_t* k = nullptr;
    uint8_t* v = nullptr;
    float2* kp = nullptr;
    float2* vp = nullptr;
    const float* k_shift = nullptr;  // [kv_heads][hd] or null (readers)
    explicit operator bool() const { return k != nullptr; }
};
__host__ __device__ inline int kv_packed_bytes(int hd) { return (hd + 1) / 2; }
// The view of `p` from cache row `row` on (a layer's or a sequence's region).
inline KvPacked kv_packed_at(const KvPacked& p, int64_t row, int kv_heads, int hd) {
    if (!p) return p;
    KvPacked r = p;
    const int64_t vec = row * kv_heads;
    r.k += vec * kv_packed_bytes(hd), r.v += vec * kv_packed_bytes(hd), r.kp += vec, r.vp += vec;
    return r;
}
// Random codes and plausible (scale, zero) for `vectors` vectors of each of k and v (bench fills).
void kv_packed_fill_random(const KvPacked& p, int64_t vectors, int hd, uint64_t seed, cudaStream_t s);

// add_rmsnorm (add may be null: rmsnorm of h in place of x) with the fp32 output y always
// written (same bits whatever o asks) and o's codes / bf16 copy of y.
void add_rmsnorm_quant(float* h, const float* add, const float* w, int n, int d, float eps, float* y,
                       const RowQuant& o, cudaStream_t s);

// Scratch of the row kernels split over several blocks per row (decode v5): part
// (row_split_part floats2), cnt (row_split_cnt ints, zero before the first call; each call
// leaves them zero).
struct RowSync {
    float2* part = nullptr;
    int* cnt = nullptr;
};
constexpr int kRowSplitMaxRows = 8;  // rows of a call that may take the split kernel
size_t row_split_part(int n, int width);
size_t row_split_cnt(int n);

// act[t, :] = silu(g[t, :]) ⊙ u[t, :] for g, u with row stride ld (the fused [gate | up]
// output: u = g + ff, ld = 2·ff), act [n, ff] (same bits as silu_mul), plus o's codes / bf16 of act;
// act may be null when o has codes or bf16 (only those written: the next layer reads nothing else).
// sync (decode v5): at most kRowSplitMaxRows rows of ff ≥ 2048 run over ceil(ff / 2048) blocks per
// row, which meet on the row's max/min through sync (same act, codes and bits; see the kernel).
void silu_mul_rows(const float* g, const float* u, int64_t ld, int n, int ff, float* act, const RowQuant& o,
                   cudaStream_t s, const RowSync& sync = RowSync{});

// RoPE + KV store in one launch (decode fusion): q, k, v [n, *, hd] with row strides
// ldq, ldk, ldv (the fused q|k|v output); q_out [n, heads, hd] = rope(q) (same bits as rope());
// rope(k) and v written to the cache as kv_store / kv_store_rows would (fake-quantized when
// bits < 16). Positions and cache rows: positions[t] and rows[t] when given (batched decode),
// positions[t] and row t (varlen: rows null), else pos0 + *pos_dev + t for both (one sequence).
// k_shift [kv_heads, hd] (device) as kv_store's.
void rope_kv_store(const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv, int n,
                   int heads, int kv_heads, int hd, int pos0, const int* pos_dev, const int* positions,
                   const int* rows, const float* inv_freq, int bits, float clip, float* q_out, float* kc, float* vc,
                   cudaStream_t s, const float* k_shift = nullptr, const KvPacked& pk = KvPacked{});

// In-place rotate-half RoPE on x [n, heads, hd]; token t at position pos0 (+ *pos_dev) + t;
// inv_freq [hd/2] (device).
void rope(float* x, int n, int heads, int hd, int pos0, const int* pos_dev, const float* inv_freq, cudaStream_t s);

// Varlen (many sequences packed back to back in one batch of n tokens):
// positions [n] (device) gives token t's position within its own sequence,
// which therefore starts at row t − positions[t]. Callers guarantee that
// positions restart at 0 at every sequence start and count up by one.
// RoPE as rope() with token t at positions[t].
void rope_varlen(float* x, int n, int heads, int hd, const int* positions, const float* inv_freq, cudaStream_t s);

// Writes n tokens of k, v [n, kv_heads, hd] to the cache kc, vc [pos, kv_heads, hd]
// from position (pos_dev ? *pos_dev : 0) on; bits < 16 fake-quantizes every
// (token, head) vector first: fake_quant_asym_ref semantics, bit-exact; the
// keys around k_shift [kv_heads, hd] (device) when given: kv_fake_quant_ref.
// pk (bits ≤ 4): the codes and (scale, zero) written to the packed cache too, at the same rows
// (KvPacked); kc / vc may then be null (no fp32 cache). Same for kv_store_rows, rope_kv_store.
void kv_store(const float* k, const float* v, int n, int kv_heads, int hd, int bits, float clip, float* kc,
              float* vc, const int* pos_dev, cudaStream_t s, const float* k_shift = nullptr,
              const KvPacked& pk = KvPacked{});

// kv_store with token t written at cache row rows[t] (device; batched decode,
// each sequence in its own cache region).
void kv_store_rows(const float* k, const float* v, int n, int kv_heads, int hd, int bits, float clip, float* kc,
                   float* vc, const int* rows, cudaStream_t s, const float* k_shift = nullptr,
                   const KvPacked& pk = KvPacked{});

// Causal GQA attention of n queries at positions p.. (p = pos0 + *pos_dev)
// over cache rows 0..p+n-1: q [n, heads, hd], kc/vc [pos, kv_heads, hd],
// out [n, heads, hd]. hd ≤ 256. pk: read the packed cache instead of kc / vc (same values).
void attention(const float* q, const float* kc, const float* vc, int n, int pos0, const int* pos_dev, int heads,
               int kv_heads, int hd, float* out, cudaStream_t s, const KvPacked& pk = KvPacked{});

// Block-diagonal causal attention over packed sequences: query t attends to
// cache rows [t − positions[t], t] (its own sequence, written at rows 0..n−1
// by kv_store with pos_dev = null). Shapes and limits as attention().
// blocks (device, optional): n_blocks pairs [row0, row end) of (token, head
// of the KV group) rows, token-major, at most 16 rows each and never across
// a sequence boundary (attention_blocks()); then each sequence's outputs
// are bit for bit those of attention() on that sequence alone. Without it,
// blocks of 16 rows may straddle sequences (float rounding differs there).
void attention_varlen(const float* q, const float* kc, const float* vc, int n, const int* positions, int heads,
                      int kv_heads, int hd, float* out, cudaStream_t s, const int* blocks = nullptr,
                      int n_blocks = 0, const KvPacked& pk = KvPacked{});

// Batched decode over per-sequence cache regions: query t's own K/V is at
// cache row kv_rows[t] and its keys are rows [kv_rows[t] − positions[t],
// kv_rows[t]]. kv_rows − positions must not decrease with t (regions in
// token order). blocks as attention_varlen (attention_blocks with one-token
// sequences: no block mixes two sequences).
void attention_rows(const float* q, const float* kc, const float* vc, int n, const int* kv_rows, const int* positions,
                    int heads, int kv_heads, int hd, float* out, cudaStream_t s, const int* blocks = nullptr,
                    int n_blocks = 0);

// Decode attention (flash-decoding) for one query token per sequence, same
// semantics as attention_rows (query t's keys: cache rows [kv_rows[t] −
// positions[t], kv_rows[t]]), keys split in chunks of 32 over blocks and
// merged. max_keys ≥ every sequence's key count (fixes the grid, so one
// captured graph serves every length); part: attention_decode_scratch floats.
// Float order differs from attention_rows (tests: max abs Δ ≤ 1e-5).
size_t attention_decode_scratch(int n, int heads, int hd, int max_keys);
// o (decode v4): also the o projection's input codes / bf16 copy of out (RowQuant), made by
// the merge kernel itself (one block per sequence) in the same pass; same bits as without.
// counters (decode v5): one kernel instead of two: the last block of each (sequence, KV
// head) to finish (an atomic counter) merges that head, and the last head of a sequence
// makes o's codes; same chunks and float operations in the same order as the v4 kernels,
// hence the same output bits (CudaKernels.DecodeAttentionV5IsBitIdentical). counters:
// attention_decode_counters(n, kv_heads) ints, zero before the first call (each call
// leaves them zero). pk (v5 only): keys and values from the packed cache.
// variant (with counters): 0 or 5 = v5; 6 = v6 where it applies (no o.q8, partials within shared
// memory, the cluster schedulable), else v5. v6 (decode v6): one thread-block cluster of 8 blocks
// per (sequence, KV head), v5's chunks and float operations, the merge over distributed shared
// memory instead of L2 + counters (part and counters untouched); same output bits, measured slower
// than v5 (docs/perf.md "Decode v6"), so not the default.
size_t attention_decode_counters(int n, int kv_heads);
void attention_decode(const float* q, const float* kc, const float* vc, int n, const int* kv_rows, const int* positions,
                      int heads, int kv_heads, int hd, int max_keys, float* part, float* out, cudaStream_t s,
                      const RowQuant& o = RowQuant{}, int* counters = nullptr, const KvPacked& pk = KvPacked{},
                      int variant = 0);

// The block table of attention_varlen (host side) for sequences of
// seq_lens[i] tokens and `group` query heads per KV head: row0, row end, ...
std::vector<int> attention_blocks(const std::vector<int>& seq_lens, int group);

// g[i] = silu(g[i]) * u[i]
void silu_mul(float* g, const float* u, int64_t count, cudaStream_t s);

// y[t, j] = (y[t, j] + add[t, j]) + bias[j]; either may be null.
void add_bias(float* y, const float* add, const float* bias, int n, int m, cudaStream_t s);

// y[t, j] = x[t, j] · signs[j]   (the ±1 diagonal of a random Hadamard; exact)
void mul_signs(const float* x, const float* signs, int n, int k, float* y, cudaStream_t s);

// Per-token asymmetric activation quantization, act_quant_ref bit for bit:
// codes as integer-valued floats qf [n, k] (GEMM operand), optionally as
// bytes q8 [n, k] (may be null), scale [n], zero [n].
void act_quant(const float* x, int n, int64_t k, int bits, float clip, float* qf, uint8_t* q8, float* scale,
               int32_t* zero, cudaStream_t s);

// acc[i] = (first ? 0 : acc[i]) + (int32)part[i]: integer sums of K chunks whose
// float partial sums are exact integers (below 2^24).
void acc_add_i32(const float* part, int64_t count, bool first, int32_t* acc, cudaStream_t s);

// W4A4 epilogue (w4a4_format.h): y[t, j] = ((s_t · scale_j) · (acc − z_t · rowsum_j) + spec[t, j]) + bias_j.
// acc is given either as exact integer-valued floats (acc_f) or as int32
// (acc_i); spec and bias may be null.
void w4a4_epilogue(const float* acc_f, const int32_t* acc_i, int n, int m, const float* act_scale,
                   const int32_t* act_zero, const float* w_scale, const int32_t* w_rowsum, const float* spec,
                   const float* bias, float* y, cudaStream_t s);

// For each query i: logits row rows[i] of `logits` [*, vocab]; writes
// logprob[i] = log_softmax(row)[targets[i]] (double, as logprob_of) and
// greedy[i] = (first argmax of row == targets[i]).
void logprob_gather(const float* logits, int vocab, const int* rows, const int* targets, int nq, double* logprob,
                    uint8_t* greedy, cudaStream_t s);

// ---- the spectral branch (x·Bᵀ)·Cᵀ of a W4A4 linear, in the CPU engine's bits (spectral.cu) ----
// z [m, rank] = x [m, k] (row stride ldx) · bt [rank, k]ᵀ, each output rounded exactly as the CPU
// engine's gemm_f32 / gemv_f32 (the same for every m: k-blocks of gemm_f32_kc(k),
// kernels/cpu/gemm_f32.h), so z does not depend on how rows are batched or tiled.
// scratch: spectral_xb_scratch(m, rank, k) floats (0: none needed), zeroed before its first use (its first
// element is a counter that every call leaves at zero).
size_t spectral_xb_scratch(int m, int rank, int k);
void spectral_xb(const float* x, int64_t ldx, int m, const float* bt, int rank, int k, float* z, float* scratch,
                 size_t scratch_elems, cudaStream_t s);
// The branch added to a layer's output y [m, n] (row stride ld) after its GEMM (run without spec and bias):
// y[t, j] = (y[t, j] + spectral_dot_ref(z_t, c_j, rank)) + bias[j] (bias may be null), z [m, rank],
// c [n, rank]: the W4A4 epilogue's order, bit for bit what the GEMM with spec (or the fused GEMM
// epilogues' spec_dot) gives.
void spectral_zc_add(const float* z, int m, const float* c, int n, int rank, float* y, int64_t ld, const float* bias,
                     cudaStream_t s);

// ---- Q8_0 lm_head of decode steps (q8_gemv.cu, decode v6) ----
// Device layout of a Q8_0 matrix [n, k] (kernels/q8_format.h): codes int8 [n][k] and fp16 scale
// bits [n][k/32]. Host: BlockQ8 blocks [n][k/32] (34 bytes each) → that layout.
constexpr int kQ8GemvMaxRows = 8;
void q8_gemv_pack(const uint8_t* blocks, int64_t n, int64_t k, int8_t* codes, uint16_t* scales);
// y [m, n] (row stride ldy) = x [m, k] (row stride ldx) · dequant(W)ᵀ, m ≤ kQ8GemvMaxRows, k % 32 == 0,
// x and codes 16-byte aligned. Row t's sums do not depend on m (same bits at any batch). Float
// order differs from a float32 GEMM on dequant(W): |y − exact| ≤ γ_{k+1}·Σ|x·w| (tests).
void q8_gemv(const float* x, int64_t ldx, int m, const int8_t* codes, const uint16_t* scales, int n, int k, float* y,
             int64_t ldy, cudaStream_t s);

// ---- synthetic weights and the BF16 baseline (synth.cu) ----
// p[i] = center + amp · u, u uniform in [-1, 1) from (seed, i).
void fill_uniform_f32(float* p, int64_t count, float center, float amp, uint64_t seed, cudaStream_t s);
// bf16 bits: amp · u, rounded to nearest even.
void fill_uniform_bf16(uint16_t* p, int64_t count, float amp, uint64_t seed, cudaStream_t s);
// y = bf16(x), round to nearest even (bf16 bits).
void f32_to_bf16(const float* x, int64_t count, uint16_t* y, cudaStream_t s);
// Random Q8_0 matrix [n, k] in q8_gemv's layout (|d·q| ≤ amp, power-of-two block scales) and,
// if bf16 is not null, the same matrix in bf16 (exact: d·q has ≤ 8 significant bits).
void q8_fill_random(int8_t* codes, uint16_t* scales, uint16_t* bf16, int64_t n, int64_t k, float amp, uint64_t seed,
                    cudaStream_t s);
// Random 4-bit codes for an [n, k] weight directly in the CUDA layout
// (w [w4g_bytes(n, k)], pads zero) and their row sums [n].
void w4g_fill_random(uint8_t* w, int64_t n, int64_t k, uint64_t seed, int32_t* rowsum, cudaStream_t s);

// ---- tensor-core flash attention for prefill and scoring (attention_flash.cu) ----
// Same semantics as attention() / attention_varlen(), with Q·Kᵀ and P·V on fp16 tensor cores
// (fp32 accumulation, fp32 online softmax): not bit-identical to the FP32 kernel; error
// bound derived and checked in tests/test_cuda_flash.cpp. hd 64 and 128; other head sizes run
// the FP32 kernel (attention_flash_supported()).
// Packed cache (kv4): `values` reads the floats the fp32 cache would hold (rounded to fp16 as
// those: same bits with either cache), `codes` the exact codes (S = s·(Q·c − z·ΣQ), only Q and
// p·scale rounded); `env`: SQ_CUDA_FLASH_KV4 = values (default) | codes, read once.
enum class FlashKv4 { env, values, codes };
bool attention_flash_supported(int hd);
void attention_flash(const float* q, const float* kc, const float* vc, int n, int pos0, const int* pos_dev, int heads,
                     int kv_heads, int hd, float* out, cudaStream_t s, const KvPacked& pk = KvPacked{},
                     FlashKv4 kv4 = FlashKv4::env);
// Varlen as attention_varlen; blocks: attention_flash_blocks() (64-row blocks cut per sequence:
// each sequence's outputs are then bit for bit those of attention_flash on it alone). An
// unsupported hd runs attention_varlen without a table (a 64-row table is not its format).
void attention_flash_varlen(const float* q, const float* kc, const float* vc, int n, const int* positions, int heads,
                            int kv_heads, int hd, float* out, cudaStream_t s, const int* blocks = nullptr,
                            int n_blocks = 0, const KvPacked& pk = KvPacked{}, FlashKv4 kv4 = FlashKv4::env);
std::vector<int> attention_flash_blocks(const std::vector<int>& seq_lens, int group);

}  // namespace sq::cuda
