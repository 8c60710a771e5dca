#include "eval/interrupt.h"

#include <signal.h>

namespace sq {

namespace {
std::atomic<bool> g_interrupted{false};  // lock-free on x86-64: safe in a handler
struct sigaction g_previous;

void on_sigint(int) {
    if (g_interrupted.exchange(true)) {  // second Ctrl-C: give up immediately
        signal(SIGINT, SIG_DFL);
        raise(SIGINT);
    }
}
}  // namespace

SigintGuard::SigintGuard() {
    g_interrupted = false;
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &g_previous);
}

SigintGuard::~SigintGuard() { sigaction(SIGINT, &g_previous, nullptr); }

const std::atomic<bool>* SigintGuard::flag() const { return &g_interrupted; }

}  // namespace sq
