// dev/cuda/w4a4_wgmma.cu — sandbox for the wgmma W4A4 prefill GEMM (issue 6, acceptance 2).
//
// Self-contained (no project libraries): CPU / naive-GPU reference, random data,
// an exactness check of every configuration over awkward shapes (int32
// accumulators exact, float epilogue bit-identical to the library's
// epi_value), and timing with L2 flushed against cuBLAS BF16 and FP8 (cublasLt,
// same process) at the LLaMA-3-8B shapes, M = 2048, with the roofline TOP/s.
//
// Build and run ON the device (the project's -dev packages are not needed):
//   nvcc -O3 -std=c++20 -gencode=arch=compute_90a,code=sm_90a -Xptxas -v \
//        dev/cuda/w4a4_wgmma.cu -o wg -lcublasLt && ./wg [--reps 30] [--no-time]
// Notes (versions, predictions, outcomes): docs/kernels-cuda-notes.md, "wgmma prefill GEMM".
//
// Math: Yᵀ = W·Xᵀ. Weights are wgmma's register A operand (64 channels per
// m64 tile, s8 = 16·code widened from the CUDA layout with two LOP3s, as the
// mma.sync kernel), activation codes the shared-memory B operand (tokens × k,
// K-major, 128-byte swizzle, written by TMA). wgmma accumulates 16·acc;
// acc = (16·acc) >> 4 exactly (|16·acc| ≤ 65536·255·128 < 2^31).
#include <cublasLt.h>
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "../../src/kernels/cuda/w4a4_gemm.h"
#include "../../src/kernels/cuda/w4a4_spec_dot.cuh"
#define SQ_WGMMA_WATCHDOG  // trap on a deadlocked barrier wait (wgmma_ptx.cuh)
#include "../../src/kernels/cuda/wgmma_ptx.cuh"

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            std::exit(1);                                                                          \
        }                                                                                          \
    } while (0)
#define CKB(x)                                                                                     \
    do {                                                                                           \
        cublasStatus_t e_ = (x);                                                                   \
        if (e_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            std::fprintf(stderr, "%s:%d %s: cublas status %d\n", __FILE__, __LINE__, #x, (int)e_); \
            std::exit(1);                                                                          \
        }                                                                                          \
    } while (0)

// ---- the CUDA layout, the argument struct and the spectral dot: the library's own
// headers (header-only parts; w4g_repack itself lives in w4a4_gemm.cu, so the
// sandbox repacks through w4g_offset below).
using sq::cuda::W4GemmArgs;
using sq::cuda::w4g_bytes;
using sq::cuda::w4g_k_pad;
using sq::cuda::w4g_n_pad;
using sq::cuda::w4g_offset;
using sq::cuda::spec_dot;
// codes wc [n, k] (int8 in −8..7) → CUDA layout
void repack(const int8_t* wc, int64_t n, int64_t k, uint8_t* dst) {
    std::memset(dst, 0, (size_t)w4g_bytes(n, k));
    for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < k; ++i) {
            int nib = 0;
            const int64_t off = w4g_offset(k, j, i, &nib);
            dst[off] |= (uint8_t)((wc[j * k + i] & 0xF) << (4 * nib));
        }
}


// ---- epilogue: w4a4_gemm.cu's epi_value, same float ops, same order ----
__device__ __forceinline__ float epi_value(const W4GemmArgs& a, int row, int col, int acc, float st, int zt) {
    float v = __fmul_rn(__fmul_rn(st, a.w_scale[col]), (float)(acc - zt * a.w_rowsum[col]));
    if (a.spec) v = __fadd_rn(v, a.spec[(int64_t)row * a.n + col]);
    else if (a.spec_rank > 0)
        v = __fadd_rn(v, spec_dot(a.spec_z + (int64_t)row * a.spec_rank, a.spec_c + (int64_t)col * a.spec_rank,
                                  a.spec_rank));
    if (a.bias) v = __fadd_rn(v, a.bias[col]);
    return v;
}

// ================= the kernel (moves to src/kernels/cuda/w4a4_wgmma.cu) =================
namespace wg {

using namespace sq::cuda::wgmma_ptx;  // the wrappers the library uses (src/kernels/cuda/wgmma_ptx.cuh)

// Sandbox-only wrappers (TMA-store epilogues, v9/v10; the n256 tile).
// TMA store: shared-memory box → global at coordinates (out-of-range parts are not written).
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, const void* src, int c0, int c1) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n" ::"l"(map), "r"(c0),
                 "r"(c1), "r"(smem_u32(src))
                 : "memory");
}
__device__ __forceinline__ void tma_store_commit_wait_read() {
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
__device__ __forceinline__ void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// D[64 x 256] (s32) (+)= A[64 x 32] (s8, registers) · B[32 x 256] (u8, shared memory, K-major);
// acc_in = 0: D = A·B (the first k step), else D += A·B.
__device__ __forceinline__ void wgmma_n256(int (&d)[128], const uint32_t (&a)[4], uint64_t bdesc, int acc_in) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %133, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.u8 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, {%128, %129, %130, %131}, %132, p;\n}\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
          "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
          "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
          "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]),
          "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]),
          "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
          "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
          "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]),
          "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]),
          "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]),
          "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]),
          "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95]),
          "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103]),
          "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]),
          "+r"(d[112]), "+r"(d[113]), "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]),
          "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(bdesc), "r"(acc_in));
}

template <int BN>
__device__ __forceinline__ void mma(int (&d)[BN / 2], const uint32_t (&a)[4], uint64_t bdesc, int acc_in) {
    if constexpr (BN == 128) wgmma_n128(d, a, bdesc, acc_in);
    else wgmma_n256(d, a, bdesc, acc_in);
}

// CTA: 3 warpgroups. WG 0 = producer (one thread issues the TMA copies), WG 1, 2 =
// consumers, each MT m64 channel tiles × BN tokens (accumulators MT·BN/2 registers
// per thread). CTA tile BM = 128·MT channels × BN tokens, k 128 per stage.
// Stage: X tile BN × 128 B (TMA, 128-byte swizzle) + W tile BM/8 layout blocks × 512 B
// (TMA, verbatim layout: a warp's 16-byte reads are 512 contiguous bytes, conflict-free).
// DEEP: keep one stage of wgmmas in flight (wait_group 1, A registers double-buffered),
// else wait_group 0 after each stage (the other consumer warpgroup keeps the tensor
// cores busy meanwhile).
template <int BN_, int MT_, int STAGES_, bool DEEP_, int EPI_ = 0, int MINB_ = 1>
struct Cfg {
    static constexpr int BN = BN_, MT = MT_, STAGES = STAGES_;
    static constexpr bool DEEP = DEEP_;
    // 0: from registers (v1), 1: through shared memory (v5), 2: + token scales staged, rows unrolled (v7),
    // 3: TMA store from the fragments (v9), 4: TMA store through a 64-token buffer (v10)
    static constexpr int EPI = EPI_;
    // CTAs per SM. 1: 384 threads, setmaxnreg 40 / 232. 2 (v11, one CTA's epilogue under the other's
    // main loop): 288 threads = 2 consumer warpgroups + 1 producer warp, no setmaxnreg, 112 registers
    // by __maxnreg__ (ptxas allocates to the launch bound, which setmaxnreg does not raise: 384 × 2
    // gave 80 registers, too few for m64n128's 64 accumulators; __launch_bounds__(288, 2) gave 94 + spills).
    static constexpr int MINB = MINB_, THREADS = MINB_ == 1 ? 384 : 288;
    static constexpr int BM = 128 * MT;
    static constexpr int XBytes = BN * 128, WBytes = BM / 8 * 512, Stage = XBytes + WBytes;
    static constexpr int Smem = STAGES * Stage + 1024 + 2 * STAGES * 8;
    static_assert(Stage % 1024 == 0, "stages keep the 1024-byte swizzle-atom alignment");
    static_assert(Smem <= 227 * 1024, "shared memory");
    static_assert(EPI == 0 || BN * (BM + 4) * 4 + BN * 8 <= STAGES * Stage, "epilogue tile fits in the stages");
    static_assert(EPI != 3 || (BN * BM * 4 + BN * 8 <= STAGES * Stage && BM % 32 == 0), "TMA-store tile fits");
};

