// Scalar reference (the specification) of the decode attention
// (kernels/cpu/attention_decode.h): causal GQA attention of a few new
// queries over the KV cache, in a fixed order of float operations that the
// AVX2 kernel reproduces bit for bit.
//
// Per query row t (position pos0 + t, len = pos0 + t + 1 keys) and head h
// (KV head g = h / (n_heads / n_kv_heads)):
//   s_j  = tree(lane_0..7) · scale,  lane_l = fma chain over i ≡ l (mod 8),
//          ascending i, from 0: lane_l = fma(q_i, k_ji, lane_l);
//          tree = ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7));  scale = 1/√hd
//   m    = max_j s_j;  e_j = exp(s_j − m);  sum = Σ_j e_j (ascending j);  a_j = e_j · (1 / sum)
//   o_i  = P_0i + P_1i + … (left to right) over the chunks c of 32 keys
//          [32c, 32c + 32) ∩ [0, len), each P_ci an fma chain over its keys
//          in ascending order from 0: P_ci = fma(a_j, v_ji, P_ci)
//          (chunks let the kernel stream whole cache rows, one chunk per unit)
// hd must be a multiple of 8.
#pragma once
#include <cstdint>

namespace sq {

inline constexpr int kAttentionChunk = 32;  // keys per partial sum of the outputs

void attention_decode_ref(const float* q, const float* k, const float* v, int64_t kv_stride, int64_t n, int pos0,
                          int n_heads, int n_kv_heads, int hd, float* out);

}  // namespace sq
