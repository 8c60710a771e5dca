// ModelCuda: host orchestration of the CUDA forward pass (see model_cuda.h).
// Compiled into specquant_lib always, empty unless SPECQUANT_HAS_CUDA.
//
// One stream, one cuBLAS handle, no global state (a second instance is a
// second model). Per layer (n tokens at positions pos..pos+n−1):
//   x = rmsnorm(h)            q, k, v = linear(x)     rope(q, k); [qk Hadamard]
//   kv_store (fake-quant)      att = attention(q, cache)
//   h += o(att); x = rmsnorm(h)    act = silu(gate(x)) ⊙ up(x)
//   h += down(act); x = rmsnorm(h) with the next layer's (or the final) norm
// Varlen calls (forward_score_varlen) run the same body over packed
// sequences: RoPE at per-token positions, K/V written at cache rows 0..n−1,
// block-diagonal causal attention (kernels attention_varlen, rope_varlen),
// every GEMM at the capacity's row count (batch invariance, model_cuda.h).
// Linear on the device, in the reference's order (linear_w4a4.cpp):
//   [x ← (x ⊙ signs) · H_n]  (online Hadamard, dense ±1/√n GEMM)
//   f32:   y = x·Wᵀ + b
//   w4a16: y = (x·(scale·code)ᵀ + (x·B)·Cᵀ) + b
//   w4a4:  q, s, z = act_quant(x); acc = q·codeᵀ (FP32 GEMM on integers, exact);
//          y = (s·scale·(acc − z·rowsum) + (x·B)·Cᵀ) + b
#ifdef SPECQUANT_HAS_CUDA
#include "model/model_cuda.h"

#include <cublas_v2.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>

#include "core/error.h"
#include "core/fp16.h"
#include "kernels/cuda/cublas_check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/w4a4_format.h"
#include "model/linear_w4a4.h"
#include "model/linear_w4a4_cpu.h"
#include "quant/hadamard.h"

namespace sq {

namespace {

// Rows of logits one lm_head call produces: 512 × 49152 × 4 B = 100 MB.
constexpr int kLogitRows = 512;

// Largest online-Hadamard order built as a dense matrix (n² floats: 8192² = 256 MB).
constexpr int kMaxDenseHadamard = 8192;

// Forward calls of up to kGraphMaxTokens tokens replay a CUDA graph captured
// once per token count (~450 launches for SmolLM2: ~17 s of host time over
// the quick suite's 3.6k calls when launched one by one). The cache position
// is read on the device, so one graph serves every position. At most
// kGraphCache graphs are kept (the cache is cleared when full).
constexpr int kGraphMaxTokens = 256;
constexpr size_t kGraphCache = 512;
constexpr size_t kCublasWorkspace = 32u << 20;  // set explicitly: cuBLAS must not allocate while captured

// Owning device allocation (cudaMalloc; no managed memory). Move-only.
template <class T>
class DevBuf {
public:
    DevBuf() = default;
    ~DevBuf() {
        if (p_) cudaFree(p_);
    }
    DevBuf(DevBuf&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
    DevBuf& operator=(DevBuf&& o) noexcept {
        if (this != &o) {
            if (p_) cudaFree(p_);
            p_ = o.p_, n_ = o.n_;
            o.p_ = nullptr, o.n_ = 0;
        }
        return *this;
    }
    DevBuf(const DevBuf&) = delete;
    DevBuf& operator=(const DevBuf&) = delete;

    void alloc(size_t n, const std::string& what, size_t* counter) {
        SQ_CHECK(!p_, "CUDA: ", what, " allocated twice");
        if (n == 0) return;
        void* p = nullptr;
        const cudaError_t e = cudaMalloc(&p, n * sizeof(T));
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            fail("CUDA: cannot allocate ", (n * sizeof(T) + (1 << 20) - 1) >> 20, " MiB for ", what, ": ",
                 cudaGetErrorString(e));
        }
        p_ = static_cast<T*>(p);
        n_ = n;
        if (counter) *counter += n * sizeof(T);
    }
    void upload(const T* host, size_t n, const std::string& what, size_t* counter) {
        alloc(n, what, counter);
        if (n) SQ_CUDA(cudaMemcpy(p_, host, n * sizeof(T), cudaMemcpyHostToDevice));
    }
    T* get() const { return p_; }
    size_t size() const { return n_; }

private:
    T* p_ = nullptr;
    size_t n_ = 0;
};

enum class LinKind { f32, w4a4, w4a16 };

// Puts Impl::gemm_rows back to 0 (per-call GEMM row count) on every exit.
struct RowsReset {
    int& rows;
    ~RowsReset() { rows = 0; }
};

struct DLinear {
    LinKind kind = LinKind::f32;
    int64_t in = 0, out = 0;
    DevBuf<float> w;         // [out, in]: f32 weights | scale·code (w4a16) | codes as integer floats (w4a4)
    const float* w_shared = nullptr;  // tied lm_head: the embedding table instead of `w`
    DevBuf<float> bias;      // [out] or empty
    int a_bits = 16;
    float a_clip = 1.0f;
    int64_t k_chunk = 0;     // w4a4: K columns per exact float GEMM
    DevBuf<float> scale;     // [out]
    DevBuf<int32_t> rowsum;  // [out]
    int rank = 0;
    DevBuf<float> basis_t;   // Bᵀ [rank, in]
    DevBuf<float> coef;      // C [out, rank]
    int had_in = 0;
    DevBuf<float> had_signs;     // [in]
    const float* had = nullptr;  // H_n [in, in], shared per order
    const float* weight() const { return w_shared ? w_shared : w.get(); }
};

struct DLayer {
    DevBuf<float> attn_norm, ffn_norm;
    DLinear q, k, v, o, gate, up, down;
};

}  // namespace

struct ModelCuda::Impl {
    ModelConfig cfg;
    int cap = 0, pos = 0;
    int kv_bits = 16;
    float kv_clip = 1.0f;
    bool qk_rotate = false;
    size_t bytes = 0;
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;