// Epilogue through shared memory (v5): both consumer warpgroups first write their exact
// accumulators into an int32 tile [BN tokens][BM + 4 channels] over the (now idle) pipeline
// buffers (+4 words per row: a warp's 4 token rows 2 apart land 8 banks apart, no conflict),
// then each thread owns 4 consecutive channels (their scale, rowsum and bias read once) and
// walks the token rows: 16-byte stores, a row's BM channels contiguous (v1 wrote 32-byte
// pieces of 4 rows per store). Same float operations in the same order as epi_value.
template <class C>
__device__ __forceinline__ void epilogue_smem(const W4GemmArgs& a, int (&acc)[C::MT][C::BN / 2], uint8_t* smem, int m0,
                                              int c0, int cw, int warp, int lane, int ct) {
    constexpr int MT = C::MT, BN = C::BN, BM = C::BM, LD = BM + 4;
    int* tile = reinterpret_cast<int*>(smem);
    asm volatile("bar.sync 1, 256;\n" ::: "memory");  // the other warpgroup's wgmmas are done with the stages
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int i = 0; i < BN / 8; ++i)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int r = 8 * i + 2 * t + e, c = (cw * MT + mt) * 64 + warp * 16 + h * 8 + g;
                    tile[r * LD + c] = acc[mt][4 * i + 2 * h + e] >> 4;
                }
    // v7: the BN tokens' act_scale / act_zero into shared memory, one load per thread (v5 read
    // them inside the row loop: one dependent L2 round trip per row, 32 rows per thread).
    float* tsc = reinterpret_cast<float*>(tile + BN * LD);
    int* tze = reinterpret_cast<int*>(tsc + BN);
    if constexpr (C::EPI >= 2) {
        if (a.y && ct < BN && m0 + ct < a.m) tsc[ct] = a.act_scale[m0 + ct], tze[ct] = a.act_zero[m0 + ct];
    }
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    constexpr int GROUPS = BM / 4, ROWS = 256 / GROUPS;
    const int cg = ct % GROUPS, r0 = ct / GROUPS, ch0 = c0 + 4 * cg;
    float ws[4] = {0, 0, 0, 0}, bs[4] = {0, 0, 0, 0};
    int rs[4] = {0, 0, 0, 0};
    if (a.y) {
#pragma unroll
        for (int j = 0; j < 4; ++j)
            if (ch0 + j < a.n) {
                ws[j] = a.w_scale[ch0 + j], rs[j] = a.w_rowsum[ch0 + j];
                if (a.bias) bs[j] = a.bias[ch0 + j];
            }
    }
    const bool vec = ch0 + 3 < a.n && a.n % 4 == 0;
#pragma unroll(C::EPI >= 2 ? 4 : 1)
    for (int r = r0; r < BN; r += ROWS) {
        const int tok = m0 + r;
        if (tok >= a.m) break;
        const int4 v = *reinterpret_cast<const int4*>(tile + r * LD + 4 * cg);
        const int vv[4] = {v.x, v.y, v.z, v.w};
        const int64_t idx = (int64_t)tok * a.n + ch0;
        if (a.acc) {
            if (vec) *reinterpret_cast<int4*>(a.acc + idx) = v;
            else
                for (int j = 0; j < 4 && ch0 + j < a.n; ++j) a.acc[idx + j] = vv[j];
        }
        if (a.y) {
            const float st = C::EPI >= 2 ? tsc[r] : a.act_scale[tok];
            const int zt = C::EPI >= 2 ? tze[r] : a.act_zero[tok];
            float y[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float f = __fmul_rn(__fmul_rn(st, ws[j]), (float)(vv[j] - zt * rs[j]));
                if (a.spec) f = __fadd_rn(f, ch0 + j < a.n ? a.spec[idx + j] : 0.0f);
                else if (a.spec_rank > 0 && ch0 + j < a.n)
                    f = __fadd_rn(f, spec_dot(a.spec_z + (int64_t)tok * a.spec_rank,
                                              a.spec_c + (int64_t)(ch0 + j) * a.spec_rank, a.spec_rank));
                if (a.bias) f = __fadd_rn(f, bs[j]);
                y[j] = f;
            }
            if (vec) *reinterpret_cast<float4*>(a.y + idx) = make_float4(y[0], y[1], y[2], y[3]);
            else
                for (int j = 0; j < 4 && ch0 + j < a.n; ++j) a.y[idx + j] = y[j];
        }
    }
}

// Epilogue by TMA store (v9): y computed from the accumulator fragments straight into a
// float tile in shared memory laid out as BM/32 boxes of [BN rows][32 floats] with the
// 128-byte swizzle (16-byte chunk c of row r at c ^ (r & 7): a warp's 4 rows × 8 channels
// per store land in 32 different banks), token scales staged in shared memory, channel
// scales in registers; then one thread issues BM/32 bulk tensor stores and waits only for
// their shared-memory reads: the global writes drain while the next CTA on this SM already
// runs its main loop (v7 wrote them from the threads, not overlapped: 13 us of o's 62.8).
// Needs n % 4 == 0 (y row stride a multiple of 16 B); acc, when asked for, is written
// from the fragments directly (tests only).
template <class C>
__device__ __forceinline__ void epilogue_tma(const W4GemmArgs& a, int (&acc)[C::MT][C::BN / 2], uint8_t* smem,
                                             const CUtensorMap* ty, int m0, int c0, int cw, int warp, int lane,
                                             int ct) {
    constexpr int MT = C::MT, BN = C::BN, BM = C::BM;
    uint8_t* ytile = smem;
    float* tsc = reinterpret_cast<float*>(smem + BM / 32 * BN * 128);
    int* tze = reinterpret_cast<int*>(tsc + BN);
    asm volatile("bar.sync 1, 256;\n" ::: "memory");  // the other warpgroup's wgmmas are done with the stages
    if (a.y && ct < BN && m0 + ct < a.m) tsc[ct] = a.act_scale[m0 + ct], tze[ct] = a.act_zero[m0 + ct];
    const int g = lane / 4, t = lane % 4;
    float ws[MT][2], bs[MT][2];
    int rs[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int ch = c0 + (cw * MT + mt) * 64 + warp * 16 + h * 8 + g;
            const bool in = a.y && ch < a.n;
            ws[mt][h] = in ? a.w_scale[ch] : 0.0f;
            rs[mt][h] = in ? a.w_rowsum[ch] : 0;
            bs[mt][h] = in && a.bias ? a.bias[ch] : 0.0f;
        }
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
#pragma unroll
    for (int i = 0; i < BN / 8; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int r = 8 * i + 2 * t + e, tok = m0 + r;
            const float st = tsc[r];
            const int zt = tze[r];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int cl = (cw * MT + mt) * 64 + warp * 16 + h * 8 + g, ch = c0 + cl;
                    const int v = acc[mt][4 * i + 2 * h + e] >> 4;
                    const bool in = tok < a.m && ch < a.n;
                    if (a.acc && in) a.acc[(int64_t)tok * a.n + ch] = v;
                    if (!a.y) continue;
                    float f = __fmul_rn(__fmul_rn(st, ws[mt][h]), (float)(v - zt * rs[mt][h]));
                    if (a.spec) f = __fadd_rn(f, in ? a.spec[(int64_t)tok * a.n + ch] : 0.0f);
                    else if (a.spec_rank > 0 && in)
                        f = __fadd_rn(f, spec_dot(a.spec_z + (int64_t)tok * a.spec_rank,
                                                  a.spec_c + (int64_t)ch * a.spec_rank, a.spec_rank));
                    if (a.bias) f = __fadd_rn(f, bs[mt][h]);
                    const int col = cl % 32;
                    *reinterpret_cast<float*>(ytile + (cl / 32) * BN * 128 + r * 128 + (((col / 4) ^ (r & 7)) << 4) +
                                              (col % 4) * 4) = f;
                }
        }
    if (!a.y) return;
    fence_proxy_async_smem();  // the generic-proxy writes above, before the TMA engine reads them
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    if (ct == 0) {
        for (int b = 0; b < BM / 32; ++b)
            if (c0 + 32 * b < a.n) tma_store_2d(ty, ytile + b * BN * 128, c0 + 32 * b, m0);
        tma_store_commit_wait_read();
    }
}

