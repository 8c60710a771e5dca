// BPE tokenizers built from TokenizerData (see tokenizer.h).
//
// encode(text):
//   1. check UTF-8;
//   2. split out special/added tokens (CONTROL, USER_DEFINED, UNKNOWN types),
//      leftmost-longest exact match, as HF `tokenizers` does;
//   3. byte-level: pre-tokenize each piece with the model's regex (PCRE2, JIT),
//      BPE each word on its raw bytes (a byte's initial token is the GPT-2
//      alphabet letter that spells it), cache word -> ids;
//      SPM: normalize the piece ("▁" prefix, ' ' -> "▁") and BPE it as one word
//      (HF's LLaMA-2 tokenizer.json has no pre-tokenizer), unknown characters
//      fall back to <0xXX> byte tokens.
//   4. BPE = repeatedly merge the adjacent pair of lowest merge rank (or, with
//      GGUF scores and no merges, highest score of the merged token), leftmost
//      first, with a heap and lazy invalidation: O(n log n) per word.
//
// Test: build/specquant_tests --gtest_filter='Tokenizer*'
#define PCRE2_CODE_UNIT_WIDTH 8
#include "io/tokenizer.h"

#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "core/error.h"
#include "io/unicode.h"

namespace sq {

namespace {

// The published regexes: GPT-2 (openai/gpt-2 encoder.py, also HF ByteLevel's
// use_regex), LLaMA-3 (= tiktoken cl100k_base, HF Split in Meta-Llama-3's
// tokenizer.json) and Qwen2 (LLaMA-3's with single digits).
const char* const RE_GPT2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const RE_LLAMA3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const RE_QWEN2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// SmolLM's HF pre-tokenizer starts with Digits(individual_digits=true), which
// isolates every char with Rust's char::is_numeric (general category N).
const char* const RE_DIGIT = R"(\p{N})";

const char* const SPM_SPACE = "\xE2\x96\x81";  // "▁" U+2581

struct StrHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StrMap = std::unordered_map<std::string, V, StrHash, std::equal_to<>>;

struct Regex {
    pcre2_code* code = nullptr;
    Regex() = default;
    Regex(const char* pattern, const std::string& source) {
        int err = 0;
        PCRE2_SIZE off = 0;
        code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err,
                             &off, nullptr);
        if (!code) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(err, msg, sizeof msg);
            fail(source, ": cannot compile pre-tokenizer regex at offset ", off, ": ", reinterpret_cast<char*>(msg));
        }
        pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // no JIT on this CPU: interpreter, same results
    }
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;
    ~Regex() { pcre2_code_free(code); }
};

struct MatchData {
    pcre2_match_data* md;
    explicit MatchData(const Regex& re) : md(pcre2_match_data_create_from_pattern(re.code, nullptr)) {
        SQ_CHECK(md, "tokenizer: out of memory for PCRE2 match data");
    }
    ~MatchData() { pcre2_match_data_free(md); }
};

// Calls f(begin, end, matched) for every match of re in s[0, n) and for every
// gap between matches (HF Split "Isolated": nothing is dropped). s is valid UTF-8.
template <class F>
void regex_split(const Regex& re, pcre2_match_data* md, const char* s, size_t n, F&& f) {
    size_t pos = 0;
    while (pos < n) {
        const int rc = pcre2_match(re.code, reinterpret_cast<PCRE2_SPTR>(s), n, pos, PCRE2_NO_UTF_CHECK, md, nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            fail("tokenizer: pre-tokenizer regex failed: ", reinterpret_cast<char*>(msg));
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        size_t b = ov[0], e = ov[1];
        if (e == b) e = b + utf8_len(static_cast<uint8_t>(s[b]));  // none of our patterns matches empty
        if (b > pos) f(pos, b, false);
        f(b, e, true);
        pos = e;
    }
    if (pos < n) f(pos, n, false);
}

// One symbol of a word being merged: a span of the word and its token id.
struct Sym {
    int id;
    int prev, next;
    uint32_t start, len;  // len 0: merged into its left neighbour
};

struct Cand {
    double rank;  // lower merges first
    int left, right, left_id, right_id, new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
};

// pair(l, r, rank, new_id) -> bool: whether l and r merge, with which priority.
template <class Pair>
void bpe_merge(std::vector<Sym>& s, Pair&& pair) {
    std::vector<Cand> heap;
    auto push = [&](int l) {
        const int r = s[l].next;
        if (r < 0) return;
        Cand c;
        if (!pair(s[l], s[r], c.rank, c.new_id)) return;
        c.left = l, c.right = r, c.left_id = s[l].id, c.right_id = s[r].id;
        heap.push_back(c);
        std::push_heap(heap.begin(), heap.end(), std::greater<>());
    };
    for (int i = 0; i + 1 < static_cast<int>(s.size()); ++i) push(i);
    while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end(), std::greater<>());
        const Cand c = heap.back();
        heap.pop_back();
        Sym& l = s[c.left];
        Sym& r = s[c.right];
        if (l.len == 0 || r.len == 0 || l.next != c.right || l.id != c.left_id || r.id != c.right_id) continue;
        l.id = c.new_id;
        l.len += r.len;
        l.next = r.next;
        if (r.next >= 0) s[r.next].prev = c.left;
        r.len = 0;
        if (l.prev >= 0) push(l.prev);
        push(c.left);
    }
}

