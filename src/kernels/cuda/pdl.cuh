// Programmatic dependent launch (PDL, sm_90) for the decode-path kernels.
//
// A decode step is ~11 kernels per layer, most of them a few µs long, so the
// launch latency and the ramp of each kernel (~2 µs) are a large share of the
// step (docs/kernels-cuda-notes.md, "Decode v4"). A kernel launched with
// launch_pdl may be scheduled while its predecessor in the stream is still
// running; it must call pdl_wait() before it reads anything the predecessor
// (or any earlier kernel) writes, and before it writes anything at all. Work
// on constant data (the weights) can go before the wait: the GEMV prefetches
// its weights there. pdl_trigger() lets the *next* PDL kernel launch early;
// it is safe anywhere, since that kernel's pdl_wait still waits for this whole
// grid to finish and its writes to be visible. Without the launch attribute
// both instructions are no-ops, so the kernels stay correct under any launch.
// Captured into CUDA graphs as programmatic edges (CUDA ≥ 12.3).
//
// Off with SQ_CUDA_PDL=0 (read once per process: a launch attribute, not device state).
#pragma once
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "kernels/cuda/cuda_check.h"

namespace sq::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Asks L2 for the 128-byte line at p. A hint into L2, the point of coherence: safe before
// pdl_wait() even for data that an unfinished kernel writes (used there for weights and for
// activations written kernels ago).
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p)); }

// Trigger first, then wait (decode v7): for the short row kernels of a decode step (norm, act_quant,
// SwiGLU, RoPE + KV store, decode attention). Their successor, often a GEMV whose weight loads and
// L2 prefetch run before its own wait, then launches while this kernel still waits for its
// predecessor: two kernels ahead of the running one instead of one. Cannot deadlock: a kernel
// launches only after every block of its primary has triggered, i.e. is resident, so every kernel
// that an early-launched block waits on already holds its resources. Visibility is unchanged: a
// kernel's wait still returns only after its primary has completed and flushed, and that primary
// itself waited for its own primary (the chain is transitive).
__device__ __forceinline__ void pdl_trigger_then_wait() {
    pdl_trigger();
    pdl_wait();
}

inline bool pdl_enabled() {
    static const bool on = [] {
        const char* e = std::getenv("SQ_CUDA_PDL");
        return !(e && std::strcmp(e, "0") == 0);
    }();
    return on;
}

// The launch configuration of a grid with the programmatic-serialization attribute and, with
// cluster > 0, thread-block clusters of `cluster` blocks along x (grid.x a multiple of it).
// cfg.attrs points into the object: not copyable.
struct PdlLaunch {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[2] = {};
    PdlLaunch(dim3 grid, dim3 block, size_t smem, cudaStream_t s, int cluster = 0) {
        cfg.gridDim = grid;
        cfg.blockDim = block;
        cfg.dynamicSmemBytes = smem;
        cfg.stream = s;
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = pdl_enabled() ? 1 : 0;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        if (cluster > 0) {
            attr[1].id = cudaLaunchAttributeClusterDimension;
            attr[1].val.clusterDim.x = (unsigned)cluster, attr[1].val.clusterDim.y = 1, attr[1].val.clusterDim.z = 1;
            cfg.numAttrs = 2;
        }
    }
    PdlLaunch(const PdlLaunch&) = delete;
    PdlLaunch& operator=(const PdlLaunch&) = delete;
    // Clusters of this configuration that the device holds at once (cudaOccupancyMaxActiveClusters, a
    // host-side query, allowed while a graph is captured); 0 when none fits or the query fails.
    template <class... KArgs>
    int max_clusters(void (*kernel)(KArgs...)) const {
        int n = 0;
        if (cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) != cudaSuccess) {
            (void)cudaGetLastError();
            return 0;
        }
        return n;
    }
    // kernel<<<…>>>(args...) with this configuration; checked.
    template <class... KArgs, class... Args>
    void launch(const char* name, void (*kernel)(KArgs...), Args&&... args) const {
        const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
        if (e != cudaSuccess) ::sq::fail("CUDA: launch of ", name, " failed: ", cudaGetErrorString(e));
    }
};

template <class... KArgs, class... Args>
void launch_pdl_cluster(const char* name, int cluster, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                        cudaStream_t s, Args&&... args) {
    PdlLaunch(grid, block, smem, s, cluster).launch(name, kernel, std::forward<Args>(args)...);
}

template <class... KArgs, class... Args>
void launch_pdl(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                Args&&... args) {
    launch_pdl_cluster(name, 0, kernel, grid, block, smem, s, std::forward<Args>(args)...);
}

}  // namespace sq::cuda
