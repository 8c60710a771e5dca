// Every CUDA runtime call goes through SQ_CUDA(...): a failure throws
// sq::Error with the call, file and line (never aborts the host).
#pragma once
#include <cuda_runtime.h>

#include "core/error.h"

#define SQ_CUDA(call)                                                                          \
    do {                                                                                       \
        cudaError_t sq_err_ = (call);                                                          \
        if (sq_err_ != cudaSuccess)                                                            \
            ::sq::fail("CUDA: ", #call, " failed: ", cudaGetErrorString(sq_err_), " at ", __FILE__, \
                       ":", __LINE__);                                                         \
    } while (0)

// After a kernel launch: a bad configuration (grid, shared memory) or an
// earlier asynchronous fault surfaces here as sq::Error.
#define SQ_CUDA_LAUNCH(name) SQ_CUDA(cudaPeekAtLastError()); (void)(name)
