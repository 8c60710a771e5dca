// Corrupt and unsupported inputs: every case must throw sq::Error whose
// message names the file and the problem, without crashing, hanging or
// allocating what a corrupt count asks for. Files are built in a temp dir
// by the writers in tests/gguf_writer.h and then damaged byte by byte.
//   IoErrors.*        GGUF, safetensors, HF directories, Checkpoint::load
//   ConfigValidate.*  config_validate
// Run: build/specquant_tests --gtest_filter='IoErrors*:ConfigValidate*'
#include <gtest/gtest.h>

#include <algorithm>

#include "gguf_writer.h"
#include "io/checkpoint.h"
#include "io/gguf.h"
#include "io/safetensors.h"

using namespace sq;
using namespace sqt_io;

namespace {

template <class T>
void patch(std::vector<uint8_t>& b, size_t pos, T v) {
    ASSERT_LE(pos + sizeof(T), b.size());
    std::memcpy(b.data() + pos, &v, sizeof(T));
}

// Offsets inside the first tensor info written by GgufWriter::bytes().
struct InfoPos {
    size_t n_dims, dim0, type, offset;
};
InfoPos info_pos(const GgufWriter& w, size_t i = 0) {
    const auto& t = w.tensors[i];
    const size_t p = w.tensor_info_pos[i] + 8 + t.name.size();
    return {p, p + 4, p + 4 + 8 * t.ne.size(), p + 4 + 8 * t.ne.size() + 4};
}

// GGUF with one small F32 tensor and one string key first (key at byte 24).
GgufWriter small_gguf() {
    GgufWriter w;
    w.str("general.architecture", "llama");
    w.tensor_f32("token_embd.weight", {4, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
    return w;
}

void expect_gguf_error(const std::string& path, const std::vector<std::string>& needles) {
    expect_error([&] { GgufFile f(path); }, needles);
    expect_error([&] { checkpoint_open(path); }, needles);
}

void write_hf_dir(const TempDir& tmp, const nlohmann::json& cfg, const SafetensorsWriter& w) {
    write_text(tmp.file("config.json"), cfg.dump(2));
    w.write(tmp.file("model.safetensors"));
}

// A one-tensor safetensors file with a hand-written header.
void write_raw_safetensors(const std::string& path, const std::string& header, size_t data_bytes) {
    std::vector<uint8_t> b;
    put<uint64_t>(b, header.size());
    b.insert(b.end(), header.begin(), header.end());
    b.resize(b.size() + data_bytes, 0);
    write_bytes(path, b);
}

}  // namespace

// ---------------------------------------------------------------------------
// GGUF structure

TEST(IoErrors, GgufWrongMagic) {
    TempDir tmp;
    auto b = small_gguf().bytes();
    b[3] = 'X';
    write_bytes(tmp.file("magic.gguf"), b);
    expect_gguf_error(tmp.file("magic.gguf"), {"magic.gguf", "magic"});
}

TEST(IoErrors, GgufTruncatedHeader) {
    TempDir tmp;
    auto b = small_gguf().bytes();
    b.resize(14);  // inside the tensor count
    write_bytes(tmp.file("short.gguf"), b);
    expect_gguf_error(tmp.file("short.gguf"), {"short.gguf", "truncated", "tensor count"});
}

TEST(IoErrors, GgufTruncatedInsideMetadata) {
    TempDir tmp;
    auto b = small_gguf().bytes();
    b.resize(24 + 8 + 5);  // inside the first key's bytes
    write_bytes(tmp.file("kv.gguf"), b);
    expect_gguf_error(tmp.file("kv.gguf"), {"kv.gguf", "truncated"});
}

TEST(IoErrors, GgufTruncatedTensorData) {
    TempDir tmp;
    auto b = small_gguf().bytes();
    b.resize(b.size() - 8);
    write_bytes(tmp.file("data.gguf"), b);
    expect_gguf_error(tmp.file("data.gguf"), {"data.gguf", "token_embd.weight", "past the end"});
}

TEST(IoErrors, GgufUnsupportedVersion) {
    TempDir tmp;
    auto b = small_gguf().bytes();
    patch<uint32_t>(b, 4, 7);
    write_bytes(tmp.file("v7.gguf"), b);
    expect_gguf_error(tmp.file("v7.gguf"), {"v7.gguf", "version 7"});
    patch<uint32_t>(b, 4, 1);
    write_bytes(tmp.file("v1.gguf"), b);
    expect_gguf_error(tmp.file("v1.gguf"), {"v1.gguf", "version 1"});
}

TEST(IoErrors, GgufAbsurdTensorCount) {
    TempDir tmp;
    auto b = small_gguf().bytes();
    patch<uint64_t>(b, 8, 1ull << 60);
    write_bytes(tmp.file("tc.gguf"), b);
    expect_gguf_error(tmp.file("tc.gguf"), {"tc.gguf", "tensor count"});
}

TEST(IoErrors, GgufAbsurdKvCount) {
    TempDir tmp;
    auto b = small_gguf().bytes();
    patch<uint64_t>(b, 16, ~0ull);
    write_bytes(tmp.file("kvc.gguf"), b);
    expect_gguf_error(tmp.file("kvc.gguf"), {"kvc.gguf", "key/value count"});
}

TEST(IoErrors, GgufAbsurdStringLength) {
    TempDir tmp;
    auto b = small_gguf().bytes();
    patch<uint64_t>(b, 24, 1ull << 62);  // length of the first key
    write_bytes(tmp.file("str.gguf"), b);
    expect_gguf_error(tmp.file("str.gguf"), {"str.gguf", "string length"});
}

TEST(IoErrors, GgufAbsurdArrayLength) {
    TempDir tmp;
    GgufWriter w;
    w.i32_array("arr", {1, 2, 3});  // key at 24: len(8) "arr"(3) type(4) elem type(4) count(8)
    w.tensor_f32("x", {2}, {1, 2});
    auto b = w.bytes();
    patch<uint64_t>(b, 24 + 8 + 3 + 4 + 4, 1ull << 61);
    write_bytes(tmp.file("arr.gguf"), b);
    expect_gguf_error(tmp.file("arr.gguf"), {"arr.gguf", "arr", "array length"});

    GgufWriter ws;
    ws.str_array("arr", {"x", "y"});
    auto bs = ws.bytes();
    patch<uint64_t>(bs, 24 + 8 + 3 + 4 + 4, 1ull << 40);
    write_bytes(tmp.file("sarr.gguf"), bs);
    expect_gguf_error(tmp.file("sarr.gguf"), {"sarr.gguf", "array length"});
}

TEST(IoErrors, GgufAbsurdDimension) {
    TempDir tmp;
    GgufWriter w = small_gguf();
    auto b = w.bytes();
    patch<uint64_t>(b, info_pos(w).dim0, 1ull << 62);
    write_bytes(tmp.file("dim.gguf"), b);
    expect_gguf_error(tmp.file("dim.gguf"), {"dim.gguf", "token_embd.weight", "dimension"});
    patch<uint64_t>(b, info_pos(w).dim0, 0);
    write_bytes(tmp.file("dim0.gguf"), b);
    expect_gguf_error(tmp.file("dim0.gguf"), {"dim0.gguf", "dimension"});
}

TEST(IoErrors, GgufTooManyDims) {
    TempDir tmp;
    GgufWriter w = small_gguf();
    auto b = w.bytes();
    patch<uint32_t>(b, info_pos(w).n_dims, 9);
    write_bytes(tmp.file("nd.gguf"), b);
    expect_gguf_error(tmp.file("nd.gguf"), {"nd.gguf", "9 dims"});
}

TEST(IoErrors, GgufOverflowingShape) {
    // dims that each fit the file bound but whose product overflows 64 bits
    TempDir tmp;
    GgufWriter w;
    w.str("k", "v");
    w.tensor("big", {1ull << 20, 1ull << 20, 1ull << 20, 1ull << 20}, 0, std::vector<uint8_t>(1 << 20, 0));
    write_bytes(tmp.file("ovf.gguf"), w.bytes());
    expect_gguf_error(tmp.file("ovf.gguf"), {"ovf.gguf", "big"});
}

TEST(IoErrors, GgufOffsetPastEnd) {
    TempDir tmp;
    GgufWriter w = small_gguf();
    auto b = w.bytes();
    patch<uint64_t>(b, info_pos(w).offset, 1ull << 40);
    write_bytes(tmp.file("off.gguf"), b);
    expect_gguf_error(tmp.file("off.gguf"), {"off.gguf", "token_embd.weight", "past the end"});
}

TEST(IoErrors, GgufMisalignedOffset) {
    TempDir tmp;
    GgufWriter w = small_gguf();
    auto b = w.bytes();
    patch<uint64_t>(b, info_pos(w).offset, 4);
    write_bytes(tmp.file("mis.gguf"), b);
    expect_gguf_error(tmp.file("mis.gguf"), {"mis.gguf", "alignment"});
}

TEST(IoErrors, GgufBadAlignmentValue) {
    TempDir tmp;
    GgufWriter w = small_gguf();
    w.u32("general.alignment", 24);
    write_bytes(tmp.file("al.gguf"), w.bytes());
    expect_gguf_error(tmp.file("al.gguf"), {"al.gguf", "general.alignment", "power of two"});
}

TEST(IoErrors, GgufUnknownGgmlType) {
    TempDir tmp;
    GgufWriter w = small_gguf();
    auto b = w.bytes();
    patch<uint32_t>(b, info_pos(w).type, 99);
    write_bytes(tmp.file("t99.gguf"), b);
    expect_gguf_error(tmp.file("t99.gguf"), {"t99.gguf", "token_embd.weight", "type#99"});
    patch<uint32_t>(b, info_pos(w).type, 6);  // Q5_0: real, but not one we read
    write_bytes(tmp.file("q50.gguf"), b);
    expect_gguf_error(tmp.file("q50.gguf"), {"q50.gguf", "Q5_0", "cannot read"});
}

TEST(IoErrors, GgufRowNotMultipleOfBlock) {
    TempDir tmp;
    GgufWriter w;
    w.str("k", "v");
    w.tensor("q", {40, 1}, 8 /* Q8_0 */, std::vector<uint8_t>(68, 0));
    write_bytes(tmp.file("blk.gguf"), w.bytes());
    expect_gguf_error(tmp.file("blk.gguf"), {"blk.gguf", "block size"});
}

TEST(IoErrors, GgufUnknownValueType) {
    TempDir tmp;
    GgufWriter w;
    w.key("weird", 77);
    put<uint32_t>(w.kv, 0);
    w.tensor_f32("x", {2}, {1, 2});
    write_bytes(tmp.file("vt.gguf"), w.bytes());
    expect_gguf_error(tmp.file("vt.gguf"), {"vt.gguf", "weird", "unknown value type"});
}

TEST(IoErrors, GgufDeeplyNestedArray) {
    TempDir tmp;
    GgufWriter w;
    w.key("deep", 9);
    for (int i = 0; i < 8; ++i) {  // array of array of ... (8 levels), one element each
        put<uint32_t>(w.kv, 9);
        put<uint64_t>(w.kv, 1);
    }
    put<uint32_t>(w.kv, 0);
    put<uint64_t>(w.kv, 0);
    w.tensor_f32("x", {2}, {1, 2});
    write_bytes(tmp.file("deep.gguf"), w.bytes());
    expect_gguf_error(tmp.file("deep.gguf"), {"deep.gguf", "deep", "nested"});
}

TEST(IoErrors, GgufDuplicateKey) {
    TempDir tmp;
    GgufWriter w = small_gguf();
    w.str("general.architecture", "qwen2");
    write_bytes(tmp.file("dup.gguf"), w.bytes());
    expect_gguf_error(tmp.file("dup.gguf"), {"dup.gguf", "duplicate", "general.architecture"});
}

// ---------------------------------------------------------------------------
// GGUF model content

TEST(IoErrors, GgufUnsupportedArchitecture) {
    TempDir tmp;
    tiny_gguf("gptneox").write(tmp.file("neox.gguf"));
    expect_error([&] { checkpoint_open(tmp.file("neox.gguf")); }, {"neox.gguf", "unsupported architecture", "gptneox"});
}

TEST(IoErrors, GgufMissingMetadata) {
    TempDir tmp;
    GgufWriter w;
    w.str("general.architecture", "llama");
    w.u32("llama.embedding_length", 8);
    w.tensor_f32("x", {2}, {1, 2});
    w.write(tmp.file("meta.gguf"));
    expect_error([&] { checkpoint_open(tmp.file("meta.gguf")); }, {"meta.gguf", "llama.block_count"});
}

TEST(IoErrors, GgufWrongMetadataType) {
    TempDir tmp;
    GgufWriter w;
    w.str("general.architecture", "llama");
    w.str("llama.block_count", "thirty");
    w.write(tmp.file("mt.gguf"));
    expect_error([&] { checkpoint_open(tmp.file("mt.gguf")); }, {"mt.gguf", "llama.block_count", "integer"});
}

TEST(IoErrors, GgufUnsupportedTokenizerModel) {
    TempDir tmp;
    auto b = tiny_gguf().bytes();
    // tokenizer.ggml.model's value is the file's first "gpt2": overwrite it in place
    const std::string from = "gpt2", to = "bert";
    auto it = std::search(b.begin(), b.end(), from.begin(), from.end());
    ASSERT_NE(it, b.end());
    std::copy(to.begin(), to.end(), it);
    write_bytes(tmp.file("tok.gguf"), b);
    expect_error([&] { checkpoint_open(tmp.file("tok.gguf")); }, {"tok.gguf", "tokenizer model", "bert"});
}

TEST(IoErrors, GgufBadTokenId) {
    TempDir tmp;
    GgufWriter w = tiny_gguf();
    w.u32("tokenizer.ggml.bos_token_id", 99);  // 6 tokens
    w.write(tmp.file("id.gguf"));
    expect_error([&] { checkpoint_open(tmp.file("id.gguf")); }, {"id.gguf", "bos_token_id", "99"});
}

TEST(IoErrors, GgufMissingTensor) {
    TempDir tmp;
    GgufWriter w = tiny_gguf();
    w.remove_tensor("blk.1.ffn_up.weight");
    w.write(tmp.file("miss.gguf"));
    expect_error([&] { checkpoint_open(tmp.file("miss.gguf")); }, {"miss.gguf", "layers.1.up", "missing"});
}

TEST(IoErrors, GgufShapeMismatch) {
    TempDir tmp;
    GgufWriter w = tiny_gguf();
    for (auto& t : w.tensors)
        if (t.name == "blk.0.attn_k.weight") {
            t.ne = {8, 8};  // k should be [kv*hd = 4, d = 8]
            t.data = f32_bytes(std::vector<float>(64, 1.0f));
        }
    w.write(tmp.file("shape.gguf"));
    expect_error([&] { checkpoint_open(tmp.file("shape.gguf")); },
                 {"shape.gguf", "blk.0.attn_k.weight", "shape mismatch", "layers.0.k", "[8, 8]", "[4, 8]"});
}

TEST(IoErrors, GgufTensorBeyondBlockCount) {
    TempDir tmp;
    GgufWriter w = tiny_gguf();
    w.tensor_f32("blk.7.attn_norm.weight", {8}, std::vector<float>(8, 1.0f));
    w.write(tmp.file("blk7.gguf"));
    expect_error([&] { checkpoint_open(tmp.file("blk7.gguf")); }, {"blk7.gguf", "blk.7", "block_count"});
}

TEST(IoErrors, CheckpointLoadMissingName) {
    TempDir tmp;
    tiny_gguf().write(tmp.file("ok.gguf"));
    Checkpoint ck = checkpoint_open(tmp.file("ok.gguf"));
    expect_error([&] { ck.load("layers.99.q", {8, 8}); }, {"ok.gguf", "layers.99.q", "not found"});
}

TEST(IoErrors, CheckpointLoadShapeMismatch) {
    TempDir tmp;
    tiny_gguf().write(tmp.file("ok.gguf"));
    Checkpoint ck = checkpoint_open(tmp.file("ok.gguf"));
    expect_error([&] { ck.load("layers.0.q", {3, 3}); }, {"ok.gguf", "layers.0.q", "shape mismatch", "[3, 3]"});
}

TEST(IoErrors, NoSuchPath) {
    TempDir tmp;
    expect_error([&] { checkpoint_open(tmp.file("nothere.gguf")); }, {"nothere.gguf", "no such file"});
}

// ---------------------------------------------------------------------------
// safetensors

TEST(IoErrors, SafetensorsTooShortForLength) {
    TempDir tmp;
    write_bytes(tmp.file("s.safetensors"), {1, 2, 3, 4, 5});
    expect_error([&] { SafetensorsFile f(tmp.file("s.safetensors")); }, {"s.safetensors", "truncated"});
}

TEST(IoErrors, SafetensorsHeaderTooLarge) {
    TempDir tmp;
    std::vector<uint8_t> b;
    put<uint64_t>(b, 200ull << 20);
    b.resize(64, ' ');
    write_bytes(tmp.file("big.safetensors"), b);
    expect_error([&] { SafetensorsFile f(tmp.file("big.safetensors")); }, {"big.safetensors", "100 MB"});
}

TEST(IoErrors, SafetensorsHeaderPastEnd) {
    TempDir tmp;
    std::vector<uint8_t> b;
    put<uint64_t>(b, 1000);
    b.resize(100, ' ');
    write_bytes(tmp.file("hdr.safetensors"), b);
    expect_error([&] { SafetensorsFile f(tmp.file("hdr.safetensors")); }, {"hdr.safetensors", "truncated"});
}

TEST(IoErrors, SafetensorsBadJson) {
    TempDir tmp;
    write_raw_safetensors(tmp.file("j.safetensors"), "{\"a\": {\"dtype\": ", 0);
    expect_error([&] { SafetensorsFile f(tmp.file("j.safetensors")); }, {"j.safetensors", "JSON"});
    write_raw_safetensors(tmp.file("arr.safetensors"), "[1, 2]  ", 0);
    expect_error([&] { SafetensorsFile f(tmp.file("arr.safetensors")); }, {"arr.safetensors", "object"});
}

TEST(IoErrors, SafetensorsUnknownDtype) {
    TempDir tmp;
    write_raw_safetensors(tmp.file("dt.safetensors"), R"({"w": {"dtype": "F12", "shape": [2], "data_offsets": [0, 4]}})", 4);
    expect_error([&] { SafetensorsFile f(tmp.file("dt.safetensors")); }, {"dt.safetensors", "w", "unknown dtype", "F12"});
}

TEST(IoErrors, SafetensorsOffsetsPastEnd) {
    TempDir tmp;
    write_raw_safetensors(tmp.file("o.safetensors"),
                          R"({"w": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}})", 16);
    expect_error([&] { SafetensorsFile f(tmp.file("o.safetensors")); }, {"o.safetensors", "w", "outside the data region"});
    write_raw_safetensors(tmp.file("neg.safetensors"),
                          R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})", 16);
    expect_error([&] { SafetensorsFile f(tmp.file("neg.safetensors")); }, {"neg.safetensors", "data_offsets"});
}

TEST(IoErrors, SafetensorsOffsetsDisagreeWithShape) {
    TempDir tmp;
    write_raw_safetensors(tmp.file("sz.safetensors"),
                          R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 16);
    expect_error([&] { SafetensorsFile f(tmp.file("sz.safetensors")); }, {"sz.safetensors", "w", "needs 3 x 4"});
    write_raw_safetensors(tmp.file("huge.safetensors"),
                          R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 8]}})", 16);
    expect_error([&] { SafetensorsFile f(tmp.file("huge.safetensors")); }, {"huge.safetensors", "impossibly large"});
}

