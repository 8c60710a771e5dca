// specquant quantize -m MODEL --method M [options] -o OUT
// Quantizes a checkpoint on calibration text and writes the packed model.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>

#include "cli/common.h"
#include "cli/quant_options.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/sha256.h"
#include "core/threads.h"
#include "eval/report.h"
#include "io/checkpoint.h"
#include "io/packed_file.h"
#include "io/tokenizer.h"
#include "model/model.h"
#include "quant/packed_model.h"

namespace sq {

double peak_rss_mib() {
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

static CommandAction quantize_setup(CLI::App& app) {
    struct Opts {
        std::string model, out, report;
        int threads = 0;
        QuantCliOptions q;
    };
    auto o = std::make_shared<Opts>();
    app.add_option("-m,--model", o->model, "GGUF file or Hugging Face directory")->required();
    app.add_option("-o,--output", o->out, "packed model file to write")->required();
    app.add_option("-t,--threads", o->threads, "threads (0 = all)")->capture_default_str();
    app.add_option("--report", o->report, "write per-layer statistics as JSON");
    quant_cli_add(app, o->q, true, true);
    return [o]() {
        threads_set(o->threads);
        const auto t0 = std::chrono::steady_clock::now();
        QuantConfig qc = quant_cli_config(o->q, o->q.method, o->q.w_bits, o->q.a_bits, o->q.kv_bits);
        SQ_CHECK(qc.method != "fp", "quantize: method fp writes nothing; evaluate the checkpoint directly");
        SQ_CHECK(!packed_is(o->model), o->model, ": already quantized; quantize a checkpoint (GGUF or HF directory)");
        // Streaming: the embedding and lm_head now, each decoder layer when the
        // pipeline reaches it (float memory of one layer; docs/method.md).
        const Checkpoint ck = checkpoint_open(o->model);
        const Tokenizer tok(ck.tokenizer);
        ModelWeights w0 = model_load_f32(ck, false, false);
        std::fprintf(stderr, "quantizing %s with %s (W%dA%dKV%d), calibration %s: %d x %d tokens\n", o->model.c_str(),
                     qc.method.c_str(), qc.w_bits, qc.a_bits, qc.kv_bits, qc.calib_path.c_str(), qc.calib_n,
                     qc.calib_len);
        nlohmann::json rep;
        ModelWeights w = quantize_model(std::move(w0), tok, qc, &rep, [&ck](int l) { return layer_load_f32(ck, l); });
        nlohmann::json quant = quant_config_to_json(qc);
        quant["source"] = o->model;
        quant["source_sha256"] = ck.format == "gguf" ? sha256_file(o->model) : std::string("directory");
        quant["calib_sha256"] = rep["calib_sha256"];
        quant["git_revision"] = git_revision(repo_root());
        packed_model_save(o->out, w, ck.tokenizer, quant);
        if (!o->report.empty()) write_file_atomic(o->report, rep.dump(1));
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        size_t bytes = 0;
        for (auto& L : w.layers)
            for (const Linear* p : {L.q.get(), L.k.get(), L.v.get(), L.o.get(), L.gate.get(), L.up.get(), L.down.get()})
                bytes += p->weight_bytes();
        std::printf("wrote %s: linear layers %.1f MiB packed; quantization %.1fs, total %s, peak RSS %.0f MiB\n",
                    o->out.c_str(), bytes / 1048576.0, (double)rep["seconds"], format_duration(secs).c_str(),
                    peak_rss_mib());
        return 0;
    };
}

SQ_COMMAND(quantize, "quantize", "Quantize a checkpoint (SpecQuant and baselines) to a packed W4A4 model",
           quantize_setup);

}  // namespace sq
