// Tensor-core flash attention (attention_flash.cu; compiled only with -DSPECQUANT_CUDA=ON,
// skipped without a device): attention_flash / attention_flash_varlen against a float64
// host reference of the same semantics (causal GQA, pos0 > 0, varlen sequences), over an
// fp32 cache and the packed KV4 cache with and without k_shift, awkward shapes, outputs
// poisoned with NaN first. Every element must lie within a bound derived from the fp16
// rounding of the inputs (flash_bound below); the FP32 kernel (attention()) is checked
// against the same bound, and both kernels' worst error / bound are printed.
// Run: build-gpu/specquant_tests --gtest_filter='CudaFlash.*'
#ifdef SPECQUANT_HAS_CUDA
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "core/error.h"
#include "kernels/cuda/ops_cuda.h"
#include "test_cuda_util.h"
#include "test_random.h"

using namespace sq;

namespace {

// Error bound of one output element (row of query q over keys [lo, lim), dim d).
// u = 2⁻¹¹, the unit roundoff of fp16 (round to nearest).
//  - Scores: the kernel rounds q and k to fp16 (fp32 cache) or only q (packed: codes exact,
//    S = s·(q·c − z·Σq) + q·k_shift, the last term equal for all keys and dropped by the
//    softmax), so |ΔS_j| ≤ scale·(2u + u²)·Σ_d|q_d|·|k_jd| (≤ with |k| + |k_shift| in place of
//    |k| for the packed form; u, not 2u, there), plus fp32 accumulation over hd products,
//    with cancellation in the packed form: ≤ scale·hd·2⁻²²·Σ|q|·max_d(|k_jd| + |shift_d|),
//    plus 2⁻²⁵ absolute per fp16 subnormal operand. E = max_j |ΔS_j|.
//  - Softmax of logits perturbed by at most E: every normalized weight moves by a factor in
//    [e^{−2E}, e^{2E}], so the output moves by at most (e^{2E} − 1)·max_j |v_jd|.
//  - P (or p·s_v when packed) rounded to fp16: relative u while normal, absolute 2⁻²⁵ below
//    6.1e-5 (subnormal); the denominator Σp (≥ 1, the max key has p = 1) stays fp32:
//    u·max|v| + n_keys·2⁻²⁵·(max|v|, or 15 code units when packed).
//  - V rounded to fp16 (fp32 cache only): u·max|v|.
//  - fp32 accumulation of O over the key tiles (and o − Σp·s·z when packed): 2⁻²⁰ per
//    64-key tile of the magnitudes involved (max|v|, or 15·max s_v when packed).
double flash_bound(double E, double vmax, int nkeys, bool packed, double smax) {
    const double u = std::ldexp(1.0, -11);
    const double sub = nkeys * std::ldexp(1.0, -25) * (packed ? 15.0 * smax : vmax);
    const double acc = std::ldexp(1.0, -20) * (1.0 + nkeys / 64.0) * (vmax + (packed ? 15.0 * smax : 0.0));
    // + 2⁻²⁴: fp16 subnormal values of v (fp32 cache), absolute 2⁻²⁵ each, averaged by P.
    return (std::expm1(2.0 * E) + (packed ? 1.0 : 2.0) * u) * vmax + sub + acc + std::ldexp(1.0, -24);
}

enum class Cache { f32, packed, packed_shift };
const char* cache_name(Cache c) { return c == Cache::f32 ? "fp32" : c == Cache::packed ? "kv4" : "kv4+shift"; }

// A cache of `rows` rows and its host copy: fp32 (random values) or packed KV4 written by
// kv_store from random keys/values (k_shift optional); kc/vc then hold the same values
// fake-quantized in fp32 (what the FP32 kernel and the reference read).
struct TestCache {
    int rows, kv, hd;
    Cache mode;
    std::vector<float> kc, vc, shift;  // host
    std::vector<float2> vp;            // packed: (scale, zero) of V per vector
    DevBuf<float> dkc, dvc, dshift;
    DevBuf<uint8_t> pk_k, pk_v;
    DevBuf<float2> pk_kp, pk_vp;
    TestCache(int rows_, int kv_, int hd_, Cache m, std::mt19937& rng)
        : rows(rows_), kv(kv_), hd(hd_), mode(m), dkc((size_t)rows_ * kv_ * hd_), dvc((size_t)rows_ * kv_ * hd_),
          dshift((size_t)kv_ * hd_), pk_k((size_t)rows_ * kv_ * cuda::kv_packed_bytes(hd_)),
          pk_v((size_t)rows_ * kv_ * cuda::kv_packed_bytes(hd_)), pk_kp((size_t)rows_ * kv_), pk_vp((size_t)rows_ * kv_) {
        const size_t count = (size_t)rows * kv * hd;
        // Keys with a per-(head, dim) offset (what k_shift removes), values plain.
        std::vector<float> off = gaussian((size_t)kv * hd, rng, 1.5f);
        std::vector<float> k = gaussian(count, rng, 1.5f), v = gaussian(count, rng, 1.0f);
        for (size_t i = 0; i < count; ++i) k[i] += off[i % ((size_t)kv * hd)];
        if (mode == Cache::f32) {
            dkc.put(k), dvc.put(v);
            kc = k, vc = v;
            return;
        }
        shift = off;
        for (auto& s : shift) s *= 0.9f;  // not the exact offset: the residual still matters
        dshift.put(shift);
        DevBuf<float> dk(k), dv(v);
        cuda::kv_store(dk.p, dv.p, rows, kv, hd, 4, 1.0f, dkc.p, dvc.p, nullptr, nullptr,
                       mode == Cache::packed_shift ? dshift.p : nullptr, packed());
        kc = dkc.get(), vc = dvc.get(), vp = pk_vp.get();
        if (mode != Cache::packed_shift) std::fill(shift.begin(), shift.end(), 0.0f);
    }
    cuda::KvPacked packed() const {
        if (mode == Cache::f32) return {};
        cuda::KvPacked p;
        p.k = pk_k.p, p.v = pk_v.p, p.kp = pk_kp.p, p.vp = pk_vp.p;
        p.k_shift = mode == Cache::packed_shift ? dshift.p : nullptr;
        return p;
    }
    // What a kernel reads: fp32 pointers for the fp32 cache, the packed view otherwise.
    const float* k_ptr() const { return mode == Cache::f32 ? dkc.p : nullptr; }
    const float* v_ptr() const { return mode == Cache::f32 ? dvc.p : nullptr; }
};

struct ErrStats {
    double max_err = 0, max_ratio = 0;
    long bad = 0;
    void add(double err, double bound) {
        max_err = std::max(max_err, err);
        max_ratio = std::max(max_ratio, err / bound);
        bad += !(err <= bound);  // NaN (an unwritten, poisoned output) counts as bad
    }
};

// Float64 reference of query rows [t0, t0 + n) (q [n, heads, hd]), token t's keys [lo[t], lim[t])
// of the cache, compared with got (and got2) element by element against flash_bound.
// codes: the bound of FlashKv4::codes (packed cache as exact codes), else of fp16 K and V.
void check_rows(const std::vector<float>& q, int n, int heads, const TestCache& c, const std::vector<int>& lo,
                const std::vector<int>& lim, const std::vector<float>& got, ErrStats& st, bool codes,
                const std::vector<float>* got2 = nullptr, ErrStats* st2 = nullptr) {
    const int hd = c.hd, kv = c.kv, group = heads / kv;
    const double scale = 1.0 / std::sqrt((double)hd);
    const bool packed = codes;
    std::vector<double> s, o(hd), vmax(hd);
    for (int t = 0; t < n; ++t) {
        for (int h = 0; h < heads; ++h) {
            const int g = h / group;
            const float* qr = &q[((size_t)t * heads + h) * hd];
            const float* sh = packed ? c.shift.data() + (size_t)g * hd : nullptr;
            double qa = 0;
            for (int d = 0; d < hd; ++d) qa += std::fabs(qr[d]);
            const int nk = lim[t] - lo[t];
            s.assign(nk, 0.0);
            double mx = -1e300, E = 0, smax = 0;
            std::fill(vmax.begin(), vmax.end(), 0.0);
            for (int j = 0; j < nk; ++j) {
                const size_t base = ((size_t)(lo[t] + j) * kv + g) * hd;
                double dot = 0, a = 0, mk = 0, ks = 0;
                for (int d = 0; d < hd; ++d) {
                    const double k = c.kc[base + d], ka = std::fabs(k) + (packed ? std::fabs(sh[d]) : 0.0);
                    dot += (double)qr[d] * k;
                    a += std::fabs(qr[d]) * ka;
                    mk = std::max(mk, ka);
                    ks += ka;
                    vmax[d] = std::max(vmax[d], (double)std::fabs(c.vc[base + d]));
                }
                s[j] = dot * scale;
                mx = std::max(mx, s[j]);
                // fp16 rounding of q (and of k, fp32 cache): relative u each; below 6.1e-5 (subnormal)
                // absolute 2⁻²⁵ instead; fp32 accumulation (and the packed form's cancellation).
                const double f = packed ? 1.001 : 2.001;
                E = std::max(E, scale * (f * std::ldexp(1.0, -11) * a + hd * std::ldexp(1.0, -22) * qa * mk +
                                         std::ldexp(1.0, -24) * (ks + qa)));
                if (packed) smax = std::max(smax, (double)c.vp[(size_t)(lo[t] + j) * kv + g].x);
            }
            double l = 0;
            std::fill(o.begin(), o.end(), 0.0);
            for (int j = 0; j < nk; ++j) {
                const double p = std::exp(s[j] - mx);
                l += p;
                const float* vr = &c.vc[((size_t)(lo[t] + j) * kv + g) * hd];
                for (int d = 0; d < hd; ++d) o[d] += p * vr[d];
            }
            for (int d = 0; d < hd; ++d) {
                const double ref = o[d] / l, b = flash_bound(E, vmax[d], nk, packed, smax);
                const size_t i = ((size_t)t * heads + h) * hd + d;
                st.add(std::fabs(got[i] - ref), b);
                if (got2) st2->add(std::fabs((*got2)[i] - ref), b);
            }
        }
    }
}

struct Shape {
    int heads, kv;
};

}  // namespace