// "<0x41>" -> 0x41; -1 for any other text.
int byte_token_value(const std::string& t) {
    auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; };
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    const int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

uint64_t pair_key(int a, int b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

}  // namespace

const char* pretokenizer_regex(const std::string& pre) {
    if (pre == "gpt2" || pre == "smollm") return RE_GPT2;
    if (pre == "llama3" || pre == "llama-bpe") return RE_LLAMA3;
    if (pre == "qwen2") return RE_QWEN2;
    return nullptr;
}

// Strings of a vocabulary in one arena: string i is arena[off[i], off[i + 1]).
// SmolLM2's 49152 tokens: ~0.6 MB, where a std::vector<std::string> plus a
// node-based hash map of them took ~5 MB (32 B per string, ~60 B per node,
// heap headers).
struct StrTable {
    std::string arena;
    std::vector<uint32_t> off{0};
    void add(std::string_view s) {
        arena.append(s);
        SQ_CHECK(arena.size() < UINT32_MAX, "tokenizer: vocabulary text over 4 GB");
        off.push_back(static_cast<uint32_t>(arena.size()));
    }
    std::string_view at(int i) const { return {arena.data() + off[i], off[i + 1] - off[i]}; }
    void shrink() {
        arena.shrink_to_fit();
        off.shrink_to_fit();
    }
};

// Ids sorted by their string in a StrTable (ties by id): lookup by binary
// search, 4 B per entry. find() returns the smallest id spelled s, as the hash
// map did ("first id wins on duplicates"), or -1.
struct StrIndex {
    std::vector<int32_t> ids;
    template <class Keep>
    void build(const StrTable& t, int n, Keep&& keep) {
        ids.clear();
        for (int i = 0; i < n; ++i)
            if (keep(i)) ids.push_back(i);
        std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return t.at(a) < t.at(b); });
        ids.shrink_to_fit();
    }
    int find(const StrTable& t, std::string_view s) const {
        auto it = std::lower_bound(ids.begin(), ids.end(), s, [&](int id, std::string_view v) { return t.at(id) < v; });
        return it != ids.end() && t.at(*it) == s ? *it : -1;
    }
};

struct Tokenizer::Impl {
    // Everything of the TokenizerData but the per-token arrays, which live in
    // the compact tables below (d.tokens, d.merges, d.token_types are empty;
    // data() rebuilds them). d.scores is kept (SPM only; 4 B per token).
    TokenizerData d;
    int n = 0;                            // vocabulary size
    StrTable tok_text;                    // id -> token text
    StrIndex vocab;                       // token text -> id
    StrTable bytes;                       // id -> what decode emits for it
    std::vector<uint8_t> types;           // TokenType per id, or empty (all normal)
    std::array<int, 256> byte_id{};       // byte-level: initial token of each byte; SPM: <0xXX>
    // Merges in rank order (left id, right id, merged id), and the ranks
    // sorted by pair key (left << 32 | right) for lookup, the lowest rank of a
    // repeated pair first: 16 B per merge (the hash map of pairs: ~40).
    struct Merge {
        int32_t left, right, id;
    };
    std::vector<Merge> merge_list;
    std::vector<int32_t> merge_index;
    bool use_scores = false;                      // SPM from GGUF: no merges, scores decide
    bool ignore_merges = false;
    StrIndex raw_vocab;                           // ignore_merges: raw bytes (in `bytes` / `text`) -> id
    std::array<std::vector<int>, 256> specials;   // by first byte, longest first
    bool digits_first = false;                    // smollm
    std::optional<Regex> re, re_digit;

