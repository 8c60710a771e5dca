// wgmma W4A4 prefill GEMM (sm_90a). Operands, layout and epilogue: w4a4_gemm.h;
// design and the measured versions: w4a4_wgmma.h, docs/kernels-cuda-notes.md
// "wgmma prefill GEMM"; sandbox with the numbered versions: dev/cuda/w4a4_wgmma.cu.
// Build: cmake -DSPECQUANT_CUDA=ON; tests: tests/test_cuda_w4a4_gemm.cpp
// (CudaW4A4Gemm.Wgmma*); benchmark: bench/bench_cuda_gemm.cu.
#include "kernels/cuda/w4a4_wgmma.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/env.h"
#include "core/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/w4a4_spec_dot.cuh"
#include "kernels/cuda/wgmma_ptx.cuh"

namespace sq::cuda {

namespace {

using namespace wgmma_ptx;  // kernels/cuda/wgmma_ptx.cuh

// ---- v7's kernel (sandbox v7): now only for the fused spectral rank --------------------
//
// CTA: 3 warpgroups. WG 0 = producer: one thread issues, per k step of 128, a TMA copy
// of the X tile (BN = 128 tokens × 128 B, 128-byte swizzle: the layout the B descriptor
// names) and one of the W tile (BM/8 = 32 layout blocks × 512 B, verbatim) into stage
// kb mod 6, completing on full[stage]; it waits on empty[stage] before reusing it.
// WG 1, 2 = consumers: 2 m64 tiles (128 channels) × 128 tokens each, accumulators
// 2 × 64 registers per thread. Per stage a warp reads its 16 channels' layout words
// (4 LDS.128, 512 contiguous bytes per warp: conflict-free), widens them (the A
// fragment of m64nNk32 per warp is m16n8k32's: registers 0, 2 from rows 0..7 and
// 1, 3 from rows 8..15), issues 8 wgmma.m64n128k32 (4 k32 steps × 2 tiles), loads the
// next stage's words while they run, waits for them (wait_group 0: the other consumer
// warpgroup keeps the tensor cores busy meanwhile) and releases the stage.
// Shared memory: 6 stages × 32 KB + barriers = 193 KB: one CTA per SM, 384 threads;
// setmaxnreg gives the consumers 232 registers, the producer 40.
// Why this tile (sandbox, M = 2048): 256 × 128 and 128 × 256 run the main loop alike
// (1375 vs 1345 TOP/s at o), 256 × 128 has the cheaper epilogue (62.8 vs 76.1 us at o).
constexpr int kBN = 128, kMT = 2, kBM = 128 * kMT, kStages = 6, kThreads = 384;
constexpr int kXBytes = kBN * 128, kWBytes = kBM / 8 * 512, kStage = kXBytes + kWBytes;
constexpr int kLD = kBM + 4;  // epilogue tile row (int32 words)
constexpr int kSmem = kStages * kStage + 1024 + 2 * kStages * 8;
static_assert(kStage % 1024 == 0, "stages keep the 1024-byte swizzle-atom alignment");
static_assert(kSmem <= 227 * 1024, "shared memory");
static_assert(kBN * kLD * 4 + kBN * 8 <= kStages * kStage, "epilogue tile fits in the stages");

// Epilogue through shared memory (v5, v7): both consumer warpgroups write their exact
// accumulators into an int32 tile [128 tokens][BM + 4] over the idle stages (+4 words per
// row: a warp's 4 token rows 2 apart land 8 banks apart, no conflict) and the tokens'
// act_scale / act_zero beside it; then each thread owns 4 consecutive channels (scale,
// rowsum, bias read once) and walks the rows with 16-byte stores. Same float operations
// in the same order as the tiled kernel's epi_value (w4a4_gemm.h). Writing from the
// accumulator fragments directly (v1: 4 rows × 32 B per store, token scales per row
// from L2) cost 2.5× the whole kernel at o (176.6 vs 68.2 us).
__device__ __forceinline__ void epilogue(const W4GemmArgs& a, int (&acc)[kMT][kBN / 2], uint8_t* smem, int m0, int c0,
                                         int cw, int warp, int lane, int ct) {
    int* tile = reinterpret_cast<int*>(smem);
    float* tsc = reinterpret_cast<float*>(tile + kBN * kLD);
    int* tze = reinterpret_cast<int*>(tsc + kBN);
    asm volatile("bar.sync 1, 256;\n" ::: "memory");  // the other warpgroup's wgmmas are done with the stages
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int i = 0; i < kBN / 8; ++i)
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int r = 8 * i + 2 * t + e, c = (cw * kMT + mt) * 64 + warp * 16 + h * 8 + g;
                    tile[r * kLD + c] = acc[mt][4 * i + 2 * h + e] >> 4;  // 16·acc → acc, exact
                }
    if (a.y && ct < kBN && m0 + ct < a.m) tsc[ct] = a.act_scale[m0 + ct], tze[ct] = a.act_zero[m0 + ct];
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    constexpr int kGroups = kBM / 4, kRows = 256 / kGroups;
    const int cg = ct % kGroups, r0 = ct / kGroups, ch0 = c0 + 4 * cg;
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
    // 16-byte accesses for 4 whole outputs in range on 16-byte aligned rows (n % 4 == 0, aligned bases)
    const bool vec = ch0 + 3 < a.n && a.n % 4 == 0;
    const bool vacc = vec && ((uintptr_t)a.acc & 15) == 0, vy = vec && ((uintptr_t)a.y & 15) == 0;
    const bool vspec = vec && ((uintptr_t)a.spec & 15) == 0;
#pragma unroll 4
    for (int r = r0; r < kBN; r += kRows) {
        const int tok = m0 + r;
        if (tok >= a.m) break;
        const int4 v = *reinterpret_cast<const int4*>(tile + r * kLD + 4 * cg);
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
            float sp[4] = {0, 0, 0, 0};  // the engine's prefill passes spec [m, n]: one 16-byte load per 4 outputs
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
                float f = epi_base(st, ws[j], vv[j], zt, rs[j]);
                if (a.spec) f = __fadd_rn(f, sp[j]);
                else if (a.spec_rank > 0 && ch0 + j < a.n)
                    f = __fadd_rn(f, spec_dot(a.spec_z + (int64_t)tok * a.spec_rank,
                                              a.spec_c + (int64_t)(ch0 + j) * a.spec_rank, a.spec_rank));
                if (a.bias) f = __fadd_rn(f, bs[j]);
                y[j] = f;
            }
            if (vy) *reinterpret_cast<float4*>(a.y + idx) = make_float4(y[0], y[1], y[2], y[3]);
            else
                for (int j = 0; j < 4 && ch0 + j < a.n; ++j) a.y[idx + j] = y[j];
        }
    }
}

