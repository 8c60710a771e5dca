// The CUDA forward pass against the CPU model (compiled only with
// -DSPECQUANT_CUDA=ON; every test skips when no CUDA device is present).
//   - activation and KV quantization kernels equal the scalar reference bit for bit;
//   - FP32 fixtures: GPU logits vs the CPU Model ≤ 1e-4 relative, prefill and decode;
//   - hand-built W4A4 / W4A16 models (spectral branch, online Hadamard, bias,
//     KV4, qk rotation) and a pipeline-quantized one: GPU vs CPU;
//   - log-likelihood groups and perplexity windows: CUDA source vs ModelLoglik;
//   - varlen batches (packed sequences): kernels, the forward and the batched
//     source against each sequence / document alone (CudaBatch*).
// Run: build-gpu/specquant_tests --gtest_filter='Cuda*'
#ifdef SPECQUANT_HAS_CUDA
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "core/fp16.h"
#include "eval/loglik.h"
#include "eval/loglik_cuda.h"
#include "io/checkpoint.h"
#include "io/tokenizer.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/w4a4_gemm.h"
#include "kernels/ref/w4a4_ref.h"
#include "kernels/w4a4_format.h"
#include "model/linear_q8.h"
#include "model/linear_w4a4.h"
#include "model/linear_w4a4_cpu.h"
#include "model/model.h"
#include "model/model_cuda.h"
#include "quant/hadamard.h"
#include "quant/packed_model.h"
#include "quant/pipeline.h"
#include "test_cuda_util.h"
#include "test_random.h"

using namespace sq;

namespace {

const std::string kData = SQ_TEST_DATA;


uint32_t bits_of(float f) { return fp32_to_bits(f); }

// Rows with outliers, exact ties at .5 steps, all-positive / all-negative /
// constant / zero rows, and a NaN: the cases where rounding conventions differ.
std::vector<float> quant_inputs(int n, int64_t k, std::mt19937& rng) {
    std::vector<float> x = gaussian((size_t)n * k, rng);
    std::uniform_int_distribution<int64_t> pick(0, k - 1);
    for (int t = 0; t < n; ++t) {
        float* r = &x[(size_t)t * k];
        switch (t % 6) {
            case 1: r[pick(rng)] = 40.0f; break;                           // outlier
            case 2: for (int64_t i = 0; i < k; ++i) r[i] = std::fabs(r[i]); break;
            case 3: for (int64_t i = 0; i < k; ++i) r[i] = (float)(i % 31) - 15.0f; break;  // ties after scaling
            case 4: for (int64_t i = 0; i < k; ++i) r[i] = t == 4 ? 0.0f : 0.25f; break;
            case 5: r[pick(rng)] = NAN; break;
            default: break;
        }
    }
    return x;
}

// ---------------------------------------------------------------- kernels

TEST(CudaKernels, ActQuantEqualsReferenceBitForBit) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed());
    for (int64_t k : {1, 7, 64, 97, 576, 1536, 4099, 20000}) {  // 20000: wider than the register-cached kernel
        for (int bits : {2, 4, 8}) {
            for (float clip : {0.9f, 1.0f}) {
                const int n = 13;
                const std::vector<float> x = quant_inputs(n, k, rng);
                std::vector<uint8_t> q_ref((size_t)n * k);
                std::vector<float> s_ref(n);
                std::vector<int32_t> z_ref(n);
                act_quant_ref(x.data(), n, k, bits, clip, q_ref.data(), s_ref.data(), z_ref.data());
                DevBuf<float> dx((size_t)n * k), dqf((size_t)n * k), ds(n);
                DevBuf<uint8_t> dq8((size_t)n * k);
                DevBuf<int32_t> dz(n);
                dx.put(x);
                cuda::act_quant(dx.p, n, k, bits, clip, dqf.p, dq8.p, ds.p, dz.p, nullptr);
                const auto qf = dqf.get();
                const auto q8 = dq8.get();
                const auto s = ds.get();
                const auto z = dz.get();
                int bad = 0;
                for (int t = 0; t < n; ++t) {
                    EXPECT_EQ(bits_of(s[t]), bits_of(s_ref[t])) << "k=" << k << " bits=" << bits << " row " << t;
                    EXPECT_EQ(z[t], z_ref[t]) << "k=" << k << " bits=" << bits << " row " << t;
                }
                for (size_t i = 0; i < q_ref.size(); ++i)
                    bad += q8[i] != q_ref[i] || qf[i] != (float)q_ref[i];
                EXPECT_EQ(bad, 0) << "k=" << k << " bits=" << bits << " clip=" << clip;
            }
        }
    }
}

TEST(CudaKernels, KvFakeQuantEqualsReferenceBitForBit) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 1);
    for (int hd : {16, 64, 100, 128}) {
        for (int bits : {2, 4, 8}) {
            for (bool shifted : {false, true}) {  // keys around a per-(head, dim) shift (--k-center)
                const int n = 5, kv = 3;
                const std::vector<float> k = quant_inputs(n * kv, hd, rng),
                                         v = gaussian((size_t)n * kv * hd, rng, 3.0f),
                                         shift = gaussian((size_t)kv * hd, rng, 2.0f);
                std::vector<float> k_ref = k, v_ref = v;
                for (int i = 0; i < n * kv; ++i) {
                    kv_fake_quant_ref(&k_ref[(size_t)i * hd], hd, bits, 0.95f,
                                      shifted ? &shift[(size_t)(i % kv) * hd] : nullptr);
                    fake_quant_asym_ref(&v_ref[(size_t)i * hd], hd, bits, 0.95f);
                }
                DevBuf<float> dk(k.size()), dv(v.size()), kc(k.size()), vc(v.size()), ds(shift.size());
                dk.put(k);
                dv.put(v);
                ds.put(shift);
                cuda::kv_store(dk.p, dv.p, n, kv, hd, bits, 0.95f, kc.p, vc.p, nullptr, nullptr,
                               shifted ? ds.p : nullptr);
                const auto kg = kc.get(), vg = vc.get();
                int bad = 0, moved = 0;
                for (size_t i = 0; i < k.size(); ++i) {
                    bad += bits_of(kg[i]) != bits_of(k_ref[i]) || bits_of(vg[i]) != bits_of(v_ref[i]);
                    moved += kg[i] != k[i];
                }
                EXPECT_EQ(bad, 0) << "hd=" << hd << " bits=" << bits << " shifted=" << shifted;
                EXPECT_GT(moved, 0) << "nothing was quantized";
            }
        }
    }
}

TEST(CudaKernels, EpilogueEqualsReference) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 2);
    const int n = 3, m = 37;
    std::uniform_int_distribution<int32_t> ai(-200000, 200000), zi(0, 15), ri(-500, 500);
    std::vector<int32_t> acc((size_t)n * m), z(n), rs(m);
    for (auto& a : acc) a = ai(rng);
    for (auto& a : z) a = zi(rng);
    for (auto& a : rs) a = ri(rng);
    const std::vector<float> s = gaussian(n, rng), ws = gaussian(m, rng);
    std::vector<float> ref((size_t)n * m);
    w4a4_epilogue_ref(acc.data(), n, m, s.data(), z.data(), ws.data(), rs.data(), ref.data());
    std::vector<float> accf(acc.begin(), acc.end());  // |acc| < 2^24: exact as float
    DevBuf<float> da(accf.size()), dsc(n), dws(m), dy(ref.size());
    DevBuf<int32_t> dai(acc.size()), dz(n), drs(m);
    da.put(accf), dai.put(acc), dsc.put(s), dws.put(ws), dz.put(z), drs.put(rs);
    for (int which = 0; which < 2; ++which) {
        cuda::w4a4_epilogue(which ? nullptr : da.p, which ? dai.p : nullptr, n, m, dsc.p, dz.p, dws.p, drs.p, nullptr,
                            nullptr, dy.p, nullptr);
        const auto y = dy.get();
        for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(bits_of(y[i]), bits_of(ref[i])) << i;
    }
}

// Varlen kernels: packed sequences against each sequence run alone at cache
// row 0. RoPE is bit-identical (same position, same operations); so is
// attention with the per-sequence block table. Without it, attention
// differs only where a 16-row block straddles two sequences and tiles the
// second one's keys from the first one's start (online-softmax rescaling
// order): float rounding, 1e-5 on outputs of size ~1 (convex combinations
// of N(0,1) values; FP32 over ≤ 70 keys lands near 1e-7).
TEST(CudaKernels, VarlenRopeAndAttentionMatchPerSequence) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 11);
    const std::vector<int> lens = {1, 2, 3, 31, 32, 33, 70, 1, 5, 16};
    int n = 0;
    std::vector<int> pos;
    for (int len : lens)
        for (int i = 0; i < len; ++i) pos.push_back(i), ++n;
    struct Shape { int heads, kv, hd; };
    for (Shape sh : {Shape{4, 2, 16}, Shape{9, 3, 64}, Shape{3, 3, 40}, Shape{8, 1, 128}}) {
        const int qd = sh.heads * sh.hd, kvd = sh.kv * sh.hd;
        std::vector<float> inv(sh.hd / 2);
        for (int i = 0; i < sh.hd / 2; ++i) inv[i] = std::pow(10000.0f, -2.0f * (float)i / (float)sh.hd);
        const std::vector<float> q = gaussian((size_t)n * qd, rng), k = gaussian((size_t)n * kvd, rng),
                                 v = gaussian((size_t)n * kvd, rng);
        DevBuf<float> dq((size_t)n * qd), dk((size_t)n * kvd), dv((size_t)n * kvd), dinv(inv.size());
        DevBuf<float> dqs((size_t)n * qd), dout((size_t)n * qd), douts((size_t)n * qd);
        DevBuf<int> dpos(n);
        dq.put(q), dqs.put(q), dk.put(k), dv.put(v), dinv.put(inv), dpos.put(pos);
        cuda::rope_varlen(dq.p, n, sh.heads, sh.hd, dpos.p, dinv.p, nullptr);
        for (int off = 0, s = 0; s < (int)lens.size(); off += lens[s++])
            cuda::rope(dqs.p + (size_t)off * qd, lens[s], sh.heads, sh.hd, 0, nullptr, dinv.p, nullptr);
        const auto a = dq.get(), b = dqs.get();
        int diff = 0;
        for (size_t i = 0; i < a.size(); ++i) diff += bits_of(a[i]) != bits_of(b[i]);
        EXPECT_EQ(diff, 0) << "rope_varlen heads " << sh.heads << " hd " << sh.hd;

        cuda::attention_varlen(dq.p, dk.p, dv.p, n, dpos.p, sh.heads, sh.kv, sh.hd, dout.p, nullptr);
        for (int off = 0, s = 0; s < (int)lens.size(); off += lens[s++])
            cuda::attention(dq.p + (size_t)off * qd, dk.p + (size_t)off * kvd, dv.p + (size_t)off * kvd, lens[s], 0,
                            nullptr, sh.heads, sh.kv, sh.hd, douts.p + (size_t)off * qd, nullptr);
        const auto o = dout.get(), os = douts.get();
        double worst = 0;
        for (size_t i = 0; i < o.size(); ++i) worst = std::max(worst, (double)std::fabs(o[i] - os[i]));
        EXPECT_LE(worst, 1e-5) << "attention_varlen heads " << sh.heads << "/" << sh.kv << " hd " << sh.hd;
        const std::vector<int> tbl = cuda::attention_blocks(lens, sh.heads / sh.kv);
        DevBuf<int> dtbl(tbl.size());
        dtbl.put(tbl);
        DevBuf<float> dout_t((size_t)n * qd);
        cuda::attention_varlen(dq.p, dk.p, dv.p, n, dpos.p, sh.heads, sh.kv, sh.hd, dout_t.p, nullptr, dtbl.p,
                               (int)tbl.size() / 2);
        const auto ot = dout_t.get();
        int tdiff = 0;
        for (size_t i = 0; i < ot.size(); ++i) tdiff += bits_of(ot[i]) != bits_of(os[i]);
        EXPECT_EQ(tdiff, 0) << "attention_varlen with block table, heads " << sh.heads << "/" << sh.kv;
        std::printf("[cuda] varlen attention %d/%d heads hd %d: max |d| %.2e, with block table %d bits differ\n",
                    sh.heads, sh.kv, sh.hd, worst, tdiff);
    }
}

