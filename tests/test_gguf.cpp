// GGUF reader and dequantizer tests.
//   Dequant.*  hand-built blocks with hand-computed values, and a cross-check
//              against the python gguf package (tests/data/io/quants.gguf,
//              made by scripts/make_io_fixtures.py).
//   Gguf.*     metadata of every type, versions, alignment, name mapping,
//              q/k un-permute against llama.cpp's own permutation, the
//              default model (skipped when models/ lacks it).
// Run: build/specquant_tests --gtest_filter='Dequant*:Gguf*'
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <numbers>
#include <numeric>

#include "core/fp16.h"
#include "gguf_writer.h"
#include "io/checkpoint.h"
#include "io/dequant.h"
#include "io/gguf.h"
#include "io/gguf_blocks.h"

using namespace sq;
using namespace sqt_io;

namespace {

const std::string k_data = std::string(SQ_TEST_DATA) + "/io/";

constexpr uint16_t H_1 = 0x3C00, H_HALF = 0x3800, H_QUARTER = 0x3400, H_2 = 0x4000, H_MINUS_1 = 0xBC00;

template <class B>
std::vector<uint8_t> as_bytes(const std::vector<B>& blocks) {
    std::vector<uint8_t> b(blocks.size() * sizeof(B));
    std::memcpy(b.data(), blocks.data(), b.size());
    return b;
}

// Packs eight 6-bit scales and mins the way Q4_K/Q5_K store them (the
// inverse of get_scale_min_k4, written out separately as a check on it).
void pack_k_scales(const int sc[8], const int m[8], uint8_t out[12]) {
    for (int s = 0; s < 4; ++s) {
        out[s] = (uint8_t)((sc[s] & 63) | ((sc[s + 4] >> 4) << 6));
        out[s + 4] = (uint8_t)((m[s] & 63) | ((m[s + 4] >> 4) << 6));
        out[s + 8] = (uint8_t)((sc[s + 4] & 15) | ((m[s + 4] & 15) << 4));
    }
}

const int k_sc[8] = {1, 2, 3, 63, 17, 33, 48, 5};   // 17, 33, 48: top bits 01, 10, 11
const int k_m[8] = {0, 7, 62, 9, 20, 47, 31, 63};

}  // namespace

// ---------------------------------------------------------------------------
// Dequant: hand-made blocks

TEST(Dequant, F16AndBF16KnownBits) {
    const uint16_t h[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x8000, 0x3555};
    float y[6];
    dequantize(GGML_TYPE_F16, h, y, 6);
    EXPECT_EQ(y[0], 1.0f);
    EXPECT_EQ(y[1], -2.0f);
    EXPECT_EQ(y[2], 65504.0f);
    EXPECT_EQ(y[3], std::ldexp(1.0f, -24));
    EXPECT_TRUE(y[4] == 0.0f && std::signbit(y[4]));
    EXPECT_EQ(y[5], 0.25f * (1.0f + 0x155 / 1024.0f));  // 0x3555: exponent 13 - 15, mantissa 0x155
    const uint16_t b[] = {0x3F80, 0xC0A0, 0x4049};
    dequantize(GGML_TYPE_BF16, b, y, 3);
    EXPECT_EQ(y[0], 1.0f);
    EXPECT_EQ(y[1], -5.0f);
    EXPECT_EQ(y[2], 3.140625f);
}

TEST(Dequant, Q8_0HandBlock) {
    std::vector<block_q8_0> blk(2);
    blk[0].d = H_HALF;
    blk[1].d = H_QUARTER;
    for (int i = 0; i < 32; ++i) {
        blk[0].qs[i] = (int8_t)(i - 16);
        blk[1].qs[i] = (int8_t)(i * 8 - 128);  // reaches -128
    }
    auto bytes = as_bytes(blk);
    std::vector<float> y(64, NAN);
    dequantize(GGML_TYPE_Q8_0, bytes.data(), y.data(), 64);
    for (int i = 0; i < 32; ++i) {
        EXPECT_EQ(y[i], 0.5f * (i - 16)) << i;
        EXPECT_EQ(y[32 + i], 0.25f * (i * 8 - 128)) << i;
    }
}

