// The W4A4 tensor-core GEMM / GEMV (src/kernels/cuda/w4a4_gemm.*, w4a4_wgmma.*) against the
// scalar reference: int32 accumulators exactly, the fused epilogue within
// float rounding (it uses the reference's operations in its order, so it is
// in fact bit-identical; the bar is 2^-22 relative). Awkward shapes on
// purpose (m = 1, 2, 3, 7, 16, 17, 64, 129, 2050; n, k off every tile size,
// odd k), random codes, outputs poisoned (0xFF) before every launch.
// Compiled only with -DSPECQUANT_CUDA=ON; every test skips without a GPU.
// Run: build-gpu-gemm/specquant_tests --gtest_filter='CudaW4A4Gemm*'
#ifdef SPECQUANT_HAS_CUDA
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "core/error.h"
#include "kernels/cuda/w4a4_gemm.h"
#include "kernels/cuda/w4a4_wgmma.h"
#include "kernels/ref/w4a4_ref.h"
#include "kernels/w4a4_format.h"
#include "test_cuda_util.h"
#include "test_random.h"

using namespace sq;

namespace {


// One random layer and input: codes in [-8, 7] (or all −8 / all 15 for the
// extreme-value case), activation codes in [0, 2^bits − 1], scales, zero points.
struct Problem {
    int m, n, k;
    std::vector<uint8_t> codes, q;
    std::vector<float> act_scale, w_scale, spec, bias;
    std::vector<int32_t> act_zero, rowsum;
    Problem(int m_, int n_, int k_, std::mt19937& rng, bool extreme = false, int bits = 4) : m(m_), n(n_), k(k_) {
        const int64_t rb = w4_row_bytes(k);
        codes.assign((size_t)n * rb, 0);
        rowsum.assign(n, 0);
        std::uniform_int_distribution<int> wd(W4_MIN, W4_MAX), qd(0, (1 << bits) - 1), zd(0, (1 << bits) - 1);
        for (int j = 0; j < n; ++j)
            for (int i = 0; i < k; ++i) {
                const int c = extreme ? W4_MIN : wd(rng);
                uint8_t& b = codes[(size_t)j * rb + i / 2];
                b = (uint8_t)(i & 1 ? (b & 0x0F) | ((c & 0xF) << 4) : (b & 0xF0) | (c & 0xF));
                rowsum[j] += c;
            }
        q.resize((size_t)m * k);
        for (auto& v : q) v = (uint8_t)(extreme ? (1 << bits) - 1 : qd(rng));
        std::uniform_real_distribution<float> sd(0.001f, 0.1f);
        act_scale.resize(m);
        act_zero.resize(m);
        for (int t = 0; t < m; ++t) {
            act_scale[t] = sd(rng);
            act_zero[t] = zd(rng);
        }
        w_scale.resize(n);
        for (auto& v : w_scale) v = sd(rng);
        spec = gaussian((size_t)m * n, rng);
        bias = gaussian((size_t)n, rng);
    }
};

using Launch = std::function<void(const cuda::W4GemmArgs&, cudaStream_t)>;

// Runs `launch` on p (acc and y together, then each alone) and checks against the reference.
// q_off: the activation rows start that many bytes past an aligned allocation.
void check(const Problem& p, const Launch& launch, const char* what, bool with_spec_bias = true, int q_off = 0) {
    SCOPED_TRACE(str(what, " m=", p.m, " n=", p.n, " k=", p.k, " q_off=", q_off));
    std::vector<int32_t> acc_ref((size_t)p.m * p.n);
    gemm_w4a4_acc_ref(p.q.data(), p.m, p.k, p.codes.data(), p.n, acc_ref.data());
    std::vector<float> y_ref((size_t)p.m * p.n);
    w4a4_epilogue_ref(acc_ref.data(), p.m, p.n, p.act_scale.data(), p.act_zero.data(), p.w_scale.data(),
                      p.rowsum.data(), y_ref.data());
    if (with_spec_bias)
        for (int t = 0; t < p.m; ++t)
            for (int j = 0; j < p.n; ++j) {
                float& v = y_ref[(size_t)t * p.n + j];
                v = v + p.spec[(size_t)t * p.n + j];
                v = v + p.bias[j];
            }

    std::vector<uint8_t> packed((size_t)cuda::w4g_bytes(p.n, p.k));
    cuda::w4g_repack(p.codes.data(), p.n, p.k, packed.data());
    std::vector<uint8_t> qh((size_t)q_off, 0xEE);
    qh.insert(qh.end(), p.q.begin(), p.q.end());
    DevBuf<uint8_t> dq(qh), dw(packed);
    DevBuf<float> ds(p.act_scale), dws(p.w_scale), dspec(p.spec), dbias(p.bias), dy((size_t)p.m * p.n);
    DevBuf<int32_t> dz(p.act_zero), drs(p.rowsum), dacc((size_t)p.m * p.n);
    for (int mode = 0; mode < 3; ++mode) {  // 0: acc + y, 1: acc only, 2: y only
        dacc.poison();
        dy.poison();
        cuda::W4GemmArgs a;
        a.q = dq.p + q_off;
        a.m = p.m;
        a.k = p.k;
        a.n = p.n;
        a.w = dw.p;
        a.act_scale = ds.p;
        a.act_zero = dz.p;
        a.w_scale = dws.p;
        a.w_rowsum = drs.p;
        a.spec = with_spec_bias ? dspec.p : nullptr;
        a.bias = with_spec_bias ? dbias.p : nullptr;
        a.acc = mode == 2 ? nullptr : dacc.p;
        a.y = mode == 1 ? nullptr : dy.p;
        launch(a, nullptr);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        if (mode != 2) {
            const std::vector<int32_t> acc = dacc.get();
            size_t bad = 0, first = 0;
            for (size_t i = 0; i < acc.size(); ++i)
                if (acc[i] != acc_ref[i] && bad++ == 0) first = i;
            ASSERT_EQ(bad, 0u) << "first mismatch at t=" << first / p.n << " j=" << first % p.n << ": "
                               << acc[first] << " vs " << acc_ref[first];
        }
        if (mode != 1) {
            const std::vector<float> y = dy.get();
            size_t bad = 0, first = 0;
            for (size_t i = 0; i < y.size(); ++i)
                if (!(std::fabs(y[i] - y_ref[i]) <= 0x1p-22f * std::fabs(y_ref[i])) && bad++ == 0) first = i;
            ASSERT_EQ(bad, 0u) << "first mismatch at " << first << ": " << y[first] << " vs " << y_ref[first];
        }
    }
}

const Launch kTiled = [](const cuda::W4GemmArgs& a, cudaStream_t s) { cuda::w4a4_gemm_tiled(a, s); };
const Launch kGemv = [](const cuda::W4GemmArgs& a, cudaStream_t s) { cuda::w4a4_gemv(a, s); };
const Launch kAuto = [](const cuda::W4GemmArgs& a, cudaStream_t s) { cuda::w4a4_gemm(a, s); };
const Launch kWgmma = [](const cuda::W4GemmArgs& a, cudaStream_t s) { cuda::w4a4_gemm_wgmma(a, s); };

}  // namespace

