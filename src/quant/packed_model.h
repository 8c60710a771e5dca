// A quantized model on disk (docs/format.md): ModelWeights whose linears are
// W4A4/W4A16 (or float) + tokenizer + provenance, in the packed container.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "io/tokenizer_data.h"
#include "model/model.h"

namespace sq {

nlohmann::json config_to_json(const ModelConfig& c);
ModelConfig config_from_json(const nlohmann::json& j, const std::string& source);
nlohmann::json tokenizer_to_json(const TokenizerData& t);
TokenizerData tokenizer_from_json(const nlohmann::json& j, const std::string& source);

// Writes atomically. `quant` carries method, bits, parameters and hashes.
void packed_model_save(const std::string& path, const ModelWeights& w, const TokenizerData& tok,
                       const nlohmann::json& quant);

struct PackedModel {
    ModelWeights weights;
    TokenizerData tokenizer;
    nlohmann::json quant;
};

// Loads and validates (shapes, dtypes, rowsums); builds the reference backend.
PackedModel packed_model_load(const std::string& path);

}  // namespace sq