TEST(Dequant, Q4_0HandBlock) {
    block_q4_0 blk;
    blk.d = H_2;
    for (int j = 0; j < 16; ++j) blk.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    dequantize(GGML_TYPE_Q4_0, &blk, y, 32);
    for (int j = 0; j < 16; ++j) {
        EXPECT_EQ(y[j], 2.0f * (j - 8)) << j;            // low nibbles: weights 0..15
        EXPECT_EQ(y[j + 16], 2.0f * (15 - j - 8)) << j;  // high nibbles: 16..31
    }
}

TEST(Dequant, Q4_1HandBlock) {
    block_q4_1 blk;
    blk.d = H_HALF;
    blk.m = H_MINUS_1;
    for (int j = 0; j < 16; ++j) blk.qs[j] = (uint8_t)(j | ((j ^ 5) << 4));
    float y[32];
    dequantize(GGML_TYPE_Q4_1, &blk, y, 32);
    for (int j = 0; j < 16; ++j) {
        EXPECT_EQ(y[j], 0.5f * j - 1.0f) << j;
        EXPECT_EQ(y[j + 16], 0.5f * (j ^ 5) - 1.0f) << j;
    }
}

TEST(Dequant, Q4_KHandBlock) {
    block_q4_K blk;
    blk.d = H_1;
    blk.dmin = H_HALF;
    pack_k_scales(k_sc, k_m, blk.scales);
    for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) blk.qs[32 * c + l] = (uint8_t)(((l + c) & 15) | (((3 * l + c) & 15) << 4));
    float y[256];
    dequantize(GGML_TYPE_Q4_K, &blk, y, 256);
    for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) {
            EXPECT_EQ(y[64 * c + l], 1.0f * k_sc[2 * c] * ((l + c) & 15) - 0.5f * k_m[2 * c]) << c << " " << l;
            EXPECT_EQ(y[64 * c + 32 + l], 1.0f * k_sc[2 * c + 1] * ((3 * l + c) & 15) - 0.5f * k_m[2 * c + 1])
                << c << " " << l;
        }
}

TEST(Dequant, Q5_KHandBlock) {
    block_q5_K blk;
    blk.d = H_QUARTER;
    blk.dmin = H_2;
    pack_k_scales(k_sc, k_m, blk.scales);
    for (int l = 0; l < 32; ++l) blk.qh[l] = (uint8_t)(l * 37 + 11);
    for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) blk.qs[32 * c + l] = (uint8_t)(((l + 2 * c) & 15) | (((5 * l + c) & 15) << 4));
    float y[256];
    dequantize(GGML_TYPE_Q5_K, &blk, y, 256);
    for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) {
            const int s0 = 2 * c, s1 = 2 * c + 1;  // sub-block s takes its 5th bit from qh bit s
            const int q0 = ((l + 2 * c) & 15) + 16 * ((blk.qh[l] >> s0) & 1);
            const int q1 = ((5 * l + c) & 15) + 16 * ((blk.qh[l] >> s1) & 1);
            EXPECT_EQ(y[64 * c + l], 0.25f * k_sc[s0] * q0 - 2.0f * k_m[s0]) << c << " " << l;
            EXPECT_EQ(y[64 * c + 32 + l], 0.25f * k_sc[s1] * q1 - 2.0f * k_m[s1]) << c << " " << l;
        }
}

TEST(Dequant, Q6_KHandBlock) {
    // choose the 6-bit value of every weight and the 16 scales, pack them
    int q[256];
    for (int i = 0; i < 256; ++i) q[i] = (i * 13 + 7) % 64;
    block_q6_K blk{};
    for (int s = 0; s < 16; ++s) blk.scales[s] = (int8_t)(s * 17 - 128);
    blk.d = H_QUARTER;
    for (int h = 0; h < 2; ++h)
        for (int l = 0; l < 32; ++l) {
            const int w0 = q[128 * h + l], w1 = q[128 * h + l + 32], w2 = q[128 * h + l + 64], w3 = q[128 * h + l + 96];
            blk.ql[64 * h + l] = (uint8_t)((w0 & 15) | ((w2 & 15) << 4));
            blk.ql[64 * h + l + 32] = (uint8_t)((w1 & 15) | ((w3 & 15) << 4));
            blk.qh[32 * h + l] = (uint8_t)((w0 >> 4) | ((w1 >> 4) << 2) | ((w2 >> 4) << 4) | ((w3 >> 4) << 6));
        }
    float y[256];
    dequantize(GGML_TYPE_Q6_K, &blk, y, 256);
    for (int i = 0; i < 256; ++i) EXPECT_EQ(y[i], 0.25f * blk.scales[i / 16] * (q[i] - 32)) << i;
}

