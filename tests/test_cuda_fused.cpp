// The decode-fusion kernels (docs/kernels-cuda-notes.md "Decode v4") against the
// scalar reference and against the unfused kernels they replace:
//   - add_rmsnorm_quant: h += add exactly; y within float rounding of a double
//     RMSNorm and bit-identical to the previous (plain loop) kernel; codes, scale, zero point equal to
//     act_quant_ref(y) bit for bit; the bf16 copy equal to fp32_to_bf16(y);
//   - silu_mul_rows (strided [gate | up] input): act bit-identical to silu_mul and
//     within rounding of a double SiLU; codes = act_quant_ref(act), bf16 = fp32_to_bf16(act);
//   - rope_kv_store: q bit-identical to rope(); cache rows bit-identical to rope + kv_store
//     (one sequence at pos_dev), rope_varlen + kv_store (varlen) and kv_store_rows
//     (batched decode) and to fake_quant_asym_ref of the rotated k / of v; rows it does
//     not own stay poisoned.
//   - q8_gemv (decode v6's Q8_0 lm_head): within the float-summation bound of the exact product,
//     the same bits at every batch size.
//   - w4a4_gemv_norm (decode v8: the norm inside the GEMV): outputs, h + add and the normed rows
//     bit-identical to add_rmsnorm_quant followed by w4a4_gemv.
// Awkward widths (odd, not multiples of 32 or of the block), outputs poisoned first.
// Compiled only with -DSPECQUANT_CUDA=ON; every test skips without a GPU.
// Run: build-gpu/specquant_tests --gtest_filter='CudaFused*'
#ifdef SPECQUANT_HAS_CUDA
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/w4a4_gemm.h"
#include "kernels/q8_format.h"
#include "kernels/ref/q8_ref.h"
#include "kernels/ref/w4a4_ref.h"
#include "test_cuda_util.h"
#include "test_random.h"

using namespace sq;

namespace {

uint32_t fbits(float f) { return fp32_to_bits(f); }

// Rows with an outlier, all-positive, a constant row and ties: quantizer edge cases (no NaN:
// the norm spreads one NaN over the whole row, which the act_quant tests cover on their own).
std::vector<float> rows_of(int n, int64_t d, std::mt19937& rng) {
    std::vector<float> x = gaussian((size_t)n * d, rng);
    for (int t = 0; t < n; ++t) {
        float* r = &x[(size_t)t * d];
        if (t % 4 == 1) r[rng() % d] = 40.0f;
        if (t % 4 == 2)
            for (int64_t i = 0; i < d; ++i) r[i] = std::fabs(r[i]);
        if (t % 4 == 3)
            for (int64_t i = 0; i < d; ++i) r[i] = (float)(i % 31) - 15.0f;
    }
    return x;
}

// Codes/scale/zero of the GPU against act_quant_ref of the given fp32 rows, and bf16 against fp32_to_bf16.
void expect_codes(const std::vector<float>& y, int n, int64_t d, int bits, float clip, const DevBuf<uint8_t>& q8,
                  const DevBuf<float>& sc, const DevBuf<int32_t>& zp, const DevBuf<uint16_t>& yb, const char* what) {
    std::vector<uint8_t> q_ref((size_t)n * d);
    std::vector<float> s_ref(n);
    std::vector<int32_t> z_ref(n);
    act_quant_ref(y.data(), n, d, bits, clip, q_ref.data(), s_ref.data(), z_ref.data());
    const auto q = q8.get();
    const auto s = sc.get();
    const auto z = zp.get();
    const auto b = yb.get();
    int bad_q = 0, bad_b = 0;
    for (int t = 0; t < n; ++t) {
        EXPECT_EQ(fbits(s[t]), fbits(s_ref[t])) << what << " scale, row " << t;
        EXPECT_EQ(z[t], z_ref[t]) << what << " zero point, row " << t;
    }
    for (size_t i = 0; i < q_ref.size(); ++i) bad_q += q[i] != q_ref[i], bad_b += b[i] != fp32_to_bf16(y[i]);
    EXPECT_EQ(bad_q, 0) << what << ": codes differ from act_quant_ref";
    EXPECT_EQ(bad_b, 0) << what << ": bf16 differs from fp32_to_bf16";
}

}  // namespace

