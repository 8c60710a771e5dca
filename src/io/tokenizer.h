// Tokenizers: byte-level BPE (GPT-2 / LLaMA-3 / SmolLM / Qwen2 pre-tokenizer
// regexes through PCRE2) and SentencePiece-style BPE (LLaMA-1/2), built from
// TokenizerData (tokenizer.json or GGUF metadata).
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "io/tokenizer_data.h"

namespace sq {

class Tokenizer {
public:
    explicit Tokenizer(TokenizerData d);  // throws sq::Error naming d.source
    ~Tokenizer();
    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;

    // Encodes UTF-8 text (throws on invalid UTF-8). add_bos: prepend BOS when the
    // tokenizer has one. Special tokens written in the text (e.g. "<|im_start|>")
    // are matched as single tokens, as Hugging Face `tokenizers` does.
    std::vector<int> encode(std::string_view text, bool add_bos = false) const;
    std::string decode(const std::vector<int>& ids) const;  // special tokens are dropped
    std::string token_bytes(int id) const;                  // raw bytes of one token
    int bos() const;
    int eos() const;
    bool add_bos_default() const;  // what the checkpoint asks for
    int vocab_size() const;
    // The data it was built from, rebuilt from the compact tables (a copy: the
    // vocabulary and merges as strings, ~10 MB for a 49k vocabulary).
    TokenizerData data() const;
    TokenType token_type(int id) const;  // TOKEN_NORMAL when the data has no types

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Parses a Hugging Face tokenizer.json (BPE models only). bos/eos/add_bos come
// from a sibling tokenizer_config.json when there is one, else from the
// post-processor template and the usual special-token names.
TokenizerData tokenizer_data_from_json(const std::string& path);

// The PCRE2 pre-tokenizer regex for a byte-level `pre` ("gpt2", "llama3",
// "qwen2"; "smollm" splits digits first, then uses "gpt2"), nullptr if unknown.
// "llama-bpe" (llama.cpp's name for LLaMA-3) is accepted as "llama3".
const char* pretokenizer_regex(const std::string& pre);

}  // namespace sq