// Epilogue v10: v7's compact row walk, but into a 128-byte-swizzled float buffer of 64
// tokens × BM channels (BM/32 boxes of [64][32]) that one thread hands to the TMA engine
// (bulk tensor stores), twice per tile; the thread waits only until the engine has read
// the buffer, so the global writes drain under the next CTA's main loop. The int tile is
// unpadded [BN][BM] with the channel XOR-ed by 8·((row >> 1) & 3) (fragment stores
// conflict-free, 16-byte row reads intact) so that tile (128 KB) + buffer (64 KB) fit in
// the six stages. Needs y only (no acc), n % 4 == 0 and y 16-byte aligned (the launch
// falls back to v7's epilogue otherwise). v9 (the same from the fragments) unrolled
// 60k instructions of epilogue code and ran at a third of v7's speed.
template <class C>
__device__ __forceinline__ void epilogue_tma2(const W4GemmArgs& a, int (&acc)[C::MT][C::BN / 2], uint8_t* smem,
                                              const CUtensorMap* ty, int m0, int c0, int cw, int warp, int lane,
                                              int ct, float* tsc, int* tze) {
    constexpr int MT = C::MT, BN = C::BN, BM = C::BM, HR = 64;
    static_assert(BN % HR == 0 && BN * BM * 4 + HR * BM * 4 <= C::STAGES * C::Stage, "tile + buffer fit");
    int* tile = reinterpret_cast<int*>(smem);
    uint8_t* ybuf = smem + BN * BM * 4;
    asm volatile("bar.sync 1, 256;\n" ::: "memory");  // the other warpgroup's wgmmas are done with the stages
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int i = 0; i < BN / 8; ++i)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int r = 8 * i + 2 * t + e, c = (cw * MT + mt) * 64 + warp * 16 + h * 8 + g;
                    tile[r * BM + (c ^ (((r >> 1) & 3) << 3))] = acc[mt][4 * i + 2 * h + e] >> 4;
                }
    if (ct < BN && m0 + ct < a.m) tsc[ct] = a.act_scale[m0 + ct], tze[ct] = a.act_zero[m0 + ct];
    constexpr int GROUPS = BM / 4, ROWS = 256 / GROUPS;
    const int cg = ct % GROUPS, r0 = ct / GROUPS, ch0 = c0 + 4 * cg;
    float ws[4] = {0, 0, 0, 0}, bs[4] = {0, 0, 0, 0};
    int rs[4] = {0, 0, 0, 0};
#pragma unroll
    for (int j = 0; j < 4; ++j)
        if (ch0 + j < a.n) {
            ws[j] = a.w_scale[ch0 + j], rs[j] = a.w_rowsum[ch0 + j];
            if (a.bias) bs[j] = a.bias[ch0 + j];
        }
    const bool in_c = ch0 < a.n;  // n % 4 == 0: 4 whole channels or none
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    for (int half = 0; half < BN / HR; ++half) {
        if (m0 + half * HR >= a.m) break;
#pragma unroll 4
        for (int rl = r0; rl < HR; rl += ROWS) {
            const int r = half * HR + rl, tok = m0 + r;
            const int4 v = *reinterpret_cast<const int4*>(tile + r * BM + ((4 * cg) ^ (((r >> 1) & 3) << 3)));
            const int vv[4] = {v.x, v.y, v.z, v.w};
            const float st = tsc[r];
            const int zt = tze[r];
            float sp[4] = {0, 0, 0, 0};
            const bool in = in_c && tok < a.m;
            if (a.spec && in) {
                const float4 v4 = *reinterpret_cast<const float4*>(a.spec + (int64_t)tok * a.n + ch0);
                sp[0] = v4.x, sp[1] = v4.y, sp[2] = v4.z, sp[3] = v4.w;
            }
            float y[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float f = __fmul_rn(__fmul_rn(st, ws[j]), (float)(vv[j] - zt * rs[j]));
                if (a.spec) f = __fadd_rn(f, sp[j]);
                else if (a.spec_rank > 0 && in)
                    f = __fadd_rn(f, spec_dot(a.spec_z + (int64_t)tok * a.spec_rank,
                                              a.spec_c + (int64_t)(ch0 + j) * a.spec_rank, a.spec_rank));
                if (a.bias) f = __fadd_rn(f, bs[j]);
                y[j] = f;
            }
            const int cl = 4 * cg;  // a 16-byte chunk of box cl / 32
            *reinterpret_cast<float4*>(ybuf + (cl / 32) * HR * 128 + rl * 128 + ((((cl % 32) / 4) ^ (rl & 7)) << 4)) =
                make_float4(y[0], y[1], y[2], y[3]);
        }
        fence_proxy_async_smem();  // generic-proxy writes before the TMA engine reads them
        asm volatile("bar.sync 1, 256;\n" ::: "memory");
        if (ct == 0) {
            for (int b = 0; b < BM / 32; ++b)
                if (c0 + 32 * b < a.n) tma_store_2d(ty, ybuf + b * HR * 128, c0 + 32 * b, m0 + half * HR);
            tma_store_commit_wait_read();
        }
        if (half + 1 < BN / HR) asm volatile("bar.sync 1, 256;\n" ::: "memory");  // buffer read before reuse
    }
}

template <class C>
__device__ __forceinline__ void gemm_body(const CUtensorMap& tx, const CUtensorMap& tw, const CUtensorMap& ty,
                                          const W4GemmArgs& a, int tma_y);