TEST(CudaFused, NormQuantEqualsReference) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 101);
    for (int64_t d : {7, 64, 576, 1000, 4096, 5000}) {  // 5000: the plain loop (wider than 16 per thread)
        for (int n : {1, 3, 17}) {
            for (int bits : {4, 8}) {
                SCOPED_TRACE(str("d=", d, " n=", n, " bits=", bits));
                const float eps = 1e-5f, clip = bits == 4 ? 0.9f : 1.0f;
                const std::vector<float> h0 = rows_of(n, d, rng), add = gaussian((size_t)n * d, rng, 0.5f),
                                         w = gaussian((size_t)d, rng, 0.3f);
                DevBuf<float> dh(h0), dadd(add), dw(w), dy((size_t)n * d), dh2(h0), dy2((size_t)n * d);
                DevBuf<float> sc(n);
                DevBuf<int32_t> zp(n);
                DevBuf<uint8_t> q8((size_t)n * d);
                DevBuf<uint16_t> yb((size_t)n * d);
                cuda::RowQuant rq;
                rq.bits = bits, rq.clip = clip, rq.q8 = q8.p, rq.scale = sc.p, rq.zero = zp.p, rq.bf16 = yb.p;
                cuda::add_rmsnorm_quant(dh.p, dadd.p, dw.p, n, (int)d, eps, dy.p, rq, nullptr);
                cuda::RowQuant plain;  // the previous engine's kernel: one element at a time, no codes
                plain.plain = true;
                cuda::add_rmsnorm_quant(dh2.p, dadd.p, dw.p, n, (int)d, eps, dy2.p, plain, nullptr);
                const auto h = dh.get(), y = dy.get(), y2 = dy2.get(), h2 = dh2.get();
                int bad_h = 0, bad_y = 0;
                double worst = 0;
                for (int t = 0; t < n; ++t) {
                    double ss = 0;
                    for (int64_t i = 0; i < d; ++i) {
                        const size_t k = (size_t)t * d + i;
                        const float hv = h0[k] + add[k];
                        bad_h += fbits(h[k]) != fbits(hv) || fbits(h2[k]) != fbits(hv);
                        ss += (double)hv * hv;
                    }
                    const double r = 1.0 / std::sqrt(ss / (double)d + eps);
                    for (int64_t i = 0; i < d; ++i) {
                        const size_t k = (size_t)t * d + i;
                        const double ref = (double)w[i] * ((double)h0[k] + add[k]) * r;
                        worst = std::max(worst, std::fabs(y[k] - ref) / (std::fabs(ref) + 1e-3));
                        bad_y += fbits(y[k]) != fbits(y2[k]);
                    }
                }
                EXPECT_EQ(bad_h, 0) << "residual add";
                EXPECT_EQ(bad_y, 0) << "y differs from the plain add_rmsnorm kernel";
                EXPECT_LE(worst, 1e-5) << "y against a double RMSNorm";  // ~d float roundings of ss, relative
                expect_codes(y, n, d, bits, clip, q8, sc, zp, yb, "add_rmsnorm_quant");
            }
        }
    }
}

