// bench_cuda_gemm: the W4A4 tensor-core GEMM / GEMV (src/kernels/cuda/w4a4_gemm.*)
// against cuBLAS BF16, FP8 e4m3 and INT8 (all through cublasLt, heuristic
// algorithm 0) at the LLaMA-3-8B linear shapes, in one process.
//
//   y [M, N] = x [M, K] · W [N, K]ᵀ    M = 2048 (prefill), 16, 8, 4, 1 (decode)
//
// Timing: CUDA events around one launch, after a read of 2× L2 that evicts
// the previous launch's operands (every weight byte comes from HBM, as in a
// decode step over a model larger than L2); 3 warm-ups, median of --reps.
// "TOP/s" = 2·M·N·K / t; "wGB/s" = weight bytes / t (W4A4: N·K/2; FP8,
// INT8: N·K; BF16: 2·N·K); roofline: 1200 TOP/s (mma.sync s8, SPEC.md §4)
// and 3000 GB/s (HBM copy). Outputs: W4A4 fp32 with the fused epilogue
// (scales, zero points, bias); BF16/FP8 → bf16; INT8 → int32.
//
// M = 2048 (and --sweep) rows add "W4A4 wgmma" (w4a4_gemm_wgmma, w4a4_wgmma.h; without a
// workspace, and "… split" with the engine's split-K workspace: round 3) next to
// the mma.sync tiled configurations. --sweep: M = 80, 128, 256, 512, 1024 with cuBLAS
// BF16, the tiled default and wgmma only (where w4a4_gemm switches: W4G_WGMMA_MIN_M).
//
// --stream (decode, v4): instead, R launches back to back, launch i on weight copy
// i mod C with C copies totalling ≥ 2× L2 (every weight byte still from HBM), time
// = (events around all R) / R, median of --reps: the steady state of a decode step,
// where launches follow each other and the per-launch floor above is hidden. cuBLAS
// BF16 and the W4A4 GEMV (default configuration) only, M = 64, 32, 16, 8, 4, 1.
//
// Build: cmake -S . -B build-gpu-gemm -DSPECQUANT_CUDA=ON && cmake --build build-gpu-gemm --target bench_cuda_gemm
// --spectral: the spectral branch's x·B and ·Cᵀ passes instead (bench_spectral).
//
// Run:   build-gpu-gemm/bench_cuda_gemm [--reps 30] [--quick] [--stream] [--sweep] [--spectral]
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/cuda/cublas_check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/w4a4_gemm.h"
#include "kernels/cuda/w4a4_wgmma.h"

using namespace sq;

namespace {

constexpr double kPeakTops = 1200.0;  // mma.sync s8 m16n8k32, measured (SPEC.md §4)
constexpr double kHbmGBs = 3000.0;    // device-to-device copy, read + write

__device__ __forceinline__ uint32_t hash32(uint64_t i, uint32_t seed) {
    uint32_t x = (uint32_t)i * 0x9E3779B1u ^ (uint32_t)(i >> 32) ^ seed;
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    return x ^ (x >> 16);
}

// kind 0: random bytes, 1: bytes 0..15, 2: bf16 in ±1, 3: fp8 e4m3 integers in [−8, 7], 4: float in [0.01, 0.02]
__global__ void fill_kernel(void* p, int64_t count, int kind, uint32_t seed) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        const uint32_t h = hash32(i, seed);
        switch (kind) {
            case 0: ((uint8_t*)p)[i] = (uint8_t)h; break;
            case 1: ((uint8_t*)p)[i] = (uint8_t)(h & 15); break;
            case 2: ((__nv_bfloat16*)p)[i] = __float2bfloat16((float)(int)(h % 2001) / 1000.0f - 1.0f); break;
            case 3: ((__nv_fp8_e4m3*)p)[i] = __nv_fp8_e4m3((float)((int)(h & 15) - 8)); break;
            case 4: ((float*)p)[i] = 0.01f + (float)(h % 1000) * 1e-5f; break;
        }
    }
}

__global__ void flush_kernel(const uint4* p, int64_t count, uint32_t* sink) {
    uint32_t acc = 0;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        const uint4 v = p[i];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x12345678u) *sink = acc;  // keeps the loads
}

__global__ void empty_kernel() {}

void fill(void* p, int64_t count, int kind, uint32_t seed) {
    fill_kernel<<<1024, 256>>>(p, count, kind, seed);
    SQ_CUDA_LAUNCH("fill");
}

