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
//
// 4-bit KV cache (KVCache with kv_bits 4, model/model.h): one side (K or V)
// of one layer holds, per position p and KV head g (row r = p·n_kv + g):
//   codes + r·hd/2: hd/2 bytes, 16 dims per 8 bytes: byte b of block B holds
//                   dim 16B + b in its low nibble and dim 16B + 8 + b in its
//                   high nibble (one 8-byte load, mask / shift, gives 8
//                   consecutive dims: what the AVX2 kernels read);
//   scale[r] (float32) and zero[r] (0..15);
//   value_i = (float)(c_i − zero) · scale  (+ shift_i for keys with a key shift)
// which is, bit for bit, what kv_fake_quant_ref (kernels/ref/w4a4_ref.h)
// leaves in a float cache: the quantizer is that function's. Needs hd % 16 == 0.
// Per token and layer at SmolLM2 (3 KV heads × 64): 2 × 3 × (32 + 4 + 1) =
// 222 B instead of 1536 B of float32.
#pragma once
#include <cstdint>

namespace sq {

inline constexpr int kAttentionChunk = 32;  // keys per partial sum of the outputs

void attention_decode_ref(const float* q, const float* k, const float* v, int64_t kv_stride, int64_t n, int pos0,
                          int n_heads, int n_kv_heads, int hd, float* out);

// One side of one layer of a 4-bit cache (layout above); shift [n_kv·hd] or null.
struct KvQ4View {
    const uint8_t* codes = nullptr;
    const float* scale = nullptr;
    const uint8_t* zero = nullptr;
    const float* shift = nullptr;
    int n_kv = 0, hd = 0;
};

// Quantizes row x [hd] of KV head g as kv_fake_quant_ref(x, hd, 4, clip,
// shift) does and stores codes [hd/2], scale and zero. x is not modified.
void kv_q4_store_ref(const float* x, int hd, float clip, const float* shift, uint8_t* codes, float* scale,
                     uint8_t* zero);
// Position p, KV head g of the view as float32: out [hd].
void kv_q4_row_ref(const KvQ4View& kv, int64_t p, int g, float* out);
// Rows [p0, p1) of the view as float32: out [(p1 − p0), n_kv·hd].
void kv_q4_load_ref(const KvQ4View& kv, int64_t p0, int64_t p1, float* out);
// The decode attention over a 4-bit cache: attention_decode_ref over the
// dequantized rows (the specification: the codes change only the storage).
void attention_decode_q4_ref(const float* q, const KvQ4View& k, const KvQ4View& v, int64_t n, int pos0, int n_heads,
                             int n_kv_heads, int hd, float* out);

}  // namespace sq