template <class C>
__global__ void __launch_bounds__(384, 1)
    gemm_kernel(const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tw,
                const __grid_constant__ CUtensorMap ty, const W4GemmArgs a, int tma_y) {
    gemm_body<C>(tx, tw, ty, a, tma_y);
}
// v11: two CTAs of 288 threads per SM: 65536 / 576 → 112 registers (__launch_bounds__(288, 2) gave 94 and spills).
template <class C>
__global__ void __maxnreg__(112)
    gemm_kernel2(const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tw,
                 const __grid_constant__ CUtensorMap ty, const W4GemmArgs a, int tma_y) {
    gemm_body<C>(tx, tw, ty, a, tma_y);
}
template <class C>
__device__ __forceinline__ void gemm_body(const CUtensorMap& tx, const CUtensorMap& tw, const CUtensorMap& ty,
                                          const W4GemmArgs& a, int tma_y) {
    __shared__ float tok_scale[C::BN];
    __shared__ int tok_zero[C::BN];
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + C::STAGES * C::Stage);
    uint64_t* empty = full + C::STAGES;
    const int wgi = threadIdx.x / 128, tid = threadIdx.x % 128;
    const int m0 = blockIdx.x * C::BN, c0 = blockIdx.y * C::BM;
    const int KB = (a.k + 127) / 128;
    if (threadIdx.x == 0) {
        for (int s = 0; s < C::STAGES; ++s) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], 8);  // one arrive per consumer warp
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    const int prod_wg = C::MINB == 1 ? 0 : 2;
    if (wgi == prod_wg) {  // producer
        if constexpr (C::MINB == 1) setmaxnreg_dec<40>();
        if (tid == 0) {
            for (int kb = 0; kb < KB; ++kb) {
                const int s = kb % C::STAGES;
                if (kb >= C::STAGES) mbar_wait(&empty[s], ((kb / C::STAGES) - 1) & 1);
                uint8_t* st = smem + s * C::Stage;
                mbar_expect_tx(&full[s], C::Stage);
                tma_2d(st, &tx, kb * 128, m0, &full[s]);
                tma_3d(st + C::XBytes, &tw, 0, kb, c0 / 8, &full[s]);
            }
        }
        return;
    }
    if constexpr (C::MINB == 1) setmaxnreg_inc<232>();
    constexpr int MT = C::MT, BN = C::BN;
    const int cw = C::MINB == 1 ? wgi - 1 : wgi, warp = tid / 32, lane = tid % 32;
    int acc[MT][BN / 2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) acc[mt][i] = 0;

    // This warp's 16 channels of tile mt are layout blocks (cw·MT + mt)·8 + 2·warp (rows 0..7)
    // and + 1 (rows 8..15) of the stage's W tile: A registers 0, 2 and 1, 3 (the m16n8k32
    // fragment order, which wgmma's register A follows per warp).
    uint4 raw[MT][2];
    auto load_raw = [&](int s) {
        const uint8_t* wt = smem + s * C::Stage + C::XBytes;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
                raw[mt][h] = *reinterpret_cast<const uint4*>(wt + ((cw * MT + mt) * 8 + warp * 2 + h) * 512 + lane * 16);
    };
    auto issue = [&](int kb, uint32_t (&af)[MT][4][4]) {
        const int s = kb % C::STAGES;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
                const uint32_t w0 = word_of(raw[mt][0], ks), w1 = word_of(raw[mt][1], ks);
                af[mt][ks][0] = w4_lo16(w0);
                af[mt][ks][1] = w4_lo16(w1);
                af[mt][ks][2] = w4_hi16(w0);
                af[mt][ks][3] = w4_hi16(w1);
            }
        // Every input register of the stage's wgmmas is written before the fence (the empty asm
        // statements pin them there): ptxas then needs no warpgroup.arrive between the wgmmas.
        uint64_t dk[4];
        const uint64_t d0 = desc_sw128(smem + s * C::Stage);
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
            dk[ks] = d0 + 2 * ks;
            asm volatile("" : "+l"(dk[ks]));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                asm volatile("" : "+r"(af[mt][ks][0]), "+r"(af[mt][ks][1]), "+r"(af[mt][ks][2]), "+r"(af[mt][ks][3]));
        }
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) mma<BN>(acc[mt], af[mt][ks], dk[ks], 1);
        wgmma_commit();
        if (kb + 1 < KB) {  // next stage's weights while this stage's wgmmas run
            const int s1 = (kb + 1) % C::STAGES;
            mbar_wait(&full[s1], ((kb + 1) / C::STAGES) & 1);
            load_raw(s1);
        }
    };
    auto release = [&](int kb) {
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty[kb % C::STAGES]);
    };
    mbar_wait(&full[0], 0);
    load_raw(0);
    if constexpr (C::DEEP) {
        uint32_t af0[MT][4][4], af1[MT][4][4];
        for (int kb = 0; kb < KB; kb += 2) {
            issue(kb, af0);
            wgmma_wait<1>();
            if (kb > 0) release(kb - 1);
            if (kb + 1 < KB) {
                issue(kb + 1, af1);
                wgmma_wait<1>();
                release(kb);
            }
        }
        wgmma_wait<0>();
    } else {
        uint32_t af[MT][4][4];
        for (int kb = 0; kb < KB; ++kb) {
            issue(kb, af);
            wgmma_wait<0>();
            release(kb);
        }
    }

    if constexpr (C::EPI == 4) {
        if (tma_y) {
            epilogue_tma2<C>(a, acc, smem, &ty, m0, c0, cw, warp, lane, tid + 128 * cw, tok_scale, tok_zero);
            return;
        }
    }
    if constexpr (C::EPI == 3) {
        epilogue_tma<C>(a, acc, smem, &ty, m0, c0, cw, warp, lane, tid + 128 * cw);
        return;
    } else if constexpr (C::EPI > 0) {
        epilogue_smem<C>(a, acc, smem, m0, c0, cw, warp, lane, tid + 128 * cw);  // EPI 4 without TMA y: v7
        return;
    }
    // Epilogue straight from the accumulators: thread (warp, g = lane/4, t = lane%4) holds
    // channels 16·warp + g (+8) of each m64 tile, tokens 8i + 2t (+1): per store a warp writes
    // 4 tokens × 8 consecutive channels = four full 32-byte sectors.
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int i = 0; i < BN / 8; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int tok = m0 + 8 * i + 2 * t + e;
            if (tok >= a.m) continue;
            const float st = a.y ? a.act_scale[tok] : 0.0f;
            const int zt = a.y ? a.act_zero[tok] : 0;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int ch = c0 + (cw * MT + mt) * 64 + warp * 16 + h * 8 + g;
                    if (ch >= a.n) continue;
                    const int v = acc[mt][4 * i + 2 * h + e] >> 4;
                    const int64_t idx = (int64_t)tok * a.n + ch;
                    if (a.acc) a.acc[idx] = v;
                    if (a.y) a.y[idx] = epi_value(a, tok, ch, v, st, zt);
                }
        }
}

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
    static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
        void* p = nullptr;
        cudaDriverEntryPointQueryResult q;
        CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
        if (q != cudaDriverEntryPointSuccess || !p) {
            std::fprintf(stderr, "cuTensorMapEncodeTiled not found\n");
            std::exit(1);
        }
        return (PFN_cuTensorMapEncodeTiled_v12000)p;
    }();
    return fn;
}