// Decode attention (one query per sequence, per-sequence cache regions):
// kv_store_rows writes each token's K/V at its row; attention_rows (the
// prefill kernel with a per-token row) and attention_decode (keys split over
// blocks, merged) against attention() on each sequence alone. Lengths 1..200
// cover empty splits, one partial chunk and many chunks.
TEST(CudaKernels, DecodeAttentionMatchesAttention) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 12);
    const std::vector<int> len = {1, 2, 31, 32, 33, 200, 64};  // keys per sequence, the last one the new token
    const int B = (int)len.size(), S = 208;                  // region rows per sequence
    struct Shape { int heads, kv, hd; };
    for (Shape sh : {Shape{4, 2, 16}, Shape{9, 3, 64}, Shape{32, 8, 128}, Shape{4, 4, 40}}) {
        const int qd = sh.heads * sh.hd, kvd = sh.kv * sh.hd;
        const std::vector<float> q = gaussian((size_t)B * qd, rng), knew = gaussian((size_t)B * kvd, rng),
                                 vnew = gaussian((size_t)B * kvd, rng);
        const std::vector<float> kc = gaussian((size_t)B * S * kvd, rng), vc = gaussian((size_t)B * S * kvd, rng);
        std::vector<int> rows(B), pos(B);
        for (int b = 0; b < B; ++b) rows[b] = b * S + len[b] - 1, pos[b] = len[b] - 1;
        DevBuf<float> dq(q), dkn(knew), dvn(vnew), dkc(kc), dvc(vc), o1((size_t)B * qd), o2((size_t)B * qd),
            o3((size_t)B * qd);
        DevBuf<int> drows(rows), dpos(pos);
        cuda::kv_store_rows(dkn.p, dvn.p, B, sh.kv, sh.hd, 16, 1.0f, dkc.p, dvc.p, drows.p, nullptr);
        const std::vector<int> tbl = cuda::attention_blocks(std::vector<int>(B, 1), sh.heads / sh.kv);
        DevBuf<int> dtbl(tbl);  // one block per token: key tiles start at its region, as alone
        cuda::attention_rows(dq.p, dkc.p, dvc.p, B, drows.p, dpos.p, sh.heads, sh.kv, sh.hd, o1.p, nullptr, dtbl.p,
                             (int)tbl.size() / 2);
        DevBuf<float> part(cuda::attention_decode_scratch(B, sh.heads, sh.hd, S));
        cuda::attention_decode(dq.p, dkc.p, dvc.p, B, drows.p, dpos.p, sh.heads, sh.kv, sh.hd, S, part.p, o2.p,
                               nullptr);
        for (int b = 0; b < B; ++b)  // alone: the query at position len−1 of a cache starting at its region
            cuda::attention(dq.p + (size_t)b * qd, dkc.p + (size_t)b * S * kvd, dvc.p + (size_t)b * S * kvd, 1,
                            len[b] - 1, nullptr, sh.heads, sh.kv, sh.hd, o3.p + (size_t)b * qd, nullptr);
        const auto a1 = o1.get(), a2 = o2.get(), a3 = o3.get();
        double w1 = 0, w2 = 0;
        int diff1 = 0;
        for (size_t i = 0; i < a3.size(); ++i) {
            diff1 += bits_of(a1[i]) != bits_of(a3[i]);
            w1 = std::max(w1, (double)std::fabs(a1[i] - a3[i]));
            w2 = std::max(w2, (double)std::fabs(a2[i] - a3[i]));
        }
        EXPECT_EQ(diff1, 0) << "attention_rows heads " << sh.heads << "/" << sh.kv << " hd " << sh.hd;
        EXPECT_LE(w2, 1e-5) << "attention_decode heads " << sh.heads << "/" << sh.kv << " hd " << sh.hd;
        std::printf("[cuda] decode attention %d/%d heads hd %d: rows %d bits differ, split max |d| %.2e\n", sh.heads,
                    sh.kv, sh.hd, diff1, w2);
        // Decode v4: the merge that also makes the o projection's input (one block per sequence):
        // the same output bits; codes = act_quant_ref(out), bf16 = fp32_to_bf16(out), exactly.
        DevBuf<float> o4((size_t)B * qd), sc(B);
        DevBuf<int32_t> zp(B);
        DevBuf<uint8_t> q8((size_t)B * qd);
        DevBuf<uint16_t> ob((size_t)B * qd);
        cuda::RowQuant rq;
        rq.bits = 4, rq.clip = 0.9f, rq.q8 = q8.p, rq.scale = sc.p, rq.zero = zp.p, rq.bf16 = ob.p;
        cuda::attention_decode(dq.p, dkc.p, dvc.p, B, drows.p, dpos.p, sh.heads, sh.kv, sh.hd, S, part.p, o4.p,
                               nullptr, rq);
        const auto a4 = o4.get();
        const auto c4 = q8.get();
        const auto b4 = ob.get();
        const auto s4 = sc.get();
        const auto z4 = zp.get();
        std::vector<uint8_t> q_ref((size_t)B * qd);
        std::vector<float> s_ref(B);
        std::vector<int32_t> z_ref(B);
        act_quant_ref(a4.data(), B, qd, 4, 0.9f, q_ref.data(), s_ref.data(), z_ref.data());
        int diff4 = 0, bad_codes = 0;
        for (size_t i = 0; i < a4.size(); ++i) {
            diff4 += bits_of(a4[i]) != bits_of(a2[i]);
            bad_codes += c4[i] != q_ref[i] || b4[i] != fp32_to_bf16(a4[i]);
        }
        for (int b = 0; b < B; ++b) bad_codes += bits_of(s4[b]) != bits_of(s_ref[b]) || z4[b] != z_ref[b];
        EXPECT_EQ(diff4, 0) << "attention_decode with codes: output differs";
        EXPECT_EQ(bad_codes, 0) << "attention_decode codes / bf16 against act_quant_ref / fp32_to_bf16";
    }
}

// ---------------------------------------------------------------- models


std::vector<int> some_tokens(int vocab, int n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int> t(n);
    for (auto& x : t) x = (int)(rng() % vocab);
    return t;
}

// Worst row error of the GPU against the CPU model: a prefill of all tokens,
// and a 5-token prefill followed by one token at a time.
void compare_gpu_cpu(const Model& cpu, const std::vector<int>& toks, double tol, const std::string& what) {
    const int n = (int)toks.size(), V = cpu.config().vocab;
    KVCache cache(cpu.config(), n);
    std::vector<float> ref((size_t)n * V);
    cpu.forward(toks.data(), n, cache, ref.data(), true);

    ModelCuda gpu(cpu.weights(), n);
    std::vector<float> got((size_t)n * V, NAN);
    gpu.forward_logits(toks.data(), n, got.data(), true);
    double worst = 0;
    for (int t = 0; t < n; ++t) worst = std::max(worst, row_rel_err(&got[(size_t)t * V], &ref[(size_t)t * V], V));
    EXPECT_LE(worst, tol) << what << " prefill";
    EXPECT_EQ(gpu.pos(), n);

    gpu.truncate(0);
    std::vector<float> last(V, NAN);
    gpu.forward_logits(toks.data(), 5, last.data(), false);
    double worst_dec = row_rel_err(last.data(), &ref[(size_t)4 * V], V);
    for (int t = 5; t < n; ++t) {
        gpu.forward_logits(&toks[t], 1, last.data(), false);
        worst_dec = std::max(worst_dec, row_rel_err(last.data(), &ref[(size_t)t * V], V));
    }
    EXPECT_LE(worst_dec, tol) << what << " decode";
    std::printf("[cuda] %s: worst row rel err prefill %.2e, decode %.2e (tol %.0e)\n", what.c_str(), worst, worst_dec,
                tol);
}

TEST(CudaModel, Fp32FixturesMatchCpu) {
    SKIP_WITHOUT_GPU();
    for (const char* name : {"tiny_llama", "tiny_qwen2", "tiny_llama_spm"}) {
        Checkpoint ck = checkpoint_open(kData + "/models/" + name);
        Model cpu(model_load_f32(ck, false));
        compare_gpu_cpu(cpu, some_tokens(cpu.config().vocab, 40, test_seed() + 3), 1e-4, name);
    }
}

// RTN INT4 of a float layer by hand (symmetric per row), with the options
// the packed format has; the GPU and CPU run the same QLinearData.
std::unique_ptr<Linear> quantize_by_hand(const Linear& L, int a_bits, float a_clip, int rank, bool had, bool bias,
                                         std::mt19937& rng) {
    const auto* f = dynamic_cast<const LinearF32*>(&L);
    if (!f) throw Error("test: expected a float layer");
    QLinearData d;
    d.in = f->in, d.out = f->out, d.a_bits = a_bits, d.a_clip = a_clip;
    const int64_t rb = w4_row_bytes(d.in);
    d.codes.assign(d.out * rb, 0);
    d.scale.resize(d.out);
    d.rowsum.assign(d.out, 0);
    for (int64_t j = 0; j < d.out; ++j) {
        float mx = 1e-8f;
        for (int64_t k = 0; k < d.in; ++k) mx = std::max(mx, std::fabs(f->w[j * d.in + k]));
        d.scale[j] = mx / 7.0f;
        for (int64_t k = 0; k < d.in; ++k) {
            const int c = std::clamp((int)std::nearbyint(f->w[j * d.in + k] / d.scale[j]), W4_MIN, W4_MAX);
            d.codes[j * rb + k / 2] |= (uint8_t)((c & 0xF) << ((k & 1) * 4));
            d.rowsum[j] += c;
        }
    }
    if (rank > 0) {
        d.rank = rank;
        const std::vector<float> c = gaussian((size_t)d.out * rank, rng, 0.02f);
        for (float v : c) d.coef.push_back(fp32_to_fp16(v));
    }
    if (had) d.had_in = (int)d.in, d.had_seed = rng();
    if (bias) d.bias = gaussian(d.out, rng, 0.1f);
    else d.bias = f->bias;
    return std::make_unique<LinearW4A4Ref>(std::move(d));
}