TEST(CudaFused, NormInGemvEqualsNormThenGemv) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 107);
    for (int64_t d : {256, 1000, 4096}) {
        for (int m : {1, 3, 8}) {
            for (int n : {40, 1000}) {
                for (bool with_add : {true, false}) {
                    SCOPED_TRACE(str("d=", d, " m=", m, " n=", n, " add=", with_add));
                    const float eps = 1e-5f, clip = 0.9f;
                    const std::vector<float> h0 = rows_of(m, d, rng), add = gaussian((size_t)m * d, rng, 0.5f),
                                             w = gaussian((size_t)d, rng, 0.3f), ws = gaussian((size_t)n, rng, 0.01f),
                                             bias = gaussian((size_t)n, rng);
                    std::vector<uint8_t> wq((size_t)cuda::w4g_bytes(n, d));
                    for (uint8_t& b : wq) b = (uint8_t)rng();
                    std::vector<int32_t> rs(n);
                    for (int32_t& v : rs) v = (int32_t)(rng() % 2001) - 1000;
                    DevBuf<float> dh(h0), dadd(add), dw(w), dws(ws), dbias(bias), x_ref((size_t)m * d),
                        dh_out((size_t)m * d), x_out((size_t)m * d), y_ref((size_t)m * n), y((size_t)m * n), sc(m);
                    DevBuf<uint8_t> dwq(wq), q8((size_t)m * d);
                    DevBuf<int32_t> drs(rs), zp(m);
                    for (DevBuf<float>* b : {&dh_out, &x_out, &y_ref, &y}) b->poison();
                    cuda::W4GemmArgs a;
                    a.m = m, a.k = (int)d, a.n = n, a.w = dwq.p, a.w_scale = dws.p, a.w_rowsum = drs.p;
                    a.bias = dbias.p;
                    cuda::GemvNorm g;  // first, while dh still holds h0 (the reference updates it in place)
                    g.h = dh.p, g.add = with_add ? dadd.p : nullptr, g.w = dw.p, g.eps = eps, g.h_out = dh_out.p;
                    g.y = x_out.p, g.bits = 4, g.clip = clip;
                    a.y = y.p;
                    cuda::w4a4_gemv_norm(a, g, nullptr);
                    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
                    cuda::RowQuant rq;
                    rq.bits = 4, rq.clip = clip, rq.q8 = q8.p, rq.scale = sc.p, rq.zero = zp.p;
                    cuda::add_rmsnorm_quant(dh.p, with_add ? dadd.p : nullptr, dw.p, m, (int)d, eps, x_ref.p, rq,
                                            nullptr);
                    a.q = q8.p, a.act_scale = sc.p, a.act_zero = zp.p, a.y = y_ref.p;
                    cuda::w4a4_gemv(a, nullptr);
                    const auto yv = y.get(), yr = y_ref.get(), hv = dh_out.get(), hr = dh.get(), xv = x_out.get(),
                               xr = x_ref.get();
                    int bad_y = 0, bad_h = 0, bad_x = 0;
                    for (size_t i = 0; i < yv.size(); ++i) bad_y += fbits(yv[i]) != fbits(yr[i]);
                    for (size_t i = 0; i < hv.size(); ++i)
                        bad_h += fbits(hv[i]) != fbits(hr[i]), bad_x += fbits(xv[i]) != fbits(xr[i]);
                    EXPECT_EQ(bad_y, 0) << "GEMV outputs";
                    EXPECT_EQ(bad_h, 0) << "h + add";
                    EXPECT_EQ(bad_x, 0) << "normed rows";
                }
            }
        }
    }
    DevBuf<float> f(64);
    cuda::W4GemmArgs a;
    a.m = 9, a.k = 64, a.n = 8;
    cuda::GemvNorm g;
    EXPECT_THROW(cuda::w4a4_gemv_norm(a, g, nullptr), Error);  // 9 rows
    a.m = 1, a.k = 64, a.w = reinterpret_cast<const uint8_t*>(f.p), a.w_scale = f.p, a.y = f.p;
    a.w_rowsum = reinterpret_cast<const int32_t*>(f.p);
    g.h = f.p, g.w = f.p, g.h_out = f.p;
    EXPECT_THROW(cuda::w4a4_gemv_norm(a, g, nullptr), Error);  // h_out == h: in place is a race here
}

