// The GPU spectral branch (kernels/cuda/spectral.cu) against the CPU engine bit for bit:
// x·Bᵀ against gemv_f32 (calls of ≤ 16 rows) and gemm_f32 (above; the two agree), the ·Cᵀ pass against
// spectral_dot_ref added in the W4A4 epilogue's order, over awkward shapes, poisoned outputs.
#ifdef SPECQUANT_HAS_CUDA
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/gemm_f32.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ref/w4a4_ref.h"
#include "test_cuda_util.h"
#include "test_random.h"

using namespace sq;

namespace {

int bits_differ(const std::vector<float>& a, const std::vector<float>& b) {
    int bad = 0;
    for (size_t i = 0; i < a.size(); ++i) bad += std::memcmp(&a[i], &b[i], 4) != 0;
    return bad;
}

// The CPU engine's x·B of one call of m rows (kernels/cpu/gemm_f32.h; linear_w4a4_cpu.cpp gemm_any).
std::vector<float> cpu_xb(const std::vector<float>& x, int m, const std::vector<float>& bt, int rank, int k) {
    std::vector<float> z((size_t)m * rank);
    const PackedF32 w = gemm_f32_view(bt.data(), rank, k);
    if (m <= gemv_f32_max_m) gemv_f32(x.data(), m, w, z.data());
    else gemm_f32(x.data(), m, w, z.data());
    return z;
}

}  // namespace

TEST(CudaSpectral, XbEqualsCpuEngine) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 41);
    // k: one k-block (≤ 576), several equal blocks, a last block shorter, tails not a multiple of 8
    for (auto [m, k, rank] : {std::tuple{1, 576, 31}, {5, 4096, 31}, {16, 1536, 7}, {17, 1536, 31}, {100, 576, 31},
                              {300, 1000, 33}, {64, 4100, 1}, {33, 14336, 31}, {2, 13, 3}, {40, 13, 40},
                              {129, 2051, 64}, {3, 14336, 64}, {1, 4103, 2}, {1000, 4096, 31}, {70, 700, 45}}) {
        SCOPED_TRACE(str("m=", m, " k=", k, " rank=", rank));
        const std::vector<float> x = gaussian((size_t)m * k, rng), bt = gaussian((size_t)rank * k, rng, 0.05f);
        const std::vector<float> ref = cpu_xb(x, m, bt, rank, k);
        DevBuf<float> dx(x), db(bt), dz((size_t)m * rank);
        DevBuf<float> part(std::max<size_t>(1, cuda::spectral_xb_scratch(m, rank, k)));
        part.poison(0);  // the decode kernel's counter starts at zero
        dz.poison(0xff);  // every output written
        cuda::spectral_xb(dx.p, k, m, db.p, rank, k, dz.p, part.p, part.n, nullptr);
        EXPECT_EQ(bits_differ(dz.get(), ref), 0);
        // each row as a call of its own (decode, the per-output kernel): the same bits
        DevBuf<float> part1(std::max<size_t>(1, cuda::spectral_xb_scratch(1, rank, k)));
        part1.poison(0);
        for (int t = 0; t < std::min(m, 3); ++t) {
            for (int rep = 0; rep < 2; ++rep) {  // twice: the decode kernel's counter is back at zero after a call
                DevBuf<float> z1(rank);
                cuda::spectral_xb(dx.p + (size_t)t * k, k, 1, db.p, rank, k, z1.p, part1.p, part1.n, nullptr);
                const std::vector<float> zt(ref.begin() + (size_t)t * rank, ref.begin() + (size_t)(t + 1) * rank);
                EXPECT_EQ(bits_differ(z1.get(), zt), 0) << "row " << t << " alone, call " << rep;
            }
        }
    }
}

TEST(CudaSpectral, ZcAddEqualsEpilogueOrder) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 43);
    for (auto [m, n, rank, with_bias] : {std::tuple{1, 100, 31, true}, {33, 6144, 31, false}, {300, 200, 7, true},
                                         {17, 129, 32, false}, {5, 64, 33, true}, {70, 300, 64, true},
                                         {3, 1000, 65, true}, {40, 1, 1, false}, {1100, 300, 31, true},
                                         {700, 129, 50, false}, {500, 700, 15, true}, {300, 300, 63, false},
                                         {50, 301, 31, true}}) {
        SCOPED_TRACE(str("m=", m, " n=", n, " rank=", rank, " bias=", with_bias));
        const std::vector<float> z = gaussian((size_t)m * rank, rng), c = gaussian((size_t)n * rank, rng, 0.05f);
        const std::vector<float> bias = gaussian(n, rng, 0.1f);
        const int64_t ld = n + 3;  // a wider output (a fused layer's part): columns past n untouched
        const std::vector<float> y0 = gaussian((size_t)m * ld, rng);
        std::vector<float> ref = y0;
        for (int t = 0; t < m; ++t)
            for (int j = 0; j < n; ++j) {  // the W4A4 epilogue's order: (y + spec) + bias
                float& v = ref[(size_t)t * ld + j];
                v = v + spectral_dot_ref(&z[(size_t)t * rank], &c[(size_t)j * rank], rank);
                if (with_bias) v = v + bias[j];
            }
        DevBuf<float> dz(z), dc(c), db(bias), dy(y0);
        cuda::spectral_zc_add(dz.p, m, dc.p, n, rank, dy.p, ld, with_bias ? db.p : nullptr, nullptr);
        EXPECT_EQ(bits_differ(dy.get(), ref), 0);
    }
}

TEST(CudaSpectral, BadArgumentsAreSqErrors) {
    SKIP_WITHOUT_GPU();
    DevBuf<float> x(64 * 1000), b(31 * 1000), z(64 * 31);
    EXPECT_THROW(cuda::spectral_xb(x.p, 1000, 64, b.p, 0, 1000, z.p, nullptr, 0, nullptr), Error);
    EXPECT_THROW(cuda::spectral_xb(x.p, 999, 64, b.p, 31, 1000, z.p, nullptr, 0, nullptr), Error);
    // 64 rows at k = 1000 need k-block scratch
    EXPECT_THROW(cuda::spectral_xb(x.p, 1000, 64, b.p, 31, 1000, z.p, nullptr, 0, nullptr), Error);
    EXPECT_THROW(cuda::spectral_zc_add(z.p, 64, b.p, 10, 31, x.p, 9, nullptr, nullptr), Error);
}

#endif
