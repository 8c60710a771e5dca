// Decode v5 kernels (compiled only with -DSPECQUANT_CUDA=ON; skipped without a device):
//   - the packed KV cache (cuda::KvPacked) written by kv_store, kv_store_rows and
//     rope_kv_store holds exactly the fake-quantized fp32 cache's values: unpacked here on
//     the host with the same two rounded operations, memcmp;
//   - attention_decode v5 (one kernel, merge by the last block, o's codes by the last head)
//     over the fp32 and the packed cache equals v4 (part + merge kernels) bit for bit, and
//     attention() over the packed cache equals attention() over the fp32 cache.
//   - attention_decode v6 (decode v6: a cluster per (sequence, KV head), DSMEM merge) = v4.
// Run: build-gpu/specquant_tests --gtest_filter='CudaKv4.*'
#ifdef SPECQUANT_HAS_CUDA
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>

#include "core/error.h"
#include "core/fp16.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ref/w4a4_ref.h"
#include "test_cuda_util.h"
#include "test_random.h"

using namespace sq;

namespace {

// Device buffers of a packed cache of `vectors` (token, KV head) vectors.
struct PackedBufs {
    DevBuf<uint8_t> k, v;
    DevBuf<float2> kp, vp;
    PackedBufs(size_t vectors, int hd)
        : k(vectors * cuda::kv_packed_bytes(hd)), v(vectors * cuda::kv_packed_bytes(hd)), kp(vectors), vp(vectors) {}
    cuda::KvPacked view(const float* shift = nullptr) const {
        cuda::KvPacked p;
        p.k = k.p, p.v = v.p, p.kp = kp.p, p.vp = vp.p, p.k_shift = shift;
        return p;
    }
};

// Host unpacking of vector i, element d: (code − zero)·scale (+ shift), each step rounded to
// float (volatile: no contraction into an FMA by the host compiler).
float unpack(const std::vector<uint8_t>& codes, const std::vector<float2>& par, size_t i, int d, int hd,
             const float* sh) {
    const uint8_t b = codes[i * cuda::kv_packed_bytes(hd) + d / 2];
    const int c = (d & 1) ? b >> 4 : b & 15;
    volatile float r = (float)(c - (int)par[i].y) * par[i].x;
    return sh ? r + sh[d] : (float)r;
}

// Packed (unpacked on the host) vs fp32 over `vectors` vectors starting at vector v0; the
// count of differing bits, and of codes out of range / zero points that are not integers.
int packed_mismatches(const PackedBufs& pb, const DevBuf<float>& kc, const DevBuf<float>& vc, size_t v0,
                      size_t vectors, int kv, int hd, const std::vector<float>* shift) {
    const auto kq = pb.k.get(), vq = pb.v.get();
    const auto kp = pb.kp.get(), vp = pb.vp.get();
    const auto kf = kc.get(), vf = vc.get();
    int bad = 0;
    for (size_t i = v0; i < v0 + vectors; ++i) {
        bad += kp[i].y != std::floor(kp[i].y) || vp[i].y != std::floor(vp[i].y);
        const float* sh = shift ? shift->data() + (i % kv) * hd : nullptr;
        for (int d = 0; d < hd; ++d) {
            const float a = unpack(kq, kp, i, d, hd, sh), b = unpack(vq, vp, i, d, hd, nullptr);
            bad += std::memcmp(&a, &kf[i * hd + d], 4) != 0 || std::memcmp(&b, &vf[i * hd + d], 4) != 0;
        }
    }
    return bad;
}

}  // namespace

