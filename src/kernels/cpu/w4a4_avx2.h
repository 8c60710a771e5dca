// W4A4 (and W4A16) kernels on AVX2: per-token activation quantization, the
// integer GEMM/GEMV with a fused float epilogue and spectral branch, and the
// dequantize-on-the-fly FP32 path for 16-bit activations.
//
// Build: part of specquant_lib.  Test: build-avx2/specquant_tests --gtest_filter='W4A4Avx2*'
// Bench: build-avx2/specquant_bench --benchmark_filter='W4A4|W4A16'
// Spec: kernels/ref/w4a4_ref.h (integer accumulators bit-exact, act quant
// bit-identical); layout and measurements: docs/format.md ("Kernel layout"),
// docs/kernels-cpu-notes.md ("W4A4").
//
// Kernel weight layout (made on load from the canonical codes, never stored):
// rows in groups of 4, K in blocks of 64 weights, one 32-byte block per row:
//   data [ceil(n/4)][kp/64][4 rows][32 bytes],  kp = K rounded up to 64,
//   byte b of a block: low nibble = u(k0 + b), high nibble = u(k0 + 32 + b),
//   u = code + 8 ∈ [0, 15] (offset binary; pad weights and pad rows: code 0).
// So `and 0x0F` / `srli 4 + and 0x0F` give 32 unsigned weights each, in the
// order of 32 consecutive activations: no shuffles, and a group of 4 rows is
// one contiguous 128-byte stream per 64 weights (GEMV reads each weight byte
// once, front to back). Bytes per weight: 0.5 (+ up to 63 pad weights per row,
// + pad rows to a multiple of 4; none at the model shapes).
//
// Activations for the kernel are signed bytes a = q − o (o = 128 when
// a_bits = 8, else 0), rows of kp bytes, zero padded. With u = code + 8:
//   Σ q·code = Σ a·u − 8·Σ a + o·rowsum        (exact, see w4a4_avx2.cpp)
// maddubs(u, a) multiplies unsigned u ≤ 15 by signed a ∈ [−128, 127]: a pair
// sums to at most 2·15·128 = 3840 in magnitude, far from int16 saturation.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace sq {

// Quantized weights in the kernel layout, plus the per-row epilogue data
// padded to whole groups of 4 rows (pad rows: scale 0, rowsum 0, bias 0).
struct W4A4Weights {
    static constexpr int64_t kRows = 4;  // weight rows per group
    int64_t n = 0, k = 0;  // output / input features
    int64_t kp = 0;        // k rounded up to 64
    int64_t groups = 0;    // ceil(n / 4)
    std::vector<uint8_t> data;     // [groups][kp/64][4][32]
    std::vector<int32_t> rowsum;   // [groups·4] Σ_k code
    std::vector<float> scale;      // [groups·4]
    std::vector<float> bias;       // [groups·4] or empty
    // Spectral branch: rows keep different numbers of bins (SmolLM2 at k̄ 32:
    // 32 on average of K = 64), so the rows are stored sorted by their
    // coefficient length (longest first) and a group's 4 rows have nearly
    // the same length. slot_row [n]: the original row in slot s (empty: the
    // identity, rank 0); row_slot [n]: its inverse; outputs are written to
    // the original rows. coef_len [groups]: columns a group's dot products
    // run over = its longest row's last nonzero coefficient (in run-time
    // column order), rounded up to 8; coef fp16: group g's [4][coef_len[g]]
    // at coef_off[g] (zero past each row's own length). rp = rank rounded up
    // to 8 is the row stride of zb.
    int rank = 0, rp = 0;
    std::vector<uint16_t> coef;
    std::vector<int32_t> coef_len;
    std::vector<int64_t> coef_off;
    std::vector<int32_t> slot_row, row_slot;
    int64_t slot_of(int64_t j) const { return row_slot.empty() ? j : row_slot[j]; }
    // Slot s's coefficients: coef_len[s / kRows] of them (rank > 0).
    const uint16_t* coef_of_slot(int64_t s) const {
        return coef.data() + coef_off[s / kRows] + (s % kRows) * coef_len[s / kRows];
    }
    size_t bytes() const {
        return data.size() + (rowsum.size() + scale.size() + bias.size() + slot_row.size() + row_slot.size()) * 4 +
               coef.size() * 2 + coef_off.size() * 8;
    }
};

