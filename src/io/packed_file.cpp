#include "io/packed_file.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace sq {

static const char PACKED_MAGIC[8] = {'S', 'Q', 'P', 'A', 'C', 'K', 0, 1};

size_t packed_dtype_size(const std::string& d) {
    if (d == "u8" || d == "i8") return 1;
    if (d == "f16" || d == "u16") return 2;
    if (d == "i32" || d == "f32") return 4;
    fail("packed file: unknown dtype '", d, "'");
}

static uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

void packed_write(const std::string& path, const nlohmann::json& meta, const std::vector<PackedTensor>& tensors) {
    nlohmann::json header;
    header["meta"] = meta;
    header["tensors"] = nlohmann::json::array();
    uint64_t off = 0;
    for (const auto& t : tensors) {
        size_t n = packed_dtype_size(t.dtype);
        for (auto s : t.shape) n *= (size_t)s;
        SQ_CHECK(n == t.bytes.size(), "packed_write: tensor ", t.name, " has ", t.bytes.size(), " bytes, shape says ",
                 n);
        header["tensors"].push_back(
            {{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}, {"offset", off}, {"nbytes", n}});
        off = round_up(off + n, 64);
    }
    const std::string h = header.dump();
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    try {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        SQ_CHECK(f.good(), path, ": cannot create ", tmp);
        uint32_t version = PACKED_VERSION, reserved = 0;
        uint64_t hlen = h.size();
        f.write(PACKED_MAGIC, 8);
        f.write(reinterpret_cast<const char*>(&version), 4);
        f.write(reinterpret_cast<const char*>(&reserved), 4);
        f.write(reinterpret_cast<const char*>(&hlen), 8);
        f.write(h.data(), (std::streamsize)h.size());
        const uint64_t data_start = round_up(24 + hlen, 64);
        std::vector<char> zeros(64, 0);
        f.write(zeros.data(), (std::streamsize)(data_start - 24 - hlen));
        uint64_t pos = 0;
        for (const auto& t : tensors) {
            f.write(reinterpret_cast<const char*>(t.bytes.data()), (std::streamsize)t.bytes.size());
            pos += t.bytes.size();
            const uint64_t next = round_up(pos, 64);
            f.write(zeros.data(), (std::streamsize)(next - pos));
            pos = next;
        }
        f.flush();
        SQ_CHECK(f.good(), path, ": write failed (disk full?)");
        f.close();
        std::filesystem::rename(tmp, path);
    } catch (...) {
        std::error_code ec;
        std::filesystem::remove(tmp, ec);
        throw;
    }
}

bool packed_is(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    char m[8] = {};
    f.read(m, 8);
    return f.gcount() == 8 && std::memcmp(m, PACKED_MAGIC, 8) == 0;
}

PackedFile packed_open(const std::string& path) {
    PackedFile pf;
    pf.map = std::make_shared<MappedFile>(path);
    const uint8_t* p = pf.map->data();
    const size_t size = pf.map->size();
    SQ_CHECK(size >= 24, path, ": truncated packed file (", size, " bytes)");
    SQ_CHECK(std::memcmp(p, PACKED_MAGIC, 8) == 0, path, ": not a SpecQuant packed file (bad magic)");
    uint32_t version;
    uint64_t hlen;
    std::memcpy(&version, p + 8, 4);
    std::memcpy(&hlen, p + 16, 8);
    SQ_CHECK(version != 1, path,
             ": packed format version 1 is no longer read (its spectral coefficients are stored dense; version 2 "
             "stores only the kept ones, docs/format.md): quantize the model again with `specquant quantize`");
    SQ_CHECK(version == PACKED_VERSION, path, ": packed format version ", version, " not supported (this build reads ",
             PACKED_VERSION, ")");
    SQ_CHECK(hlen <= size - 24, path, ": header length ", hlen, " runs past the end of the file (", size, " bytes)");
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(p + 24, p + 24 + hlen);
        pf.meta = header.at("meta");
        const uint64_t data_start = round_up(24 + hlen, 64);
        for (const auto& t : header.at("tensors")) {
            PackedView v;
            const std::string name = t.at("name");
            v.dtype = t.at("dtype");
            v.shape = t.at("shape").get<std::vector<int64_t>>();
            const uint64_t off = t.at("offset"), nbytes = t.at("nbytes");
            size_t expect = packed_dtype_size(v.dtype);
            for (auto s : v.shape) {
                SQ_CHECK(s >= 0 && s < (int64_t)1 << 40, path, ": tensor ", name, " has an absurd dimension ", s);
                expect *= (size_t)s;
            }
            SQ_CHECK(expect == nbytes, path, ": tensor ", name, " nbytes ", nbytes, " does not match its shape");
            SQ_CHECK(data_start <= size && off <= size - data_start && nbytes <= size - data_start - off, path,
                     ": tensor ", name, " lies past the end of the file");
            v.data = p + data_start + off;
            v.nbytes = nbytes;
            pf.tensors[name] = v;
        }
    } catch (const nlohmann::json::exception& e) {
        fail(path, ": corrupt packed header: ", e.what());
    } catch (const Error& e) {
        throw;
    }
    return pf;
}

const PackedView& PackedFile::get(const std::string& name, const std::string& dtype,
                                  const std::vector<int64_t>& shape) const {
    auto it = tensors.find(name);
    SQ_CHECK(it != tensors.end(), map->path(), ": tensor ", name, " missing");
    SQ_CHECK(it->second.dtype == dtype, map->path(), ": tensor ", name, " has dtype ", it->second.dtype, ", expected ",
             dtype);
    SQ_CHECK(it->second.shape == shape, map->path(), ": tensor ", name, " has the wrong shape");
    return it->second;
}

void PackedFile::release(const std::string& name) const {
    auto it = tensors.find(name);
    if (it == tensors.end() || it->second.nbytes == 0) return;
    const uintptr_t page = (uintptr_t)::sysconf(_SC_PAGESIZE), base = (uintptr_t)map->data();
    const uintptr_t lo = (uintptr_t)it->second.data / page * page,
                    hi = ((uintptr_t)it->second.data + it->second.nbytes + page - 1) / page * page;
    const uintptr_t end = (base + map->size() + page - 1) / page * page;
    if (lo >= base && hi <= end) ::madvise((void*)lo, hi - lo, MADV_DONTNEED);  // advisory: errors ignored
}

}  // namespace sq
