#include "cli/common.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <chrono>
#include <filesystem>

#include "core/error.h"
#include "eval/report.h"
#include "io/packed_file.h"
#include "quant/packed_model.h"

#ifndef SQ_SOURCE_DIR
#define SQ_SOURCE_DIR "."
#endif

namespace sq {

LoadedModel model_open(const std::string& path, bool progress) {
    auto t0 = std::chrono::steady_clock::now();
    LoadedModel m;
    m.path = path;
    if (packed_is(path)) {
        PackedModel pm = packed_model_load(path);
        m.packed = true;
        m.quant = pm.quant;
        m.tok = std::make_unique<Tokenizer>(std::move(pm.tokenizer));  // a copy would hold a second vocab until pm dies
        m.model = std::make_unique<Model>(std::move(pm.weights));
#ifdef __GLIBC__
        // The tokenizer's strings (TokenizerData: ~100k small blocks) were
        // freed once its compact tables were built: hand the pages back.
        malloc_trim(0);
#endif
    } else {
        m.ck = checkpoint_open(path);
        m.quant = {{"method", "fp"}, {"w_bits", 16}, {"a_bits", 16}, {"kv_bits", 16}};
        m.tok = std::make_unique<Tokenizer>(m.ck.tokenizer);
        m.model = std::make_unique<Model>(model_load_f32(m.ck, progress));
    }
    m.load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return m;
}

void run_info_quant(RunInfo& info, const LoadedModel& m) {
    const std::string method = m.quant.value("method", "fp");
    info.method = method;
    if (!m.packed) {
        info.w_bits = info.a_bits = info.kv_bits = "32";
        auto it = m.ck.tensors.find("layers.0.q");
        info.checkpoint_dtype = it == m.ck.tensors.end() ? "?" : it->second.dtype;
        return;
    }
    info.w_bits = std::to_string(m.quant.value("w_bits", 4));
    info.a_bits = std::to_string(m.quant.value("a_bits", 4));
    info.kv_bits = std::to_string(m.quant.value("kv_bits", 16));
    info.checkpoint_dtype = "packed";
}

std::string default_data_dir() {
    namespace fs = std::filesystem;
    for (fs::path p : {fs::path("../shared/data"), fs::path(SQ_SOURCE_DIR) / ".." / "shared" / "data"}) {
        std::error_code ec;
        if (fs::is_directory(p, ec)) return fs::weakly_canonical(p, ec).string();
    }
    return "../shared/data";
}

}  // namespace sq
