#include "eval/eval.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <iterator>
#include <memory>

#include "core/error.h"
#include "core/progress.h"
#include "core/sha256.h"
#include "eval/batch.h"

namespace sq {

namespace {

const char* kWikitext = "wikitext2";

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double cpu_s() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + 1e-6 * (double)u.ru_utime.tv_usec + (double)u.ru_stime.tv_sec +
           1e-6 * (double)u.ru_stime.tv_usec;
}

void check_cancel(const std::atomic<bool>* cancel) {
    if (cancel && cancel->load()) fail("interrupted (SIGINT); no results written");
}

struct PreparedTask {
    const TaskSpec* spec = nullptr;
    TaskData data;
    std::vector<int> idx;                       // selected documents
    std::vector<std::vector<TokenPair>> groups;  // per selected document
    std::vector<int64_t> cost;                  // tokens forwarded per document
    std::vector<int64_t> packed;                // tokens per document in varlen batches (no prefix sharing)
    int64_t calls = 0;                          // planned Model::forward calls
    int limit = 0;
};

}  // namespace

const std::map<std::string, int>& quick_task_limits() {
    // FP32 SmolLM2-135M on the 2-core dev machine costs t = 0.03 s per
    // Model::forward call + 0.006 s per token (min of 7, docs/eval.md). With
    // the per-document calls and tokens of each task (--dry-run), n_i is
    // proportional to 1/sqrt(cost per document), which minimizes the variance
    // of the 9-task mean for a fixed time: ~500 s of scoring + 4 windows
    // (~60 s), half the 20-minute budget, leaving room for a busy machine.
    static const std::map<std::string, int> m = {
        {"arc_easy", 130},   {"arc_challenge", 120}, {"boolq", 85},  {"hellaswag", 75},   {"lambada", 110},
        {"openbookqa", 165}, {"piqa", 125},          {"siqa", 140},  {"winogrande", 160},
    };
    return m;
}

int quick_ppl_windows() { return 4; }

void eval_select(const std::string& spec, EvalOptions& o) {
    o.tasks.clear();
    o.task_limits.clear();
    auto all = [&o]() {
        o.tasks.push_back(kWikitext);
        for (const auto& s : task_specs()) o.tasks.push_back(s.name);
    };
    if (spec == "all") {
        o.suite = "all";
        all();
        return;
    }
    if (spec == "quick") {
        o.suite = "quick";
        all();
        o.task_limits = quick_task_limits();
        o.ppl_windows = quick_ppl_windows();
        return;
    }
    o.suite = "custom";
    size_t start = 0;
    while (start <= spec.size()) {
        size_t end = spec.find(',', start);
        if (end == std::string::npos) end = spec.size();
        std::string name = spec.substr(start, end - start);
        start = end + 1;
        if (name.empty()) continue;
        if (name != kWikitext && !task_find(name)) {
            std::string known = kWikitext;
            for (const auto& s : task_specs()) known += std::string(", ") + s.name;
            fail("unknown task \"", name, "\"; known: ", known, ", all, quick");
        }
        if (std::find(o.tasks.begin(), o.tasks.end(), name) == o.tasks.end()) o.tasks.push_back(name);
    }
    SQ_CHECK(!o.tasks.empty(), "no tasks selected");
}