// Needs k % 16 == 0 and q 16-byte aligned (TMA: row stride a multiple of 16 B).
template <class C>
void launch(const W4GemmArgs& a, cudaStream_t st) {
    CUtensorMap tx, tw;
    const int KB = (a.k + 127) / 128;
    {
        const cuuint64_t dims[2] = {(cuuint64_t)a.k, (cuuint64_t)a.m}, strides[1] = {(cuuint64_t)a.k};
        const cuuint32_t box[2] = {128, (cuuint32_t)C::BN}, es[2] = {1, 1};
        CUresult r = encode_fn()(&tx, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, (void*)a.q, dims, strides, box, es,
                                 CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                 CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        if (r != CUDA_SUCCESS) { std::fprintf(stderr, "tensor map X: %d\n", (int)r); std::exit(1); }
    }
    {
        const cuuint64_t dims[3] = {128, (cuuint64_t)KB, (cuuint64_t)(w4g_n_pad(a.n) / 8)};
        const cuuint64_t strides[2] = {512, (cuuint64_t)KB * 512};
        const cuuint32_t box[3] = {128, 1, (cuuint32_t)(C::BM / 8)}, es[3] = {1, 1, 1};
        CUresult r = encode_fn()(&tw, CU_TENSOR_MAP_DATA_TYPE_UINT32, 3, (void*)a.w, dims, strides, box, es,
                                 CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                                 CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        if (r != CUDA_SUCCESS) { std::fprintf(stderr, "tensor map W: %d\n", (int)r); std::exit(1); }
    }
    CUtensorMap ty;
    std::memset(&ty, 0, sizeof ty);
    const int tma_y = C::EPI == 4 && a.y && !a.acc && a.n % 4 == 0 && ((uintptr_t)a.y & 15) == 0;
    if ((C::EPI == 3 && a.y) || tma_y) {  // y [m, n] fp32, boxes of 32 channels × BN (v10: 64) tokens, 128-byte swizzle
        if (a.n % 4 != 0) { std::fprintf(stderr, "v9 needs n %% 4 == 0\n"); std::exit(1); }
        const cuuint64_t dims[2] = {(cuuint64_t)a.n, (cuuint64_t)a.m}, strides[1] = {(cuuint64_t)a.n * 4};
        const cuuint32_t box[2] = {32, (cuuint32_t)(C::EPI == 4 ? 64 : C::BN)}, es[2] = {1, 1};
        CUresult r = encode_fn()(&ty, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, (void*)a.y, dims, strides, box, es,
                                 CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                 CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        if (r != CUDA_SUCCESS) { std::fprintf(stderr, "tensor map Y: %d\n", (int)r); std::exit(1); }
    }
    void (*kern)(const CUtensorMap, const CUtensorMap, const CUtensorMap, const W4GemmArgs, int);
    if constexpr (C::MINB == 1) kern = gemm_kernel<C>;
    else kern = gemm_kernel2<C>;
    CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::Smem));
    const dim3 grid((unsigned)((a.m + C::BN - 1) / C::BN), (unsigned)((a.n + C::BM - 1) / C::BM));
    kern<<<grid, C::THREADS, C::Smem, st>>>(tx, tw, ty, a, tma_y);
    CK(cudaGetLastError());
}


// ---- v12: persistent CTAs; the epilogue runs in the producer warpgroup's 3 idle warps ----
//
// v7's main loop unchanged (256 channels × 128 tokens per tile, both consumer warpgroups on
// one tile, X shared: v11 showed that 128 × 128 tiles cost 1.5× the operand traffic), but
// one CTA per SM walks tiles blockIdx.x, + gridDim.x, … and the stage ring runs on across
// tiles, so the producer prefetches tile i+1 while tile i finishes. After its main loop a
// consumer thread hands its exact accumulators (>> 4) to warps 1..3 of warpgroup 0 through
// a buffer of HR tokens × 256 channels (int32, unpadded; channel XOR 8·((row >> 1) & 3):
// fragment stores and 16-byte row reads both conflict-free) and goes on with the next
// tile's main loop; those 96 threads compute y (v7's float ops, same order) and store it
// while the tensor cores work. v7 ran the epilogue with the tensor cores idle: 13 of o's
// 62 µs, 90 of gu's 410. Hand-offs: mbarriers bfull (256 consumer arrivals) and bfree
// (96 epilogue arrivals), strictly alternating, so one parity bit each is unambiguous.
// Registers: consumers 216, warpgroup 0 72 (setmaxnreg). The increase draws only on what this
// CTA's decrease released (168 each at launch): 256·(216 − 168) = 128·(168 − 72). Run 1 had
// 224 / 64 (2·128·224 + 128·64 = 65536, but 14336 asked against 13312 released): the consumers'
// setmaxnreg.inc waited forever. 216 / 72 compile without spills; 224 / 56 spill.
template <int STAGES_, int HR_>
struct P12 {
    static constexpr int STAGES = STAGES_, HR = HR_;
    static constexpr int BN = 128, MT = 2, BM = 256, EWARPS = 3;
    static constexpr int XBytes = BN * 128, WBytes = BM / 8 * 512, Stage = XBytes + WBytes;
    static constexpr int OffBuf = STAGES * Stage, OffTok = OffBuf + HR * BM * 4, OffBar = OffTok + BN * 8;
    static constexpr int Smem = OffBar + (2 * STAGES + 2) * 8 + 1024;  // + 1024: base alignment
    static_assert(Smem <= 227 * 1024, "shared memory");
    static_assert(BN % HR == 0 && HR % 8 == 0, "hand-off rows");
};

template <class P>
__global__ void __launch_bounds__(384, 1)
    persist_kernel(const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tw, const W4GemmArgs a) {
    constexpr int BN = P::BN, BM = P::BM, MT = P::MT, S = P::STAGES, HR = P::HR;
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    int* buf = reinterpret_cast<int*>(smem + P::OffBuf);
    float* tsc = reinterpret_cast<float*>(smem + P::OffTok);
    int* tze = reinterpret_cast<int*>(tsc + BN);
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + P::OffBar);
    uint64_t* empty = full + S;
    uint64_t* bfull = empty + S;
    uint64_t* bfree = bfull + 1;
    const int wgi = threadIdx.x / 128, tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
    const int KB = (a.k + 127) / 128;
    const int mtiles = (a.m + BN - 1) / BN, ntiles = mtiles * ((a.n + BM - 1) / BM);
    if (threadIdx.x == 0) {
        for (int s = 0; s < S; ++s) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], 8);  // one arrive per consumer warp
        }
        mbar_init(bfull, 256);
        mbar_init(bfree, 32 * P::EWARPS);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (wgi == 0) {
        setmaxnreg_dec<72>();
        if (warp == 0) {  // producer: one thread, the ring runs on across tiles
            if (lane == 0) {
                int cnt = 0;
                for (int tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
                    const int m0 = (tile % mtiles) * BN, c0 = (tile / mtiles) * BM;
                    for (int kb = 0; kb < KB; ++kb, ++cnt) {
                        const int s = cnt % S;
                        if (cnt >= S) mbar_wait(&empty[s], ((cnt / S) - 1) & 1);
                        uint8_t* st = smem + s * P::Stage;
                        mbar_expect_tx(&full[s], P::Stage);
                        tma_2d(st, &tx, kb * 128, m0, &full[s]);
                        tma_3d(st + P::XBytes, &tw, 0, kb, c0 / 8, &full[s]);
                    }
                }
            }
            return;
        }
        // Epilogue warps 1..3: token constants of the tile in shared memory; per hand-off and
        // 128-channel half, lane's 4 channels' constants in registers (12; both halves at once
        // spilled at 64 registers), then rows ew, ew + 3, … of the hand-off.
        const int ew = warp - 1, et = tid - 32;
        int hand = 0;
        for (int tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
            const int m0 = (tile % mtiles) * BN, c0 = (tile / mtiles) * BM;
            if (a.y)
                for (int r = et; r < BN; r += 32 * P::EWARPS)
                    if (m0 + r < a.m) tsc[r] = a.act_scale[m0 + r], tze[r] = a.act_zero[m0 + r];
            asm volatile("bar.sync 2, 96;\n" ::: "memory");
            for (int h = 0; h < BN / HR; ++h, ++hand) {
                mbar_wait(bfull, hand & 1);
                for (int hc = 0; hc < 2; ++hc) {
                    const int cl = hc * 128 + 4 * lane, ch0 = c0 + cl;
                    if (ch0 >= a.n) continue;
                    float ws[4], bs[4];
                    int rs[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const bool in = a.y && ch0 + j < a.n;
                        ws[j] = in ? a.w_scale[ch0 + j] : 0.0f;
                        rs[j] = in ? a.w_rowsum[ch0 + j] : 0;
                        bs[j] = in && a.bias ? a.bias[ch0 + j] : 0.0f;
                    }
                    const bool vec = ch0 + 3 < a.n && a.n % 4 == 0;
                    const bool vacc = vec && ((uintptr_t)a.acc & 15) == 0, vy = vec && ((uintptr_t)a.y & 15) == 0;
                    const bool vspec = vec && ((uintptr_t)a.spec & 15) == 0;
#pragma unroll 2
                    for (int rl = ew; rl < HR; rl += P::EWARPS) {
                        const int r = h * HR + rl, tok = m0 + r;
                        if (tok >= a.m) break;
                        const int4 v = *reinterpret_cast<const int4*>(buf + rl * BM + (cl ^ (((rl >> 1) & 3) << 3)));
                        const int vv[4] = {v.x, v.y, v.z, v.w};
                        const int64_t idx = (int64_t)tok * a.n + ch0;
                        if (a.acc) {
                            if (vacc) *reinterpret_cast<int4*>(a.acc + idx) = v;
                            else
                                for (int j = 0; j < 4 && ch0 + j < a.n; ++j) a.acc[idx + j] = vv[j];
                        }
                        if (a.y) {
                            const float st = tsc[r];
                            const int zt = tze[r];
                            float sp[4] = {0, 0, 0, 0};  // spec [m, n] (the engine's prefill); no fused rank here
                            if (a.spec) {
                                if (vspec) {
                                    const float4 v4 = *reinterpret_cast<const float4*>(a.spec + idx);
                                    sp[0] = v4.x, sp[1] = v4.y, sp[2] = v4.z, sp[3] = v4.w;
                                } else
                                    for (int j = 0; j < 4 && ch0 + j < a.n; ++j) sp[j] = a.spec[idx + j];
                            }
                            float y[4];
#pragma unroll
                            for (int j = 0; j < 4; ++j) {
                                float f = __fmul_rn(__fmul_rn(st, ws[j]), (float)(vv[j] - zt * rs[j]));
                                if (a.spec) f = __fadd_rn(f, sp[j]);
                                if (a.bias) f = __fadd_rn(f, bs[j]);
                                y[j] = f;
                            }
                            if (vy) *reinterpret_cast<float4*>(a.y + idx) = make_float4(y[0], y[1], y[2], y[3]);
                            else
                                for (int j = 0; j < 4 && ch0 + j < a.n; ++j) a.y[idx + j] = y[j];
                        }
                    }
                }
                mbar_arrive(bfree);
            }
            asm volatile("bar.sync 2, 96;\n" ::: "memory");  // token constants read before the next tile's
        }
        return;
    }

    setmaxnreg_inc<216>();
    const int cw = wgi - 1, g = lane / 4, t = lane % 4;
    int acc[MT][BN / 2];
    uint4 raw[MT][2];
    auto load_raw = [&](int s) {
        const uint8_t* wt = smem + s * P::Stage + P::XBytes;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
                raw[mt][h] = *reinterpret_cast<const uint4*>(wt + ((cw * MT + mt) * 8 + warp * 2 + h) * 512 + lane * 16);
    };
    int cnt = 0, hand = 0;
    for (int tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int i = 0; i < BN / 2; ++i) acc[mt][i] = 0;
        mbar_wait(&full[cnt % S], (cnt / S) & 1);
        load_raw(cnt % S);
        uint32_t af[MT][4][4];
        for (int kb = 0; kb < KB; ++kb, ++cnt) {
            const int s = cnt % S;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int ks = 0; ks < 4; ++ks) {
                    const uint32_t w0 = word_of(raw[mt][0], ks), w1 = word_of(raw[mt][1], ks);
                    af[mt][ks][0] = w4_lo16(w0);
                    af[mt][ks][1] = w4_lo16(w1);
                    af[mt][ks][2] = w4_hi16(w0);
                    af[mt][ks][3] = w4_hi16(w1);
                }
            uint64_t dk[4];
            const uint64_t d0 = desc_sw128(smem + s * P::Stage);
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
                dk[ks] = d0 + 2 * ks;
                asm volatile("" : "+l"(dk[ks]));
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
                    asm volatile("" : "+r"(af[mt][ks][0]), "+r"(af[mt][ks][1]), "+r"(af[mt][ks][2]), "+r"(af[mt][ks][3]));
            }
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < 4; ++ks)
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) wgmma_n128(acc[mt], af[mt][ks], dk[ks], 1);
            wgmma_commit();
            if (kb + 1 < KB) {  // the next stage's weights while this stage's wgmmas run
                const int c1 = cnt + 1;
                mbar_wait(&full[c1 % S], (c1 / S) & 1);
                load_raw(c1 % S);
            }
            wgmma_wait<0>();
            __syncwarp();
            if (lane == 0) mbar_arrive(&empty[s]);
        }
        // Hand-off: HR rows at a time into the buffer, once the epilogue warps are done with it.