TEST(IoErrors, SafetensorsTruncatedData) {
    TempDir tmp;
    auto b = tiny_hf_tensors().bytes();
    b.resize(b.size() - 20);
    write_text(tmp.file("config.json"), tiny_hf_config().dump());
    write_bytes(tmp.file("model.safetensors"), b);
    expect_error([&] { checkpoint_open(tmp.path.string()); }, {"model.safetensors", "truncated"});
}

TEST(IoErrors, SafetensorsUnreadableDtypeForModel) {
    TempDir tmp;
    SafetensorsWriter w = tiny_hf_tensors();
    for (auto& t : w.tensors)
        if (t.name == hf_name(0, "self_attn.q_proj.weight")) {
            t.dtype = "I8";
            t.data.resize(t.data.size() / 4);
        }
    write_hf_dir(tmp, tiny_hf_config(), w);
    expect_error([&] { checkpoint_open(tmp.path.string()); },
                 {"model.safetensors", "q_proj", "dtype I8", "unsupported"});
}

// ---------------------------------------------------------------------------
// Hugging Face directories

TEST(IoErrors, HfUnsupportedModelType) {
    TempDir tmp;
    auto cfg = tiny_hf_config();
    cfg["model_type"] = "bert";
    write_hf_dir(tmp, cfg, tiny_hf_tensors());
    expect_error([&] { checkpoint_open(tmp.path.string()); }, {"config.json", "model_type", "bert"});
}

