#include "quant/packed_model.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "core/error.h"
#include "core/fp16.h"
#include "io/packed_file.h"
#include "kernels/w4a4_format.h"
#include "model/linear_w4a4.h"
#include "model/linear_w4a4_cpu.h"

namespace sq {

using json = nlohmann::json;

json config_to_json(const ModelConfig& c) {
    return {{"arch", c.arch}, {"name", c.name}, {"n_layers", c.n_layers}, {"d_model", c.d_model},
            {"n_heads", c.n_heads}, {"n_kv_heads", c.n_kv_heads}, {"head_dim", c.head_dim}, {"d_ff", c.d_ff},
            {"vocab", c.vocab}, {"max_ctx", c.max_ctx}, {"rms_eps", c.rms_eps}, {"rope_theta", c.rope_theta},
            {"rope_scaling", (int)c.rope_scaling}, {"rope_factor", c.rope_factor},
            {"rope_low_freq_factor", c.rope_low_freq_factor}, {"rope_high_freq_factor", c.rope_high_freq_factor},
            {"rope_original_max_pos", c.rope_original_max_pos}, {"tied_embeddings", c.tied_embeddings},
            {"qkv_bias", c.qkv_bias}};
}

ModelConfig config_from_json(const json& j, const std::string& source) {
    ModelConfig c;
    try {
        c.arch = j.at("arch");
        c.name = j.at("name");
        c.n_layers = j.at("n_layers");
        c.d_model = j.at("d_model");
        c.n_heads = j.at("n_heads");
        c.n_kv_heads = j.at("n_kv_heads");
        c.head_dim = j.at("head_dim");
        c.d_ff = j.at("d_ff");
        c.vocab = j.at("vocab");
        c.max_ctx = j.at("max_ctx");
        c.rms_eps = j.at("rms_eps");
        c.rope_theta = j.at("rope_theta");
        int rs = j.at("rope_scaling");
        SQ_CHECK(rs >= 0 && rs <= 2, source, ": config.rope_scaling ", rs, " unknown");
        c.rope_scaling = (RopeScaling)rs;
        c.rope_factor = j.at("rope_factor");
        c.rope_low_freq_factor = j.at("rope_low_freq_factor");
        c.rope_high_freq_factor = j.at("rope_high_freq_factor");
        c.rope_original_max_pos = j.at("rope_original_max_pos");
        c.tied_embeddings = j.at("tied_embeddings");
        c.qkv_bias = j.at("qkv_bias");
    } catch (const json::exception& e) {
        fail(source, ": config: ", e.what());
    }
    config_validate(c, source);
    return c;
}

json tokenizer_to_json(const TokenizerData& t) {
    json merges = json::array();
    for (auto& [a, b] : t.merges) merges.push_back(a + " " + b);
    return {{"kind", t.kind == TOKENIZER_BPE_BYTE ? "bpe_byte" : "spm_bpe"}, {"pre", t.pre}, {"tokens", t.tokens},
            {"scores", t.scores}, {"token_types", t.token_types}, {"merges", merges}, {"bos", t.bos}, {"eos", t.eos},
            {"unk", t.unk}, {"pad", t.pad}, {"add_bos", t.add_bos}, {"add_eos", t.add_eos},
            {"add_space_prefix", t.add_space_prefix}};
}

TokenizerData tokenizer_from_json(const json& j, const std::string& source) {
    TokenizerData t;
    try {
        const std::string kind = j.at("kind");
        SQ_CHECK(kind == "bpe_byte" || kind == "spm_bpe", source, ": tokenizer.kind '", kind, "' unknown");
        t.kind = kind == "bpe_byte" ? TOKENIZER_BPE_BYTE : TOKENIZER_SPM_BPE;
        t.pre = j.at("pre");
        t.tokens = j.at("tokens").get<std::vector<std::string>>();
        t.scores = j.at("scores").get<std::vector<float>>();
        t.token_types = j.at("token_types").get<std::vector<int>>();
        for (const auto& m : j.at("merges")) {
            const std::string s = m;
            const size_t sp = s.find(' ', 1);
            SQ_CHECK(sp != std::string::npos, source, ": tokenizer merge '", s, "' has no space");
            t.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
        }
        t.bos = j.at("bos");
        t.eos = j.at("eos");
        t.unk = j.at("unk");
        t.pad = j.at("pad");
        t.add_bos = j.at("add_bos");
        t.add_eos = j.at("add_eos");
        t.add_space_prefix = j.at("add_space_prefix");
    } catch (const json::exception& e) {
        fail(source, ": tokenizer: ", e.what());
    }
    t.source = source;
    return t;
}

namespace {

template <class T>
PackedTensor tensor_of(const std::string& name, const std::string& dtype, std::vector<int64_t> shape,
                       const std::vector<T>& v) {
    PackedTensor t{name, dtype, std::move(shape), {}};
    t.bytes.resize(v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
    return t;
}

PackedTensor f16_of(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = fp32_to_fp16(v[i]);
    return tensor_of(name, "f16", std::move(shape), h);
}

template <class T>
std::vector<T> read_vec(const PackedFile& pf, const std::string& name, const std::string& dtype,
                        const std::vector<int64_t>& shape) {
    const PackedView& v = pf.get(name, dtype, shape);
    std::vector<T> out(v.nbytes / sizeof(T));
    if (v.nbytes) std::memcpy(out.data(), v.data, v.nbytes);
    return out;
}

std::vector<float> read_f16(const PackedFile& pf, const std::string& name, const std::vector<int64_t>& shape) {
    auto h = read_vec<uint16_t>(pf, name, "f16", shape);
    std::vector<float> f(h.size());
    for (size_t i = 0; i < h.size(); ++i) f[i] = fp16_to_fp32(h[i]);
    return f;
}

// A block-quantized matrix (Q8_0 or Q4_0) [rows, cols] stored as u8
// [rows, cols/32 · sizeof(block)]; finite fp16 scales only.
template <class M>
std::shared_ptr<const M> read_blocks(const PackedFile& pf, const std::string& path, const std::string& name,
                                     int64_t rows, int64_t cols) {
    using Block = typename decltype(M::blocks)::value_type;
    static_assert(Q8_BLOCK == 32 && Q4_BLOCK == 32, "one block width for both formats");
    SQ_CHECK(cols > 0 && cols % 32 == 0, path, ": ", name, ": needs a multiple of 32 columns, got ", cols);
    const PackedView& v = pf.get(name, "u8", {rows, cols / 32 * (int64_t)sizeof(Block)});
    auto m = std::make_shared<M>();
    m->rows = rows;
    m->cols = cols;
    m->blocks.resize((size_t)rows * (cols / 32));
    // Copied 1 MB at a time, each piece's mapped pages dropped behind it: a
    // 30 MB table (SmolLM2's untied Q8 lm_head) otherwise sits in memory
    // twice, as file pages and as the copy (best form: load peak 241 MB).
    const size_t piece = 1 << 20, page = (size_t)::sysconf(_SC_PAGESIZE);
    auto* dst = reinterpret_cast<uint8_t*>(m->blocks.data());
    const auto* src = static_cast<const uint8_t*>(v.data);
    for (size_t off = 0; off < v.nbytes; off += piece) {
        const size_t len = std::min(piece, v.nbytes - off);
        std::memcpy(dst + off, src + off, len);
        const uintptr_t lo = ((uintptr_t)(src + off) + page - 1) / page * page, hi = (uintptr_t)(src + off + len) / page * page;
        if (hi > lo) ::madvise((void*)lo, hi - lo, MADV_DONTNEED);  // advisory: errors ignored
    }
    for (size_t i = 0; i < m->blocks.size(); ++i)
        SQ_CHECK((m->blocks[i].d & 0x7C00) != 0x7C00, path, ": ", name, ": block ", i, " has a non-finite scale (corrupt file)");
    return m;
}

// The inverse: the matrix's blocks as one u8 tensor.
template <class M>
PackedTensor blocks_tensor(const std::string& name, const M& m) {
    using Block = typename decltype(M::blocks)::value_type;
    PackedTensor t{name, "u8", {m.rows, m.cols / 32 * (int64_t)sizeof(Block)}, {}};
    t.bytes.resize(m.bytes());
    std::memcpy(t.bytes.data(), m.blocks.data(), m.bytes());
    return t;
}

// Spectral coefficients in the file (version 2): per row only the kept
// ones. In run-time column order (spectral_column_order: DC, cos 1, sin 1,
// cos 2, …) a row keeping k bins has its nonzeros in the prefix [0, 2k − 1),
// so a row is stored as that prefix up to its last nonzero (±0 count as
// zero): len [out] u16, val = the rows' prefixes one after another.
// SmolLM2 at k̄ 32: 19.6 MB instead of 39.5 MB dense [out, rank].
void coef_sparse(const QLinearData& d, std::vector<uint16_t>* len, std::vector<uint16_t>* val) {
    SQ_CHECK(d.rank < 65536, "packed_model_save: spectral rank ", d.rank, " does not fit the u16 row lengths");
    const std::vector<int> order = spectral_column_order(d);
    len->assign(d.out, 0);
    val->clear();
    for (int64_t j = 0; j < d.out; ++j) {
        const uint16_t* row = &d.coef[j * d.rank];
        int last = 0;
        for (int c = 0; c < d.rank; ++c)
            if (row[order[c]] & 0x7FFF) last = c + 1;
        (*len)[j] = (uint16_t)last;
        for (int c = 0; c < last; ++c) val->push_back(row[order[c]]);
    }
}

// The inverse: d.coef [out, rank] in stored column order, zero past each
// row's length. Lengths above rank or a value count that does not add up
// are a corrupt file.
void coef_dense(const PackedFile& pf, const std::string& path, const std::string& name, QLinearData& d) {
    auto it = pf.tensors.find(name + ".coef_len");
    SQ_CHECK(it != pf.tensors.end(), path, ": tensor ", name, ".coef_len missing");
    const auto len = read_vec<uint16_t>(pf, name + ".coef_len", "u16", {d.out});
    int64_t total = 0;
    for (int64_t j = 0; j < d.out; ++j) {
        SQ_CHECK(len[j] <= d.rank, path, ": ", name, ".coef_len: row ", j, " keeps ", len[j],
                 " coefficients, more than the rank ", d.rank, " (corrupt file)");
        total += len[j];
    }
    const auto val = read_vec<uint16_t>(pf, name + ".coef_val", "f16", {total});
    const std::vector<int> order = spectral_column_order(d);
    d.coef.assign(d.out * d.rank, 0);
    int64_t off = 0;
    for (int64_t j = 0; j < d.out; ++j)
        for (int c = 0; c < len[j]; ++c) d.coef[j * d.rank + order[c]] = val[off++];
}

// Drops every mapped page of the file. Releasing each tensor after its copy
// (PackedFile::release) still left up to ~14 MB of the file resident during
// a SmolLM2 load (RssFile 6 → 21 MB, sampled every 2 ms): the kernel maps
// up to 64 KB around each faulting page, and the small tensors (norms) and
// the header were never released. Everything read so far has been copied,
// so once per layer the whole mapping goes (a later read faults its pages
// back from the page cache).
void drop_mapped(const PackedFile& pf) {
    if (pf.map && pf.map->size() > 0) ::madvise(const_cast<void*>((const void*)pf.map->data()), pf.map->size(), MADV_DONTNEED);
}

}  // namespace

void packed_model_save(const std::string& path, const ModelWeights& w, const TokenizerData& tok, const json& quant) {
    const ModelConfig& c = w.cfg;
    std::vector<PackedTensor> ts;
    json linears = json::object();
    if (w.embed_q8) ts.push_back(blocks_tensor("embed.q8", *w.embed_q8));
    else if (w.embed_q4) ts.push_back(blocks_tensor("embed.q4", *w.embed_q4));
    else ts.push_back(f16_of("embed", {c.vocab, c.d_model}, w.embed));
    ts.push_back(tensor_of("final_norm", "f32", {c.d_model}, w.final_norm));
    auto add_linear = [&](const std::string& name, const Linear& L) {
        QLinearData d;
        if (linear_w4a4_data(L, &d)) {  // either backend (reference or AVX2)
            linears[name] = {{"type", "w4"}, {"in", d.in}, {"out", d.out}, {"a_bits", d.a_bits},
                             {"a_clip", d.a_clip}, {"rank", d.rank}, {"basis", d.basis}, {"had_in", d.had_in},
                             {"had_seed", d.had_seed}, {"bias", !d.bias.empty()}};
            ts.push_back(tensor_of(name + ".codes", "u8", {d.out, w4_row_bytes(d.in)}, d.codes));
            ts.push_back(tensor_of(name + ".scale", "f32", {d.out}, d.scale));
            // rowsum: derived from the codes on load (not stored since version 2)
            if (d.rank > 0) {
                std::vector<uint16_t> len, val;
                coef_sparse(d, &len, &val);
                ts.push_back(tensor_of(name + ".coef_len", "u16", {d.out}, len));
                ts.push_back(tensor_of(name + ".coef_val", "f16", {(int64_t)val.size()}, val));
            }
            if (!d.basis_f16.empty()) ts.push_back(tensor_of(name + ".basis", "f16", {d.in, d.rank}, d.basis_f16));
            if (!d.bias.empty()) ts.push_back(tensor_of(name + ".bias", "f32", {d.out}, d.bias));
        } else if (auto* q = dynamic_cast<const LinearQ8*>(&L)) {
            linears[name] = {{"type", "q8_0"}, {"in", q->in}, {"out", q->out}, {"bias", false}};
            ts.push_back(blocks_tensor(name + ".q8", *q->matrix()));
        } else if (auto* f = dynamic_cast<const LinearF32*>(&L)) {
            linears[name] = {{"type", "f16"}, {"in", f->in}, {"out", f->out}, {"bias", !f->bias.empty()}};
            ts.push_back(f16_of(name + ".w", {f->out, f->in}, f->w));
            if (!f->bias.empty()) ts.push_back(tensor_of(name + ".bias", "f32", {f->out}, f->bias));
        } else {
            fail("packed_model_save: linear ", name, " has a backend (", L.kind(), ") that cannot be saved");
        }
    };
    for (int i = 0; i < c.n_layers; ++i) {
        const std::string p = "layers." + std::to_string(i) + ".";
        const LayerWeights& L = w.layers[i];
        ts.push_back(tensor_of(p + "attn_norm", "f32", {c.d_model}, L.attn_norm));
        ts.push_back(tensor_of(p + "ffn_norm", "f32", {c.d_model}, L.ffn_norm));
        if (!L.k_shift.empty()) ts.push_back(tensor_of(p + "k_shift", "f32", {(int64_t)L.k_shift.size()}, L.k_shift));
        add_linear(p + "q", *L.q);
        add_linear(p + "k", *L.k);
        add_linear(p + "v", *L.v);
        add_linear(p + "o", *L.o);
        add_linear(p + "gate", *L.gate);
        add_linear(p + "up", *L.up);
        add_linear(p + "down", *L.down);
    }
    // lm_head: stored unless it is exactly the (tied) embedding.
    auto* lm = dynamic_cast<const LinearF32*>(w.lm_head.get());
    auto* lm8 = dynamic_cast<const LinearQ8*>(w.lm_head.get());
    auto* lm4 = dynamic_cast<const LinearQ4*>(w.lm_head.get());
    const bool tied = w.embed_q8   ? (lm8 && lm8->matrix() == w.embed_q8)
                      : w.embed_q4 ? (lm4 && lm4->matrix() == w.embed_q4)
                                   : (lm && lm->w == w.embed && lm->bias.empty());
    SQ_CHECK(!(lm4 && !tied), "packed_model_save: a 4-bit lm_head is only stored as the tied embedding table");
    if (!tied) add_linear("lm_head", *w.lm_head);
    json meta = {{"format", "specquant-packed"}, {"config", config_to_json(c)}, {"tokenizer", tokenizer_to_json(tok)},
                 {"quant", quant}, {"kv_bits", w.kv_bits}, {"kv_clip", w.kv_clip}, {"qk_rotate", w.qk_rotate},
                 {"linears", linears},
                 {"lm_head_tied", tied}, {"embed_type", w.embed_q8 ? "q8_0" : w.embed_q4 ? "q4_0" : "f16"}};
    packed_write(path, meta, ts);
}

PackedModel packed_model_load(const std::string& path) {
    PackedFile pf = packed_open(path);
    PackedModel pm;
    ModelWeights& w = pm.weights;
    try {
        SQ_CHECK(pf.meta.value("format", "") == "specquant-packed", path, ": not a SpecQuant model file");
        w.cfg = config_from_json(pf.meta.at("config"), path);
        pm.tokenizer = tokenizer_from_json(pf.meta.at("tokenizer"), path);
        // The JSON tree of the tokenizer (~100k small strings and nodes) is no
        // longer needed: free it before the weights are built, so the load's
        // peak RSS is not weights + a second copy of the vocabulary.
        pf.meta.erase("tokenizer");
#ifdef __GLIBC__
        // ... and hand its pages back now: the weights below are large blocks
        // (mmap'd, they never reuse the DOM's small chunks), so the freed DOM
        // stayed resident under them until the trim at the end (load peak
        // ≈ weights + ~10 MB of freed JSON nodes).
        malloc_trim(0);
#endif
        pm.quant = pf.meta.at("quant");
        w.kv_bits = pf.meta.at("kv_bits");
        w.kv_clip = pf.meta.at("kv_clip");
        // Files written before "qk_rotate" was recorded: the pipeline rotates
        // q and k exactly when it rotates the model.
        w.qk_rotate = pf.meta.contains("qk_rotate") ? pf.meta.at("qk_rotate").get<bool>()
                                                     : pm.quant.value("rotate", false);
    } catch (const json::exception& e) {
        fail(path, ": corrupt metadata: ", e.what());
    }
    const ModelConfig& c = w.cfg;
    const json& linears = pf.meta.at("linears");
    auto linear = [&](const std::string& name, int64_t out, int64_t in) -> std::unique_ptr<Linear> {
        SQ_CHECK(linears.contains(name), path, ": linear ", name, " missing");
        const json& m = linears.at(name);
        try {
            SQ_CHECK(m.at("in") == in && m.at("out") == out, path, ": linear ", name, " has shape ", m.at("out"), "x",
                     m.at("in"), ", config says ", out, "x", in);
            const bool has_bias = m.at("bias");
            if (m.at("type") == "q8_0") {
                SQ_CHECK(!has_bias, path, ": linear ", name, ": q8_0 layers have no bias");
                return std::make_unique<LinearQ8>(read_blocks<Q8Matrix>(pf, path, name + ".q8", out, in));
            }
            if (m.at("type") == "f16") {
                return std::make_unique<LinearF32>(in, out, read_f16(pf, name + ".w", {out, in}),
                                                   has_bias ? read_vec<float>(pf, name + ".bias", "f32", {out})
                                                            : std::vector<float>());
            }
            SQ_CHECK(m.at("type") == "w4", path, ": linear ", name, " has unknown type ", m.at("type"));
            QLinearData d;
            d.in = in;
            d.out = out;
            d.a_bits = m.at("a_bits");
            d.a_clip = m.at("a_clip");
            d.rank = m.at("rank");
            d.basis = m.at("basis");
            d.had_in = m.at("had_in");
            d.had_seed = m.at("had_seed");
            SQ_CHECK(d.rank >= 0 && d.rank <= in, path, ": linear ", name, " rank ", d.rank, " out of range");
            d.codes = read_vec<uint8_t>(pf, name + ".codes", "u8", {out, w4_row_bytes(in)});
            d.scale = read_vec<float>(pf, name + ".scale", "f32", {out});
            d.rowsum.resize(out);
            const int64_t rb = w4_row_bytes(in);
            for (int64_t j = 0; j < out; ++j) {
                int32_t sum = 0;
                for (int64_t k = 0; k < in; ++k) sum += w4_get(&d.codes[j * rb], k);
                d.rowsum[j] = sum;
            }
            if (d.rank > 0) coef_dense(pf, path, name, d);
            if (d.basis != "fourier" && d.rank > 0)
                d.basis_f16 = read_vec<uint16_t>(pf, name + ".basis", "f16", {in, d.rank});
            if (has_bias) d.bias = read_vec<float>(pf, name + ".bias", "f32", {out});
            d.validate(path + ": " + name);
            for (const char* t : {".codes", ".scale", ".coef_len", ".coef_val", ".basis", ".bias"}) pf.release(name + t);
            return make_linear_w4a4(std::move(d));  // AVX2 when the CPU has it, else the reference (loud)
        } catch (const json::exception& e) {
            fail(path, ": linear ", name, ": ", e.what());
        }
    };
    const int64_t d = c.d_model, hd = c.head_dim, qd = (int64_t)c.n_heads * hd, kvd = (int64_t)c.n_kv_heads * hd,
                  ff = c.d_ff;
    const std::string embed_type = pf.meta.value("embed_type", "f16");
    if (embed_type == "q8_0") w.embed_q8 = read_blocks<Q8Matrix>(pf, path, "embed.q8", c.vocab, d);
    else if (embed_type == "q4_0") w.embed_q4 = read_blocks<Q4Matrix>(pf, path, "embed.q4", c.vocab, d);
    else if (embed_type == "f16") w.embed = read_f16(pf, "embed", {c.vocab, d});
    else fail(path, ": unknown embed_type '", embed_type, "'");
    drop_mapped(pf);
    w.final_norm = read_vec<float>(pf, "final_norm", "f32", {d});
    w.layers.resize(c.n_layers);
    for (int i = 0; i < c.n_layers; ++i) {
        const std::string p = "layers." + std::to_string(i) + ".";
        LayerWeights& L = w.layers[i];
        L.attn_norm = read_vec<float>(pf, p + "attn_norm", "f32", {d});
        L.ffn_norm = read_vec<float>(pf, p + "ffn_norm", "f32", {d});
        if (pf.has(p + "k_shift")) {
            SQ_CHECK(w.kv_bits < 16, path, ": ", p, "k_shift given but the KV cache is not quantized");
            L.k_shift = read_vec<float>(pf, p + "k_shift", "f32", {kvd});
            for (float v : L.k_shift) SQ_CHECK(std::isfinite(v), path, ": ", p, "k_shift is not finite");
        }
        L.q = linear(p + "q", qd, d);
        L.k = linear(p + "k", kvd, d);
        L.v = linear(p + "v", kvd, d);
        L.o = linear(p + "o", d, qd);
        L.gate = linear(p + "gate", ff, d);
        L.up = linear(p + "up", ff, d);
        L.down = linear(p + "down", d, ff);
        drop_mapped(pf);
    }
    if (pf.meta.value("lm_head_tied", false) && w.embed_q8) w.lm_head = std::make_unique<LinearQ8>(w.embed_q8);
    else if (pf.meta.value("lm_head_tied", false) && w.embed_q4) w.lm_head = std::make_unique<LinearQ4>(w.embed_q4);
    else if (pf.meta.value("lm_head_tied", false)) w.lm_head = std::make_unique<LinearF32>(d, c.vocab, w.embed);
    else w.lm_head = linear("lm_head", c.vocab, d);
    drop_mapped(pf);  // an untied Q8 lm_head: 30 MB of the file (best form's load peak 241 MB)
#ifdef __GLIBC__
    // Loading parsed the JSON header (the tokenizer: ~100k small strings) and
    // built each layer's canonical arrays before repacking them: give the
    // freed heap back so the resident set is the weights, not the load's peak.
    malloc_trim(0);
#endif
    return pm;
}

}  // namespace sq