TEST(Dequant, RejectsPartialBlocksAndUnknownTypes) {
    float y[64];
    block_q4_0 blk{};
    EXPECT_THROW(dequantize(GGML_TYPE_Q4_0, &blk, y, 31), Error);
    EXPECT_THROW(dequantize(6 /* Q5_0 */, &blk, y, 32), Error);
    EXPECT_EQ(ggml_type_name(6), "Q5_0");
    EXPECT_EQ(ggml_type_name(23), "IQ4_XS");
    EXPECT_EQ(ggml_type_info(6), nullptr);
}

// Every type against gguf.quants.dequantize of the same bytes.
TEST(Dequant, MatchesPythonGgufPackage) {
    GgufFile f(k_data + "quants.gguf");
    for (const char* type : {"F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"}) {
        SCOPED_TRACE(type);
        const GgufTensorInfo* t = f.tensor(type);
        const GgufTensorInfo* ref = f.tensor(std::string(type) + ".ref");
        ASSERT_TRUE(t && ref);
        EXPECT_EQ(ggml_type_name(t->type), type);
        EXPECT_EQ(ref->type, (uint32_t)GGML_TYPE_F32);
        ASSERT_EQ(t->ne, ref->ne);
        const auto got = f.tensor_f32(*t), want = f.tensor_f32(*ref);
        ASSERT_EQ(got.size(), want.size());
        int bad = 0;
        for (size_t i = 0; i < got.size(); ++i) {
            // numpy evaluates the same float32 products in the same order: exact match expected
            const float tol = 0.0f;
            if (!(std::fabs(got[i] - want[i]) <= tol) && bad++ < 5)
                ADD_FAILURE() << type << " [" << i << "] got " << got[i] << " want " << want[i];
        }
        EXPECT_EQ(bad, 0);
    }
}

// ---------------------------------------------------------------------------
// Gguf: structure