ModelWeights hand_quantized(const std::string& name, int a_bits, bool kv4, bool qk_rotate, std::mt19937& rng) {
    Checkpoint ck = checkpoint_open(kData + "/models/" + name);
    ModelWeights w = model_load_f32(ck, false);
    for (size_t l = 0; l < w.layers.size(); ++l) {
        LayerWeights& L = w.layers[l];
        const int r = l % 2 ? 3 : 5;  // spectral ranks 2K−1
        L.q = quantize_by_hand(*L.q, a_bits, 0.9f, r, false, true, rng);
        L.k = quantize_by_hand(*L.k, a_bits, 0.9f, 0, false, false, rng);
        L.v = quantize_by_hand(*L.v, a_bits, 0.9f, r, false, false, rng);
        L.o = quantize_by_hand(*L.o, a_bits, 1.0f, 0, true, false, rng);
        L.gate = quantize_by_hand(*L.gate, a_bits, 0.9f, r, false, false, rng);
        L.up = quantize_by_hand(*L.up, a_bits, 0.9f, 0, false, false, rng);
        L.down = quantize_by_hand(*L.down, a_bits, 0.9f, r, true, false, rng);
    }
    if (kv4) w.kv_bits = 4, w.kv_clip = 0.95f;
    w.qk_rotate = qk_rotate;
    // --k-center: with the rotation (the form real files take), keys are stored around a
    // per-(KV head, dim) shift; the CPU and GPU engines must apply it the same way.
    if (kv4 && qk_rotate)
        for (LayerWeights& L : w.layers)
            L.k_shift = gaussian((size_t)w.cfg.n_kv_heads * w.cfg.head_dim, rng, 0.5f);
    return w;
}

// ---- flip-aware comparison of a quantized model (CPU vs GPU)
//
// The two backends' float inputs to a quantizer differ by float rounding
// (reduction orders): relative to the row's largest magnitude by ≤ ~5e-7 on
// these models (the worst logits row error measured, docs/perf.md). A 4-bit
// code can only differ where x/s lies that close to a rounding boundary, and
// one differing code moves a token's output by a whole step and, through the
// KV cache, every later token: no float tolerance bounds that. So the CPU
// run is instrumented: at every rounding site of the forward (each activation
// code and zero point of every quantized linear, after its online Hadamard;
// each K/V code and zero point after RoPE and the qk rotation) the distance
// to the nearest rounding boundary is measured, relative to the row's largest
// magnitude, and the smallest per token is kept. Tokens with a site closer
// than kTieRel are near-ties; attention is causal and quantization per token,
// so rows before the first near-tie cannot see a flipped code and must agree
// to the float bar. Rows from the first near-tie on are reported, not held to
// the bar (a flip there is explained by that tie).
constexpr double kTieRel = 2e-6;  // ≈ 4× the largest backend difference measured (5.3e-7), ~16 ulps

struct TieLog {
    std::vector<double> margin;  // [tokens of the probed prefill]: smallest relative distance to a boundary
};

// Smallest |v − boundary| · s / max|x| over the rounding sites of act_quant_ref on x[0..k).
double quant_margin(const float* x, int64_t k, int bits, float clip) {
    std::vector<uint8_t> q(k);
    float s;
    int32_t z;
    act_quant_ref(x, 1, k, bits, clip, q.data(), &s, &z);
    float mx = 0.0f, mn = 0.0f;
    for (int64_t i = 0; i < k; ++i) mx = std::max(mx, x[i]), mn = std::min(mn, x[i]);
    const double big = std::max(std::fabs((double)mx), std::fabs((double)mn));
    if (!(big > 0)) return 0.5;
    double m = 0.5;
    auto site = [&](float v) { m = std::min(m, 0.5 - std::fabs((double)v - std::rint((double)v))); };
    site(-(mn * clip) / s);
    for (int64_t i = 0; i < k; ++i) site(x[i] / s);
    return m * s / big;
}

// A CPU linear that runs the wrapped one and records its rounding margins.
// kv_role: 1 = this is k (its output is quantized after RoPE and the qk
// rotation), 2 = v; positions start at 0 (one prefill from an empty cache).
class TieProbe : public Linear {
public:
    TieProbe(std::unique_ptr<Linear> inner, TieLog* log, const ModelWeights& w, int kv_role,
             std::vector<float> k_shift = {})
        : inner_(std::move(inner)), log_(log), kv_role_(kv_role), kv_bits_(w.kv_bits), kv_clip_(w.kv_clip),
          qk_rotate_(w.qk_rotate), kv_heads_(w.cfg.n_kv_heads), hd_(w.cfg.head_dim), inv_freq_(rope_inv_freq(w.cfg)),
          k_shift_(std::move(k_shift)) {
        in = inner_->in, out = inner_->out;
        has_q_ = linear_w4a4_data(*inner_, &d_) && d_.a_bits < 16;
        if (has_q_ && d_.had_in) signs_ = hadamard_signs(d_.had_in, d_.had_seed);
    }
    void forward(const float* x, int64_t n, float* y) const override {
        inner_->forward(x, n, y);
        if (has_q_) {
            std::vector<float> xr(x, x + n * in);
            if (d_.had_in) hadamard_transform(xr.data(), n, (int)in, signs_.data());
            for (int64_t t = 0; t < n; ++t) note(t, quant_margin(&xr[t * in], in, d_.a_bits, d_.a_clip));
        }
        if (kv_role_ && kv_bits_ < 16) {
            std::vector<float> kv(y, y + n * out);
            if (kv_role_ == 1) {
                rope_f32(kv.data(), n, kv_heads_, hd_, 0, inv_freq_.data());
                if (qk_rotate_) hadamard_transform(kv.data(), n * kv_heads_, hd_);
                if (!k_shift_.empty())  // the key quantizer sees k − shift (kv_fake_quant_ref)
                    for (int64_t i = 0; i < n * out; ++i) kv[i] -= k_shift_[i % out];
            }
            for (int64_t t = 0; t < n; ++t)
                for (int h = 0; h < kv_heads_; ++h)
                    note(t, quant_margin(&kv[(t * kv_heads_ + h) * hd_], hd_, kv_bits_, kv_clip_));
        }
    }
    std::string kind() const override { return inner_->kind(); }
    size_t weight_bytes() const override { return inner_->weight_bytes(); }

private:
    void note(int64_t t, double m) const {
        if (t < (int64_t)log_->margin.size()) log_->margin[t] = std::min(log_->margin[t], m);
    }
    std::unique_ptr<Linear> inner_;
    TieLog* log_;
    int kv_role_, kv_bits_;
    float kv_clip_;
    bool qk_rotate_;
    int kv_heads_, hd_;
    std::vector<float> inv_freq_, k_shift_, signs_;
    QLinearData d_;
    bool has_q_ = false;
};

// A CPU model with every linear wrapped in a TieProbe: forward() runs one
// prefill from an empty cache and returns the index of the first near-tie
// token (= the number of rows that cannot see a flipped code), logits out.
class ProbedCpu {
public:
    explicit ProbedCpu(ModelWeights w) {
        for (LayerWeights& L : w.layers) {
            auto wrap = [&](std::unique_ptr<Linear>& p, int role) {
                p = std::make_unique<TieProbe>(std::move(p), &log_, w, role, role == 1 ? L.k_shift : std::vector<float>{});
            };
            wrap(L.q, 0), wrap(L.k, 1), wrap(L.v, 2), wrap(L.o, 0), wrap(L.gate, 0), wrap(L.up, 0), wrap(L.down, 0);
        }
        cpu_ = std::make_unique<Model>(std::move(w));
    }
    // ties: tokens with a near-tie anywhere (first or not), when non-null.
    int forward(const std::vector<int>& toks, std::vector<float>* logits, int* ties = nullptr) {
        const int n = (int)toks.size();
        log_.margin.assign(n, 0.5);
        KVCache cache(cpu_->config(), n);
        std::vector<float> scratch;
        std::vector<float>& out = logits ? *logits : scratch;
        out.assign((size_t)n * cpu_->config().vocab, 0.0f);
        cpu_->forward(toks.data(), n, cache, out.data(), true);
        int t_star = 0;
        while (t_star < n && log_.margin[t_star] >= kTieRel) ++t_star;
        if (ties) {
            *ties = 0;
            for (int t = 0; t < n; ++t) *ties += log_.margin[t] < kTieRel;
        }
        return t_star;
    }

private:
    TieLog log_;
    std::unique_ptr<Model> cpu_;
};

// GPU (built first, from the packed layers) vs the probed CPU model; returns
// the number of rows held to `tol` (those before the first near-tie token).
int compare_flip_aware(ModelWeights w, const std::vector<int>& toks, double tol, const std::string& what) {
    const int n = (int)toks.size(), V = w.cfg.vocab;
    ModelCuda gpu(w, n);
    ProbedCpu cpu(std::move(w));
    std::vector<float> ref;
    int ties = 0;
    const int t_star = cpu.forward(toks, &ref, &ties);

    std::vector<float> got((size_t)n * V, NAN);
    gpu.forward_logits(toks.data(), n, got.data(), true);
    double worst = 0, worst_after = 0;
    int over_after = 0;
    for (int t = 0; t < n; ++t) {
        const double e = row_rel_err(&got[(size_t)t * V], &ref[(size_t)t * V], V);
        if (t < t_star) worst = std::max(worst, e);
        else worst_after = std::max(worst_after, e), over_after += e > tol;
    }
    EXPECT_LE(worst, tol) << what << " prefill, rows before the first near-tie token " << t_star;
    gpu.truncate(0);
    std::vector<float> last(V, NAN);
    gpu.forward_logits(toks.data(), 5, last.data(), false);
    double worst_dec = t_star > 4 ? row_rel_err(last.data(), &ref[(size_t)4 * V], V) : 0.0;
    for (int t = 5; t < t_star; ++t) {
        gpu.forward_logits(&toks[t], 1, last.data(), false);
        worst_dec = std::max(worst_dec, row_rel_err(last.data(), &ref[(size_t)t * V], V));
    }
    EXPECT_LE(worst_dec, tol) << what << " decode, rows before the first near-tie token " << t_star;
    std::printf("[cuda] %s: %d near-tie tokens (first at %d of %d); rows before it: prefill %.2e, decode %.2e "
                "(tol %.0e); from it on: worst %.2e, %d rows over tol\n",
                what.c_str(), ties, t_star, n, worst, worst_dec, tol, worst_after, over_after);
    return t_star;
}

// Hand-quantized models (RTN weights, spectral ranks, online Hadamard, bias,
// KV4 with the qk rotation) on both backends. A plain float bar over every row
// was flaky: with some seeds one activation lies within float rounding of a
// 4-bit boundary, the backends pick neighbouring codes, and every later token
// moves by a whole step (seed 3060848257: 7.6e-2). So the comparison is
// flip-aware, as PipelineQuantizedMatchesCpu: rows before the first near-tie
// token are held to the bar; fresh models and tokens until 32 rows per case were
// (at most 128 draws: at 8-bit activations the first near-tie comes early, ~2
// held rows per draw measured on the H100, and some seeds give fewer: at
// SQ_TEST_SEED=3358671405 32 draws held 20 rows of W4A8 (0.6 per draw), so 32
// draws were too few too; passing seeds stop at 32 rows as before).
TEST(CudaModel, HandQuantizedW4A4MatchesCpu) {
    SKIP_WITHOUT_GPU();
    struct Case {
        const char* name;
        int a_bits;
        bool kv4, qk_rotate;
        double tol;
        const char* what;
    };
    const Case cases[] = {{"tiny_llama", 4, true, true, 1e-3, "tiny_llama W4A4KV4 rot+spec+had"},
                          {"tiny_qwen2", 8, false, false, 1e-3, "tiny_qwen2 W4A8 bias+spec+had"},
                          {"tiny_llama_spm", 16, true, false, 1e-4, "tiny_llama_spm W4A16KV4"}};
    std::mt19937 rng(test_seed() + 4);
    for (const Case& c : cases) {
        int held = 0, draws = 0;
        for (; draws < 128 && held < 32; ++draws) {  // each draw: a fresh hand-quantized model and fresh tokens
            ModelWeights w = hand_quantized(c.name, c.a_bits, c.kv4, c.qk_rotate, rng);
            const int V = w.cfg.vocab;
            held += compare_flip_aware(std::move(w), some_tokens(V, 33, test_seed() + 5 + 101 * draws), c.tol, c.what);
        }
        EXPECT_GE(held, 32) << c.what << ": near-ties in every draw; " << held << " rows held to the bar in " << draws
                            << " draws";
    }
}