__global__ void __launch_bounds__(kThreads, 1)
    wgmma_kernel(const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tw, const W4GemmArgs a) {
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);  // swizzle atoms: 1024-aligned
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kStage);
    uint64_t* empty = full + kStages;
    const int wgi = threadIdx.x / 128, tid = threadIdx.x % 128;
    const int m0 = blockIdx.x * kBN, c0 = blockIdx.y * kBM;  // tokens fastest: a wave shares X in L2
    const int KB = (a.k + 127) / 128;
    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; ++s) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], 8);  // one arrive per consumer warp
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (wgi == 0) {  // producer
        setmaxnreg_dec<40>();
        if (tid == 0) {
            for (int kb = 0; kb < KB; ++kb) {
                const int s = kb % kStages;
                if (kb >= kStages) mbar_wait(&empty[s], ((kb / kStages) - 1) & 1);
                uint8_t* st = smem + s * kStage;
                mbar_expect_tx(&full[s], kStage);  // OOB parts of a box are zero-filled and counted
                tma_2d(st, &tx, kb * 128, m0, &full[s]);
                tma_3d(st + kXBytes, &tw, 0, kb, c0 / 8, &full[s]);
            }
        }
        return;
    }
    setmaxnreg_inc<232>();
    const int cw = wgi - 1, warp = tid / 32, lane = tid % 32;
    int acc[kMT][kBN / 2];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int i = 0; i < kBN / 2; ++i) acc[mt][i] = 0;

    uint4 raw[kMT][2];  // this warp's layout words: blocks (cw·MT + mt)·8 + 2·warp + h of the W tile
    auto load_raw = [&](int s) {
        const uint8_t* wt = smem + s * kStage + kXBytes;
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
                raw[mt][h] = *reinterpret_cast<const uint4*>(wt + ((cw * kMT + mt) * 8 + warp * 2 + h) * 512 + lane * 16);
    };
    mbar_wait(&full[0], 0);
    load_raw(0);
    uint32_t af[kMT][4][4];
    for (int kb = 0; kb < KB; ++kb) {
        const int s = kb % kStages;
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
                const uint32_t w0 = word_of(raw[mt][0], ks), w1 = word_of(raw[mt][1], ks);
                af[mt][ks][0] = w4_lo16(w0);
                af[mt][ks][1] = w4_lo16(w1);
                af[mt][ks][2] = w4_hi16(w0);
                af[mt][ks][3] = w4_hi16(w1);
            }
        // Every input register of the stage's wgmmas is written before the fence (the empty asm
        // statements pin them there): otherwise ptxas inserted a warpgroup.arrive before each wgmma.
        uint64_t dk[4];
        const uint64_t d0 = desc_sw128(smem + s * kStage);
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
            dk[ks] = d0 + 2 * ks;  // k32 step: +32 B inside the 128-byte swizzled row
            asm volatile("" : "+l"(dk[ks]));
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt)
                asm volatile("" : "+r"(af[mt][ks][0]), "+r"(af[mt][ks][1]), "+r"(af[mt][ks][2]), "+r"(af[mt][ks][3]));
        }
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) wgmma_n128(acc[mt], af[mt][ks], dk[ks], 1);
        wgmma_commit();
        if (kb + 1 < KB) {  // the next stage's weights while this stage's wgmmas run
            const int s1 = (kb + 1) % kStages;
            mbar_wait(&full[s1], ((kb + 1) / kStages) & 1);
            load_raw(s1);
        }
        wgmma_wait<0>();
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty[s]);
    }
    epilogue(a, acc, smem, m0, c0, cw, warp, lane, tid + 128 * cw);
}

