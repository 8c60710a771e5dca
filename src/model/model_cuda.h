// The decoder forward pass on one CUDA device (built with -DSPECQUANT_CUDA=ON;
// the class exists only when SPECQUANT_HAS_CUDA is defined).
//
// Same semantics as Model::forward (model/model.h) for every Linear the CPU
// runs (LinearF32, LinearW4A4Ref in W4A4 and W4A16 mode, with spectral branch,
// online Hadamard and bias), the KV cache precision (kv_bits, kv_clip) and
// qk_rotate. Linear layers run through cuBLAS in FP32 (no TF32); W4A4 layers
// multiply integer-valued float codes, exact like the reference (every
// partial sum an integer below 2^24, K split where needed). The rest are the
// kernels of kernels/cuda/ops_cuda.h. The weights are copied to the device
// once; the KV cache lives on the device and can be truncated for branching.
#pragma once
#ifdef SPECQUANT_HAS_CUDA
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/row_score.h"

namespace sq {

struct ModelCudaOptions {
    // W4A4 layers through cuBLAS FP32 over integer-valued float codes (the
    // first engine) instead of the INT8 tensor-core kernels: same bits, 8×
    // the weight memory. Env: SQ_CUDA_W4A4=f32.
    bool w4a4_f32_codes = false;
    // Every linear layer (lm_head included) as BF16 weights through cuBLAS:
    // activations rounded to bf16, fp32 accumulation and fp32 output
    // (CUBLAS_COMPUTE_32F). Float layers are rounded; W4A4/W4A16 layers become
    // bf16(scale·code + C·Bᵀ) (the spectral branch folded in; activations not
    // quantized; online Hadamard kept). The speed baseline of `bench`, not
    // the quantized model. Env: SQ_CUDA_LINEARS=bf16.
    bool bf16 = false;
    // Spectral branch (x·Bᵀ)·Cᵀ of W4A4 layers, always in the CPU engine's bits (cuda::spectral_xb,
    // spectral_zc_add: x·B reused across layers with the same input and basis). Where ·Cᵀ runs, a speed
    // choice only: fused into the tensor-core GEMM epilogue (spec_dot, the same order) for calls of
    // at most spectral_fuse_max_rows rows, else its own pass over the GEMM's [n, out] output.
    // 0 = never, 64 = the GEMV calls only, i.e. decode, INT_MAX = always.
    // Env: SQ_CUDA_SPECTRAL=separate|auto|fused.
    int spectral_fuse_max_rows = 64;
    // Decode fusion (docs/kernels-cuda-notes.md "Decode v4"): q/k/v and gate/up as one
    // layer each (weights concatenated once at load, no second copy), the norm and SwiGLU
    // kernels writing the next layer's activation codes (BF16: its bf16 input), RoPE and
    // the KV store in one kernel. Same bits as unfused (tests). Env: SQ_CUDA_FUSE=0|1.
    bool fuse = true;
    // Decode v5 (docs/kernels-cuda-notes.md): kv_bits ≤ 4 keeps the cache packed (4-bit codes +
    // per-vector scale/zero, cuda::KvPacked) instead of fake-quantized fp32, read by every
    // attention kernel as the same floats (Env: SQ_CUDA_KV=packed|f32); decode attention as
    // one kernel (merge by the last block) instead of v4's part + merge (+ act_quant) kernels
    // (Env: SQ_CUDA_DECODE_ATT=v5|v4). Same bits either way (CudaModel.PackedKvDecodeIsBitIdentical).
    // decode_cluster (decode v6, with decode_v5): that kernel as a thread-block cluster per
    // (sequence, KV head) merging through distributed shared memory where it applies (o's codes
    // from act_quant), same bits. Off by default: measured slower than v5 at B = 1, 8 and 32
    // (docs/perf.md "Decode v6"). Env: SQ_CUDA_DECODE_ATT=v6.
    bool kv_packed = true;
    bool decode_v5 = true;
    bool decode_cluster = false;
    // Decode v6: a Q8_0 lm_head of the file (LinearQ8, `--embed-bits 8`, docs/format.md) is also
    // kept on the device as Q8_0 and read by cuda::q8_gemv for one-row calls with no fixed GEMM
    // shape (decode steps of one sequence, a prompt's last row): 8.5 bits per weight instead of the
    // float32 copy's 32, which still serves every larger call (prefill, scoring, batched decode:
    // their bits unchanged; q8_gemv at 8 rows was slower than the 16-bit GEMM, docs/perf.md).
    // Same function, float order of a GEMV (logits within float rounding of the f32 GEMM's).
    // Env: SQ_CUDA_LM_HEAD=q8|f32.
    bool lm_head_q8 = true;
    // Prefill and scoring attention on fp16 tensor cores (attention_flash.cu, 12–14× the FP32
    // kernel at 2048 tokens; error bound derived and checked in tests/test_cuda_flash.cpp)
    // instead of the FP32 kernel. Off for real models until its WikiText-2 agreement with the
    // CPU engine is measured (the FP32 kernel's: 0.035% over 147 windows, docs/perf.md): the
    // eval engine's numbers stay those of the measured kernel. On in the synthetic bench
    // (CudaSynthetic). Env: SQ_CUDA_PREFILL_ATT=flash|f32.
    bool flash_attention = false;
    // Decode v7 (docs/kernels-cuda-notes.md): in calls of at most 16 rows, once a layer's q|k|v is
    // computed, a side stream asks L2 for up to this many MiB of its next weights (o, then gate|up,
    // then down) with bulk prefetches, while the latency-bound RoPE, attention and norm kernels
    // leave HBM idle (B=1 +5% with the GEMV's own prefetch off, docs/perf.md "Session 11"). A cache
    // hint: no bits change (CudaModel.FusedDecodeIsBitIdentical). 0 = off. Env: SQ_CUDA_L2PF=MiB.
    int l2_prefetch_mib = 32;
    // Decode v8 (docs/kernels-cuda-notes.md), opt-in: in calls of at most 8 rows, the RMSNorm before a
    // fused W4A4 layer without spectral branch (q|k|v, gate|up) done by that layer's GEMV
    // (cuda::w4a4_gemv_norm: clusters of 8 blocks, codes in shared memory), where the GEMV's clusters
    // all fit at once: one kernel boundary fewer per norm, same bits (tests). Off by default: measured
    // slower (B=1 324 vs 352 tok/s: the GEMV with the norm took 18.5 µs alone against ~9 without,
    // docs/perf.md "Session 11"). With fuse only. Env: SQ_CUDA_NORM_GEMV=0|1.
    bool norm_gemv = false;
    static ModelCudaOptions from_env();
};

// "separate" → 0, "auto" → 64 (the GEMV's rows, W4G_GEMV_MAX_M; 16 before decode v4), "fused" → INT_MAX
// (spectral_fuse_max_rows);
// anything else is an error naming `what`.
int spectral_fuse_rows_from_name(const std::string& v, const std::string& what);

// Synthetic model of a given shape with random weights made on the device
// (bench --shape): no checkpoint, nothing of the weights' size on the host.
struct CudaSynthetic {
    bool bf16 = false;    // every linear BF16 (the baseline); else W4A4 (A4, clip 0.9) + BF16 lm_head
    int rank = 0;         // W4A4: spectral rank 2K−1 of every linear (0 = none; k̄ = 16 → 31)
    int spectral_fuse_max_rows = 64;  // see ModelCudaOptions (64: fused in the GEMV, i.e. decode, only)
    int kv_bits = 16;     // KV cache quantization (packed when ≤ 4 and kv_packed, else fake-quantized fp32)
    bool fuse = true;     // see ModelCudaOptions::fuse
    bool kv_packed = true;  // see ModelCudaOptions::kv_packed
    bool decode_v5 = true;  // see ModelCudaOptions::decode_v5
    bool decode_cluster = false;  // see ModelCudaOptions::decode_cluster
    // W4A4 variant only: the lm_head as Q8_0 too (power-of-two block scales, so its bf16 copy is the
    // same matrix), read by q8_gemv in one-row calls (ModelCudaOptions::lm_head_q8).
    bool lm_head_q8 = false;
    bool flash_attention = true;  // see ModelCudaOptions::flash_attention
    int l2_prefetch_mib = 32;     // see ModelCudaOptions::l2_prefetch_mib
    bool norm_gemv = false;       // see ModelCudaOptions::norm_gemv
    uint64_t seed = 1;
};

// Device memory by use, bytes.
struct CudaMemory {
    size_t linears = 0;   // the 7 linear layers of every block (codes, scales, row sums, spectral, bias)
    size_t lm_head = 0;   // 0 when tied to the embedding table
    size_t embed = 0;     // embedding table (fp32) + norms + RoPE tables + Hadamard matrices
    size_t kv_cache = 0;  // keys and values: fp32 (fake-quantized when kv_bits < 16), or packed (kv_packed)
    size_t total = 0;     // everything, scratch included
};

class ModelCuda {
public:
    // Copies the weights to the current CUDA device; capacity = KV cache
    // length and the most tokens one forward call may carry. Throws sq::Error
    // when no device is present, memory runs out or a Linear kind is unknown.
    ModelCuda(const ModelWeights& w, int capacity, const ModelCudaOptions& o = ModelCudaOptions::from_env());
    // Synthetic weights of config c's shape (see CudaSynthetic).
    ModelCuda(const ModelConfig& c, const CudaSynthetic& s, int capacity);
    ~ModelCuda();
    ModelCuda(const ModelCuda&) = delete;
    ModelCuda& operator=(const ModelCuda&) = delete;

