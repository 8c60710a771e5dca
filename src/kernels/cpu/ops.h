// Float32 element-wise and attention ops of the decoder, model-agnostic.
// Hot loops are compiled twice (AVX2+FMA and generic x86-64) with GCC
// target_clones and picked at load time, so the generic binary stays fast.
#pragma once
#include <cstdint>

#include "kernels/ref/attention_ref.h"

namespace sq {

// y[t, :] = x[t, :] / sqrt(mean(x[t, :]²) + eps) * w   for t in [0, n)
void rmsnorm_f32(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y);

// In-place rotate-half RoPE (Hugging Face layout) on x [n, n_heads, head_dim];
// token t sits at position pos0 + t; inv_freq [head_dim/2].
void rope_f32(float* x, int64_t n, int n_heads, int head_dim, int pos0, const float* inv_freq);

// g[t, i] = silu(g[t, i]) * u[t, i]   (SwiGLU), in place on g.
void silu_mul_f32(float* g, const float* u, int64_t count);

// Causal GQA attention for n new queries at positions pos0..pos0+n-1 over a
// cache that already holds positions 0..pos0+n-1.
//   q   [n, n_heads, hd]                       (RoPE applied)
//   k,v cache rows: pointer to position 0, stride `kv_stride` floats between
//       positions, kv head g at offset g*hd     (RoPE applied to k)
//   out [n, n_heads, hd]
void attention_f32(const float* q, const float* k, const float* v, int64_t kv_stride, int64_t n, int pos0,
                   int n_heads, int n_kv_heads, int hd, float* out);

// The same over a 4-bit cache (one layer; layout in kernels/ref/attention_ref.h).
// Computes what attention_f32 computes over the dequantized rows, bit for
// bit (decode: attention_decode_q4; prefill: the rows dequantized per KV head
// into the GEMM operands). hd % 16 == 0, hd ≤ 512.
void attention_q4(const float* q, const KvQ4View& k, const KvQ4View& v, int64_t n, int pos0, int n_heads,
                  int n_kv_heads, int hd, float* out);

}  // namespace sq