// The layout's index function against the repacked bytes (host only, but the
// header is part of the CUDA build).
TEST(CudaW4A4Gemm, RepackRoundTrip) {
    std::mt19937 rng(test_seed());
    for (auto [n, k] : {std::pair{8, 128}, {13, 257}, {40, 1}, {9, 300}}) {
        Problem p(1, n, k, rng);
        std::vector<uint8_t> packed((size_t)cuda::w4g_bytes(n, k), 0xAA);
        cuda::w4g_repack(p.codes.data(), n, k, packed.data());
        std::vector<int> seen(packed.size() * 2, 0);
        for (int j = 0; j < n; ++j)
            for (int i = 0; i < k; ++i) {
                int nib = 0;
                const int64_t off = cuda::w4g_offset(k, j, i, &nib);
                ASSERT_LT(off, (int64_t)packed.size());
                const int v = (packed[off] >> (4 * nib)) & 0xF;
                ASSERT_EQ(v >= 8 ? v - 16 : v, w4_get(p.codes.data() + (size_t)j * w4_row_bytes(k), i));
                ASSERT_EQ(seen[off * 2 + nib]++, 0) << "two weights share a nibble";
            }
        for (size_t b = 0; b < packed.size(); ++b)  // every nibble no weight owns is a zero pad
            for (int nib = 0; nib < 2; ++nib)
                if (!seen[b * 2 + nib]) {
                    ASSERT_EQ((packed[b] >> (4 * nib)) & 0xF, 0);
                }
    }
}