TEST(Gguf, ReadsMetadataOfEveryType) {
    TempDir tmp;
    GgufWriter w;
    w.u8("t.u8", 250);
    w.i8("t.i8", -5);
    w.u16("t.u16", 65000);
    w.i16("t.i16", -30000);
    w.u32("t.u32", 4000000000u);
    w.i32("t.i32", -2000000000);
    w.f32("t.f32", 1.5f);
    w.boolean("t.bool", true);
    w.str("t.str", "héllo");
    w.u64("t.u64", 1ull << 40);
    w.i64("t.i64", -(1ll << 40));
    w.f64("t.f64", 0.125);
    w.str_array("t.strs", {"a", "", "ccc"});
    w.f32_array("t.f32s", {1.0f, -2.5f});
    w.i32_array("t.i32s", {7, -8, 9});
    // a nested array (array of two arrays of u8): skipped, not readable
    w.key("t.nested", 9);
    put<uint32_t>(w.kv, 9);
    put<uint64_t>(w.kv, 2);
    for (int k = 0; k < 2; ++k) {
        put<uint32_t>(w.kv, 0);
        put<uint64_t>(w.kv, 3);
        for (int i = 0; i < 3; ++i) put<uint8_t>(w.kv, (uint8_t)i);
    }
    w.str("t.after", "still parsed");
    w.tensor_f32("x", {4}, {1, 2, 3, 4});
    w.write(tmp.file("m.gguf"));

    GgufFile f(tmp.file("m.gguf"));
    EXPECT_EQ(f.version(), 3u);
    EXPECT_EQ(f.get_int("t.u8"), 250);
    EXPECT_EQ(f.get_int("t.i8"), -5);
    EXPECT_EQ(f.get_int("t.u16"), 65000);
    EXPECT_EQ(f.get_int("t.i16"), -30000);
    EXPECT_EQ(f.get_int("t.u32"), 4000000000ll);
    EXPECT_EQ(f.get_int("t.i32"), -2000000000);
    EXPECT_EQ(f.get_float("t.f32"), 1.5);
    EXPECT_TRUE(f.get_bool("t.bool", false));
    EXPECT_EQ(f.get_string("t.str"), "héllo");
    EXPECT_EQ(f.get_int("t.u64"), 1ll << 40);
    EXPECT_EQ(f.get_int("t.i64"), -(1ll << 40));
    EXPECT_EQ(f.get_float("t.f64"), 0.125);
    EXPECT_EQ(f.get_float("t.u32"), 4e9);  // integers widen to floats
    EXPECT_EQ(f.get_string_array("t.strs"), (std::vector<std::string>{"a", "", "ccc"}));
    EXPECT_EQ(f.get_float_array("t.f32s"), (std::vector<float>{1.0f, -2.5f}));
    EXPECT_EQ(f.get_int_array("t.i32s"), (std::vector<int32_t>{7, -8, 9}));
    EXPECT_EQ(f.array_length("t.nested"), 2u);
    EXPECT_THROW(f.get_int_array("t.nested"), Error);
    EXPECT_EQ(f.get_string("t.after"), "still parsed");
    EXPECT_EQ(f.get_int("t.missing", 42), 42);
    EXPECT_THROW(f.get_int("t.str"), Error);
    EXPECT_THROW(f.get_string("t.u8"), Error);
    EXPECT_EQ(f.keys().size(), 17u);
    ASSERT_EQ(f.tensors().size(), 1u);
    EXPECT_EQ(f.tensor_f32(f.tensors()[0]), (std::vector<float>{1, 2, 3, 4}));
}

TEST(Gguf, ReadsVersion2) {
    TempDir tmp;
    GgufWriter w;
    w.version = 2;
    w.str("k", "v");
    w.tensor_f32("t", {2, 2}, {1, 2, 3, 4});
    w.write(tmp.file("v2.gguf"));
    GgufFile f(tmp.file("v2.gguf"));
    EXPECT_EQ(f.version(), 2u);
    EXPECT_EQ(f.tensor_f32(*f.tensor("t")), (std::vector<float>{1, 2, 3, 4}));
}

TEST(Gguf, HonoursGeneralAlignment) {
    TempDir tmp;
    GgufWriter w;
    w.alignment = 64;
    w.str("k", "v");
    w.tensor_f32("a", {3}, {1, 2, 3});  // 12 bytes, next tensor at offset 64
    w.tensor_f32("b", {2}, {5, 6});
    w.write(tmp.file("al.gguf"));
    GgufFile f(tmp.file("al.gguf"));
    EXPECT_EQ(f.alignment(), 64u);
    EXPECT_EQ(f.data_offset() % 64, 0u);
    EXPECT_EQ(f.tensor("b")->offset, 64u);
    EXPECT_EQ(f.tensor_f32(*f.tensor("b")), (std::vector<float>{5, 6}));
}

TEST(Gguf, CanonicalNames) {
    EXPECT_EQ(gguf_canonical_name("token_embd.weight"), "embed");
    EXPECT_EQ(gguf_canonical_name("output_norm.weight"), "final_norm");
    EXPECT_EQ(gguf_canonical_name("output.weight"), "lm_head");
    EXPECT_EQ(gguf_canonical_name("blk.0.attn_norm.weight"), "layers.0.attn_norm");
    EXPECT_EQ(gguf_canonical_name("blk.12.attn_q.weight"), "layers.12.q");
    EXPECT_EQ(gguf_canonical_name("blk.3.attn_k.weight"), "layers.3.k");
    EXPECT_EQ(gguf_canonical_name("blk.3.attn_v.weight"), "layers.3.v");
    EXPECT_EQ(gguf_canonical_name("blk.3.attn_output.weight"), "layers.3.o");
    EXPECT_EQ(gguf_canonical_name("blk.3.ffn_norm.weight"), "layers.3.ffn_norm");
    EXPECT_EQ(gguf_canonical_name("blk.3.ffn_gate.weight"), "layers.3.gate");
    EXPECT_EQ(gguf_canonical_name("blk.3.ffn_up.weight"), "layers.3.up");
    EXPECT_EQ(gguf_canonical_name("blk.3.ffn_down.weight"), "layers.3.down");
    EXPECT_EQ(gguf_canonical_name("blk.3.attn_q.bias"), "layers.3.q_bias");
    EXPECT_EQ(gguf_canonical_name("blk.3.attn_k.bias"), "layers.3.k_bias");
    EXPECT_EQ(gguf_canonical_name("blk.3.attn_v.bias"), "layers.3.v_bias");
    EXPECT_EQ(gguf_canonical_name("rope_freqs.weight"), "");
    EXPECT_EQ(gguf_canonical_name("blk.x.attn_q.weight"), "");
    EXPECT_EQ(gguf_canonical_name("blk.3.attn_q"), "");
}