// One sequence of n queries at positions pos0.. over cache rows [0, pos0 + n): the flash
// kernel (packed cache: as values and as codes) and the FP32 kernel against the reference,
// within the derived bound; with values, the packed cache gives the fp32 cache's bits.
TEST(CudaFlash, CausalMatchesReferenceWithinBound) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 71);
    for (int hd : {64, 128}) {
        for (Cache mode : {Cache::f32, Cache::packed, Cache::packed_shift}) {
          for (cuda::FlashKv4 kv4 : {cuda::FlashKv4::values, cuda::FlashKv4::codes}) {
            if (mode == Cache::f32 && kv4 == cuda::FlashKv4::codes) continue;
            const bool codes = kv4 == cuda::FlashKv4::codes;
            ErrStats fl, f32;
            int cases = 0;
            long value_bits = 0;
            auto run = [&](int n, int pos0, Shape sh) {
                const int rows = pos0 + n;
                TestCache c(rows, sh.kv, hd, mode, rng);
                const std::vector<float> q = gaussian((size_t)n * sh.heads * hd, rng, 1.5f);
                DevBuf<float> dq(q), o1((size_t)n * sh.heads * hd), o2((size_t)n * sh.heads * hd);
                o1.poison(0xFF), o2.poison(0xFF);  // NaN: an unwritten element fails the bound
                cuda::attention_flash(dq.p, c.k_ptr(), c.v_ptr(), n, pos0, nullptr, sh.heads, sh.kv, hd, o1.p, nullptr,
                                      c.packed(), kv4);
                cuda::attention(dq.p, c.k_ptr(), c.v_ptr(), n, pos0, nullptr, sh.heads, sh.kv, hd, o2.p, nullptr,
                                c.packed());
                if (mode != Cache::f32 && !codes) {  // the same values through the fp32 cache path: same bits
                    DevBuf<float> o3((size_t)n * sh.heads * hd);
                    cuda::attention_flash(dq.p, c.dkc.p, c.dvc.p, n, pos0, nullptr, sh.heads, sh.kv, hd, o3.p,
                                          nullptr);
                    const auto a = o1.get(), b = o3.get();
                    for (size_t i = 0; i < a.size(); ++i) value_bits += std::memcmp(&a[i], &b[i], 4) != 0;
                }
                std::vector<int> lo(n, 0), lim(n);
                for (int t = 0; t < n; ++t) lim[t] = pos0 + t + 1;
                const std::vector<float> g1 = o1.get(), g2 = o2.get();
                const long bad0 = fl.bad;
                check_rows(q, n, sh.heads, c, lo, lim, g1, fl, codes, &g2, &f32);
                EXPECT_EQ(fl.bad, bad0) << "n " << n << " pos0 " << pos0 << " heads " << sh.heads << "/" << sh.kv
                                        << " hd " << hd << " " << cache_name(mode) << (codes ? " codes" : "");
                ++cases;
            };
            for (Shape sh : {Shape{3, 3}, Shape{9, 3}, Shape{8, 2}})
                for (int n : {1, 2, 17, 64, 129, 200})
                    for (int pos0 : {0, 45}) run(n, pos0, sh);
            run(1000, 0, Shape{8, 2});
            run(1000, 3, Shape{9, 3});
            EXPECT_EQ(f32.bad, 0) << "the FP32 kernel outside the bound";
            EXPECT_EQ(value_bits, 0) << "packed (values) and fp32 cache differ, hd " << hd << " " << cache_name(mode);
            std::printf("[cuda] flash hd %d %s%s: %d cases, flash max|err| %.3e (max err/bound %.3f), "
                        "f32 kernel max|err| %.3e (%.4f)\n",
                        hd, cache_name(mode), codes ? " as codes" : "", cases, fl.max_err, fl.max_ratio, f32.max_err,
                        f32.max_ratio);
          }
        }
    }
}

