// Tokenizer tests: our ids against Hugging Face `tokenizers` goldens made by
// scripts/make_tokenizer_golden.py (SmolLM2's vocabulary from the GGUF, and
// tiny byte-level / SentencePiece-style BPE vocabularies), decoding, UTF-8
// checks, tokenizer.json parsing errors, and the whole of WikiText-2 test.
//
// Run: build/specquant_tests --gtest_filter='Tokenizer*'
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <unistd.h>

#include "core/error.h"
#include "io/tokenizer.h"
#include "io/unicode.h"

using namespace sq;
using json = nlohmann::json;

namespace {

const std::string kDir = std::string(SQ_TEST_DATA) + "/tokenizer/";
const char* const kFixtures[] = {"smollm2", "tiny_bpe", "tiny_bpe_llama3", "tiny_bpe_qwen2", "tiny_spm"};

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

struct Golden {
    std::string text, decoded;
    std::vector<int> ids, ids_special;
};

std::vector<Golden> read_goldens(const std::string& name) {
    std::ifstream f(kDir + name + "/golden.jsonl");
    EXPECT_TRUE(f) << "missing " << kDir << name << "/golden.jsonl";
    std::vector<Golden> out;
    for (std::string line; std::getline(f, line);) {
        const json j = json::parse(line);
        out.push_back({j["text"], j["decoded"], j["ids"], j["ids_special"]});
    }
    return out;
}

Tokenizer load(const std::string& name) { return Tokenizer(tokenizer_data_from_json(kDir + name + "/tokenizer.json")); }

std::string show(const std::vector<int>& v) {
    std::string s;
    for (int x : v) s += std::to_string(x) + " ";
    return s;
}

uint64_t fnv1a64(const std::vector<int>& ids) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (int id : ids)
        for (int k = 0; k < 4; ++k) {
            h ^= (static_cast<uint32_t>(id) >> (8 * k)) & 0xFF;
            h *= 0x100000001B3ull;
        }
    return h;
}