TEST(Gguf, UnpermuteMovesInterleavedRowsBack) {
    // one head, hd 4, 1 column: GGUF rows hold HF rows [0, 2, 1, 3]
    float w[] = {10, 12, 11, 13};
    gguf_unpermute_qk(w, 1, 4, 1);
    EXPECT_EQ(std::vector<float>(w, w + 4), (std::vector<float>{10, 11, 12, 13}));
}

// tiny_llama.gguf was written by the python gguf package with q/k permuted by
// the same reshape/swapaxes llama.cpp's convert_hf_to_gguf.py applies; we
// must recover HF order: q[r][c] = 100 r + c, k[r][c] = -(100 r + c) - 1.
TEST(Gguf, LlamaQkUnpermutedToHfOrder) {
    Checkpoint ck = checkpoint_open(k_data + "tiny_llama.gguf");
    EXPECT_EQ(ck.format, "gguf");
    const ModelConfig& c = ck.config;
    EXPECT_EQ(c.arch, "llama");
    EXPECT_EQ(c.name, "tiny llama");
    EXPECT_EQ(c.n_layers, 1);
    EXPECT_EQ(c.d_model, 8);
    EXPECT_EQ(c.n_heads, 2);
    EXPECT_EQ(c.n_kv_heads, 1);
    EXPECT_EQ(c.head_dim, 4);
    EXPECT_EQ(c.d_ff, 12);
    EXPECT_EQ(c.vocab, 16);
    EXPECT_EQ(c.max_ctx, 256);
    EXPECT_FLOAT_EQ(c.rope_theta, 500000.0f);
    EXPECT_FLOAT_EQ(c.rms_eps, 1e-6f);
    EXPECT_FALSE(c.tied_embeddings);
    EXPECT_FALSE(c.qkv_bias);
    EXPECT_TRUE(ck.has("lm_head"));

    const TensorF32 q = ck.load("layers.0.q", {8, 8});
    for (int r = 0; r < 8; ++r)
        for (int col = 0; col < 8; ++col) ASSERT_EQ(q.data[r * 8 + col], 100.0f * r + col) << r << "," << col;
    const TensorF32 k = ck.load("layers.0.k", {4, 8});
    for (int r = 0; r < 4; ++r)
        for (int col = 0; col < 8; ++col) ASSERT_EQ(k.data[r * 8 + col], -(100.0f * r + col) - 1) << r << "," << col;

    // SPM tokenizer metadata and llama.cpp's defaults for it
    const TokenizerData& t = ck.tokenizer;
    EXPECT_EQ(t.kind, TOKENIZER_SPM_BPE);
    ASSERT_EQ(t.tokens.size(), 16u);
    EXPECT_EQ(t.tokens[5], "f");
    ASSERT_EQ(t.scores.size(), 16u);
    EXPECT_EQ(t.scores[3], -3.0f);
    EXPECT_EQ(t.token_types, (std::vector<int>{2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}));
    EXPECT_EQ(t.bos, 1);
    EXPECT_EQ(t.eos, 2);
    EXPECT_EQ(t.unk, 0);
    EXPECT_EQ(t.pad, -1);
    EXPECT_TRUE(t.add_bos);
    EXPECT_FALSE(t.add_eos);
    EXPECT_TRUE(t.add_space_prefix);
}

