// What several subcommands share: the -m/-t options, loading a model and its
// tokenizer, and where the evaluation data lives.
#pragma once
#include <memory>
#include <string>

#include "cli/command.h"
#include "io/checkpoint.h"
#include "io/tokenizer.h"
#include "model/model.h"

namespace sq {

struct LoadedModel {
    Checkpoint ck;
    std::unique_ptr<Model> model;
    std::unique_ptr<Tokenizer> tok;
    double load_s = 0.0;
};

// Opens a checkpoint (GGUF file or HF directory) and builds the float32 model.
LoadedModel model_open(const std::string& path, bool progress = true);

// The shared data directory: `../shared/data` relative to the working
// directory, else relative to the repository the binary was built from.
std::string default_data_dir();

}  // namespace sq
