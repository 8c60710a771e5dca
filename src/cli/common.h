// What several subcommands share: the -m/-t options, loading a model and its
// tokenizer, and where the evaluation data lives.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/command.h"
#include "io/checkpoint.h"
#include "io/tokenizer.h"
#include "model/model.h"

namespace sq {

struct LoadedModel {
    std::string path;
    Checkpoint ck;  // empty for a packed (quantized) model file
    bool packed = false;
    nlohmann::json quant;  // method, bits, parameters ({"method": "fp"} for a checkpoint)
    std::unique_ptr<Model> model;
    std::unique_ptr<Tokenizer> tok;
    double load_s = 0.0;
};

// Opens a checkpoint (GGUF file or HF directory) as a float32 model, or a
// packed quantized model written by `specquant quantize`.
LoadedModel model_open(const std::string& path, bool progress = true);

struct RunInfo;
// Method, W/A/KV bits and storage dtype of a loaded model, for reports:
// a checkpoint runs in float32 ("fp", 32/32/32); a packed model reports the
// method and bits it was quantized with.
void run_info_quant(RunInfo& info, const LoadedModel& m);

// The shared data directory: `../shared/data` relative to the working
// directory, else relative to the repository the binary was built from.
std::string default_data_dir();

}  // namespace sq