TEST(CudaKv4, PackedStoresEqualFakeQuantCache) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 41);
    for (int hd : {7, 16, 64, 100, 128}) {
        for (int bits : {2, 3, 4}) {
            for (bool shifted : {false, true}) {
                const int n = 17, kv = 3, heads = 6, rows = 40;
                const std::vector<float> shift = gaussian((size_t)kv * hd, rng, 2.0f);
                const std::vector<float> k = gaussian((size_t)n * kv * hd, rng, 3.0f),
                                         v = gaussian((size_t)n * kv * hd, rng, 1.5f);
                DevBuf<float> dk(k), dv(v), ds(shift), kc((size_t)rows * kv * hd), vc((size_t)rows * kv * hd);
                DevBuf<int> pos(std::vector<int>{5});
                PackedBufs pb((size_t)rows * kv, hd);
                const float* sp = shifted ? ds.p : nullptr;
                const std::vector<float>* shp = shifted ? &shift : nullptr;
                // kv_store from position 5: fp32 and packed in one call; untouched vectors keep their poison.
                cuda::kv_store(dk.p, dv.p, n, kv, hd, bits, 0.95f, kc.p, vc.p, pos.p, nullptr, sp, pb.view());
                EXPECT_EQ(packed_mismatches(pb, kc, vc, 5 * kv, (size_t)n * kv, kv, hd, shp), 0)
                    << "kv_store hd " << hd << " bits " << bits << " shifted " << shifted;
                const auto kq = pb.k.get();
                EXPECT_EQ(kq[0], 0xCD) << "kv_store wrote before its first row";
                EXPECT_EQ(kq[(size_t)(5 + n) * kv * cuda::kv_packed_bytes(hd)], 0xCD) << "kv_store wrote past its rows";
                // kv_store_rows, packed alone (no fp32 cache) vs kv_store_rows into fp32.
                std::vector<int> r(n);
                for (int t = 0; t < n; ++t) r[t] = (7 * t + 3) % rows;
                DevBuf<int> dr(r);
                DevBuf<float> kc2((size_t)rows * kv * hd), vc2((size_t)rows * kv * hd);
                PackedBufs pb2((size_t)rows * kv, hd);
                cuda::kv_store_rows(dk.p, dv.p, n, kv, hd, bits, 0.95f, kc2.p, vc2.p, dr.p, nullptr, sp);
                cuda::kv_store_rows(dk.p, dv.p, n, kv, hd, bits, 0.95f, nullptr, nullptr, dr.p, nullptr, sp, pb2.view());
                int bad = 0;
                for (int t = 0; t < n; ++t) bad += packed_mismatches(pb2, kc2, vc2, (size_t)r[t] * kv, kv, kv, hd, shp);
                EXPECT_EQ(bad, 0) << "kv_store_rows packed-only hd " << hd << " bits " << bits;
                // rope_kv_store (fused q|k|v rows, one sequence at *pos), packed alone vs fp32.
                const int ld = (heads + 2 * kv) * hd;
                const std::vector<float> qkv = gaussian((size_t)n * ld, rng, 2.0f);
                std::vector<float> inv(std::max(1, hd / 2));
                for (size_t i = 0; i < inv.size(); ++i) inv[i] = std::pow(10000.0f, -2.0f * i / hd);
                DevBuf<float> dqkv(qkv), dinv(inv), q1((size_t)n * heads * hd), q2((size_t)n * heads * hd),
                    kc3((size_t)rows * kv * hd), vc3((size_t)rows * kv * hd);
                PackedBufs pb3((size_t)rows * kv, hd);
                const float* b = dqkv.p;
                cuda::rope_kv_store(b, ld, b + heads * hd, ld, b + (heads + kv) * hd, ld, n, heads, kv, hd, 0, pos.p,
                                    nullptr, nullptr, dinv.p, bits, 0.95f, q1.p, kc3.p, vc3.p, nullptr, sp);
                cuda::rope_kv_store(b, ld, b + heads * hd, ld, b + (heads + kv) * hd, ld, n, heads, kv, hd, 0, pos.p,
                                    nullptr, nullptr, dinv.p, bits, 0.95f, q2.p, nullptr, nullptr, nullptr, sp,
                                    pb3.view());
                EXPECT_EQ(packed_mismatches(pb3, kc3, vc3, 5 * kv, (size_t)n * kv, kv, hd, shp), 0)
                    << "rope_kv_store packed-only hd " << hd << " bits " << bits;
                const auto a1 = q1.get(), a2 = q2.get();
                EXPECT_EQ(std::memcmp(a1.data(), a2.data(), a1.size() * 4), 0) << "rope_kv_store q";
            }
        }
    }
    // A packed cache needs bits ≤ 4; some cache must be given.
    DevBuf<float> x(64);
    PackedBufs pb(4, 16);
    EXPECT_THROW(cuda::kv_store(x.p, x.p, 1, 1, 16, 8, 1.0f, x.p, x.p, nullptr, nullptr, nullptr, pb.view()), Error);
    EXPECT_THROW(cuda::kv_store(x.p, x.p, 1, 1, 16, 4, 1.0f, nullptr, nullptr, nullptr, nullptr), Error);
}

