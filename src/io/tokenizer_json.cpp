// Hugging Face tokenizer.json (+ optional sibling tokenizer_config.json) ->
// TokenizerData. Only BPE models; the pipeline must be one we reproduce exactly:
//   byte-level: pre_tokenizer ByteLevel(use_regex)               -> pre "gpt2"
//               Sequence[Digits(individual), ByteLevel(use_regex)] -> "smollm"
//               Sequence[Split(Regex R, Isolated), ByteLevel]    -> R must be
//               one of pretokenizer_regex("gpt2" | "llama3" | "qwen2")
//   SPM (LLaMA-1/2): no pre-tokenizer, normalizer Replace(" ", "▁") with an
//               optional Prepend("▁"), byte_fallback.
// Anything else fails with the file and the field, never a silent guess.
//
// Test: build/specquant_tests --gtest_filter='Tokenizer*'
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "io/tokenizer.h"

namespace sq {

namespace {

using json = nlohmann::json;

json read_json(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    SQ_CHECK(f, path, ": cannot open");
    std::stringstream ss;
    ss << f.rdbuf();
    try {
        return json::parse(ss.str());
    } catch (const json::exception& e) {
        fail(path, ": not valid JSON: ", e.what());
    }
}

const json* find(const json& j, const char* key) {
    if (!j.is_object()) return nullptr;
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
}

const json& need(const json& j, const char* key, const std::string& path, const std::string& field) {
    const json* v = find(j, key);
    SQ_CHECK(v, path, ": missing field ", field);
    return *v;
}

std::string type_of(const json& j) {
    const json* t = find(j, "type");
    return t && t->is_string() ? t->get<std::string>() : "";
}

// A special token in tokenizer_config.json: "<s>" or {"content": "<s>", ...}.
std::string config_token(const json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (const json* c = find(v, "content"); c && c->is_string()) return c->get<std::string>();
    return "";
}

struct Parser {
    const std::string& path;
    TokenizerData d;
    std::unordered_map<std::string, int> ids;  // all tokens incl. added ones

    int id_of(const std::string& text, const std::string& where, const std::string& field) const {
        auto it = ids.find(text);
        SQ_CHECK(it != ids.end(), where, ": ", field, " '", text, "' is not a token of ", path);
        return it->second;
    }
    int try_id(const std::string& text) const {
        auto it = ids.find(text);
        return it == ids.end() ? -1 : it->second;
    }

    void vocab(const json& model) {
        const json& v = need(model, "vocab", path, "model.vocab");
        SQ_CHECK(v.is_object(), path, ": model.vocab is not an object");
        int n = 0;
        for (auto it = v.begin(); it != v.end(); ++it) {
            SQ_CHECK(it->is_number_integer() && it->get<int64_t>() >= 0 && it->get<int64_t>() < (1 << 24), path,
                     ": model.vocab['", it.key(), "'] is not a token id");
            n = std::max(n, it->get<int>() + 1);
        }
        d.tokens.assign(n, "");
        d.token_types.assign(n, TOKEN_UNUSED);  // ids no entry names stay unused
        for (auto it = v.begin(); it != v.end(); ++it) {
            const int id = it->get<int>();
            SQ_CHECK(d.token_types[id] == TOKEN_UNUSED, path, ": model.vocab gives id ", id, " twice");
            d.tokens[id] = it.key();
            d.token_types[id] = TOKEN_NORMAL;
        }
    }

