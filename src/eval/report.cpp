#include "eval/report.h"

#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace sq {

namespace {

std::string fmt(const char* f, double v) {
    if (std::isnan(v)) return "n/a";
    char b[64];
    std::snprintf(b, sizeof b, f, v);
    return b;
}

nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

std::string slurp_line(const std::filesystem::path& p) {
    std::ifstream in(p);
    std::string s;
    if (!in || !std::getline(in, s)) return "";
    while (!s.empty() && (s.back() == '\r' || s.back() == ' ' || s.back() == '\n')) s.pop_back();
    return s;
}

bool is_hex40(const std::string& s) {
    if (s.size() != 40) return false;
    for (char c : s)
        if (!std::isxdigit((unsigned char)c)) return false;
    return true;
}

}  // namespace

void report_print(const RunInfo& info, const EvalOptions& o, const EvalResult& r, FILE* out) {
    if (o.dry_run) {
        std::fprintf(out, "\nplan (dry run): ctx %d | suite %s | seed %llu\n", o.ctx, o.suite.c_str(),
                     (unsigned long long)o.seed);
        std::fprintf(out, "%-16s %8s %8s %12s %10s %10s %10s\n", "task", "n", "n_total", "tokens", "calls", "tok/doc",
                     "calls/doc");
        for (const auto& run : r.runs)
            std::fprintf(out, "%-16s %8lld %8lld %12lld %10lld %10.1f %10.2f\n", run.task.c_str(), (long long)run.n,
                         (long long)run.n_total, (long long)run.tokens, (long long)run.calls,
                         run.n ? (double)run.tokens / (double)run.n : 0.0,
                         run.n ? (double)run.calls / (double)run.n : 0.0);
        std::fprintf(out, "%-16s %8s %8s %12lld %10lld\n", "total", "", "", (long long)r.tokens, (long long)r.calls);
        return;
    }
    std::fprintf(out, "\nmodel %s (%s) | method %s | W%s A%s KV%s | ctx %d | suite %s | seed %llu | git %.12s\n",
                 info.model.c_str(), info.checkpoint_dtype.c_str(), info.method.c_str(), info.w_bits.c_str(),
                 info.a_bits.c_str(), info.kv_bits.c_str(), o.ctx, o.suite.c_str(), (unsigned long long)o.seed,
                 info.git_rev.c_str());
    std::fprintf(out, "%-16s %-10s %10s %10s %8s\n", "task", "metric", "value", "stderr", "n");
    std::fprintf(out, "%-16s %-10s %10s %10s %8s\n", "----", "------", "-----", "------", "-");
    for (const auto& run : r.runs)
        for (const auto& m : run.metrics) {
            const bool ppl = m.metric == "ppl";
            std::fprintf(out, "%-16s %-10s %10s %10s %8lld\n", m.task.c_str(), m.metric.c_str(),
                         fmt(ppl ? "%.4f" : "%.4f", m.value).c_str(), fmt("%.4f", m.se).c_str(), (long long)m.n);
        }
    if (r.zero_shot_tasks > 0) {
        std::string label = r.zero_shot_tasks == 9 ? "mean(9)" : str("mean(", r.zero_shot_tasks, "/9)");
        std::fprintf(out, "%-16s %-10s %10s %10s %8lld\n", label.c_str(), "headline",
                     fmt("%.4f", r.headline.value).c_str(), fmt("%.4f", r.headline.se).c_str(),
                     (long long)r.headline.n);
        std::fprintf(out, "%-16s %-10s %10s %10s %8lld\n", label.c_str(), "acc", fmt("%.4f", r.acc_mean.value).c_str(),
                     fmt("%.4f", r.acc_mean.se).c_str(), (long long)r.acc_mean.n);
        std::fprintf(out, "headline = acc_norm for arc_easy, arc_challenge, hellaswag, openbookqa, piqa; "
                          "acc for boolq, lambada, siqa, winogrande\n");
    }
    const double tps = r.seconds > 0 ? (double)r.tokens / r.seconds : 0.0;
    std::fprintf(out,
                 "%lld tokens (%lld forward calls) in %.1f s = %.1f tokens/s (%d threads, %.1f CPU s); "
                 "prepare %.1f s, load %.1f s\n",
                 (long long)r.tokens, (long long)r.calls, r.seconds, tps, info.threads, r.cpu_seconds,
                 r.prepare_seconds, info.load_seconds);
}