    const ModelConfig& config() const;
    int capacity() const;
    int pos() const;         // tokens in the cache
    void truncate(int n);    // forget tokens from n on (n ≤ pos)
    size_t device_bytes() const;  // weights, cache and scratch
    CudaMemory memory() const;
    const ModelCudaOptions& options() const;

    // Runs n tokens from pos() (appending them to the cache) and scores the
    // given (row, target) pairs on the device: only those rows go through
    // lm_head, and only the scores come back. One result per target, in order.
    std::vector<RowScore> forward_score(const int* tokens, int n, const std::vector<RowTarget>& targets);

    // Varlen: independent sequences packed back to back (tokens [Σ seq_lens]
    // ≤ capacity), each at positions 0.. and attending causally to itself
    // only; per-token work (norms, activation and KV quantization, linear
    // layers, RoPE) is that of the sequence run alone, so its scores equal
    // forward_score's up to float rounding (cuBLAS picks its algorithm by
    // row count). Batch-invariant: every GEMM runs at the capacity's row
    // count, attention blocks never straddle sequences and lm_head chunks
    // have one size, so a sequence's scores are bit for bit the same
    // whatever else the call holds. Rows of `targets` index the packed
    // tokens; only those rows go through lm_head (gathered). The KV cache is
    // scratch for the call: pos() is 0 afterwards.
    std::vector<RowScore> forward_score_varlen(const int* tokens, const std::vector<int>& seq_lens,
                                               const std::vector<RowTarget>& targets);