    void added_tokens(const json& j) {
        const json* a = find(j, "added_tokens");
        if (!a) return;
        SQ_CHECK(a->is_array(), path, ": added_tokens is not an array");
        for (size_t k = 0; k < a->size(); ++k) {
            const json& t = (*a)[k];
            const std::string field = str("added_tokens[", k, "]");
            const json& id_j = need(t, "id", path, field + ".id");
            const json& content = need(t, "content", path, field + ".content");
            SQ_CHECK(id_j.is_number_integer() && id_j.get<int64_t>() >= 0 && id_j.get<int64_t>() < (1 << 24) &&
                         content.is_string(),
                     path, ": ", field, " needs an integer id and a string content");
            const int id = id_j.get<int>();
            if (id >= static_cast<int>(d.tokens.size())) {
                d.tokens.resize(id + 1);
                d.token_types.resize(id + 1, TOKEN_UNUSED);
            }
            SQ_CHECK(d.token_types[id] == TOKEN_UNUSED || d.tokens[id] == content.get<std::string>(), path, ": ",
                     field, " '", content.get<std::string>(), "' has id ", id, " which model.vocab gives to '",
                     d.tokens[id], "'");
            d.tokens[id] = content.get<std::string>();
            const json* special = find(t, "special");
            d.token_types[id] = special && special->is_boolean() && special->get<bool>() ? TOKEN_CONTROL : TOKEN_USER_DEFINED;
        }
    }

    void merges(const json& model) {
        const json* m = find(model, "merges");
        if (!m) return;
        SQ_CHECK(m->is_array(), path, ": model.merges is not an array");
        d.merges.reserve(m->size());
        for (size_t k = 0; k < m->size(); ++k) {
            const json& e = (*m)[k];
            if (e.is_string()) {
                // "a b": tokens never hold ' ' in the vocabularies this format was made for.
                const std::string s = e.get<std::string>();
                const size_t sp = s.find(' ');
                SQ_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, path, ": model.merges[",
                         k, "] '", s, "' is not two tokens separated by one space");
                d.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
            } else {
                SQ_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(), path,
                         ": model.merges[", k, "] is neither \"a b\" nor [\"a\", \"b\"]");
                d.merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
            }
        }
    }

    // Which of our byte-level pre-tokenizers the pipeline is; "" if not byte-level.
    std::string byte_level_pre(const json* pre) {
        if (!pre) return "";
        auto byte_level = [&](const json& p, const std::string& field, bool want_regex) {
            const json* r = find(p, "use_regex");
            const bool use_regex = !r || r->get<bool>();  // HF default: true
            const json* aps = find(p, "add_prefix_space");
            SQ_CHECK(!aps || !aps->get<bool>(), path, ": ", field, ".add_prefix_space = true is not supported");
            SQ_CHECK(use_regex == want_regex, path, ": ", field, ".use_regex = ", use_regex ? "true" : "false",
                     " is not supported here");
        };
        const std::string type = type_of(*pre);
        if (type == "ByteLevel") {
            byte_level(*pre, "pre_tokenizer", true);
            return "gpt2";
        }
        if (type != "Sequence") {
            SQ_CHECK(type.empty() || type == "Metaspace" || type == "Split" || type == "Digits", path,
                     ": pre_tokenizer.type '", type, "' is not supported");
            return "";
        }
        const json& seq = need(*pre, "pretokenizers", path, "pre_tokenizer.pretokenizers");
        SQ_CHECK(seq.is_array(), path, ": pre_tokenizer.pretokenizers is not an array");
        const bool ends_byte_level = !seq.empty() && type_of(seq.back()) == "ByteLevel";
        if (!ends_byte_level) return "";
        SQ_CHECK(seq.size() == 2, path, ": pre_tokenizer.pretokenizers: ", seq.size(),
                 " steps; supported are [Digits, ByteLevel] and [Split, ByteLevel]");
        const std::string first = type_of(seq[0]);
        if (first == "Digits") {
            const json* ind = find(seq[0], "individual_digits");
            SQ_CHECK(ind && ind->get<bool>(), path,
                     ": pre_tokenizer.pretokenizers[0]: Digits without individual_digits is not supported");
            byte_level(seq[1], "pre_tokenizer.pretokenizers[1]", true);
            return "smollm";
        }
        SQ_CHECK(first == "Split", path, ": pre_tokenizer.pretokenizers[0].type '", first,
                 "' is not supported before ByteLevel");
        byte_level(seq[1], "pre_tokenizer.pretokenizers[1]", false);
        const json& pat = need(seq[0], "pattern", path, "pre_tokenizer.pretokenizers[0].pattern");
        const json* re = find(pat, "Regex");
        SQ_CHECK(re && re->is_string(), path, ": pre_tokenizer.pretokenizers[0].pattern has no Regex");
        const json* behavior = find(seq[0], "behavior");
        const json* invert = find(seq[0], "invert");
        SQ_CHECK((!behavior || *behavior == "Isolated") && (!invert || !invert->get<bool>()), path,
                 ": pre_tokenizer.pretokenizers[0]: only behavior Isolated, invert false is supported");
        const std::string regex = re->get<std::string>();
        for (const char* name : {"gpt2", "llama3", "qwen2"})
            if (regex == pretokenizer_regex(name)) return name;
        fail(path, ": pre_tokenizer.pretokenizers[0].pattern.Regex is not a known pre-tokenizer "
                   "(GPT-2, LLaMA-3, Qwen2): ",
             regex);
    }