#pragma unroll
        for (int h = 0; h < BN / HR; ++h, ++hand) {
            if (hand > 0) mbar_wait(bfree, (hand - 1) & 1);
#pragma unroll
            for (int i = h * HR / 8; i < (h + 1) * HR / 8; ++i)
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int hh = 0; hh < 2; ++hh)
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const int rl = 8 * i - h * HR + 2 * t + e, c = (cw * MT + mt) * 64 + warp * 16 + hh * 8 + g;
                            buf[rl * BM + (c ^ (((rl >> 1) & 3) << 3))] = acc[mt][4 * i + 2 * hh + e] >> 4;
                        }
            mbar_arrive(bfull);
        }
    }
}

int num_sms() {
    static const int n = [] {
        int v = 0;
        CK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0));
        return v;
    }();
    return n;
}

template <class P>
void launch_p12(const W4GemmArgs& a, cudaStream_t st) {
    if (a.m == 0 || a.n == 0) return;  // no outputs at all still runs: the "no-out" timing
    if (a.y && !a.spec && a.spec_rank > 0) return launch<Cfg<128, 2, 6, false, 2>>(a, st);  // fused rank: v7
    CUtensorMap tx, tw;
    const int KB = (a.k + 127) / 128;
    {
        const cuuint64_t dims[2] = {(cuuint64_t)a.k, (cuuint64_t)a.m}, strides[1] = {(cuuint64_t)a.k};
        const cuuint32_t box[2] = {128, (cuuint32_t)P::BN}, es[2] = {1, 1};
        CUresult r = encode_fn()(&tx, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, (void*)a.q, dims, strides, box, es,
                                 CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                 CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        if (r != CUDA_SUCCESS) { std::fprintf(stderr, "tensor map X: %d\n", (int)r); std::exit(1); }
    }
    {
        const cuuint64_t dims[3] = {128, (cuuint64_t)KB, (cuuint64_t)(w4g_n_pad(a.n) / 8)};
        const cuuint64_t strides[2] = {512, (cuuint64_t)KB * 512};
        const cuuint32_t box[3] = {128, 1, (cuuint32_t)(P::BM / 8)}, es[3] = {1, 1, 1};
        CUresult r = encode_fn()(&tw, CU_TENSOR_MAP_DATA_TYPE_UINT32, 3, (void*)a.w, dims, strides, box, es,
                                 CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                                 CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        if (r != CUDA_SUCCESS) { std::fprintf(stderr, "tensor map W: %d\n", (int)r); std::exit(1); }
    }
    CK(cudaFuncSetAttribute(persist_kernel<P>, cudaFuncAttributeMaxDynamicSharedMemorySize, P::Smem));
    const int tiles = ((a.m + P::BN - 1) / P::BN) * ((a.n + P::BM - 1) / P::BM);
    persist_kernel<P><<<std::min(tiles, num_sms()), 384, P::Smem, st>>>(tx, tw, a);
    CK(cudaGetLastError());
}

}  // namespace wg
// ================= end of the kernel =================

// ---- references --------------------------------------------------------------
// Naive exact GPU reference: acc[t, j] = Σ q[t, i]·w[j, i] over canonical int8 weights
// (dp4a, 4 codes per step); validated against the CPU loop on the small shapes.
__global__ void ref_acc_kernel(const uint8_t* q, const int8_t* w, int m, int n, int k, int32_t* acc) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (j >= n || t >= m) return;
    const uint8_t* qr = q + (int64_t)t * k;
    const int8_t* wr = w + (int64_t)j * k;
    int s = 0, i = 0;
    if (k % 4 == 0)
        for (; i < k; i += 4) {
            const uint32_t qa = *reinterpret_cast<const uint32_t*>(qr + i), wb = *reinterpret_cast<const uint32_t*>(wr + i);
            asm("dp4a.u32.s32 %0, %1, %2, %0;\n" : "+r"(s) : "r"(qa), "r"(wb));  // u8 · s8
        }
    for (; i < k; ++i) s += (int)qr[i] * (int)wr[i];
    acc[(int64_t)t * n + j] = s;
}
__global__ void ref_epi_kernel(const W4GemmArgs a, const int32_t* acc, float* y) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (j >= a.n || t >= a.m) return;
    const int64_t i = (int64_t)t * a.n + j;
    y[i] = epi_value(a, t, j, acc[i], a.act_scale[t], a.act_zero[t]);
}

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    uint32_t next() {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        return (uint32_t)(s >> 16);
    }
    float uni(float lo, float hi) { return lo + (hi - lo) * (float)(next() & 0xFFFFFF) / 16777216.0f; }
};

