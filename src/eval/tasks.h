// Zero-shot tasks: the 9 data files of ../shared/data/tasks (README there),
// their lm-evaluation-harness prompts, and validation with file:line errors.
//
// Every document becomes a list of (context, continuation) strings, one per
// request, and a gold index:
//   TASK_CHOICE   one prompt, continuation " " + choice per choice (acc[, acc_norm])
//   TASK_PARTIAL  WinoGrande: context option i, the same " " + continuation (acc)
//   TASK_GREEDY   LAMBADA: one request, acc = greedy match, plus perplexity
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sq {

enum TaskKind { TASK_CHOICE, TASK_PARTIAL, TASK_GREEDY };

struct TaskSpec {
    const char* name;      // CLI name: "arc_easy"
    const char* file;      // under <data>/tasks/
    TaskKind kind;
    bool has_acc_norm;     // lm-eval reports acc_norm for this task
    const char* headline;  // "acc" or "acc_norm": the metric that enters the 9-task mean
};

// The 9 tasks in report order.
const std::vector<TaskSpec>& task_specs();
const TaskSpec* task_find(const std::string& name);  // nullptr when unknown

struct TaskDoc {
    int line = 0;                            // 1-based line in the file
    std::vector<std::string> contexts;       // one per request
    std::vector<std::string> continuations;  // one per request (with the leading " ")
    std::vector<std::string> choices;        // TASK_CHOICE: choice texts for acc_norm lengths
    int gold = 0;
};

struct TaskData {
    const TaskSpec* spec = nullptr;
    std::string path;
    std::string sha256;
    std::vector<TaskDoc> docs;  // every document of the file, in file order
};

// lm-eval's prompt for one query of a TASK_CHOICE task (see the table in
// docs/eval.md). Exposed for tests and for scripts/eval_reference.py checks.
std::string task_prompt(const TaskSpec& spec, const std::string& query);

// Parses one JSON line into a document; throws sq::Error "path:line: ...".
TaskDoc task_parse_line(const TaskSpec& spec, const std::string& json_line, const std::string& path, int line);

// Loads and validates the whole file (a bad line anywhere fails the run
// before any scoring starts) and hashes it.
TaskData task_load(const TaskSpec& spec, const std::string& data_dir);

// Seeded subset: Fisher-Yates shuffle of [0, n) driven by splitmix64(seed),
// first `limit` indices, returned sorted. limit <= 0 or >= n: all of [0, n).
// Portable (no std::shuffle / distributions), so Python can reproduce it.
std::vector<int> subset_indices(int n, int limit, uint64_t seed);

}  // namespace sq