    DevBuf<float> embed, final_norm, inv_freq;
    std::vector<DLayer> layers;
    DLinear lm_head;
    std::map<int, DevBuf<float>> had;  // H_n by order

    DevBuf<float> kc, vc;  // [layer][cap][kv][hd]
    // Scratch, [cap, width] unless noted.
    DevBuf<float> h, x, q, k, v, qr, kr, att, proj, act, upb;
    DevBuf<float> rot_a, rot_b;        // [cap, max_in]: online Hadamard
    DevBuf<float> qf;                  // [rows, max_in]: activation codes
    DevBuf<float> a_scale;             // [rows]
    DevBuf<int32_t> a_zero;            // [rows]
    DevBuf<float> acc;                 // [rows, max_out] integer-valued float accumulators
    DevBuf<int32_t> acc_i;             // [rows, max_out] when K is split
    DevBuf<float> zb, spec;            // [rows, max_rank], [rows, max_out]
    DevBuf<float> logits;              // [kLogitRows, vocab]
    DevBuf<int> tokens;                // [cap]
    DevBuf<int> pos_dev;               // [1]: the cache position of this call's first token
    DevBuf<int> positions;             // [cap]: varlen calls, each token's position in its sequence
    DevBuf<int> gather_rows;           // [cap]: varlen scoring, the rows that go through lm_head
    DevBuf<float> xs;                  // [lm rows, d]: those rows, gathered
    DevBuf<int> att_blocks;            // varlen attention block table (cuda::attention_blocks)
    int att_nblocks = 0;
    // > 0: every GEMM runs on this many rows instead of n (varlen calls: the
    // capacity), so cuBLAS picks one algorithm whatever the batch holds and a
    // row's bits depend on that row alone; rows past n are scratch.
    int gemm_rows = 0;
    DevBuf<uint8_t> blas_ws;           // cuBLAS workspace
    std::map<int, cudaGraphExec_t> graphs;  // by token count (one-document calls; varlen calls run eagerly)
    bool use_graphs = true;
    DevBuf<int> q_rows, q_targets;     // [queries]: grown on demand
    DevBuf<double> q_lp;
    DevBuf<uint8_t> q_greedy;

    // What the activation codes in qf were computed from: k and v reuse q's
    // codes (up reuses gate's) when the caller says the input is the same and
    // the quantizer settings match.
    const float* quant_src = nullptr;
    int quant_n = 0, quant_bits = 0;
    float quant_clip = 0.0f;

    ~Impl() {
        clear_graphs();
        if (blas) cublasDestroy(blas);
        if (stream) cudaStreamDestroy(stream);
    }

    // The nq scores logprob_gather left in q_lp / q_greedy, back to the host:
    // query i (in sorted order) answers out[order[i]].
    std::vector<RowScore> fetch_scores(int nq, const std::vector<int>& order, size_t count) {
        std::vector<double> lp(nq);
        std::vector<uint8_t> gr(nq);
        SQ_CUDA(cudaMemcpyAsync(lp.data(), q_lp.get(), nq * sizeof(double), cudaMemcpyDeviceToHost, stream));
        SQ_CUDA(cudaMemcpyAsync(gr.data(), q_greedy.get(), nq, cudaMemcpyDeviceToHost, stream));
        SQ_CUDA(cudaStreamSynchronize(stream));
        std::vector<RowScore> out(count);
        for (int i = 0; i < nq; ++i) out[order[i]] = {lp[i], gr[i] != 0};
        return out;
    }

    void clear_graphs() {
        for (auto& [n, g] : graphs) cudaGraphExecDestroy(g);
        graphs.clear();
    }

    void ensure_queries(int nq) {
        if ((size_t)nq <= q_rows.size()) return;
        const size_t n = std::max<size_t>(nq, 2 * q_rows.size());
        SQ_CUDA(cudaStreamSynchronize(stream));  // the old buffers may still be read
        q_rows = {}, q_targets = {}, q_lp = {}, q_greedy = {};
        q_rows.alloc(n, "scored rows", nullptr);
        q_targets.alloc(n, "scored targets", nullptr);
        q_lp.alloc(n, "log-probabilities", nullptr);
        q_greedy.alloc(n, "greedy flags", nullptr);
    }