    mutable std::mutex cache_mu;
    mutable StrMap<std::vector<int>> cache;  // byte-level word (raw bytes) -> ids

    bool byte_level() const { return d.kind == TOKENIZER_BPE_BYTE; }
    TokenType type(int id) const { return types.empty() ? TOKEN_NORMAL : static_cast<TokenType>(types[id]); }
    std::string_view token(int id) const { return tok_text.at(id); }
    int find_token(std::string_view t) const { return vocab.find(tok_text, t); }
    // The merge of the pair (a, b): rank and merged id, or false.
    bool find_merge(int a, int b, int& rank, int& id) const {
        const uint64_t key = pair_key(a, b);
        auto key_of = [&](int r) { return pair_key(merge_list[r].left, merge_list[r].right); };
        auto it = std::lower_bound(merge_index.begin(), merge_index.end(), key,
                                   [&](int r, uint64_t k) { return key_of(r) < k; });
        if (it == merge_index.end() || key_of(*it) != key) return false;
        rank = *it, id = merge_list[*it].id;
        return true;
    }

    explicit Impl(TokenizerData data) : d(std::move(data)) {
        const std::string& src = d.source;
        n = static_cast<int>(d.tokens.size());
        SQ_CHECK(n > 0, src, ": tokenizer has no tokens");
        SQ_CHECK(d.token_types.empty() || static_cast<int>(d.token_types.size()) == n, src, ": ",
                 d.token_types.size(), " token types for ", n, " tokens");
        SQ_CHECK(d.scores.empty() || static_cast<int>(d.scores.size()) == n, src, ": ", d.scores.size(),
                 " scores for ", n, " tokens");
        for (int* id : {&d.bos, &d.eos, &d.unk, &d.pad})
            SQ_CHECK(*id < n, src, ": special token id ", *id, " out of range (", n, " tokens)");
        if (!d.token_types.empty()) {
            types.resize(n);
            for (int i = 0; i < n; ++i) {
                SQ_CHECK(d.token_types[i] >= 0 && d.token_types[i] <= 255, src, ": token ", i, " has type ",
                         d.token_types[i], " (0..255 expected)");
                types[i] = static_cast<uint8_t>(d.token_types[i]);
            }
        }
        std::vector<int>().swap(d.token_types);
        tok_text.arena.reserve([&] {
            size_t s = 0;
            for (const auto& t : d.tokens) s += t.size();
            return s;
        }());
        tok_text.off.reserve(n + 1);
        for (const auto& t : d.tokens) tok_text.add(t);
        std::vector<std::string>().swap(d.tokens);
        vocab.build(tok_text, n, [](int) { return true; });

        // What each token decodes to.
        bytes.off.reserve(n + 1);
        std::string b;
        for (int i = 0; i < n; ++i) {
            const std::string_view t = token(i);
            const TokenType ty = type(i);
            b.clear();
            if (ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED || ty == TOKEN_UNKNOWN) {
                b = t;
            } else if (byte_level()) {
                if (!gpt2_text_to_bytes(std::string(t), b)) b = t;
            } else if (const int v = byte_token_value(std::string(t)); v >= 0) {
                b = static_cast<char>(v);
            } else {
                for (size_t p = 0; p < t.size();) {
                    if (t.compare(p, 3, SPM_SPACE) == 0) {
                        b += ' ';
                        p += 3;
                    } else {
                        b += t[p++];
                    }
                }
            }
            bytes.add(b);
        }
        bytes.shrink();

        // Initial tokens of bytes.
        byte_id.fill(-1);
        for (int c = 0; c < 256; ++c) {
            std::string t;
            if (byte_level()) {
                utf8_append(t, gpt2_byte_to_codepoint(static_cast<uint8_t>(c)));
            } else {
                static const char hex[] = "0123456789ABCDEF";
                t = std::string("<0x") + hex[c >> 4] + hex[c & 15] + ">";
            }
            byte_id[c] = find_token(t);
        }

        // Merges in rank order; the first occurrence of a pair wins.
        merge_list.reserve(d.merges.size());
        for (size_t r = 0; r < d.merges.size(); ++r) {
            const auto& [a, b2] = d.merges[r];
            const int ia = find_token(a), ib = find_token(b2), im = find_token(a + b2);
            SQ_CHECK(ia >= 0 && ib >= 0 && im >= 0, src, ": merge ", r, " '", a, " ", b2,
                     "' uses a token that is not in the vocabulary");
            merge_list.push_back(Merge{ia, ib, im});
        }
        const bool has_merges = !d.merges.empty();
        std::vector<std::pair<std::string, std::string>>().swap(d.merges);
        merge_index.resize(merge_list.size());
        for (size_t r = 0; r < merge_list.size(); ++r) merge_index[r] = static_cast<int32_t>(r);
        std::stable_sort(merge_index.begin(), merge_index.end(), [&](int x, int y) {
            return pair_key(merge_list[x].left, merge_list[x].right) < pair_key(merge_list[y].left, merge_list[y].right);
        });
        use_scores = !byte_level() && !has_merges;
        SQ_CHECK(!use_scores || !d.scores.empty(), src, ": SentencePiece tokenizer has neither merges nor scores");
        SQ_CHECK(!byte_level() || has_merges, src, ": byte-level BPE tokenizer has no merges");

        // Tokens matched verbatim in the text.
        for (int i = 0; i < n; ++i) {
            const TokenType ty = type(i);
            if ((ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED || ty == TOKEN_UNKNOWN) && !token(i).empty())
                specials[static_cast<uint8_t>(token(i)[0])].push_back(i);
        }
        for (auto& v : specials)
            std::stable_sort(v.begin(), v.end(), [&](int x, int y) { return token(x).size() > token(y).size(); });

        if (byte_level()) {
            const char* pattern = pretokenizer_regex(d.pre);
            SQ_CHECK(pattern, src, ": unknown byte-level pre-tokenizer '", d.pre,
                     "' (tokenizer.ggml.pre); supported: gpt2, llama3 (llama-bpe), qwen2, smollm");
            re.emplace(pattern, src);
            digits_first = d.pre == "smollm";
            if (digits_first) re_digit.emplace(RE_DIGIT, src);
            ignore_merges = d.ignore_merges || d.pre == "llama3" || d.pre == "llama-bpe";
        } else {
            ignore_merges = d.ignore_merges;
        }
        if (ignore_merges)
            raw_vocab.build(byte_level() ? bytes : tok_text, n, [&](int i) { return type(i) == TOKEN_NORMAL; });
    }
    int find_raw(std::string_view w) const { return raw_vocab.find(byte_level() ? bytes : tok_text, w); }

