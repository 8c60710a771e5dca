// specquant eval -m MODEL --tasks LIST|all|quick [--limit N] [--chunks N] [--seed S]
//                [-c CTX] [--data-dir DIR] [--json OUT] [-t T] [--dry-run]
// Zero-shot tasks and WikiText-2 perplexity with lm-evaluation-harness
// prompts and scoring (docs/eval.md). Table on stdout; --json writes the same
// numbers atomically (nothing is written when the run fails or is interrupted).
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "cli/common.h"
#include "core/error.h"
#include "core/threads.h"
#include "eval/eval.h"
#include "eval/interrupt.h"
#include "eval/loglik_cuda.h"
#include "eval/report.h"

namespace sq {

namespace {

struct EvalArgs {
    std::string model, tasks = "quick", data_dir, json_out, samples_out, device = "cpu";
    int limit = 0, ctx = 2048, threads = 0, chunks = 0;
    uint64_t seed = 1234;
    bool dry_run = false;
};

// Fails before the (long) run when the report could not be written.
void check_writable(const std::string& path) {
    namespace fs = std::filesystem;
    fs::path dir = fs::path(path).parent_path();
    if (dir.empty()) dir = ".";
    SQ_CHECK(fs::is_directory(dir), path, ": directory ", dir.string(), " does not exist");
    SQ_CHECK(::access(dir.c_str(), W_OK) == 0, path, ": directory ", dir.string(), " is not writable");
}

CommandAction eval_setup(CLI::App& app) {
    auto a = std::make_shared<EvalArgs>();
    app.add_option("-m,--model", a->model, "GGUF file or Hugging Face directory")->required();
    app.add_option("--tasks", a->tasks,
                   "comma list of wikitext2,arc_easy,arc_challenge,boolq,hellaswag,lambada,openbookqa,piqa,siqa,"
                   "winogrande; or all; or quick (seeded subsets, < 20 min for SmolLM2-135M on 2 cores)")
        ->capture_default_str();
    app.add_option("--limit", a->limit, "documents per task: seeded shuffle, then the first N (0 = all)")
        ->capture_default_str();
    app.add_option("--chunks", a->chunks, "WikiText-2: score only the first N windows (0 = all)")
        ->capture_default_str();
    app.add_option("--seed", a->seed, "seed of the document subsets")->capture_default_str();
    app.add_option("-c,--ctx", a->ctx, "max tokens per request; WikiText-2 window length")->capture_default_str();
    app.add_option("--data-dir", a->data_dir, "evaluation data (default ../shared/data)");
    app.add_option("--json", a->json_out, "also write the report as JSON to this file");
    app.add_option("--samples", a->samples_out,
                   "also write per-document log-likelihoods as JSON lines (for scripts/eval_reference.py)");
    app.add_option("-t,--threads", a->threads, "threads (0 = all)")->capture_default_str();
    app.add_option("--device", a->device, "where the model runs: cpu, or cuda (a build with -DSPECQUANT_CUDA=ON)")
        ->check(CLI::IsMember({"cpu", "cuda"}))
        ->capture_default_str();
    app.add_flag("--dry-run", a->dry_run, "validate and tokenize the data, print tokens and forward calls per task");
    return [a]() {
        EvalOptions o;
        eval_select(a->tasks, o);
        if (a->limit > 0) {
            SQ_CHECK(o.suite != "quick", "--limit does not combine with --tasks quick (fixed sizes)");
            o.limit = a->limit;
        }
        SQ_CHECK(a->limit >= 0, "--limit must be >= 0");
        SQ_CHECK(a->chunks >= 0, "--chunks must be >= 0");
        if (a->chunks > 0) {
            SQ_CHECK(o.suite != "quick", "--chunks does not combine with --tasks quick (fixed sizes)");
            o.ppl_windows = a->chunks;
        }
        o.seed = a->seed;
        o.ctx = a->ctx;
        o.data_dir = a->data_dir.empty() ? default_data_dir() : a->data_dir;
        o.dry_run = a->dry_run;
        if (!a->json_out.empty()) check_writable(a->json_out);
        if (!a->samples_out.empty()) check_writable(a->samples_out);
        threads_set(a->threads);

        LoadedModel lm = model_open(a->model);
        if (o.ctx > lm.model->config().max_ctx) {
            std::fprintf(stderr, "warning: -c %d exceeds the model's context %d; using %d\n", o.ctx,
                         lm.model->config().max_ctx, lm.model->config().max_ctx);
            o.ctx = lm.model->config().max_ctx;
        }
        SQ_CHECK(o.ctx >= 16, "-c ", o.ctx, " too small");
        SigintGuard sigint;
        std::unique_ptr<LoglikSource> src = loglik_source_make(*lm.model, o.ctx, a->dry_run ? "cpu" : a->device);
        EvalResult r = eval_run(*src, text_encoder(*lm.tok), o, sigint.flag());

        RunInfo info;
        info.model = a->model;
        run_info_quant(info, lm);
        info.git_rev = git_revision(repo_root());
        info.threads = threads_count();
        info.load_seconds = lm.load_s;
        report_print(info, o, r, stdout);
        if (!a->json_out.empty() && !o.dry_run) {
            write_file_atomic(a->json_out, report_json(info, o, r));
            std::fprintf(stderr, "wrote %s\n", a->json_out.c_str());
        }
        if (!a->samples_out.empty() && !o.dry_run) {
            write_file_atomic(a->samples_out, report_samples_jsonl(r));
            std::fprintf(stderr, "wrote %s\n", a->samples_out.c_str());
        }
        return 0;
    };
}

}  // namespace

SQ_COMMAND(eval, "eval", "zero-shot tasks + WikiText-2 perplexity, lm-eval-harness protocol", eval_setup);

}  // namespace sq