    const float* had_matrix(int n) {
        auto it = had.find(n);
        if (it != had.end()) return it->second.get();
        SQ_CHECK(n <= kMaxDenseHadamard, "CUDA: online Hadamard of order ", n, " > ", kMaxDenseHadamard,
                 " is not supported yet (dense matrix)");
        const std::vector<float> H = hadamard_matrix(n);  // x·H equals hadamard_transform(x) (same H_n)
        DevBuf<float> b;
        b.upload(H.data(), H.size(), str("Hadamard matrix of order ", n), &bytes);
        return had.emplace(n, std::move(b)).first->second.get();
    }

    DLinear make_linear(const Linear& L, const std::string& what) {
        DLinear d;
        d.in = L.in;
        d.out = L.out;
        std::vector<float> fw, fb;
        if (linear_dense_f32(L, &fw, &fb)) {  // float32, or Q8 dequantized (exact)
            d.kind = LinKind::f32;
            if (what == "lm_head" && fw.size() == embed.size()) {
                // Tied embeddings: lm_head holds a copy of the table; share the device copy when equal.
                std::vector<float> tmp;  // compared against the uploaded table, not the CPU copy kept by caller
                tmp.resize(fw.size());
                SQ_CUDA(cudaMemcpy(tmp.data(), embed.get(), tmp.size() * sizeof(float), cudaMemcpyDeviceToHost));
                if (std::memcmp(tmp.data(), fw.data(), tmp.size() * sizeof(float)) == 0) d.w_shared = embed.get();
            }
            if (!d.w_shared) d.w.upload(fw.data(), fw.size(), what, &bytes);
            d.bias.upload(fb.data(), fb.size(), what + " bias", &bytes);
            return d;
        }
        QLinearData qd;  // either CPU backend of the packed format (reference or AVX2)
        SQ_CHECK(linear_w4a4_data(L, &qd), "CUDA: ", what, ": linear layer kind '", L.kind(),
                 "' has no CUDA implementation");
        const int64_t in = qd.in, out = qd.out, rb = w4_row_bytes(in);
        std::vector<float> wf((size_t)out * in);
        for (int64_t j = 0; j < out; ++j)
            for (int64_t c = 0; c < in; ++c) wf[(size_t)j * in + c] = (float)w4_get(&qd.codes[j * rb], c);
        d.a_bits = qd.a_bits;
        d.a_clip = qd.a_clip;
        if (qd.a_bits >= 16) {
            d.kind = LinKind::w4a16;
            for (int64_t j = 0; j < out; ++j)
                for (int64_t c = 0; c < in; ++c) wf[(size_t)j * in + c] *= qd.scale[j];
        } else {
            d.kind = LinKind::w4a4;
            // |partial sum| ≤ qmax · 8 · K must stay below 2^24 (as LinearW4A4Ref's k_chunk).
            const int64_t qmax = (1 << qd.a_bits) - 1;
            d.k_chunk = std::min<int64_t>(in, ((int64_t)1 << 24) / (qmax * 8) - 1);
            d.scale.upload(qd.scale.data(), qd.scale.size(), what + " scales", &bytes);
            d.rowsum.upload(qd.rowsum.data(), qd.rowsum.size(), what + " rowsums", &bytes);
        }
        d.w.upload(wf.data(), wf.size(), what, &bytes);
        if (qd.rank > 0) {
            std::vector<float> B = qd.basis == "fourier" ? fourier_basis_f16(in, qd.rank) : std::vector<float>();
            if (qd.basis != "fourier") {
                B.resize((size_t)in * qd.rank);
                for (size_t i = 0; i < B.size(); ++i) B[i] = fp16_to_fp32(qd.basis_f16[i]);
            }
            std::vector<float> Bt((size_t)qd.rank * in), C(qd.coef.size());
            for (int64_t c = 0; c < in; ++c)
                for (int r = 0; r < qd.rank; ++r) Bt[(size_t)r * in + c] = B[(size_t)c * qd.rank + r];
            for (size_t i = 0; i < C.size(); ++i) C[i] = fp16_to_fp32(qd.coef[i]);
            d.rank = qd.rank;
            d.basis_t.upload(Bt.data(), Bt.size(), what + " spectral basis", &bytes);
            d.coef.upload(C.data(), C.size(), what + " spectral coefficients", &bytes);
        }
        if (qd.had_in) {
            d.had_in = qd.had_in;
            const std::vector<float> s = hadamard_signs(qd.had_in, qd.had_seed);
            d.had_signs.upload(s.data(), s.size(), what + " Hadamard signs", &bytes);
            d.had = had_matrix(qd.had_in);
        }
        d.bias.upload(qd.bias.data(), qd.bias.size(), what + " bias", &bytes);
        return d;
    }