TEST(CudaW4A4Gemm, TiledExactAwkwardShapes) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 1);
    // k: 16-byte aligned (cp.async path) and not (byte loads), off 128; n off 8 and 256.
    const int shapes[][3] = {{1, 8, 128},    {2, 40, 64},    {3, 257, 130},  {7, 300, 1000}, {16, 520, 4096},
                             {17, 264, 258}, {64, 517, 512}, {129, 33, 383}, {129, 771, 2},  {2050, 264, 520},
                             {200, 96, 1}};
    for (auto& s : shapes) check(Problem(s[0], s[1], s[2], rng), kTiled, "tiled");
}

TEST(CudaW4A4Gemm, GemvExactAwkwardShapes) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 2);
    for (int m : {1, 2, 3, 4, 5, 7, 8, 9, 13, 16})
        for (auto [n, k] : {std::pair{8, 128}, {40, 64}, {257, 130}, {300, 1000}, {2120, 256}, {9000, 512},
                            {264, 3}, {33, 4099}, {100, 1008}})
            check(Problem(m, n, k, rng), kGemv, "gemv");
}

// v9's staged activations (the default on 16-byte aligned rows) and their fallback on rows that are
// not: the same problems through both, rows 4, 8 and 12 bytes past alignment.
TEST(CudaW4A4Gemm, GemvStagedAndUnalignedRows) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 11);
    for (auto [m, n, k] : {std::tuple{1, 264, 4096}, {2, 264, 4096}, {5, 264, 4096}, {6, 40, 128}, {12, 520, 1024},
                           {16, 2120, 256}, {16, 300, 16384}, {24, 264, 512}, {40, 100, 2048},
                           {2, 2990, 512}, {3, 6144, 256}})  // 374 / 768 tiles: NT = 3 at 132 SMs
        for (int off : {0, 4, 8, 12}) {
            Problem p(m, n, k, rng);
            check(p, kGemv, "gemv", true, off);
            for (int cfg : {4, 5})
                check(p, [cfg](const cuda::W4GemmArgs& a, cudaStream_t s) { cuda::w4a4_gemv_cfg(a, s, cfg); },
                      str("gemv cfg ", cfg).c_str(), true, off);
        }
}

// The skinny GEMV (17..64 rows: two or four m16 tiles sharing each weight fragment, v4)
// and w4a4_gemm's choice between it and the tiled kernel (k % 4 != 0 → tiled).
TEST(CudaW4A4Gemm, GemvSkinnyExact) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 7);
    for (int m : {17, 24, 31, 32, 33, 47, 48, 63, 64})
        for (auto [n, k] : {std::pair{8, 128}, {40, 64}, {257, 132}, {2120, 256}, {264, 4}, {33, 4100}})
            check(Problem(m, n, k, rng), kGemv, "gemv skinny");
    for (auto [m, n, k] : {std::tuple{20, 100, 130}, {40, 264, 1001}, {64, 520, 512}})
        check(Problem(m, n, k, rng), kAuto, "auto (17..64 rows)");
}

