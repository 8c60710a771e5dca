// specquant compare -m MODEL --methods fp,rtn,smoothquant,gptq,quarot,specquant
//                   --bits w4a4kv4,w4a4kv16,w4a16 --suite quick|full [--json OUT]
// Quantizes the checkpoint with every method at every setting (same
// calibration, same harness, one process) and prints one table:
// method × setting × WikiText-2 PPL × each task's headline × 9-task mean.
#include <chrono>
#include <cstdio>
#include <regex>
#include <sstream>

#include "cli/common.h"
#include "cli/quant_options.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/threads.h"
#include "eval/eval.h"
#include "eval/interrupt.h"
#include "eval/loglik_cuda.h"
#include "eval/report.h"
#include "eval/tasks.h"
#include "quant/pipeline.h"

namespace sq {

namespace {

struct Bits {
    std::string name;
    int w, a, kv;
};

Bits parse_bits(const std::string& s) {
    std::smatch m;
    static const std::regex re("w(\\d+)a(\\d+)(?:kv(\\d+))?");
    SQ_CHECK(std::regex_match(s, m, re), "--bits: '", s, "' is not of the form w4a4kv4, w4a4kv16 or w4a16");
    return {s, std::stoi(m[1]), std::stoi(m[2]), m[3].matched ? std::stoi(m[3]) : 16};
}

std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(item);
    return out;
}

struct Row {
    std::string method, bits;
    EvalResult r;
    double quant_s = 0.0;
};

CommandAction compare_setup(CLI::App& app) {
    struct Opts {
        std::string model, methods = "fp,rtn,smoothquant,gptq,quarot,specquant", bits = "w4a4kv4,w4a4kv16,w4a16",
                           suite = "quick", data_dir, json_out, device = "cpu";
        int threads = 0, ctx = 2048, limit = 0, chunks = 0;
        uint64_t eval_seed = 1234;
        QuantCliOptions q;
    };
    auto o = std::make_shared<Opts>();
    app.add_option("-m,--model", o->model, "GGUF file or Hugging Face directory")->required();
    app.add_option("--methods", o->methods, "comma list of methods")->capture_default_str();
    app.add_option("--bits", o->bits, "comma list of settings wWaA[kvK]")->capture_default_str();
    app.add_option("--suite", o->suite, "quick | full | a --tasks list for specquant eval")->capture_default_str();
    app.add_option("--limit", o->limit, "documents per task for a custom suite (0 = all)")->capture_default_str();
    app.add_option("-c,--ctx", o->ctx, "context / WikiText-2 window")->capture_default_str();
    app.add_option("--chunks", o->chunks, "WikiText-2 windows to score (0 = the suite's)")->capture_default_str();
    app.add_option("--eval-seed", o->eval_seed, "seed of the task subsets")->capture_default_str();
    app.add_option("--data-dir", o->data_dir, "evaluation data (default ../shared/data)");
    app.add_option("--json", o->json_out, "also write all results as JSON");
    app.add_option("-t,--threads", o->threads, "threads (0 = all)")->capture_default_str();
    app.add_option("--device", o->device, "where the model runs: cpu, or cuda (a build with -DSPECQUANT_CUDA=ON)")
        ->check(CLI::IsMember({"cpu", "cuda"}))
        ->capture_default_str();
    quant_cli_add(app, o->q, false, false);
    return [o]() {
        threads_set(o->threads);
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<std::string> methods = split(o->methods);
        std::vector<Bits> bits;
        for (auto& b : split(o->bits)) bits.push_back(parse_bits(b));
        SQ_CHECK(!methods.empty() && !bits.empty(), "compare: no methods or no bit settings");
        SQ_CHECK(o->device != "cuda" || cuda_built(),
                 "--device cuda: this specquant was built without CUDA (configure with -DSPECQUANT_CUDA=ON)");
        // Calibration text lives in the evaluation data directory unless --calib says otherwise.
        if (o->q.calib.empty() && !o->data_dir.empty()) o->q.calib = o->data_dir + "/calib/wiki.utf8";
        // Validate every configuration before the (long) run.
        for (auto& m : methods)
            for (auto& b : bits) quant_cli_config(o->q, m, b.w, b.a, b.kv);
        EvalOptions eo;
        eval_select(o->suite == "full" ? "all" : o->suite, eo);
        if (o->limit > 0) eo.limit = o->limit;
        if (o->chunks > 0) eo.ppl_windows = o->chunks;
        eo.seed = o->eval_seed;
        eo.ctx = o->ctx;
        eo.data_dir = o->data_dir.empty() ? default_data_dir() : o->data_dir;

        LoadedModel base = model_open(o->model);
        SQ_CHECK(!base.packed, o->model, ": compare needs the full-precision checkpoint");
        SigintGuard sigint;
        std::vector<Row> rows;
        for (auto& m : methods) {
            for (auto& b : bits) {
                if (m == "fp" && &b != &bits.front()) continue;  // fp once
                QuantConfig qc = quant_cli_config(o->q, m, b.w, b.a, b.kv);
                std::fprintf(stderr, "== %s %s\n", m.c_str(), m == "fp" ? "w16a16kv16" : b.name.c_str());
                const auto tq = std::chrono::steady_clock::now();
                Model model(quantize_model(model_load_f32(base.ck, false), *base.tok, qc));
                Row row{m, m == "fp" ? "w16a16kv16" : b.name, {}, 0.0};
                row.quant_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - tq).count();
                std::unique_ptr<LoglikSource> src =
                    loglik_source_make(model, std::min(eo.ctx, model.config().max_ctx), o->device);
                row.r = eval_run(*src, text_encoder(*base.tok), eo, sigint.flag());
                rows.push_back(std::move(row));
            }
        }
        // ---- table ----
        std::vector<std::string> tasks;
        for (auto& run : rows.front().r.runs)
            if (run.task != "wikitext2") tasks.push_back(run.task);
        std::printf("\n%s — suite %s, ctx %d, eval seed %llu; full precision = the checkpoint's weights as stored\n",
                    o->model.c_str(), o->suite.c_str(), eo.ctx, (unsigned long long)eo.seed);
        std::printf("%-12s %-11s %9s", "method", "bits", "wiki_ppl");
        for (auto& t : tasks) std::printf(" %9.9s", t.c_str());
        std::printf(" %8s %8s\n", "mean", "quant_s");
        nlohmann::json js = nlohmann::json::array();
        for (auto& row : rows) {
            std::printf("%-12s %-11s", row.method.c_str(), row.bits.c_str());
            nlohmann::json jr = {{"method", row.method}, {"bits", row.bits}, {"quant_seconds", row.quant_s},
                                 {"eval_seconds", row.r.seconds}};
            double ppl = NAN;
            for (auto& run : row.r.runs)
                if (run.task == "wikitext2") ppl = run.ppl.ppl, jr["wikitext2_ppl"] = run.ppl.ppl,
                                             jr["wikitext2_windows"] = run.ppl.windows;
            std::printf(" %9.3f", ppl);
            for (auto& run : row.r.runs) {
                if (run.task == "wikitext2") continue;
                const TaskSpec* spec = task_find(run.task);
                for (auto& mt : run.metrics)
                    if (spec && mt.metric == spec->headline) {
                        std::printf(" %9.2f", 100.0 * mt.value);
                        jr["tasks"][run.task] = {{"metric", mt.metric}, {"value", mt.value}, {"stderr", mt.se},
                                                 {"n", mt.n}};
                    }
            }
            if (row.r.zero_shot_tasks > 0) std::printf(" %8.2f %8.1f\n", 100.0 * row.r.headline.value, row.quant_s);
            else std::printf(" %8s %8.1f\n", "-", row.quant_s);
            if (row.r.zero_shot_tasks > 0) {
                jr["mean"] = row.r.headline.value;
                jr["mean_stderr"] = row.r.headline.se;
                jr["acc_mean"] = row.r.acc_mean.value;
                jr["zero_shot_tasks"] = row.r.zero_shot_tasks;
            }
            js.push_back(jr);
        }
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("wall time %s\n", format_duration(secs).c_str());
        if (!o->json_out.empty()) {
            nlohmann::json doc = {{"model", o->model}, {"suite", o->suite}, {"ctx", eo.ctx}, {"eval_seed", eo.seed},
                                  {"git_revision", git_revision(repo_root())}, {"seconds", secs},
                                  {"quant_options", quant_config_to_json(quant_cli_config(o->q, "specquant", 4, 4, 4))},
                                  {"rows", js}};
            write_file_atomic(o->json_out, doc.dump(1));
        }
        return 0;
    };
}

}  // namespace

SQ_COMMAND(compare, "compare", "Quantize with several methods and settings, evaluate all, print one table",
           compare_setup);

}  // namespace sq
