// safetensors, sharded index and config.json tests.
//   Safetensors.*  header parsing, dtypes, HF directory -> canonical
//                  checkpoint (incl. tests/data/io/hf_tiny written by numpy in
//                  scripts/make_io_fixtures.py), sharded index, tying.
//   HfConfig.*     config.json -> ModelConfig.
// Run: build/specquant_tests --gtest_filter='Safetensors*:HfConfig*'
#include <gtest/gtest.h>

#include "gguf_writer.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

using namespace sq;
using namespace sqt_io;

namespace {

const std::string k_data = std::string(SQ_TEST_DATA) + "/io/";

void write_hf_dir(const TempDir& tmp, const nlohmann::json& cfg, const SafetensorsWriter& w) {
    write_text(tmp.file("config.json"), cfg.dump(2));
    w.write(tmp.file("model.safetensors"));
}

}  // namespace

TEST(Safetensors, ParsesHeaderDtypesAndIgnoresMetadata) {
    TempDir tmp;
    SafetensorsWriter w;
    w.metadata = {{"format", "pt"}};
    w.add_f32("a", {2, 3}, {1, 2, 3, 4, 5, 6});
    w.add_f16("b", {3}, {0.5f, -1.0f, 65504.0f});
    w.add_bf16("c", {2}, {3.140625f, -5.0f});
    w.add("d", "I8", {4}, {1, 2, 3, 4});
    w.add("e", "F32", {0}, {});  // empty tensors are legal
    w.write(tmp.file("x.safetensors"));

    SafetensorsFile f(tmp.file("x.safetensors"));
    EXPECT_EQ(f.tensors().size(), 5u);
    EXPECT_EQ(f.find("__metadata__"), nullptr);
    EXPECT_EQ(f.find("a")->shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(f.find("a")->dtype, "F32");
    EXPECT_EQ(f.tensor_f32("a"), (std::vector<float>{1, 2, 3, 4, 5, 6}));
    EXPECT_EQ(f.tensor_f32("b"), (std::vector<float>{0.5f, -1.0f, 65504.0f}));
    EXPECT_EQ(f.tensor_f32("c"), (std::vector<float>{3.140625f, -5.0f}));
    EXPECT_TRUE(f.tensor_f32("e").empty());
    EXPECT_EQ(f.find("d")->end - f.find("d")->begin, 4u);
    EXPECT_THROW(f.tensor_f32("d"), Error);  // I8 is parsed but not converted
    EXPECT_EQ(safetensors_dtype_size("BF16"), 2);
    EXPECT_EQ(safetensors_dtype_size("F8_E4M3"), 1);
    EXPECT_EQ(safetensors_dtype_size("Q4"), 0);
}

TEST(Safetensors, CanonicalNames) {
    EXPECT_EQ(hf_canonical_name("model.embed_tokens.weight"), "embed");
    EXPECT_EQ(hf_canonical_name("model.norm.weight"), "final_norm");
    EXPECT_EQ(hf_canonical_name("lm_head.weight"), "lm_head");
    EXPECT_EQ(hf_canonical_name("model.layers.7.input_layernorm.weight"), "layers.7.attn_norm");
    EXPECT_EQ(hf_canonical_name("model.layers.7.self_attn.q_proj.weight"), "layers.7.q");
    EXPECT_EQ(hf_canonical_name("model.layers.7.self_attn.k_proj.weight"), "layers.7.k");
    EXPECT_EQ(hf_canonical_name("model.layers.7.self_attn.v_proj.weight"), "layers.7.v");
    EXPECT_EQ(hf_canonical_name("model.layers.7.self_attn.o_proj.weight"), "layers.7.o");
    EXPECT_EQ(hf_canonical_name("model.layers.7.self_attn.q_proj.bias"), "layers.7.q_bias");
    EXPECT_EQ(hf_canonical_name("model.layers.7.self_attn.k_proj.bias"), "layers.7.k_bias");
    EXPECT_EQ(hf_canonical_name("model.layers.7.self_attn.v_proj.bias"), "layers.7.v_bias");
    EXPECT_EQ(hf_canonical_name("model.layers.7.post_attention_layernorm.weight"), "layers.7.ffn_norm");
    EXPECT_EQ(hf_canonical_name("model.layers.7.mlp.gate_proj.weight"), "layers.7.gate");
    EXPECT_EQ(hf_canonical_name("model.layers.7.mlp.up_proj.weight"), "layers.7.up");
    EXPECT_EQ(hf_canonical_name("model.layers.7.mlp.down_proj.weight"), "layers.7.down");
    EXPECT_EQ(hf_canonical_name("model.layers.7.self_attn.rotary_emb.inv_freq"), "");
    EXPECT_EQ(hf_canonical_name("model.layers.x.mlp.up_proj.weight"), "");
}

// hf_tiny was written by numpy + json (scripts/make_io_fixtures.py), not by
// our writer: embed[r][c] = (r - c) / 4 in BF16, q[r][c] = 100 r + c in F32,
// k[r][c] = -(100 r + c) - 1 in F16, lm_head absent and tie_word_embeddings.
TEST(Safetensors, HfDirectoryFromPythonFixture) {
    Checkpoint ck = checkpoint_open(k_data + "hf_tiny");
    EXPECT_EQ(ck.format, "safetensors");
    const ModelConfig& c = ck.config;
    EXPECT_EQ(c.arch, "llama");
    EXPECT_EQ(c.n_layers, 1);
    EXPECT_EQ(c.d_model, 8);
    EXPECT_EQ(c.n_heads, 2);
    EXPECT_EQ(c.n_kv_heads, 1);
    EXPECT_EQ(c.head_dim, 4);
    EXPECT_EQ(c.d_ff, 12);
    EXPECT_EQ(c.vocab, 16);
    EXPECT_EQ(c.max_ctx, 512);
    EXPECT_FLOAT_EQ(c.rms_eps, 1e-5f);
    EXPECT_EQ(c.rope_scaling, ROPE_SCALING_NONE);
    EXPECT_TRUE(c.tied_embeddings);
    EXPECT_FALSE(ck.has("lm_head"));
    EXPECT_EQ(ck.tensors.at("embed").dtype, "BF16");
    EXPECT_EQ(ck.tensors.at("layers.0.k").dtype, "F16");
    EXPECT_EQ(ck.tensors.at("layers.0.q").dtype, "F32");

    const TensorF32 e = ck.load("embed", {16, 8});
    for (int r = 0; r < 16; ++r)
        for (int col = 0; col < 8; ++col) ASSERT_EQ(e.data[r * 8 + col], (r - col) / 4.0f);
    const TensorF32 q = ck.load("layers.0.q", {8, 8});
    for (int r = 0; r < 8; ++r)
        for (int col = 0; col < 8; ++col) ASSERT_EQ(q.data[r * 8 + col], 100.0f * r + col);
    const TensorF32 k = ck.load("layers.0.k", {4, 8});
    for (int r = 0; r < 4; ++r)
        for (int col = 0; col < 8; ++col) ASSERT_EQ(k.data[r * 8 + col], -(100.0f * r + col) - 1);
    const TensorF32 n = ck.load("final_norm", {8});
    EXPECT_EQ(n.data.front(), 0.5f);
    EXPECT_EQ(n.data.back(), 1.5f);
}

TEST(Safetensors, UntiedKeepsLmHead) {
    TempDir tmp;
    write_hf_dir(tmp, tiny_hf_config(), tiny_hf_tensors());
    Checkpoint ck = checkpoint_open(tmp.path.string());
    EXPECT_FALSE(ck.config.tied_embeddings);
    ASSERT_TRUE(ck.has("lm_head"));
    EXPECT_EQ(ck.load("lm_head", {6, 8}).data, ramp(48, 102));  // third tensor written: seed 102
    EXPECT_EQ(ck.load("layers.1.down", {8, 12}).data.size(), 96u);
}

TEST(Safetensors, TieWordEmbeddingsDropsLmHead) {
    TempDir tmp;
    auto cfg = tiny_hf_config();
    cfg["tie_word_embeddings"] = true;
    write_hf_dir(tmp, cfg, tiny_hf_tensors());  // lm_head present but tied: HF uses embed
    Checkpoint ck = checkpoint_open(tmp.path.string());
    EXPECT_TRUE(ck.config.tied_embeddings);
    EXPECT_FALSE(ck.has("lm_head"));
}

TEST(Safetensors, Qwen2BiasesLoaded) {
    TempDir tmp;
    write_hf_dir(tmp, tiny_hf_config("qwen2"), tiny_hf_tensors("qwen2"));
    Checkpoint ck = checkpoint_open(tmp.path.string());
    EXPECT_EQ(ck.config.arch, "qwen2");
    EXPECT_TRUE(ck.config.qkv_bias);
    EXPECT_EQ(ck.load("layers.1.k_bias", {4}).data.size(), 4u);
}

TEST(Safetensors, ShardedIndexMapsEachShardOnce) {
    TempDir tmp;
    write_text(tmp.file("config.json"), tiny_hf_config().dump());
    SafetensorsWriter all = tiny_hf_tensors();
    SafetensorsWriter a, b;
    nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
    for (size_t i = 0; i < all.tensors.size(); ++i) {
        auto& shard = i % 2 ? b : a;
        const std::string file = i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
        shard.tensors.push_back(all.tensors[i]);
        index["weight_map"][all.tensors[i].name] = file;
    }
    a.write(tmp.file("model-00001-of-00002.safetensors"));
    b.write(tmp.file("model-00002-of-00002.safetensors"));
    write_text(tmp.file("model.safetensors.index.json"), index.dump());
    // a stray file the index does not list must be ignored
    SafetensorsWriter stray;
    stray.add_f32("model.norm.weight", {8}, std::vector<float>(8, 99.0f));
    stray.write(tmp.file("stray.safetensors"));

    Checkpoint ck = checkpoint_open(tmp.path.string());
    EXPECT_EQ(ck.keep_alive.size(), 2u);  // one mapping per shard
    EXPECT_EQ(ck.load("final_norm", {8}).data, ramp(8, 101));
    EXPECT_NE(ck.tensors.at("final_norm").origin.find("model-00002-of-00002"), std::string::npos);
    EXPECT_EQ(ck.load("embed", {6, 8}).data, ramp(48, 100));
    EXPECT_NE(ck.tensors.at("embed").origin.find("model-00001-of-00002"), std::string::npos);
}

TEST(HfConfig, Llama3RopeScalingAndHeadDim) {
    const std::string text = R"({
      "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
      "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
      "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
      "rope_theta": 500000.0, "tie_word_embeddings": false, "head_dim": 128,
      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}})";
    const ModelConfig c = hf_config_parse(text, "cfg.json");
    EXPECT_EQ(c.arch, "llama");
    EXPECT_EQ(c.n_layers, 32);
    EXPECT_EQ(c.d_model, 4096);
    EXPECT_EQ(c.n_heads, 32);
    EXPECT_EQ(c.n_kv_heads, 8);
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_EQ(c.d_ff, 14336);
    EXPECT_EQ(c.vocab, 128256);
    EXPECT_EQ(c.max_ctx, 131072);
    EXPECT_EQ(c.rope_theta, 500000.0f);
    EXPECT_EQ(c.rope_scaling, ROPE_SCALING_LLAMA3);
    EXPECT_EQ(c.rope_factor, 8.0f);
    EXPECT_EQ(c.rope_low_freq_factor, 1.0f);
    EXPECT_EQ(c.rope_high_freq_factor, 4.0f);
    EXPECT_EQ(c.rope_original_max_pos, 8192);
    EXPECT_FALSE(c.qkv_bias);
    config_validate(c, "cfg.json");
}