EvalResult eval_run(LoglikSource& src, const TextEncoder& enc, const EvalOptions& o,
                    const std::atomic<bool>* cancel) {
    const double t_start = now_s();
    const int max_len = std::min(o.ctx, src.max_length());
    auto wanted = [&o](const std::string& n) { return std::find(o.tasks.begin(), o.tasks.end(), n) != o.tasks.end(); };
    auto limit_of = [&o](const std::string& n) {
        auto it = o.task_limits.find(n);
        return it != o.task_limits.end() ? it->second : o.limit;
    };

    // 1. Load and validate every file before any scoring, so bad data fails in seconds.
    std::vector<PreparedTask> tasks;
    for (const auto& s : task_specs()) {
        if (!wanted(s.name)) continue;
        PreparedTask p;
        p.spec = &s;
        p.data = task_load(s, o.data_dir);
        p.limit = limit_of(s.name);
        p.idx = subset_indices((int)p.data.docs.size(), p.limit, o.seed);
        tasks.push_back(std::move(p));
    }
    const bool ppl = wanted(kWikitext);
    std::string ppl_path = o.ppl_file.empty() ? o.data_dir + "/wikitext2/wiki.test.raw" : o.ppl_file;
    std::string ppl_text, ppl_sha;
    if (ppl) {
        ppl_text = wikitext_read(ppl_path);
        ppl_sha = sha256_file(ppl_path);
    }

    // 2. Tokenize (lm-eval's context/continuation split) and plan the forward passes.
    int64_t n_docs = 0;
    for (const auto& p : tasks) n_docs += (int64_t)p.idx.size();
    std::vector<int> ppl_tokens;
    {
        std::unique_ptr<Progress> bar;
        if (o.progress) bar = std::make_unique<Progress>("tokenize", n_docs + (ppl ? 1 : 0), "doc");
        for (auto& p : tasks) {
            for (int i : p.idx) {
                check_cancel(cancel);
                const TaskDoc& d = p.data.docs[i];
                std::vector<TokenPair> g;
                for (size_t r = 0; r < d.contexts.size(); ++r) {
                    try {
                        g.push_back(encode_pair(enc, d.contexts[r], d.continuations[r]));
                    } catch (const Error& e) {
                        fail(p.data.path, ":", d.line, ": ", e.what());
                    }
                }
                int64_t cost = 0, packed = 0;
                try {
                    GroupPlan plan = group_plan(g, max_len);
                    cost = plan.forward_tokens;
                    packed = plan.packed_tokens;
                    p.calls += plan.forward_calls;
                } catch (const Error& e) {
                    fail(p.data.path, ":", d.line, ": ", e.what());
                }
                p.groups.push_back(std::move(g));
                p.cost.push_back(cost);
                p.packed.push_back(packed);
                if (bar) bar->add();
            }
        }
        if (ppl) {
            if (enc.bos >= 0) ppl_tokens.push_back(enc.bos);
            std::vector<int> body = enc.encode(ppl_text);
            ppl_tokens.insert(ppl_tokens.end(), body.begin(), body.end());
            if (bar) bar->add();
        }
    }
    const int ppl_total = ppl ? ppl_windows_available((int64_t)ppl_tokens.size(), max_len) : 0;
    const int ppl_used = o.ppl_windows > 0 && o.ppl_windows < ppl_total ? o.ppl_windows : ppl_total;

    EvalResult res;
    res.prepare_seconds = now_s() - t_start;
    if (o.dry_run) {
        if (ppl) {
            TaskRun run;
            run.task = kWikitext;
            run.path = ppl_path;
            run.sha256 = ppl_sha;
            run.n_total = ppl_total;
            run.n = ppl_used;
            run.tokens = (int64_t)ppl_used * max_len;
            run.calls = (int64_t)ppl_used * ((max_len - 1 + kLogitChunk - 1) / kLogitChunk);
            res.runs.push_back(run);
        }
        for (const auto& p : tasks) {
            TaskRun run;
            run.task = p.spec->name;
            run.path = p.data.path;
            run.sha256 = p.data.sha256;
            run.n_total = (int64_t)p.data.docs.size();
            run.n = (int64_t)p.idx.size();
            run.limit = p.limit;
            run.calls = p.calls;
            for (int64_t c : p.cost) run.tokens += c;
            res.runs.push_back(run);
        }
        for (const auto& r : res.runs) res.tokens += r.tokens, res.calls += r.calls;
        return res;
    }

    // 3. Score, one progress bar over all forwarded tokens. A batching source
    // (batch_tokens() > 0) gets chunks of documents that fill one batch each
    // and forwards every request whole, so its bar counts packed tokens.
    const int64_t batch = src.batch_tokens();
    for (auto& p : tasks)
        if (batch > 0) p.cost = p.packed;
    int64_t total_cost = (int64_t)ppl_used * max_len;
    for (const auto& p : tasks)
        for (int64_t c : p.cost) total_cost += c;
    std::unique_ptr<Progress> bar;
    if (o.progress) bar = std::make_unique<Progress>("eval", total_cost, "tok");
    const double t_score = now_s(), cpu_score = cpu_s();
    const int64_t tok0 = src.tokens_forwarded(), calls0 = src.forward_calls();

    if (ppl) {
        TaskRun run;
        run.task = kWikitext;
        run.path = ppl_path;
        run.sha256 = ppl_sha;
        run.limit = o.ppl_windows;
        const double t0 = now_s(), u0 = cpu_s();
        const int64_t k0 = src.tokens_forwarded(), c0 = src.forward_calls();
        if (bar) bar->set_suffix(kWikitext);
        run.ppl = perplexity_eval(
            src, ppl_tokens, max_len, ppl_used, [&bar](int64_t n) { if (bar) bar->add(n); }, cancel);
        run.n_total = run.ppl.windows_total;
        run.n = run.ppl.windows;
        run.seconds = now_s() - t0;
        run.cpu_seconds = cpu_s() - u0;
        run.tokens = src.tokens_forwarded() - k0;
        run.calls = src.forward_calls() - c0;
        run.metrics.push_back({kWikitext, "ppl", run.ppl.ppl, run.ppl.ppl_se, run.n});
        res.runs.push_back(std::move(run));
    }
    std::vector<Metric> headline_parts, acc_parts;
    for (auto& p : tasks) {
        TaskRun run;
        run.task = p.spec->name;
        run.path = p.data.path;
        run.sha256 = p.data.sha256;
        run.n_total = (int64_t)p.data.docs.size();
        run.n = (int64_t)p.idx.size();
        run.limit = p.limit;
        const double t0 = now_s(), u0 = cpu_s();
        const int64_t k0 = src.tokens_forwarded(), c0 = src.forward_calls();
        if (bar) bar->set_suffix(run.task);
        std::vector<const TaskDoc*> docs;
        std::vector<std::vector<ContinuationScore>> scores;
        for (size_t k = 0; k < p.idx.size();) {
            check_cancel(cancel);
            const size_t e = chunk_end(p.packed, k, batch);
            std::vector<std::vector<TokenPair>> chunk(std::make_move_iterator(p.groups.begin() + (ptrdiff_t)k),
                                                      std::make_move_iterator(p.groups.begin() + (ptrdiff_t)e));
            std::vector<std::vector<ContinuationScore>> got = src.score_batch(chunk);
            SQ_CHECK(got.size() == chunk.size(), "source returned ", got.size(), " documents' scores for ",
                     chunk.size());
            for (size_t j = k; j < e; ++j) {
                SQ_CHECK(got[j - k].size() == chunk[j - k].size(), "source returned ", got[j - k].size(),
                         " scores for ", chunk[j - k].size(), " requests");
                docs.push_back(&p.data.docs[p.idx[j]]);
                scores.push_back(std::move(got[j - k]));
                if (bar) bar->add(p.cost[j]);
            }
            k = e;
        }
        p.groups.clear();
        run.metrics = task_metrics(*p.spec, docs, scores);
        for (const TaskDoc* d : docs) run.lines.push_back(d->line);
        run.scores = std::move(scores);
        run.seconds = now_s() - t0;
        run.cpu_seconds = cpu_s() - u0;
        run.tokens = src.tokens_forwarded() - k0;
        run.calls = src.forward_calls() - c0;
        for (const auto& m : run.metrics) {
            if (m.metric == p.spec->headline) headline_parts.push_back(m);
            if (m.metric == "acc") acc_parts.push_back(m);
        }
        res.runs.push_back(std::move(run));
    }
    if (bar) bar->finish();
    res.seconds = now_s() - t_score;
    res.cpu_seconds = cpu_s() - cpu_score;
    res.tokens = src.tokens_forwarded() - tok0;
    res.calls = src.forward_calls() - calls0;
    res.zero_shot_tasks = (int)tasks.size();
    res.headline = metric_mean("zero_shot_mean", headline_parts);
    res.headline.metric = "headline";
    res.acc_mean = metric_mean("zero_shot_mean", acc_parts);
    res.acc_mean.metric = "acc";
    return res;
}

}  // namespace sq
