#include "eval/tasks.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/sha256.h"

namespace sq {

const std::vector<TaskSpec>& task_specs() {
    // Headline metric per data/README.md: acc_norm where lm-eval reports it as
    // the usual headline, acc elsewhere.
    static const std::vector<TaskSpec> specs = {
        {"arc_easy", "arc_easy.jsonl", TASK_CHOICE, true, "acc_norm"},
        {"arc_challenge", "arc_challenge.jsonl", TASK_CHOICE, true, "acc_norm"},
        {"boolq", "boolq.jsonl", TASK_CHOICE, false, "acc"},
        {"hellaswag", "hellaswag.jsonl", TASK_CHOICE, true, "acc_norm"},
        {"lambada", "lambada_openai.jsonl", TASK_GREEDY, false, "acc"},
        {"openbookqa", "openbook_qa.jsonl", TASK_CHOICE, true, "acc_norm"},
        {"piqa", "piqa.jsonl", TASK_CHOICE, true, "acc_norm"},
        {"siqa", "siqa.jsonl", TASK_CHOICE, false, "acc"},
        {"winogrande", "winogrande.jsonl", TASK_PARTIAL, false, "acc"},
    };
    return specs;
}

const TaskSpec* task_find(const std::string& name) {
    for (const auto& s : task_specs())
        if (name == s.name) return &s;
    return nullptr;
}

std::string task_prompt(const TaskSpec& spec, const std::string& q) {
    const std::string name = spec.name;
    // piqa: the data's query is "Question: {goal}\n"; lm-eval: "Question: {goal}\nAnswer:".
    if (name == "piqa") return q + "Answer:";
    // arc: query "Question: {question}"; lm-eval: "Question: {question}\nAnswer:".
    if (name == "arc_easy" || name == "arc_challenge") return q + "\nAnswer:";
    // boolq: query "Passage: {passage}\nQuestion: {question}?"; lm-eval:
    // "{passage}\nQuestion: {question}?\nAnswer:" (no "Passage: " label).
    if (name == "boolq") {
        static const std::string label = "Passage: ";
        std::string body = q.compare(0, label.size(), label) == 0 ? q.substr(label.size()) : q;
        return body + "\nAnswer:";
    }
    // siqa: query "{context} {question}"; lm-eval: "Q: {context} {question}\nA:".
    if (name == "siqa") return "Q: " + q + "\nA:";
    // openbookqa (question_stem) and hellaswag (preprocessed "{label}: {ctx}"): as is.
    return q;
}

namespace {

using nlohmann::json;

const json& field(const json& j, const char* key, const std::string& where) {
    auto it = j.find(key);
    SQ_CHECK(it != j.end(), where, ": missing field \"", key, "\"");
    return *it;
}

std::string text_field(const json& j, const char* key, const std::string& where) {
    const json& v = field(j, key, where);
    SQ_CHECK(v.is_string(), where, ": field \"", key, "\" is not a string");
    std::string s = v.get<std::string>();
    SQ_CHECK(!s.empty(), where, ": field \"", key, "\" is empty");
    return s;
}

std::vector<std::string> text_list(const json& j, const char* key, const std::string& where) {
    const json& v = field(j, key, where);
    SQ_CHECK(v.is_array(), where, ": field \"", key, "\" is not a list");
    SQ_CHECK(v.size() >= 2, where, ": field \"", key, "\" has ", v.size(), " entries, need at least 2");
    std::vector<std::string> out;
    for (size_t i = 0; i < v.size(); ++i) {
        SQ_CHECK(v[i].is_string(), where, ": ", key, "[", i, "] is not a string");
        out.push_back(v[i].get<std::string>());
        SQ_CHECK(!out.back().empty(), where, ": ", key, "[", i, "] is empty");
    }
    return out;
}

// " " + s without GCC 12's false -Wrestrict on operator+(const char*, string).
std::string delimited(const std::string& s) {
    std::string r;
    r.reserve(s.size() + 1);
    r += ' ';
    r += s;
    return r;
}

int gold_field(const json& j, size_t n_options, const std::string& where) {
    const json& v = field(j, "gold", where);
    SQ_CHECK(v.is_number_integer(), where, ": field \"gold\" is not an integer");
    int64_t g = v.get<int64_t>();
    SQ_CHECK(g >= 0 && g < (int64_t)n_options, where, ": gold ", g, " out of range [0, ", n_options, ")");
    return (int)g;
}

}  // namespace

TaskDoc task_parse_line(const TaskSpec& spec, const std::string& text, const std::string& path, int line) {
    const std::string where = str(path, ":", line);
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception& e) {
        fail(where, ": malformed JSON: ", e.what());
    }
    SQ_CHECK(j.is_object(), where, ": expected a JSON object");
    TaskDoc d;
    d.line = line;
    switch (spec.kind) {
    case TASK_CHOICE: {
        std::string prompt = task_prompt(spec, text_field(j, "query", where));
        d.choices = text_list(j, "choices", where);
        for (const auto& c : d.choices) {
            d.contexts.push_back(prompt);
            d.continuations.push_back(delimited(c));  // lm-eval target_delimiter
        }
        d.gold = gold_field(j, d.choices.size(), where);
        break;
    }
    case TASK_PARTIAL: {
        // lm-eval winogrande: context = sentence[:blank] + option, continuation =
        // " " + sentence[blank+1:].strip(); the data stores both halves.
        d.contexts = text_list(j, "context_options", where);
        std::string cont = delimited(text_field(j, "continuation", where));
        d.continuations.assign(d.contexts.size(), cont);
        d.gold = gold_field(j, d.contexts.size(), where);
        break;
    }
    case TASK_GREEDY: {
        // lm-eval lambada_openai: context = all words but the last, target = " " + last word.
        d.contexts = {text_field(j, "context", where)};
        d.continuations = {delimited(text_field(j, "continuation", where))};
        d.gold = 0;
        break;
    }
    }
    return d;
}

TaskData task_load(const TaskSpec& spec, const std::string& data_dir) {
    TaskData t;
    t.spec = &spec;
    t.path = data_dir + "/tasks/" + spec.file;
    std::ifstream in(t.path, std::ios::binary);
    SQ_CHECK(in, t.path, ": cannot open task file (set --data-dir)");
    std::string s;
    int line = 0;
    while (std::getline(in, s)) {
        ++line;
        if (!s.empty() && s.back() == '\r') s.pop_back();
        t.docs.push_back(task_parse_line(spec, s, t.path, line));
    }
    SQ_CHECK(!in.bad(), t.path, ": read error");
    SQ_CHECK(!t.docs.empty(), t.path, ": no documents");
    t.sha256 = sha256_file(t.path);
    return t;
}

std::vector<int> subset_indices(int n, int limit, uint64_t seed) {
    std::vector<int> idx(n);
    for (int i = 0; i < n; ++i) idx[i] = i;
    if (limit <= 0 || limit >= n) return idx;
    uint64_t state = seed;
    auto next = [&state]() {  // splitmix64
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    };
    for (int i = n - 1; i > 0; --i) {
        // j uniform in [0, i] by the multiply-shift map (bias < 2^-40 here).
        int j = (int)(((unsigned __int128)next() * (unsigned)(i + 1)) >> 64);
        std::swap(idx[i], idx[j]);
    }
    idx.resize(limit);
    std::sort(idx.begin(), idx.end());
    return idx;
}

}  // namespace sq