// qwen2: llama.cpp uses NeoX rope and leaves q/k as HF wrote them.
TEST(Gguf, Qwen2KeepsQkOrderAndBiases) {
    Checkpoint ck = checkpoint_open(k_data + "tiny_qwen2.gguf");
    EXPECT_EQ(ck.config.arch, "qwen2");
    EXPECT_TRUE(ck.config.qkv_bias);
    EXPECT_TRUE(ck.config.tied_embeddings);
    EXPECT_FALSE(ck.has("lm_head"));
    const TensorF32 q = ck.load("layers.0.q", {8, 8});
    for (int r = 0; r < 8; ++r) EXPECT_EQ(q.data[r * 8 + 3], 100.0f * r + 3);
    const TensorF32 qb = ck.load("layers.0.q_bias", {8});
    EXPECT_EQ(qb.data, (std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7}));
    EXPECT_EQ(ck.load("layers.0.v_bias", {4}).data, (std::vector<float>(4, 0.5f)));
    const TokenizerData& t = ck.tokenizer;
    EXPECT_EQ(t.kind, TOKENIZER_BPE_BYTE);
    EXPECT_EQ(t.pre, "qwen2");
    ASSERT_EQ(t.merges.size(), 3u);
    EXPECT_EQ(t.merges[2], (std::pair<std::string, std::string>{"ab", "cd"}));
    EXPECT_EQ(t.eos, 3);
    EXPECT_EQ(t.bos, -1);
    EXPECT_FALSE(t.add_bos);
    EXPECT_FALSE(t.add_space_prefix);
}

TEST(Gguf, TiedWhenOutputAbsentAndShapesReversed) {
    TempDir tmp;
    tiny_gguf("llama", /*tied=*/true).write(tmp.file("t.gguf"));
    Checkpoint ck = checkpoint_open(tmp.file("t.gguf"));
    EXPECT_TRUE(ck.config.tied_embeddings);
    EXPECT_FALSE(ck.has("lm_head"));
    EXPECT_EQ(ck.tensors.at("embed").shape, (std::vector<int64_t>{6, 8}));
    EXPECT_EQ(ck.tensors.at("layers.1.down").shape, (std::vector<int64_t>{8, 12}));
    EXPECT_EQ(ck.tensors.at("layers.1.down").dtype, "F32");
    EXPECT_NE(ck.tensors.at("layers.1.down").origin.find("blk.1.ffn_down.weight"), std::string::npos);
    EXPECT_EQ(ck.tokenizer.pre, "smollm");
    EXPECT_EQ(ck.tokenizer.merges[1], (std::pair<std::string, std::string>{"c", "d"}));
}

TEST(Gguf, KeyLengthSetsHeadDim) {
    TempDir tmp;
    TinyDims d;
    d.hd = 6;  // 2 heads x 6 != d_model 8
    GgufWriter w = tiny_gguf("llama", false, d);
    w.u32("llama.attention.key_length", 6);
    w.u32("llama.attention.value_length", 6);
    w.write(tmp.file("hd.gguf"));
    Checkpoint ck = checkpoint_open(tmp.file("hd.gguf"));
    EXPECT_EQ(ck.config.head_dim, 6);
    EXPECT_EQ(ck.tensors.at("layers.0.q").shape, (std::vector<int64_t>{12, 8}));
    EXPECT_EQ(ck.tensors.at("layers.0.o").shape, (std::vector<int64_t>{8, 12}));
}

TEST(Gguf, LinearRopeScaling) {
    TempDir tmp;
    GgufWriter w = tiny_gguf();
    w.str("llama.rope.scaling.type", "linear");
    w.f32("llama.rope.scaling.factor", 4.0f);
    w.write(tmp.file("lin.gguf"));
    GgufFile f(tmp.file("lin.gguf"));
    const ModelConfig c = gguf_model_config(f);
    EXPECT_EQ(c.rope_scaling, ROPE_SCALING_LINEAR);
    EXPECT_EQ(c.rope_factor, 4.0f);
}

