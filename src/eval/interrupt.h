// Ctrl-C during long evaluation: the first SIGINT sets a flag that the run
// polls between documents/windows (it then throws sq::Error and writes no
// report); a second SIGINT kills the process at once (default action).
#pragma once
#include <atomic>

namespace sq {

class SigintGuard {
public:
    SigintGuard();   // installs the handler (one guard at a time)
    ~SigintGuard();  // restores the previous handler
    SigintGuard(const SigintGuard&) = delete;
    SigintGuard& operator=(const SigintGuard&) = delete;
    const std::atomic<bool>* flag() const;
};

}  // namespace sq