struct Timer {
    cudaEvent_t a, b;
    uint4* flush_buf = nullptr;
    int64_t flush_n = 0;
    uint32_t* sink = nullptr;
    int reps;
    explicit Timer(int reps_) : reps(reps_) {
        SQ_CUDA(cudaEventCreate(&a));
        SQ_CUDA(cudaEventCreate(&b));
        int dev = 0, l2 = 0;
        SQ_CUDA(cudaGetDevice(&dev));
        SQ_CUDA(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
        flush_n = 2 * (int64_t)l2 / 16;
        SQ_CUDA(cudaMalloc(&flush_buf, flush_n * 16));
        SQ_CUDA(cudaMalloc(&sink, 4));
        fill(flush_buf, flush_n * 16, 0, 99);
    }
    ~Timer() {
        cudaFree(flush_buf);
        cudaFree(sink);
        cudaEventDestroy(a);
        cudaEventDestroy(b);
    }
    // Median microseconds of one launch of fn.
    double median_us(const std::function<void()>& fn) {
        for (int i = 0; i < 3; ++i) fn();
        SQ_CUDA(cudaDeviceSynchronize());
        std::vector<double> t;
        for (int r = 0; r < reps; ++r) {
            flush_kernel<<<264, 512>>>(flush_buf, flush_n, sink);
            SQ_CUDA_LAUNCH("flush");
            SQ_CUDA(cudaEventRecord(a));
            fn();
            SQ_CUDA(cudaEventRecord(b));
            SQ_CUDA(cudaEventSynchronize(b));
            float ms = 0;
            SQ_CUDA(cudaEventElapsedTime(&ms, a, b));
            t.push_back(ms * 1e3);
        }
        std::sort(t.begin(), t.end());
        return t[t.size() / 2];
    }
    // --stream: median over reps of (one event pair around launches fn(0..count-1)) / count.
    double stream_us(int count, const std::function<void(int)>& fn) {
        for (int i = 0; i < count; ++i) fn(i);
        SQ_CUDA(cudaDeviceSynchronize());
        std::vector<double> t;
        for (int r = 0; r < reps; ++r) {
            flush_kernel<<<264, 512>>>(flush_buf, flush_n, sink);
            SQ_CUDA_LAUNCH("flush");
            SQ_CUDA(cudaEventRecord(a));
            for (int i = 0; i < count; ++i) fn(i);
            SQ_CUDA(cudaEventRecord(b));
            SQ_CUDA(cudaEventSynchronize(b));
            float ms = 0;
            SQ_CUDA(cudaEventElapsedTime(&ms, a, b));
            t.push_back(ms * 1e3 / count);
        }
        std::sort(t.begin(), t.end());
        return t[t.size() / 2];
    }
};

// Copies of one weight buffer totalling ≥ 2× L2 (at least 1), filled alike.
struct Copies {
    std::vector<void*> p;
    Copies(size_t bytes, int kind, int l2) {
        const size_t c = std::max<size_t>(1, (2 * (size_t)l2 + bytes - 1) / bytes);
        for (size_t i = 0; i < c; ++i) {
            void* q = nullptr;
            SQ_CUDA(cudaMalloc(&q, bytes));
            fill(q, (int64_t)(kind == 2 ? bytes / 2 : bytes), kind, 100 + (uint32_t)i);
            p.push_back(q);
        }
    }
    ~Copies() {
        for (void* q : p) cudaFree(q);
    }
};

// D [N, M] (column-major) = op(A)ᵀ-form: A [K, N] col-major (= W [N, K] row-major), transposed;
// B [K, M] col-major (= x [M, K] row-major). "TN", as FP8 and INT8 require.
struct LtGemm {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;
    bool int_scale = false;
    std::string why;
    LtGemm(cublasLtHandle_t h, cudaDataType_t ab, cudaDataType_t cd, cublasComputeType_t ct, cudaDataType_t st,
           int m, int n, int k, size_t ws, bool fast_accum) {
        int_scale = st == CUDA_R_32I;
        SQ_CUBLAS(cublasLtMatmulDescCreate(&op, ct, st));
        const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        SQ_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
        SQ_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
        if (fast_accum) {
            const int8_t one = 1;
            SQ_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &one, sizeof one));
        }
        SQ_CUBLAS(cublasLtMatrixLayoutCreate(&la, ab, k, n, k));
        SQ_CUBLAS(cublasLtMatrixLayoutCreate(&lb, ab, k, m, k));
        SQ_CUBLAS(cublasLtMatrixLayoutCreate(&lc, cd, n, m, n));
        cublasLtMatmulPreference_t pref;
        SQ_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
        SQ_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
        cublasLtMatmulHeuristicResult_t res{};
        int found = 0;
        const cublasStatus_t st2 = cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, lc, lc, pref, 1, &res, &found);
        cublasLtMatmulPreferenceDestroy(pref);
        if (st2 != CUBLAS_STATUS_SUCCESS || found == 0) {
            why = st2 != CUBLAS_STATUS_SUCCESS ? cublasGetStatusString(st2) : "no algorithm";
            return;
        }
        algo = res.algo;
        ok = true;
    }
    ~LtGemm() {
        if (lc) cublasLtMatrixLayoutDestroy(lc);
        if (lb) cublasLtMatrixLayoutDestroy(lb);
        if (la) cublasLtMatrixLayoutDestroy(la);
        if (op) cublasLtMatmulDescDestroy(op);
    }
    void run(cublasLtHandle_t h, const void* A, const void* B, void* D, void* ws, size_t wsb) const {
        const float f1 = 1.0f, f0 = 0.0f;
        const int32_t i1 = 1, i0 = 0;
        const void* alpha = int_scale ? (const void*)&i1 : (const void*)&f1;
        const void* beta = int_scale ? (const void*)&i0 : (const void*)&f0;
        SQ_CUBLAS(cublasLtMatmul(h, op, alpha, A, la, B, lb, beta, D, lc, D, lc, &algo, ws, wsb, nullptr));
    }
};