// Every tile configuration and GEMV variant the benchmark compares.
TEST(CudaW4A4Gemm, AllConfigurations) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 5);
    for (int cfg = 0; cfg < cuda::W4G_TILE_CFGS; ++cfg) {
        const Launch l = [cfg](const cuda::W4GemmArgs& a, cudaStream_t s) { cuda::w4a4_gemm_tiled_cfg(a, s, cfg); };
        for (auto [m, n, k] : {std::tuple{300, 520, 640}, {129, 33, 383}, {5, 264, 1}})
            check(Problem(m, n, k, rng), l, str("tiled cfg ", cfg).c_str());
    }
    for (int cfg = 0; cfg < cuda::W4G_GEMV_CFGS; ++cfg) {
        const Launch l = [cfg](const cuda::W4GemmArgs& a, cudaStream_t s) { cuda::w4a4_gemv_cfg(a, s, cfg); };
        for (auto [m, n, k] : {std::tuple{1, 40, 4096}, {16, 2120, 3000}, {9, 9000, 1100}, {3, 100, 77},
                               {7, 520, 8192}, {16, 2120, 1024}})
            check(Problem(m, n, k, rng), l, str("gemv cfg ", cfg).c_str());
    }
}

TEST(CudaW4A4Gemm, ModelShapesBothPaths) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 3);
    // LLaMA-3-8B widths (the reference is scalar: keep m small).
    for (auto [m, n, k] : {std::tuple{5, 4096, 4096}, {16, 1024, 14336}, {33, 6144, 512}}) {
        Problem p(m, n, k, rng);
        check(p, kAuto, "auto");
        check(p, kTiled, "tiled");
        if (m <= 16) check(p, kGemv, "gemv", false);
    }
}

// The wgmma prefill kernel (w4a4_wgmma.h): m around and off its 128-token tile (1, 3, 17,
// 129, 200, 2050), n off 8 and off its 256-channel tile, k multiples of 16 (TMA) off the
// 128-k stage, 4- and 8-bit activation codes; with and without spec / bias.
TEST(CudaW4A4Gemm, WgmmaExactAwkwardShapes) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 8);
    const int shapes[][3] = {{1, 8, 16},       {3, 40, 144},  {17, 264, 400}, {129, 520, 1040}, {200, 1000, 2064},
                             {2050, 264, 528}, {129, 33, 4096}, {7, 300, 128}, {64, 517, 256},  {256, 256, 128},
                             {130, 257, 48}};
    for (auto& s : shapes) check(Problem(s[0], s[1], s[2], rng), kWgmma, "wgmma");
    for (auto& s : shapes)
        if (s[0] * (int64_t)s[1] * s[2] < 100000000) check(Problem(s[0], s[1], s[2], rng, false, 8), kWgmma, "wgmma 8-bit", false);
}

// The persistent kernel with more tiles than the H100 has SMs (132), so CTAs take 2+ tiles:
// the stage ring wraps across tiles with k steps per tile (4, 2, 1) not a multiple of its 3
// stages, and the epilogue hand-off's parity bits cycle. 2050 × 2120: 17 × 9 = 153 tiles,
// k = 400 (three full stages + 16); 1030 × 4099: 9 × 17 = 153 tiles, n % 4 != 0 (single-word
// epilogue stores), k = 160; 4100 × 1100: 33 × 5 = 165 tiles, the last m tile 4 tokens.
TEST(CudaW4A4Gemm, WgmmaPersistentManyTiles) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 12);
    for (auto [m, n, k] : {std::tuple{2050, 2120, 400}, {1030, 4099, 160}, {4100, 1100, 48}})
        check(Problem(m, n, k, rng), kWgmma, "wgmma persistent");
}