// Canonical codes [n, ceil(k/2)] (w4a4_format.h) → kernel layout. scale [n]
// required; bias [n] and coef [n, rank] fp16 optional (null / rank 0).
W4A4Weights w4a4_pack(const uint8_t* codes, int64_t n, int64_t k, const float* scale, const float* bias,
                      const uint16_t* coef, int rank);

// Canonical codes of row j back from the layout (tests, inspection).
void w4a4_unpack_row(const W4A4Weights& w, int64_t j, uint8_t* codes_row);

// True when the AVX2 path runs (AVX2 + FMA + F16C, SQ_FORCE_SCALAR unset).
bool w4a4_avx2_available();

// The 3 × 4 integer tile with vpdpbusd (AVX512-VNNI on ymm: u8 × s8, 4
// products summed into int32 in one instruction) instead of vpmaddubsw +
// vpaddw + periodic vpmaddwd: the same exact int32 sums, fewer instructions.
// On when the CPU has it and env SQ_W4A4_VNNI is not "0"; the setter is for
// tests (both paths against the reference) and A/B timing. Returns the old value.
bool w4a4_vnni_enabled();
bool w4a4_set_vnni(bool on);

// Bit-identical to act_quant_ref (codes, scales, zeros), same arguments.
void act_quant_avx2(const float* x, int64_t n, int64_t k, int bits, float clip, uint8_t* q, float* scale,
                    int32_t* zero);

// Activations prepared for the integer kernel.
struct W4A4Act {
    int64_t m = 0, kp = 0;
    int bits = 4;                   // activation bits (2..8): bounds |a| for the int16 accumulators
    int offset = 0;                 // o: 128 for 8-bit activations, else 0
    std::vector<int8_t> a;          // [m, kp] q − o, zero padded
    std::vector<float> scale;       // [m]
    std::vector<int32_t> zero;      // [m]
    std::vector<int32_t> asum;      // [m] Σ_k a
    void resize(int64_t m_, int64_t kp_);
};

// Per-token quantization of x [m, k] into `act` (resized), parallel over tokens.
void w4a4_act_prepare(const float* x, int64_t m, int64_t k, int bits, float clip, int64_t kp, W4A4Act& act);
// The same from given codes q [m, k] (tests of the integer GEMM).
void w4a4_act_from_codes(const uint8_t* q, int64_t m, int64_t k, int bits, int64_t kp, W4A4Act& act);

// acc [m, n] = q · codesᵀ, int32, equal to gemm_w4a4_acc_ref.
void w4a4_gemm_acc(const W4A4Act& act, const W4A4Weights& w, int32_t* acc);

// y [m, n] = s_t · scale_j · (acc − z_t · rowsum_j)  [bitwise as w4a4_epilogue_ref]
//          + zb_t · C_jᵀ  (when zb: [m, w.rp] fp32, zero padded, and w.rank > 0)
//          + bias_j       (when w.bias is set and add_bias)
// m ≤ w4a4_gemv_max_m: each thread streams a contiguous range of row groups
// once; above: cache-blocked tasks (act block in L2 × group block).
void w4a4_gemm(const W4A4Act& act, const W4A4Weights& w, const float* zb, float* y, bool add_bias = true);
inline constexpr int64_t w4a4_gemv_max_m = 16;

// Several layers on the same activations (q/k/v, gate/up of one block, or a
// single layer whose x·B is computed inside the region), in ONE parallel
// region: outs[i].y = w4a4_gemm(act, *outs[i].w, outs[i].zb, outs[i].y),
// bitwise. pre (optional) runs as pre(thread, threads) on every thread of the
// region before the GEMM, then all threads meet at a barrier (decode: each
// thread's share of zb = x·B, so a layer costs one fork/join instead of two).
struct W4A4Out {
    const W4A4Weights* w;
    const float* zb;  // [m, w->rp] or null
    float* y;         // [m, w->n]
};
void w4a4_gemm_multi(const W4A4Act& act, const W4A4Out* outs, int count,
                     const std::function<void(int, int)>& pre = {});

// W4A16: y [m, n] = scale_j · Σ_k xp_k · code_jk  + zb·Cᵀ + bias (as w4a4_gemm),
// xp fp32 [m, kp] zero padded; the codes are converted to float on the fly.
// Same threading as w4a4_gemm.
void w4a16_gemm(const float* xp, int64_t m, const W4A4Weights& w, const float* zb, float* y, bool add_bias = true);

// Rows [j0, j1) (original numbering) of scale·code as fp32 [j1 − j0, k] (the W4A16 reference's values).
void w4a4_dequant_rows(const W4A4Weights& w, int64_t j0, int64_t j1, float* out);

}  // namespace sq
