// Everything a tokenizer needs, as read from tokenizer.json or from GGUF
// metadata (tokenizer.ggml.*). Filled by the loaders, consumed by Tokenizer.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace sq {

enum TokenizerKind {
    TOKENIZER_BPE_BYTE,  // byte-level BPE: GPT-2, LLaMA-3, SmolLM, Qwen2 (GGUF "gpt2")
    TOKENIZER_SPM_BPE,   // SentencePiece-style BPE with byte fallback: LLaMA-1/2 (GGUF "llama")
};

// Token types as GGUF numbers them (llama.cpp's llama_token_type).
enum TokenType { TOKEN_NORMAL = 1, TOKEN_UNKNOWN = 2, TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4, TOKEN_UNUSED = 5, TOKEN_BYTE = 6 };

struct TokenizerData {
    TokenizerKind kind = TOKENIZER_BPE_BYTE;
    // Pre-tokenizer for byte-level BPE: "gpt2", "llama3", "smollm", "qwen2".
    std::string pre = "gpt2";
    std::vector<std::string> tokens;  // id -> token text (byte-level: GPT-2 byte-to-unicode alphabet)
    std::vector<float> scores;        // SPM merge priorities (may be empty for BPE)
    std::vector<int> token_types;     // TokenType per id (may be empty: all normal)
    std::vector<std::pair<std::string, std::string>> merges;  // BPE merges in rank order
    int bos = -1, eos = -1, unk = -1, pad = -1;
    bool add_bos = false;
    bool add_eos = false;
    bool add_space_prefix = false;  // SPM: prepend "▁" to the text
    // BPE: a word that is itself a token is taken whole, before any merge (HF
    // `ignore_merges`, set in LLaMA-3's tokenizer.json). The Tokenizer also turns
    // it on for pre "llama3"/"llama-bpe" as llama.cpp does, so GGUF loaders may leave it.
    bool ignore_merges = false;
    std::string source;             // file it came from, for error messages
};

}  // namespace sq
