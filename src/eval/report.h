// Reports of an evaluation run: an aligned table on stdout and the same
// numbers as JSON with everything needed to reproduce them (model, method,
// W/A/KV bits, ctx, limits, seed, data sha256, git revision).
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include "eval/eval.h"

namespace sq {

struct RunInfo {
    std::string model;       // path as given
    std::string method;      // "fp", later the quantization recipe
    std::string w_bits = "32", a_bits = "32", kv_bits = "32";  // as strings: "4", "16", "32"
    std::string checkpoint_dtype;  // storage type of the checkpoint's weights ("Q4_1", "BF16", ...)
    std::string git_rev;     // git_revision()
    int threads = 0;
    double load_seconds = 0.0;
};

// task | metric | value | stderr | n, then the two zero-shot means and the speed.
void report_print(const RunInfo& info, const EvalOptions& o, const EvalResult& r, FILE* out);

std::string report_json(const RunInfo& info, const EvalOptions& o, const EvalResult& r);

// The WikiText-2 window NLLs of a report written by `ppl --json` or `eval --json`
// (tasks.wikitext2.window_nll), for a paired comparison with a run over the same
// windows: the report's ctx and text sha256 must equal `ctx` and `text_sha256`
// (empty: not checked, for a check before the run).
// Throws sq::Error naming the file and what does not match.
std::vector<double> report_window_nll(const std::string& path, int ctx, const std::string& text_sha256);

// One JSON line per scored document: task, line (1-based, in the task file),
// gold, and per request the summed log-likelihood and the greedy flag, so
// scripts/eval_reference.py can compare document by document.
std::string report_samples_jsonl(const EvalResult& r);

// Writes `text` to path.tmp.<pid>, fsyncs, renames over `path`. SIGINT is
// blocked meanwhile, so Ctrl-C never leaves a partial file; on error the
// temporary is removed and sq::Error names the path.
void write_file_atomic(const std::string& path, const std::string& text);

// Repository holding the running binary (walks up from /proc/self/exe, then
// from the working directory, to a directory with .git); "" if none.
std::string repo_root();
// HEAD commit read from <repo>/.git at run time (branch refs, packed-refs,
// detached HEAD, worktree .git files); "unknown" when unreadable.
std::string git_revision(const std::string& repo);

}  // namespace sq
