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
//   o_i  = fma chain over ascending j, from 0: o_i = fma(a_j, v_ji, o_i)
// hd must be a multiple of 8.
#pragma once
#include <cstdint>

namespace sq {

void attention_decode_ref(const float* q, const float* k, const float* v, int64_t kv_stride, int64_t n, int pos0,
                          int n_heads, int n_kv_heads, int hd, float* out);

}  // namespace sq
