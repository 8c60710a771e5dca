// Our model container (docs/format.md): a versioned header, JSON metadata and
// 64-byte aligned named tensors, written atomically (temp + rename) and read
// by mmap.
//
//   bytes 0..7    magic "SQPACK\0\1"
//   bytes 8..11   u32 format version (2; version 1 files are refused with a
//                 message: their spectral coefficients were stored dense)
//   bytes 12..15  u32 reserved (0)
//   bytes 16..23  u64 header length H
//   bytes 24..    H bytes of JSON: {"meta": {...}, "tensors": [{"name", "dtype",
//                 "shape", "offset", "nbytes"}, ...]}   (offset from data start)
//   data start  = round_up(24 + H, 64); every tensor offset is 64-aligned.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/mapped_file.h"

namespace sq {

constexpr uint32_t PACKED_VERSION = 2;

// dtypes: "u8", "i8", "u16", "i32", "f16", "f32"
struct PackedTensor {
    std::string name, dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
};

size_t packed_dtype_size(const std::string& dtype);  // throws on unknown

// Writes `path` atomically: `path.tmp.<pid>` then rename; on any failure the
// temp file is removed and nothing is left at `path`.
void packed_write(const std::string& path, const nlohmann::json& meta, const std::vector<PackedTensor>& tensors);

struct PackedView {
    std::string dtype;
    std::vector<int64_t> shape;
    const uint8_t* data = nullptr;
    size_t nbytes = 0;
};

struct PackedFile {
    std::shared_ptr<MappedFile> map;
    nlohmann::json meta;
    std::map<std::string, PackedView> tensors;
    // Checked access: throws naming the file and tensor when missing or when
    // dtype/shape differ from what the caller expects.
    const PackedView& get(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape) const;
    bool has(const std::string& name) const { return tensors.count(name) != 0; }
    // Drops the mapped pages of tensors already copied out from this
    // process's resident set (they stay in the page cache; a later read
    // faults them back in): loading then peaks at the weights plus one
    // layer, not the weights plus the whole file.
    void release(const std::string& name) const;
};

bool packed_is(const std::string& path);  // true when the file starts with our magic
PackedFile packed_open(const std::string& path);

}  // namespace sq