// LLaMA-3.1 GGUFs carry llama3 rope scaling only as rope_freqs.weight.
TEST(Gguf, Llama3RopeFreqsRecognised) {
    TempDir tmp;
    const int hd = 128;
    const double theta = 500000.0, factor = 8.0, lo = 1.0, hi = 4.0, orig = 8192.0;
    std::vector<float> table(hd / 2);
    for (int i = 0; i < hd / 2; ++i) {
        const double wavelen = 2 * std::numbers::pi / std::pow(theta, -2.0 * i / hd);
        if (wavelen < orig / hi) table[i] = 1.0f;
        else if (wavelen > orig / lo) table[i] = (float)factor;
        else {
            const double s = (orig / wavelen - lo) / (hi - lo);
            table[i] = (float)(1.0 / ((1 - s) / factor + s));
        }
    }
    EXPECT_EQ(table[0], 1.0f);
    EXPECT_EQ(table[hd / 2 - 1], 8.0f);
    GgufWriter w;
    w.str("general.architecture", "llama");
    w.u32("llama.block_count", 1);
    w.u32("llama.embedding_length", 256);
    w.u32("llama.feed_forward_length", 512);
    w.u32("llama.attention.head_count", 2);
    w.f32("llama.rope.freq_base", (float)theta);
    w.f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    w.tensor_f32("rope_freqs.weight", {(uint64_t)hd / 2}, table);
    w.write(tmp.file("l3.gguf"));
    GgufFile f(tmp.file("l3.gguf"));
    ModelConfig c = gguf_model_config(f);
    EXPECT_EQ(c.rope_scaling, ROPE_SCALING_LLAMA3);
    EXPECT_EQ(c.rope_factor, 8.0f);
    EXPECT_EQ(c.rope_low_freq_factor, 1.0f);
    EXPECT_EQ(c.rope_high_freq_factor, 4.0f);
    EXPECT_EQ(c.rope_original_max_pos, 8192);

    // a table the formula cannot produce is refused, not guessed
    table[hd / 4] *= 1.5f;
    GgufWriter w2 = w;
    w2.tensors[0].data = f32_bytes(table);
    w2.write(tmp.file("l3bad.gguf"));
    GgufFile f2(tmp.file("l3bad.gguf"));
    expect_error([&] { gguf_model_config(f2); }, {"l3bad.gguf", "rope_freqs"});
}