TEST(CudaFused, SiluMulQuantEqualsReference) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 102);
    for (int ff : {5, 96, 1536, 3001, 14336, 20000}) {  // 20000: the plain loop
        for (int n : {1, 2, 33, 80}) {
            SCOPED_TRACE(str("ff=", ff, " n=", n));
            const int64_t ld = 2 * (int64_t)ff;  // [gate | up] rows
            const std::vector<float> gu = gaussian((size_t)n * ld, rng, 2.0f);
            std::vector<float> g((size_t)n * ff), u((size_t)n * ff);
            for (int t = 0; t < n; ++t)
                for (int i = 0; i < ff; ++i) g[(size_t)t * ff + i] = gu[t * ld + i], u[(size_t)t * ff + i] = gu[t * ld + ff + i];
            DevBuf<float> dgu(gu), dact((size_t)n * ff), dg(g), du(u), sc(n);
            DevBuf<int32_t> zp(n);
            DevBuf<uint8_t> q8((size_t)n * ff);
            DevBuf<uint16_t> ab((size_t)n * ff);
            cuda::RowQuant rq;
            rq.bits = 4, rq.clip = 0.9f, rq.q8 = q8.p, rq.scale = sc.p, rq.zero = zp.p, rq.bf16 = ab.p;
            cuda::silu_mul_rows(dgu.p, dgu.p + ff, ld, n, ff, dact.p, rq, nullptr);
            DevBuf<float> dact2((size_t)n * ff);  // the plain loop, no codes
            cuda::RowQuant plain;
            plain.plain = true;
            cuda::silu_mul_rows(dgu.p, dgu.p + ff, ld, n, ff, dact2.p, plain, nullptr);
            const auto act2 = dact2.get();
            cuda::silu_mul(dg.p, du.p, (int64_t)n * ff, nullptr);  // the unfused kernel, in place in g
            const auto act = dact.get(), unf = dg.get();
            int bad = 0;
            double worst = 0;
            for (size_t i = 0; i < act.size(); ++i) {
                bad += fbits(act[i]) != fbits(unf[i]) || fbits(act2[i]) != fbits(act[i]);
                const double x = g[i], ref = x / (1.0 + std::exp(-x)) * u[i];
                worst = std::max(worst, std::fabs(act[i] - ref) / (std::fabs(ref) + 1e-6));
            }
            EXPECT_EQ(bad, 0) << "act differs from silu_mul";
            EXPECT_LE(worst, 1e-6) << "act against a double SiLU";  // three float roundings + expf's ulp
            expect_codes(act, n, ff, 4, 0.9f, q8, sc, zp, ab, "silu_mul_rows");
            // Decode v5: the row over several blocks meeting through RowSync (n ≤ 8, ff ≥ 2048;
            // else the one-block kernel): same act, codes, scale, zero and bf16; twice (the
            // counters must come back to zero).
            DevBuf<float2> part(cuda::row_split_part(n, ff));
            DevBuf<int> cnt(std::vector<int>(cuda::row_split_cnt(n), 0));
            for (int rep = 0; rep < 2; ++rep) {
                DevBuf<float> dact3((size_t)n * ff), sc3(n);
                DevBuf<int32_t> zp3(n);
                DevBuf<uint8_t> q83((size_t)n * ff);
                DevBuf<uint16_t> ab3((size_t)n * ff);
                cuda::RowQuant rq3 = rq;
                rq3.q8 = q83.p, rq3.scale = sc3.p, rq3.zero = zp3.p, rq3.bf16 = ab3.p;
                cuda::silu_mul_rows(dgu.p, dgu.p + ff, ld, n, ff, dact3.p, rq3, nullptr, cuda::RowSync{part.p, cnt.p});
                const auto act3 = dact3.get();
                int bad3 = 0;
                for (size_t i = 0; i < act.size(); ++i) bad3 += fbits(act3[i]) != fbits(act[i]);
                EXPECT_EQ(bad3, 0) << "split act differs, rep " << rep;
                expect_codes(act3, n, ff, 4, 0.9f, q83, sc3, zp3, ab3, "silu_mul_rows split");
                const auto cz = cnt.get();
                EXPECT_EQ(std::count(cz.begin(), cz.end(), 0), (long)cz.size()) << "split counters not reset";
            }
            // No act (the next layer reads only the codes / bf16): the same codes, scale, zero and
            // bf16, from the one-block kernel (values in registers, or computed twice past 16 per
            // thread) and the split one.
            for (int split = 0; split < 2; ++split) {
                DevBuf<float> sc4(n);
                DevBuf<int32_t> zp4(n);
                DevBuf<uint8_t> q84((size_t)n * ff);
                DevBuf<uint16_t> ab4((size_t)n * ff);
                cuda::RowQuant rq4 = rq;
                rq4.q8 = q84.p, rq4.scale = sc4.p, rq4.zero = zp4.p, rq4.bf16 = ab4.p;
                cuda::silu_mul_rows(dgu.p, dgu.p + ff, ld, n, ff, nullptr, rq4, nullptr,
                                    split ? cuda::RowSync{part.p, cnt.p} : cuda::RowSync{});
                expect_codes(act, n, ff, 4, 0.9f, q84, sc4, zp4, ab4, split ? "no act, split" : "no act");
            }
        }
    }
}