// ---- the persistent kernel (sandbox v12): y / acc without the fused spectral rank --------
//
// v7's main loop and tile (256 channels × 128 tokens, both consumer warpgroups on one tile,
// the X tile shared), but one CTA per SM walks tiles blockIdx.x, + gridDim.x, … (tokens
// fastest) and the stage ring runs on across tiles, so the producer prefetches the next
// tile while this one finishes. The epilogue no longer stops the tensor cores (v7: 13 of
// o's 62 µs, 90 of gu's 410 at M = 2048): after its main loop a consumer thread hands its
// exact accumulators (>> 4) to warps 1..3 of warpgroup 0 (idle in v7 apart from the one
// TMA thread) through an int32 buffer of the whole 128 × 256 tile, unpadded, channel XOR
// 8·((row >> 1) & 3) (fragment stores and 16-byte row reads both conflict-free), and starts
// the next tile at once (the buffer is free again long before: the epilogue of one tile
// takes a fraction of the next one's main loop); those 96 threads compute y with v7's
// float operations in v7's order and store it under the next main loop. Shared memory:
// 3 stages × 32 KB + the 128 KB buffer + 1 KB token constants. Sandbox, same run (M = 2048,
// µs): 3 stages + whole-tile buffer (v12c) qkv 85.9, o 61.2, gu 348.1, down 160.0 against
// 5 stages + 64-token buffer, the consumers waiting for the first half's epilogue (v12)
// 92.7, 64.8, 390.7, 158.2, and v7 96.2, 65.5, 434.2, 163.6; three stages cost the main
// loop nothing ("no-out" 75.5 / 52.8 / 311.6 / 151.2 vs v7's 76.9 / 52.7 / 341.4 / 150.7).
// Hand-offs: mbarriers bfull (256 consumer arrivals) and bfree (96 epilogue arrivals),
// strictly alternating, so one parity bit each is unambiguous.
// Registers: consumers 216, warpgroup 0 72 (setmaxnreg): the increase draws only on what
// this CTA's decrease released (168 each at launch), 256·(216 − 168) = 128·(168 − 72);
// 224 / 64 waited forever in the sandbox (14336 asked, 13312 released), 224 / 56 spilled.
constexpr int kPStages = 3, kPHR = 128, kPEWarps = 3;
constexpr int kPOffBuf = kPStages * kStage, kPOffTok = kPOffBuf + kPHR * kBM * 4, kPOffBar = kPOffTok + kBN * 8;
constexpr int kPSmem = kPOffBar + (2 * kPStages + 2) * 8 + 1024;  // + 1024: base alignment

