// The packed model format, version 2 (docs/format.md): spectral coefficients
// stored sparse (kept ones only) and expanded exactly on load, rowsums
// derived from the codes, version-1 files refused with a clear message,
// corrupt sparse tables refused naming the file and the tensor.
//   build-avx2/specquant_tests --gtest_filter='PackedModel*'
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/packed_file.h"
#include "io/tokenizer.h"
#include "model/linear_w4a4.h"
#include "model/linear_w4a4_cpu.h"
#include "quant/packed_model.h"
#include "quant/pipeline.h"

using namespace sq;
namespace fs = std::filesystem;

namespace {

const std::string kData = SQ_TEST_DATA;
const std::string kCalib = std::string(SQ_SOURCE_DIR) + "/../shared/data/calib/c4.utf8";

std::string read_bytes(const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void write_bytes(const std::string& p, const std::string& b) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(b.data(), (std::streamsize)b.size());
}

// The tiny fixture quantized with SpecQuant (k̄ 4: rank 7 of in 64), saved to `path`.
void save_tiny_specquant(const std::string& path) {
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    Tokenizer tok(ck.tokenizer);
    QuantConfig qc = quant_config_for("specquant");
    qc.kv_bits = 4;
    qc.calib_path = kCalib;
    qc.calib_n = 2;
    qc.calib_len = 32;
    qc.k_bar = 4;
    ModelWeights w = quantize_model(model_load_f32(ck, false), tok, qc);
    packed_model_save(path, w, ck.tokenizer, quant_config_to_json(qc));
}

void expect_error(const std::string& path, const std::vector<std::string>& parts) {
    try {
        packed_model_load(path);
        FAIL() << "accepted a bad file";
    } catch (const Error& e) {
        for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
}

}  // namespace

// The sparse table holds exactly the kept coefficients: the loaded dense C
// equals the quantizer's, nothing is stored past a row's last nonzero.
TEST(PackedModel, SparseCoefficientsRoundTripExactly) {
    const std::string path = (fs::temp_directory_path() / "sq_pm_sparse.sqm").string();
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    Tokenizer tok(ck.tokenizer);
    QuantConfig qc = quant_config_for("specquant");
    qc.kv_bits = 4;
    qc.calib_path = kCalib;
    qc.calib_n = 2;
    qc.calib_len = 32;
    qc.k_bar = 4;
    ModelWeights w = quantize_model(model_load_f32(ck, false), tok, qc);
    packed_model_save(path, w, ck.tokenizer, quant_config_to_json(qc));
    PackedModel pm = packed_model_load(path);
    const PackedFile pf = packed_open(path);
    int checked = 0;
    for (size_t l = 0; l < w.layers.size(); ++l) {
        const Linear* a[7] = {w.layers[l].q.get(), w.layers[l].k.get(),    w.layers[l].v.get(),   w.layers[l].o.get(),
                              w.layers[l].gate.get(), w.layers[l].up.get(), w.layers[l].down.get()};
        const Linear* b[7] = {pm.weights.layers[l].q.get(),    pm.weights.layers[l].k.get(),
                              pm.weights.layers[l].v.get(),    pm.weights.layers[l].o.get(),
                              pm.weights.layers[l].gate.get(), pm.weights.layers[l].up.get(),
                              pm.weights.layers[l].down.get()};
        const char* names[7] = {"q", "k", "v", "o", "gate", "up", "down"};
        for (int i = 0; i < 7; ++i) {
            QLinearData da, db;
            ASSERT_TRUE(linear_w4a4_data(*a[i], &da));
            ASSERT_TRUE(linear_w4a4_data(*b[i], &db));
            EXPECT_EQ(da.codes, db.codes);
            EXPECT_EQ(da.rowsum, db.rowsum);
            ASSERT_EQ(da.coef.size(), db.coef.size());
            for (size_t c = 0; c < da.coef.size(); ++c)  // ±0 past a row's length both read as +0
                ASSERT_TRUE(da.coef[c] == db.coef[c] || ((da.coef[c] | db.coef[c]) & 0x7FFF) == 0) << c;
            if (da.rank == 0) continue;
            // Stored values = the nonzero-terminated prefixes, nothing more.
            const std::string p = "layers." + std::to_string(l) + "." + names[i];
            const PackedView& len = pf.get(p + ".coef_len", "u16", {da.out});
            int64_t total = 0;
            for (int64_t j = 0; j < da.out; ++j) total += ((const uint16_t*)len.data)[j];
            EXPECT_EQ(pf.get(p + ".coef_val", "f16", {total}).nbytes, (size_t)total * 2);
            EXPECT_LT(total, da.out * da.rank) << p << ": SpecQuant rows keep fewer bins than K";
            EXPECT_FALSE(pf.has(p + ".coef") || pf.has(p + ".rowsum")) << p;
            ++checked;
        }
    }
    EXPECT_GT(checked, 0);
    fs::remove(path);
}

// Version 1 (dense coefficients) is refused naming the file; a row length
// above the rank and a value table of the wrong size are corrupt files.
TEST(PackedModel, OldVersionAndCorruptSparseTableAreErrors) {
    const std::string path = (fs::temp_directory_path() / "sq_pm_bad.sqm").string();
    save_tiny_specquant(path);
    const std::string good = read_bytes(path);
    {
        std::string b = good;
        const uint32_t v1 = 1;
        std::memcpy(&b[8], &v1, 4);
        write_bytes(path, b);
        expect_error(path, {path, "version 1", "quantize the model again"});
    }
    std::string lens_name;
    size_t off = 0;
    int64_t rows = 0;
    {
        write_bytes(path, good);
        const PackedFile pf = packed_open(path);
        for (const auto& [name, v] : pf.tensors)
            if (name.size() > 9 && name.compare(name.size() - 9, 9, ".coef_len") == 0) {
                lens_name = name;
                off = (size_t)(v.data - pf.map->data());
                rows = v.shape[0];
                break;
            }
    }
    ASSERT_FALSE(lens_name.empty()) << "no sparse coefficient table in the SpecQuant file";
    ASSERT_GT(rows, 0);
    {
        std::string b = good;
        const uint16_t big = 60000;
        std::memcpy(&b[off], &big, 2);
        write_bytes(path, b);
        expect_error(path, {path, lens_name, "more than the rank"});
    }
    {
        std::string b = good;
        uint16_t l0;
        std::memcpy(&l0, &b[off], 2);
        const uint16_t other = l0 == 0 ? 1 : (uint16_t)(l0 - 1);  // the value count no longer adds up
        std::memcpy(&b[off], &other, 2);
        write_bytes(path, b);
        const std::string base = lens_name.substr(0, lens_name.size() - 4);
        expect_error(path, {path, base + "_val", "wrong shape"});
    }
    fs::remove(path);
}

// --embed-bits 4: the Q4_0 table (tied lm_head) is saved, loaded and saved
// again byte for byte, and the loaded model computes the same logits.
TEST(PackedModel, Q4EmbeddingRoundTrip) {
    const std::string path = (fs::temp_directory_path() / "sq_pm_q4.sqm").string();
    const std::string again = (fs::temp_directory_path() / "sq_pm_q4_again.sqm").string();
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    Tokenizer tok(ck.tokenizer);
    QuantConfig qc = quant_config_for("rtn");
    qc.kv_bits = 4;
    qc.calib_path = kCalib;
    qc.calib_n = 2;
    qc.calib_len = 32;
    qc.embed_bits = 4;
    ModelWeights w = quantize_model(model_load_f32(ck, false), tok, qc);
    ASSERT_TRUE(w.embed_q4 && w.embed.empty());
    packed_model_save(path, w, ck.tokenizer, quant_config_to_json(qc));
    PackedModel pm = packed_model_load(path);
    ASSERT_TRUE(pm.weights.embed_q4);
    EXPECT_EQ(pm.weights.lm_head->kind(), ck.config.tied_embeddings ? "q4" : "q8");
    packed_model_save(again, pm.weights, pm.tokenizer, pm.quant);
    EXPECT_EQ(read_bytes(again), read_bytes(path));
    std::vector<int> toks = {1, 5, 9, 2, 7, 3};
    for (auto& t : toks) t %= ck.config.vocab;
    auto logits = [&](const Model& m) {
        KVCache c(m.config(), (int)toks.size());
        std::vector<float> out(toks.size() * m.config().vocab);
        m.forward(toks.data(), (int)toks.size(), c, out.data(), true);
        return out;
    };
    const auto a = logits(Model(std::move(w))), b = logits(Model(std::move(pm.weights)));
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
    fs::remove(path);
    fs::remove(again);
}
