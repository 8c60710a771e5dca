// L2 prefetch kernel (l2_prefetch.h).
#include "kernels/cuda/l2_prefetch.h"

#include <cstdint>

#include "kernels/cuda/cuda_check.h"

namespace sq::cuda {

namespace {

constexpr unsigned kPiece = 16 << 10;  // bytes per bulk prefetch instruction
constexpr int kThreads = 128;

struct Spans {
    const char* p[kL2Spans];
    size_t bytes[kL2Spans];
};

__global__ void __launch_bounds__(kThreads) l2_prefetch_kernel(Spans s) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const size_t stride = (size_t)gridDim.x * kThreads * kPiece;
    for (int i = 0; i < kL2Spans; ++i) {
        for (size_t o = ((size_t)blockIdx.x * kThreads + threadIdx.x) * kPiece; o < s.bytes[i]; o += stride) {
            const size_t left = s.bytes[i] - o;
            const unsigned n = left < kPiece ? (unsigned)left : kPiece;
            asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(s.p[i] + o), "r"(n) : "memory");
        }
    }
#endif
}

}  // namespace

void l2_prefetch(const L2Span (&spans)[kL2Spans], int blocks, cudaStream_t st) {
    Spans s{};
    bool any = false;
    for (int i = 0; i < kL2Spans; ++i) {
        // 16-byte aligned start, a multiple of 16 bytes (the instruction's rules)
        const uintptr_t a = (uintptr_t)spans[i].p, b = a + (spans[i].p ? spans[i].bytes : 0);
        const uintptr_t a16 = (a + 15) & ~(uintptr_t)15, b16 = b & ~(uintptr_t)15;
        s.p[i] = reinterpret_cast<const char*>(a16);
        s.bytes[i] = b16 > a16 ? b16 - a16 : 0;
        any = any || s.bytes[i] > 0;
    }
    if (!any || blocks <= 0) return;
    l2_prefetch_kernel<<<blocks, kThreads, 0, st>>>(s);
    SQ_CUDA_LAUNCH("l2_prefetch");
}

}  // namespace sq::cuda
