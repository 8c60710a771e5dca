// L2 prefetch of constant device data (the next layers' weights) from a side stream, so that
// a decode step's weight stream runs while the latency-bound row kernels (attention, norms)
// leave HBM idle (docs/kernels-cuda-notes.md, "Decode v7"). A hint only: no data moves into
// registers or shared memory, nothing is written, and the call's correctness never depends
// on it. Build: cmake -DSPECQUANT_CUDA=ON.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace sq::cuda {

struct L2Span {
    const void* p = nullptr;
    size_t bytes = 0;
};
constexpr int kL2Spans = 4;

// Asks L2 for the bytes of up to kL2Spans spans (empty ones skipped) with Hopper's bulk
// prefetch (cp.async.bulk.prefetch.L2, 16-byte aligned pieces; a span's unaligned head and
// tail bytes are left out), spread over `blocks` blocks. No PDL: meant for a side stream.
void l2_prefetch(const L2Span (&spans)[kL2Spans], int blocks, cudaStream_t s);

}  // namespace sq::cuda