struct Row {
    std::string shape, kernel;
    int m;
    double us, ops, wbytes;
};

void print_row(const Row& r, double bf16_us, double fp8_us) {
    const double tops = r.ops / r.us * 1e-6, gbs = r.wbytes / r.us * 1e-3;
    char vb[16] = "", vf[16] = "";
    if (bf16_us > 0) std::snprintf(vb, sizeof vb, "%.2fx", bf16_us / r.us);
    if (fp8_us > 0) std::snprintf(vf, sizeof vf, "%.2fx", fp8_us / r.us);
    std::printf("| %-13s | %5d | %-16s | %9.1f | %7.1f | %6.1f%% | %7.0f | %6.1f%% | %6s | %6s |\n", r.shape.c_str(), r.m,
                r.kernel.c_str(), r.us, tops, 100.0 * tops / kPeakTops, gbs, 100.0 * gbs / kHbmGBs, vb, vf);
}

// --spectral: the rank-31 spectral branch's two passes (spectral.cu) at the LLaMA-3-8B shapes: x·Bᵀ
// (z [M, 31] = x [M, K] · Bᵀ; bytes = x + Bᵀ once) and ·Cᵀ (y [M, N] += z·Cᵀ + bias; bytes = y read
// and written + C; not at M ≤ 16, where decode fuses it into the GEMV). GFMA/s counts M·K·31 or M·N·31.
void bench_spectral(Timer& timer, const std::vector<int>& ms) {
    constexpr int rank = 31;
    struct Shape {
        const char* name;
        int n, k;
    };
    const Shape shapes[] = {{"qkv 6144x4096", 6144, 4096}, {"o 4096x4096", 4096, 4096},
                            {"gu 28672x4096", 28672, 4096}, {"down 4096x14336", 4096, 14336}};
    std::printf("| pass | shape (N x K) | M | time (us) | GB/s | %%HBM | GFMA/s |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
    auto row = [](const char* pass, const char* shape, int m, double us, double bytes, double fma) {
        std::printf("| %s | %s | %d | %.1f | %.0f | %.1f%% | %.0f |\n", pass, shape, m, us, bytes / us * 1e-3,
                    100.0 * bytes / us * 1e-3 / kHbmGBs, fma / us * 1e-3);
    };
    for (const Shape& sh : shapes) {
        const int mmax = *std::max_element(ms.begin(), ms.end());
        float *x, *bt, *z, *part, *y, *c, *bias;
        const size_t part_n = std::max<size_t>(1, cuda::spectral_xb_scratch(mmax, rank, sh.k));
        SQ_CUDA(cudaMalloc(&x, (size_t)mmax * sh.k * 4));
        SQ_CUDA(cudaMalloc(&bt, (size_t)rank * sh.k * 4));
        SQ_CUDA(cudaMalloc(&z, (size_t)mmax * rank * 4));
        SQ_CUDA(cudaMalloc(&part, part_n * 4));
        SQ_CUDA(cudaMalloc(&y, (size_t)mmax * sh.n * 4));
        SQ_CUDA(cudaMalloc(&c, (size_t)sh.n * rank * 4));
        SQ_CUDA(cudaMalloc(&bias, (size_t)sh.n * 4));
        SQ_CUDA(cudaMemset(part, 0, part_n * 4));  // the decode kernel's counter
        fill(x, (int64_t)mmax * sh.k, 4, 21);
        fill(bt, (int64_t)rank * sh.k, 4, 22);
        fill(z, (int64_t)mmax * rank, 4, 23);
        fill(y, (int64_t)mmax * sh.n, 4, 24);
        fill(c, (int64_t)sh.n * rank, 4, 25);
        fill(bias, sh.n, 4, 26);
        SQ_CUDA(cudaDeviceSynchronize());
        for (int m : ms) {
            row("x·B", sh.name, m,
                timer.median_us([&] { cuda::spectral_xb(x, sh.k, m, bt, rank, sh.k, z, part, part_n, nullptr); }),
                4.0 * ((double)m * sh.k + (double)rank * sh.k), (double)m * sh.k * rank);
            if (m > 16)
                row("·Cᵀ", sh.name, m,
                    timer.median_us([&] { cuda::spectral_zc_add(z, m, c, sh.n, rank, y, sh.n, bias, nullptr); }),
                    4.0 * (2.0 * m * sh.n + (double)rank * sh.n), (double)m * sh.n * rank);
            std::fflush(stdout);
        }
        for (float* p : {x, bt, z, part, y, c, bias}) SQ_CUDA(cudaFree(p));
    }
}

}  // namespace