TEST(IoErrors, HfMissingConfigField) {
    TempDir tmp;
    auto cfg = tiny_hf_config();
    cfg.erase("hidden_size");
    write_hf_dir(tmp, cfg, tiny_hf_tensors());
    expect_error([&] { checkpoint_open(tmp.path.string()); }, {"config.json", "missing", "hidden_size"});
}

TEST(IoErrors, HfConfigFieldWrongType) {
    TempDir tmp;
    auto cfg = tiny_hf_config();
    cfg["num_attention_heads"] = "2";
    write_hf_dir(tmp, cfg, tiny_hf_tensors());
    expect_error([&] { checkpoint_open(tmp.path.string()); }, {"config.json", "num_attention_heads", "integer"});
}

TEST(IoErrors, HfUnsupportedRopeScaling) {
    TempDir tmp;
    auto cfg = tiny_hf_config();
    cfg["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
    write_hf_dir(tmp, cfg, tiny_hf_tensors());
    expect_error([&] { checkpoint_open(tmp.path.string()); }, {"config.json", "rope_scaling", "yarn"});
}

TEST(IoErrors, HfNoConfig) {
    TempDir tmp;
    tiny_hf_tensors().write(tmp.file("model.safetensors"));
    expect_error([&] { checkpoint_open(tmp.path.string()); }, {tmp.path.filename().string(), "config.json"});
}

TEST(IoErrors, HfMissingTensor) {
    TempDir tmp;
    SafetensorsWriter w = tiny_hf_tensors();
    std::erase_if(w.tensors, [](const auto& t) { return t.name == hf_name(1, "mlp.up_proj.weight"); });
    write_hf_dir(tmp, tiny_hf_config(), w);
    expect_error([&] { checkpoint_open(tmp.path.string()); }, {tmp.path.filename().string(), "layers.1.up", "missing"});
}

TEST(IoErrors, HfShapeMismatch) {
    TempDir tmp;
    SafetensorsWriter w = tiny_hf_tensors();
    for (auto& t : w.tensors)
        if (t.name == hf_name(0, "mlp.down_proj.weight")) t.shape = {12, 8};  // transposed
    write_hf_dir(tmp, tiny_hf_config(), w);
    expect_error([&] { checkpoint_open(tmp.path.string()); },
                 {"model.safetensors", "down_proj", "shape mismatch", "[12, 8]", "[8, 12]"});
}

TEST(IoErrors, HfIndexNamesMissingShard) {
    TempDir tmp;
    write_text(tmp.file("config.json"), tiny_hf_config().dump());
    tiny_hf_tensors().write(tmp.file("model-00001-of-00002.safetensors"));
    nlohmann::json index = {{"weight_map",
                             {{"model.embed_tokens.weight", "model-00001-of-00002.safetensors"},
                              {"model.norm.weight", "model-00002-of-00002.safetensors"}}}};
    write_text(tmp.file("model.safetensors.index.json"), index.dump());
    expect_error([&] { checkpoint_open(tmp.path.string()); },
                 {"model.safetensors.index.json", "model-00002-of-00002.safetensors", "does not exist"});
}

TEST(IoErrors, HfIndexTensorNotInShard) {
    TempDir tmp;
    write_text(tmp.file("config.json"), tiny_hf_config().dump());
    tiny_hf_tensors().write(tmp.file("a.safetensors"));
    nlohmann::json index = {{"weight_map", {{"model.layers.0.mlp.extra.weight", "a.safetensors"}}}};
    write_text(tmp.file("model.safetensors.index.json"), index.dump());
    expect_error([&] { checkpoint_open(tmp.path.string()); }, {"a.safetensors", "mlp.extra", "not present"});
}

TEST(IoErrors, HfIndexEscapesDirectory) {
    TempDir tmp;
    write_text(tmp.file("config.json"), tiny_hf_config().dump());
    nlohmann::json index = {{"weight_map", {{"model.norm.weight", "../elsewhere.safetensors"}}}};
    write_text(tmp.file("model.safetensors.index.json"), index.dump());
    expect_error([&] { checkpoint_open(tmp.path.string()); },
                 {"model.safetensors.index.json", "../elsewhere.safetensors", "plain file name"});
}

TEST(IoErrors, HfNoSafetensors) {
    TempDir tmp;
    write_text(tmp.file("config.json"), tiny_hf_config().dump());
    expect_error([&] { checkpoint_open(tmp.path.string()); }, {tmp.path.filename().string(), "safetensors"});
}

TEST(IoErrors, LoneSafetensorsFile) {
    TempDir tmp;
    tiny_hf_tensors().write(tmp.file("model.safetensors"));
    expect_error([&] { checkpoint_open(tmp.file("model.safetensors")); }, {"model.safetensors", "directory"});
}

// ---------------------------------------------------------------------------
// config_validate

namespace {
ModelConfig valid_config() {
    ModelConfig c;
    c.n_layers = 2;
    c.d_model = 576;
    c.n_heads = 9;
    c.n_kv_heads = 3;
    c.head_dim = 64;
    c.d_ff = 1536;
    c.vocab = 49152;
    return c;
}
}  // namespace

TEST(ConfigValidate, AcceptsValid) {
    EXPECT_NO_THROW(config_validate(valid_config(), "src.gguf"));
    ModelConfig c = valid_config();
    c.head_dim = 0;  // derived: 576 / 9 = 64
    EXPECT_NO_THROW(config_validate(c, "src.gguf"));
}

TEST(ConfigValidate, RejectsNonPositiveSizes) {
    for (int field = 0; field < 6; ++field) {
        ModelConfig c = valid_config();
        const char* names[] = {"n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab"};
        int* ptrs[] = {&c.n_layers, &c.d_model, &c.n_heads, &c.n_kv_heads, &c.d_ff, &c.vocab};
        *ptrs[field] = field % 2 ? 0 : -3;
        expect_error([&] { config_validate(c, "src.gguf"); }, {"src.gguf", names[field]});
    }
}

TEST(ConfigValidate, RejectsIndivisibleDModelWithoutHeadDim) {
    ModelConfig c = valid_config();
    c.head_dim = 0;
    c.d_model = 580;
    expect_error([&] { config_validate(c, "cfg.json"); }, {"cfg.json", "d_model", "n_heads"});
    c.head_dim = 64;  // an explicit head_dim makes it fine
    EXPECT_NO_THROW(config_validate(c, "cfg.json"));
}

TEST(ConfigValidate, RejectsGqaMismatch) {
    ModelConfig c = valid_config();
    c.n_kv_heads = 2;
    expect_error([&] { config_validate(c, "cfg.json"); }, {"cfg.json", "n_heads", "n_kv_heads"});
}

TEST(ConfigValidate, RejectsOddHeadDim) {
    ModelConfig c = valid_config();
    c.head_dim = 63;
    expect_error([&] { config_validate(c, "cfg.json"); }, {"cfg.json", "head_dim", "even"});
}

TEST(ConfigValidate, RejectsBadRopeAndEps) {
    ModelConfig c = valid_config();
    c.rms_eps = 0;
    expect_error([&] { config_validate(c, "cfg.json"); }, {"cfg.json", "rms_eps"});
    c = valid_config();
    c.rope_scaling = ROPE_SCALING_LLAMA3;
    c.rope_factor = 8;
    c.rope_low_freq_factor = 4;
    c.rope_high_freq_factor = 4;
    expect_error([&] { config_validate(c, "cfg.json"); }, {"cfg.json", "rope_high_freq_factor"});
}

// ---------------------------------------------------------------------------
// Every single-byte corruption of a small model: opening and loading either
// works or throws sq::Error; nothing else escapes (run under ASan to check
// for out-of-bounds reads too).

namespace {
template <class F>
void expect_only_sq_errors(const std::string& what, size_t pos, F&& f) {
    try {
        f();
    } catch (const sq::Error&) {
    } catch (const std::exception& e) {
        ADD_FAILURE() << what << " byte " << pos << ": non-sq exception: " << e.what();
    }
}
void open_and_load(const std::string& path) {
    Checkpoint ck = checkpoint_open(path);
    for (const auto& [name, t] : ck.tensors) ck.load(name, t.shape);
}
}  // namespace

TEST(IoErrors, GgufEveryByteCorrupted) {
    TempDir tmp(/*in_memory=*/true);
    GgufWriter w = tiny_gguf("qwen2", false, TinyDims{8, 2, 1, 4, 12, 6, 1});
    const auto good = w.bytes();
    const std::string path = tmp.file("fuzz.gguf");
    for (size_t i = 0; i < w.data_pos; ++i) {  // header, metadata and tensor infos
        for (uint8_t v : {(uint8_t)0xff, (uint8_t)0x00, (uint8_t)(good[i] ^ 0x01)}) {
            auto b = good;
            b[i] = v;
            write_bytes(path, b);
            expect_only_sq_errors("gguf", i, [&] { open_and_load(path); });
        }
    }
}

TEST(IoErrors, SafetensorsEveryHeaderByteCorrupted) {
    TempDir tmp(/*in_memory=*/true);
    write_text(tmp.file("config.json"), tiny_hf_config("llama", TinyDims{8, 2, 1, 4, 12, 6, 1}).dump());
    const SafetensorsWriter w = tiny_hf_tensors("llama", false, TinyDims{8, 2, 1, 4, 12, 6, 1});
    const auto good = w.bytes();
    const size_t header_end = 8 + w.header().size();
    for (size_t i = 0; i < header_end; ++i) {
        for (uint8_t v : {(uint8_t)'9', (uint8_t)'"', (uint8_t)0x80, (uint8_t)(good[i] ^ 0x01)}) {
            auto b = good;
            b[i] = v;
            write_bytes(tmp.file("model.safetensors"), b);
            expect_only_sq_errors("safetensors", i, [&] { open_and_load(tmp.path.string()); });
        }
    }
}