void check_goldens(const Tokenizer& tok, const std::string& name) {
    const auto goldens = read_goldens(name);
    ASSERT_GE(goldens.size(), 60u);
    for (const auto& g : goldens) {
        SCOPED_TRACE(name + ": " + json(g.text).dump());
        const auto ids = tok.encode(g.text);
        EXPECT_EQ(ids, g.ids) << "ours " << show(ids) << "\nhf   " << show(g.ids);
        EXPECT_EQ(tok.encode(g.text, tok.add_bos_default()), g.ids_special);
        EXPECT_EQ(tok.decode(g.ids), g.decoded);
        bool special = false;
        for (int id : g.ids) special |= tok.token_type(id) == TOKEN_CONTROL || tok.token_type(id) == TOKEN_UNKNOWN;
        if (!special) {
            EXPECT_EQ(tok.decode(ids), g.text);
        }
    }
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
    try {
        f();
        ADD_FAILURE() << "no sq::Error thrown";
    } catch (const Error& e) {
        for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
}

// Writes a tokenizer.json made from tiny_bpe's with one edit, in a fresh directory.
std::string write_edited(const std::string& tag, const std::function<void(json&)>& edit) {
    json j = json::parse(read_file(kDir + "tiny_bpe/tokenizer.json"));
    edit(j);
    const auto dir = std::filesystem::temp_directory_path() / ("sq_tok_" + tag + "_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const std::string path = (dir / "tokenizer.json").string();
    std::ofstream(path) << j.dump();
    return path;
}

}  // namespace

TEST(TokenizerUnicode, Utf8FindsFirstInvalidByte) {
    EXPECT_EQ(utf8_find_invalid(""), std::string_view::npos);
    EXPECT_EQ(utf8_find_invalid("a\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80\xF4\x8F\xBF\xBF"), std::string_view::npos);
    EXPECT_EQ(utf8_find_invalid(std::string_view("a\0b", 3)), std::string_view::npos);
    EXPECT_EQ(utf8_find_invalid("\xC0\x80"), 0u);            // overlong NUL
    EXPECT_EQ(utf8_find_invalid("ab\xE0\x80\xAF"), 2u);      // overlong '/'
    EXPECT_EQ(utf8_find_invalid("ab\xED\xA0\x80"), 2u);      // surrogate U+D800
    EXPECT_EQ(utf8_find_invalid("\xF4\x90\x80\x80"), 0u);    // U+110000
    EXPECT_EQ(utf8_find_invalid("abc\xE2\x82"), 3u);         // truncated
    EXPECT_EQ(utf8_find_invalid("a\x80"), 1u);               // stray continuation
    EXPECT_EQ(utf8_find_invalid("ok \xFF"), 3u);
    EXPECT_EQ(utf8_find_invalid("\xE2\x82\xAC\xE2\x28\xA1"), 3u);  // bad second byte
}

TEST(TokenizerUnicode, Gpt2ByteMapIsABijection) {
    std::vector<bool> seen(0x144, false);
    for (int b = 0; b < 256; ++b) {
        const uint32_t cp = gpt2_byte_to_codepoint(static_cast<uint8_t>(b));
        ASSERT_LT(cp, 0x144u);
        EXPECT_FALSE(seen[cp]);
        seen[cp] = true;
        EXPECT_EQ(gpt2_codepoint_to_byte(cp), b);
    }
    EXPECT_EQ(gpt2_byte_to_codepoint(' '), 0x120u);   // 'Ġ'
    EXPECT_EQ(gpt2_byte_to_codepoint('\n'), 0x10Au);  // 'Ċ'
    EXPECT_EQ(gpt2_byte_to_codepoint('A'), uint32_t('A'));
    EXPECT_EQ(gpt2_byte_to_codepoint(0xAD), 0x143u);  // soft hyphen is the last remapped byte
    EXPECT_EQ(gpt2_codepoint_to_byte(0x144), -1);
    EXPECT_EQ(gpt2_bytes_to_text("Hello world\n"), "Hello\xC4\xA0world\xC4\x8A");
    std::string all, back;
    for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
    ASSERT_TRUE(gpt2_text_to_bytes(gpt2_bytes_to_text(all), back));
    EXPECT_EQ(back, all);
    EXPECT_FALSE(gpt2_text_to_bytes("\xE4\xB8\xAD", back));  // U+4E2D is not in the alphabet
}

TEST(TokenizerGolden, SmolLM2MatchesHf) { check_goldens(load("smollm2"), "smollm2"); }
TEST(TokenizerGolden, TinyBpeGpt2MatchesHf) { check_goldens(load("tiny_bpe"), "tiny_bpe"); }
TEST(TokenizerGolden, TinyBpeLlama3MatchesHf) { check_goldens(load("tiny_bpe_llama3"), "tiny_bpe_llama3"); }
TEST(TokenizerGolden, TinyBpeQwen2MatchesHf) { check_goldens(load("tiny_bpe_qwen2"), "tiny_bpe_qwen2"); }
TEST(TokenizerGolden, TinySpmMatchesHf) { check_goldens(load("tiny_spm"), "tiny_spm"); }

// GGUF "llama" vocabularies carry scores instead of merges: SentencePiece merges
// the adjacent pair whose merged piece scores highest. With score = -merge rank
// this must agree with HF's merges on the tiny vocabulary.
TEST(TokenizerGolden, TinySpmFromScoresMatchesHf) {
    TokenizerData d = tokenizer_data_from_json(kDir + "tiny_spm/tokenizer.json");
    std::unordered_map<std::string, int> id;
    for (size_t i = 0; i < d.tokens.size(); ++i) id[d.tokens[i]] = static_cast<int>(i);
    d.scores.assign(d.tokens.size(), 0.0f);
    for (size_t r = 0; r < d.merges.size(); ++r) {
        float& s = d.scores[id.at(d.merges[r].first + d.merges[r].second)];
        if (s == 0.0f) s = -static_cast<float>(r + 1);
    }
    d.merges.clear();
    check_goldens(Tokenizer(std::move(d)), "tiny_spm");
}

TEST(TokenizerJson, SmolLM2Metadata) {
    const Tokenizer tok = load("smollm2");
    const TokenizerData& d = tok.data();
    EXPECT_EQ(d.kind, TOKENIZER_BPE_BYTE);
    EXPECT_EQ(d.pre, "smollm");
    EXPECT_EQ(tok.vocab_size(), 49152);
    EXPECT_EQ(d.merges.size(), 48900u);
    EXPECT_EQ(tok.bos(), 1);  // <|im_start|>, as the GGUF says (from tokenizer_config.json)
    EXPECT_EQ(tok.eos(), 2);  // <|im_end|>
    EXPECT_FALSE(tok.add_bos_default());
    for (int i = 0; i < 17; ++i) EXPECT_EQ(tok.token_type(i), TOKEN_CONTROL) << i;
    EXPECT_EQ(tok.token_type(17), TOKEN_NORMAL);
}

TEST(TokenizerJson, TinyBpeAndSpmMetadata) {
    const Tokenizer bpe = load("tiny_bpe");
    EXPECT_EQ(bpe.data().pre, "gpt2");
    EXPECT_LE(bpe.vocab_size(), 512);
    EXPECT_EQ(bpe.bos(), bpe.eos());  // GPT-2 style: <|endoftext|> is both
    EXPECT_EQ(bpe.data().tokens[bpe.eos()], "<|endoftext|>");
    EXPECT_FALSE(bpe.add_bos_default());
    EXPECT_EQ(load("tiny_bpe_llama3").data().pre, "llama3");
    EXPECT_TRUE(load("tiny_bpe_llama3").data().ignore_merges);
    EXPECT_EQ(load("tiny_bpe_qwen2").data().pre, "qwen2");

    const Tokenizer spm = load("tiny_spm");
    const TokenizerData& d = spm.data();
    EXPECT_EQ(d.kind, TOKENIZER_SPM_BPE);
    EXPECT_LE(spm.vocab_size(), 512);
    EXPECT_TRUE(d.add_space_prefix);
    EXPECT_TRUE(spm.add_bos_default());  // from the post-processor template "<s> $A"
    EXPECT_EQ(spm.bos(), 1);
    EXPECT_EQ(spm.eos(), 2);
    EXPECT_EQ(d.unk, 0);
    EXPECT_EQ(spm.token_type(0), TOKEN_UNKNOWN);
    EXPECT_EQ(spm.token_type(3), TOKEN_BYTE);  // <0x00>
    EXPECT_EQ(spm.token_bytes(3 + 'A'), "A");
}

TEST(TokenizerEncode, InvalidUtf8NamesTheByte) {
    const Tokenizer tok = load("tiny_bpe");
    expect_error([&] { tok.encode("abc\xE2\x82"); }, {"invalid UTF-8 at byte 3"});
    expect_error([&] { tok.encode("\xFF"); }, {"invalid UTF-8 at byte 0"});
    const Tokenizer spm = load("tiny_spm");
    expect_error([&] { spm.encode("ok\xC0\x80"); }, {"invalid UTF-8 at byte 2"});
}

TEST(TokenizerEncode, SpecialTokensInTextAndBos) {
    const Tokenizer tok = load("smollm2");
    const auto ids = tok.encode("<|im_start|>user\nhi<|im_end|>");
    ASSERT_GE(ids.size(), 3u);
    EXPECT_EQ(ids.front(), 1);
    EXPECT_EQ(ids.back(), 2);
    EXPECT_EQ(tok.decode(ids), "user\nhi");  // special tokens dropped
    EXPECT_EQ(tok.token_bytes(1), "<|im_start|>");
    EXPECT_NE(tok.encode("<|im_start|")[0], 1);  // a prefix is plain text
    const auto with_bos = tok.encode("hi", true);
    EXPECT_EQ(with_bos[0], tok.bos());
    EXPECT_EQ(std::vector<int>(with_bos.begin() + 1, with_bos.end()), tok.encode("hi"));
}

TEST(TokenizerEncode, TokenBytes) {
    const Tokenizer tok = load("smollm2");
    const auto ids = tok.encode(" the");
    ASSERT_EQ(ids.size(), 1u);
    EXPECT_EQ(tok.token_bytes(ids[0]), " the");
    std::string joined;
    for (int id : tok.encode("naïve 😀\n")) joined += tok.token_bytes(id);
    EXPECT_EQ(joined, "naïve 😀\n");  // bytes of split characters join back up
    const Tokenizer spm = load("tiny_spm");
    const auto s = spm.encode("the");
    ASSERT_EQ(s.size(), 1u);
    EXPECT_EQ(spm.token_bytes(s[0]), " the");  // "▁the": streaming output keeps the space
    EXPECT_EQ(spm.decode(s), "the");           // decode strips the prefix space as HF does
    expect_error([&] { spm.token_bytes(spm.vocab_size()); }, {"out of range"});
}

// TokenizerData built by hand, as a GGUF loader fills it: "abc" is a token that
// no merge produces; ignore_merges (LLaMA-3) takes it whole.
TEST(TokenizerEncode, IgnoreMergesTakesWholeWords) {
    TokenizerData d;
    for (int b = 0; b < 256; ++b) d.tokens.push_back(gpt2_bytes_to_text(std::string(1, static_cast<char>(b))));
    const int bc = static_cast<int>(d.tokens.size()), abc = bc + 1;
    d.tokens.push_back("bc");
    d.tokens.push_back("abc");  // ids 0..255 are the bytes
    d.merges = {{"b", "c"}};
    d.source = "hand-built";
    EXPECT_EQ(Tokenizer(d).encode("abc"), (std::vector<int>{'a', bc}));
    d.ignore_merges = true;
    EXPECT_EQ(Tokenizer(d).encode("abc xbc"), (std::vector<int>{abc, ' ', 'x', bc}));
    d.ignore_merges = false;
    d.pre = "llama3";  // llama.cpp turns ignore_merges on for LLaMA-3 GGUFs
    EXPECT_EQ(Tokenizer(d).encode("abc"), (std::vector<int>{abc}));
}

TEST(TokenizerEncode, LongRunsAndThreads) {
    const Tokenizer tok = load("smollm2");
    const std::string text = std::string(100000, ' ') + "x" + std::string(50000, '\n') + std::string(30000, '7');
    const auto ids = tok.encode(text);
    EXPECT_EQ(tok.decode(ids), text);
    std::vector<int> a, b;
    std::thread t1([&] { a = tok.encode(text); });
    std::thread t2([&] { b = tok.encode(text); });
    t1.join();
    t2.join();
    EXPECT_EQ(a, ids);
    EXPECT_EQ(b, ids);
    const Tokenizer spm = load("tiny_spm");
    const std::string s = std::string(20000, ' ') + "abc";
    EXPECT_EQ(spm.decode(spm.encode(s)), s);
}

TEST(TokenizerJson, ErrorsNameFileAndField) {
    expect_error([] { tokenizer_data_from_json("/nonexistent/tokenizer.json"); },
                 {"/nonexistent/tokenizer.json", "cannot open"});
    std::string p = write_edited("regex", [](json& j) {
        j["pre_tokenizer"] = json::parse(R"({"type":"Sequence","pretokenizers":[
            {"type":"Split","pattern":{"Regex":"\\p{L}+|\\s+"},"behavior":"Isolated","invert":false},
            {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})");
    });
    expect_error([&] { tokenizer_data_from_json(p); }, {p, "pre_tokenizer.pretokenizers[0].pattern.Regex", "\\p{L}+"});
    p = write_edited("unigram", [](json& j) { j["model"]["type"] = "Unigram"; });
    expect_error([&] { tokenizer_data_from_json(p); }, {p, "model.type", "Unigram"});
    p = write_edited("novocab", [](json& j) { j["model"].erase("vocab"); });
    expect_error([&] { tokenizer_data_from_json(p); }, {p, "model.vocab"});
    p = write_edited("badmerge", [](json& j) { j["model"]["merges"][0] = "abc"; });
    expect_error([&] { tokenizer_data_from_json(p); }, {p, "model.merges[0]"});
    p = write_edited("merge_oov", [](json& j) { j["model"]["merges"][3] = json::array({"zzz", "q"}); });
    expect_error([&] { Tokenizer t(tokenizer_data_from_json(p)); }, {p, "merge 3", "zzz"});
    p = write_edited("badjson", [](json&) {});
    std::ofstream(p) << "{\"model\": ";
    expect_error([&] { tokenizer_data_from_json(p); }, {p, "not valid JSON"});
    p = write_edited("wrongtype", [](json& j) { j["added_tokens"][0]["id"] = "zero"; });
    expect_error([&] { tokenizer_data_from_json(p); }, {p, "added_tokens[0]"});
    std::ofstream(std::filesystem::path(p).parent_path() / "tokenizer_config.json") << R"({"bos_token": "<nope>"})";
    p = write_edited("wrongtype", [](json&) {});
    expect_error([&] { tokenizer_data_from_json(p); }, {"tokenizer_config.json", "bos_token", "<nope>"});
    TokenizerData d = tokenizer_data_from_json(kDir + "tiny_bpe/tokenizer.json");
    d.pre = "falcon";
    d.source = "x.gguf";
    expect_error([&] { Tokenizer t(d); }, {"x.gguf", "tokenizer.ggml.pre", "falcon"});
}

// The whole WikiText-2 test file against HF's ids (count + FNV-1a hash), with
// the time printed for information (a Release build takes well under 2 s).
TEST(TokenizerWiki, WholeFileMatchesHf) {
    const std::string wiki = std::string(SQ_SOURCE_DIR) + "/../shared/data/wikitext2/wiki.test.raw";
    if (!std::filesystem::exists(wiki)) GTEST_SKIP() << "no " << wiki;
    const std::string text = read_file(wiki);
    for (const char* name : kFixtures) {
        const json h = json::parse(read_file(kDir + name + "/wiki_hash.json"));
        const Tokenizer tok = load(name);
        const auto t0 = std::chrono::steady_clock::now();
        const auto ids = tok.encode(text);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("[ info ] %-16s %zu bytes -> %zu tokens in %.3f s (%.1f MB/s)\n", name, text.size(), ids.size(), s,
                    text.size() / s / 1e6);
        EXPECT_EQ(ids.size(), h["count"].get<size_t>()) << name;
        char hex[17];
        std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fnv1a64(ids)));
        EXPECT_EQ(std::string(hex), h["fnv1a64"].get<std::string>()) << name;
        if (std::string(name) == "smollm2") {
            const auto t1 = std::chrono::steady_clock::now();
            tok.encode(text);
            std::printf("[ info ] %-16s again with a warm word cache: %.3f s\n", name,
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
        }
    }
}