    // The TokenizerData this was built from (tests, saving).
    TokenizerData data() const {
        TokenizerData o = d;
        o.tokens.reserve(n);
        for (int i = 0; i < n; ++i) o.tokens.emplace_back(token(i));
        o.token_types.assign(types.begin(), types.end());
        o.merges.reserve(merge_list.size());
        for (const Merge& m : merge_list) o.merges.emplace_back(std::string(token(m.left)), std::string(token(m.right)));
        return o;
    }

    // ---- byte-level ------------------------------------------------------------

    void bpe_bytes(std::string_view w, std::vector<int>& out) const {
        if (ignore_merges) {
            if (const int id = find_raw(w); id >= 0) {
                out.push_back(id);
                return;
            }
        }
        std::vector<Sym> s(w.size());
        for (size_t i = 0; i < w.size(); ++i) {
            int id = byte_id[static_cast<uint8_t>(w[i])];
            if (id < 0) id = d.unk;
            SQ_CHECK(id >= 0, d.source, ": byte 0x", std::hex, static_cast<int>(static_cast<uint8_t>(w[i])),
                     " has no token and there is no unknown token");
            s[i] = Sym{id, static_cast<int>(i) - 1, i + 1 < w.size() ? static_cast<int>(i) + 1 : -1,
                       static_cast<uint32_t>(i), 1};
        }
        bpe_merge(s, [&](const Sym& l, const Sym& r, double& rank, int& id) {
            int rk;
            if (!find_merge(l.id, r.id, rk, id)) return false;
            rank = rk;
            return true;
        });
        for (int i = 0; i >= 0; i = s[i].next) out.push_back(s[i].id);
    }

