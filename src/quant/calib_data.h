// Calibration token windows from a text file (never evaluation data).
// wiki.utf8-style files: `<doc …>` / `</doc>` lines are dropped and documents
// joined with "\n\n"; other files are used as they are.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/tokenizer.h"

namespace sq {

struct CalibData {
    std::vector<std::vector<int>> seqs;  // n windows of len tokens
    std::string sha256;                  // of the file's bytes
    int64_t file_tokens = 0;
};

// Tokenizes the whole file once and draws n windows of `len` tokens at
// seeded random, non-overlapping offsets. sq::Error naming the file when it
// is missing, empty, or has fewer than n·len tokens.
CalibData calib_load(const std::string& path, const Tokenizer& tok, int n, int len, uint64_t seed);

}  // namespace sq