// Head sizes other than 64 and 128 run the FP32 kernel: the same bits as attention().
TEST(CudaFlash, OtherHeadSizesFallBackToFp32Kernel) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 72);
    for (int hd : {7, 40, 100, 256}) {
        for (Cache mode : {Cache::f32, Cache::packed_shift}) {
            const int n = 33, pos0 = 5, heads = 6, kv = 2;
            TestCache c(pos0 + n, kv, hd, mode, rng);
            const std::vector<float> q = gaussian((size_t)n * heads * hd, rng);
            DevBuf<float> dq(q), o1((size_t)n * heads * hd), o2((size_t)n * heads * hd);
            o1.poison(0xFF), o2.poison(0xFF);
            cuda::attention_flash(dq.p, c.k_ptr(), c.v_ptr(), n, pos0, nullptr, heads, kv, hd, o1.p, nullptr,
                                  c.packed());
            cuda::attention(dq.p, c.k_ptr(), c.v_ptr(), n, pos0, nullptr, heads, kv, hd, o2.p, nullptr, c.packed());
            const auto a = o1.get(), b = o2.get();
            EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0) << "hd " << hd << " " << cache_name(mode);
            EXPECT_FALSE(std::isnan(a[0]));
        }
    }
    EXPECT_FALSE(cuda::attention_flash_supported(100));
    EXPECT_TRUE(cuda::attention_flash_supported(128));
}

