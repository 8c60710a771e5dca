// Shared helpers of the CUDA tests (compiled only with -DSPECQUANT_CUDA=ON):
// GPU detection for skipping, and a test-only device buffer that poisons
// what it allocates so that every output element must be written.
#pragma once
#ifdef SPECQUANT_HAS_CUDA
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "core/error.h"

inline bool cuda_present() {
    int n = 0;
    const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
    (void)cudaGetLastError();
    return ok;
}

#define SKIP_WITHOUT_GPU() \
    if (!cuda_present()) GTEST_SKIP() << "no CUDA device"

template <class T>
struct DevBuf {
    T* p = nullptr;
    size_t n = 0;
    explicit DevBuf(size_t count) : n(count) {
        if (cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)) != cudaSuccess)
            throw sq::Error("test: cudaMalloc failed");
        poison(0xCD);
    }
    explicit DevBuf(const std::vector<T>& h) : DevBuf(h.size()) { put(h); }
    ~DevBuf() { cudaFree(p); }
    DevBuf(const DevBuf&) = delete;
    DevBuf& operator=(const DevBuf&) = delete;
    void put(const std::vector<T>& h) {
        if (cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice) != cudaSuccess)
            throw sq::Error("test: cudaMemcpy to the device failed");
    }
    void poison(int byte = 0xFF) {
        if (cudaMemset(p, byte, std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) throw sq::Error("test: cudaMemset");
    }
    std::vector<T> get() const {
        std::vector<T> h(n);
        EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
        return h;
    }
};
#endif
