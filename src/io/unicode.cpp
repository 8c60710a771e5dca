// UTF-8 validation/decoding and the GPT-2 byte <-> unicode map (see unicode.h).
#include "io/unicode.h"

#include <array>

#include "core/error.h"

namespace sq {

size_t utf8_find_invalid(std::string_view s) {
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    const size_t n = s.size();
    size_t i = 0;
    while (i < n) {
        const uint8_t b = p[i];
        if (b < 0x80) {
            ++i;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((b & 0xE0) == 0xC0) {
            len = 2, cp = b & 0x1F, min = 0x80;
        } else if ((b & 0xF0) == 0xE0) {
            len = 3, cp = b & 0x0F, min = 0x800;
        } else if ((b & 0xF8) == 0xF0) {
            len = 4, cp = b & 0x07, min = 0x10000;
        } else {
            return i;  // continuation byte without a lead, or 0xF8..0xFF
        }
        if (i + len > n) return i;
        for (size_t k = 1; k < len; ++k) {
            if ((p[i + k] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += len;
    }
    return std::string_view::npos;
}

void utf8_check(std::string_view s) {
    const size_t at = utf8_find_invalid(s);
    if (at != std::string_view::npos) fail("invalid UTF-8 at byte ", at);
}

uint32_t utf8_next(std::string_view s, size_t& i) {
    const auto b = static_cast<uint8_t>(s[i]);
    const size_t len = utf8_len(b);
    uint32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    for (size_t k = 1; k < len && i + k < s.size(); ++k)
        cp = (cp << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
    i += len;
    return cp;
}

void utf8_append(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

namespace {

// GPT-2's table: the 188 printable bytes '!'..'~', '¡'..'¬', '®'..'ÿ' spell
// themselves; the other 68 (controls, space, 0x7F..0xA0, soft hyphen 0xAD)
// take U+0100.. U+0143 in byte order. So every code point is < 0x144.
struct ByteMap {
    std::array<uint32_t, 256> to_cp{};
    std::array<int16_t, 0x144> to_byte{};
    ByteMap() {
        to_byte.fill(-1);
        uint32_t next = 256;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
            to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
            to_byte[to_cp[b]] = static_cast<int16_t>(b);
        }
    }
};

const ByteMap& byte_map() {
    static const ByteMap m;
    return m;
}

}  // namespace

uint32_t gpt2_byte_to_codepoint(uint8_t b) { return byte_map().to_cp[b]; }

int gpt2_codepoint_to_byte(uint32_t cp) {
    return cp < byte_map().to_byte.size() ? byte_map().to_byte[cp] : -1;
}

std::string gpt2_bytes_to_text(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size() * 2);
    for (char c : bytes) utf8_append(out, gpt2_byte_to_codepoint(static_cast<uint8_t>(c)));
    return out;
}

bool gpt2_text_to_bytes(std::string_view text, std::string& out) {
    out.clear();
    for (size_t i = 0; i < text.size();) {
        const int b = gpt2_codepoint_to_byte(utf8_next(text, i));
        if (b < 0) return false;
        out += static_cast<char>(b);
    }
    return true;
}

}  // namespace sq