// The compact tables (string arenas, sorted ids, merges by id) give back
// exactly the TokenizerData they were built from, and a Tokenizer rebuilt
// from that encodes the same ids, for every kind of tokenizer we load.
TEST(TokenizerCompact, DataRoundTripsExactly) {
    for (const char* name : {"smollm2", "tiny_bpe", "tiny_bpe_llama3", "tiny_bpe_qwen2", "tiny_spm"}) {
        const TokenizerData in = tokenizer_data_from_json(kDir + std::string(name) + "/tokenizer.json");
        const Tokenizer tok{TokenizerData(in)};
        const TokenizerData out = tok.data();
        EXPECT_EQ(out.tokens, in.tokens) << name;
        EXPECT_EQ(out.merges, in.merges) << name;
        EXPECT_EQ(out.token_types, in.token_types) << name;
        EXPECT_EQ(out.scores, in.scores) << name;
        EXPECT_EQ(out.kind, in.kind) << name;
        EXPECT_EQ(out.pre, in.pre) << name;
        EXPECT_EQ(out.bos, in.bos) << name;
        EXPECT_EQ(out.eos, in.eos) << name;
        EXPECT_EQ(out.unk, in.unk) << name;
        EXPECT_EQ(out.add_bos, in.add_bos) << name;
        EXPECT_EQ(out.add_space_prefix, in.add_space_prefix) << name;
        EXPECT_EQ(out.ignore_merges, in.ignore_merges) << name;
        EXPECT_EQ(tok.vocab_size(), (int)in.tokens.size()) << name;
        const Tokenizer again(tok.data());
        const std::string text = "Hello world! The year 2024, naïve café — <|im_start|>x  y\n\n  123456 ok";
        EXPECT_EQ(again.encode(text, true), tok.encode(text, true)) << name;
        EXPECT_EQ(again.decode(tok.encode(text)), tok.decode(tok.encode(text))) << name;
        for (int id = 0; id < tok.vocab_size(); id += 97) EXPECT_EQ(again.token_bytes(id), tok.token_bytes(id)) << name;
    }
}
