// The evaluation run: task selection (lists, "all", "quick"), data loading
// and validation up front, tokenization, scoring with one progress bar over
// the whole run, metrics and the 9-task means.
//
// The harness sees only a LoglikSource and a TextEncoder, so FP32 and
// quantized models (other Linear implementations) run through the same code.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "eval/loglik.h"
#include "eval/metrics.h"
#include "eval/perplexity.h"

namespace sq {

struct EvalOptions {
    std::vector<std::string> tasks;   // task names and/or "wikitext2"
    std::string suite = "custom";     // "all", "quick" or "custom" (for reports)
    int limit = 0;                    // per task, 0 = all documents
    std::map<std::string, int> task_limits;  // overrides `limit` per task (quick suite)
    uint64_t seed = 1234;             // subset selection (seeded shuffle, first N)
    int ctx = 2048;                   // max length for tasks, window for perplexity
    int ppl_windows = 0;              // 0 = all windows
    std::string data_dir;             // holds tasks/ and wikitext2/
    std::string ppl_file;             // default <data_dir>/wikitext2/wiki.test.raw
    bool progress = true;
    bool dry_run = false;             // load, validate, tokenize and plan; score nothing
};

// Parses "--tasks": comma-separated names, "all", "quick". Fills tasks, suite
// and (for quick) task_limits / ppl_windows. Throws on unknown names.
void eval_select(const std::string& spec, EvalOptions& o);

// The quick suite: documents per task and WikiText-2 windows (docs/eval.md).
const std::map<std::string, int>& quick_task_limits();
int quick_ppl_windows();

struct TaskRun {
    std::string task, path, sha256;
    int64_t n_total = 0, n = 0;   // documents in the file, scored
    int limit = 0;
    int64_t tokens = 0;           // tokens forwarded (planned, in a dry run)
    int64_t calls = 0;            // Model::forward calls (planned, in a dry run)
    double seconds = 0.0;
    double cpu_seconds = 0.0;     // process CPU time (user + sys): with T threads on an
                                  // otherwise idle machine, wall ~ cpu / T
    std::vector<Metric> metrics;
    PplResult ppl;                // wikitext2 only
    // Per scored document (kept for --samples): its line and one score per request.
    std::vector<int> lines;
    std::vector<std::vector<ContinuationScore>> scores;
};

struct EvalResult {
    std::vector<TaskRun> runs;    // in report order
    Metric headline;              // mean over zero-shot tasks of their headline metric
    Metric acc_mean;              // mean of acc over the same tasks
    int zero_shot_tasks = 0;      // tasks in the means (9 for the full headline)
    double seconds = 0.0;         // scoring wall time (after loading/tokenizing)
    double cpu_seconds = 0.0;     // process CPU time while scoring
    double prepare_seconds = 0.0; // data loading, hashing, tokenization
    int64_t tokens = 0;           // tokens forwarded while scoring
    int64_t calls = 0;            // Model::forward calls while scoring
};

EvalResult eval_run(LoglikSource& src, const TextEncoder& enc, const EvalOptions& o,
                    const std::atomic<bool>* cancel = nullptr);

}  // namespace sq