TEST(HfConfig, LinearScalingMistralQwen2AndDefaults) {
    ModelConfig c = hf_config_parse(R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100,
        "rope_scaling": {"type": "linear", "factor": 2.0}, "head_dim": null})", "a.json");
    EXPECT_EQ(c.rope_scaling, ROPE_SCALING_LINEAR);
    EXPECT_EQ(c.rope_factor, 2.0f);
    EXPECT_EQ(c.n_kv_heads, 4);  // defaults to num_attention_heads
    EXPECT_EQ(c.head_dim, 16);   // null head_dim: hidden / heads
    EXPECT_EQ(c.rope_theta, 10000.0f);
    EXPECT_FALSE(c.tied_embeddings);

    c = hf_config_parse(R"({"model_type": "mistral", "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100,
        "sliding_window": 4096, "rope_scaling": null})", "m.json");
    EXPECT_EQ(c.arch, "llama");
    EXPECT_EQ(c.rope_scaling, ROPE_SCALING_NONE);

    c = hf_config_parse(R"({"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100,
        "tie_word_embeddings": true, "rope_theta": 1000000.0})", "q.json");
    EXPECT_EQ(c.arch, "qwen2");
    EXPECT_TRUE(c.qkv_bias);
    EXPECT_TRUE(c.tied_embeddings);
    EXPECT_EQ(c.rope_theta, 1000000.0f);
}

