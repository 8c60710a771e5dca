// GGUF parsing and the GGUF -> Checkpoint mapping. See io/gguf.h for the
// file layout. Every length read from the file is checked against the bytes
// left before it is used, so a corrupt file costs an error, not an
// allocation of 2^64 bytes.
#include "io/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <string_view>

#include "core/error.h"
#include "core/threads.h"
#include "io/dequant.h"

namespace sq {

namespace {

// Smallest encodings, for bounding counts by the bytes left:
// a KV is at least key length (8) + type (4) + a 1-byte value;
// a tensor info at least name length (8) + n_dims (4) + type (4) + offset (8).
constexpr uint64_t k_min_kv_bytes = 13;
constexpr uint64_t k_min_tensor_info_bytes = 24;
constexpr int k_max_dims = 4;          // GGML_MAX_DIMS
constexpr int k_max_array_depth = 4;   // nested arrays are skipped, but not forever

size_t scalar_size(uint32_t t) {
    switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
        case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
        case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
        default: return 0;  // string, array, unknown
    }
}

bool is_int_type(uint32_t t) {
    return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_INT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_INT16 ||
           t == GGUF_TYPE_UINT32 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_UINT64 || t == GGUF_TYPE_INT64 ||
           t == GGUF_TYPE_BOOL;
}
bool is_float_type(uint32_t t) { return t == GGUF_TYPE_FLOAT32 || t == GGUF_TYPE_FLOAT64; }

template <class T>
T load_le(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Integer value of a scalar at p (type checked by the caller). UINT64 above
// INT64_MAX is reported as such rather than wrapped.
int64_t int_at(uint32_t t, const uint8_t* p, const std::string& path, const std::string& key) {
    switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_BOOL: return p[0];
        case GGUF_TYPE_INT8: return load_le<int8_t>(p);
        case GGUF_TYPE_UINT16: return load_le<uint16_t>(p);
        case GGUF_TYPE_INT16: return load_le<int16_t>(p);
        case GGUF_TYPE_UINT32: return load_le<uint32_t>(p);
        case GGUF_TYPE_INT32: return load_le<int32_t>(p);
        case GGUF_TYPE_INT64: return load_le<int64_t>(p);
        case GGUF_TYPE_UINT64: {
            uint64_t v = load_le<uint64_t>(p);
            SQ_CHECK(v <= (uint64_t)std::numeric_limits<int64_t>::max(), path, ": metadata ", key, " value ", v,
                     " is out of range");
            return (int64_t)v;
        }
        default: fail(path, ": metadata ", key, " is ", gguf_type_name(t), ", expected an integer");
    }
}

double float_at(uint32_t t, const uint8_t* p, const std::string& path, const std::string& key) {
    if (t == GGUF_TYPE_FLOAT32) return load_le<float>(p);
    if (t == GGUF_TYPE_FLOAT64) return load_le<double>(p);
    if (is_int_type(t)) return (double)int_at(t, p, path, key);
    fail(path, ": metadata ", key, " is ", gguf_type_name(t), ", expected a number");
}

// Bounds-checked reader over the mapping.
struct Cursor {
    const uint8_t* base;
    uint64_t size;
    uint64_t pos = 0;
    const std::string& path;