// Split-K (round 3): unit u of tiles × nsplit is tile u % ntiles, split u / ntiles, k steps
// [split_lo(sp), split_lo(sp + 1)).
__host__ __device__ inline int split_lo(int kb, int sp, int nsplit) { return (int)((int64_t)kb * sp / nsplit); }
static_assert(kPSmem <= 227 * 1024, "shared memory");
static_assert(kBN % kPHR == 0 && kPHR % 8 == 0, "hand-off rows");

// nsplit > 1 (split-K, round 3): a unit's epilogue warps store its exact partial tile to
// plane sp of a.ws ([nsplit][m][n]); splitk_epilogue_kernel then adds the planes and writes y / acc.
__global__ void __launch_bounds__(kThreads, 1)
    persist_kernel(const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tw, const W4GemmArgs a,
                   int nsplit) {
    constexpr int S = kPStages, HR = kPHR;
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    int* buf = reinterpret_cast<int*>(smem + kPOffBuf);
    float* tsc = reinterpret_cast<float*>(smem + kPOffTok);
    int* tze = reinterpret_cast<int*>(tsc + kBN);
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + kPOffBar);
    uint64_t* empty = full + S;
    uint64_t* bfull = empty + S;
    uint64_t* bfree = bfull + 1;
    const int wgi = threadIdx.x / 128, tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
    const int KB = (a.k + 127) / 128;
    const int mtiles = (a.m + kBN - 1) / kBN, ntiles = mtiles * ((a.n + kBM - 1) / kBM), units = ntiles * nsplit;
    if (threadIdx.x == 0) {
        for (int s = 0; s < S; ++s) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], 8);  // one arrive per consumer warp
        }
        mbar_init(bfull, 256);
        mbar_init(bfree, 32 * kPEWarps);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (wgi == 0) {
        setmaxnreg_dec<72>();
        if (warp == 0) {  // producer: one thread; the ring runs on across tiles
            if (lane == 0) {
                int cnt = 0;
                for (int u = blockIdx.x; u < units; u += gridDim.x) {
                    const int tile = u % ntiles, sp = u / ntiles;
                    const int m0 = (tile % mtiles) * kBN, c0 = (tile / mtiles) * kBM;
                    const int kb1 = split_lo(KB, sp + 1, nsplit);
                    for (int kb = split_lo(KB, sp, nsplit); kb < kb1; ++kb, ++cnt) {
                        const int s = cnt % S;
                        if (cnt >= S) mbar_wait(&empty[s], ((cnt / S) - 1) & 1);
                        uint8_t* st = smem + s * kStage;
                        mbar_expect_tx(&full[s], kStage);  // OOB parts of a box are zero-filled and counted
                        tma_2d(st, &tx, kb * 128, m0, &full[s]);
                        tma_3d(st + kXBytes, &tw, 0, kb, c0 / 8, &full[s]);
                    }
                }
            }
            return;
        }
        // Epilogue warps 1..3: the tile's token constants in shared memory; per hand-off and
        // 128-channel half, the lane's 4 channels' constants in registers (both halves at once
        // spilled), then rows ew, ew + 3, … of the hand-off. pass(mode, h): 0 = y / acc from the
        // buffer, 1 = the buffer's partial to plane sp of the workspace (split-K).
        const int ew = warp - 1, et = tid - 32;
        int32_t* part = a.ws;  // split-K partials [nsplit][m][n]
        const int64_t plane = (int64_t)a.m * a.n;
        int hand = 0;
        for (int u = blockIdx.x; u < units; u += gridDim.x) {
            const int tile = u % ntiles, sp = u / ntiles;
            const int m0 = (tile % mtiles) * kBN, c0 = (tile / mtiles) * kBM;
            if (a.y && nsplit == 1)
                for (int r = et; r < kBN; r += 32 * kPEWarps)
                    if (m0 + r < a.m) tsc[r] = a.act_scale[m0 + r], tze[r] = a.act_zero[m0 + r];
            asm volatile("bar.sync 2, 96;\n" ::: "memory");
            auto pass = [&](int mode, int h) {
                for (int hc = 0; hc < 2; ++hc) {
                    const int cl = hc * 128 + 4 * lane, ch0 = c0 + cl;
                    if (ch0 >= a.n) continue;
                    float ws[4], bs[4];
                    int rs[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const bool in = mode != 1 && a.y && ch0 + j < a.n;
                        ws[j] = in ? a.w_scale[ch0 + j] : 0.0f;
                        rs[j] = in ? a.w_rowsum[ch0 + j] : 0;
                        bs[j] = in && a.bias ? a.bias[ch0 + j] : 0.0f;
                    }
                    // 16-byte accesses for 4 whole outputs in range on 16-byte aligned rows
                    const bool vec = ch0 + 3 < a.n && a.n % 4 == 0;
                    const bool vacc = vec && ((uintptr_t)a.acc & 15) == 0, vy = vec && ((uintptr_t)a.y & 15) == 0;
                    const bool vspec = vec && ((uintptr_t)a.spec & 15) == 0, vws = vec && ((uintptr_t)part & 15) == 0;
#pragma unroll 2
                    for (int rl = ew; rl < HR; rl += kPEWarps) {
                        const int r = h * HR + rl, tok = m0 + r;
                        if (tok >= a.m) break;
                        const int64_t idx = (int64_t)tok * a.n + ch0;
                        const int4 v = *reinterpret_cast<const int4*>(buf + rl * kBM + (cl ^ (((rl >> 1) & 3) << 3)));
                        const int vv[4] = {v.x, v.y, v.z, v.w};
                        if (mode == 1) {
                            int32_t* pp = part + sp * plane + idx;
                            if (vws) __stcg(reinterpret_cast<int4*>(pp), make_int4(vv[0], vv[1], vv[2], vv[3]));
                            else
                                for (int j = 0; j < 4 && ch0 + j < a.n; ++j) __stcg(pp + j, vv[j]);
                            continue;
                        }
                        if (a.acc) {
                            if (vacc) *reinterpret_cast<int4*>(a.acc + idx) = make_int4(vv[0], vv[1], vv[2], vv[3]);
                            else
                                for (int j = 0; j < 4 && ch0 + j < a.n; ++j) a.acc[idx + j] = vv[j];
                        }
                        if (a.y) {
                            const float st = tsc[r];
                            const int zt = tze[r];
                            float sp4[4] = {0, 0, 0, 0};  // spec [m, n] (the engine's prefill); no fused rank here
                            if (a.spec) {
                                if (vspec) {
                                    const float4 v4 = *reinterpret_cast<const float4*>(a.spec + idx);
                                    sp4[0] = v4.x, sp4[1] = v4.y, sp4[2] = v4.z, sp4[3] = v4.w;
                                } else
                                    for (int j = 0; j < 4 && ch0 + j < a.n; ++j) sp4[j] = a.spec[idx + j];
                            }
                            float y[4];
#pragma unroll
                            for (int j = 0; j < 4; ++j) {  // epi_value's operations, in its order
                                float f = epi_base(st, ws[j], vv[j], zt, rs[j]);
                                if (a.spec) f = __fadd_rn(f, sp4[j]);
                                if (a.bias) f = __fadd_rn(f, bs[j]);
                                y[j] = f;
                            }
                            if (vy) *reinterpret_cast<float4*>(a.y + idx) = make_float4(y[0], y[1], y[2], y[3]);
                            else
                                for (int j = 0; j < 4 && ch0 + j < a.n; ++j) a.y[idx + j] = y[j];
                        }
                    }
                }
            };
            for (int h = 0; h < kBN / HR; ++h, ++hand) {
                mbar_wait(bfull, hand & 1);
                pass(nsplit > 1 ? 1 : 0, h);
                mbar_arrive(bfree);
            }
            asm volatile("bar.sync 2, 96;\n" ::: "memory");  // token constants read before the next unit's
        }
        return;
    }

    setmaxnreg_inc<216>();
    const int cw = wgi - 1, g = lane / 4, t = lane % 4;
    int acc[kMT][kBN / 2];
    uint4 raw[kMT][2];  // this warp's layout words: blocks (cw·MT + mt)·8 + 2·warp + h of the W tile
    auto load_raw = [&](int s) {
        const uint8_t* wt = smem + s * kStage + kXBytes;
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
                raw[mt][h] = *reinterpret_cast<const uint4*>(wt + ((cw * kMT + mt) * 8 + warp * 2 + h) * 512 + lane * 16);
    };
    int cnt = 0, hand = 0;
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
        const int sp = u / ntiles, kb0 = split_lo(KB, sp, nsplit), kb1 = split_lo(KB, sp + 1, nsplit);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
            for (int i = 0; i < kBN / 2; ++i) acc[mt][i] = 0;
        mbar_wait(&full[cnt % S], (cnt / S) & 1);
        load_raw(cnt % S);
        uint32_t af[kMT][4][4];
        for (int kb = kb0; kb < kb1; ++kb, ++cnt) {
            const int s = cnt % S;
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
                for (int ks = 0; ks < 4; ++ks) {
                    const uint32_t w0 = word_of(raw[mt][0], ks), w1 = word_of(raw[mt][1], ks);
                    af[mt][ks][0] = w4_lo16(w0);
                    af[mt][ks][1] = w4_lo16(w1);
                    af[mt][ks][2] = w4_hi16(w0);
                    af[mt][ks][3] = w4_hi16(w1);
                }
            // Every input register of the stage's wgmmas is written before the fence (see wgmma_kernel).
            uint64_t dk[4];
            const uint64_t d0 = desc_sw128(smem + s * kStage);
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
                dk[ks] = d0 + 2 * ks;
                asm volatile("" : "+l"(dk[ks]));
#pragma unroll
                for (int mt = 0; mt < kMT; ++mt)
                    asm volatile("" : "+r"(af[mt][ks][0]), "+r"(af[mt][ks][1]), "+r"(af[mt][ks][2]), "+r"(af[mt][ks][3]));
            }
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < 4; ++ks)
#pragma unroll
                for (int mt = 0; mt < kMT; ++mt) wgmma_n128(acc[mt], af[mt][ks], dk[ks], 1);
            wgmma_commit();
            if (kb + 1 < kb1) {  // the next stage's weights while this stage's wgmmas run
                const int c1 = cnt + 1;
                mbar_wait(&full[c1 % S], (c1 / S) & 1);
                load_raw(c1 % S);
            }
            wgmma_wait<0>();
            __syncwarp();
            if (lane == 0) mbar_arrive(&empty[s]);
        }
        // Hand-off: HR rows at a time, once the epilogue warps are done with the buffer.