// transformers >= 5 moves rope_theta and the scaling into rope_parameters.
TEST(HfConfig, Transformers5RopeParameters) {
    const std::string base = R"("hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100)";
    ModelConfig c = hf_config_parse(R"({"model_type": "qwen2", )" + base +
                                        R"(, "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}})",
                                    "q.json");
    EXPECT_EQ(c.rope_theta, 1000000.0f);
    EXPECT_EQ(c.rope_scaling, ROPE_SCALING_NONE);
    c = hf_config_parse(R"({"model_type": "llama", )" + base +
                            R"(, "rope_parameters": {"factor": 2.0, "rope_theta": 5000.0, "rope_type": "linear"}})",
                        "l.json");
    EXPECT_EQ(c.rope_theta, 5000.0f);
    EXPECT_EQ(c.rope_scaling, ROPE_SCALING_LINEAR);
    EXPECT_EQ(c.rope_factor, 2.0f);
    c = hf_config_parse(R"({"model_type": "llama", )" + base + R"(, "rope_parameters": {"rope_theta": 500000.0,
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}})",
                        "l3.json");
    EXPECT_EQ(c.rope_scaling, ROPE_SCALING_LLAMA3);
    EXPECT_EQ(c.rope_factor, 32.0f);
    EXPECT_EQ(c.rope_theta, 500000.0f);
    EXPECT_THROW(hf_config_parse(R"({"model_type": "llama", )" + base +
                                     R"(, "rope_parameters": {"rope_theta": 1.0, "rope_type": "dynamic", "factor": 2.0}})",
                                 "d.json"),
                 Error);
}

TEST(Safetensors, UnindexedShardsAllLoadedDuplicatesRejected) {
    TempDir tmp;
    write_text(tmp.file("config.json"), tiny_hf_config().dump());
    SafetensorsWriter all = tiny_hf_tensors(), a, b;
    for (size_t i = 0; i < all.tensors.size(); ++i) (i < 5 ? a : b).tensors.push_back(all.tensors[i]);
    a.write(tmp.file("part-a.safetensors"));
    b.write(tmp.file("part-b.safetensors"));
    Checkpoint ck = checkpoint_open(tmp.path.string());
    EXPECT_EQ(ck.keep_alive.size(), 2u);
    EXPECT_EQ(ck.load("final_norm", {8}).data, ramp(8, 101));

    b.tensors.push_back(all.tensors[0]);  // embed in both files
    b.write(tmp.file("part-b.safetensors"));
    expect_error([&] { checkpoint_open(tmp.path.string()); }, {"model.embed_tokens.weight", "part-a", "part-b"});

    // model.safetensors, when present, is the checkpoint; other files are ignored
    all.write(tmp.file("model.safetensors"));
    Checkpoint ck2 = checkpoint_open(tmp.path.string());
    EXPECT_EQ(ck2.keep_alive.size(), 1u);
}