    uint64_t left() const { return size - pos; }
    void need(uint64_t n, const char* what) const {
        if (n > left())
            fail(path, ": truncated GGUF: ", what, " needs ", n, " bytes at offset ", pos, " but the file has ",
                 size, " bytes");
    }
    uint32_t u32(const char* what) {
        need(4, what);
        uint32_t v = load_le<uint32_t>(base + pos);
        pos += 4;
        return v;
    }
    uint64_t u64(const char* what) {
        need(8, what);
        uint64_t v = load_le<uint64_t>(base + pos);
        pos += 8;
        return v;
    }
    // Returns the string's bytes; length bounded by the bytes left.
    std::string_view string(const char* what) {
        const uint64_t at = pos;
        const uint64_t n = u64(what);
        if (n > left())
            fail(path, ": string length ", n, " of ", what, " at offset ", at, " exceeds the ", left(),
                 " bytes left in the file (corrupt or truncated GGUF)");
        std::string_view s((const char*)base + pos, n);
        pos += n;
        return s;
    }
    void skip(uint64_t n, const char* what) {
        need(n, what);
        pos += n;
    }
};

// Skips one value of type t (used for every value: getters decode lazily).
void skip_value(Cursor& c, uint32_t t, const std::string& key, int depth);

void skip_array(Cursor& c, const std::string& key, int depth, uint32_t* elem_type_out, uint64_t* count_out) {
    SQ_CHECK(depth < k_max_array_depth, c.path, ": metadata ", key, ": arrays nested more than ", k_max_array_depth,
             " deep");
    const uint32_t et = c.u32("array element type");
    const uint64_t at = c.pos;
    const uint64_t n = c.u64("array length");
    if (elem_type_out) *elem_type_out = et;
    if (count_out) *count_out = n;
    const size_t es = scalar_size(et);
    if (es > 0) {
        if (n > c.left() / es)
            fail(c.path, ": metadata ", key, ": array length ", n, " at offset ", at, " exceeds the ", c.left(),
                 " bytes left in the file");
        c.pos += n * es;
        return;
    }
    if (et == GGUF_TYPE_STRING || et == GGUF_TYPE_ARRAY) {
        // each element takes at least 8 (string length) or 12 (type + length) bytes
        const uint64_t min_bytes = et == GGUF_TYPE_STRING ? 8 : 12;
        if (n > c.left() / min_bytes)
            fail(c.path, ": metadata ", key, ": array length ", n, " at offset ", at, " exceeds the ", c.left(),
                 " bytes left in the file");
        for (uint64_t i = 0; i < n; ++i) skip_value(c, et, key, depth + 1);
        return;
    }
    fail(c.path, ": metadata ", key, ": unknown array element type ", et);
}

void skip_value(Cursor& c, uint32_t t, const std::string& key, int depth) {
    const size_t es = scalar_size(t);
    if (es > 0) return c.skip(es, "metadata value");
    if (t == GGUF_TYPE_STRING) {
        c.string("metadata string value");
        return;
    }
    if (t == GGUF_TYPE_ARRAY) return skip_array(c, key, depth, nullptr, nullptr);
    fail(c.path, ": metadata ", key, ": unknown value type ", t);
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

}  // namespace

const char* gguf_type_name(uint32_t type) {
    static const char* names[] = {"UINT8", "INT8",  "UINT16", "INT16", "UINT32", "INT32",  "FLOAT32",
                                  "BOOL",  "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};
    return type < 13 ? names[type] : "?";
}

GgufFile::GgufFile(const std::string& path) : file_(path) {
    Cursor c{file_.data(), file_.size(), 0, file_.path()};
    if (c.size < 4 || std::memcmp(c.base, "GGUF", 4) != 0)
        fail(path, ": not a GGUF file (bad magic; expected \"GGUF\" in the first 4 bytes)");
    c.pos = 4;
    version_ = c.u32("version");
    if (version_ == 1) fail(path, ": GGUF version 1 is not supported (re-convert with a current llama.cpp)");
    if (version_ != 2 && version_ != 3) {
        if ((version_ & 0xffff) == 0 && (version_ >> 24) <= 3)
            fail(path, ": big-endian GGUF (version field ", version_, ") is not supported");
        fail(path, ": unsupported GGUF version ", version_, " (supported: 2, 3)");
    }
    const uint64_t n_tensors = c.u64("tensor count");
    const uint64_t n_kv = c.u64("metadata count");
    if (n_tensors > c.left() / k_min_tensor_info_bytes)
        fail(path, ": tensor count ", n_tensors, " is impossible for a file of ", c.size,
             " bytes (corrupt or truncated GGUF)");
    if (n_kv > c.left() / k_min_kv_bytes)
        fail(path, ": metadata key/value count ", n_kv, " is impossible for a file of ", c.size,
             " bytes (corrupt or truncated GGUF)");

    keys_.reserve(n_kv);
    for (uint64_t i = 0; i < n_kv; ++i) {
        std::string key(c.string("metadata key"));
        GgufValue v;
        v.type = c.u32("metadata value type");
        if (v.type == GGUF_TYPE_ARRAY) {
            // data points at the first element, just past element type and count
            const uint64_t start = c.pos + 12;
            skip_array(c, key, 0, &v.elem_type, &v.count);
            v.data = c.base + start;
        } else {
            v.data = c.base + c.pos;
            skip_value(c, v.type, key, 0);
        }
        if (!kv_.emplace(key, v).second) fail(path, ": duplicate metadata key ", key);
        keys_.push_back(std::move(key));
    }

    if (const GgufValue* a = find("general.alignment")) {
        SQ_CHECK(a->type == GGUF_TYPE_UINT32, path, ": general.alignment is ", gguf_type_name(a->type),
                 ", expected UINT32");
        alignment_ = load_le<uint32_t>(a->data);
        SQ_CHECK(alignment_ > 0 && (alignment_ & (alignment_ - 1)) == 0, path, ": general.alignment ", alignment_,
                 " is not a power of two");
    }

    // The data section starts after the tensor infos; only its start is known
    // then, so offsets are checked against the file size afterwards.
    tensors_.reserve(n_tensors);
    for (uint64_t i = 0; i < n_tensors; ++i) {
        GgufTensorInfo t;
        t.name = std::string(c.string("tensor name"));
        const uint32_t n_dims = c.u32("tensor dimension count");
        SQ_CHECK(n_dims >= 1 && n_dims <= (uint32_t)k_max_dims, path, ": tensor ", t.name, " has ", n_dims,
                 " dims (expected 1 to ", k_max_dims, ")");
        uint64_t numel = 1;
        for (uint32_t d = 0; d < n_dims; ++d) {
            const uint64_t ne = c.u64("tensor dimension");
            // no dim can exceed the file size in elements: even 1-bit weights need that
            if (ne == 0 || ne > c.size * 8 || !checked_mul(numel, ne, &numel))
                fail(path, ": tensor ", t.name, " has an impossible dimension ", ne, " (dim ", d, ")");
            t.ne.push_back((int64_t)ne);
        }
        t.type = c.u32("tensor type");
        t.offset = c.u64("tensor offset");
        const GgmlTypeInfo* ti = ggml_type_info(t.type);
        if (!ti)
            fail(path, ": tensor ", t.name, " has ggml type ", ggml_type_name(t.type),
                 ", which SpecQuant cannot read (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)");
        if (t.ne[0] % ti->block_elems != 0)
            fail(path, ": tensor ", t.name, " row length ", t.ne[0], " is not a multiple of the ", ti->name,
                 " block size ", ti->block_elems);
        if (!checked_mul(numel / ti->block_elems, (uint64_t)ti->block_bytes, &t.nbytes))
            fail(path, ": tensor ", t.name, " is impossibly large");
        if (t.offset % alignment_ != 0)
            fail(path, ": tensor ", t.name, " offset ", t.offset, " is not a multiple of the alignment ",
                 alignment_);
        if (!tensor_index_.emplace(t.name, tensors_.size()).second) fail(path, ": duplicate tensor name ", t.name);
        tensors_.push_back(std::move(t));
    }

    data_offset_ = (c.pos + alignment_ - 1) / alignment_ * alignment_;
    if (!tensors_.empty() && data_offset_ > c.size)
        fail(path, ": truncated GGUF: data section would start at offset ", data_offset_, " past the end of the ",
             c.size, "-byte file");
    const uint64_t data_size = c.size >= data_offset_ ? c.size - data_offset_ : 0;
    for (const auto& t : tensors_) {
        if (t.offset > data_size || t.nbytes > data_size - t.offset)
            fail(path, ": tensor ", t.name, " data [", t.offset, ", ", t.offset + t.nbytes,
                 ") extends past the end of the data section (", data_size,
                 " bytes): truncated file or bad tensor offset");
    }
}

const GgufValue* GgufFile::find(const std::string& key) const {
    auto it = kv_.find(key);
    return it == kv_.end() ? nullptr : &it->second;
}

const GgufValue& GgufFile::need(const std::string& key) const {
    const GgufValue* v = find(key);
    if (!v) fail(path(), ": missing metadata key ", key);
    return *v;
}

int64_t GgufFile::get_int(const std::string& key) const {
    const GgufValue& v = need(key);
    SQ_CHECK(is_int_type(v.type), path(), ": metadata ", key, " is ", gguf_type_name(v.type),
             ", expected an integer");
    return int_at(v.type, v.data, path(), key);
}

int64_t GgufFile::get_int(const std::string& key, int64_t def) const { return has(key) ? get_int(key) : def; }

double GgufFile::get_float(const std::string& key) const {
    const GgufValue& v = need(key);
    return float_at(v.type, v.data, path(), key);
}

double GgufFile::get_float(const std::string& key, double def) const { return has(key) ? get_float(key) : def; }

bool GgufFile::get_bool(const std::string& key, bool def) const {
    const GgufValue* v = find(key);
    if (!v) return def;
    SQ_CHECK(v->type == GGUF_TYPE_BOOL, path(), ": metadata ", key, " is ", gguf_type_name(v->type),
             ", expected BOOL");
    return v->data[0] != 0;
}

std::string GgufFile::get_string(const std::string& key) const {
    const GgufValue& v = need(key);
    SQ_CHECK(v.type == GGUF_TYPE_STRING, path(), ": metadata ", key, " is ", gguf_type_name(v.type),
             ", expected STRING");
    // length was bounds-checked while parsing
    const uint64_t n = load_le<uint64_t>(v.data);
    return std::string((const char*)v.data + 8, n);
}

std::string GgufFile::get_string(const std::string& key, const std::string& def) const {
    return has(key) ? get_string(key) : def;
}

uint64_t GgufFile::array_length(const std::string& key) const {
    const GgufValue& v = need(key);
    SQ_CHECK(v.type == GGUF_TYPE_ARRAY, path(), ": metadata ", key, " is ", gguf_type_name(v.type),
             ", expected ARRAY");
    return v.count;
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
    const GgufValue& v = need(key);
    SQ_CHECK(v.type == GGUF_TYPE_ARRAY && v.elem_type == GGUF_TYPE_STRING, path(), ": metadata ", key,
             " is not an array of strings");
    std::vector<std::string> out;
    out.reserve(v.count);  // bounded by the file size while parsing
    const uint8_t* p = v.data;
    for (uint64_t i = 0; i < v.count; ++i) {
        const uint64_t n = load_le<uint64_t>(p);
        out.emplace_back((const char*)p + 8, n);
        p += 8 + n;
    }
    return out;
}

std::vector<float> GgufFile::get_float_array(const std::string& key) const {
    const GgufValue& v = need(key);
    SQ_CHECK(v.type == GGUF_TYPE_ARRAY && (is_float_type(v.elem_type) || is_int_type(v.elem_type)), path(),
             ": metadata ", key, " is not a numeric array");
    std::vector<float> out(v.count);
    const size_t es = scalar_size(v.elem_type);
    for (uint64_t i = 0; i < v.count; ++i) out[i] = (float)float_at(v.elem_type, v.data + i * es, path(), key);
    return out;
}

std::vector<int32_t> GgufFile::get_int_array(const std::string& key) const {
    const GgufValue& v = need(key);
    SQ_CHECK(v.type == GGUF_TYPE_ARRAY && is_int_type(v.elem_type), path(), ": metadata ", key,
             " is not an integer array");
    std::vector<int32_t> out(v.count);
    const size_t es = scalar_size(v.elem_type);
    for (uint64_t i = 0; i < v.count; ++i) {
        const int64_t x = int_at(v.elem_type, v.data + i * es, path(), key);
        SQ_CHECK(x >= INT32_MIN && x <= INT32_MAX, path(), ": metadata ", key, "[", i, "] = ", x,
                 " is out of int32 range");
        out[i] = (int32_t)x;
    }
    return out;
}

const GgufTensorInfo* GgufFile::tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::vector<float> GgufFile::tensor_f32(const GgufTensorInfo& t) const {
    const int64_t row = t.ne[0];
    const int64_t rows = t.numel() / row;
    const GgmlTypeInfo* ti = ggml_type_info(t.type);
    const uint64_t row_bytes = (uint64_t)(row / ti->block_elems) * ti->block_bytes;
    std::vector<float> out((size_t)t.numel());
    const uint8_t* src = tensor_data(t);
    // 64 rows per task: a 49152-row embedding makes 768 tasks, enough to
    // balance. Tensors under 64K weights (norms, tiny test models) stay on one
    // thread: a parallel region costs more than dequantizing them.
    const int64_t chunk = 64;
    auto run = [&](int64_t c) {
        const int64_t r1 = std::min(rows, (c + 1) * chunk);
        for (int64_t r = c * chunk; r < r1; ++r) dequantize(t.type, src + r * row_bytes, &out[(size_t)(r * row)], row);
    };
    const int64_t tasks = (rows + chunk - 1) / chunk;
    if (t.numel() < (1 << 16)) {
        for (int64_t c = 0; c < tasks; ++c) run(c);
    } else {
        parallel_for(tasks, run);
    }
    return out;
}

// ---------------------------------------------------------------------------
// GGUF -> canonical

std::string gguf_canonical_name(const std::string& n) {
    if (n == "token_embd.weight") return "embed";
    if (n == "output_norm.weight") return "final_norm";
    if (n == "output.weight") return "lm_head";
    if (n.rfind("blk.", 0) != 0) return "";
    size_t i = 4, j = i;
    while (j < n.size() && n[j] >= '0' && n[j] <= '9') ++j;
    if (j == i || j - i > 6 || j >= n.size() || n[j] != '.') return "";
    const std::string layer = n.substr(i, j - i);
    const std::string rest = n.substr(j + 1);
    static const std::pair<const char*, const char*> table[] = {
        {"attn_norm.weight", "attn_norm"}, {"attn_q.weight", "q"},     {"attn_k.weight", "k"},
        {"attn_v.weight", "v"},            {"attn_output.weight", "o"}, {"ffn_norm.weight", "ffn_norm"},
        {"ffn_gate.weight", "gate"},       {"ffn_up.weight", "up"},    {"ffn_down.weight", "down"},
        {"attn_q.bias", "q_bias"},         {"attn_k.bias", "k_bias"},  {"attn_v.bias", "v_bias"},
    };
    for (const auto& [g, c] : table)
        if (rest == g) return "layers." + std::to_string(std::stoi(layer)) + "." + c;
    return "";
}

void gguf_unpermute_qk(float* w, int64_t n_head, int64_t hd, int64_t cols) {
    SQ_CHECK(hd % 2 == 0, "gguf_unpermute_qk: head_dim ", hd, " is odd");
    const int64_t half = hd / 2;
    std::vector<float> head((size_t)(hd * cols));
    for (int64_t h = 0; h < n_head; ++h) {
        float* base = w + h * hd * cols;
        std::memcpy(head.data(), base, sizeof(float) * (size_t)(hd * cols));
        for (int64_t i = 0; i < half; ++i)
            for (int64_t j = 0; j < 2; ++j)
                std::memcpy(base + (j * half + i) * cols, head.data() + (2 * i + j) * cols,
                            sizeof(float) * (size_t)cols);
    }
}

namespace {

int int_field(const GgufFile& f, const std::string& key) {
    const int64_t v = f.get_int(key);
    SQ_CHECK(v > 0 && v <= INT32_MAX, f.path(), ": metadata ", key, " = ", v, " is out of range");
    return (int)v;
}

// LLaMA-3.1 rope scaling as llama.cpp stores it: a rope_freqs.weight tensor
// of hd/2 per-frequency divisors, not the parameters. We recover them by
// assuming the published low/high frequency factors (1, 4) and original
// context (8192), take factor = the largest divisor, and check that the
// formula reproduces the whole table; anything else is refused loudly.
void rope_llama3_from_freqs(const GgufFile& f, const GgufTensorInfo& t, ModelConfig& c) {
    SQ_CHECK(t.ne.size() == 1 && t.ne[0] == c.head_dim / 2, f.path(), ": rope_freqs.weight has shape ",
             shape_str(t.ne), ", expected [", c.head_dim / 2, "]");
    const std::vector<float> table = f.tensor_f32(t);
    float factor = 1.0f;
    for (float x : table) factor = std::max(factor, x);
    const double lo = 1.0, hi = 4.0, orig = 8192.0;
    const double lo_wavelen = orig / lo, hi_wavelen = orig / hi;
    for (int i = 0; i < c.head_dim / 2; ++i) {
        const double freq = std::pow((double)c.rope_theta, -2.0 * i / c.head_dim);
        const double wavelen = 2 * std::numbers::pi / freq;
        double expect;
        if (wavelen < hi_wavelen) expect = 1.0;
        else if (wavelen > lo_wavelen) expect = factor;
        else {
            const double smooth = (orig / wavelen - lo) / (hi - lo);
            expect = 1.0 / ((1 - smooth) / factor + smooth);
        }
        if (std::fabs(table[i] - expect) > 1e-3 * expect)
            fail(f.path(), ": rope_freqs.weight[", i, "] = ", table[i],
                 " does not match llama3 rope scaling (factor ", factor,
                 ", low 1, high 4, original context 8192); unsupported rope scaling");
    }
    if (factor > 1.0f) {
        c.rope_scaling = ROPE_SCALING_LLAMA3;
        c.rope_factor = factor;
        c.rope_low_freq_factor = (float)lo;
        c.rope_high_freq_factor = (float)hi;
        c.rope_original_max_pos = (int)orig;
    }
}

}  // namespace

ModelConfig gguf_model_config(const GgufFile& f) {
    ModelConfig c;
    const std::string arch = f.get_string("general.architecture");
    if (arch != "llama" && arch != "qwen2")
        fail(f.path(), ": unsupported architecture \"", arch, "\" (general.architecture); supported: llama, qwen2");
    c.arch = arch;
    c.qkv_bias = arch == "qwen2";
    c.name = f.get_string("general.name", "");
    const std::string a = arch + ".";
    c.n_layers = int_field(f, a + "block_count");
    c.d_model = int_field(f, a + "embedding_length");
    c.d_ff = int_field(f, a + "feed_forward_length");
    c.n_heads = int_field(f, a + "attention.head_count");
    c.n_kv_heads = f.has(a + "attention.head_count_kv") ? int_field(f, a + "attention.head_count_kv") : c.n_heads;
    c.head_dim = f.has(a + "attention.key_length") ? int_field(f, a + "attention.key_length")
                 : (c.d_model % c.n_heads == 0 ? c.d_model / c.n_heads : 0);
    if (f.has(a + "attention.value_length") && int_field(f, a + "attention.value_length") != c.head_dim)
        fail(f.path(), ": metadata ", a, "attention.value_length differs from the key length ", c.head_dim,
             "; unsupported");
    if (f.has(a + "rope.dimension_count") && int_field(f, a + "rope.dimension_count") != c.head_dim)
        fail(f.path(), ": metadata ", a, "rope.dimension_count = ", f.get_int(a + "rope.dimension_count"),
             " differs from head_dim ", c.head_dim, " (partial rotary embeddings are unsupported)");
    c.max_ctx = f.has(a + "context_length") ? int_field(f, a + "context_length") : c.max_ctx;
    c.rope_theta = (float)f.get_float(a + "rope.freq_base", 10000.0);
    c.rms_eps = (float)f.get_float(a + "attention.layer_norm_rms_epsilon");

    const std::string scaling = f.get_string(a + "rope.scaling.type", "none");
    if (scaling == "linear") {
        c.rope_scaling = ROPE_SCALING_LINEAR;
        c.rope_factor = (float)f.get_float(a + "rope.scaling.factor");
    } else if (scaling != "none") {
        fail(f.path(), ": rope scaling type \"", scaling, "\" (", a, "rope.scaling.type) is unsupported; supported: none, linear, llama3");
    } else if (f.has(a + "rope.scale_linear")) {  // older converters
        const double s = f.get_float(a + "rope.scale_linear");
        if (s != 1.0) {
            c.rope_scaling = ROPE_SCALING_LINEAR;
            c.rope_factor = (float)s;
        }
    }
    if (const GgufTensorInfo* rf = f.tensor("rope_freqs.weight")) {
        SQ_CHECK(c.rope_scaling == ROPE_SCALING_NONE, f.path(), ": both rope_freqs.weight and rope scaling ",
                 scaling, " present");
        SQ_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0, f.path(), ": head_dim ", c.head_dim, " is not positive and even");
        rope_llama3_from_freqs(f, *rf, c);
    }

    if (f.has("tokenizer.ggml.tokens")) c.vocab = (int)std::min<uint64_t>(f.array_length("tokenizer.ggml.tokens"), INT32_MAX);
    else if (f.has(a + "vocab_size")) c.vocab = int_field(f, a + "vocab_size");
    else if (const GgufTensorInfo* e = f.tensor("token_embd.weight"); e && e->ne.size() == 2)
        c.vocab = (int)std::min<int64_t>(e->ne[1], INT32_MAX);
    c.tied_embeddings = f.tensor("output.weight") == nullptr;
    return c;
}

TokenizerData gguf_tokenizer_data(const GgufFile& f) {
    TokenizerData t;
    t.source = f.path();
    if (!f.has("tokenizer.ggml.model")) return t;  // no tokenizer in this file
    const std::string model = f.get_string("tokenizer.ggml.model");
    if (model == "gpt2") t.kind = TOKENIZER_BPE_BYTE;
    else if (model == "llama") t.kind = TOKENIZER_SPM_BPE;
    else fail(f.path(), ": tokenizer model \"", model, "\" (tokenizer.ggml.model) is unsupported; supported: gpt2, llama");
    const bool spm = t.kind == TOKENIZER_SPM_BPE;

    // llama.cpp's pre-tokenizer names -> ours
    std::string pre = f.get_string("tokenizer.ggml.pre", "gpt2");
    if (pre == "llama-bpe" || pre == "llama3") pre = "llama3";
    else if (pre == "default" || pre == "gpt-2") pre = "gpt2";
    t.pre = pre;

    t.tokens = f.get_string_array("tokenizer.ggml.tokens");
    const size_t n = t.tokens.size();
    if (f.has("tokenizer.ggml.scores")) {
        t.scores = f.get_float_array("tokenizer.ggml.scores");
        SQ_CHECK(t.scores.size() == n, f.path(), ": tokenizer.ggml.scores has ", t.scores.size(), " entries for ", n,
                 " tokens");
    }
    if (f.has("tokenizer.ggml.token_type")) {
        t.token_types = f.get_int_array("tokenizer.ggml.token_type");
        SQ_CHECK(t.token_types.size() == n, f.path(), ": tokenizer.ggml.token_type has ", t.token_types.size(),
                 " entries for ", n, " tokens");
    }
    if (f.has("tokenizer.ggml.merges")) {
        const auto merges = f.get_string_array("tokenizer.ggml.merges");
        t.merges.reserve(merges.size());
        for (size_t i = 0; i < merges.size(); ++i) {
            const size_t sp = merges[i].find(' ');
            SQ_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < merges[i].size(), f.path(),
                     ": tokenizer.ggml.merges[", i, "] = \"", merges[i], "\" is not two space-separated tokens");
            t.merges.emplace_back(merges[i].substr(0, sp), merges[i].substr(sp + 1));
        }
    }
    auto id = [&](const char* key) -> int {
        if (!f.has(key)) return -1;
        const int64_t v = f.get_int(key);
        SQ_CHECK(v >= 0 && (uint64_t)v < n, f.path(), ": metadata ", key, " = ", v, " is not a token id (", n,
                 " tokens)");
        return (int)v;
    };
    t.bos = id("tokenizer.ggml.bos_token_id");
    t.eos = id("tokenizer.ggml.eos_token_id");
    t.unk = id("tokenizer.ggml.unknown_token_id");
    t.pad = id("tokenizer.ggml.padding_token_id");
    // llama.cpp's defaults: SPM adds BOS and a space prefix, byte-level BPE neither
    t.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", spm);
    t.add_eos = f.get_bool("tokenizer.ggml.add_eos_token", false);
    t.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix", spm);
    return t;
}