// w4a4_gemm's choice for m ≥ W4G_WGMMA_MIN_M: wgmma when k % 16 == 0 and the rows are
// 16-byte aligned, else the tiled kernel; both exact. LLaMA-3-8B o shape at m = 72.
// Split-K (round 3): tiles that do not fill the SMs split their k steps over CTAs and a second
// kernel adds the partials. Automatic and forced split counts (uneven, more than the k steps),
// three launches per problem (acc + y, acc, y), the workspace poisoned before each problem.
TEST(CudaW4A4Gemm, WgmmaSplitKExact) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 12);
    const int64_t ws_ints = cuda::w4a4_wgmma_ws_ints();
    DevBuf<int32_t> ws((size_t)ws_ints);
    for (auto [m, n, k] : {std::tuple{65, 264, 1024}, {129, 520, 4096}, {200, 100, 14336}, {300, 1000, 256},
                           {80, 33, 128}, {256, 2048, 512}, {1, 8, 1024}})
        for (int split : {0, 2, 3, 7}) {
            Problem p(m, n, k, rng);
            ws.poison();
            const Launch l = [&, split](const cuda::W4GemmArgs& a0, cudaStream_t s) {
                cuda::W4GemmArgs a = a0;
                a.ws = ws.p, a.ws_ints = ws_ints, a.split_k = split;
                cuda::w4a4_gemm_wgmma(a, s);
            };
            check(p, l, str("wgmma split ", split).c_str());
        }
    // A forced split the workspace cannot hold: a clear error, nothing launched.
    Problem p(129, 520, 4096, rng);
    std::vector<uint8_t> packed((size_t)cuda::w4g_bytes(p.n, p.k));
    cuda::w4g_repack(p.codes.data(), p.n, p.k, packed.data());
    DevBuf<uint8_t> dq(p.q), dw(packed);
    DevBuf<int32_t> dacc((size_t)p.m * p.n);
    cuda::W4GemmArgs a;
    a.q = dq.p, a.m = p.m, a.k = p.k, a.n = p.n, a.w = dw.p, a.acc = dacc.p;
    a.ws = ws.p, a.ws_ints = 2000, a.split_k = 3;
    EXPECT_THROW(cuda::w4a4_gemm_wgmma(a, nullptr), Error);
}

TEST(CudaW4A4Gemm, WgmmaDispatchExact) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 9);
    for (auto [m, n, k] : {std::tuple{cuda::W4G_WGMMA_MIN_M, 264, 512}, {100, 264, 520}, {150, 100, 1001},
                           {72, 4096, 4096}})
        check(Problem(m, n, k, rng), kAuto, "auto (wgmma range)");
}

// Output and spec pointers off 16 bytes (one float in): the epilogue's 16-byte accesses
// must fall back to single ones; the result equals the aligned run bit for bit (which the
// tests above hold to the reference).
TEST(CudaW4A4Gemm, WgmmaUnalignedOutputs) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 10);
    const Problem p(130, 264, 256, rng);
    std::vector<uint8_t> packed((size_t)cuda::w4g_bytes(p.n, p.k));
    cuda::w4g_repack(p.codes.data(), p.n, p.k, packed.data());
    const size_t cnt = (size_t)p.m * p.n;
    DevBuf<uint8_t> dq(p.q), dw(packed);
    DevBuf<float> ds(p.act_scale), dws(p.w_scale), dbias(p.bias), dy(cnt + 1), dspec(cnt + 1);
    DevBuf<int32_t> dz(p.act_zero), drs(p.rowsum), dacc(cnt + 1);
    ASSERT_EQ(cudaMemcpy(dspec.p + 1, p.spec.data(), cnt * 4, cudaMemcpyHostToDevice), cudaSuccess);
    std::vector<float> y[2];
    std::vector<int32_t> acc[2];
    for (int off = 0; off < 2; ++off) {
        if (off == 0) ASSERT_EQ(cudaMemcpy(dspec.p, p.spec.data(), cnt * 4, cudaMemcpyHostToDevice), cudaSuccess);
        else ASSERT_EQ(cudaMemcpy(dspec.p + 1, p.spec.data(), cnt * 4, cudaMemcpyHostToDevice), cudaSuccess);
        dy.poison();
        dacc.poison();
        cuda::W4GemmArgs a;
        a.q = dq.p, a.m = p.m, a.k = p.k, a.n = p.n, a.w = dw.p;
        a.act_scale = ds.p, a.act_zero = dz.p, a.w_scale = dws.p, a.w_rowsum = drs.p;
        a.spec = dspec.p + off, a.bias = dbias.p, a.y = dy.p + off, a.acc = dacc.p + off;
        cuda::w4a4_gemm_wgmma(a, nullptr);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const std::vector<float> yy = dy.get();
        const std::vector<int32_t> aa = dacc.get();
        y[off].assign(yy.begin() + off, yy.begin() + off + (long)cnt);
        acc[off].assign(aa.begin() + off, aa.begin() + off + (long)cnt);
    }
    std::vector<int32_t> acc_ref(cnt);
    gemm_w4a4_acc_ref(p.q.data(), p.m, p.k, p.codes.data(), p.n, acc_ref.data());
    EXPECT_EQ(acc[0], acc_ref);
    EXPECT_EQ(acc[1], acc_ref);
    size_t finite = 0;  // the poison is NaN: every output written
    for (float v : y[0]) finite += std::isfinite(v);
    EXPECT_EQ(finite, cnt);
    EXPECT_EQ(std::memcmp(y[0].data(), y[1].data(), cnt * 4), 0);
}