std::string report_json(const RunInfo& info, const EvalOptions& o, const EvalResult& r) {
    using nlohmann::json;
    json j;
    j["model"] = info.model;
    j["checkpoint_dtype"] = info.checkpoint_dtype;
    j["method"] = info.method;
    j["bits"] = {{"w", info.w_bits}, {"a", info.a_bits}, {"kv", info.kv_bits}};
    j["ctx"] = o.ctx;
    j["suite"] = o.suite;
    j["seed"] = o.seed;
    j["limit"] = o.limit;
    j["git_revision"] = info.git_rev;
    j["threads"] = info.threads;
    j["data_dir"] = o.data_dir;
    json tasks = json::object();
    for (const auto& run : r.runs) {
        json t;
        t["file"] = run.path;
        t["sha256"] = run.sha256;
        t["n"] = run.n;
        t["n_total"] = run.n_total;
        t["limit"] = run.limit;
        t["seconds"] = run.seconds;
        t["cpu_seconds"] = run.cpu_seconds;
        t["tokens"] = run.tokens;
        t["forward_calls"] = run.calls;
        json ms = json::object();
        for (const auto& m : run.metrics) ms[m.metric] = {{"value", num(m.value)}, {"stderr", num(m.se)}};
        t["metrics"] = ms;
        if (run.task == "wikitext2") {
            t["windows"] = run.ppl.windows;
            t["windows_total"] = run.ppl.windows_total;
            t["tokens_scored"] = run.ppl.tokens_scored;
            t["nll"] = {{"value", num(run.ppl.nll)}, {"stderr", num(run.ppl.nll_se)}};
            t["window_nll"] = run.ppl.window_nll;  // for paired comparisons (ppl --paired)
        }
        tasks[run.task] = t;
    }
    j["tasks"] = tasks;
    if (r.zero_shot_tasks > 0) {
        j["zero_shot"] = {
            {"tasks", r.zero_shot_tasks},
            {"complete", r.zero_shot_tasks == 9},
            {"headline", {{"value", num(r.headline.value)}, {"stderr", num(r.headline.se)}}},
            {"acc_mean", {{"value", num(r.acc_mean.value)}, {"stderr", num(r.acc_mean.se)}}},
            {"headline_metrics",
             "acc_norm: arc_easy, arc_challenge, hellaswag, openbookqa, piqa; acc: boolq, lambada, siqa, winogrande"},
        };
    }
    j["stderr_methods"] = {
        {"acc", "sqrt(p(1-p)/(n-1)) (lm-eval mean_stderr of a 0/1 variable)"},
        {"lambada_ppl", "delta method: exp(m) * sd(doc NLL)/sqrt(n), m = mean doc NLL"},
        {"wikitext2_ppl", "delta method: exp(m) * sd(window mean NLL)/sqrt(windows)"},
        {"mean", "sqrt(sum of squared task stderrs) / tasks"},
    };
    j["speed"] = {{"tokens", r.tokens},
                  {"forward_calls", r.calls},
                  {"seconds", r.seconds},
                  {"cpu_seconds", r.cpu_seconds},
                  {"tokens_per_s", r.seconds > 0 ? (double)r.tokens / r.seconds : 0.0},
                  {"prepare_seconds", r.prepare_seconds},
                  {"load_seconds", info.load_seconds}};
    return j.dump(2) + "\n";
}