// Packed sequences (varlen): with the 64-row block table every row within the bound and each
// sequence bit for bit attention_flash on that sequence alone; without a table (blocks may
// straddle sequences) still within the bound.
TEST(CudaFlash, VarlenMatchesReferenceAndSingleSequences) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 73);
    const std::vector<int> lens = {17, 1, 129, 64, 2, 200, 3};
    int n = 0;
    for (int l : lens) n += l;
    std::vector<int> pos(n), lo(n), lim(n), start;
    for (int s = 0, t = 0; s < (int)lens.size(); ++s) {
        start.push_back(t);
        for (int i = 0; i < lens[s]; ++i, ++t) pos[t] = i, lo[t] = t - i, lim[t] = t + 1;
    }
    for (int hd : {64, 128}) {
        for (Shape sh : {Shape{9, 3}, Shape{8, 2}, Shape{5, 5}}) {
            for (Cache mode : {Cache::f32, Cache::packed_shift}) {
                TestCache c(n, sh.kv, hd, mode, rng);
                const size_t qd = (size_t)sh.heads * hd;
                const std::vector<float> q = gaussian((size_t)n * qd, rng, 1.5f);
                DevBuf<float> dq(q), o1(n * qd), o2(n * qd), o3(n * qd);
                DevBuf<int> dpos(pos);
                const std::vector<int> tbl = cuda::attention_flash_blocks(lens, sh.heads / sh.kv);
                DevBuf<int> dtbl(tbl);
                o1.poison(0xFF), o2.poison(0xFF), o3.poison(0xFF);
                cuda::attention_flash_varlen(dq.p, c.k_ptr(), c.v_ptr(), n, dpos.p, sh.heads, sh.kv, hd, o1.p, nullptr,
                                             dtbl.p, (int)tbl.size() / 2, c.packed());
                cuda::attention_flash_varlen(dq.p, c.k_ptr(), c.v_ptr(), n, dpos.p, sh.heads, sh.kv, hd, o2.p, nullptr,
                                             nullptr, 0, c.packed());
                // Each sequence alone, its cache region viewed from its first row.
                const size_t kvd = (size_t)sh.kv * hd;
                for (size_t s = 0; s < lens.size(); ++s) {
                    const int r0 = start[s];
                    cuda::KvPacked p = cuda::kv_packed_at(c.packed(), r0, sh.kv, hd);
                    cuda::attention_flash(dq.p + r0 * qd, c.k_ptr() ? c.k_ptr() + r0 * kvd : nullptr,
                                          c.v_ptr() ? c.v_ptr() + r0 * kvd : nullptr, lens[s], 0, nullptr, sh.heads,
                                          sh.kv, hd, o3.p + r0 * qd, nullptr, p);
                }
                const auto g1 = o1.get(), g2 = o2.get(), g3 = o3.get();
                EXPECT_EQ(std::memcmp(g1.data(), g3.data(), g1.size() * 4), 0)
                    << "varlen with table vs single sequences, hd " << hd << " heads " << sh.heads << "/" << sh.kv
                    << " " << cache_name(mode);
                ErrStats a, b;
                check_rows(q, n, sh.heads, c, lo, lim, g1, a, false, &g2, &b);
                EXPECT_EQ(a.bad, 0) << "varlen (table) hd " << hd << " heads " << sh.heads << "/" << sh.kv;
                EXPECT_EQ(b.bad, 0) << "varlen (no table) hd " << hd << " heads " << sh.heads << "/" << sh.kv;
                std::printf("[cuda] flash varlen hd %d heads %d/%d %s: max|err| %.3e (err/bound %.3f), "
                            "no table %.3e (%.3f)\n",
                            hd, sh.heads, sh.kv, cache_name(mode), a.max_err, a.max_ratio, b.max_err, b.max_ratio);
            }
        }
    }
}