#pragma unroll
        for (int h = 0; h < kBN / HR; ++h, ++hand) {
            if (hand > 0) mbar_wait(bfree, (hand - 1) & 1);
#pragma unroll
            for (int i = h * HR / 8; i < (h + 1) * HR / 8; ++i)
#pragma unroll
                for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
                    for (int hh = 0; hh < 2; ++hh)
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const int rl = 8 * i - h * HR + 2 * t + e, c = (cw * kMT + mt) * 64 + warp * 16 + hh * 8 + g;
                            buf[rl * kBM + (c ^ (((rl >> 1) & 3) << 3))] = acc[mt][4 * i + 2 * hh + e] >> 4;  // exact
                        }
            mbar_arrive(bfull);
        }
    }
}

// Split-K's second kernel: acc = the sum of the nsplit int32 planes (exact), then y with
// epi_value's operations in its order; a thread per 4 consecutive outputs of a row.
__global__ void __launch_bounds__(256) splitk_epilogue_kernel(const W4GemmArgs a, int nsplit) {
    const int64_t groups = (a.n + 3) / 4, e = (int64_t)blockIdx.x * 256 + threadIdx.x;
    pdl_wait();  // the partials
    if (e >= (int64_t)a.m * groups) return;
    const int tok = (int)(e / groups), ch0 = (int)(e % groups) * 4, cnt = min(4, a.n - ch0);
    const int64_t idx = (int64_t)tok * a.n + ch0, plane = (int64_t)a.m * a.n;
    const bool vec = cnt == 4 && a.n % 4 == 0;  // 16-byte aligned rows of the planes (ws is)
    int v[4] = {0, 0, 0, 0};
    if (vec) {
        int4 p[16];
#pragma unroll
        for (int q = 0; q < 16; ++q)  // every plane's load in flight before the sum
            if (q < nsplit) p[q] = __ldcg(reinterpret_cast<const int4*>(a.ws + q * plane + idx));
#pragma unroll
        for (int q = 0; q < 16; ++q)
            if (q < nsplit) v[0] += p[q].x, v[1] += p[q].y, v[2] += p[q].z, v[3] += p[q].w;
    } else {
        for (int q = 0; q < nsplit; ++q)
            for (int j = 0; j < cnt; ++j) v[j] += __ldcg(a.ws + q * plane + idx + j);
    }
    if (a.acc)
        for (int j = 0; j < cnt; ++j) a.acc[idx + j] = v[j];
    if (a.y) {
        const float st = a.act_scale[tok];
        const int zt = a.act_zero[tok];
        for (int j = 0; j < cnt; ++j) {
            float f = epi_base(st, a.w_scale[ch0 + j], v[j], zt, a.w_rowsum[ch0 + j]);
            if (a.spec) f = __fadd_rn(f, a.spec[idx + j]);
            if (a.bias) f = __fadd_rn(f, a.bias[ch0 + j]);
            a.y[idx + j] = f;
        }
    }
}

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
    static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
        void* p = nullptr;
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
        SQ_CUDA(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
#else
        SQ_CUDA(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &p, cudaEnableDefault, &q));