Checkpoint gguf_checkpoint_open(const std::string& path) {
    auto file = std::make_shared<GgufFile>(path);
    Checkpoint ck;
    ck.path = path;
    ck.format = "gguf";
    ck.config = gguf_model_config(*file);
    ck.tokenizer = gguf_tokenizer_data(*file);
    ck.keep_alive.push_back(file);
    const ModelConfig& cfg = ck.config;
    const bool permuted = cfg.arch == "llama";  // llama.cpp's convert permutes q/k only for llama

    for (const GgufTensorInfo& t : file->tensors()) {
        const std::string name = gguf_canonical_name(t.name);
        if (name.empty()) continue;
        if (name.rfind("layers.", 0) == 0) {
            const int layer = std::stoi(name.substr(7));
            SQ_CHECK(layer < cfg.n_layers, path, ": tensor ", t.name, " belongs to block ", layer, " but ",
                     cfg.arch, ".block_count is ", cfg.n_layers);
        }
        if (name.size() > 7 && name.compare(name.size() - 7, 7, "_bias") == 0 && !cfg.qkv_bias)
            fail(path, ": tensor ", t.name, ": q/k/v biases are only supported for arch qwen2");
        TensorSource src;
        src.shape.assign(t.ne.rbegin(), t.ne.rend());  // GGUF lists dims innermost first
        src.dtype = ggml_type_name(t.type);
        src.origin = path + ": " + t.name;
        // heads whose rows llama.cpp interleaved: q -> n_heads, k -> n_kv_heads
        int64_t perm_heads = 0;
        const auto ends = [&](const char* s) {
            const size_t l = std::strlen(s);
            return name.size() >= l && name.compare(name.size() - l, l, s) == 0;
        };
        if (permuted && ends(".q")) perm_heads = cfg.n_heads;
        if (permuted && ends(".k")) perm_heads = cfg.n_kv_heads;
        const GgufTensorInfo* info = &t;  // stable: tensors() never changes after parsing
        const int64_t hd = cfg.head_dim;
        src.load = [file, info, perm_heads, hd]() {
            TensorF32 out;
            out.shape.assign(info->ne.rbegin(), info->ne.rend());
            out.data = file->tensor_f32(*info);
            if (perm_heads > 0) {
                const int64_t rows = out.shape[0], cols = out.numel() / rows;
                SQ_CHECK(rows == perm_heads * hd, file->path(), ": tensor ", info->name, " has ", rows,
                         " rows, expected ", perm_heads, " heads x ", hd);
                gguf_unpermute_qk(out.data.data(), perm_heads, hd, cols);
            }
            return out;
        };
        ck.tensors.emplace(name, std::move(src));
    }
    return ck;
}

}  // namespace sq