    // y [n, out] = x [n, in] · W [out, in]ᵀ, row-major FP32, leading dims in floats.
    void gemm_xwt(const float* x, int64_t n, const float* W, int64_t out, int64_t in, float* y, int64_t ldx,
                  int64_t ldw) {
        const float one = 1.0f, zero = 0.0f;
        SQ_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)n, (int)in, &one, W, CUDA_R_32F,
                               (int)ldw, x, CUDA_R_32F, (int)ldx, &zero, y, CUDA_R_32F, (int)out, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
    }
    void gemm_xwt(const float* x, int64_t n, const float* W, int64_t out, int64_t in, float* y) {
        gemm_xwt(x, n, W, out, in, y, in, in);
    }
    // y [n, k] = x [n, k] · M [k, k], row-major.
    void gemm_xm(const float* x, int64_t n, const float* M, int64_t k, float* y) {
        const float one = 1.0f, zero = 0.0f;
        SQ_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)k, (int)n, (int)k, &one, M, CUDA_R_32F, (int)k, x,
                               CUDA_R_32F, (int)k, &zero, y, CUDA_R_32F, (int)k, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
    }

    // same_input: x is the input of the previous linear call, unchanged since.
    void linear(const DLinear& L, const float* x, int n, float* y, bool same_input = false) {
        if (!same_input) quant_src = nullptr;
        const int gm = gemm_rows > 0 ? gemm_rows : n;  // GEMM rows (≥ n)
        const float* xin = x;
        if (L.had_in) {  // the weights were stored rotated (W·R): rotate the input, x ← (x ⊙ signs)·H
            cuda::mul_signs(x, L.had_signs.get(), n, (int)L.in, rot_a.get(), stream);
            gemm_xm(rot_a.get(), gm, L.had, L.in, rot_b.get());
            xin = rot_b.get();
            same_input = false;
        }
        if (L.kind == LinKind::f32) {
            gemm_xwt(xin, gm, L.weight(), L.out, L.in, y);
            cuda::add_bias(y, nullptr, L.bias.get(), n, (int)L.out, stream);
            return;
        }
        const float* sp = nullptr;
        if (L.rank > 0) {
            gemm_xwt(xin, gm, L.basis_t.get(), L.rank, L.in, zb.get());
            gemm_xwt(zb.get(), gm, L.coef.get(), L.out, L.rank, spec.get());
            sp = spec.get();
        }
        if (L.kind == LinKind::w4a16) {
            gemm_xwt(xin, gm, L.w.get(), L.out, L.in, y);
            cuda::add_bias(y, sp, L.bias.get(), n, (int)L.out, stream);
            return;
        }
        if (!(same_input && quant_src == xin && quant_n == n && quant_bits == L.a_bits && quant_clip == L.a_clip)) {
            cuda::act_quant(xin, n, L.in, L.a_bits, L.a_clip, qf.get(), nullptr, a_scale.get(), a_zero.get(), stream);
            quant_src = xin, quant_n = n, quant_bits = L.a_bits, quant_clip = L.a_clip;
        }
        if (L.k_chunk >= L.in) {
            gemm_xwt(qf.get(), gm, L.w.get(), L.out, L.in, acc.get());
            cuda::w4a4_epilogue(acc.get(), nullptr, n, (int)L.out, a_scale.get(), a_zero.get(), L.scale.get(),
                                L.rowsum.get(), sp, L.bias.get(), y, stream);
            return;
        }
        for (int64_t k0 = 0; k0 < L.in; k0 += L.k_chunk) {  // each chunk's float sums are exact integers
            const int64_t kcols = std::min(L.k_chunk, L.in - k0);
            gemm_xwt(qf.get() + k0, gm, L.w.get() + k0, L.out, kcols, acc.get(), L.in, L.in);
            cuda::acc_add_i32(acc.get(), (int64_t)n * L.out, k0 == 0, acc_i.get(), stream);
        }
        cuda::w4a4_epilogue(nullptr, acc_i.get(), n, (int)L.out, a_scale.get(), a_zero.get(), L.scale.get(),
                            L.rowsum.get(), sp, L.bias.get(), y, stream);
    }

    // All layers for n tokens at pos; leaves the final-normed hidden states in x.
    // positions_h (varlen): each token's position in its own packed sequence,
    // validated by the caller; the call then starts at cache row 0 and leaves pos at 0.
    void run_layers(const int* tokens_h, int n, const int* positions_h = nullptr) {
        const ModelConfig& c = cfg;
        const bool varlen = positions_h != nullptr;
        if (varlen) pos = 0;
        SQ_CHECK(n > 0, "forward: no tokens");
        SQ_CHECK(pos + n <= cap, "forward: context overflow: ", pos, " + ", n, " tokens > KV cache capacity ", cap,
                 " (raise -c)");
        for (int t = 0; t < n; ++t)
            SQ_CHECK(tokens_h[t] >= 0 && tokens_h[t] < c.vocab, "forward: token id ", tokens_h[t],
                     " out of range [0, ", c.vocab, ")");
        // Pageable sources: the copies are staged before these calls return.
        SQ_CUDA(cudaMemcpyAsync(tokens.get(), tokens_h, n * sizeof(int), cudaMemcpyHostToDevice, stream));
        SQ_CUDA(cudaMemcpyAsync(pos_dev.get(), &pos, sizeof(int), cudaMemcpyHostToDevice, stream));
        if (varlen)
            SQ_CUDA(cudaMemcpyAsync(positions.get(), positions_h, n * sizeof(int), cudaMemcpyHostToDevice, stream));
        if (!use_graphs || n > kGraphMaxTokens || varlen) {  // varlen: the block table varies with the batch
            layers_body(n, varlen);
        } else {
            auto it = graphs.find(n);
            if (it == graphs.end()) {
                if (graphs.size() >= kGraphCache) clear_graphs();
                it = graphs.emplace(n, capture(n, false)).first;
            }
            SQ_CUDA(cudaGraphLaunch(it->second, stream));
        }
        pos = varlen ? 0 : pos + n;
    }

    cudaGraphExec_t capture(int n, bool varlen) {
        SQ_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        try {
            layers_body(n, varlen);
        } catch (...) {
            cudaGraph_t g = nullptr;
            cudaStreamEndCapture(stream, &g);
            if (g) cudaGraphDestroy(g);
            (void)cudaGetLastError();
            throw;
        }
        cudaGraph_t g = nullptr;
        SQ_CUDA(cudaStreamEndCapture(stream, &g));
        cudaGraphExec_t exec = nullptr;
        const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
        cudaGraphDestroy(g);
        SQ_CUDA(e);
        return exec;
    }

    // The device work of run_layers: launches only (captured into graphs),
    // with the cache position read from pos_dev, or (varlen) the per-token
    // positions from `positions` and the cache filled from row 0.
    void layers_body(int n, bool varlen) {
        const ModelConfig& c = cfg;
        const int d = c.d_model, hd = c.head_dim, H = c.n_heads, KV = c.n_kv_heads;
        const int64_t kvd = (int64_t)KV * hd, ff = c.d_ff;
        gemm_rows = varlen ? cap : 0;
        const RowsReset reset{gemm_rows};
        const int gm = varlen ? cap : n;
        cuda::embed_gather(embed.get(), tokens.get(), n, d, h.get(), stream);
        cuda::rmsnorm(h.get(), layers[0].attn_norm.get(), n, d, c.rms_eps, x.get(), stream);
        for (int l = 0; l < c.n_layers; ++l) {
            DLayer& L = layers[l];
            linear(L.q, x.get(), n, q.get());
            linear(L.k, x.get(), n, k.get(), true);
            linear(L.v, x.get(), n, v.get(), true);
            if (varlen) {
                cuda::rope_varlen(q.get(), n, H, hd, positions.get(), inv_freq.get(), stream);
                cuda::rope_varlen(k.get(), n, KV, hd, positions.get(), inv_freq.get(), stream);
            } else {
                cuda::rope(q.get(), n, H, hd, 0, pos_dev.get(), inv_freq.get(), stream);
                cuda::rope(k.get(), n, KV, hd, 0, pos_dev.get(), inv_freq.get(), stream);
            }
            const float *qa = q.get(), *ka = k.get();
            if (qk_rotate) {  // x·H_hd per head, as hadamard_transform(q, n·H, hd)
                const float* Hh = had_matrix(hd);
                gemm_xm(q.get(), (int64_t)gm * H, Hh, hd, qr.get());
                gemm_xm(k.get(), (int64_t)gm * KV, Hh, hd, kr.get());
                qa = qr.get(), ka = kr.get();
            }
            float* kc_l = kc.get() + (size_t)l * cap * kvd;
            float* vc_l = vc.get() + (size_t)l * cap * kvd;
            if (varlen) {
                cuda::kv_store(ka, v.get(), n, KV, hd, kv_bits, kv_clip, kc_l, vc_l, nullptr, stream);
                cuda::attention_varlen(qa, kc_l, vc_l, n, positions.get(), H, KV, hd, att.get(), stream,
                                       att_blocks.get(), att_nblocks);
            } else {
                cuda::kv_store(ka, v.get(), n, KV, hd, kv_bits, kv_clip, kc_l, vc_l, pos_dev.get(), stream);
                cuda::attention(qa, kc_l, vc_l, n, 0, pos_dev.get(), H, KV, hd, att.get(), stream);
            }
            linear(L.o, att.get(), n, proj.get());
            cuda::add_rmsnorm(h.get(), proj.get(), L.ffn_norm.get(), n, d, c.rms_eps, x.get(), stream);
            linear(L.gate, x.get(), n, act.get());
            linear(L.up, x.get(), n, upb.get(), true);
            cuda::silu_mul(act.get(), upb.get(), (int64_t)n * ff, stream);
            linear(L.down, act.get(), n, proj.get());
            const float* next_norm = l + 1 < c.n_layers ? layers[l + 1].attn_norm.get() : final_norm.get();
            cuda::add_rmsnorm(h.get(), proj.get(), next_norm, n, d, c.rms_eps, x.get(), stream);
        }
    }
};