TEST(CudaW4A4Gemm, WgmmaRejectsBadArguments) {
    SKIP_WITHOUT_GPU();
    uint8_t* d = nullptr;
    float* y = nullptr;
    ASSERT_EQ(cudaMalloc(&d, 4096), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&y, 4096), cudaSuccess);
    cuda::W4GemmArgs a;
    a.m = 128, a.n = 8, a.k = 24, a.q = d, a.w = d, a.acc = reinterpret_cast<int32_t*>(y);
    EXPECT_THROW(cuda::w4a4_gemm_wgmma(a, nullptr), Error);  // k % 16 != 0
    a.k = 16, a.q = d + 8;
    EXPECT_THROW(cuda::w4a4_gemm_wgmma(a, nullptr), Error);  // rows not 16-byte aligned
    EXPECT_FALSE(cuda::w4a4_wgmma_fits(a.m, a.k, a.q));
    a.q = d, a.k = 65552;
    EXPECT_THROW(cuda::w4a4_gemm_wgmma(a, nullptr), Error);  // k > 65536 (16·acc would overflow)
    cudaFree(d);
    cudaFree(y);
}

// Largest |acc|: all weights −8, all codes at their maximum (4 and 8 bits): the
// 16·acc the MMA keeps must not overflow.
TEST(CudaW4A4Gemm, ExtremeValues) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 4);
    for (int bits : {4, 8}) {
        const int k = bits == 4 ? 14336 : 65536;
        Problem p(3, 24, k, rng, true, bits);
        check(p, kTiled, "tiled extreme");
        check(p, kGemv, "gemv extreme");
        check(p, kWgmma, "wgmma extreme");
        Problem p2(130, 24, k, rng, true, bits);  // a full 128-token tile and a second one
        check(p2, kWgmma, "wgmma extreme m=130");
    }
}