#endif
        SQ_CHECK(q == cudaDriverEntryPointSuccess && p,
                 "w4a4_gemm_wgmma: the driver has no cuTensorMapEncodeTiled (TMA needs CUDA 12 and sm_90)");
        return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
    }();
    return fn;
}

}  // namespace

// The persistent kernel's k splits: a.split_k, or (with a workspace) as many as keep one wave of
// units (tiles × splits ≤ SMs), at least 2 k steps each, at most 16 (SQ_CUDA_WGMMA_SPLIT); 1 when
// the tiles fill more than half the SMs.
int wgmma_splits(const W4GemmArgs& a, int64_t tiles, int KB, int sms) {
    const auto fits = [&](int ns) { return a.ws && (int64_t)ns * a.m * a.n <= a.ws_ints; };
    if (a.split_k > 0) {
        const int ns = std::min({a.split_k, KB, 16});
        SQ_CHECK(ns == 1 || fits(ns), "w4a4_gemm_wgmma: split_k = ", ns, " needs a workspace of ",
                 (int64_t)ns * a.m * a.n, " ints (", a.ws_ints, " given)");
        return ns;
    }
    static const int env = env_int("SQ_CUDA_WGMMA_SPLIT", 16, 1, 16);  // at most N splits (A/B; 1 = never)
    if (!a.ws || tiles * 2 > sms) return 1;
    int ns = (int)std::min<int64_t>({sms / tiles, KB / 2, env});
    while (ns > 1 && !fits(ns)) --ns;
    return std::max(ns, 1);
}

