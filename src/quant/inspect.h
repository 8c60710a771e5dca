// `specquant inspect`: what the spectral method meets in a real model — per
// layer and linear, the weight energy in the lowest 10/20/50% of frequency
// bins before and after smoothing, max|W|, max|Ŵ|, max|R| after a uniform
// k̄ split, and the activation outlier ratio (max / median channel absmax) of
// each linear's input, from a short float forward on calibration text.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "io/tokenizer.h"
#include "model/model.h"

namespace sq {

struct InspectOptions {
    std::string calib_path;
    int calib_n = 4, calib_len = 256;
    uint64_t seed = 0;
    float alpha = 0.5f;    // smoothing strength used for the "after smoothing" numbers
    int k_bar = 32;        // bins kept per row for max|R|
    int spectrum_bins = 32;
};

nlohmann::json inspect_model(const ModelWeights& w, const Tokenizer& tok, const InspectOptions& o);

}  // namespace sq