// Fresh token draws (test_seed) until 48 rows per method were held to the bar
// (the old test's 48 rows, now flip-aware); at most 8 draws: if near-ties were
// so frequent that this fails, the bound would test nothing and the test says so.
TEST(CudaModel, PipelineQuantizedMatchesCpu) {
    SKIP_WITHOUT_GPU();
    const std::string calib = std::string(SQ_SOURCE_DIR) + "/../shared/data/calib/c4.utf8";
    if (!std::filesystem::exists(calib)) GTEST_SKIP() << "no calibration data at " << calib;
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    Tokenizer tok(ck.tokenizer);
    for (const char* method : {"quarot", "specquant"}) {
        QuantConfig qc = quant_config_for(method);
        qc.kv_bits = 4;
        qc.calib_path = calib;
        qc.calib_n = 4;
        qc.calib_len = 64;
        qc.k_bar = 4;  // the spectral rank must stay below in = 64 (as tests/test_pipeline.cpp)
        int held = 0, draws = 0;
        for (; draws < 8 && held < 48; ++draws) {  // quantization is deterministic: the same model every draw
            ModelWeights w = quantize_model(model_load_f32(ck, false), tok, qc);
            const int V = w.cfg.vocab;
            held += compare_flip_aware(std::move(w), some_tokens(V, 48, test_seed() + 8 + 101 * draws), 1e-3,
                                       std::string(method) + " KV4");
        }
        EXPECT_GE(held, 48) << method << ": near-ties in every draw; " << held << " rows held to the bar in " << draws
                            << " draws";
    }
}

TEST(CudaModel, ErrorsAreSqErrors) {
    SKIP_WITHOUT_GPU();
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    Model cpu(model_load_f32(ck, false));
    ModelCuda gpu(cpu.weights(), 4);
    std::vector<int> toks = {1, 2, 3, 4, 5};
    std::vector<float> logits(cpu.config().vocab);
    EXPECT_THROW(gpu.forward_logits(toks.data(), 5, logits.data(), false), Error);  // overflow
    std::vector<int> bad = {cpu.config().vocab};
    EXPECT_THROW(gpu.forward_logits(bad.data(), 1, logits.data(), false), Error);
    EXPECT_THROW(gpu.truncate(3), Error);  // beyond pos
}

// The W4A4 layers on the INT8 tensor-core kernels against the first engine's
// FP32 cuBLAS over integer-valued float codes: both accumulators are exact
// integers and both epilogues the reference's float operations on the same
// spectral input, so every logit and score must be the same bits (prefill,
// token-by-token decode, and a varlen batch). Models: hand-built W4A4KV4 with
// spectral branch + online Hadamard + qk rotation, W4A8 with bias, and the
// pipeline's specquant and quarot models when the calibration data is there.
TEST(CudaModel, Int8PathEqualsF32Codes) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 21);
    std::vector<std::pair<std::string, ModelWeights>> models;
    models.push_back({"tiny_llama W4A4KV4 rot+spec+had", hand_quantized("tiny_llama", 4, true, true, rng)});
    models.push_back({"tiny_qwen2 W4A8 bias+spec+had", hand_quantized("tiny_qwen2", 8, false, false, rng)});
    const std::string calib = std::string(SQ_SOURCE_DIR) + "/../shared/data/calib/c4.utf8";
    if (std::filesystem::exists(calib)) {
        Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
        Tokenizer tok(ck.tokenizer);
        for (const char* method : {"quarot", "specquant"}) {
            QuantConfig qc = quant_config_for(method);
            qc.kv_bits = 4, qc.calib_path = calib, qc.calib_n = 4, qc.calib_len = 64, qc.k_bar = 4;
            models.push_back({std::string("pipeline ") + method, quantize_model(model_load_f32(ck, false), tok, qc)});
        }
    }
    ModelCudaOptions f32, int8;
    f32.w4a4_f32_codes = true;
    for (auto& [what, w] : models) {
        const int V = w.cfg.vocab, n = 54;  // = the varlen lengths' sum below
        const std::vector<int> toks = some_tokens(V, n, (uint32_t)rng());
        ModelCuda a(w, 64, int8), b(w, 64, f32);
        EXPECT_LT(a.memory().linears, b.memory().linears) << what;  // 0.5 byte per weight against 4
        std::vector<float> la((size_t)n * V, NAN), lb((size_t)n * V, NAN);
        a.forward_logits(toks.data(), n, la.data(), true);
        b.forward_logits(toks.data(), n, lb.data(), true);
        EXPECT_EQ(std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)), 0) << what << " prefill";
        a.truncate(7), b.truncate(7);
        for (int t = 7; t < 12; ++t) {  // decode (GEMV kernel, graphs)
            std::vector<float> da(V, NAN), db(V, NAN);
            a.forward_logits(&toks[t], 1, da.data(), false);
            b.forward_logits(&toks[t], 1, db.data(), false);
            EXPECT_EQ(std::memcmp(da.data(), db.data(), V * sizeof(float)), 0) << what << " decode token " << t;
        }
        const std::vector<int> lens = {5, 17, 1, 31};
        std::vector<RowTarget> tq;
        for (int i = 0; i < 54; ++i) tq.push_back({i, (int)(rng() % V)});
        const std::vector<RowScore> sa = a.forward_score_varlen(toks.data(), lens, tq);
        const std::vector<RowScore> sb = b.forward_score_varlen(toks.data(), lens, tq);
        int diff = 0;
        for (size_t i = 0; i < sa.size(); ++i) diff += sa[i].logprob != sb[i].logprob || sa[i].greedy != sb[i].greedy;
        EXPECT_EQ(diff, 0) << what << " varlen";
        std::printf("[cuda] %s: int8 vs f32 codes %s; linear weights %.1f KB vs %.1f KB\n", what.c_str(),
                    diff == 0 ? "bit-identical" : "DIFFER", a.memory().linears / 1024.0, b.memory().linears / 1024.0);
    }
}

// The BF16 baseline: every linear as bf16 weights × bf16 activations (fp32
// accumulation). Each operand is rounded to 8 significant bits (relative
// error ≤ 2^-9), so a dot product moves by ≤ 2^-8 · Σ|x_i w_i| ≈ 4e-3 of its
// magnitude when terms do not cancel; over two layers and the head the
// logits row error should stay within a few times that. Bar: 3e-2 (8 × 2^-8).
TEST(CudaModel, Bf16LinearsTrackFp32) {
    SKIP_WITHOUT_GPU();
    ModelCudaOptions bf;
    bf.bf16 = true;
    for (const char* name : {"tiny_llama", "tiny_qwen2"}) {
        Checkpoint ck = checkpoint_open(kData + "/models/" + name);
        const ModelWeights w = model_load_f32(ck, false);
        const int V = w.cfg.vocab, n = 24;
        const std::vector<int> toks = some_tokens(V, n, test_seed() + 22);
        ModelCuda a(w, n, bf), f(w, n, ModelCudaOptions{});
        EXPECT_LT(a.memory().linears, f.memory().linears);
        std::vector<float> la((size_t)n * V), lf((size_t)n * V);
        a.forward_logits(toks.data(), n, la.data(), true);
        f.forward_logits(toks.data(), n, lf.data(), true);
        double worst = 0;
        for (int t = 0; t < n; ++t) worst = std::max(worst, row_rel_err(&la[(size_t)t * V], &lf[(size_t)t * V], V));
        EXPECT_LE(worst, 3e-2) << name;
        EXPECT_GT(worst, 0.0) << name << ": bf16 rounding must show (is the baseline really bf16?)";
        std::printf("[cuda] %s bf16 linears vs fp32: worst row rel err %.2e\n", name, worst);
    }
}

// Batched decode (per-sequence KV regions, kv_store_rows, attention_decode,
// one graph per batch size) against each sequence run alone (prefill: the
// one-sequence forward; steps: the same decode path with batch 1). Without spectral
// branch and online Hadamard every op before a quantizer is per row (norms,
// RoPE, attention over the same key tiles, exact integer GEMMs), so the
// hidden states are the same bits whatever the batch; only lm_head (FP32
// cuBLAS at M = 3 vs 1) may round differently: bar 1e-5 on the logits rows
// (the FP32 model: 1e-4, every GEMM's row count differs).
TEST(CudaModel, BatchedDecodeMatchesSequencesAlone) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 23);
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    std::vector<std::pair<std::string, ModelWeights>> models;
    models.push_back({"fp32", model_load_f32(ck, false)});
    {
        ModelWeights w = model_load_f32(ck, false);
        for (LayerWeights& L : w.layers)
            for (std::unique_ptr<Linear>* p : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
                *p = quantize_by_hand(**p, 4, 0.9f, 0, false, false, rng);
        w.kv_bits = 4, w.kv_clip = 0.95f;
        models.push_back({"W4A4KV4 (int8 kernels)", std::move(w)});
    }
    const std::vector<int> prompt = {5, 1, 9};
    const int steps = 4, B = (int)prompt.size(), S = 16;
    for (auto& [what, w] : models) {
        const int V = w.cfg.vocab;
        std::vector<std::vector<int>> seqs;
        for (int b = 0; b < B; ++b) seqs.push_back(some_tokens(V, prompt[b] + steps, (uint32_t)rng()));
        ModelCuda bat(w, B * S), one(w, S);
        bat.decode_setup(B, S);
        double worst = 0;
        std::vector<float> lb(V), lo(V);
        for (int b = 0; b < B; ++b) {
            bat.decode_prefill(b, seqs[b].data(), prompt[b], lb.data());
            one.truncate(0);
            one.forward_logits(seqs[b].data(), prompt[b], lo.data(), false);
            worst = std::max(worst, row_rel_err(lb.data(), lo.data(), V));
            EXPECT_EQ(bat.decode_len(b), prompt[b]);
        }
        std::vector<float> step((size_t)steps * B * V);
        for (int i = 0; i < steps; ++i) {
            std::vector<int> tok(B);
            for (int b = 0; b < B; ++b) tok[b] = seqs[b][prompt[b] + i];
            bat.decode_step(tok.data(), &step[(size_t)i * B * V]);
        }
        for (int b = 0; b < B; ++b) {  // alone: the same decode path with one sequence
            one.decode_setup(1, S);
            one.decode_prefill(0, seqs[b].data(), prompt[b], nullptr);
            for (int i = 0; i < steps; ++i) {
                one.decode_step(&seqs[b][prompt[b] + i], lo.data());
                worst = std::max(worst, row_rel_err(&step[((size_t)i * B + b) * V], lo.data(), V));
            }
        }
        // fp32: q/k/v/o/MLP GEMMs at other row counts round differently too (the FP32 fixtures' bar)
        EXPECT_LE(worst, what == "fp32" ? 1e-4 : 1e-5) << what;
        std::printf("[cuda] batched decode %s (B=%d): worst row rel err vs alone %.2e\n", what.c_str(), B, worst);
    }
}