TEST(CudaFused, RopeKvStoreEqualsUnfused) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 103);
    struct Shape { int heads, kv, hd; };
    for (Shape sh : {Shape{4, 2, 16}, Shape{9, 3, 64}, Shape{32, 8, 128}, Shape{3, 3, 7}, Shape{2, 1, 100}}) {
        for (int variant : {4, 16, -4}) {  // -4: 4-bit keys around a shift (--k-center)
            const int bits = variant < 0 ? -variant : variant;
            const bool shifted = variant < 0;
            for (int mode = 0; mode < 3; ++mode) {  // 0: one sequence at pos_dev, 1: varlen, 2: batched decode rows
                SCOPED_TRACE(str("heads ", sh.heads, "/", sh.kv, " hd ", sh.hd, " bits ", bits, " shifted ", shifted,
                                 " mode ", mode));
                const int n = mode == 2 ? 5 : 6, qd = sh.heads * sh.hd, kvd = sh.kv * sh.hd, ld = qd + 2 * kvd;
                const int cache_rows = 64, pos_start = 9;
                std::vector<float> inv(sh.hd / 2);
                for (int i = 0; i < sh.hd / 2; ++i) inv[i] = std::pow(10000.0f, -2.0f * (float)i / (float)sh.hd);
                const std::vector<float> qkv = gaussian((size_t)n * ld, rng, 2.0f);
                std::vector<float> q((size_t)n * qd), k((size_t)n * kvd), v((size_t)n * kvd);
                for (int t = 0; t < n; ++t) {
                    std::memcpy(&q[(size_t)t * qd], &qkv[(size_t)t * ld], qd * 4);
                    std::memcpy(&k[(size_t)t * kvd], &qkv[(size_t)t * ld + qd], kvd * 4);
                    std::memcpy(&v[(size_t)t * kvd], &qkv[(size_t)t * ld + qd + kvd], kvd * 4);
                }
                std::vector<int> pos(n), rows(n);
                for (int t = 0; t < n; ++t) {
                    pos[t] = mode == 1 ? (t < 2 ? t : t - 2) : 3 * t + 1;  // varlen: sequences of 2 and 4
                    rows[t] = 11 * t + pos[t] % 7;                       // decode: scattered regions
                }
                DevBuf<float> dqkv(qkv), dinv(inv), qo((size_t)n * qd), kc((size_t)cache_rows * kvd),
                    vc((size_t)cache_rows * kvd);
                DevBuf<float> dq(q), dk(k), dv(v), kc2((size_t)cache_rows * kvd), vc2((size_t)cache_rows * kvd);
                DevBuf<int> dpos(pos), drows(rows), dp0(std::vector<int>{pos_start});
                const std::vector<float> shift = gaussian((size_t)kvd, rng, 1.5f);
                DevBuf<float> dshift(shift);
                const float* ks = shifted ? dshift.p : nullptr;
                kc.poison(), vc.poison(), kc2.poison(), vc2.poison(), qo.poison();
                const int* pd = mode == 0 ? dp0.p : nullptr;
                const int* pp = mode == 0 ? nullptr : dpos.p;
                const int* pr = mode == 2 ? drows.p : nullptr;
                cuda::rope_kv_store(dqkv.p, ld, dqkv.p + qd, ld, dqkv.p + qd + kvd, ld, n, sh.heads, sh.kv, sh.hd, 0, pd,
                                    pp, pr, dinv.p, bits, 0.95f, qo.p, kc.p, vc.p, nullptr, ks);
                if (mode == 0) {
                    cuda::rope(dq.p, n, sh.heads, sh.hd, 0, dp0.p, dinv.p, nullptr);
                    cuda::rope(dk.p, n, sh.kv, sh.hd, 0, dp0.p, dinv.p, nullptr);
                    cuda::kv_store(dk.p, dv.p, n, sh.kv, sh.hd, bits, 0.95f, kc2.p, vc2.p, dp0.p, nullptr, ks);
                } else {
                    cuda::rope_varlen(dq.p, n, sh.heads, sh.hd, dpos.p, dinv.p, nullptr);
                    cuda::rope_varlen(dk.p, n, sh.kv, sh.hd, dpos.p, dinv.p, nullptr);
                    if (mode == 1) cuda::kv_store(dk.p, dv.p, n, sh.kv, sh.hd, bits, 0.95f, kc2.p, vc2.p, nullptr, nullptr, ks);
                    else cuda::kv_store_rows(dk.p, dv.p, n, sh.kv, sh.hd, bits, 0.95f, kc2.p, vc2.p, drows.p, nullptr, ks);
                }
                const auto a = qo.get(), b = dq.get(), kr = dk.get();
                int bad = 0;
                for (size_t i = 0; i < a.size(); ++i) bad += fbits(a[i]) != fbits(b[i]);
                EXPECT_EQ(bad, 0) << "rotated q differs from rope()";
                const auto k1 = kc.get(), k2 = kc2.get(), v1 = vc.get(), v2 = vc2.get();
                int bad_k = 0, bad_v = 0;
                for (size_t i = 0; i < k1.size(); ++i) bad_k += fbits(k1[i]) != fbits(k2[i]), bad_v += fbits(v1[i]) != fbits(v2[i]);
                EXPECT_EQ(bad_k, 0) << "key cache differs from rope + kv_store";
                EXPECT_EQ(bad_v, 0) << "value cache differs from kv_store";
                // The scalar reference of the store: fake_quant_asym_ref of the rotated k and of v, at each token's row.
                int bad_ref = 0;
                for (int t = 0; t < n; ++t) {
                    const int row = mode == 0 ? pos_start + t : (mode == 1 ? t : rows[t]);
                    for (int j = 0; j < sh.kv; ++j) {
                        std::vector<float> kk(&kr[((size_t)t * sh.kv + j) * sh.hd], &kr[((size_t)t * sh.kv + j + 1) * sh.hd]);
                        std::vector<float> vv(&v[((size_t)t * sh.kv + j) * sh.hd], &v[((size_t)t * sh.kv + j + 1) * sh.hd]);
                        if (bits < 16) {
                            kv_fake_quant_ref(kk.data(), sh.hd, bits, 0.95f, shifted ? &shift[(size_t)j * sh.hd] : nullptr);
                            fake_quant_asym_ref(vv.data(), sh.hd, bits, 0.95f);
                        }
                        for (int i = 0; i < sh.hd; ++i) {
                            const size_t c = ((size_t)row * sh.kv + j) * sh.hd + i;
                            bad_ref += fbits(k1[c]) != fbits(kk[i]) || fbits(v1[c]) != fbits(vv[i]);
                        }
                    }
                }
                EXPECT_EQ(bad_ref, 0) << "cache against fake_quant_asym_ref";
                // Untouched rows keep the poison (0xFF bytes).
                std::vector<bool> owned(cache_rows, false);
                for (int t = 0; t < n; ++t) owned[mode == 0 ? pos_start + t : (mode == 1 ? t : rows[t])] = true;
                int stray = 0;
                for (int r = 0; r < cache_rows; ++r)
                    if (!owned[r])
                        for (int i = 0; i < kvd; ++i) stray += fbits(k1[(size_t)r * kvd + i]) != 0xFFFFFFFFu;
                EXPECT_EQ(stray, 0) << "writes outside the tokens' cache rows";
            }
        }
    }
}