ModelCuda::ModelCuda(const ModelWeights& w, int capacity) : p_(std::make_unique<Impl>()) {
    Impl& m = *p_;
    const ModelConfig& c = w.cfg;
    config_validate(c, "model");
    SQ_CHECK(capacity > 0, "CUDA model: capacity must be positive, got ", capacity);
    SQ_CHECK(w.kv_bits == 16 || (w.kv_bits >= 2 && w.kv_bits <= 8), "model: KV cache bits ", w.kv_bits,
             " out of range (2..8 or 16)");
    SQ_CHECK((int)w.layers.size() == c.n_layers && w.lm_head, "CUDA model: incomplete weights");
    int devices = 0;
    const cudaError_t e = cudaGetDeviceCount(&devices);
    if (e != cudaSuccess || devices == 0) {
        (void)cudaGetLastError();
        fail("--device cuda: no CUDA device available (", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices",
             ")");
    }
    m.cfg = c;
    m.cap = capacity;
    m.kv_bits = w.kv_bits;
    m.kv_clip = w.kv_clip;
    m.qk_rotate = w.qk_rotate;
    SQ_CUDA(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
    SQ_CUBLAS(cublasCreate(&m.blas));
    SQ_CUBLAS(cublasSetStream(m.blas, m.stream));
    SQ_CUBLAS(cublasSetMathMode(m.blas, CUBLAS_DEFAULT_MATH));  // FP32, never TF32
    m.blas_ws.alloc(kCublasWorkspace, "cuBLAS workspace", &m.bytes);
    SQ_CUBLAS(cublasSetWorkspace(m.blas, m.blas_ws.get(), kCublasWorkspace));
    const char* g = std::getenv("SQ_CUDA_GRAPHS");
    m.use_graphs = !(g && std::string(g) == "0");

    const int64_t d = c.d_model, hd = c.head_dim, qd = (int64_t)c.n_heads * hd, kvd = (int64_t)c.n_kv_heads * hd,
                  ff = c.d_ff;
    {
        const std::vector<float> table = embed_f32(w);  // 8-bit tables dequantized (exact)
        m.embed.upload(table.data(), table.size(), "embedding", &m.bytes);
    }
    m.final_norm.upload(w.final_norm.data(), w.final_norm.size(), "final norm", &m.bytes);
    const std::vector<float> inv = rope_inv_freq(c);
    m.inv_freq.upload(inv.data(), inv.size(), "RoPE frequencies", &m.bytes);
    int64_t max_in = d, max_out = std::max({qd, kvd, d, ff}), max_rank = 0;
    bool split_k = false;
    m.layers.resize(c.n_layers);
    for (int l = 0; l < c.n_layers; ++l) {
        const LayerWeights& s = w.layers[l];
        DLayer& L = m.layers[l];
        const std::string p = str("layer ", l, " ");
        L.attn_norm.upload(s.attn_norm.data(), s.attn_norm.size(), p + "attn_norm", &m.bytes);
        L.ffn_norm.upload(s.ffn_norm.data(), s.ffn_norm.size(), p + "ffn_norm", &m.bytes);
        L.q = m.make_linear(*s.q, p + "q");
        L.k = m.make_linear(*s.k, p + "k");
        L.v = m.make_linear(*s.v, p + "v");
        L.o = m.make_linear(*s.o, p + "o");
        L.gate = m.make_linear(*s.gate, p + "gate");
        L.up = m.make_linear(*s.up, p + "up");
        L.down = m.make_linear(*s.down, p + "down");
        for (const DLinear* x : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) {
            max_in = std::max(max_in, x->in);
            max_rank = std::max<int64_t>(max_rank, x->rank);
            split_k = split_k || (x->kind == LinKind::w4a4 && x->k_chunk < x->in);
        }
    }
    m.lm_head = m.make_linear(*w.lm_head, "lm_head");
    SQ_CHECK(m.lm_head.in == d && m.lm_head.out == c.vocab, "CUDA model: lm_head shape ", m.lm_head.out, "x",
             m.lm_head.in);
    max_rank = std::max<int64_t>(max_rank, m.lm_head.rank);
    if (m.qk_rotate) m.had_matrix((int)hd);

    const size_t cap = (size_t)capacity;
    m.kc.alloc((size_t)c.n_layers * cap * kvd, "KV cache (keys)", &m.bytes);
    m.vc.alloc((size_t)c.n_layers * cap * kvd, "KV cache (values)", &m.bytes);
    m.h.alloc(cap * d, "hidden states", &m.bytes);
    m.x.alloc(cap * d, "normed states", &m.bytes);
    m.q.alloc(cap * qd, "queries", &m.bytes);
    m.k.alloc(cap * kvd, "keys", &m.bytes);
    m.v.alloc(cap * kvd, "values", &m.bytes);
    if (m.qk_rotate) {
        m.qr.alloc(cap * qd, "rotated queries", &m.bytes);
        m.kr.alloc(cap * kvd, "rotated keys", &m.bytes);
    }
    m.att.alloc(cap * qd, "attention output", &m.bytes);
    m.proj.alloc(cap * d, "projection", &m.bytes);
    m.act.alloc(cap * ff, "MLP activations", &m.bytes);
    m.upb.alloc(cap * ff, "MLP up", &m.bytes);
    m.rot_a.alloc(cap * max_in, "Hadamard scratch", &m.bytes);
    m.rot_b.alloc(cap * max_in, "Hadamard scratch", &m.bytes);
    // lm_head runs on ≤ min(cap, kLogitRows) rows; a quantized one needs its scratch at [rows, vocab].
    const size_t lm_rows = std::min<size_t>(cap, kLogitRows);
    const bool lm_q = m.lm_head.kind != LinKind::f32;
    const size_t acc_elems = std::max(cap * max_out, lm_q ? lm_rows * c.vocab : 0);
    m.qf.alloc(cap * max_in, "activation codes", &m.bytes);
    m.a_scale.alloc(cap, "activation scales", &m.bytes);
    m.a_zero.alloc(cap, "activation zero points", &m.bytes);
    m.acc.alloc(acc_elems, "W4A4 accumulators", &m.bytes);
    if (split_k || (m.lm_head.kind == LinKind::w4a4 && m.lm_head.k_chunk < m.lm_head.in))
        m.acc_i.alloc(acc_elems, "W4A4 int32 accumulators", &m.bytes);
    if (max_rank > 0) {
        m.zb.alloc(cap * max_rank, "spectral branch", &m.bytes);
        m.spec.alloc(acc_elems, "spectral branch output", &m.bytes);
    }
    m.logits.alloc(lm_rows * c.vocab, "logits", &m.bytes);
    m.tokens.alloc(cap, "tokens", &m.bytes);
    m.pos_dev.alloc(1, "cache position", &m.bytes);
    m.positions.alloc(cap, "token positions", &m.bytes);
    m.gather_rows.alloc(cap, "scored rows", &m.bytes);
    m.xs.alloc(lm_rows * d, "scored hidden states", &m.bytes);
    const size_t group = (size_t)(c.n_heads / c.n_kv_heads);
    m.att_blocks.alloc(2 * (cap * group / 16 + cap + 1), "attention block table", &m.bytes);
    SQ_CUDA(cudaStreamSynchronize(m.stream));
}

ModelCuda::~ModelCuda() = default;

const ModelConfig& ModelCuda::config() const { return p_->cfg; }
int ModelCuda::capacity() const { return p_->cap; }
int ModelCuda::pos() const { return p_->pos; }
size_t ModelCuda::device_bytes() const { return p_->bytes; }

void ModelCuda::truncate(int n) {
    SQ_CHECK(n >= 0 && n <= p_->pos, "CUDA KV cache: truncate to ", n, " with ", p_->pos, " tokens cached");
    p_->pos = n;
}

std::vector<RowScore> ModelCuda::forward_score(const int* tokens, int n, const std::vector<RowTarget>& targets) {
    Impl& m = *p_;
    const int V = m.cfg.vocab, d = m.cfg.d_model;
    for (const RowTarget& t : targets) {
        SQ_CHECK(t.row >= 0 && t.row < n, "forward_score: row ", t.row, " outside [0, ", n, ")");
        SQ_CHECK(t.target >= 0 && t.target < V, "token id ", t.target, " out of range [0, ", V, ")");
    }
    m.run_layers(tokens, n);
    std::vector<RowScore> out(targets.size());
    if (targets.empty()) {
        SQ_CUDA(cudaStreamSynchronize(m.stream));
        return out;
    }
    // Queries by row; lm_head over [rmin, rmax] in chunks of kLogitRows rows.
    std::vector<int> order(targets.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return targets[a].row < targets[b].row; });
    const int lm_rows = std::min(kLogitRows, m.cap);
    const int rmin = targets[order.front()].row, rmax = targets[order.back()].row;
    const int nq = (int)targets.size();
    m.ensure_queries(nq);
    std::vector<int> rel(nq), tg(nq);
    for (int i = 0; i < nq; ++i) {
        rel[i] = (targets[order[i]].row - rmin) % lm_rows;
        tg[i] = targets[order[i]].target;
    }
    SQ_CUDA(cudaMemcpyAsync(m.q_rows.get(), rel.data(), nq * sizeof(int), cudaMemcpyHostToDevice, m.stream));
    SQ_CUDA(cudaMemcpyAsync(m.q_targets.get(), tg.data(), nq * sizeof(int), cudaMemcpyHostToDevice, m.stream));
    int qa = 0;
    for (int r0 = rmin; r0 <= rmax; r0 += lm_rows) {
        const int rows = std::min(lm_rows, rmax + 1 - r0);
        int qb = qa;
        while (qb < nq && targets[order[qb]].row < r0 + rows) ++qb;
        if (qb == qa) continue;
        m.linear(m.lm_head, m.x.get() + (size_t)r0 * d, rows, m.logits.get());
        cuda::logprob_gather(m.logits.get(), V, m.q_rows.get() + qa, m.q_targets.get() + qa, qb - qa,
                             m.q_lp.get() + qa, m.q_greedy.get() + qa, m.stream);
        qa = qb;
    }
    return m.fetch_scores(nq, order, targets.size());
}

