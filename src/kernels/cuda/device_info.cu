// Build: cmake -DSPECQUANT_CUDA=ON (sm_90a). Queries the devices the runtime sees.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_info.h"

namespace sq {

std::string cuda_device_summary() {
    int n = 0;
    SQ_CUDA(cudaGetDeviceCount(&n));
    std::string out;
    for (int i = 0; i < n; ++i) {
        cudaDeviceProp p{};
        SQ_CUDA(cudaGetDeviceProperties(&p, i));
        out += str("cuda:", i, " ", p.name, ", ", p.multiProcessorCount, " SMs, ",
                   p.totalGlobalMem / (1024 * 1024), " MiB, L2 ", p.l2CacheSize / (1024 * 1024), " MiB, sm_",
                   p.major, p.minor, "\n");
    }
    return out;
}

}  // namespace sq