std::vector<double> report_window_nll(const std::string& path, int ctx, const std::string& text_sha256) {
    std::ifstream f(path, std::ios::binary);
    SQ_CHECK(f, path, ": cannot open");
    std::stringstream ss;
    ss << f.rdbuf();
    const nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
    SQ_CHECK(!j.is_discarded() && j.is_object(), path, ": not a JSON report");
    SQ_CHECK(j.contains("ctx") && j["ctx"].is_number_integer(), path, ": no integer \"ctx\" (not a ppl/eval report?)");
    SQ_CHECK(j["ctx"].get<int>() == ctx, path, ": ctx ", j["ctx"].get<int>(), ", this run ", ctx);
    const nlohmann::json* t = j.contains("tasks") && j["tasks"].contains("wikitext2") ? &j["tasks"]["wikitext2"] : nullptr;
    SQ_CHECK(t, path, ": no tasks.wikitext2 (a report of ppl or of eval with wikitext2)");
    SQ_CHECK(text_sha256.empty() || (t->contains("sha256") && (*t)["sha256"] == text_sha256), path,
             ": scored another text (sha256 ",
             t->value("sha256", std::string("none")), ", this run ", text_sha256, ")");
    SQ_CHECK(t->contains("window_nll") && (*t)["window_nll"].is_array(), path,
             ": no tasks.wikitext2.window_nll (written before per-window NLLs were reported)");
    std::vector<double> w;
    for (const auto& v : (*t)["window_nll"]) {
        SQ_CHECK(v.is_number(), path, ": window_nll holds a non-number");
        w.push_back(v.get<double>());
    }
    return w;
}

std::string report_samples_jsonl(const EvalResult& r) {
    std::string out;
    for (const auto& run : r.runs) {
        for (size_t k = 0; k < run.scores.size(); ++k) {
            nlohmann::json j;
            j["task"] = run.task;
            j["line"] = run.lines[k];
            std::vector<double> ll;
            std::vector<bool> greedy;
            for (const auto& s : run.scores[k]) ll.push_back(s.logprob), greedy.push_back(s.greedy);
            j["ll"] = ll;
            j["greedy"] = greedy;
            out += j.dump() + "\n";
        }
    }
    return out;
}

void write_file_atomic(const std::string& path, const std::string& text) {
    const std::string tmp = str(path, ".tmp.", ::getpid());
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    std::string err;
    {
        FILE* f = std::fopen(tmp.c_str(), "wb");
        if (!f) {
            err = str(tmp, ": cannot create");
        } else {
            bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
            ok = std::fflush(f) == 0 && ok;
            ok = ::fsync(::fileno(f)) == 0 && ok;
            ok = std::fclose(f) == 0 && ok;
            if (!ok) err = str(tmp, ": write failed");
            else if (std::rename(tmp.c_str(), path.c_str()) != 0) err = str(path, ": cannot rename ", tmp, " onto it");
            if (!err.empty()) std::remove(tmp.c_str());
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (!err.empty()) fail(err);
}

std::string repo_root() {
    namespace fs = std::filesystem;
    std::error_code ec;
    std::vector<fs::path> starts;
    fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) starts.push_back(exe.parent_path());
    starts.push_back(fs::current_path(ec));
    for (fs::path p : starts) {
        for (; !p.empty(); p = p.parent_path()) {
            if (fs::exists(p / ".git", ec)) return p.string();
            if (p == p.parent_path()) break;
        }
    }
    return "";
}

std::string git_revision(const std::string& repo) {
    namespace fs = std::filesystem;
    if (repo.empty()) return "unknown";
    fs::path git = fs::path(repo) / ".git";
    std::error_code ec;
    if (fs::is_regular_file(git, ec)) {  // worktree or submodule: "gitdir: <path>"
        std::string l = slurp_line(git);
        if (l.rfind("gitdir: ", 0) != 0) return "unknown";
        fs::path d = l.substr(8);
        git = d.is_absolute() ? d : fs::path(repo) / d;
    }
    std::string head = slurp_line(git / "HEAD");
    if (is_hex40(head)) return head;
    if (head.rfind("ref: ", 0) != 0) return "unknown";
    const std::string ref = head.substr(5);
    // A worktree keeps HEAD but shares refs with the main repository (commondir).
    std::vector<fs::path> dirs = {git};
    std::string common = slurp_line(git / "commondir");
    if (!common.empty()) dirs.push_back(fs::path(common).is_absolute() ? fs::path(common) : git / common);
    for (const auto& d : dirs) {
        std::string h = slurp_line(d / ref);
        if (is_hex40(h)) return h;
        std::ifstream packed(d / "packed-refs");
        std::string line;
        while (std::getline(packed, line)) {
            if (line.size() > 41 && line.compare(41, std::string::npos, ref) == 0 && is_hex40(line.substr(0, 40)))
                return line.substr(0, 40);
        }
    }
    return "unknown";
}

}  // namespace sq