// Synthetic weights (bench --shape) are a valid CUDA layout: codes inside
// [n, k] random, pads zero, row sums equal to the codes'; and a synthetic
// model runs prefill and batched decode to finite logits.
TEST(CudaModel, SyntheticWeightsAreValid) {
    SKIP_WITHOUT_GPU();
    const int64_t n = 21, k = 200;  // pads in both dimensions (Np = 24, Kp = 256)
    DevBuf<uint8_t> w((size_t)cuda::w4g_bytes(n, k));
    DevBuf<int32_t> rs((size_t)n);
    cuda::w4g_fill_random(w.p, n, k, 5, rs.p, nullptr);
    const std::vector<uint8_t> hw = w.get();
    const std::vector<int32_t> hr = rs.get();
    std::vector<int> seen(16, 0);
    for (int64_t j = 0; j < cuda::w4g_n_pad(n); ++j) {
        int32_t sum = 0;
        for (int64_t i = 0; i < cuda::w4g_k_pad(k); ++i) {
            int nib = 0;
            const int64_t off = cuda::w4g_offset(k, j, i, &nib);
            int c = (hw[off] >> (4 * nib)) & 15;
            c = c >= 8 ? c - 16 : c;
            if (j >= n || i >= k) {
                EXPECT_EQ(c, 0) << j << "," << i;
            } else {
                sum += c, seen[c + 8]++;
            }
        }
        if (j < n) {
            EXPECT_EQ(sum, hr[j]) << "row " << j;
        }
    }
    for (int c = 0; c < 16; ++c) EXPECT_GT(seen[c], 0) << "code " << c - 8 << " never drawn";

    ModelConfig c;
    c.n_layers = 2, c.d_model = 64, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 16, c.d_ff = 96, c.vocab = 300;
    for (int bf16 = 0; bf16 < 2; ++bf16) {
        CudaSynthetic spec;
        spec.bf16 = bf16, spec.rank = bf16 ? 0 : 7, spec.kv_bits = 4;
        ModelCuda m(c, spec, 64);
        const std::vector<int> toks = some_tokens(c.vocab, 20, test_seed() + 24);
        std::vector<float> l((size_t)c.vocab * 2);
        m.forward_logits(toks.data(), 20, l.data(), false);
        for (int i = 0; i < c.vocab; ++i) ASSERT_TRUE(std::isfinite(l[i])) << "prefill logit " << i;
        m.decode_setup(2, 30);
        m.decode_fill_random(10, 3);
        m.decode_step(toks.data(), l.data());
        for (float x : l) ASSERT_TRUE(std::isfinite(x)) << "decode logit";
        EXPECT_GT(m.memory().linears, 0u);
        EXPECT_EQ(m.decode_len(1), 11);
    }
}

// Decode fusion (v4: q/k/v and gate/up as one layer each, norm and SwiGLU writing
// the next layer's codes, RoPE + KV store in one kernel, the GEMV launched early with
// PDL) changes no bit of a W4A4 model: every value is made by the same operations
// (exact integer accumulators, the same epilogue, rounding and quantizer code). Fused
// vs SQ_CUDA_FUSE=0 (the previous engine's launches), memcmp of every logit and score:
// synthetic W4A4 without and with the spectral branch (fused in the GEMV epilogue up to
// 16 rows; above, the unfused layers), KV4 and KV16, prefill through the GEMV (9 rows)
// and the tiled GEMM (20), batched decode (graphs), varlen scoring; and a hand-quantized
// tiny LLaMA (one quantizer for all seven layers, so every group fuses). The BF16
// baseline's fused GEMMs are cuBLAS calls of another width, whose algorithm cuBLAS
// picks by shape: held to 1e-5 instead, and the difference printed.
TEST(CudaModel, FusedDecodeIsBitIdentical) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 31);
    bool long_prefill = false;  // also 100 rows: above the GEMV's 64 (the prefill GEMM, spectral by cuBLAS)
    auto run_all = [&](ModelCuda& m, const std::vector<int>& toks, std::vector<float>& out,
                       std::vector<RowScore>& scores) {
        const int V = m.config().vocab;
        out.clear();
        for (int n : {9, 20, 100}) {
            if (n > 64 && !long_prefill) continue;
            std::vector<float> l((size_t)n * V);
            m.truncate(0);
            m.forward_logits(toks.data(), n, l.data(), true);
            out.insert(out.end(), l.begin(), l.end());
        }
        m.decode_setup(3, 40);
        for (int b = 0; b < 3; ++b) m.decode_prefill(b, toks.data() + b, 5 + 4 * b, nullptr);
        std::vector<float> step((size_t)3 * V);
        for (int i = 0; i < 4; ++i) {
            m.decode_step(toks.data() + 7 + 3 * i, step.data());
            out.insert(out.end(), step.begin(), step.end());
        }
        const std::vector<int> lens = {5, 9, 3};
        std::vector<RowTarget> tg;
        for (int r = 0; r < 17; r += 2) tg.push_back({r, toks[r + 1]});
        scores = m.forward_score_varlen(toks.data(), lens, tg);
    };
    auto compare = [&](ModelCuda& on, ModelCuda& off, const std::string& what, double bar) {
        const std::vector<int> toks = some_tokens(on.config().vocab, 100, (uint32_t)rng());
        std::vector<float> a, b;
        std::vector<RowScore> sa, sb;
        run_all(on, toks, a, sa);
        run_all(off, toks, b, sb);
        ASSERT_EQ(a.size(), b.size());
        size_t bits = 0;
        double worst = 0;
        for (size_t i = 0; i < a.size(); ++i) {
            bits += std::memcmp(&a[i], &b[i], 4) != 0;
            worst = std::max(worst, (double)std::fabs(a[i] - b[i]) / (std::fabs(b[i]) + 1e-3));
        }
        int score_bits = 0;
        for (size_t i = 0; i < sa.size(); ++i)
            score_bits += std::memcmp(&sa[i].logprob, &sb[i].logprob, 8) != 0 || sa[i].greedy != sb[i].greedy;
        if (bar == 0) {
            EXPECT_EQ(bits, 0u) << what << ": logits differ (worst rel " << worst << ")";
            EXPECT_EQ(score_bits, 0) << what << ": varlen scores differ";
        } else {
            EXPECT_LE(worst, bar) << what;
        }
        std::printf("[cuda] %s: %zu of %zu logits differ (worst rel %.2e), %d scores\n", what.c_str(),
                    bits, a.size(), worst, score_bits);
    };
    ModelConfig c;
    c.n_layers = 2, c.d_model = 256, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64, c.d_ff = 512, c.vocab = 1000;
    for (auto [bf16, rank, kvb] : {std::tuple{false, 0, 4}, {false, 7, 4}, {false, 0, 16}, {true, 0, 16}}) {
        CudaSynthetic s;
        s.bf16 = bf16, s.rank = rank, s.kv_bits = kvb, s.seed = 5;
        CudaSynthetic u = s;
        u.fuse = false;
        ModelCuda on(c, s, 160), off(c, u, 160);
        compare(on, off, str(bf16 ? "synthetic BF16" : "synthetic W4A4", " rank ", rank, " KV", kvb), bf16 ? 1e-5 : 0);
    }
    {  // the spectral branch at prefill (100 rows, varlen): fused layers with z·Cᵀ as its own [n, out] pass
       // against unfused layers with it in the GEMM epilogue in every call (spectral_zc_add vs spec_dot)
        CudaSynthetic s;
        s.rank = 7, s.kv_bits = 4, s.seed = 6, s.spectral_fuse_max_rows = 0;
        CudaSynthetic u = s;
        u.fuse = false, u.spectral_fuse_max_rows = std::numeric_limits<int>::max();
        ModelCuda on(c, s, 160), off(c, u, 160);
        long_prefill = true;
        compare(on, off, "synthetic W4A4 rank 7 KV4, fused layers + separate z·Cᵀ vs unfused + epilogue", 0);
        long_prefill = false;
    }
    {  // decode v7: the side stream's L2 prefetch (forked after q|k|v, joined after the last layer, captured
       // into the decode graphs) is a hint: the same bits with it on and off
        CudaSynthetic s;
        s.kv_bits = 4, s.seed = 7, s.l2_prefetch_mib = 1;  // 1 MiB: o, gate|up and part of down here
        CudaSynthetic u = s;
        u.l2_prefetch_mib = 0;
        ModelCuda on(c, s, 160), off(c, u, 160);
        compare(on, off, "synthetic W4A4 KV4, L2 prefetch on vs off", 0);
    }
    {  // decode v8 (opt-in): the norms before q|k|v and gate|up inside their GEMVs (cuda::w4a4_gemv_norm)
        CudaSynthetic s;
        s.kv_bits = 4, s.seed = 8, s.norm_gemv = true;
        CudaSynthetic u = s;
        u.fuse = false;
        ModelCuda on(c, s, 160), off(c, u, 160);
        compare(on, off, "synthetic W4A4 KV4, the norm in the GEMV vs unfused", 0);
    }
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    ModelWeights w = model_load_f32(ck, false);
    for (LayerWeights& L : w.layers)
        for (std::unique_ptr<Linear>* p : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
            *p = quantize_by_hand(**p, 4, 0.9f, 0, false, false, rng);
    w.kv_bits = 4, w.kv_clip = 0.95f;
    ModelCudaOptions o_on, o_off;
    o_off.fuse = false;
    ModelCuda on(w, 160, o_on), off(w, 160, o_off);
    compare(on, off, "tiny LLaMA W4A4KV4", 0);
}

