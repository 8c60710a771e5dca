// UTF-8 helpers for the tokenizers: validation, decoding one code point, and
// GPT-2's byte <-> unicode map (byte-level BPE vocabularies spell every byte
// as one printable code point, e.g. ' ' -> 'Ġ' U+0120, '\n' -> 'Ċ' U+010A).
// Unicode classes (\p{L}, \p{N}, \s) come from PCRE2, not from here.
//
// Test: build/specquant_tests --gtest_filter='Tokenizer*'
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sq {

// Byte offset of the first invalid UTF-8 sequence (truncated, overlong,
// surrogate, > U+10FFFF, stray continuation byte), or npos if s is valid.
size_t utf8_find_invalid(std::string_view s);

// Throws sq::Error "invalid UTF-8 at byte N" (N counted from 0).
void utf8_check(std::string_view s);

// Length of the sequence that starts with lead byte b (1 for invalid leads).
inline size_t utf8_len(uint8_t b) {
    if (b < 0x80) return 1;
    if ((b & 0xE0) == 0xC0) return 2;
    if ((b & 0xF0) == 0xE0) return 3;
    if ((b & 0xF8) == 0xF0) return 4;
    return 1;
}

// Decodes the code point at s[i] (s valid UTF-8) and advances i past it.
uint32_t utf8_next(std::string_view s, size_t& i);

void utf8_append(std::string& out, uint32_t cp);

// GPT-2 byte-level alphabet: the code point that spells byte b.
uint32_t gpt2_byte_to_codepoint(uint8_t b);
// Inverse: the byte that code point cp spells, or -1 if cp is not in the alphabet.
int gpt2_codepoint_to_byte(uint32_t cp);

// "Hello world" -> "HelloĠworld".
std::string gpt2_bytes_to_text(std::string_view bytes);
// Inverse; false (out unspecified) if text holds a code point outside the alphabet.
bool gpt2_text_to_bytes(std::string_view text, std::string& out);

}  // namespace sq