    void word_bytes(std::string_view w, std::vector<int>& out) const {
        {
            std::lock_guard<std::mutex> lock(cache_mu);
            if (auto it = cache.find(w); it != cache.end()) {
                out.insert(out.end(), it->second.begin(), it->second.end());
                return;
            }
        }
        const size_t at = out.size();
        bpe_bytes(w, out);
        std::lock_guard<std::mutex> lock(cache_mu);
        if (cache.size() >= (1u << 20)) cache.clear();  // bound memory on huge corpora
        cache.emplace(std::string(w), std::vector<int>(out.begin() + at, out.end()));
    }

    // The regex runs on each piece on its own (lookaheads stop at the piece's end).
    void encode_byte_level(std::string_view t, MatchData& md, MatchData* md_digit, std::vector<int>& out) const {
        auto words = [&](size_t base, size_t n) {
            regex_split(*re, md.md, t.data() + base, n,
                        [&](size_t b, size_t e, bool) { word_bytes(t.substr(base + b, e - b), out); });
        };
        if (!digits_first) return words(0, t.size());
        regex_split(*re_digit, md_digit->md, t.data(), t.size(), [&](size_t b, size_t e, bool digit) {
            if (digit)
                word_bytes(t.substr(b, e - b), out);
            else
                words(b, e - b);
        });
    }

    // ---- SentencePiece-style ----------------------------------------------------

    // A piece of text as a token; control and unknown tokens only come from split_specials.
    int piece_id(std::string_view p) const {
        const int id = find_token(p);
        if (id < 0) return -1;
        const TokenType ty = type(id);
        return ty == TOKEN_CONTROL || ty == TOKEN_UNKNOWN ? -1 : id;
    }

    void encode_spm(std::string_view t, std::vector<int>& out) const {
        if (t.empty()) return;
        std::string w;
        w.reserve(t.size() + 16);
        if (d.add_space_prefix) w += SPM_SPACE;
        for (char c : t) {
            if (c == ' ')
                w += SPM_SPACE;
            else
                w += c;
        }
        if (ignore_merges) {
            if (const int id = find_raw(w); id >= 0) return out.push_back(id);
        }
        // One symbol per character; a character that is not a token is -1 here.
        std::vector<Sym> s;
        s.reserve(w.size());
        auto add = [&](int id, size_t start, size_t len) {
            const int i = static_cast<int>(s.size());
            s.push_back(Sym{id, i - 1, -1, static_cast<uint32_t>(start), static_cast<uint32_t>(len)});
            if (i > 0) s[i - 1].next = i;
        };
        auto add_fallback = [&](size_t start, size_t len) {
            for (size_t k = 0; k < len; ++k) {
                const int id = byte_id[static_cast<uint8_t>(w[start + k])];
                add(id >= 0 ? id : d.unk, start + k, 1);
            }
        };
        for (size_t p = 0; p < w.size();) {
            const size_t len = utf8_len(static_cast<uint8_t>(w[p]));
            const int id = piece_id(std::string_view(w).substr(p, len));
            // HF BPE (merges) falls back to bytes before merging; SentencePiece
            // (scores) merges text first and falls back for what stays unknown.
            if (id < 0 && !use_scores)
                add_fallback(p, len);
            else
                add(id, p, len);
            p += len;
        }
        if (s.empty()) return;
        if (use_scores) {
            bpe_merge(s, [&](const Sym& l, const Sym& r, double& rank, int& id) {
                id = piece_id(std::string_view(w).substr(l.start, l.len + r.len));
                if (id < 0) return false;
                rank = -static_cast<double>(d.scores[id]);
                return true;
            });
        } else {
            bpe_merge(s, [&](const Sym& l, const Sym& r, double& rank, int& id) {
                if (l.id < 0 || r.id < 0) return false;
                int rk;
                if (!find_merge(l.id, r.id, rk, id)) return false;
                rank = rk;
                return true;
            });
        }
        for (int i = 0; i >= 0; i = s[i].next) {
            if (s[i].id >= 0) {
                out.push_back(s[i].id);
                continue;
            }
            for (uint32_t k = 0; k < s[i].len; ++k) {
                const int id = byte_id[static_cast<uint8_t>(w[s[i].start + k])];
                out.push_back(id >= 0 ? id : d.unk);
            }
        }
        // HF fuse_unk / SentencePiece: a run of unknowns is one <unk>.
        if (d.unk >= 0) {
            size_t j = 0;
            for (size_t i = 0; i < out.size(); ++i)
                if (!(out[i] == d.unk && j > 0 && out[j - 1] == d.unk)) out[j++] = out[i];
            out.resize(j);
        }
        SQ_CHECK(std::find(out.begin(), out.end(), -1) == out.end(), d.source,
                 ": a character has no token, no byte token and there is no unknown token");
    }