// Decode v5: the packed KV4 cache (codes + per-vector scale/zero) and the one-kernel decode
// attention against the fake-quantized fp32 cache and v4's part + merge (+ act_quant) kernels:
// every logit and score bit for bit, on prefill (GEMV and tiled), batched decode steps
// (graphs; B = 3 at different lengths) and varlen scoring; a tiny LLaMA with keys around a
// random shift (k_shift, --k-center) too.
TEST(CudaModel, PackedKvDecodeIsBitIdentical) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 37);
    auto run_all = [&](ModelCuda& m, const std::vector<int>& toks, std::vector<float>& out,
                       std::vector<RowScore>& scores) {
        const int V = m.config().vocab;
        out.clear();
        for (int n : {9, 20}) {
            std::vector<float> l((size_t)n * V, NAN);
            m.truncate(0);
            m.forward_logits(toks.data(), n, l.data(), true);
            out.insert(out.end(), l.begin(), l.end());
        }
        m.decode_setup(3, 80);  // lengths 5..~60: 1, 2 and 3 key chunks of 32
        for (int b = 0; b < 3; ++b) m.decode_prefill(b, toks.data() + b, 5 + 26 * b, nullptr);
        std::vector<float> step((size_t)3 * V, NAN);
        for (int i = 0; i < 8; ++i) {
            m.decode_step(toks.data() + 7 + 3 * i, step.data());
            out.insert(out.end(), step.begin(), step.end());
        }
        const std::vector<int> lens = {5, 9, 3};
        std::vector<RowTarget> tg;
        for (int r = 0; r < 17; r += 2) tg.push_back({r, toks[r + 1]});
        scores = m.forward_score_varlen(toks.data(), lens, tg);
    };
    auto compare = [&](ModelCuda& on, ModelCuda& off, const std::string& what) {
        const std::vector<int> toks = some_tokens(on.config().vocab, 80, (uint32_t)rng());
        std::vector<float> a, b;
        std::vector<RowScore> sa, sb;
        run_all(on, toks, a, sa);
        run_all(off, toks, b, sb);
        ASSERT_EQ(a.size(), b.size());
        size_t bits = 0, nans = 0;
        for (size_t i = 0; i < a.size(); ++i) bits += std::memcmp(&a[i], &b[i], 4) != 0, nans += a[i] != a[i];
        int score_bits = 0;
        for (size_t i = 0; i < sa.size(); ++i)
            score_bits += std::memcmp(&sa[i].logprob, &sb[i].logprob, 8) != 0 || sa[i].greedy != sb[i].greedy;
        EXPECT_EQ(bits, 0u) << what << ": logits differ";
        EXPECT_EQ(nans, 0u) << what << ": NaN logits";
        EXPECT_EQ(score_bits, 0) << what << ": varlen scores differ";
        std::printf("[cuda] packed KV + v5 vs fp32 KV + v4, %s: %zu of %zu logits differ, %d of %zu scores\n",
                    what.c_str(), bits, a.size(), score_bits, sa.size());
    };
    ModelConfig c;
    c.n_layers = 2, c.d_model = 256, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64, c.d_ff = 512, c.vocab = 1000;
    for (auto [bf16, rank, kvb] : {std::tuple{false, 0, 4}, {false, 7, 4}, {true, 0, 4}, {false, 0, 3},
                                   {false, 0, 16}, {true, 0, 16}}) {
        CudaSynthetic s;
        s.bf16 = bf16, s.rank = rank, s.kv_bits = kvb, s.seed = 7;
        CudaSynthetic u = s;
        u.kv_packed = false, u.decode_v5 = false;
        ModelCuda on(c, s, 240), off(c, u, 240);
        if (kvb <= 4) {
            EXPECT_LT(on.memory().kv_cache * 5, off.memory().kv_cache) << "packed cache not smaller";
        }
        compare(on, off, str(bf16 ? "synthetic BF16" : "synthetic W4A4", " rank ", rank, " KV", kvb));
    }
    {  // v5 with o's codes made by the attention kernel's last block (SQ_CUDA_ATT_CODES=1, read at construction)
        setenv("SQ_CUDA_ATT_CODES", "1", 1);
        CudaSynthetic s;
        s.kv_bits = 4, s.seed = 9;
        CudaSynthetic u = s;
        u.kv_packed = false, u.decode_v5 = false;
        ModelCuda on(c, s, 240), off(c, u, 240);
        unsetenv("SQ_CUDA_ATT_CODES");
        compare(on, off, "synthetic W4A4 KV4, o's codes by the attention kernel");
    }
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    ModelWeights w = model_load_f32(ck, false);
    for (LayerWeights& L : w.layers) {
        for (std::unique_ptr<Linear>* p : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
            *p = quantize_by_hand(**p, 4, 0.9f, 0, false, false, rng);
        L.k_shift = gaussian((size_t)w.cfg.n_kv_heads * w.cfg.head_dim, rng, 0.5f);
    }
    w.kv_bits = 4, w.kv_clip = 0.95f;
    ModelCudaOptions o_on, o_off;
    o_off.kv_packed = false, o_off.decode_v5 = false;
    ModelCuda on(w, 240, o_on), off(w, 240, o_off);
    compare(on, off, "tiny LLaMA W4A4KV4, keys around a shift");
}

TEST(CudaModel, DecodeErrorsAreSqErrors) {
    SKIP_WITHOUT_GPU();
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    const ModelWeights w = model_load_f32(ck, false);
    ModelCuda gpu(w, 32);
    std::vector<int> toks = {1, 2, 3, 4};
    EXPECT_THROW(gpu.decode_step(toks.data(), nullptr), Error);  // no decode_setup
    EXPECT_THROW(gpu.decode_setup(4, 9), Error);                 // 36 rows > 32
    gpu.decode_setup(2, 16);
    EXPECT_THROW(gpu.decode_step(toks.data(), nullptr), Error);  // sequences empty: prompt first
    EXPECT_THROW(gpu.decode_prefill(2, toks.data(), 1, nullptr), Error);
    EXPECT_THROW(gpu.decode_prefill(0, toks.data(), 17, nullptr), Error);
    std::vector<int> bad = {w.cfg.vocab};
    EXPECT_THROW(gpu.decode_prefill(0, bad.data(), 1, nullptr), Error);
    EXPECT_THROW(gpu.decode_len(5), Error);
    CudaSynthetic s;
    s.rank = 100;
    EXPECT_THROW(ModelCuda(w.cfg, s, 16), Error);  // rank > d_model
}

// ---------------------------------------------------------------- log-likelihoods

// The loglik plumbing (multiple-choice groups, partial scoring, truncation,
// rolling windows) scores the same on the GPU as on the CPU. FP32: one draw,
// held to 1e-4. W4A4KV4: a 4-bit activation or KV code can flip between the
// backends where its input sits within float rounding of a boundary (see
// PipelineQuantizedMatchesCpu), moving every later logprob of that request
// by far more than any bar; such near-ties are rare and land on random
// tokens, while a plumbing bug is systematic. So a W4A4 draw must meet 5e-3
// with equal greedy flags in at least one of 3 fresh draws (model and
// tokens): a flip-free run exists unless something is really wrong.
TEST(CudaLoglik, GroupsAndWindowsMatchCpu) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 9);
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    struct Draw {
        double worst = 0, worst_w = 0;
        int greedy_diff = 0;
        int64_t calls = 0;
    };
    auto run = [&](bool quant) {
        Model model(quant ? hand_quantized("tiny_llama", 4, true, true, rng) : model_load_f32(ck, false));
        const int V = model.config().vocab, ctx = 48;
        auto cpu = loglik_source_make(model, ctx, "cpu");
        auto gpu = loglik_source_make(model, ctx, "cuda");
        std::uniform_int_distribution<int> tokd(0, V - 1), len(1, 9);
        auto toks = [&](int n) {
            std::vector<int> t(n);
            for (auto& x : t) x = tokd(rng);
            return t;
        };
        std::vector<std::vector<TokenPair>> groups;
        // multiple choice: shared context, continuations of different lengths
        for (int g = 0; g < 3; ++g) {
            std::vector<int> c = toks(5 + 7 * g);
            std::vector<TokenPair> grp;
            for (int r = 0; r < 4; ++r) grp.push_back({c, toks(len(rng))});
            groups.push_back(grp);
        }
        // partial scoring: different contexts, the same continuation
        std::vector<int> cont = toks(4);
        groups.push_back({{toks(6), cont}, {toks(9), cont}});
        // one request (the continuation inside the shared part), one truncated past ctx
        groups.push_back({{toks(10), toks(3)}});
        groups.push_back({{toks(60), toks(5)}});
        // identical requests; a continuation that starts like another
        std::vector<int> c2 = toks(8), k2 = toks(3);
        std::vector<int> k3 = k2;
        k3.push_back(tokd(rng));
        groups.push_back({{c2, k2}, {c2, k2}, {c2, k3}});
        Draw d;
        for (const auto& grp : groups) {
            const auto a = cpu->score(grp), b = gpu->score(grp);
            EXPECT_EQ(a.size(), b.size());
            for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
                d.worst = std::max(d.worst, std::fabs(a[i].logprob - b[i].logprob));
                d.greedy_diff += a[i].greedy != b[i].greedy;
            }
        }
        std::vector<int> w = toks(ctx);
        const auto ra = cpu->rolling_logprobs(w), rb = gpu->rolling_logprobs(w);
        EXPECT_EQ(ra.size(), rb.size());
        for (size_t i = 0; i < std::min(ra.size(), rb.size()); ++i)
            d.worst_w = std::max(d.worst_w, std::fabs(ra[i] - rb[i]));
        d.calls = gpu->forward_calls();
        std::printf("[cuda] loglik %s: max |dlogprob| groups %.2e, window %.2e, greedy flags differing %d\n",
                    quant ? "W4A4KV4" : "fp32", d.worst, d.worst_w, d.greedy_diff);
        return d;
    };
    const Draw f = run(false);
    EXPECT_LE(f.worst, 1e-4) << "score";
    EXPECT_LE(f.worst_w, 1e-4) << "rolling";
    EXPECT_EQ(f.greedy_diff, 0);
    EXPECT_GT(f.calls, 0);
    std::string tried;
    bool held = false;
    for (int draw = 0; draw < 3 && !held; ++draw) {
        const Draw q = run(true);
        EXPECT_GT(q.calls, 0);
        held = q.worst <= 5e-3 && q.worst_w <= 5e-3 && q.greedy_diff == 0;
        tried += " [groups " + std::to_string(q.worst) + ", window " + std::to_string(q.worst_w) + ", greedy " +
                 std::to_string(q.greedy_diff) + "]";
    }
    EXPECT_TRUE(held) << "W4A4KV4: no draw of 3 within 5e-3:" << tried;
}

// ---------------------------------------------------------------- batched (varlen) scoring

// Random requests as the tasks make them: multiple choice (one context,
// several continuations), partial scoring, one-token contexts, contexts past
// max_length (left truncation), and windows.
std::vector<std::vector<TokenPair>> batch_groups(int vocab, int max_length, std::mt19937& rng) {
    std::uniform_int_distribution<int> tokd(0, vocab - 1), clen(1, max_length + 12), klen(1, 8), nreq(1, 4);
    auto toks = [&](int n) {
        std::vector<int> t(n);
        for (auto& x : t) x = tokd(rng);
        return t;
    };
    std::vector<std::vector<TokenPair>> groups;
    for (int g = 0; g < 40; ++g) {
        std::vector<TokenPair> grp;
        const std::vector<int> c = toks(g == 0 ? 1 : clen(rng)), k = toks(klen(rng));
        const int n = nreq(rng);
        for (int r = 0; r < n; ++r) grp.push_back({g % 3 == 2 ? toks(clen(rng)) : c, g % 3 == 2 ? k : toks(klen(rng))});
        groups.push_back(grp);
    }
    return groups;
}

// Per-token |Δ log-prob| between two scorings of the same requests: a
// request's sum over c tokens is compared as |Δ| / c.
struct Agreement {
    double worst = 0, sum = 0;
    int64_t tokens = 0, greedy_diff = 0;
    void add(double a, double b, int n_tokens, bool ga, bool gb) {
        const double d = std::fabs(a - b);
        worst = std::max(worst, d / n_tokens);
        sum += d;
        tokens += n_tokens;
        greedy_diff += ga != gb;
    }
    double mean() const { return tokens ? sum / (double)tokens : 0.0; }
};

