// SHA-256 (FIPS 180-4), streaming. Used to fingerprint evaluation data in
// reports; ~200 MB/s scalar, so hashing all eval data (15 MB) costs < 0.1 s.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sq {

class Sha256 {
public:
    Sha256();
    void update(const void* data, size_t n);
    void update(std::string_view s) { update(s.data(), s.size()); }
    std::array<uint8_t, 32> digest();  // finalizes; the object is spent afterwards
    std::string hex();                 // digest() as 64 lowercase hex digits

private:
    void block(const uint8_t* p);
    uint32_t h_[8];
    uint8_t buf_[64];
    size_t buf_len_ = 0;
    uint64_t total_ = 0;  // bytes
};

std::string sha256_hex(std::string_view data);
std::string sha256_file(const std::string& path);  // throws sq::Error naming the path

}  // namespace sq