// The fused spectral branch: spec[t, j] = spectral_dot_ref(z_t, C_j, rank)
// in the epilogue, bit for bit (the reference's fma lanes and pairwise sum),
// ranks off the 8-lane blocks, all three kernels (wgmma where k % 16 == 0), with bias.
TEST(CudaW4A4Gemm, FusedSpectralEqualsReference) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 6);
    // The GEMV stages C in shared memory when a block's rows fit 32 KB (v5); rank 1100 does not.
    for (auto [m, n, k, rank] : {std::tuple{1, 100, 300, 31}, {9, 70, 128, 5}, {16, 264, 520, 1},
                                 {300, 200, 256, 31}, {33, 8, 64, 8}, {130, 257, 384, 17}, {1, 40, 256, 1100},
                                 {20, 1000, 128, 31}, {3, 9000, 128, 31}, {8, 520, 4096, 31}, {13, 300, 256, 200},
                                 {7, 264, 8192, 16}}) {
        SCOPED_TRACE(str("m=", m, " n=", n, " k=", k, " rank=", rank));
        Problem p(m, n, k, rng);
        const std::vector<float> z = gaussian((size_t)m * rank, rng), c = gaussian((size_t)n * rank, rng, 0.05f);
        std::vector<int32_t> acc((size_t)m * n);
        gemm_w4a4_acc_ref(p.q.data(), m, k, p.codes.data(), n, acc.data());
        std::vector<float> y_ref((size_t)m * n);
        w4a4_epilogue_ref(acc.data(), m, n, p.act_scale.data(), p.act_zero.data(), p.w_scale.data(),
                          p.rowsum.data(), y_ref.data());
        for (int t = 0; t < m; ++t)
            for (int j = 0; j < n; ++j) {
                float& v = y_ref[(size_t)t * n + j];
                v = v + spectral_dot_ref(&z[(size_t)t * rank], &c[(size_t)j * rank], rank);
                v = v + p.bias[j];
            }
        std::vector<uint8_t> packed((size_t)cuda::w4g_bytes(n, k));
        cuda::w4g_repack(p.codes.data(), n, k, packed.data());
        DevBuf<uint8_t> dq(p.q), dw(packed);
        DevBuf<float> ds(p.act_scale), dws(p.w_scale), dbias(p.bias), dzb(z), dc(c), dy((size_t)m * n);
        DevBuf<int32_t> dz(p.act_zero), drs(p.rowsum);
        for (int which = 0; which < 3; ++which) {
            if (which == 1 && !cuda::w4a4_gemv_fits(m, k, dq.p)) continue;
            if (which == 2 && !cuda::w4a4_wgmma_fits(m, k, dq.p)) continue;
            const Launch& l = which == 2 ? kWgmma : which ? kGemv : kTiled;
            dy.poison();
            cuda::W4GemmArgs a;
            a.q = dq.p, a.m = m, a.k = k, a.n = n, a.w = dw.p;
            a.act_scale = ds.p, a.act_zero = dz.p, a.w_scale = dws.p, a.w_rowsum = drs.p;
            a.bias = dbias.p, a.spec_z = dzb.p, a.spec_c = dc.p, a.spec_rank = rank, a.y = dy.p;
            l(a, nullptr);
            const std::vector<float> y = dy.get();
            int bad = 0;
            for (size_t i = 0; i < y.size(); ++i) bad += std::memcmp(&y[i], &y_ref[i], 4) != 0;
            EXPECT_EQ(bad, 0) << (which == 2 ? "wgmma" : which ? "gemv" : "tiled");
        }
    }
}

TEST(CudaW4A4Gemm, RejectsBadArguments) {
    SKIP_WITHOUT_GPU();
    cuda::W4GemmArgs a;
    a.m = 1;
    a.n = 8;
    a.k = 65537;
    uint8_t* d = nullptr;
    ASSERT_EQ(cudaMalloc(&d, 64), cudaSuccess);
    a.q = d;
    a.w = d;
    EXPECT_THROW(cuda::w4a4_gemm(a, nullptr), Error);
    a.k = 16;
    a.w = d + 1;  // unaligned weights
    EXPECT_THROW(cuda::w4a4_gemm(a, nullptr), Error);
    a.w = d;
    a.m = 65;  // the GEMV takes at most 64 rows (W4G_GEMV_MAX_M)
    EXPECT_THROW(cuda::w4a4_gemv(a, nullptr), Error);
    a.m = 17, a.k = 15;  // 17..64 rows need k % 4 == 0
    EXPECT_THROW(cuda::w4a4_gemv(a, nullptr), Error);
    a.k = 16, a.q = d + 1;  // ... and 4-byte aligned activation rows
    EXPECT_THROW(cuda::w4a4_gemv(a, nullptr), Error);
    cudaFree(d);
}

#endif  // SPECQUANT_HAS_CUDA