std::vector<RowScore> ModelCuda::forward_score_varlen(const int* tokens, const std::vector<int>& seq_lens,
                                                      const std::vector<RowTarget>& targets) {
    Impl& m = *p_;
    const int V = m.cfg.vocab, d = m.cfg.d_model;
    SQ_CHECK(!seq_lens.empty(), "forward_score_varlen: no sequences");
    int64_t total = 0;
    for (int len : seq_lens) {
        SQ_CHECK(len > 0, "forward_score_varlen: empty sequence");
        total += len;
    }
    SQ_CHECK(total <= m.cap, "forward_score_varlen: ", total, " packed tokens > capacity ", m.cap);
    const int n = (int)total;
    std::vector<int> positions(n);
    for (int s = 0, t = 0; s < (int)seq_lens.size(); ++s)
        for (int i = 0; i < seq_lens[s]; ++i) positions[t++] = i;
    for (const RowTarget& t : targets) {
        SQ_CHECK(t.row >= 0 && t.row < n, "forward_score_varlen: row ", t.row, " outside [0, ", n, ")");
        SQ_CHECK(t.target >= 0 && t.target < V, "token id ", t.target, " out of range [0, ", V, ")");
    }
    const std::vector<int> blocks = cuda::attention_blocks(seq_lens, m.cfg.n_heads / m.cfg.n_kv_heads);
    SQ_CHECK(blocks.size() <= m.att_blocks.size(), "forward_score_varlen: attention block table overflow");
    m.att_nblocks = (int)blocks.size() / 2;
    SQ_CUDA(cudaMemcpyAsync(m.att_blocks.get(), blocks.data(), blocks.size() * sizeof(int), cudaMemcpyHostToDevice,
                            m.stream));
    m.run_layers(tokens, n, positions.data());
    std::vector<RowScore> out(targets.size());
    if (targets.empty()) {
        SQ_CUDA(cudaStreamSynchronize(m.stream));
        return out;
    }
    // Distinct scored rows in row order; lm_head runs on them gathered, kLogitRows at a time.
    const int nq = (int)targets.size();
    std::vector<int> order(nq);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return targets[a].row < targets[b].row; });
    std::vector<int> rows, uq(nq), rel(nq), tg(nq);  // uq: index into rows of query order[i]
    for (int i = 0; i < nq; ++i) {
        const int r = targets[order[i]].row;
        if (rows.empty() || rows.back() != r) rows.push_back(r);
        uq[i] = (int)rows.size() - 1;
    }
    const int lm_rows = std::min(kLogitRows, m.cap), nrows = (int)rows.size();
    for (int i = 0; i < nq; ++i) {
        rel[i] = uq[i] % lm_rows;
        tg[i] = targets[order[i]].target;
    }
    m.ensure_queries(nq);
    SQ_CUDA(cudaMemcpyAsync(m.gather_rows.get(), rows.data(), nrows * sizeof(int), cudaMemcpyHostToDevice, m.stream));
    SQ_CUDA(cudaMemcpyAsync(m.q_rows.get(), rel.data(), nq * sizeof(int), cudaMemcpyHostToDevice, m.stream));
    SQ_CUDA(cudaMemcpyAsync(m.q_targets.get(), tg.data(), nq * sizeof(int), cudaMemcpyHostToDevice, m.stream));
    int qa = 0;
    for (int c0 = 0; c0 < nrows; c0 += lm_rows) {
        const int cnt = std::min(lm_rows, nrows - c0);
        int qb = qa;
        while (qb < nq && uq[qb] < c0 + cnt) ++qb;
        cuda::embed_gather(m.x.get(), m.gather_rows.get() + c0, cnt, d, m.xs.get(), m.stream);  // row gather
        m.gemm_rows = lm_rows;  // one GEMM shape for every chunk (rows past cnt are scratch)
        const RowsReset reset{m.gemm_rows};
        m.linear(m.lm_head, m.xs.get(), cnt, m.logits.get());
        cuda::logprob_gather(m.logits.get(), V, m.q_rows.get() + qa, m.q_targets.get() + qa, qb - qa,
                             m.q_lp.get() + qa, m.q_greedy.get() + qa, m.stream);
        qa = qb;
    }
    return m.fetch_scores(nq, order, targets.size());
}

void ModelCuda::forward_logits(const int* tokens, int n, float* logits, bool all_logits) {
    Impl& m = *p_;
    const int V = m.cfg.vocab, d = m.cfg.d_model;
    m.run_layers(tokens, n);
    const int first = all_logits ? 0 : n - 1, lm_rows = std::min(kLogitRows, m.cap);
    for (int r0 = first; r0 < n; r0 += lm_rows) {
        const int rows = std::min(lm_rows, n - r0);
        m.linear(m.lm_head, m.x.get() + (size_t)r0 * d, rows, m.logits.get());
        SQ_CUDA(cudaMemcpyAsync(logits + (size_t)(r0 - first) * V, m.logits.get(), (size_t)rows * V * sizeof(float),
                                cudaMemcpyDeviceToHost, m.stream));
        SQ_CUDA(cudaStreamSynchronize(m.stream));  // the logits buffer is reused by the next chunk
    }
}

}  // namespace sq
#endif  // SPECQUANT_HAS_CUDA