    // SPM normalizer: Replace(" ", "▁") and optionally Prepend("▁"), alone or in a Sequence.
    bool spm_normalizer(const json* norm) {
        SQ_CHECK(norm, path, ": no byte-level pre-tokenizer and no normalizer: not a tokenizer we support");
        std::vector<const json*> steps;
        if (type_of(*norm) == "Sequence") {
            const json& seq = need(*norm, "normalizers", path, "normalizer.normalizers");
            for (const json& s : seq) steps.push_back(&s);
        } else {
            steps.push_back(norm);
        }
        bool replace = false;
        for (const json* s : steps) {
            const std::string type = type_of(*s);
            if (type == "Prepend") {
                const json* p = find(*s, "prepend");
                SQ_CHECK(p && *p == "\xE2\x96\x81", path, ": normalizer Prepend must prepend \"\xE2\x96\x81\"");
                d.add_space_prefix = true;
            } else if (type == "Replace") {
                const json* pat = find(*s, "pattern");
                const json* lit = pat ? find(*pat, "String") : nullptr;
                const json* content = find(*s, "content");
                SQ_CHECK(lit && *lit == " " && content && *content == "\xE2\x96\x81", path,
                         ": normalizer Replace must replace \" \" by \"\xE2\x96\x81\"");
                replace = true;
            } else {
                fail(path, ": normalizer.type '", type, "' is not supported for SentencePiece-style BPE");
            }
        }
        SQ_CHECK(replace, path, ": normalizer has no Replace(\" \", \"\xE2\x96\x81\")");
        return true;
    }

    // add_bos/add_eos and the tokens they name from a TemplateProcessing "single".
    void template_processing(const json* post) {
        if (!post) return;
        if (type_of(*post) == "Sequence") {
            if (const json* ps = find(*post, "processors"))
                for (const json& p : *ps) template_processing(&p);
            return;
        }
        if (type_of(*post) != "TemplateProcessing") return;
        const json* single = find(*post, "single");
        if (!single || !single->is_array() || single->empty()) return;
        auto special = [&](const json& item) -> int {
            const json* st = find(item, "SpecialToken");
            const json* id = st ? find(*st, "id") : nullptr;
            return id && id->is_string() ? id_of(id->get<std::string>(), path, "post_processor.single") : -1;
        };
        if (const int b = special(single->front()); b >= 0) d.bos = b, d.add_bos = true;
        if (single->size() > 1)
            if (const int e = special(single->back()); e >= 0) d.eos = e, d.add_eos = true;
    }

    void config(const std::string& cfg_path) {
        const json c = read_json(cfg_path);
        auto token = [&](const char* key, int& id, bool must_exist) {
            if (const json* v = find(c, key)) {
                const std::string t = config_token(*v);
                if (t.empty()) return;
                if (must_exist)
                    id = id_of(t, cfg_path, key);
                else if (const int i = try_id(t); i >= 0)
                    id = i;
            }
        };
        token("bos_token", d.bos, true);
        token("eos_token", d.eos, true);
        token("pad_token", d.pad, false);
        if (const json* v = find(c, "add_bos_token"); v && v->is_boolean()) d.add_bos = v->get<bool>();
        if (const json* v = find(c, "add_eos_token"); v && v->is_boolean()) d.add_eos = v->get<bool>();
    }
};