// The same requests through CudaLoglik's batched path (varlen, no prefix
// sharing; batches of 96 tokens with ctx 48, so several batches and
// sequences cut at every boundary) and its one-document path, and against
// the CPU ModelLoglik. FP32: every per-token difference is float rounding
// (cuBLAS picks algorithms by row count; attention tiles at sequence
// boundaries): logits of size ~10 with ~1e-6 relative error move a
// log-prob by ~1e-5, so 1e-4 per token, with identical greedy flags.
// W4A4KV4 (hand-quantized tiny LLaMA, qk rotation, spectral, online
// Hadamard): a rounding difference that lands on a 4-bit activation step
// moves a code and the flip cascades, so the bar is on aggregates of
// batched vs one-document (both on the GPU): mean |Δ| ≤ 1e-3 per token and
// max ≤ 5e-2 (one flipped code among d = 64 inputs moves a logit by about
// one step / 8 of its scale, ~5e-2). Against the CPU the W4A4 numbers are
// printed only: there the rounding differs in every op (not only in GEMM
// algorithms), flips are more frequent (measured once: mean 1.1e-3, max
// 5.8e-2 per token) and CudaLoglik.GroupsAndWindowsMatchCpu owns that check.
TEST(CudaBatch, BatchedScoresMatchUnbatchedAndCpu) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 12);
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    for (int quant = 0; quant < 2; ++quant) {
        Model model(quant ? hand_quantized("tiny_llama", 4, true, true, rng) : model_load_f32(ck, false));
        const int V = model.config().vocab, ctx = 48;
        auto cpu = loglik_source_make(model, ctx, "cpu");
        auto gpu = loglik_source_make(model, ctx, "cuda", 96);
        EXPECT_EQ(gpu->batch_tokens(), 96);
        const auto groups = batch_groups(V, ctx, rng);
        std::vector<std::vector<ContinuationScore>> one, cpu_s;
        const int64_t one0 = gpu->forward_calls();
        for (const auto& g : groups) one.push_back(gpu->score(g)), cpu_s.push_back(cpu->score(g));
        const int64_t one_calls = gpu->forward_calls() - one0;
        const int64_t calls0 = gpu->forward_calls();
        const auto many = gpu->score_batch(groups);
        const int64_t batched_calls = gpu->forward_calls() - calls0;
        EXPECT_LT(batched_calls, one_calls);  // ~2 requests of ≤ 48 tokens per 96-token batch vs ≥ 1 call each
        // The one-document path after a varlen call (which leaves the cache at 0): bit for bit as before.
        for (size_t g = 0; g < groups.size(); g += 7) {
            const auto again = gpu->score(groups[g]);
            for (size_t r = 0; r < again.size(); ++r) EXPECT_EQ(again[r].logprob, one[g][r].logprob);
        }
        Agreement vs_one, vs_cpu;
        ASSERT_EQ(many.size(), groups.size());
        for (size_t g = 0; g < groups.size(); ++g) {
            ASSERT_EQ(many[g].size(), groups[g].size());
            for (size_t r = 0; r < groups[g].size(); ++r) {
                const int c = (int)groups[g][r].continuation.size();
                vs_one.add(many[g][r].logprob, one[g][r].logprob, c, many[g][r].greedy, one[g][r].greedy);
                vs_cpu.add(many[g][r].logprob, cpu_s[g][r].logprob, c, many[g][r].greedy, cpu_s[g][r].greedy);
            }
        }
        // Windows: 47 inputs each, two per batch of 96.
        std::vector<std::vector<int>> wins;
        for (int w = 0; w < 5; ++w) wins.push_back(some_tokens(V, ctx, test_seed() + 20 + w));
        const int64_t wcalls0 = gpu->forward_calls();
        const auto lw = gpu->rolling_logprobs_batch(wins);
        EXPECT_EQ(gpu->forward_calls() - wcalls0, 3);
        Agreement win_one;
        ASSERT_EQ(lw.size(), wins.size());
        for (size_t w = 0; w < wins.size(); ++w) {
            const auto ref = gpu->rolling_logprobs(wins[w]);
            ASSERT_EQ(lw[w].size(), ref.size());
            for (size_t i = 0; i < ref.size(); ++i) win_one.add(lw[w][i], ref[i], 1, false, false);
        }
        const char* what = quant ? "W4A4KV4" : "fp32";
        std::printf("[cuda] batched %s (%lld calls, one-document path %lld, %zu documents): per-token |dlogprob| vs one-document max %.2e "
                    "mean %.2e, vs CPU max %.2e mean %.2e, windows max %.2e mean %.2e; greedy flips %lld / %lld\n",
                    what, (long long)batched_calls, (long long)one_calls, groups.size(), vs_one.worst, vs_one.mean(), vs_cpu.worst,
                    vs_cpu.mean(), win_one.worst, win_one.mean(), (long long)vs_one.greedy_diff,
                    (long long)vs_cpu.greedy_diff);
        if (!quant) {
            EXPECT_LE(vs_one.worst, 1e-4);
            EXPECT_LE(vs_cpu.worst, 1e-4);
            EXPECT_LE(win_one.worst, 1e-4);
            EXPECT_EQ(vs_one.greedy_diff, 0);
            EXPECT_EQ(vs_cpu.greedy_diff, 0);
        } else {
            for (const Agreement* a : {&vs_one, &win_one}) {
                EXPECT_LE(a->mean(), 1e-3) << what;
                EXPECT_LE(a->worst, 5e-2) << what;
            }
        }
    }
}

// Every Linear kind and option through the varlen forward: sequences of
// awkward lengths packed into one call against each sequence alone, all
// rows scored. FP32: 1e-4 per token and exact greedy flags, as above. Every
// model with a quantizer (activations, or the KV cache: a 4-bit KV code
// moves on a rounding difference just as an activation code does) is
// compared flip-aware, as HandQuantizedW4A4MatchesCpu: the same model on the
// probed CPU finds each sequence's first near-tie token; rows before it see
// the same codes on both GPU paths and are held to 1e-3 per token, rows from
// it on are reported only (an aggregate bar there was flaky: seed 2177115845
// moved one W4A4KV4 token by 0.142 through a flipped code).
TEST(CudaBatch, VarlenForwardMatchesSequencesAlone) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 13);
    struct Case {
        std::string what;
        ModelWeights w;
        std::unique_ptr<ProbedCpu> probe;  // quantized models: the same weights on the CPU, probed
    };
    std::vector<Case> cases;
    for (const char* name : {"tiny_llama", "tiny_qwen2", "tiny_llama_spm"}) {
        Checkpoint ck = checkpoint_open(kData + "/models/" + name);
        cases.push_back({name, model_load_f32(ck, false), nullptr});
    }
    auto quantized = [&](const char* what, const char* name, int a_bits, bool kv4, bool qk_rotate) {
        std::mt19937 again = rng;  // hand_quantized draws only from its rng: the same model twice
        ModelWeights w = hand_quantized(name, a_bits, kv4, qk_rotate, rng);
        cases.push_back({what, std::move(w),
                         std::make_unique<ProbedCpu>(hand_quantized(name, a_bits, kv4, qk_rotate, again))});
    };
    quantized("tiny_llama W4A4KV4 rot+spec+had", "tiny_llama", 4, true, true);
    quantized("tiny_qwen2 W4A8 bias+spec+had", "tiny_qwen2", 8, false, false);
    quantized("tiny_llama_spm W4A16KV4", "tiny_llama_spm", 16, true, false);
    const std::vector<int> lens = {1, 2, 3, 17, 33, 40, 1, 64, 5};
    for (Case& c : cases) {
        const int V = c.w.cfg.vocab;
        ModelCuda gpu(c.w, 166);  // = the lengths' sum
        Agreement held, after;
        // Quantized models: fresh tokens until 48 rows were held (at 8-bit activations
        // the first near-tie comes after ~2 tokens: 10-15 held rows per draw measured on
        // the H100, 4-5 draws at 11 seeds); at most 32 draws, and the test says so if that
        // was not enough.
        int draws = 0;
        for (; draws < (c.probe ? 32 : 1) && (draws == 0 || held.tokens < 48); ++draws) {
            std::vector<int> tokens, seq_lens = lens;
            std::vector<RowTarget> tq;
            std::vector<std::vector<int>> seqs;
            for (int len : lens) {
                seqs.push_back(some_tokens(V, len, (uint32_t)rng()));
                for (int i = 0; i < len; ++i) tq.push_back({(int)tokens.size() + i, (int)(rng() % V)});
                tokens.insert(tokens.end(), seqs.back().begin(), seqs.back().end());
            }
            gpu.truncate(0);
            const std::vector<RowScore> packed = gpu.forward_score_varlen(tokens.data(), seq_lens, tq);
            EXPECT_EQ(gpu.pos(), 0);
            size_t k = 0;
            for (const auto& s : seqs) {
                std::vector<RowTarget> own;
                for (int i = 0; i < (int)s.size(); ++i) own.push_back({i, tq[k + i].target});
                gpu.truncate(0);
                const std::vector<RowScore> alone = gpu.forward_score(s.data(), (int)s.size(), own);
                const int t_star = c.probe ? c.probe->forward(s, nullptr) : (int)s.size();
                for (size_t i = 0; i < alone.size(); ++i, ++k)
                    ((int)i < t_star ? held : after)
                        .add(packed[k].logprob, alone[i].logprob, 1, packed[k].greedy, alone[i].greedy);
            }
        }
        std::printf("[cuda] varlen %s (%d draws): %lld rows before their sequence's first near-tie: per-token "
                    "|dlogprob| max %.2e mean %.2e, greedy flips %lld; %lld rows from it on: max %.2e mean %.2e, "
                    "flips %lld\n",
                    c.what.c_str(), draws, (long long)held.tokens, held.worst, held.mean(),
                    (long long)held.greedy_diff, (long long)after.tokens, after.worst, after.mean(),
                    (long long)after.greedy_diff);
        if (!c.probe) {
            EXPECT_EQ(after.tokens, 0) << c.what;
            EXPECT_LE(held.worst, 1e-4) << c.what;
            EXPECT_EQ(held.greedy_diff, 0) << c.what;
        } else {
            EXPECT_GE(held.tokens, 48) << c.what << ": near-ties everywhere; " << held.tokens << " rows held in "
                                       << draws << " draws";
            EXPECT_LE(held.worst, 1e-3) << c.what;
        }
    }
}

// Batch invariance: a sequence's scores in a varlen call are bit for bit the
// same whatever else the batch holds and wherever the sequence sits in it
// (GEMMs at the capacity's row count, attention blocks per sequence,
// lm_head chunks of one shape), W4A4 included, so quantizer chaos cannot
// make a document's score depend on its neighbours or on the batch size.
TEST(CudaBatch, VarlenIsBatchInvariant) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 14);
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    for (int quant = 0; quant < 2; ++quant) {
        const ModelWeights w = quant ? hand_quantized("tiny_llama", 4, true, true, rng) : model_load_f32(ck, false);
        const int V = w.cfg.vocab;
        ModelCuda gpu(w, 160);
        const std::vector<int> a = some_tokens(V, 37, (uint32_t)rng());
        std::vector<int> a_targets;
        for (size_t i = 0; i < a.size(); ++i) a_targets.push_back((int)(rng() % V));
        std::vector<std::vector<RowScore>> seen;
        for (const std::vector<int>& pre_lens : std::vector<std::vector<int>>{{}, {5}, {1, 60}, {3, 2, 51}, {110}}) {
            std::vector<int> tokens, lens;
            std::vector<RowTarget> tq;
            for (int len : pre_lens) {
                const std::vector<int> b = some_tokens(V, len, (uint32_t)rng());
                for (int i = 0; i < len; ++i) tq.push_back({(int)tokens.size() + i, (int)(rng() % V)});
                tokens.insert(tokens.end(), b.begin(), b.end());
                lens.push_back(len);
            }
            const int base = (int)tokens.size(), first = (int)tq.size();
            for (size_t i = 0; i < a.size(); ++i) tq.push_back({base + (int)i, a_targets[i]});
            tokens.insert(tokens.end(), a.begin(), a.end());
            lens.push_back((int)a.size());
            const std::vector<RowScore> r = gpu.forward_score_varlen(tokens.data(), lens, tq);
            seen.emplace_back(r.begin() + first, r.end());
        }
        int diff = 0;
        for (size_t k = 1; k < seen.size(); ++k)
            for (size_t i = 0; i < a.size(); ++i)
                diff += seen[k][i].logprob != seen[0][i].logprob || seen[k][i].greedy != seen[0][i].greedy;
        EXPECT_EQ(diff, 0) << (quant ? "W4A4KV4" : "fp32") << ": scores that depend on the batch";
    }
}