bool w4a4_wgmma_fits(int m, int k, const uint8_t* q) {
    (void)m;
    return k % 16 == 0 && ((uintptr_t)q & 15) == 0;
}

void w4a4_gemm_wgmma(const W4GemmArgs& a, cudaStream_t s) {
    w4g_check_args(a, "w4a4_gemm_wgmma");
    SQ_CHECK(w4a4_wgmma_fits(a.m, a.k, a.q), "w4a4_gemm_wgmma: k = ", a.k,
             " must be a multiple of 16 and the activations 16-byte aligned (TMA row stride); use w4a4_gemm");
    if (a.m == 0 || a.n == 0 || (!a.acc && !a.y)) return;
    const int KB = (a.k + 127) / 128;
    // X: codes [m, k] bytes, boxes of 128 k × 128 tokens, 128-byte swizzle; rows ≥ m and
    // columns ≥ k read as zeros (the k tail: zero codes meet the layout's zero pad).
    CUtensorMap tx, tw;
    {
        const cuuint64_t dims[2] = {(cuuint64_t)a.k, (cuuint64_t)a.m}, strides[1] = {(cuuint64_t)a.k};
        const cuuint32_t box[2] = {128, (cuuint32_t)kBN}, es[2] = {1, 1};
        const CUresult r = encode_fn()(&tx, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<uint8_t*>(a.q), dims, strides,
                                       box, es, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                       CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        SQ_CHECK(r == CUDA_SUCCESS, "w4a4_gemm_wgmma: activation tensor map (m=", a.m, " k=", a.k, "): error ", (int)r);
    }
    // W: the CUDA layout as words [n_pad/8 blocks][KB][128 words]; a box = one k step of
    // BM/8 consecutive layout blocks (16 KB); blocks past n_pad read as zeros.
    {
        const cuuint64_t dims[3] = {128, (cuuint64_t)KB, (cuuint64_t)(w4g_n_pad(a.n) / W4G_NB)};
        const cuuint64_t strides[2] = {512, (cuuint64_t)KB * 512};
        const cuuint32_t box[3] = {128, 1, (cuuint32_t)(kBM / W4G_NB)}, es[3] = {1, 1, 1};
        const CUresult r = encode_fn()(&tw, CU_TENSOR_MAP_DATA_TYPE_UINT32, 3, const_cast<uint8_t*>(a.w), dims, strides,
                                       box, es, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                                       CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        SQ_CHECK(r == CUDA_SUCCESS, "w4a4_gemm_wgmma: weight tensor map (n=", a.n, " k=", a.k, "): error ", (int)r);
    }
    // The fused spectral rank (spec null, spec_rank > 0; not the engine's prefill path) stays on
    // v7's kernel; everything else runs persistent, one CTA per SM.
    // Attributes set on every call (cheap): they are per device, and a second device must work too.
    if (a.y && !a.spec && a.spec_rank > 0) {
        SQ_CUDA(cudaFuncSetAttribute(wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
        const dim3 grid((unsigned)((a.m + kBN - 1) / kBN), (unsigned)((a.n + kBM - 1) / kBM));
        wgmma_kernel<<<grid, kThreads, kSmem, s>>>(tx, tw, a);
    } else {
        SQ_CUDA(cudaFuncSetAttribute(persist_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kPSmem));
        const int sms = device_sms();
        const int64_t tiles = (int64_t)((a.m + kBN - 1) / kBN) * ((a.n + kBM - 1) / kBM);
        const int nsplit = wgmma_splits(a, tiles, KB, sms);
        persist_kernel<<<(unsigned)std::min<int64_t>(tiles * nsplit, sms), kThreads, kPSmem, s>>>(tx, tw, a, nsplit);
        SQ_CUDA_LAUNCH("w4a4_gemm_wgmma");
        if (nsplit > 1) {
            const int64_t threads = (int64_t)a.m * ((a.n + 3) / 4);
            launch_pdl("w4a4_splitk_epilogue", splitk_epilogue_kernel, dim3((unsigned)((threads + 255) / 256)),
                       dim3(256), 0, s, a, nsplit);
        }
        return;
    }
    SQ_CUDA_LAUNCH("w4a4_gemm_wgmma");
}

// nsplit · m · n ≤ nsplit · tiles · 128 · 256 ≤ SMs · 128 · 256 (wgmma_splits keeps one wave of units).
int64_t w4a4_wgmma_ws_ints() { return (int64_t)device_sms() * kBN * kBM; }

}  // namespace sq::cuda