// ---------------------------------------------------------------------------
// The default model (git-ignored; skipped when absent). Reference values from
// the python gguf package:
//   python3 -c "import numpy as np; from gguf import GGUFReader; from gguf.quants import dequantize;
//     r = GGUFReader('models/SmolLM2-135M-Instruct.Q4_1.gguf'); t = {x.name: x for x in r.tensors};
//     d = lambda n: dequantize(t[n].data, t[n].tensor_type).astype(np.float32).reshape(
//         [int(s) for s in reversed(t[n].shape)]);
//     w = d('blk.0.attn_v.weight'); print(w.ravel()[:6], w.astype(np.float64).sum(), np.abs(w.astype(np.float64)).sum());
//     q = d('blk.0.attn_q.weight').reshape(9, 32, 2, 576).swapaxes(1, 2).reshape(576, 576);  # undo llama.cpp permute
//     print(q[1, :4], q[32, :4], (q.astype(np.float64) * np.arange(576)[:, None]).sum())"
// (same for token_embd.weight, blk.0.attn_k.weight with 3 kv heads).
TEST(Gguf, DefaultModelSmolLM2) {
    const std::string path = std::string(SQ_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present";
    Checkpoint ck = checkpoint_open(path);
    const ModelConfig& c = ck.config;
    EXPECT_EQ(c.arch, "llama");
    EXPECT_EQ(c.n_layers, 30);
    EXPECT_EQ(c.d_model, 576);
    EXPECT_EQ(c.n_heads, 9);
    EXPECT_EQ(c.n_kv_heads, 3);
    EXPECT_EQ(c.head_dim, 64);
    EXPECT_EQ(c.d_ff, 1536);
    EXPECT_EQ(c.vocab, 49152);
    EXPECT_EQ(c.max_ctx, 8192);
    EXPECT_EQ(c.rope_theta, 100000.0f);
    EXPECT_FLOAT_EQ(c.rms_eps, 1e-5f);
    EXPECT_TRUE(c.tied_embeddings);
    EXPECT_FALSE(c.qkv_bias);
    EXPECT_EQ(c.rope_scaling, ROPE_SCALING_NONE);
    EXPECT_EQ(ck.tensors.at("embed").dtype, "Q8_0");
    EXPECT_EQ(ck.tensors.at("layers.0.q").dtype, "Q4_1");
    EXPECT_EQ(ck.tensors.at("final_norm").dtype, "F32");
    const TokenizerData& t = ck.tokenizer;
    EXPECT_EQ(t.kind, TOKENIZER_BPE_BYTE);
    EXPECT_EQ(t.pre, "smollm");
    EXPECT_EQ(t.tokens.size(), 49152u);
    EXPECT_EQ(t.merges.size(), 48900u);
    EXPECT_EQ(t.token_types.size(), 49152u);
    EXPECT_EQ(t.bos, 1);
    EXPECT_EQ(t.eos, 2);
    EXPECT_EQ(t.unk, 0);
    EXPECT_EQ(t.pad, 2);
    EXPECT_FALSE(t.add_bos);
    EXPECT_FALSE(t.add_space_prefix);

    auto sums = [](const std::vector<float>& v) {
        double s = 0, a = 0;
        for (float x : v) s += x, a += std::fabs(x);
        return std::pair<double, double>{s, a};
    };
    {
        const TensorF32 v = ck.load("layers.0.v", {192, 576});
        const float first[] = {0.10547637939453125f, 0.07936859130859375f, -0.09033203125f,
                               0.02715301513671875f, 0.02715301513671875f, 0.02715301513671875f};
        for (int i = 0; i < 6; ++i) EXPECT_EQ(v.data[i], first[i]) << i;
        auto [s, a] = sums(v.data);
        EXPECT_NEAR(s, 4.793846130371094, 1e-6);
        EXPECT_NEAR(a, 3828.7508697509766, 1e-6);
        EXPECT_EQ(v.data.back(), -0.052337646484375f);
    }
    {
        const TensorF32 e = ck.load("embed", {49152, 576});
        const float first[] = {-0.10654449462890625f, 0.032978057861328125f, 0.048198699951171875f,
                               -0.022830963134765625f, -0.06849288940429688f, -0.04566192626953125f};
        for (int i = 0; i < 6; ++i) EXPECT_EQ(e.data[i], first[i]) << i;
        auto [s, a] = sums(e.data);
        EXPECT_NEAR(s, -15353.04449415207, 1e-4);
        EXPECT_NEAR(a, 2802153.619805813, 1e-3);
        EXPECT_EQ(e.data.back(), -0.0417022705078125f);
    }
    {
        const TensorF32 q = ck.load("layers.0.q", {576, 576});
        const float row1[] = {-0.1591796875f, 0.39794921875f, -0.0198974609375f, -1.2734375f};
        const float row32[] = {-0.1173095703125f, -0.1173095703125f, -0.19281005859375f, 0.26019287109375f};
        for (int i = 0; i < 4; ++i) {
            EXPECT_EQ(q.data[1 * 576 + i], row1[i]) << i;
            EXPECT_EQ(q.data[32 * 576 + i], row32[i]) << i;
        }
        double weighted = 0;
        for (int r = 0; r < 576; ++r)
            for (int col = 0; col < 576; ++col) weighted += (double)r * q.data[r * 576 + col];
        EXPECT_NEAR(weighted, 25876.190353393555, 1e-4);
        const TensorF32 k = ck.load("layers.0.k", {192, 576});
        weighted = 0;
        for (int r = 0; r < 192; ++r)
            for (int col = 0; col < 576; ++col) weighted += (double)r * k.data[r * 576 + col];
        EXPECT_NEAR(weighted, 4772.633193969727, 1e-4);
    }
    {
        const TensorF32 n = ck.load("final_norm", {576});
        EXPECT_EQ(n.data[0], 1.7578125f);
        EXPECT_NEAR(sums(n.data).first, 1038.33203125, 1e-9);
    }
}