TEST(CudaBatch, VarlenErrorsAreSqErrors) {
    SKIP_WITHOUT_GPU();
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    Model cpu(model_load_f32(ck, false));
    ModelCuda gpu(cpu.weights(), 8);
    const std::vector<int> toks = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    EXPECT_THROW(gpu.forward_score_varlen(toks.data(), {4, 5}, {}), Error);         // 9 > capacity 8
    EXPECT_THROW(gpu.forward_score_varlen(toks.data(), {4, 0, 2}, {}), Error);      // empty sequence
    EXPECT_THROW(gpu.forward_score_varlen(toks.data(), {}, {}), Error);             // nothing
    EXPECT_THROW(gpu.forward_score_varlen(toks.data(), {3, 3}, {{6, 1}}), Error);   // row outside
    EXPECT_THROW(gpu.forward_score_varlen(toks.data(), {3, 3}, {{0, cpu.config().vocab}}), Error);
    EXPECT_THROW(loglik_source_make(cpu, 16, "cuda", 8), Error);  // batch below the context length
    const auto ok = gpu.forward_score_varlen(toks.data(), {3, 5}, {{0, 1}, {7, 2}});
    EXPECT_EQ(ok.size(), 2u);
}

// Diagnostic on a real packed model (skipped unless SQ_DIAG_SQM names a .sqm
// and SQ_DIAG_TEXT a text file; scripts/gpu_session.sh runs it on the H100):
// per-token NLL of one window on the CPU and the GPU, and of the GPU on a copy
// whose embedding table is perturbed by one float ulp. A W4A4 model's
// activation quantizer is discontinuous, so float-rounding differences flip
// some 4-bit codes and the flips cascade; if GPU-vs-CPU differences are of the
// size GPU-vs-perturbed-GPU differences are, they are rounding, not a bug.
// The same window scored in a varlen batch (behind another sequence) is the
// third comparison: batched vs one-document scoring on a real W4A4 model.
TEST(CudaDiag, RealModelAgreement) {
    const char* sqm = std::getenv("SQ_DIAG_SQM");
    const char* txt = std::getenv("SQ_DIAG_TEXT");
    if (!sqm || !txt) GTEST_SKIP() << "set SQ_DIAG_SQM and SQ_DIAG_TEXT";
    SKIP_WITHOUT_GPU();
    const int n = std::getenv("SQ_DIAG_TOKENS") ? std::atoi(std::getenv("SQ_DIAG_TOKENS")) : 1024;
    std::ifstream f(txt, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    PackedModel pm = packed_model_load(sqm);
    Tokenizer tok(pm.tokenizer);
    std::vector<int> toks = tok.encode(std::string_view(text).substr(0, 40 * n));
    ASSERT_GT((int)toks.size(), n);
    toks.resize(n);
    const int V = pm.weights.cfg.vocab;
    auto nll_of = [&](const float* logits, int t) {
        bool top = false;
        return -logprob_of(logits + (size_t)t * V, V, toks[t + 1], &top);
    };
    std::vector<double> cpu_nll(n - 1), gpu_nll(n - 1), pert_nll(n - 1), var_nll(n - 1);
    {
        Model cpu(std::move(pm.weights));
        std::vector<float> logits((size_t)n * V);
        KVCache cache(cpu.config(), n);
        for (int i = 0; i < n; i += 256) cpu.forward(&toks[i], std::min(256, n - i), cache, &logits[(size_t)i * V], true);
        for (int t = 0; t < n - 1; ++t) cpu_nll[t] = nll_of(logits.data(), t);
        ModelCuda gpu(cpu.weights(), n);
        gpu.forward_logits(toks.data(), n, logits.data(), true);
        for (int t = 0; t < n - 1; ++t) gpu_nll[t] = nll_of(logits.data(), t);
        {
            // The same window in a varlen batch, behind a 300-token sequence (other rows, other GEMM sizes).
            const int pre = 300;
            std::vector<int> packed(toks.rbegin(), toks.rbegin() + pre);
            packed.insert(packed.end(), toks.begin(), toks.end());
            std::vector<RowTarget> tq;
            for (int t = 0; t < n - 1; ++t) tq.push_back({pre + t, toks[t + 1]});
            ModelCuda gv(cpu.weights(), n + pre);
            const std::vector<RowScore> r = gv.forward_score_varlen(packed.data(), {pre, n}, tq);
            for (int t = 0; t < n - 1; ++t) var_nll[t] = -r[t].logprob;
        }
        ModelWeights& w = cpu.weights();
        std::mt19937 rng(test_seed());
        for (auto& e : w.embed) e = std::nextafter(e, (rng() & 1) ? INFINITY : -INFINITY);
        ModelCuda pert(w, n);
        pert.forward_logits(toks.data(), n, logits.data(), true);
        for (int t = 0; t < n - 1; ++t) pert_nll[t] = nll_of(logits.data(), t);
    }
    auto stats = [&](const char* what, const std::vector<double>& a, const std::vector<double>& b) {
        double ma = 0, mb = 0, mad = 0, mx = 0;
        int big = 0, first = -1;
        for (int t = 0; t < n - 1; ++t) {
            ma += a[t], mb += b[t];
            const double d = std::fabs(a[t] - b[t]);
            mad += d, mx = std::max(mx, d);
            if (d > 1e-3) big += 1, first = first < 0 ? t : first;
        }
        std::printf("[diag] %-22s mean NLL %.5f vs %.5f (PPL ratio %.5f); mean|d| %.2e max|d| %.2e; "
                    "%d of %d tokens |d|>1e-3, first at %d\n",
                    what, ma / (n - 1), mb / (n - 1), std::exp((mb - ma) / (n - 1)), mad / (n - 1), mx, big, n - 1,
                    first);
    };
    stats("gpu vs cpu", cpu_nll, gpu_nll);
    stats("gpu vs gpu(embed+1ulp)", gpu_nll, pert_nll);
    stats("gpu vs gpu varlen batch", gpu_nll, var_nll);
}

// Decode v6: a model whose lm_head is Q8_0 (model_embed_quant 8, what packed files hold by
// default) keeps it on the device as Q8_0 too and reads it with q8_gemv in one-row calls (a
// prompt's last row, one-sequence decode steps, graph-replayed), the float32 copy elsewhere. The
// hidden state is the same bits either way (lm_head is the last op), so logits differ only by
// the two float summation orders, each within γ_{d+1}·Σ|x·w| of the exact product, and
// Σ|x·w| ≤ ‖x‖₂‖w_j‖₂ ≤ √d·max|final_norm|·‖w_j‖₂ (x = RMSNorm(h)·g: ‖RMSNorm(h)‖₂ ≤ √d).
TEST(CudaModel, Q8LmHeadMatchesFloat32Copy) {
    SKIP_WITHOUT_GPU();
    std::mt19937 rng(test_seed() + 29);
    Checkpoint ck = checkpoint_open(kData + "/models/tiny_llama");
    ModelWeights w = model_load_f32(ck, false);
    model_embed_quant(w, 8);
    const auto* lq = dynamic_cast<const LinearQ8*>(w.lm_head.get());
    ASSERT_NE(lq, nullptr);
    const int V = w.cfg.vocab, d = w.cfg.d_model;
    const std::vector<float> W = lq->matrix()->dequant();
    float gmax = 0;
    for (float g : w.final_norm) gmax = std::max(gmax, std::fabs(g));
    const double u = std::ldexp(1.0, -24), gam = (d + 1) * u / (1 - (d + 1) * u);
    std::vector<double> bar(V);
    for (int j = 0; j < V; ++j) {
        double nw = 0;
        for (int i = 0; i < d; ++i) nw += (double)W[(size_t)j * d + i] * W[(size_t)j * d + i];
        bar[j] = 2 * gam * std::sqrt((double)d) * gmax * std::sqrt(nw) * (1 + 1e-6);  // 1e-6: eps of RMSNorm
    }
    ModelCudaOptions on, off;
    off.lm_head_q8 = false;
    ModelCuda a(w, 96, on), b(w, 96, off);
    EXPECT_GT(a.memory().total, b.memory().total) << "no Q8_0 copy of the lm_head on the device";
    std::uniform_int_distribution<int> tok(0, V - 1);
    std::vector<int> toks(12);
    for (int& t : toks) t = tok(rng);
    auto check = [&](const std::vector<float>& la, const std::vector<float>& lb, const char* what) {
        int over = 0, same = 0;
        double worst = 0;
        for (size_t i = 0; i < la.size(); ++i) {
            const double e = std::fabs((double)la[i] - lb[i]);
            over += !(e <= bar[i % V]);
            same += la[i] == lb[i];
            worst = std::max(worst, e / bar[i % V]);
        }
        EXPECT_EQ(over, 0) << what;
        std::printf("[cuda] Q8 lm_head %s: %zu logits, %d bit-equal to the f32 GEMM's, worst %.3f of the bound\n",
                    what, la.size(), same, worst);
    };
    std::vector<float> la(V), lb(V);
    a.forward_logits(toks.data(), 7, la.data(), false);  // lm_head on the last row only
    b.forward_logits(toks.data(), 7, lb.data(), false);
    check(la, lb, "forward_logits, last of 7 rows");
    a.decode_setup(1, 32), b.decode_setup(1, 32);
    a.decode_prefill(0, toks.data(), 5, nullptr), b.decode_prefill(0, toks.data(), 5, nullptr);
    std::vector<float> da, db;
    for (int step = 0; step < 3; ++step) {  // the first step captures the graph, the next replay it
        a.decode_step(toks.data() + 5 + step, la.data());
        b.decode_step(toks.data() + 5 + step, lb.data());
        da.insert(da.end(), la.begin(), la.end()), db.insert(db.end(), lb.begin(), lb.end());
    }
    check(da, db, "decode steps, batch 1");
    // Above one row the float32 copy runs in both: the same bits.
    a.decode_setup(2, 32), b.decode_setup(2, 32);
    for (int s = 0; s < 2; ++s) a.decode_prefill(s, toks.data() + s, 4, nullptr), b.decode_prefill(s, toks.data() + s, 4, nullptr);
    std::vector<float> ea((size_t)2 * V), eb((size_t)2 * V);
    a.decode_step(toks.data() + 6, ea.data());
    b.decode_step(toks.data() + 6, eb.data());
    EXPECT_EQ(std::memcmp(ea.data(), eb.data(), ea.size() * 4), 0) << "batch 2 must not take the Q8_0 path";
}

}  // namespace

#else
#include <gtest/gtest.h>

#include "core/error.h"
#include "eval/loglik_cuda.h"
#include "io/checkpoint.h"
#include "model/model.h"

// A CPU-only build refuses --device cuda with a clear message.
TEST(CudaLoglik, CpuBuildRefusesCuda) {
    sq::Checkpoint ck = sq::checkpoint_open(std::string(SQ_TEST_DATA) + "/models/tiny_llama");
    sq::Model model(sq::model_load_f32(ck, false));
    EXPECT_FALSE(sq::cuda_built());
    try {
        sq::loglik_source_make(model, 16, "cuda");
        FAIL() << "accepted";
    } catch (const sq::Error& e) {
        EXPECT_NE(std::string(e.what()).find("built without CUDA"), std::string::npos) << e.what();
    }
    EXPECT_NE(sq::loglik_source_make(model, 16, "cpu"), nullptr);
}
#endif
