// Decode attention on AVX2: causal GQA attention of a few new queries (n <
// 16) over the KV cache, bitwise attention_decode_ref (kernels/ref/
// attention_ref.h, which fixes the order of every float operation).
//
// One parallel region, four phases split evenly over the threads (decode
// at SmolLM2 shapes and 640 positions: 20 / 9 / 20 / 9 units per layer):
//   1. scores: units (token, 32 cache rows), whole rows in address order;
//      each KV head's part is read once and dotted with the query of every
//      head of its group (GQA: 3 at SmolLM2), NK·G FMA chains in flight;
//   2. softmax per (token, head), in place: weights a_j;
//   3. partial outputs: units (token, the same 32 rows), V rows streamed
//      whole, each KV head's part applied to all heads of its group with
//      register accumulators;
//   4. per (token, head): the partials summed in chunk order.
// (The earlier per-(token, head) loop read every K/V row once per query
// head, with the output vector in memory: 31% of a decode token at 640
// positions; docs/perf.md.)
//
// Build: part of specquant_lib.  Test: specquant_tests --gtest_filter='AttentionDecode*'
#pragma once
#include <cstdint>

#include "kernels/ref/attention_ref.h"

namespace sq {

// Arguments as attention_f32 (kernels/cpu/ops.h). Without AVX2, with hd not
// a multiple of 8 or more than 8 query heads per KV head, the reference runs.
void attention_decode(const float* q, const float* k, const float* v, int64_t kv_stride, int64_t n, int pos0,
                      int n_heads, int n_kv_heads, int hd, float* out);

// The same over a 4-bit cache (KvQ4View, layout in kernels/ref/attention_ref.h):
// bitwise attention_decode_q4_ref. Each 8-dim block of a K or V row is
// dequantized in registers right before its FMAs (8 codes = 4 bytes read
// instead of 32). hd % 16 != 0 or G > 8: the reference.
void attention_decode_q4(const float* q, const KvQ4View& k, const KvQ4View& v, int64_t n, int pos0, int n_heads,
                         int n_kv_heads, int hd, float* out);

}  // namespace sq
