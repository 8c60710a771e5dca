// specquant generate -m PATH -p TEXT -n N [-t T] [--temp --top-k --top-p --seed]
// Streams the continuation to stdout; timing to stderr.
#include <chrono>
#include <cstdio>

#include "cli/common.h"
#include "core/error.h"
#include "core/threads.h"
#include "model/sampler.h"

namespace sq {

static CommandAction generate_setup(CLI::App& app) {
    struct Opts {
        std::string model, prompt;
        int n = 64, threads = 0, ctx = 0;
        SamplerParams sp;
        bool no_bos = false, print_ids = false;
    };
    auto o = std::make_shared<Opts>();
    app.add_option("-m,--model", o->model, "GGUF file or Hugging Face directory")->required();
    app.add_option("-p,--prompt", o->prompt, "prompt text (UTF-8)")->required();
    app.add_option("-n,--n-predict", o->n, "tokens to generate")->capture_default_str();
    app.add_option("-t,--threads", o->threads, "threads (0 = all)")->capture_default_str();
    app.add_option("-c,--ctx", o->ctx, "context size (0 = prompt + n)")->capture_default_str();
    app.add_option("--temp", o->sp.temperature, "temperature (0 = greedy)")->capture_default_str();
    app.add_option("--top-k", o->sp.top_k, "top-k (0 = off)")->capture_default_str();
    app.add_option("--top-p", o->sp.top_p, "top-p (1 = off)")->capture_default_str();
    app.add_option("--seed", o->sp.seed, "sampling seed")->capture_default_str();
    app.add_flag("--print-ids", o->print_ids, "print the generated token ids at the end");
    return [o]() {
        SQ_CHECK(o->n >= 0, "generate: -n must be >= 0");
        threads_set(o->threads);
        LoadedModel m = model_open(o->model);
        std::vector<int> ids;
        try {
            ids = m.tok->encode(o->prompt, m.tok->add_bos_default());
        } catch (const Error& e) {
            fail("prompt: ", e.what());
        }
        SQ_CHECK(!ids.empty(), "prompt: encodes to no tokens");
        const int vocab = m.model->config().vocab;
        const int ctx = o->ctx > 0 ? o->ctx : (int)ids.size() + o->n;
        SQ_CHECK((int)ids.size() + o->n <= ctx, "generate: prompt (", ids.size(), " tokens) + n (", o->n,
                 ") exceeds -c ", ctx);
        KVCache cache = m.model->make_cache(ctx);
        Sampler sampler(o->sp);
        std::vector<float> logits(vocab);
        std::fputs(o->prompt.c_str(), stdout);
        std::fflush(stdout);
        auto t0 = std::chrono::steady_clock::now();
        m.model->forward(ids.data(), (int)ids.size(), cache, logits.data(), false);
        auto t1 = std::chrono::steady_clock::now();
        std::vector<int> out;
        for (int i = 0; i < o->n; ++i) {
            int next = sampler.sample(logits.data(), vocab);
            out.push_back(next);
            if (next == m.tok->eos()) break;
            std::string piece = m.tok->decode({next});
            std::fputs(piece.c_str(), stdout);
            std::fflush(stdout);
            if (i + 1 == o->n) break;
            m.model->forward(&next, 1, cache, logits.data(), false);
        }
        auto t2 = std::chrono::steady_clock::now();
        std::fputc('\n', stdout);
        double pre = std::chrono::duration<double>(t1 - t0).count();
        double dec = std::chrono::duration<double>(t2 - t1).count();
        if (o->print_ids) {
            std::printf("ids:");
            for (int t : out) std::printf(" %d", t);
            std::printf("\n");
        }
        std::fprintf(stderr, "prompt %zu tokens in %.2fs (%.1f tok/s); generated %zu tokens in %.2fs (%.2f tok/s); %d threads\n",
                     ids.size(), pre, ids.size() / pre, out.size(), dec, out.size() > 1 ? (out.size() - 1) / dec : 0.0,
                     threads_count());
        return 0;
    };
}

SQ_COMMAND(generate, "generate", "Generate text from a prompt (greedy at --temp 0)", generate_setup);

}  // namespace sq
