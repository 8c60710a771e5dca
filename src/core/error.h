// Errors: user errors and invariant checks both throw sq::Error; the CLI's
// main() catches it, prints the message and exits 1. Checks stay on in
// release builds (they guard file parsing and shapes, never hot loops).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace sq {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// str("a", 1, 'b') -> "a1b": message building without <format> (g++ 12).
template <class... Args>
std::string str(Args&&... args) {
    std::ostringstream os;
    (os << ... << std::forward<Args>(args));
    return os.str();
}

template <class... Args>
[[noreturn]] void fail(Args&&... args) {
    throw Error(str(std::forward<Args>(args)...));
}

}  // namespace sq

// SQ_CHECK(cond, "file.gguf: tensor ", name, " has ", n, " dims"): throws sq::Error.
#define SQ_CHECK(cond, ...)                           \
    do {                                              \
        if (!(cond)) ::sq::fail(__VA_ARGS__);         \
    } while (0)
