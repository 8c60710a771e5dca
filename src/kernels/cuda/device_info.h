// CUDA device discovery (compiled only with -DSPECQUANT_CUDA=ON).
#pragma once
#include <string>

namespace sq {
// One line per visible device: name, SMs, memory, L2, compute capability.
// Throws sq::Error when no device or driver is present.
std::string cuda_device_summary();
}  // namespace sq
