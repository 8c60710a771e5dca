// FP32 GEMM and GEMV on AVX2+FMA:  y[m, n] = x[m, k] · W[n, k]ᵀ   (nn.Linear layout).
//
// Build: part of specquant_lib.  Test: build/specquant_tests --gtest_filter='Gemm*'
// Bench: build/specquant_bench --benchmark_filter='Gemm|Gemv|MemBw|Clock'
// Notes (versions, predictions, measurements): docs/kernels-cpu-notes.md
//
// Layout. The "packed" weight format is W itself, row-major [n, k]: both
// operands are contiguous along k, so the micro-kernel is a dot-product tile
// (3 rows of x × 4 rows of W, 12 ymm accumulators of 8 k-lanes each, reduced
// with hadd once per k-block). GEMV therefore reads every weight byte exactly
// once, front to back within each row, with no repacking, and LinearF32 runs
// on its own `w` without a second copy. PackedF32 either owns a copy
// (gemm_f32_pack) or borrows (gemm_f32_view).
//
// Results are bitwise independent of the thread count and of how the output
// is tiled (every y element sees the same k-blocks, lane order and reduction).
// Without AVX2+FMA (or with SQ_FORCE_SCALAR=1) both entry points run
// gemm_f32_ref after a one-line warning on stderr.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace sq {

struct PackedF32 {
    int64_t n = 0;  // output features: rows of W
    int64_t k = 0;  // input features: columns of W
    std::vector<float> owned;        // W [n, k] when owning (gemm_f32_pack), else empty
    const float* borrowed = nullptr; // W [n, k] when borrowing (gemm_f32_view)
    const float* data() const { return owned.empty() ? borrowed : owned.data(); }
    size_t bytes() const { return (size_t)n * (size_t)k * sizeof(float); }
};

// Copies W [n, k] row-major. Throws sq::Error on negative sizes.
PackedF32 gemm_f32_pack(const float* w, int64_t n, int64_t k);
// Borrows W [n, k] row-major; w must outlive the result and stay unchanged.
PackedF32 gemm_f32_view(const float* w, int64_t n, int64_t k);

// Cache blocking of gemm_f32 (defaults measured on Zen 4, see the notes).
struct GemmF32Blocking {
    int64_t kc_max = 576;  // k-block: 4 W rows + 3 x rows × kc × 4 B ≤ 16 KB, half the 32 KB L1d
                           // (k = 1536 at kc 768: 71% of 1-core peak, at 512: 78%)
    int64_t mc = 144;      // x block mc×kc stays in L2 (multiple of 3)
    int64_t nc = 128;      // W rows per task (multiple of 4): the unit of work per thread
};

// gemm_f32's k-block for a given k: blocks of equal size (a multiple of 8) not above kc_max,
// so every element sees the same block boundaries whatever m and the thread count are (the
// last block may be shorter). The GPU's spectral x·B follows it (kernels/cuda/spectral.cu).
inline int64_t gemm_f32_kc(int64_t k, int64_t kc_max = GemmF32Blocking{}.kc_max) {
    const int64_t nb = k > kc_max ? (k + kc_max - 1) / kc_max : 1;
    const int64_t kc = (k + nb - 1) / nb;
    return (kc + 7) / 8 * 8;
}

// Cache-blocked GEMM for prefill (m large). Any m >= 0; x [m, k], y [m, n]
// row-major, y overwritten. Threads: tasks of (mc rows of x) × (nc rows of W).
void gemm_f32(const float* x, int64_t m, const PackedF32& w, float* y);
void gemm_f32(const float* x, int64_t m, const PackedF32& w, float* y, const GemmF32Blocking& b);

// y [m, n] = x [m, k] · Wᵀ for a W [n, k] that exists only as rows made on
// demand (a block-quantized matrix): slabs of 512 rows are made by row(r, dst)
// (in parallel) and multiplied through gemm_f32, so the result is bitwise
// gemm_f32 on the whole dequantized W. Buffers are per calling thread.
void gemm_f32_rows(const float* x, int64_t m, int64_t n, int64_t k,
                   const std::function<void(int64_t r, float* dst)>& row, float* y);

// Streaming GEMV for decode and small batches: each thread streams a
// contiguous range of W rows from DRAM exactly once (whole rows, next rows
// prefetched), and every 4-row group is applied to all m rows of x while it
// sits in L1/L2. Correct for any m; faster than gemm_f32 up to about m = 16
// on the measured shapes (bench: BM_GemvF32 vs BM_GemvViaGemmF32), beyond
// which gemm_f32's cache blocking wins as the work turns compute-bound. Each
// row's k range is summed in gemm_f32's k-blocks (gemm_f32_kc), so every output
// has gemm_f32's bits: the result does not depend on m or on which one runs.
void gemv_f32(const float* x, int64_t m, const PackedF32& w, float* y);
inline constexpr int64_t gemv_f32_max_m = 16;

// Rows [j0, j1) of gemv_f32's output (j0 a multiple of 4), on the calling
// thread only, y [m, w.n] row-major: bitwise the same elements as gemv_f32
// (and gemm_f32) whatever the row range. For work
// split by hand inside a parallel region (x·B of a decode W4A4 layer).
void gemv_f32_rows(const float* x, int64_t m, const PackedF32& w, float* y, int64_t j0, int64_t j1);

// The same with W [n, k] stored as fp16 (F16C conversion in registers: half
// the bytes of a float32 W and, since the conversion is exact, bitwise what
// gemv_f32_rows / gemv_f32 / gemm_f32 give on the float32 W of the same
// values). gemm_f16: m ≤ gemv_f32_max_m as gemv_f32 (threads over rows),
// above as gemm_f32 (through gemm_f32_rows). For an explicit spectral basis
// Bᵀ (model/linear_w4a4_cpu.cpp), whose values come from fp16 in the file.
void gemv_f16_rows(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, int64_t j0,
                   int64_t j1);
void gemm_f16(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y);

}  // namespace sq