template <class T>
T* dev_copy(const std::vector<T>& h) {
    T* d = nullptr;
    CK(cudaMalloc(&d, std::max<size_t>(1, h.size() * sizeof(T))));
    if (!h.empty()) CK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

// One problem on the device: codes, layout, epilogue inputs, reference outputs.
struct Problem {
    int m, n, k, rank;
    W4GemmArgs a;  // without outputs
    int8_t* wc = nullptr;
    std::vector<void*> bufs;
    int32_t* acc_ref = nullptr;
    float* y_ref = nullptr;
    Problem(int m_, int n_, int k_, uint64_t seed, int mode, int rank_ = 0) : m(m_), n(n_), k(k_), rank(rank_) {
        // mode 0: random codes, 1: extreme (q = 255, w = −8), 2: random, with spec [m, n]
        Rng r(seed);
        std::vector<uint8_t> q((size_t)m * k);
        std::vector<int8_t> w((size_t)n * k);
        for (auto& v : q) v = mode == 1 ? 255 : (uint8_t)r.next();
        for (auto& v : w) v = mode == 1 ? -8 : (int8_t)((int)(r.next() & 15) - 8);
        std::vector<uint8_t> lay((size_t)w4g_bytes(n, k));
        repack(w.data(), n, k, lay.data());
        std::vector<float> as(m), ws(n), bias(n), spec, sz, sc;
        std::vector<int32_t> az(m), rs(n);
        for (auto& v : as) v = r.uni(1e-3f, 2e-2f);
        for (auto& v : az) v = (int)(r.next() % 256);
        for (auto& v : ws) v = r.uni(1e-3f, 3e-2f);
        for (auto& v : bias) v = r.uni(-1.0f, 1.0f);
        for (int j = 0; j < n; ++j) {
            int s = 0;
            for (int i = 0; i < k; ++i) s += w[(size_t)j * k + i];
            rs[j] = s;
        }
        uint8_t* dq = dev_copy(q);
        wc = dev_copy(w);
        uint8_t* dl = dev_copy(lay);
        a.q = dq, a.m = m, a.k = k, a.n = n, a.w = dl;
        a.act_scale = dev_copy(as), a.act_zero = dev_copy(az), a.w_scale = dev_copy(ws), a.w_rowsum = dev_copy(rs);
        a.bias = dev_copy(bias);
        if (mode == 2) {
            spec.resize((size_t)m * n);
            for (auto& v : spec) v = r.uni(-2.0f, 2.0f);
            a.spec = dev_copy(spec);
        }
        if (rank > 0) {
            sz.resize((size_t)m * rank), sc.resize((size_t)n * rank);
            for (auto& v : sz) v = r.uni(-1.0f, 1.0f);
            for (auto& v : sc) v = r.uni(-1.0f, 1.0f);
            a.spec_z = dev_copy(sz), a.spec_c = dev_copy(sc), a.spec_rank = rank;
        }
        bufs = {dq, wc, dl, (void*)a.act_scale, (void*)a.act_zero, (void*)a.w_scale, (void*)a.w_rowsum,
                (void*)a.bias, (void*)a.spec, (void*)a.spec_z, (void*)a.spec_c};
        CK(cudaMalloc(&acc_ref, (size_t)m * n * 4));
        CK(cudaMalloc(&y_ref, (size_t)m * n * 4));
        const dim3 grid((unsigned)((n + 127) / 128), (unsigned)m);
        ref_acc_kernel<<<grid, 128>>>(a.q, wc, m, n, k, acc_ref);
        CK(cudaGetLastError());
        ref_epi_kernel<<<grid, 128>>>(a, acc_ref, y_ref);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        if ((double)m * n * k <= 2e8) {  // the naive GPU reference against the CPU loop
            std::vector<int32_t> g((size_t)m * n);
            CK(cudaMemcpy(g.data(), acc_ref, g.size() * 4, cudaMemcpyDeviceToHost));
            for (int t = 0; t < m; ++t)
                for (int j = 0; j < n; ++j) {
                    int64_t s = 0;
                    for (int i = 0; i < k; ++i) s += (int)q[(size_t)t * k + i] * w[(size_t)j * k + i];
                    if (s != g[(size_t)t * n + j]) {
                        std::printf("REFERENCE MISMATCH m=%d n=%d k=%d at (%d,%d)\n", m, n, k, t, j);
                        std::exit(1);
                    }
                }
        }
    }
    ~Problem() {
        for (void* p : bufs) cudaFree(p);
        cudaFree(acc_ref);
        cudaFree(y_ref);
    }
};

using LaunchFn = void (*)(const W4GemmArgs&, cudaStream_t);
struct Version {
    const char* name;
    LaunchFn fn;
};
using V1 = wg::Cfg<128, 2, 6, false>;  // 256 ch × 128 tok, 6 stages, wait_group 0
using V3 = wg::Cfg<256, 1, 5, false>;  // 128 ch × 256 tok, 5 stages
using V5 = wg::Cfg<128, 2, 6, false, 1>;  // v1 + epilogue through shared memory
using V6 = wg::Cfg<256, 1, 5, false, 1>;  // v3 + epilogue through shared memory
using V7 = wg::Cfg<128, 2, 6, false, 2>;  // v5 + token scales staged, row loop unrolled
using V8 = wg::Cfg<128, 2, 5, false, 2>;  // v7 with 5 stages
using V9 = wg::Cfg<128, 2, 6, false, 3>;  // v7's tile, epilogue by TMA store (n % 4 == 0)
using V10 = wg::Cfg<128, 2, 6, false, 4>;  // v7 + TMA-store epilogue through a 64-token buffer
using V11 = wg::Cfg<128, 1, 4, false, 2, 2>;  // 128 ch x 128 tok, 4 stages (97 KB), 2 CTAs per SM
const Version kVersions[] = {
    {"v1 256x128 s6 w0", wg::launch<V1>},
    {"v3 128x256 s5 w0", wg::launch<V3>},
    {"v5 256x128 smepi", wg::launch<V5>},
    {"v6 128x256 smepi", wg::launch<V6>},
    {"v7 256x128 epi2", wg::launch<V7>},
    {"v8 256x128 s5 epi2", wg::launch<V8>},
    {"v9 256x128 tma-st", wg::launch<V9>},
    {"v10 256x128 tma2", wg::launch<V10>},
    {"v11 128x128 2cta", wg::launch<V11>},
    {"v12 persist s5 h64", wg::launch_p12<wg::P12<5, 64>>},
    {"v12b persist s6 h32", wg::launch_p12<wg::P12<6, 32>>},
    {"v12c persist s3 h128", wg::launch_p12<wg::P12<3, 128>>},
};
// --only v7,v12: the versions checked and timed (first word of the name); default: all
// checked, v7 and v12* timed.
std::vector<std::string> g_only;
bool selected(const char* name, bool timing) {
    const std::string first = std::string(name).substr(0, std::string(name).find(' '));
    if (g_only.empty()) return !timing || first == "v7" || first.rfind("v12", 0) == 0;
    return std::find(g_only.begin(), g_only.end(), first) != g_only.end();
}

// Runs v on p with poisoned outputs; returns the number of mismatching accumulators + outputs.
int64_t check(const Problem& p, const Version& v) {
    W4GemmArgs a = p.a;
    const size_t cnt = (size_t)p.m * p.n;
    const bool y_only = !std::strncmp(v.name, "v10", 3);  // its TMA-store path runs without acc only
    CK(cudaMalloc(&a.acc, cnt * 4));
    CK(cudaMalloc(&a.y, cnt * 4));
    CK(cudaMemset(a.acc, 0xA5, cnt * 4));  // poison
    CK(cudaMemset(a.y, 0xFF, cnt * 4));    // NaN
    int32_t* acc_buf = a.acc;
    if (y_only) a.acc = nullptr;
    v.fn(a, 0);
    CK(cudaDeviceSynchronize());
    a.acc = acc_buf;
    std::vector<int32_t> acc(cnt), accr(cnt);
    std::vector<uint32_t> y(cnt), yr(cnt);
    CK(cudaMemcpy(acc.data(), a.acc, cnt * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(accr.data(), p.acc_ref, cnt * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(y.data(), a.y, cnt * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(yr.data(), p.y_ref, cnt * 4, cudaMemcpyDeviceToHost));
    int64_t bad = 0;
    for (size_t i = 0; i < cnt; ++i) {
        if ((!y_only && acc[i] != accr[i]) || y[i] != yr[i]) {
            if (bad < 3)
                std::printf("    mismatch (%zu, %zu): acc %d vs %d, y %08x vs %08x\n", i / p.n, i % p.n, acc[i], accr[i],
                            y[i], yr[i]);
            ++bad;
        }
    }
    cudaFree(a.acc);
    cudaFree(a.y);
    return bad;
}

// ---- timing ------------------------------------------------------------------------
__global__ void flush_kernel(const uint4* p, int64_t count, uint32_t* sink) {
    uint32_t acc = 0;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        const uint4 v = p[i];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x12345678u) *sink = acc;
}
__global__ void fill_kernel(void* p, int64_t count, int kind, uint32_t seed) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t x = (uint32_t)i * 0x9E3779B1u ^ seed;
        x ^= x >> 16, x *= 0x85EBCA6Bu, x ^= x >> 13, x *= 0xC2B2AE35u, x ^= x >> 16;
        if (kind == 0) ((uint8_t*)p)[i] = (uint8_t)x;
        else if (kind == 2) ((__nv_bfloat16*)p)[i] = __float2bfloat16((float)(int)(x % 2001) / 1000.0f - 1.0f);
        else ((__nv_fp8_e4m3*)p)[i] = __nv_fp8_e4m3((float)((int)(x & 15) - 8));
    }
}
struct Timer {
    cudaEvent_t a, b;
    uint4* buf;
    int64_t cnt;
    uint32_t* sink;
    int reps;
    explicit Timer(int r) : reps(r) {
        CK(cudaEventCreate(&a));
        CK(cudaEventCreate(&b));
        int l2 = 0;
        CK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
        cnt = 2 * (int64_t)l2 / 16;
        CK(cudaMalloc(&buf, cnt * 16));
        CK(cudaMalloc(&sink, 4));
        fill_kernel<<<1024, 256>>>(buf, cnt * 16, 0, 99);
    }
    double median_us(const std::function<void()>& fn) {
        for (int i = 0; i < 3; ++i) fn();
        CK(cudaDeviceSynchronize());
        std::vector<double> t;
        for (int r = 0; r < reps; ++r) {
            flush_kernel<<<264, 512>>>(buf, cnt, sink);
            CK(cudaEventRecord(a));
            fn();
            CK(cudaEventRecord(b));
            CK(cudaEventSynchronize(b));
            float ms = 0;
            CK(cudaEventElapsedTime(&ms, a, b));
            t.push_back(ms * 1e3);
        }
        std::sort(t.begin(), t.end());
        return t[t.size() / 2];
    }
};
// cublasLt "TN": D [N, M] col-major = W [N, K]·x [M, K]ᵀ (FP8 requires TN), heuristic algorithm 0.
struct Lt {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    Lt(cublasLtHandle_t h, cudaDataType_t ab, int m, int n, int k, size_t ws, bool fp8) {
        CKB(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        CKB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
        CKB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
        if (fp8) {
            const int8_t one = 1;
            CKB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &one, sizeof one));
        }
        CKB(cublasLtMatrixLayoutCreate(&la, ab, k, n, k));
        CKB(cublasLtMatrixLayoutCreate(&lb, ab, k, m, k));
        CKB(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, n, m, n));
        cublasLtMatmulPreference_t pref;
        CKB(cublasLtMatmulPreferenceCreate(&pref));
        CKB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
        cublasLtMatmulHeuristicResult_t res{};
        int found = 0;
        CKB(cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, lc, lc, pref, 1, &res, &found));
        if (!found) { std::fprintf(stderr, "no cublasLt algorithm\n"); std::exit(1); }
        algo = res.algo;
        cublasLtMatmulPreferenceDestroy(pref);
    }
    void run(cublasLtHandle_t h, const void* A, const void* B, void* D, void* ws, size_t wsb) const {
        const float f1 = 1.0f, f0 = 0.0f;
        CKB(cublasLtMatmul(h, op, &f1, A, la, B, lb, &f0, D, lc, D, lc, &algo, ws, wsb, nullptr));
    }
};

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // line by line through a pipe: a hang still shows how far it got
    int reps = 30;
    bool do_time = true;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--no-time")) do_time = false;
        else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) {
            std::string l = argv[++i];
            for (size_t p = 0; p != std::string::npos;) {
                const size_t q = l.find(',', p);
                g_only.push_back(l.substr(p, q == std::string::npos ? q : q - p));
                p = q == std::string::npos ? q : q + 1;
            }
        }
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

    // Correctness: awkward shapes (m = 1, 3, 17, 129, 200, 2050; n, k off every tile; k % 16 == 0
    // as TMA needs), extreme codes, spec [m, n], fused spectral (rank 37: 8 lanes + a tail).
    struct Case { int m, n, k, mode, rank; };
    const std::vector<Case> cases = {
        {1, 8, 16, 0, 0},        {3, 40, 144, 0, 0},      {17, 264, 400, 0, 0},   {129, 520, 1040, 0, 0},
        {200, 1000, 2064, 2, 0}, {2050, 776, 1168, 0, 0}, {130, 300, 4096, 1, 0}, {64, 256, 128, 0, 0},
        {300, 600, 272, 0, 37},  {257, 4096, 4096, 0, 0}, {2048, 4096, 4096, 0, 0},
    };
    int64_t total_bad = 0;
    for (const Case& c : cases) {
        Problem p(c.m, c.n, c.k, 1000 + c.m * 7 + c.n, c.mode, c.rank);
        for (const Version& v : kVersions) {
            if (!selected(v.name, false)) continue;
            if (v.name[1] == '9' && c.n % 4 != 0) continue;  // v9: y row stride a multiple of 16 B
            std::printf("run   m=%5d n=%5d k=%5d %s ...\n", c.m, c.n, c.k, v.name);
            const int64_t bad = check(p, v);
            total_bad += bad;
            std::printf("check m=%5d n=%5d k=%5d mode=%d rank=%2d  %-18s %s (%lld bad)\n", c.m, c.n, c.k, c.mode, c.rank,
                        v.name, bad ? "FAIL" : "ok", (long long)bad);
        }
    }
    std::printf("correctness: %s\n", total_bad ? "FAILED" : "all exact");
    if (!do_time) return total_bad ? 1 : 0;

    // Timing at M = 2048, the LLaMA-3-8B shapes; W4A4 y fp32 with scales, zero points, bias.
    cublasLtHandle_t lt;
    CKB(cublasLtCreate(&lt));
    const size_t wsb = 64u << 20;
    void* ws = nullptr;
    CK(cudaMalloc(&ws, wsb));
    Timer timer(reps);
    struct Shape { const char* name; int n, k; };
    const Shape shapes[] = {{"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gu", 28672, 4096}, {"down", 4096, 14336}};
    const int m = 2048;
    std::printf("| shape | kernel | us | TOP/s | %%of 1979 | x BF16 | x FP8 |\n|---|---|---:|---:|---:|---:|---:|\n");
    for (const Shape& sh : shapes) {
        const int n = sh.n, k = sh.k;
        Problem p(m, n, k, 7 + n, 0);
        uint8_t *xb, *wb, *xf, *wf, *yb;
        CK(cudaMalloc(&xb, (size_t)m * k * 2));
        CK(cudaMalloc(&wb, (size_t)n * k * 2));
        CK(cudaMalloc(&xf, (size_t)m * k));
        CK(cudaMalloc(&wf, (size_t)n * k));
        CK(cudaMalloc(&yb, (size_t)m * n * 2));
        fill_kernel<<<1024, 256>>>(xb, (int64_t)m * k, 2, 1);
        fill_kernel<<<1024, 256>>>(wb, (int64_t)n * k, 2, 2);
        fill_kernel<<<1024, 256>>>(xf, (int64_t)m * k, 3, 3);
        fill_kernel<<<1024, 256>>>(wf, (int64_t)n * k, 3, 4);
        W4GemmArgs a = p.a;
        CK(cudaMalloc(&a.y, (size_t)m * n * 4));
        float *sz, *sc;  // spectral factors for the rank-32 rows (values do not change the work)
        CK(cudaMalloc(&sz, (size_t)m * 32 * 4));
        CK(cudaMalloc(&sc, (size_t)n * 32 * 4));
        CK(cudaMemset(sz, 0, (size_t)m * 32 * 4));
        CK(cudaMemset(sc, 0, (size_t)n * 32 * 4));
        const double ops = 2.0 * m * n * k;
        Lt bf(lt, CUDA_R_16BF, m, n, k, wsb, false), f8(lt, CUDA_R_8F_E4M3, m, n, k, wsb, true);
        const double tb = timer.median_us([&] { bf.run(lt, wb, xb, yb, ws, wsb); });
        const double tf = timer.median_us([&] { f8.run(lt, wf, xf, yb, ws, wsb); });
        auto row = [&](const char* name, double us) {
            const double tops = ops / us * 1e-6;
            std::printf("| %s %dx%d | %s | %.1f | %.0f | %.1f%% | %.2f | %.2f |\n", sh.name, n, k, name, us, tops,
                        100.0 * tops / 1979.0, tb / us, tf / us);
        };
        row("cuBLAS BF16", tb);
        row("cuBLAS FP8", tf);
        for (const Version& v : kVersions) {
            if (!selected(v.name, true)) continue;  // others: logs of the earlier runs
            const int64_t bad = check(p, v);
            total_bad += bad;
            row(v.name, timer.median_us([&] { v.fn(a, 0); }));
            W4GemmArgs none = a;  // no outputs: the main loop alone (the epilogue's share)
            none.y = nullptr;
            row((std::string(v.name) + " no-out").c_str(), timer.median_us([&] { v.fn(none, 0); }));
            if (false) {  // fused spectral epilogue, rank 32 (run 4: 20x slower; not the engine's prefill path)
                W4GemmArgs f = a;
                f.spec_z = sz, f.spec_c = sc, f.spec_rank = 32;
                row((std::string(v.name) + " rank32").c_str(), timer.median_us([&] { v.fn(f, 0); }));
            }
            if (bad) std::printf("  ^ %s: %lld outputs differ from the reference\n", v.name, (long long)bad);
        }
        cudaFree(xb), cudaFree(wb), cudaFree(xf), cudaFree(wf), cudaFree(yb), cudaFree(a.y), cudaFree(sz), cudaFree(sc);
    }
    std::printf("correctness incl. timing shapes: %s\n", total_bad ? "FAILED" : "all exact");
    return total_bad ? 1 : 0;
}