    // Runs n tokens from pos(); logits [n, vocab] when all_logits, else
    // [1, vocab] for the last token, copied to host memory (tests, generation).
    void forward_logits(const int* tokens, int n, float* logits, bool all_logits);

    // Batched decode: `batch` independent sequences, each with its own KV
    // cache region of seq_cap rows (batch·seq_cap ≤ capacity; the regions
    // replace the one-sequence cache: pos() is 0 afterwards and the next
    // one-sequence call starts afresh). decode_prefill runs sequence b's next
    // n tokens (its prompt) and returns the last token's logits when logits
    // is non-null; decode_step runs one token per sequence (tokens [batch])
    // and leaves logits [batch, vocab] (copied when logits is non-null);
    // a CUDA graph per batch size replays the step. decode_fill_random (bench)
    // sets every sequence's length to len with random keys and values.
    void decode_setup(int batch, int seq_cap);
    void decode_prefill(int b, const int* tokens, int n, float* logits);
    void decode_step(const int* tokens, float* logits);
    void decode_fill_random(int len, uint64_t seed);
    int decode_len(int b) const;

    // Per-op timing (bench): while on, calls run eagerly (no graphs) with a
    // CUDA event pair around every op; profile_take() waits for the stream and
    // returns the milliseconds per op class since the last take, in first-seen order.
    void set_profile(bool on);
    std::vector<std::pair<std::string, double>> profile_take();
    void synchronize();

private:
    struct Impl;
    std::unique_ptr<Impl> p_;
};

}  // namespace sq
#endif