    // ---- both -------------------------------------------------------------------

    // Splits text at verbatim special tokens: f(piece) for text, g(id) for tokens.
    template <class F, class G>
    void split_specials(std::string_view text, F&& f, G&& g) const {
        size_t start = 0;
        for (size_t i = 0; i < text.size();) {
            int hit = -1;
            for (int id : specials[static_cast<uint8_t>(text[i])]) {
                if (text.compare(i, token(id).size(), token(id)) == 0) {
                    hit = id;
                    break;
                }
            }
            if (hit < 0) {
                ++i;
                continue;
            }
            if (i > start) f(text.substr(start, i - start));
            g(hit);
            i += token(hit).size();
            start = i;
        }
        if (start < text.size()) f(text.substr(start));
    }
};

Tokenizer::Tokenizer(TokenizerData d) : impl_(std::make_unique<Impl>(std::move(d))) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int> Tokenizer::encode(std::string_view text, bool add_bos) const {
    utf8_check(text);
    const Impl& m = *impl_;
    std::vector<int> out;
    out.reserve(text.size() / 3 + 8);
    if (add_bos && m.d.bos >= 0) out.push_back(m.d.bos);
    if (m.byte_level()) {
        MatchData md(*m.re);
        std::optional<MatchData> md_digit;
        if (m.digits_first) md_digit.emplace(*m.re_digit);
        m.split_specials(
            text, [&](std::string_view t) { m.encode_byte_level(t, md, md_digit ? &*md_digit : nullptr, out); },
            [&](int id) { out.push_back(id); });
    } else {
        // Like HF, every text piece between special tokens is normalized (gets its "▁") on its own.
        m.split_specials(text, [&](std::string_view t) { m.encode_spm(t, out); },
                         [&](int id) { out.push_back(id); });
    }
    return out;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
    const Impl& m = *impl_;
    std::string out;
    for (int id : ids) {
        SQ_CHECK(id >= 0 && id < vocab_size(), "decode: token id ", id, " out of range (", vocab_size(), " tokens)");
        const TokenType ty = m.type(id);
        if (ty == TOKEN_CONTROL || ty == TOKEN_UNKNOWN) continue;
        out += m.bytes.at(id);
    }
    // HF's LLaMA decoder ends with Strip(" ", 1, 0): the space the "▁" prefix added.
    if (!m.byte_level() && m.d.add_space_prefix && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
}

std::string Tokenizer::token_bytes(int id) const {
    SQ_CHECK(id >= 0 && id < vocab_size(), "token_bytes: token id ", id, " out of range (", vocab_size(), " tokens)");
    return std::string(impl_->bytes.at(id));
}

int Tokenizer::bos() const { return impl_->d.bos; }
int Tokenizer::eos() const { return impl_->d.eos; }
bool Tokenizer::add_bos_default() const { return impl_->d.add_bos; }
int Tokenizer::vocab_size() const { return impl_->n; }
TokenizerData Tokenizer::data() const { return impl_->data(); }
TokenType Tokenizer::token_type(int id) const {
    SQ_CHECK(id >= 0 && id < vocab_size(), "token_type: token id ", id, " out of range (", vocab_size(), " tokens)");
    return impl_->type(id);
}

}  // namespace sq