TEST(CudaFused, BadArgumentsAreSqErrors) {
    SKIP_WITHOUT_GPU();
    DevBuf<float> x(64);
    cuda::RowQuant rq;
    rq.q8 = reinterpret_cast<uint8_t*>(x.p);  // codes without scale / zero
    EXPECT_THROW(cuda::add_rmsnorm_quant(x.p, nullptr, x.p, 1, 8, 1e-5f, x.p, rq, nullptr), Error);
    EXPECT_THROW(cuda::silu_mul_rows(x.p, x.p, 4, 1, 8, x.p, cuda::RowQuant{}, nullptr), Error);  // ld < ff
    EXPECT_THROW(cuda::silu_mul_rows(x.p, x.p, 8, 1, 8, nullptr, cuda::RowQuant{}, nullptr), Error);  // no output
    EXPECT_THROW(cuda::rope_kv_store(x.p, 4, x.p, 8, x.p, 8, 1, 1, 1, 8, 0, nullptr, nullptr, nullptr, x.p, 16, 1.0f,
                                     x.p, x.p, x.p, nullptr),
                 Error);  // ldq < heads·hd
    int* rows = reinterpret_cast<int*>(x.p);
    EXPECT_THROW(cuda::rope_kv_store(x.p, 8, x.p, 8, x.p, 8, 1, 1, 1, 8, 0, nullptr, nullptr, rows, x.p, 16, 1.0f, x.p,
                                     x.p, x.p, nullptr),
                 Error);  // rows without positions
}

