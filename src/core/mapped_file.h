// Read-only memory map of a whole file (RAII). Loaders parse straight from
// the mapping, so a 16 GB checkpoint costs no copy until a tensor is used.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace sq {

class MappedFile {
public:
    MappedFile() = default;
    explicit MappedFile(const std::string& path);  // throws sq::Error naming the path
    ~MappedFile();
    MappedFile(MappedFile&& o) noexcept;
    MappedFile& operator=(MappedFile&& o) noexcept;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
};

}  // namespace sq