TEST(CudaKv4, DecodeAttentionV5IsBitIdentical) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 43);
    const std::vector<int> len = {1, 2, 31, 32, 33, 200, 64, 129};  // keys per sequence
    const int B = (int)len.size(), S = 208;
    struct Shape { int heads, kv, hd; };
    for (Shape sh : {Shape{4, 2, 16}, Shape{9, 3, 64}, Shape{32, 8, 128}, Shape{4, 4, 40}, Shape{3, 1, 7},
                     Shape{16, 1, 256}, Shape{6, 2, 100}}) {
        const int qd = sh.heads * sh.hd, kvd = sh.kv * sh.hd;
        const std::vector<float> q = gaussian((size_t)B * qd, rng, 2.0f);
        const std::vector<float> k = gaussian((size_t)B * S * kvd, rng, 2.0f), v = gaussian((size_t)B * S * kvd, rng),
                                 shift = gaussian((size_t)kvd, rng);
        std::vector<int> rows(B), pos(B);
        for (int b = 0; b < B; ++b) rows[b] = b * S + len[b] - 1, pos[b] = len[b] - 1;
        DevBuf<float> dq(q), dk(k), dv(v), ds(shift), kc((size_t)B * S * kvd), vc((size_t)B * S * kvd);
        DevBuf<int> drows(rows), dpos(pos);
        PackedBufs pb((size_t)B * S * sh.kv, sh.hd);
        // Every row of both caches from the same keys (around a shift) and values, KV4.
        cuda::kv_store(dk.p, dv.p, B * S, sh.kv, sh.hd, 4, 0.95f, kc.p, vc.p, nullptr, nullptr, ds.p, pb.view());
        const size_t scratch = cuda::attention_decode_scratch(B, sh.heads, sh.hd, S);
        DevBuf<float> part(scratch), part5(scratch);
        DevBuf<int> cnt(std::vector<int>(cuda::attention_decode_counters(B, sh.kv), 0));
        auto out = [&] { return DevBuf<float>((size_t)B * qd); };
        DevBuf<float> o4 = out(), o5 = out(), o5p = out(), o5p2 = out();
        cuda::attention_decode(dq.p, kc.p, vc.p, B, drows.p, dpos.p, sh.heads, sh.kv, sh.hd, S, part.p, o4.p, nullptr);
        cuda::attention_decode(dq.p, kc.p, vc.p, B, drows.p, dpos.p, sh.heads, sh.kv, sh.hd, S, part5.p, o5.p, nullptr,
                               cuda::RowQuant{}, cnt.p);
        cuda::attention_decode(dq.p, nullptr, nullptr, B, drows.p, dpos.p, sh.heads, sh.kv, sh.hd, S, part5.p, o5p.p,
                               nullptr, cuda::RowQuant{}, cnt.p, pb.view(ds.p));
        // again: the counters were left at zero
        cuda::attention_decode(dq.p, nullptr, nullptr, B, drows.p, dpos.p, sh.heads, sh.kv, sh.hd, S, part5.p, o5p2.p,
                               nullptr, cuda::RowQuant{}, cnt.p, pb.view(ds.p));
        const auto a4 = o4.get(), a5 = o5.get(), a5p = o5p.get(), a5p2 = o5p2.get();
        int d5 = 0, d5p = 0, d5p2 = 0, nan = 0;
        for (size_t i = 0; i < a4.size(); ++i) {
            d5 += std::memcmp(&a4[i], &a5[i], 4) != 0;
            d5p += std::memcmp(&a4[i], &a5p[i], 4) != 0;
            d5p2 += std::memcmp(&a4[i], &a5p2[i], 4) != 0;
            nan += a4[i] != a4[i];
        }
        const std::string what = str(sh.heads, "/", sh.kv, " heads, hd ", sh.hd);
        EXPECT_EQ(nan, 0) << what;
        EXPECT_EQ(d5, 0) << what << ": v5 over fp32 vs v4";
        EXPECT_EQ(d5p, 0) << what << ": v5 over packed vs v4";
        EXPECT_EQ(d5p2, 0) << what << ": v5 second call";
        const auto c = cnt.get();
        EXPECT_EQ(std::count(c.begin(), c.end(), 0), (long)c.size()) << what << ": counters not reset";
        // o's codes and bf16 copy from v5's last block = v4's merge_rows = act_quant_ref(out).
        DevBuf<float> o6 = out(), sc(B);
        DevBuf<int32_t> zp(B);
        DevBuf<uint8_t> q8((size_t)B * qd);
        DevBuf<uint16_t> ob((size_t)B * qd);
        cuda::RowQuant rq;
        rq.bits = 4, rq.clip = 0.9f, rq.q8 = q8.p, rq.scale = sc.p, rq.zero = zp.p, rq.bf16 = ob.p;
        cuda::attention_decode(dq.p, nullptr, nullptr, B, drows.p, dpos.p, sh.heads, sh.kv, sh.hd, S, part5.p, o6.p,
                               nullptr, rq, cnt.p, pb.view(ds.p));
        const auto a6 = o6.get();
        const auto c6 = q8.get();
        const auto b6 = ob.get();
        const auto s6 = sc.get();
        const auto z6 = zp.get();
        std::vector<uint8_t> q_ref((size_t)B * qd);
        std::vector<float> s_ref(B);
        std::vector<int32_t> z_ref(B);
        act_quant_ref(a4.data(), B, qd, 4, 0.9f, q_ref.data(), s_ref.data(), z_ref.data());
        int d6 = 0, bad = 0;
        for (size_t i = 0; i < a6.size(); ++i) {
            d6 += std::memcmp(&a4[i], &a6[i], 4) != 0;
            bad += c6[i] != q_ref[i] || b6[i] != fp32_to_bf16(a4[i]);
        }
        for (int b = 0; b < B; ++b) bad += std::memcmp(&s6[b], &s_ref[b], 4) != 0 || z6[b] != z_ref[b];
        EXPECT_EQ(d6, 0) << what << ": v5 with codes, output";
        EXPECT_EQ(bad, 0) << what << ": v5 codes / scale / zero / bf16";
        // attention() (prefill kernel) over the packed cache = over fp32, sequence 5 (200 keys, 3 queries).
        const int n = 3, p0 = 197;
        DevBuf<float> oa((size_t)n * qd), ob2((size_t)n * qd);
        const size_t r0 = (size_t)5 * S;
        cuda::attention(dq.p, kc.p + r0 * kvd, vc.p + r0 * kvd, n, p0, nullptr, sh.heads, sh.kv, sh.hd, oa.p, nullptr);
        cuda::attention(dq.p, nullptr, nullptr, n, p0, nullptr, sh.heads, sh.kv, sh.hd, ob2.p, nullptr,
                        cuda::kv_packed_at(pb.view(ds.p), (int64_t)r0, sh.kv, sh.hd));
        const auto x1 = oa.get(), x2 = ob2.get();
        EXPECT_EQ(std::memcmp(x1.data(), x2.data(), x1.size() * 4), 0) << what << ": attention() packed vs fp32";
        std::printf("[cuda] decode v5 %s: %d / %d / %d of %zu outputs differ from v4 (fp32, packed, again), codes %d\n",
                    what.c_str(), d5, d5p, d5p2, a4.size(), bad);
    }
}