// Q8_0 GEMV (decode v6's lm_head, q8_gemv.cu) against the exact product on dequant(W):
// d·q is exact in float, so the only error is the float summation. Its order (per lane: a
// 16-term FMA chain, then fma(d, p, acc) over the lane's ceil(k/512) steps, then a 5-level
// butterfly) has depth D = 16 + ceil(k/512) + 5, hence |y − Σ x·w| ≤ γ_D·Σ|x·w| with
// γ_D = D·u/(1 − D·u), u = 2^-24 (Higham's bound for a summation tree of depth D; the sum is
// taken in double here). A row t's outputs are the same bits for every m (batch invariance);
// outputs poisoned, gaps of the output row stride untouched; pack = q8_dequant_row's values.
TEST(CudaQ8, GemvWithinFloatBound) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 71);
    struct Shape { int n, k; };
    for (Shape sh : {Shape{1, 32}, Shape{7, 64}, Shape{129, 576}, Shape{33, 2080}, Shape{1000, 4096},
                     Shape{17, 96}, Shape{300, 1536}}) {
        const int n = sh.n, k = sh.k, kb = k / 32;
        std::vector<BlockQ8> blocks((size_t)n * kb);
        std::uniform_int_distribution<int> code(-127, 127);
        std::uniform_real_distribution<float> scale(-12.0f, -2.0f);
        for (auto& b : blocks) {
            b.d = fp32_to_fp16(std::exp2(scale(rng)));
            for (auto& c : b.q) c = (int8_t)code(rng);
        }
        std::vector<int8_t> codes((size_t)n * k);
        std::vector<uint16_t> sc((size_t)n * kb);
        cuda::q8_gemv_pack(reinterpret_cast<const uint8_t*>(blocks.data()), n, k, codes.data(), sc.data());
        std::vector<float> w((size_t)n * k);
        for (int j = 0; j < n; ++j) q8_dequant_row(blocks.data() + (size_t)j * kb, k, w.data() + (size_t)j * k);
        int pack_bad = 0;
        for (size_t i = 0; i < w.size(); ++i)
            pack_bad += w[i] != fp16_to_fp32(sc[i / 32]) * (float)codes[i];
        EXPECT_EQ(pack_bad, 0) << "q8_gemv_pack";
        const int M = 8, ldx = k + 4, ldy = n + 3;
        std::vector<float> x = gaussian((size_t)M * ldx, rng, 1.5f);
        DevBuf<int8_t> dc(codes);
        DevBuf<uint16_t> dd(sc);
        DevBuf<float> dx(x);
        std::vector<std::vector<float>> ys;
        for (int m : {1, 2, 3, 5, 8}) {
            DevBuf<float> dy((size_t)m * ldy);
            cuda::q8_gemv(dx.p, ldx, m, dc.p, dd.p, n, k, dy.p, ldy, nullptr);
            ys.push_back(dy.get());
        }
        const int D = 16 + (k + 511) / 512 + 5;
        const double u = std::ldexp(1.0, -24), gamma = D * u / (1 - D * u);
        int over = 0, poison = 0, varies = 0;
        double worst = 0;
        for (size_t c = 0; c < ys.size(); ++c) {
            const int m = (int)(ys[c].size() / ldy);
            for (int t = 0; t < m; ++t) {
                for (int j = 0; j < n; ++j) {
                    double sum = 0, mag = 0;
                    for (int i = 0; i < k; ++i) {
                        const double p = (double)x[(size_t)t * ldx + i] * w[(size_t)j * k + i];
                        sum += p, mag += std::fabs(p);
                    }
                    const float y = ys[c][(size_t)t * ldy + j];
                    const double err = std::fabs(y - sum);
                    over += !(err <= gamma * mag);
                    worst = std::max(worst, err / (gamma * mag + 1e-300));
                    varies += std::memcmp(&y, &ys[0][j], 4) != 0 && t == 0;
                }
                for (int j = n; j < ldy; ++j) poison += fbits(ys[c][(size_t)t * ldy + j]) != 0xCDCDCDCDu;
            }
        }
        const std::string what = str("n ", n, " k ", k);
        EXPECT_EQ(over, 0) << what << ": outputs beyond γ_D·Σ|x·w|";
        EXPECT_EQ(poison, 0) << what << ": writes into the row stride's gap";
        EXPECT_EQ(varies, 0) << what << ": row 0 differs between batch sizes";
        std::printf("[cuda] q8_gemv %s: worst error %.3f of the bound, %d over\n", what.c_str(), worst, over);
    }
    DevBuf<float> x(64), y(64);
    DevBuf<int8_t> c(64);
    DevBuf<uint16_t> d(2);
    EXPECT_THROW(cuda::q8_gemv(x.p, 32, 9, c.p, d.p, 1, 32, y.p, 1, nullptr), Error);   // m > 8
    EXPECT_THROW(cuda::q8_gemv(x.p, 48, 1, c.p, d.p, 1, 48, y.p, 1, nullptr), Error);   // k % 32 != 0
    EXPECT_THROW(cuda::q8_gemv(x.p + 1, 32, 1, c.p, d.p, 1, 32, y.p, 1, nullptr), Error);  // x unaligned
}

#endif  // SPECQUANT_HAS_CUDA
