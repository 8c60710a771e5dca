#include "quant/calib_data.h"

#include <algorithm>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/sha256.h"

namespace sq {

CalibData calib_load(const std::string& path, const Tokenizer& tok, int n, int len, uint64_t seed) {
    SQ_CHECK(n > 0 && len > 1, path, ": calibration needs n > 0 windows of len > 1 tokens (got ", n, " x ", len, ")");
    std::ifstream f(path, std::ios::binary);
    SQ_CHECK(f.good(), path, ": cannot open calibration file");
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string raw = ss.str();
    SQ_CHECK(!raw.empty(), path, ": calibration file is empty");
    CalibData cd;
    cd.sha256 = sha256_hex(raw);
    std::string text;
    text.reserve(raw.size());
    std::istringstream lines(raw);
    std::string line;
    bool first = true;
    while (std::getline(lines, line)) {
        if (line.rfind("<doc", 0) == 0) continue;
        if (line.rfind("</doc>", 0) == 0) {
            text += "\n\n";
            first = true;
            continue;
        }
        if (!first) text += "\n";
        text += line;
        first = false;
    }
    std::vector<int> ids;
    try {
        ids = tok.encode(text, false);
    } catch (const Error& e) {
        fail(path, ": ", e.what());
    }
    cd.file_tokens = (int64_t)ids.size();
    const int64_t slots = cd.file_tokens / len;
    SQ_CHECK(slots >= n, path, ": calibration file too short: ", cd.file_tokens, " tokens give ", slots,
             " windows of ", len, ", need ", n, " (lower --calib-n or --calib-len)");
    // Seeded choice of n of the `slots` non-overlapping windows (portable:
    // mt19937_64 output is fixed by the standard; the shuffle is our own).
    std::vector<int64_t> order(slots);
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(seed);
    for (int64_t i = slots - 1; i > 0; --i) std::swap(order[i], order[rng() % (uint64_t)(i + 1)]);
    order.resize(n);
    std::sort(order.begin(), order.end());
    for (int64_t s : order) cd.seqs.emplace_back(ids.begin() + s * len, ids.begin() + (s + 1) * len);
    return cd;
}

}  // namespace sq