// Decode v6 (one thread-block cluster of 8 blocks per (sequence, KV head), partials merged over
// distributed shared memory) = v4 bit for bit, over the fp32 and the packed cache, at lengths
// that give each block several chunks (up to 35 chunks: 5 per block, staged in rounds of 3 for
// ≤ 4 sequences, of 1 for 8), plus its bf16 copy of the output; with o's codes asked, variant 6
// runs v5 (same outputs and codes as variant 5).
TEST(CudaKv4, DecodeAttentionV6IsBitIdentical) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 61);
    const std::vector<int> len = {1, 2, 31, 33, 257, 200, 544, 1100};  // keys per sequence
    const int B = (int)len.size(), S = 1104, B3 = 3, b3 = B - B3;        // b3..B−1: the 3-sequence call
    struct Shape { int heads, kv, hd; };
    std::vector<Shape> shapes = {Shape{4, 2, 16}, Shape{9, 3, 64},    Shape{32, 8, 128}, Shape{4, 4, 40},
                                 Shape{3, 1, 7},  Shape{16, 1, 256}, Shape{6, 2, 100},  Shape{12, 4, 128}};
    if (std::getenv("SQ_TEST_QUICK")) shapes = {Shape{32, 8, 128}, Shape{6, 2, 100}};  // racecheck: ~100x slower
    for (Shape sh : shapes) {
        const int qd = sh.heads * sh.hd, kvd = sh.kv * sh.hd;
        const std::vector<float> q = gaussian((size_t)B * qd, rng, 2.0f);
        const std::vector<float> k = gaussian((size_t)B * S * kvd, rng, 2.0f), v = gaussian((size_t)B * S * kvd, rng),
                                 shift = gaussian((size_t)kvd, rng);
        std::vector<int> rows(B), pos(B);
        for (int b = 0; b < B; ++b) rows[b] = b * S + len[b] - 1, pos[b] = len[b] - 1;
        DevBuf<float> dq(q), dk(k), dv(v), ds(shift), kc((size_t)B * S * kvd), vc((size_t)B * S * kvd);
        DevBuf<int> drows(rows), dpos(pos);
        PackedBufs pb((size_t)B * S * sh.kv, sh.hd);
        cuda::kv_store(dk.p, dv.p, B * S, sh.kv, sh.hd, 4, 0.95f, kc.p, vc.p, nullptr, nullptr, ds.p, pb.view());
        DevBuf<float> part(cuda::attention_decode_scratch(B, sh.heads, sh.hd, S));
        DevBuf<int> cnt(std::vector<int>(cuda::attention_decode_counters(B, sh.kv), 0));
        auto out = [&] { return DevBuf<float>((size_t)B * qd); };
        DevBuf<float> o4 = out(), o6 = out(), o6p = out(), o6p3 = out();
        DevBuf<uint16_t> ob((size_t)B * qd);
        cuda::attention_decode(dq.p, kc.p, vc.p, B, drows.p, dpos.p, sh.heads, sh.kv, sh.hd, S, part.p, o4.p, nullptr);
        cuda::attention_decode(dq.p, kc.p, vc.p, B, drows.p, dpos.p, sh.heads, sh.kv, sh.hd, S, part.p, o6.p, nullptr,
                               cuda::RowQuant{}, cnt.p, cuda::KvPacked{}, 6);
        cuda::RowQuant rb;
        rb.bf16 = ob.p;
        cuda::attention_decode(dq.p, nullptr, nullptr, B, drows.p, dpos.p, sh.heads, sh.kv, sh.hd, S, part.p, o6p.p,
                               nullptr, rb, cnt.p, pb.view(ds.p), 6);
        // the last 3 sequences (200, 544, 1100 keys): R = 3 (fewer where shared memory would pass 200 KB)
        o6p3.poison(0xCD);
        cuda::attention_decode(dq.p + (size_t)b3 * qd, nullptr, nullptr, B3, drows.p + b3, dpos.p + b3, sh.heads,
                               sh.kv, sh.hd, S, part.p, o6p3.p + (size_t)b3 * qd, nullptr, cuda::RowQuant{}, cnt.p,
                               pb.view(ds.p), 6);
        const auto a4 = o4.get(), a6 = o6.get(), a6p = o6p.get(), a6p3 = o6p3.get();
        const auto ab = ob.get();
        int d6 = 0, d6p = 0, d6p3 = 0, dbf = 0, nan = 0;
        for (size_t i = 0; i < a4.size(); ++i) {
            d6 += std::memcmp(&a4[i], &a6[i], 4) != 0;
            d6p += std::memcmp(&a4[i], &a6p[i], 4) != 0;
            if (i >= (size_t)b3 * qd) d6p3 += std::memcmp(&a4[i], &a6p3[i], 4) != 0;
            dbf += ab[i] != fp32_to_bf16(a4[i]);
            nan += a4[i] != a4[i];
        }
        // rows before b3 of the 3-sequence call's output were not to be written: poison intact
        int touched = 0;
        for (size_t i = 0; i < (size_t)b3 * qd; ++i) {
            uint32_t u;
            std::memcpy(&u, &a6p3[i], 4);
            touched += u != 0xCDCDCDCDu;
        }
        const std::string what = str(sh.heads, "/", sh.kv, " heads, hd ", sh.hd);
        EXPECT_EQ(nan, 0) << what;
        EXPECT_EQ(d6, 0) << what << ": v6 over fp32 vs v4";
        EXPECT_EQ(d6p, 0) << what << ": v6 over packed vs v4";
        EXPECT_EQ(d6p3, 0) << what << ": v6 over packed, 3 sequences, vs v4";
        EXPECT_EQ(dbf, 0) << what << ": v6 bf16 copy";
        EXPECT_EQ(touched, 0) << what << ": v6 wrote outside its sequences";
        std::printf("[cuda] decode v6 %s: %d / %d / %d of %zu outputs differ from v4 (fp32, packed, 3 seqs), bf16 %d\n",
                    what.c_str(), d6, d6p, d6p3, a4.size(), dbf);
    }
    // o's codes are v5's: variant 6 with q8 runs v5 (outputs and codes equal to variant 5's).
    {
        std::mt19937 r2(test_seed() + 62);
        const int heads = 8, kv = 2, hd = 32, S = 80, B = 2, qd = heads * hd, kvd = kv * hd;
        const std::vector<float> q = gaussian((size_t)B * qd, r2), k = gaussian((size_t)B * S * kvd, r2),
                                 v = gaussian((size_t)B * S * kvd, r2);
        DevBuf<float> dq(q), dk(k), dv(v), kc((size_t)B * S * kvd), vc((size_t)B * S * kvd);
        cuda::kv_store(dk.p, dv.p, B * S, kv, hd, 4, 0.95f, kc.p, vc.p, nullptr, nullptr);
        DevBuf<int> drows(std::vector<int>{40, S + 79}), dpos(std::vector<int>{40, 79});
        DevBuf<int> cnt(std::vector<int>(cuda::attention_decode_counters(B, kv), 0));
        DevBuf<float> part(cuda::attention_decode_scratch(B, heads, hd, S));
        std::vector<std::vector<float>> outs;
        std::vector<std::vector<uint8_t>> codes;
        for (int variant : {5, 6}) {
            DevBuf<float> o((size_t)B * qd), sc(B);
            DevBuf<int32_t> zp(B);
            DevBuf<uint8_t> q8((size_t)B * qd);
            cuda::RowQuant rq;
            rq.bits = 4, rq.clip = 0.9f, rq.q8 = q8.p, rq.scale = sc.p, rq.zero = zp.p;
            cuda::attention_decode(dq.p, kc.p, vc.p, B, drows.p, dpos.p, heads, kv, hd, S, part.p, o.p, nullptr, rq,
                                   cnt.p, cuda::KvPacked{}, variant);
            outs.push_back(o.get()), codes.push_back(q8.get());
        }
        EXPECT_EQ(std::memcmp(outs[0].data(), outs[1].data(), outs[0].size() * 4), 0) << "variant 6 with codes";
        EXPECT_EQ(codes[0], codes[1]) << "variant 6 with codes: o's codes";
    }
    DevBuf<float> x(64);
    DevBuf<int> r1(std::vector<int>{0}), p1(std::vector<int>{0}), c1(std::vector<int>(2, 0));
    EXPECT_THROW(cuda::attention_decode(x.p, x.p, x.p, 1, r1.p, p1.p, 4, 1, 16, 1, x.p, x.p, nullptr, cuda::RowQuant{},
                                        c1.p, cuda::KvPacked{}, 7),
                 Error);  // no variant 7
}
#endif