int main(int argc, char** argv) {
    int reps = 30;
    bool quick = false, stream = false, sweep = false, spectral = false;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--quick")) quick = true;
        else if (!std::strcmp(argv[i], "--stream")) stream = true;
        else if (!std::strcmp(argv[i], "--sweep")) sweep = true;
        else if (!std::strcmp(argv[i], "--spectral")) spectral = true;
        else {
            std::fprintf(stderr, "usage: %s [--reps N] [--quick] [--stream] [--sweep] [--spectral]\n", argv[0]);
            return 2;
        }
    }
    try {
        cudaDeviceProp prop;
        SQ_CUDA(cudaGetDeviceProperties(&prop, 0));
        int ver = 0;
        SQ_CUDA(cudaRuntimeGetVersion(&ver));
        std::printf("device: %s, %d SMs, L2 %d MB; CUDA runtime %d; cublasLt %zu; reps %d (median), L2 flushed\n",
                    prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, ver, cublasLtGetVersion(), reps);
        cublasLtHandle_t lt;
        SQ_CUBLAS(cublasLtCreate(&lt));
        const size_t wsb = 64u << 20;
        void* ws = nullptr;
        SQ_CUDA(cudaMalloc(&ws, wsb));
        const int64_t splitws_ints = cuda::w4a4_wgmma_ws_ints();
        int32_t* splitws = nullptr;
        SQ_CUDA(cudaMalloc(&splitws, (size_t)splitws_ints * 4));
        Timer timer(reps);
        const double floor_us = timer.median_us([] {
            empty_kernel<<<1, 32>>>();
            SQ_CUDA_LAUNCH("empty");
        });
        std::printf("timing floor (an empty kernel, same method): %.1f us\n", floor_us);
        if (spectral) {
            bench_spectral(timer, quick ? std::vector<int>{2048, 1} : std::vector<int>{2048, 512, 16, 1});
            SQ_CUDA(cudaFree(ws));
            cublasLtDestroy(lt);
            return 0;
        }

        struct Shape {
            const char* name;
            int n, k;
        };
        const std::vector<Shape> shapes = {
            {"qkv 6144x4096", 6144, 4096}, {"o 4096x4096", 4096, 4096},
            {"gu 28672x4096", 28672, 4096}, {"down 4096x14336", 4096, 14336}};
        std::vector<int> ms = {2048, 16, 8, 4, 1};
        if (quick) ms = {2048, 1};
        if (stream) ms = {64, 32, 16, 8, 4, 1};
        if (sweep) ms = {80, 128, 256, 512, 1024};
        std::printf("| shape (N x K) | M     | kernel           | time (us) | TOP/s   | %%mma   | wGB/s   | %%HBM   | vsBF16 | vsFP8  |\n");
        std::printf("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for (const Shape& sh : shapes) {
            const int n = sh.n, k = sh.k, mmax = *std::max_element(ms.begin(), ms.end());
            uint8_t *w4, *q, *w8, *x8, *wf8, *xf8;
            __nv_bfloat16 *wbf, *xbf, *ybf;
            float *y, *fs, *ws_scale, *bias;
            int32_t *z, *rs, *yi;
            SQ_CUDA(cudaMalloc(&w4, cuda::w4g_bytes(n, k)));
            SQ_CUDA(cudaMalloc(&q, (size_t)mmax * k));
            SQ_CUDA(cudaMalloc(&w8, (size_t)n * k));
            SQ_CUDA(cudaMalloc(&x8, (size_t)mmax * k));
            SQ_CUDA(cudaMalloc(&wf8, (size_t)n * k));
            SQ_CUDA(cudaMalloc(&xf8, (size_t)mmax * k));
            SQ_CUDA(cudaMalloc(&wbf, (size_t)n * k * 2));
            SQ_CUDA(cudaMalloc(&xbf, (size_t)mmax * k * 2));
            SQ_CUDA(cudaMalloc(&ybf, (size_t)mmax * n * 2));
            SQ_CUDA(cudaMalloc(&y, (size_t)mmax * n * 4));
            SQ_CUDA(cudaMalloc(&yi, (size_t)mmax * n * 4));
            SQ_CUDA(cudaMalloc(&fs, (size_t)mmax * 4));
            SQ_CUDA(cudaMalloc(&z, (size_t)mmax * 4));
            SQ_CUDA(cudaMalloc(&ws_scale, (size_t)n * 4));
            SQ_CUDA(cudaMalloc(&rs, (size_t)n * 4));
            SQ_CUDA(cudaMalloc(&bias, (size_t)n * 4));
            fill(w4, cuda::w4g_bytes(n, k), 0, 1);
            fill(q, (int64_t)mmax * k, 1, 2);
            fill(w8, (int64_t)n * k, 0, 3);
            fill(x8, (int64_t)mmax * k, 0, 4);
            fill(wf8, (int64_t)n * k, 3, 5);
            fill(xf8, (int64_t)mmax * k, 3, 6);
            fill(wbf, (int64_t)n * k, 2, 7);
            fill(xbf, (int64_t)mmax * k, 2, 8);
            fill(fs, mmax, 4, 9);
            fill(ws_scale, n, 4, 10);
            fill(bias, n, 4, 11);
            SQ_CUDA(cudaMemset(z, 0, (size_t)mmax * 4));  // values do not change the epilogue's work
            SQ_CUDA(cudaMemset(rs, 0, (size_t)n * 4));
            SQ_CUDA(cudaDeviceSynchronize());
            for (int m : ms) {
                const double ops = 2.0 * m * n * k;
                cuda::W4GemmArgs a;
                a.q = q;
                a.m = m;
                a.k = k;
                a.n = n;
                a.w = w4;
                a.act_scale = fs;
                a.act_zero = z;
                a.w_scale = ws_scale;
                a.w_rowsum = rs;
                a.bias = bias;
                a.y = y;
                std::vector<Row> rows;
                double bf16_us = 0, fp8_us = 0;
                if (stream) {
                    const int l2 = prop.l2CacheSize;
                    const Copies cb((size_t)n * k * 2, 2, l2), cw((size_t)cuda::w4g_bytes(n, k), 0, l2);
                    LtGemm g(lt, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUDA_R_32F, m, n, k, wsb, false);
                    const int cnt = (int)std::max<size_t>(20, std::max(cb.p.size(), cw.p.size()));
                    if (g.ok) {
                        bf16_us = timer.stream_us(cnt, [&](int i) { g.run(lt, cb.p[i % cb.p.size()], xbf, ybf, ws, wsb); });
                        rows.push_back({sh.name, "cuBLAS BF16 strm", m, bf16_us, ops, 2.0 * n * k});
                    }
                    rows.push_back({sh.name, "W4A4 gemv strm", m, timer.stream_us(cnt, [&](int i) {
                                        cuda::W4GemmArgs b = a;
                                        b.w = (const uint8_t*)cw.p[i % cw.p.size()];
                                        cuda::w4a4_gemm(b, nullptr);
                                    }), ops, (double)cuda::w4g_bytes(n, k)});
                    for (int c = 0; c < cuda::W4G_GEMV_CFGS && (m <= 16 || c % 4 == 0); ++c)
                        rows.push_back({sh.name, str("W4A4 gemv v", c, " strm"), m, timer.stream_us(cnt, [&](int i) {
                                            cuda::W4GemmArgs b = a;
                                            b.w = (const uint8_t*)cw.p[i % cw.p.size()];
                                            cuda::w4a4_gemv_cfg(b, nullptr, c);
                                        }), ops, (double)cuda::w4g_bytes(n, k)});
                    for (const Row& r : rows) print_row(r, r.kernel.rfind("W4A4", 0) == 0 ? bf16_us : 0, 0);
                    std::fflush(stdout);
                    continue;
                }
                {
                    LtGemm g(lt, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUDA_R_32F, m, n, k, wsb, false);
                    if (g.ok) {
                        bf16_us = timer.median_us([&] { g.run(lt, wbf, xbf, ybf, ws, wsb); });
                        rows.push_back({sh.name, "cuBLAS BF16", m, bf16_us, ops, 2.0 * n * k});
                    } else std::printf("| %s | %d | cuBLAS BF16 | n/a (%s) |\n", sh.name, m, g.why.c_str());
                }
                if (!sweep) {
                    LtGemm g(lt, CUDA_R_8F_E4M3, CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUDA_R_32F, m, n, k, wsb, true);
                    if (g.ok) {
                        fp8_us = timer.median_us([&] { g.run(lt, wf8, xf8, ybf, ws, wsb); });
                        rows.push_back({sh.name, "cuBLAS FP8 e4m3", m, fp8_us, ops, 1.0 * n * k});
                    } else std::printf("| %s | %d | cuBLAS FP8 | n/a (%s) |\n", sh.name, m, g.why.c_str());
                }
                if (!sweep) {
                    LtGemm g(lt, CUDA_R_8I, CUDA_R_32I, CUBLAS_COMPUTE_32I, CUDA_R_32I, m, n, k, wsb, false);
                    if (g.ok) {
                        const double us = timer.median_us([&] { g.run(lt, w8, x8, yi, ws, wsb); });
                        rows.push_back({sh.name, "cuBLAS INT8", m, us, ops, 1.0 * n * k});
                    } else std::printf("| %s | %d | cuBLAS INT8 | n/a (%s) |\n", sh.name, m, g.why.c_str());
                }
                const double wb = (double)cuda::w4g_bytes(n, k);
                if (m <= 16) {
                    for (int c = 0; c < cuda::W4G_GEMV_CFGS; ++c)
                        rows.push_back({sh.name, str("W4A4 gemv v", c), m,
                                        timer.median_us([&] { cuda::w4a4_gemv_cfg(a, nullptr, c); }), ops, wb});
                    if (m == 16)
                        rows.push_back({sh.name, "W4A4 tiled c0", m,
                                        timer.median_us([&] { cuda::w4a4_gemm_tiled(a, nullptr); }), ops, wb});
                } else {
                    for (int c = 0; c < (sweep ? 1 : cuda::W4G_TILE_CFGS); ++c)
                        rows.push_back({sh.name, str("W4A4 tiled c", c), m,
                                        timer.median_us([&] { cuda::w4a4_gemm_tiled_cfg(a, nullptr, c); }), ops, wb});
                    rows.push_back({sh.name, "W4A4 wgmma", m, timer.median_us([&] { cuda::w4a4_gemm_wgmma(a, nullptr); }),
                                    ops, wb});
                    cuda::W4GemmArgs b = a;  // split-K (round 3): the workspace the engine gives it
                    b.ws = splitws, b.ws_ints = splitws_ints;
                    rows.push_back({sh.name, "W4A4 wgmma split", m,
                                    timer.median_us([&] { cuda::w4a4_gemm_wgmma(b, nullptr); }), ops, wb});
                }
                for (const Row& r : rows) print_row(r, r.kernel.rfind("W4A4", 0) == 0 ? bf16_us : 0,
                                                    r.kernel.rfind("W4A4", 0) == 0 ? fp8_us : 0);
                std::fflush(stdout);
            }
            for (void* p : {(void*)w4, (void*)q, (void*)w8, (void*)x8, (void*)wf8, (void*)xf8, (void*)wbf,
                            (void*)xbf, (void*)ybf, (void*)y, (void*)yi, (void*)fs, (void*)z, (void*)ws_scale,
                            (void*)rs, (void*)bias})
                SQ_CUDA(cudaFree(p));
        }
        SQ_CUDA(cudaFree(ws));
        SQ_CUDA(cudaFree(splitws));
        cublasLtDestroy(lt);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_cuda_gemm: %s\n", e.what());
        return 1;
    }
    return 0;
}