// Position from the device (pos_dev, graph replay): the same bits as pos0 on the host.
TEST(CudaFlash, DevicePositionEqualsHostPosition) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 74);
    const int n = 40, pos0 = 70, heads = 8, kv = 2, hd = 128;
    TestCache c(pos0 + n, kv, hd, Cache::packed, rng);
    const std::vector<float> q = gaussian((size_t)n * heads * hd, rng);
    DevBuf<float> dq(q), o1((size_t)n * heads * hd), o2((size_t)n * heads * hd);
    DevBuf<int> dp(std::vector<int>{pos0 - 30});
    cuda::attention_flash(dq.p, nullptr, nullptr, n, pos0, nullptr, heads, kv, hd, o1.p, nullptr, c.packed());
    cuda::attention_flash(dq.p, nullptr, nullptr, n, 30, dp.p, heads, kv, hd, o2.p, nullptr, c.packed());
    const auto a = o1.get(), b = o2.get();
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
}

TEST(CudaFlash, BadArgumentsAreClearErrors) {
    SKIP_WITHOUT_GPU();
    DevBuf<float> x(64 * 128);
    EXPECT_THROW(cuda::attention_flash(x.p, x.p, x.p, 1, 0, nullptr, 6, 4, 128, x.p, nullptr), sq::Error);
    EXPECT_THROW(cuda::attention_flash(x.p, nullptr, nullptr, 1, 0, nullptr, 8, 2, 128, x.p, nullptr), sq::Error);
    EXPECT_THROW(cuda::attention_flash_varlen(x.p, x.p, x.p, 1, nullptr, 8, 2, 128, x.p, nullptr), sq::Error);
    EXPECT_THROW(cuda::attention_flash_blocks({3, 0}, 2), sq::Error);
}
#endif
