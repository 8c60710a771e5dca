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

class ModelCuda {
public:
    // Copies the weights to the current CUDA device; capacity = KV cache
    // length and the most tokens one forward call may carry. Throws sq::Error
    // when no device is present, memory runs out or a Linear kind is unknown.
    ModelCuda(const ModelWeights& w, int capacity);
    ~ModelCuda();
    ModelCuda(const ModelCuda&) = delete;
    ModelCuda& operator=(const ModelCuda&) = delete;

    const ModelConfig& config() const;
    int capacity() const;
    int pos() const;         // tokens in the cache
    void truncate(int n);    // forget tokens from n on (n ≤ pos)
    size_t device_bytes() const;  // weights, cache and scratch

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

private:
    struct Impl;
    std::unique_ptr<Impl> p_;
};

}  // namespace sq
#endif
