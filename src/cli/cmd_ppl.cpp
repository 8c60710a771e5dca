// specquant ppl -m PATH [-f FILE] [-c CTX] [--chunks N] [-t T] [--json OUT] [--paired REPORT.json]
// WikiText-2 perplexity (docs/eval.md): windows of CTX tokens, every token but
// the first of each window scored; prints PPL ± stderr (delta method over
// window means). FILE defaults to <data>/wikitext2/wiki.test.raw, <data> being
// ../shared/data relative to the working directory, else to the repository.
// --paired: the PPL ratio against another run over the same windows (another
// engine, kernel or model), window by window (ppl_paired), with its 95% interval.
#include <cstdio>

#include "cli/common.h"
#include "core/error.h"
#include "core/threads.h"
#include "eval/eval.h"
#include "eval/interrupt.h"
#include "eval/loglik_cuda.h"
#include "eval/report.h"

namespace sq {

namespace {

struct PplArgs {
    std::string model, file, json_out, paired, device = "cpu";
    int ctx = 2048, chunks = 0, threads = 0;
};

CommandAction ppl_setup(CLI::App& app) {
    auto a = std::make_shared<PplArgs>();
    app.add_option("-m,--model", a->model, "GGUF file or Hugging Face directory")->required();
    app.add_option("-f,--file", a->file, "text file (default: WikiText-2 test from ../shared/data)");
    app.add_option("-c,--ctx", a->ctx, "window length in tokens")->capture_default_str();
    app.add_option("--chunks", a->chunks, "score only the first N windows (0 = all)")->capture_default_str();
    app.add_option("-t,--threads", a->threads, "threads (0 = all)")->capture_default_str();
    app.add_option("--json", a->json_out, "also write the report as JSON to this file");
    app.add_option("--paired", a->paired,
                   "a JSON report (ppl/eval --json) over the same windows: print the PPL ratio window by window");
    app.add_option("--device", a->device, "where the model runs: cpu, or cuda (a build with -DSPECQUANT_CUDA=ON)")
        ->check(CLI::IsMember({"cpu", "cuda"}))
        ->capture_default_str();
    return [a]() {
        SQ_CHECK(a->chunks >= 0, "--chunks must be >= 0");
        EvalOptions o;
        o.tasks = {"wikitext2"};
        o.suite = "ppl";
        o.ctx = a->ctx;
        o.ppl_windows = a->chunks;
        o.data_dir = default_data_dir();
        o.ppl_file = a->file;
        threads_set(a->threads);

        // Before a run of minutes: the report opens, has per-window NLLs and this ctx.
        if (!a->paired.empty()) report_window_nll(a->paired, a->ctx, "");
        LoadedModel lm = model_open(a->model);
        SQ_CHECK(o.ctx >= 2 && o.ctx <= lm.model->config().max_ctx, "-c ", o.ctx, " outside [2, ",
                 lm.model->config().max_ctx, "] (the model's context)");
        SigintGuard sigint;
        std::unique_ptr<LoglikSource> src = loglik_source_make(*lm.model, o.ctx, a->device);
        EvalResult r = eval_run(*src, text_encoder(*lm.tok), o, sigint.flag());
        const PplResult& p = r.runs.at(0).ppl;
        std::printf("%s: %d of %d windows x %d tokens, %lld tokens scored, %.1f s (%.1f tokens/s)\n",
                    r.runs[0].path.c_str(), p.windows, p.windows_total, p.ctx, (long long)p.tokens_scored, r.seconds,
                    r.seconds > 0 ? (double)r.tokens / r.seconds : 0.0);
        if (p.windows >= 2)
            std::printf("PPL = %.4f +/- %.4f  (mean NLL %.5f +/- %.5f nats; stderr across windows, delta method)\n",
                        p.ppl, p.ppl_se, p.nll, p.nll_se);
        else
            std::printf("PPL = %.4f  (mean NLL %.5f nats; stderr needs >= 2 windows)\n", p.ppl, p.nll);
        if (!a->paired.empty()) {
            const std::vector<double> other = report_window_nll(a->paired, p.ctx, r.runs[0].sha256);
            SQ_CHECK(other.size() == p.window_nll.size(), a->paired, ": ", other.size(), " windows, this run ",
                     p.window_nll.size(), " (use the same --chunks)");
            const PplPaired d = ppl_paired(p.window_nll, other);
            std::printf("paired with %s (%d windows): PPL ratio %.5f = %+.3f%% (95%% interval %+.3f%% .. %+.3f%%); "
                        "mean dNLL %+.6f +/- %.6f nats\n",
                        a->paired.c_str(), d.windows, d.ratio, 100.0 * (d.ratio - 1.0), 100.0 * (d.ratio_lo - 1.0),
                        100.0 * (d.ratio_hi - 1.0), d.dnll, d.dnll_se);
        }
        if (!a->json_out.empty()) {
            RunInfo info;
            info.model = a->model;
            run_info_quant(info, lm);
            info.git_rev = git_revision(repo_root());
            info.threads = threads_count();
            info.load_seconds = lm.load_s;
            write_file_atomic(a->json_out, report_json(info, o, r));
            std::fprintf(stderr, "wrote %s\n", a->json_out.c_str());
        }
        return 0;
    };
}

}  // namespace

SQ_COMMAND(ppl, "ppl", "perplexity on WikiText-2 (or -f FILE) with a progress bar and stderr", ppl_setup);

}  // namespace sq