TokenizerData parse_tokenizer_json(const std::string& path) {
    const json j = read_json(path);
    Parser p{path, {}, {}};
    TokenizerData& d = p.d;
    d.source = path;

    const json& model = need(j, "model", path, "model");
    const std::string type = type_of(model);
    SQ_CHECK(type == "BPE" || (type.empty() && find(model, "merges")), path, ": model.type is '", type,
             "'; only BPE tokenizers are supported");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
        const json* v = find(model, key);
        SQ_CHECK(!v || (v->is_string() && v->get<std::string>().empty()), path, ": model.", key,
                 " is not supported");
    }
    const json* dropout = find(model, "dropout");
    SQ_CHECK(!dropout || dropout->get<double>() == 0.0, path, ": model.dropout is set; encoding would be random");
    p.vocab(model);
    p.added_tokens(j);
    p.merges(model);
    for (size_t i = 0; i < d.tokens.size(); ++i)
        if (d.token_types[i] != TOKEN_UNUSED) p.ids.emplace(d.tokens[i], static_cast<int>(i));
    if (const json* ig = find(model, "ignore_merges"); ig && ig->is_boolean()) d.ignore_merges = ig->get<bool>();

    const std::string pre = p.byte_level_pre(find(j, "pre_tokenizer"));
    const json* norm = find(j, "normalizer");
    if (!pre.empty()) {
        d.kind = TOKENIZER_BPE_BYTE;
        d.pre = pre;
        // Qwen2 ships an NFC normalizer: not applied here (we carry no Unicode
        // tables); text already in NFC, which is nearly all text, tokenizes the same.
        SQ_CHECK(!norm || type_of(*norm) == "NFC", path, ": normalizer.type '", type_of(*norm),
                 "' is not supported with a byte-level pre-tokenizer");
    } else {
        const json* pt = find(j, "pre_tokenizer");
        SQ_CHECK(!pt, path, ": pre_tokenizer.type '", type_of(*pt),
                 "' is not supported (SentencePiece-style BPE needs no pre-tokenizer)");
        d.kind = TOKENIZER_SPM_BPE;
        p.spm_normalizer(norm);
        for (size_t i = 0; i < d.tokens.size(); ++i) {
            const std::string& t = d.tokens[i];
            if (d.token_types[i] == TOKEN_NORMAL && t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>')
                d.token_types[i] = TOKEN_BYTE;
        }
    }
    if (const json* unk = find(model, "unk_token"); unk && unk->is_string()) {
        d.unk = p.id_of(unk->get<std::string>(), path, "model.unk_token");
        d.token_types[d.unk] = TOKEN_UNKNOWN;
    }

    p.template_processing(find(j, "post_processor"));
    // Usual names when neither the template nor the config says.
    auto first_of = [&](std::initializer_list<const char*> names) {
        for (const char* n : names)
            if (const int id = p.try_id(n); id >= 0 && d.token_types[id] == TOKEN_CONTROL) return id;
        return -1;
    };
    if (d.bos < 0) d.bos = first_of({"<s>", "<|begin_of_text|>", "<|endoftext|>"});
    if (d.eos < 0) d.eos = first_of({"</s>", "<|end_of_text|>", "<|endoftext|>"});

    const std::filesystem::path cfg = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
    if (std::filesystem::exists(cfg)) p.config(cfg.string());
    return std::move(p.d);
}

}  // namespace

TokenizerData tokenizer_data_from_json(const std::string& path) {
    try {
        return parse_tokenizer_json(path);
    } catch (const nlohmann::json::exception& e) {  // a field of the wrong JSON type
        fail(path, ": ", e.what());
    }
}

}  // namespace sq
