// The quantization options shared by `quantize` and `compare`, declared once.
#pragma once
#include <CLI/CLI.hpp>

#include "quant/pipeline.h"

namespace sq {

struct QuantCliOptions {
    std::string method = "specquant";
    int w_bits = 4, a_bits = 4, kv_bits = 16;
    float a_clip = 0.9f, kv_clip = 1.0f;
    int k_bar = 32;
    int embed_bits = 8;
    std::string importance = "entropy";
    float temperature = 1.0f;
    std::string basis = "fourier";
    std::string weight_quantizer;  // "" = the method's default
    std::string smooth;            // "", "on", "off"
    std::string spectral;          // "", "on", "off"
    std::string a_clip_search;     // "", "on", "off"
    std::string gptq_qinput;       // "", "on", "off"
    std::string k_center;          // "", "on", "off"
    bool rotate = false;
    std::string calib;
    int calib_n = 32, calib_len = 512;
    uint64_t seed = 0;
};

// Declares the options on `app`. with_bits: --w-bits/--a-bits/--kv-bits too
// (compare takes --bits instead), with_method: --method.
void quant_cli_add(CLI::App& app, QuantCliOptions& o, bool with_method, bool with_bits);

// Method defaults overridden by the options; validated.
QuantConfig quant_cli_config(const QuantCliOptions& o, const std::string& method, int w_bits, int a_bits,
                             int kv_bits);

}  // namespace sq
