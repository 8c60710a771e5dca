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
//   w4a4:  q, s, z = act_quant(x); spec = (x·B)·Cᵀ (two FP32 cuBLAS GEMMs);
//          y = (s·scale·(acc − z·rowsum) + spec) + b with acc = q·codeᵀ exact:
//          INT8 tensor cores, epilogue fused (w4a4_gemm: u8 codes, CUDA-layout
//          weights repacked on load), or (w4a4_f32_codes) an FP32 cuBLAS GEMM
//          on integer-valued floats + the epilogue kernel. Both accumulators are
//          the same integers and the epilogues the same float operations, so
//          the two paths give the same bits (CudaModel.Int8PathEqualsF32Codes).
//   bf16:  y = bf16(x)·Wᵀ (fp32 accumulate, fp32 out) + b   (the BF16 baseline)
// Batched decode (decode_step): B sequences in their own cache regions, one
// token each: RoPE at per-token positions, K/V written at row b·S + len_b,
// attention_decode (keys split over blocks) over the region; one CUDA graph per B.
#ifdef SPECQUANT_HAS_CUDA
#include "model/model_cuda.h"

#include <cublas_v2.h>

#include <algorithm>
#include <limits>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "core/env.h"
#include "core/error.h"
#include "core/fp16.h"
#include "core/threads.h"
#include "kernels/cuda/cublas_check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/l2_prefetch.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/w4a4_gemm.h"
#include "kernels/cuda/w4a4_wgmma.h"
#include "kernels/w4a4_format.h"
#include "model/linear_q8.h"
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

enum class LinKind { f32, w4a4, w4a16, bf16 };

// How layers_body runs: one sequence from pos (the cache position on the
// device), packed independent sequences (varlen), or one token for each of
// the batched-decode sequences.
enum class Mode { single, varlen, batch };

// Puts Impl::gemm_rows back to 0 (per-call GEMM row count) on every exit.
struct RowsReset {
    int& rows;
    ~RowsReset() { rows = 0; }
};

struct DLinear {
    LinKind kind = LinKind::f32;
    int64_t in = 0, out = 0;
    DevBuf<float> w;         // [out, in]: f32 weights | scale·code (w4a16) | codes as integer floats (w4a4, f32 codes)
    DevBuf<uint8_t> w8;      // w4a4 on the tensor cores: the codes in the CUDA layout [w4g_bytes(out, in)]
    DevBuf<uint16_t> wb;     // bf16: weights [out, in]
    // Decode v6: the lm_head also as Q8_0 (cuda::q8_gemv's layout: codes [out, in], fp16 block
    // scales [out, in/32]), the same matrix as w / wb; linear() takes it for one-row calls when no
    // fixed GEMM shape is asked (gemm_rows 0: one-sequence decode steps, a prompt's last row).
    DevBuf<int8_t> q8c;
    DevBuf<uint16_t> q8d;
    const float* w_shared = nullptr;  // tied lm_head: the embedding table instead of `w`
    DevBuf<float> bias;      // [out] or empty
    int a_bits = 16;
    float a_clip = 1.0f;
    int64_t k_chunk = 0;     // w4a4: K columns per exact float GEMM
    DevBuf<float> scale;     // [out]
    DevBuf<int32_t> rowsum;  // [out]
    int rank = 0;
    DevBuf<float> basis_t;   // Bᵀ [rank, in] (explicit bases)
    const float* basis_shared = nullptr;  // Fourier (and synthetic) bases: one device copy per (in, rank)
    DevBuf<float> coef;      // C [out, rank]
    int had_in = 0;
    DevBuf<float> had_signs;     // [in]
    const float* had = nullptr;  // H_n [in, in], shared per order
    // Views (Impl::fuse_rows): this layer's rows inside a fused [q; k; v] or [gate; up]
    // layer that holds its buffers; the owning buffers above are then empty.
    const uint8_t* w8_view = nullptr;
    const uint16_t* wb_view = nullptr;
    const float *scale_view = nullptr, *coef_view = nullptr, *bias_view = nullptr;
    const int32_t* rowsum_view = nullptr;
    const float* weight() const { return w_shared ? w_shared : w.get(); }
    const float* basis() const { return basis_shared ? basis_shared : basis_t.get(); }
    const uint8_t* w8p() const { return w8.get() ? w8.get() : w8_view; }
    const uint16_t* wbp() const { return wb.get() ? wb.get() : wb_view; }
    const float* scalep() const { return scale.get() ? scale.get() : scale_view; }
    const int32_t* rowsump() const { return rowsum.get() ? rowsum.get() : rowsum_view; }
    const float* coefp() const { return coef.get() ? coef.get() : coef_view; }
    const float* biasp() const { return bias.get() ? bias.get() : bias_view; }
    bool has_bias() const { return biasp() != nullptr; }
    size_t bytes() const {
        return (w.size() + bias.size() + scale.size() + basis_t.size() + coef.size() + had_signs.size()) * 4 +
               rowsum.size() * 4 + w8.size() + wb.size() * 2 + q8c.size() + q8d.size() * 2;
    }
};

// fp32 → bf16 bits, round to nearest even, on the host (weights of the baseline).
std::vector<uint16_t> to_bf16(const std::vector<float>& f) {
    std::vector<uint16_t> b(f.size());
    parallel_for((int64_t)f.size(), [&](int64_t i) { b[i] = fp32_to_bf16(f[i]); });
    return b;
}

struct DLayer {
    DevBuf<float> attn_norm, ffn_norm;
    DevBuf<float> k_shift;  // [KV·hd] or empty (LayerWeights::k_shift)
    DLinear q, k, v, o, gate, up, down;
    // Fused rows (Impl::fuse_rows; out = 0 when not fused): qkv = [q; k; v] [qd + 2·kvd, d],
    // gu = [gate; up] [2·ff, d]. q, k, v (gate, up) are then views of their rows.
    DLinear qkv, gu;
};

// Timing diagnostic (docs/perf.md, "Session 11"): SQ_CUDA_SKIP=norm,rope,att,actq,silu,qkv,o,gu,down,
// lm_head leaves those launches out of the forward (captured graphs included), so that a step's time
// with and without them gives their cost inside the graph, where ncu can only time kernels alone.
// The outputs are then wrong; only `specquant bench` timings mean anything. Read once per process.
// skip_launch(nullptr): whether any launch is left out (then the norms stay kernels of their own).
bool skip_launch(const char* what) {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> v;
        const char* e = std::getenv("SQ_CUDA_SKIP");
        if (!e || !*e) return v;
        static const char* known[] = {"norm", "rope", "att", "actq", "silu", "qkv", "o", "gu", "down", "lm_head"};
        std::stringstream ss(e);
        std::string t;
        while (std::getline(ss, t, ',')) {
            SQ_CHECK(std::find(std::begin(known), std::end(known), t) != std::end(known), "SQ_CUDA_SKIP: unknown '",
                     t, "' (norm, rope, att, actq, silu, qkv, o, gu, down, lm_head)");
            v.push_back(t);
        }
        std::fprintf(stderr, "warning: SQ_CUDA_SKIP=%s: launches left out, outputs are wrong (timing only)\n", e);
        return v;
    }();
    if (!what) return !names.empty();  // any
    return !names.empty() && std::find(names.begin(), names.end(), what) != names.end();
}

}  // namespace

struct ModelCuda::Impl {
    ModelConfig cfg;
    ModelCudaOptions opts;
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
    std::map<std::pair<int64_t, int>, DevBuf<float>> bases;  // Bᵀ [rank, in] by (in, rank): Fourier, synthetic

    DevBuf<float> kc, vc;  // [layer][cap][kv][hd] (not allocated when the cache is packed)
    // Packed cache (opts.kv_packed and kv_bits ≤ 4; cuda::KvPacked): codes [layer][cap][kv][(hd+1)/2],
    // (scale, zero) [layer][cap][kv], keys and values.
    DevBuf<uint8_t> kq, vq;
    DevBuf<float2> kpar, vpar;
    bool kv_pack = false;
    // Scratch, [cap, width] unless noted.
    DevBuf<float> h, x, q, k, v, qr, kr, att, proj, act, upb;
    // Decode v8 (opts.norm_gemv): the GEMV that normalizes its own input writes h + add to the other
    // buffer (its other clusters still read h): hcur is the residual stream's current one, h or
    // h_alt ([W4G_NORM_MAX_M, d]); pending_norm the norm left to the next linear().
    DevBuf<float> h_alt;
    float* hcur = nullptr;
    struct PendingNorm {
        const DLinear* next = nullptr;
        const float *add = nullptr, *w = nullptr;
        int n = 0;
    } pending_norm;
    DevBuf<float> qkvb;                // [cap, qd + 2·kvd]: the fused q|k|v output (layers with qkv)
    DevBuf<float> rot_a, rot_b;        // [cap, max_in]: online Hadamard
    DevBuf<float> qf;                  // [rows, max_in]: activation codes (f32 codes path)
    DevBuf<uint8_t> q8;                // [rows, max_in]: activation codes (tensor-core path)
    DevBuf<uint16_t> xb;               // [rows, max_in]: bf16 activations (BF16 baseline)
    DevBuf<float> a_scale;             // [rows]
    DevBuf<int32_t> a_zero;            // [rows]
    DevBuf<float> acc;                 // [rows, max_out] integer-valued float accumulators
    DevBuf<int32_t> acc_i;             // [rows, max_out] when K is split
    DevBuf<int32_t> wgmma_ws;          // the wgmma GEMM's split-K partials and tile counters (prefill)
    DevBuf<float> zb;                  // [rows, max_rank]: the spectral branch's x·Bᵀ
    DevBuf<float> zb_part;             // cuda::spectral_xb's k-block sums (its scratch)
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
    bool att_codes = false;            // v5 decode attention makes o's codes (SQ_CUDA_ATT_CODES=1; else act_quant)
    // Prefill / scoring attention on tensor cores (attention_flash.cu) when opts.flash_attention, else the FP32 kernel
    bool flash_att(int hd) const { return opts.flash_attention && cuda::attention_flash_supported(hd); }
    DevBuf<int> q_rows, q_targets;     // [queries]: grown on demand
    DevBuf<double> q_lp;
    DevBuf<uint8_t> q_greedy;
    // Cache row of this call's position 0 (batched decode: sequence b's region
    // starts at b·dec_cap); one-sequence calls with a nonzero offset run eagerly.
    int kv_row0 = 0;
    // Batched decode (decode_setup): regions of dec_cap rows, lengths on the host.
    int dec_batch = 0, dec_cap = 0;
    std::vector<int> dec_lens;
    DevBuf<int> dec_rows;              // [cap]: each token's cache row
    DevBuf<float> dec_part;            // attention_decode partials (not in `bytes`: remade per setup)
    DevBuf<int> dec_cnt;               // attention_decode v5 counters (zeroed per setup; calls leave them 0)
    DevBuf<float2> split_part;         // split row kernels (cuda::RowSync): partials
    DevBuf<int> split_cnt;             // and counters (zeroed once; calls leave them 0)
    std::map<int, cudaGraphExec_t> dec_graphs;  // by batch size
    // Decode v7's side stream (opts.l2_prefetch_mib): forked from `stream` after q|k|v, joined at the
    // end of layers_body (side_open: a fork not yet joined).
    cudaStream_t side = nullptr;
    cudaEvent_t ev_fork = nullptr, ev_join = nullptr;
    bool side_open = false;
    size_t bytes_kv = 0;
    // Profiling (set_profile): an event pair around every op, summed per op class.
    bool profiling = false;
    std::vector<cudaEvent_t> ev_pool;
    size_t ev_used = 0;
    std::vector<std::pair<std::string, std::pair<cudaEvent_t, cudaEvent_t>>> marks;
    std::string prof_prefix;  // "lm_head " while lm_head runs
    struct ProfScope {
        Impl* m = nullptr;
        cudaEvent_t end = nullptr;
        ~ProfScope() {
            if (m) (void)cudaEventRecord(end, m->stream);  // no throw from a destructor; checked at take
        }
    };
    ProfScope prof(const char* what) {
        if (!profiling) return {};
        const cudaEvent_t a = ev_next(), b = ev_next();
        SQ_CUDA(cudaEventRecord(a, stream));
        marks.push_back({prof_prefix + what, {a, b}});
        return {this, b};
    }
    cudaEvent_t ev_next() {
        if (ev_used == ev_pool.size()) {
            cudaEvent_t e = nullptr;
            SQ_CUDA(cudaEventCreate(&e));
            ev_pool.push_back(e);
        }
        return ev_pool[ev_used++];
    }

    // What the activation codes in qf were computed from: k and v reuse q's
    // codes (up reuses gate's) when the caller says the input is the same and
    // the quantizer settings match.
    const float* quant_src = nullptr;
    int quant_n = 0, quant_bits = 0;
    float quant_clip = 0.0f;
    // The same for the spectral branch's x·B: reused while input and basis are the same.
    const float* zb_src = nullptr;
    const float* zb_basis = nullptr;
    int zb_n = 0;

    ~Impl() {
        clear_graphs();
        for (auto& [b, g] : dec_graphs) cudaGraphExecDestroy(g);
        for (cudaEvent_t e : ev_pool) cudaEventDestroy(e);
        if (blas) cublasDestroy(blas);
        if (stream) cudaStreamDestroy(stream);
        if (side) cudaStreamDestroy(side);
        if (ev_fork) cudaEventDestroy(ev_fork);
        if (ev_join) cudaEventDestroy(ev_join);
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
            if (opts.bf16) {
                d.kind = LinKind::bf16;
                d.wb.upload(to_bf16(fw).data(), fw.size(), what + " (bf16)", &bytes);
                d.bias.upload(fb.data(), fb.size(), what + " bias", &bytes);
                return d;
            }
            if (what == "lm_head" && fw.size() == embed.size()) {
                // Tied embeddings: lm_head holds a copy of the table; share the device copy when equal.
                std::vector<float> tmp;  // compared against the uploaded table, not the CPU copy kept by caller
                tmp.resize(fw.size());
                SQ_CUDA(cudaMemcpy(tmp.data(), embed.get(), tmp.size() * sizeof(float), cudaMemcpyDeviceToHost));
                if (std::memcmp(tmp.data(), fw.data(), tmp.size() * sizeof(float)) == 0) d.w_shared = embed.get();
            }
            if (!d.w_shared) d.w.upload(fw.data(), fw.size(), what, &bytes);
            d.bias.upload(fb.data(), fb.size(), what + " bias", &bytes);
            const auto* lq = dynamic_cast<const LinearQ8*>(&L);
            if (what == "lm_head" && lq && opts.lm_head_q8) {  // decode steps read 8.5 bits instead of 32 per weight
                const Q8Matrix& qm = *lq->matrix();
                std::vector<int8_t> codes((size_t)qm.rows * qm.cols);
                std::vector<uint16_t> sc((size_t)qm.rows * (qm.cols / Q8_BLOCK));
                cuda::q8_gemv_pack(reinterpret_cast<const uint8_t*>(qm.blocks.data()), qm.rows, qm.cols, codes.data(),
                                   sc.data());
                d.q8c.upload(codes.data(), codes.size(), what + " (Q8_0 codes)", &bytes);
                d.q8d.upload(sc.data(), sc.size(), what + " (Q8_0 scales)", &bytes);
            }
            return d;
        }
        QLinearData qd;  // either CPU backend of the packed format (reference or AVX2)
        SQ_CHECK(linear_w4a4_data(L, &qd), "CUDA: ", what, ": linear layer kind '", L.kind(),
                 "' has no CUDA implementation");
        const int64_t in = qd.in, out = qd.out, rb = w4_row_bytes(in);
        if (qd.had_in) {
            d.had_in = qd.had_in;
            const std::vector<float> s = hadamard_signs(qd.had_in, qd.had_seed);
            d.had_signs.upload(s.data(), s.size(), what + " Hadamard signs", &bytes);
            d.had = had_matrix(qd.had_in);
        }
        d.bias.upload(qd.bias.data(), qd.bias.size(), what + " bias", &bytes);
        d.a_bits = qd.a_bits;
        d.a_clip = qd.a_clip;
        const bool int8 = qd.a_bits < 16 && !opts.w4a4_f32_codes && !opts.bf16;
        if (int8) {  // the tensor-core path: codes repacked once, no float copy
            SQ_CHECK(in <= 65536, "CUDA: ", what, ": in = ", in, " > 65536 (W4A4 GEMM limit)");
            std::vector<uint8_t> packed((size_t)cuda::w4g_bytes(out, in));
            cuda::w4g_repack(qd.codes.data(), out, in, packed.data());
            d.kind = LinKind::w4a4;
            d.w8.upload(packed.data(), packed.size(), what + " (CUDA layout)", &bytes);
            d.scale.upload(qd.scale.data(), qd.scale.size(), what + " scales", &bytes);
            d.rowsum.upload(qd.rowsum.data(), qd.rowsum.size(), what + " rowsums", &bytes);
        }
        std::vector<float> wf(int8 ? 0 : (size_t)out * in);
        if (!int8)
            parallel_for(out, [&](int64_t j) {
                for (int64_t c = 0; c < in; ++c) wf[(size_t)j * in + c] = (float)w4_get(&qd.codes[j * rb], c);
            });
        if (opts.bf16) {  // bf16(scale·code + C·Bᵀ): the W4A16 model in BF16
            d.kind = LinKind::bf16;
            const std::vector<float> Bt = qd.rank > 0 ? spectral_basis_t(qd) : std::vector<float>();
            const std::vector<int> order = spectral_column_order(qd);
            parallel_for(out, [&](int64_t j) {
                float* row = &wf[(size_t)j * in];
                for (int64_t c = 0; c < in; ++c) row[c] *= qd.scale[j];
                for (int r = 0; r < qd.rank; ++r) {
                    const float cj = fp16_to_fp32(qd.coef[(size_t)j * qd.rank + order[r]]);
                    for (int64_t c = 0; c < in; ++c) row[c] += cj * Bt[(size_t)r * in + c];
                }
            });
            d.wb.upload(to_bf16(wf).data(), wf.size(), what + " (bf16)", &bytes);
            return d;
        }
        if (!int8 && qd.a_bits >= 16) {
            d.kind = LinKind::w4a16;
            for (int64_t j = 0; j < out; ++j)
                for (int64_t c = 0; c < in; ++c) wf[(size_t)j * in + c] *= qd.scale[j];
        } else if (!int8) {
            d.kind = LinKind::w4a4;
            // |partial sum| ≤ qmax · 8 · K must stay below 2^24 (as LinearW4A4Ref's k_chunk).
            const int64_t qmax = (1 << qd.a_bits) - 1;
            d.k_chunk = std::min<int64_t>(in, ((int64_t)1 << 24) / (qmax * 8) - 1);
            d.scale.upload(qd.scale.data(), qd.scale.size(), what + " scales", &bytes);
            d.rowsum.upload(qd.rowsum.data(), qd.rowsum.size(), what + " rowsums", &bytes);
        }
        if (!int8) d.w.upload(wf.data(), wf.size(), what, &bytes);
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
            if (qd.basis == "fourier") {  // a function of (in, rank) only: one copy, and x·B reusable across layers
                auto it = bases.find({in, qd.rank});
                if (it == bases.end()) {
                    DevBuf<float> b;
                    b.upload(Bt.data(), Bt.size(), str("Fourier basis ", in, "x", qd.rank), &bytes);
                    it = bases.emplace(std::make_pair(in, qd.rank), std::move(b)).first;
                }
                d.basis_shared = it->second.get();
            } else {
                d.basis_t.upload(Bt.data(), Bt.size(), what + " spectral basis", &bytes);
            }
            d.coef.upload(C.data(), C.size(), what + " spectral coefficients", &bytes);
        }
        return d;
    }

    // y [n, out] = x [n, in] · W [out, in]ᵀ, row-major FP32, leading dims in floats.
    void gemm_xwt(const float* x, int64_t n, const float* W, int64_t out, int64_t in, float* y, int64_t ldx,
                  int64_t ldw, int64_t ldy = 0) {
        const float one = 1.0f, zero = 0.0f;
        SQ_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)n, (int)in, &one, W, CUDA_R_32F,
                               (int)ldw, x, CUDA_R_32F, (int)ldx, &zero, y, CUDA_R_32F, (int)(ldy ? ldy : out),
                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
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
        if (pending_norm.next) {
            SQ_CHECK(pending_norm.next == &L && pending_norm.n == n && x == this->x.get(),
                     "CUDA forward: a norm left to a GEMV, but another layer runs");
            linear_with_norm(L, n, y);
            return;
        }
        if (!same_input) quant_src = nullptr, zb_src = nullptr;
        const int gm = gemm_rows > 0 ? gemm_rows : n;  // GEMM rows (≥ n)
        const float* xin = x;
        if (L.had_in) {  // the weights were stored rotated (W·R): rotate the input, x ← (x ⊙ signs)·H
            const ProfScope ps = prof("hadamard");
            cuda::mul_signs(x, L.had_signs.get(), n, (int)L.in, rot_a.get(), stream);
            gemm_xm(rot_a.get(), gm, L.had, L.in, rot_b.get());
            xin = rot_b.get();
            same_input = false;
        }
        // One row only: q8_gemv reads each x row from L1 once per 2 output rows, so at 8 rows it is
        // L1-bound (1.09 ms per LLaMA-3-8B lm_head vs 0.38 for the bf16 GEMM; 1 row: 0.20 ms).
        if (L.q8c.get() && gemm_rows == 0 && n == 1 && ((uintptr_t)xin & 15) == 0 && L.in % 4 == 0) {
            const ProfScope ps = prof("gemv q8");
            cuda::q8_gemv(xin, L.in, n, L.q8c.get(), L.q8d.get(), (int)L.out, (int)L.in, y, L.out, stream);
            cuda::add_bias(y, nullptr, L.biasp(), n, (int)L.out, stream);
            return;
        }
        if (L.kind == LinKind::f32) {
            const ProfScope ps = prof("gemm f32");
            gemm_xwt(xin, gm, L.weight(), L.out, L.in, y);
            cuda::add_bias(y, nullptr, L.biasp(), n, (int)L.out, stream);
            return;
        }
        if (L.kind == LinKind::bf16) {
            if (!(same_input && quant_src == xin && quant_n == n && quant_bits == -16)) {
                const ProfScope ps = prof("to bf16");
                cuda::f32_to_bf16(xin, (int64_t)gm * L.in, xb.get(), stream);
                quant_src = xin, quant_n = n, quant_bits = -16;
            }
            const ProfScope ps = prof("gemm bf16");
            const float one = 1.0f, zero = 0.0f;
            SQ_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)L.out, gm, (int)L.in, &one, L.wbp(),
                                   CUDA_R_16BF, (int)L.in, xb.get(), CUDA_R_16BF, (int)L.in, &zero, y, CUDA_R_32F,
                                   (int)L.out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            cuda::add_bias(y, nullptr, L.biasp(), n, (int)L.out, stream);
            return;
        }
        const bool int8 = L.w8p() != nullptr;
        // The spectral branch in the CPU engine's bits (cuda::spectral_xb, spectral_zc_add): z = x·Bᵀ, reused by
        // the layers that share input and basis; ·Cᵀ fused into the GEMM epilogue (tensor-core path, n ≤
        // opts.spectral_fuse_max_rows) or added (with the bias) to the GEMM's output by its own pass: the same
        // bits either way.
        const bool fuse = int8 && L.rank > 0 && n <= opts.spectral_fuse_max_rows;
        const bool after = L.rank > 0 && !fuse;  // spectral_zc_add adds the branch and the bias after the GEMM
        const float* bias = after ? nullptr : L.biasp();
        if (L.rank > 0) {
            const ProfScope ps = prof("spectral x·B");
            if (!(same_input && zb_src == xin && zb_basis == L.basis() && zb_n == n)) {
                cuda::spectral_xb(xin, L.in, n, L.basis(), (int)L.rank, (int)L.in, zb.get(), zb_part.get(),
                                  zb_part.size(), stream);
                zb_src = xin, zb_basis = L.basis(), zb_n = n;
            }
        }
        const auto branch_after = [&] {
            if (!after) return;
            const ProfScope ps = prof("spectral ·Cᵀ");
            cuda::spectral_zc_add(zb.get(), n, L.coefp(), (int)L.out, (int)L.rank, y, L.out, L.biasp(), stream);
        };
        if (L.kind == LinKind::w4a16) {
            {
                const ProfScope ps = prof("gemm w4a16");
                gemm_xwt(xin, gm, L.w.get(), L.out, L.in, y);
                cuda::add_bias(y, nullptr, bias, n, (int)L.out, stream);
            }
            branch_after();
            return;
        }
        if (!(same_input && quant_src == xin && quant_n == n && quant_bits == L.a_bits && quant_clip == L.a_clip)) {
            const ProfScope ps = prof("act_quant");
            if (!skip_launch("actq"))
                cuda::act_quant(xin, n, L.in, L.a_bits, L.a_clip, int8 ? nullptr : qf.get(),
                                int8 ? q8.get() : nullptr, a_scale.get(), a_zero.get(), stream);
            quant_src = xin, quant_n = n, quant_bits = L.a_bits, quant_clip = L.a_clip;
        }
        if (int8) {  // exact int32 accumulators on the tensor cores, the same epilogue fused
            {
                const ProfScope ps = prof(n <= 16 ? "gemm w4a4 (gemv)" : "gemm w4a4");
                cuda::W4GemmArgs a;
                a.q = q8.get(), a.m = n, a.k = (int)L.in, a.n = (int)L.out, a.w = L.w8p();
                a.act_scale = a_scale.get(), a.act_zero = a_zero.get(), a.w_scale = L.scalep();
                a.w_rowsum = L.rowsump(), a.bias = bias, a.y = y;
                a.ws = wgmma_ws.get(), a.ws_ints = (int64_t)wgmma_ws.size();
                if (fuse) a.spec_z = zb.get(), a.spec_c = L.coefp(), a.spec_rank = L.rank;
                cuda::w4a4_gemm(a, stream);
            }
            branch_after();
            return;
        }
        {
            const ProfScope ps = prof("gemm w4a4 f32 codes");
            if (L.k_chunk >= L.in) {
                gemm_xwt(qf.get(), gm, L.w.get(), L.out, L.in, acc.get());
                cuda::w4a4_epilogue(acc.get(), nullptr, n, (int)L.out, a_scale.get(), a_zero.get(), L.scalep(),
                                    L.rowsump(), nullptr, bias, y, stream);
            } else {
                for (int64_t k0 = 0; k0 < L.in; k0 += L.k_chunk) {  // each chunk's float sums are exact integers
                    const int64_t kcols = std::min(L.k_chunk, L.in - k0);
                    gemm_xwt(qf.get() + k0, gm, L.w.get() + k0, L.out, kcols, acc.get(), L.in, L.in);
                    cuda::acc_add_i32(acc.get(), (int64_t)n * L.out, k0 == 0, acc_i.get(), stream);
                }
                cuda::w4a4_epilogue(nullptr, acc_i.get(), n, (int)L.out, a_scale.get(), a_zero.get(), L.scalep(),
                                    L.rowsump(), nullptr, bias, y, stream);
            }
        }
        branch_after();
    }

    // All layers for n tokens at pos; leaves the final-normed hidden states in x.
    // positions_h (varlen): each token's position in its own packed sequence,
    // validated by the caller; the call then starts at cache row 0 and leaves pos at 0.
    void run_layers(const int* tokens_h, int n, const int* positions_h = nullptr) {
        const bool varlen = positions_h != nullptr;
        if (varlen) pos = 0;
        SQ_CHECK(n > 0, "forward: no tokens");
        SQ_CHECK(pos + n <= cap, "forward: context overflow: ", pos, " + ", n, " tokens > KV cache capacity ", cap,
                 " (raise -c)");
        upload_tokens(tokens_h, n);
        SQ_CUDA(cudaMemcpyAsync(pos_dev.get(), &pos, sizeof(int), cudaMemcpyHostToDevice, stream));
        if (varlen)
            SQ_CUDA(cudaMemcpyAsync(positions.get(), positions_h, n * sizeof(int), cudaMemcpyHostToDevice, stream));
        // varlen: the block table varies with the batch; kv_row0: graphs hold cache pointers
        if (!use_graphs || profiling || n > kGraphMaxTokens || varlen || kv_row0 != 0) {
            layers_body(n, varlen ? Mode::varlen : Mode::single);
        } else {
            auto it = graphs.find(n);
            if (it == graphs.end()) {
                if (graphs.size() >= kGraphCache) clear_graphs();
                it = graphs.emplace(n, capture([&] { layers_body(n, Mode::single); })).first;
            }
            SQ_CUDA(cudaGraphLaunch(it->second, stream));
        }
        pos = varlen ? 0 : pos + n;
    }

    void upload_tokens(const int* tokens_h, int n) {
        for (int t = 0; t < n; ++t)
            SQ_CHECK(tokens_h[t] >= 0 && tokens_h[t] < cfg.vocab, "forward: token id ", tokens_h[t],
                     " out of range [0, ", cfg.vocab, ")");
        // Pageable sources: the copies are staged before these calls return.
        SQ_CUDA(cudaMemcpyAsync(tokens.get(), tokens_h, n * sizeof(int), cudaMemcpyHostToDevice, stream));
    }

    template <class F>
    cudaGraphExec_t capture(F&& body) {
        SQ_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        try {
            body();
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

    // lm_head over rows [r0, r0 + rows) of x into logits.
    void lm_rows(int r0, int rows) {
        prof_prefix = "lm_head ";
        if (!skip_launch("lm_head")) linear(lm_head, x.get() + (size_t)r0 * cfg.d_model, rows, logits.get());
        prof_prefix.clear();
    }

    // A fused layer (qkv, gu) runs for this call whenever it exists: its spectral branch (if any) gives
    // every output the bits of its part alone (spectral_zc_add / spec_dot: one order per element).
    bool fused_runs(const DLinear& F, int) const { return F.out != 0; }
    // The layer that reads x first in layer l (its q projection, fused or not).
    const DLinear* first_linear(int l, int n) const {
        const DLayer& L = layers[l];
        return fused_runs(L.qkv, n) && !qk_rotate ? &L.qkv : &L.q;
    }
    // What a row kernel writing `next`'s input can hand it in the same pass (opts.fuse):
    // the activation codes (W4A4 on the tensor cores, no online Hadamard) or the bf16 copy
    // (BF16 baseline, one GEMM row per token: not varlen).
    cuda::RowQuant row_quant_for(const DLinear* next) {
        cuda::RowQuant rq;
        if (!opts.fuse || !next || next->had_in) return rq;
        if (next->kind == LinKind::w4a4 && next->w8p()) {
            rq.bits = next->a_bits, rq.clip = next->a_clip;
            rq.q8 = q8.get(), rq.scale = a_scale.get(), rq.zero = a_zero.get();
        } else if (next->kind == LinKind::bf16 && gemm_rows == 0) {
            rq.bf16 = xb.get();
        }
        return rq;
    }
    // Records that the codes (or bf16 copy) of src for `next` are in place, so linear() with
    // same_input skips its own act_quant / conversion (the checks there match on these).
    void quant_done(const cuda::RowQuant& rq, const DLinear* next, const float* src, int n) {
        quant_src = nullptr, zb_src = nullptr;
        if (rq.q8) quant_src = src, quant_n = n, quant_bits = next->a_bits, quant_clip = next->a_clip;
        else if (rq.bf16) quant_src = src, quant_n = n, quant_bits = -16;
    }
    // Decode v8 (opts.norm_gemv): the norm is done by `next`'s GEMV (cuda::w4a4_gemv_norm) when that is a
    // fused W4A4 layer on the tensor cores without spectral branch or online Hadamard, in a call of ≤ 8 rows.
    bool norm_in_gemv(const DLinear* next, int n) const {
        return h_alt.get() && !skip_launch(nullptr) && next && next->kind == LinKind::w4a4 && next->w8p() &&
               next->rank == 0 && !next->had_in && next->in == cfg.d_model && n <= cuda::W4G_NORM_MAX_M &&
               cuda::w4a4_gemv_norm_fits(n, cfg.d_model, (int)next->out);
    }
    // h += add (add null: none); x = rmsnorm(h)·w, with `next`'s input codes in the same pass (or left
    // to next's GEMV: norm_in_gemv).
    void norm_for(const float* add, const float* w, int n, const DLinear* next) {
        SQ_CHECK(!pending_norm.next, "CUDA forward: a norm left to a GEMV that did not run");
        if (norm_in_gemv(next, n)) {
            pending_norm = {next, add, w, n};
            quant_src = nullptr, zb_src = nullptr;
            return;
        }
        const cuda::RowQuant rq = row_quant_for(next);
        if (!skip_launch("norm"))
            cuda::add_rmsnorm_quant(hcur, add, w, n, cfg.d_model, cfg.rms_eps, x.get(), rq, stream);
        quant_done(rq, next, x.get(), n);
    }
    // The pending norm inside L's GEMV, reading x's rows: h + add → the other residual buffer, codes
    // in shared memory, x = the normed rows (for any later reader), y = L(x).
    void linear_with_norm(const DLinear& L, int n, float* y) {
        const ProfScope ps = prof("gemm w4a4 (gemv) + norm");
        cuda::W4GemmArgs a;
        a.m = n, a.k = (int)L.in, a.n = (int)L.out, a.w = L.w8p();
        a.w_scale = L.scalep(), a.w_rowsum = L.rowsump(), a.bias = L.biasp(), a.y = y;
        cuda::GemvNorm g;
        float* out = hcur == h.get() ? h_alt.get() : h.get();
        g.h = hcur, g.add = pending_norm.add, g.w = pending_norm.w, g.eps = cfg.rms_eps;
        g.h_out = out, g.y = x.get(), g.bits = L.a_bits, g.clip = L.a_clip;
        cuda::w4a4_gemv_norm(a, g, stream);
        hcur = out;
        pending_norm = {};
    }

    // The weight bytes a GEMV of L streams (none for the float path).
    static cuda::L2Span weight_span(const DLinear& L) {
        if (L.out == 0) return {};
        if (L.w8p()) return {L.w8p(), (size_t)cuda::w4g_bytes(L.out, L.in)};
        if (L.wbp()) return {L.wbp(), (size_t)L.out * L.in * 2};
        return {};
    }
    // Decode v7: after layer L's q|k|v, the side stream prefetches up to opts.l2_prefetch_mib MiB of its
    // o, gate|up (or gate, up) and down weights, in the order they run, to L2 (cuda::l2_prefetch).
    void prefetch_after_qkv(const DLayer& L, int n, Mode mode) {
        if (opts.l2_prefetch_mib <= 0 || n > 16 || mode == Mode::varlen) return;
        cuda::L2Span sp[cuda::kL2Spans];
        size_t left = (size_t)opts.l2_prefetch_mib << 20;
        int i = 0;
        const bool fg = fused_runs(L.gu, n);
        for (const DLinear* d : {&L.o, fg ? &L.gu : &L.gate, fg ? &L.down : &L.up, fg ? nullptr : &L.down}) {
            if (!d || left == 0) continue;
            cuda::L2Span w = weight_span(*d);
            w.bytes = std::min(w.bytes, left);
            left -= w.bytes;
            sp[i++] = w;
        }
        if (left == (size_t)opts.l2_prefetch_mib << 20) return;  // no weights of a tensor-core or bf16 GEMV
        SQ_CUDA(cudaEventRecord(ev_fork, stream));
        SQ_CUDA(cudaStreamWaitEvent(side, ev_fork, 0));
        cuda::l2_prefetch(sp, 128, side);
        side_open = true;
    }
    // The side stream's work joined back into `stream` (a captured graph must end joined).
    void join_side() {
        if (!side_open) return;
        SQ_CUDA(cudaEventRecord(ev_join, side));
        SQ_CUDA(cudaStreamWaitEvent(stream, ev_join, 0));
        side_open = false;
    }

    // The device work of run_layers: launches only (captured into graphs),
    // with the cache position read from pos_dev (Mode::single, the cache from
    // row kv_row0), or (varlen) the per-token positions from `positions` and the
    // cache filled from row 0, or (batch) token t at positions[t] with its K/V
    // at cache row dec_rows[t].
    //
    // Fused (opts.fuse, layers with qkv / gu, decode v4): the norm writes the next
    // layer's activation codes; [q; k; v] is one GEMV (GEMM) into qkvb, then one
    // rope_kv_store kernel; [gate; up] one GEMV into upb [n, 2·ff], then one
    // silu_mul_rows that also quantizes for down. Every value is computed by the same
    // operations as the unfused path (integer accumulators exact, same epilogue and
    // rounding code), so the outputs are the same bits (CudaModel.FusedDecodeIsBitIdentical).
    void layers_body(int n, Mode mode) {
        const ModelConfig& c = cfg;
        const int d = c.d_model, hd = c.head_dim, H = c.n_heads, KV = c.n_kv_heads;
        const int64_t qd = (int64_t)H * hd, kvd = (int64_t)KV * hd, ff = c.d_ff;
        const bool varlen = mode == Mode::varlen;
        gemm_rows = varlen ? cap : 0;
        const RowsReset reset{gemm_rows};
        const int gm = varlen ? cap : n;
        {
            const ProfScope ps = prof("embed + norm");
            cuda::embed_gather(embed.get(), tokens.get(), n, d, h.get(), stream);
            hcur = h.get();
            pending_norm = {};
            norm_for(nullptr, layers[0].attn_norm.get(), n, first_linear(0, n));
        }
        for (int l = 0; l < c.n_layers; ++l) {
            DLayer& L = layers[l];
            const float* k_shift = L.k_shift.size() ? L.k_shift.get() : nullptr;
            const int64_t row0 = (int64_t)l * cap + (mode == Mode::single ? kv_row0 : 0);
            float* kc_l = kv_pack ? nullptr : kc.get() + (size_t)row0 * kvd;
            float* vc_l = kv_pack ? nullptr : vc.get() + (size_t)row0 * kvd;
            const cuda::KvPacked pk_l = kv_packed_layer(row0, k_shift);
            if (first_linear(l, n) == &L.qkv) {
                if (!skip_launch("qkv")) linear(L.qkv, x.get(), n, qkvb.get(), true);
                prefetch_after_qkv(L, n, mode);
                const ProfScope ps = prof("rope + kv store");
                const int64_t ld = qd + 2 * kvd;
                const float* pq = qkvb.get();
                if (!skip_launch("rope"))
                    cuda::rope_kv_store(pq, ld, pq + qd, ld, pq + qd + kvd, ld, n, H, KV, hd, 0,
                                        mode == Mode::single ? pos_dev.get() : nullptr,
                                        mode == Mode::single ? nullptr : positions.get(),
                                        mode == Mode::batch ? dec_rows.get() : nullptr, inv_freq.get(), kv_bits,
                                        kv_clip, q.get(), kc_l, vc_l, stream, k_shift, pk_l);
            } else {
                linear(L.q, x.get(), n, q.get(), true);
                linear(L.k, x.get(), n, k.get(), true);
                linear(L.v, x.get(), n, v.get(), true);
                prefetch_after_qkv(L, n, mode);
                {
                    const ProfScope ps = prof("rope");
                    if (mode != Mode::single) {
                        cuda::rope_varlen(q.get(), n, H, hd, positions.get(), inv_freq.get(), stream);
                        cuda::rope_varlen(k.get(), n, KV, hd, positions.get(), inv_freq.get(), stream);
                    } else {
                        cuda::rope(q.get(), n, H, hd, 0, pos_dev.get(), inv_freq.get(), stream);
                        cuda::rope(k.get(), n, KV, hd, 0, pos_dev.get(), inv_freq.get(), stream);
                    }
                }
                const float* ka = k.get();
                if (qk_rotate) {  // x·H_hd per head, as hadamard_transform(q, n·H, hd)
                    const ProfScope ps = prof("qk rotation");
                    const float* Hh = had_matrix(hd);
                    gemm_xm(q.get(), (int64_t)gm * H, Hh, hd, qr.get());
                    gemm_xm(k.get(), (int64_t)gm * KV, Hh, hd, kr.get());
                    ka = kr.get();
                }
                const ProfScope ps = prof("kv store");
                if (mode == Mode::varlen)
                    cuda::kv_store(ka, v.get(), n, KV, hd, kv_bits, kv_clip, kc_l, vc_l, nullptr, stream, k_shift,
                                   pk_l);
                else if (mode == Mode::batch)
                    cuda::kv_store_rows(ka, v.get(), n, KV, hd, kv_bits, kv_clip, kc_l, vc_l, dec_rows.get(), stream,
                                        k_shift, pk_l);
                else
                    cuda::kv_store(ka, v.get(), n, KV, hd, kv_bits, kv_clip, kc_l, vc_l, pos_dev.get(), stream,
                                   k_shift, pk_l);
            }
            const float* qa = qk_rotate ? qr.get() : q.get();
            bool o_ready = false;  // o's input codes / bf16 made by the attention kernel
            {
                const ProfScope ps = prof("attention");
                if (mode == Mode::varlen) {
                    // flash: tensor cores, 64-row table; f32: the FP32 kernel, 16-row table (forward_score_varlen)
                    if (flash_att(hd))
                        cuda::attention_flash_varlen(qa, kc_l, vc_l, n, positions.get(), H, KV, hd, att.get(), stream,
                                                     att_blocks.get(), att_nblocks, pk_l);
                    else
                        cuda::attention_varlen(qa, kc_l, vc_l, n, positions.get(), H, KV, hd, att.get(), stream,
                                               att_blocks.get(), att_nblocks, pk_l);
                } else if (mode == Mode::batch && opts.decode_v5) {
                    // v5: one kernel; its last block per sequence also makes o's codes (or bf16 input).
                    cuda::RowQuant rq = row_quant_for(&L.o);
                    if (!att_codes && rq.q8) rq = {};  // A/B: o's codes from act_quant instead
                    if (!skip_launch("att"))
                        cuda::attention_decode(qa, kc_l, vc_l, n, dec_rows.get(), positions.get(), H, KV, hd, dec_cap,
                                               dec_part.get(), att.get(), stream, rq, dec_cnt.get(), pk_l,
                                               opts.decode_cluster ? 6 : 5);
                    quant_done(rq, &L.o, att.get(), n);
                    o_ready = rq.q8 || rq.bf16;
                } else if (mode == Mode::batch) {  // v4: one token per sequence, keys split over blocks
                    // o's codes come from act_quant: v4's one-block-per-sequence merge was slower (v4c, notes).
                    cuda::attention_decode(qa, kc_l, vc_l, n, dec_rows.get(), positions.get(), H, KV, hd, dec_cap,
                                           dec_part.get(), att.get(), stream);
                } else if (flash_att(hd)) {  // prefill: tensor cores (ModelCudaOptions::flash_attention)
                    cuda::attention_flash(qa, kc_l, vc_l, n, 0, pos_dev.get(), H, KV, hd, att.get(), stream, pk_l);
                } else {
                    cuda::attention(qa, kc_l, vc_l, n, 0, pos_dev.get(), H, KV, hd, att.get(), stream, pk_l);
                }
            }
            if (!skip_launch("o")) linear(L.o, att.get(), n, proj.get(), o_ready);
            const bool fg = fused_runs(L.gu, n);
            {
                const ProfScope ps = prof("norm");
                norm_for(proj.get(), L.ffn_norm.get(), n, fg ? &L.gu : &L.gate);
            }
            if (fg) {
                if (!skip_launch("gu")) linear(L.gu, x.get(), n, upb.get(), true);
                {
                    const ProfScope ps = prof("silu_mul");
                    const cuda::RowQuant rq = row_quant_for(&L.down);
                    // down reads only the codes / bf16 copy unless its spectral branch or online Hadamard
                    // needs the float rows. Without them the kernel keeps a row in 1024 threads' registers:
                    // H100, 128..512 rows 1.3-3x faster (W4A4 and BF16 alike), 2048 rows 12% slower than
                    // 256 threads writing and re-reading act (docs/perf.md "Session 12"), so there only.
                    const bool f32 = !(rq.q8 || rq.bf16) || L.down.rank > 0 || L.down.had_in || n <= 64 || n > 512;
                    if (!skip_launch("silu"))
                        cuda::silu_mul_rows(upb.get(), upb.get() + ff, 2 * ff, n, (int)ff, f32 ? act.get() : nullptr,
                                            rq, stream, row_sync());
                    quant_done(rq, &L.down, act.get(), n);
                }
                if (!skip_launch("down")) linear(L.down, act.get(), n, proj.get(), true);
            } else {
                linear(L.gate, x.get(), n, act.get(), true);
                linear(L.up, x.get(), n, upb.get(), true);
                {
                    const ProfScope ps = prof("silu_mul");
                    cuda::silu_mul(act.get(), upb.get(), (int64_t)n * ff, stream);
                }
                linear(L.down, act.get(), n, proj.get());
            }
            const ProfScope ps = prof("norm");
            if (l + 1 < c.n_layers)
                norm_for(proj.get(), layers[l + 1].attn_norm.get(), n, first_linear(l + 1, n));
            else
                norm_for(proj.get(), final_norm.get(), n, nullptr);
        }
        join_side();
    }

    // Scratch of the split row kernels (decode v5; opts.decode_v5 off: the one-block kernels).
    cuda::RowSync row_sync() const {
        if (!opts.decode_v5) return {};
        return {split_part.get(), split_cnt.get()};
    }

    // The packed cache from row `row` on (null when the cache is fp32); readers see k_shift.
    cuda::KvPacked kv_packed_layer(int64_t row, const float* k_shift) const {
        if (!kv_pack) return {};
        cuda::KvPacked p;
        p.k = kq.get(), p.v = vq.get(), p.kp = kpar.get(), p.vp = vpar.get();
        p = cuda::kv_packed_at(p, row, cfg.n_kv_heads, cfg.head_dim);
        p.k_shift = k_shift;
        return p;
    }

    // [parts...] as one layer F (rows concatenated in order) when they compute the same
    // thing of the same input: W4A4 on the tensor cores with one activation quantizer, one
    // shared spectral basis (or none) and whole 8-row layout blocks (so the concatenated
    // CUDA-layout buffers are the fused layout), or all BF16; no online Hadamard; bias on
    // all or none. The parts become views of F's rows (no second copy of any weight).
    void fuse_rows(std::vector<DLinear*> parts, DLinear* F, const std::string& what) {
        const DLinear& a = *parts[0];
        int64_t out = 0;
        for (const DLinear* p : parts) {
            if (p->had_in || p->in != a.in || p->kind != a.kind || p->has_bias() != a.has_bias()) return;
            if (p->w8_view || p->wb_view) return;  // already a view
            if (p->kind == LinKind::w4a4) {
                if (!p->w8.get() || p->a_bits != a.a_bits || p->a_clip != a.a_clip || p->rank != a.rank ||
                    p->basis_t.size() != 0 || p->basis() != a.basis() || p->out % cuda::W4G_NB != 0)
                    return;
            } else if (p->kind != LinKind::bf16) {
                return;
            }
            out += p->out;
        }
        F->kind = a.kind, F->in = a.in, F->out = out, F->a_bits = a.a_bits, F->a_clip = a.a_clip;
        F->rank = a.rank, F->basis_shared = a.basis();
        auto cat = [&](auto member, auto& dst, size_t per_row, const char* field) {
            using T = std::remove_reference_t<decltype(*(a.*member).get())>;
            if (!(a.*member).get()) return;
            size_t total = 0;
            for (const DLinear* p : parts) total += (p->*member).size();
            dst.alloc(total, what + " " + field, &bytes);
            size_t off = 0;
            for (const DLinear* p : parts) {
                SQ_CUDA(cudaMemcpyAsync(dst.get() + off, (p->*member).get(), (p->*member).size() * sizeof(T),
                                        cudaMemcpyDeviceToDevice, stream));
                off += (p->*member).size();
            }
            (void)per_row;
        };
        cat(&DLinear::w8, F->w8, 0, "(CUDA layout)");
        cat(&DLinear::wb, F->wb, 0, "(bf16)");
        cat(&DLinear::scale, F->scale, 1, "scales");
        cat(&DLinear::rowsum, F->rowsum, 1, "rowsums");
        cat(&DLinear::coef, F->coef, a.rank, "spectral coefficients");
        cat(&DLinear::bias, F->bias, 1, "bias");
        SQ_CUDA(cudaStreamSynchronize(stream));
        int64_t row0 = 0;
        for (DLinear* p : parts) {
            const size_t before = p->bytes();
            if (F->w8.get()) p->w8_view = F->w8.get() + row0 * cuda::w4g_k_pad(a.in) / 2;
            if (F->wb.get()) p->wb_view = F->wb.get() + row0 * a.in;
            if (F->scale.get()) p->scale_view = F->scale.get() + row0;
            if (F->rowsum.get()) p->rowsum_view = F->rowsum.get() + row0;
            if (F->coef.get()) p->coef_view = F->coef.get() + row0 * a.rank;
            if (F->bias.get()) p->bias_view = F->bias.get() + row0;
            p->w8 = {}, p->wb = {}, p->scale = {}, p->rowsum = {}, p->coef = {}, p->bias = {};
            bytes -= before - p->bytes();
            row0 += p->out;
        }
    }

    // Both constructors, before alloc_buffers: q/k/v and gate/up of every layer fused where they can be.
    void fuse_layers() {
        if (!opts.fuse) return;
        for (size_t l = 0; l < layers.size(); ++l) {
            DLayer& L = layers[l];
            const std::string p = str("layer ", l, " ");
            fuse_rows({&L.q, &L.k, &L.v}, &L.qkv, p + "qkv");
            fuse_rows({&L.gate, &L.up}, &L.gu, p + "gate|up");
        }
    }

    // KV cache and scratch for max_in/max_out/max_rank wide layers (both constructors).
    void alloc_buffers(int64_t max_in, int64_t max_out, int64_t max_rank, bool split_k, bool any_had) {
        const ModelConfig& c = cfg;
        const int64_t d = c.d_model, hd = c.head_dim, qd = (int64_t)c.n_heads * hd,
                      kvd = (int64_t)c.n_kv_heads * hd, ff = c.d_ff;
        const size_t C = (size_t)cap;
        const size_t b0 = bytes;
        kv_pack = opts.kv_packed && kv_bits <= 4;
        if (kv_pack) {
            const size_t vecs = (size_t)c.n_layers * C * c.n_kv_heads, pb = (size_t)cuda::kv_packed_bytes((int)hd);
            kq.alloc(vecs * pb, "KV cache (key codes)", &bytes);
            vq.alloc(vecs * pb, "KV cache (value codes)", &bytes);
            kpar.alloc(vecs, "KV cache (key scales, zeros)", &bytes);
            vpar.alloc(vecs, "KV cache (value scales, zeros)", &bytes);
        } else {
            kc.alloc((size_t)c.n_layers * C * kvd, "KV cache (keys)", &bytes);
            vc.alloc((size_t)c.n_layers * C * kvd, "KV cache (values)", &bytes);
        }
        bytes_kv = bytes - b0;
        h.alloc(C * d, "hidden states", &bytes);
        if (opts.norm_gemv && opts.fuse && !opts.bf16)
            h_alt.alloc((size_t)cuda::W4G_NORM_MAX_M * d, "hidden states (norm in the GEMV)", &bytes);
        x.alloc(C * d, "normed states", &bytes);
        q.alloc(C * qd, "queries", &bytes);
        k.alloc(C * kvd, "keys", &bytes);
        v.alloc(C * kvd, "values", &bytes);
        if (qk_rotate) {
            qr.alloc(C * qd, "rotated queries", &bytes);
            kr.alloc(C * kvd, "rotated keys", &bytes);
        }
        att.alloc(C * qd, "attention output", &bytes);
        proj.alloc(C * d, "projection", &bytes);
        act.alloc(C * ff, "MLP activations", &bytes);
        bool any_qkv = false, any_gu = false;
        for (const DLayer& L : layers) any_qkv = any_qkv || L.qkv.out > 0, any_gu = any_gu || L.gu.out > 0;
        upb.alloc(C * ff * (any_gu ? 2 : 1), any_gu ? "MLP gate|up" : "MLP up", &bytes);
        if (any_qkv) qkvb.alloc(C * (qd + 2 * kvd), "q|k|v", &bytes);
        if (any_had) {
            rot_a.alloc(C * max_in, "Hadamard scratch", &bytes);
            rot_b.alloc(C * max_in, "Hadamard scratch", &bytes);
        }
        // lm_head runs on ≤ min(cap, kLogitRows) rows; a quantized one needs its scratch at [rows, vocab].
        const size_t lm_rows = std::min<size_t>(C, kLogitRows);
        const bool lm_q = lm_head.kind == LinKind::w4a4 || lm_head.kind == LinKind::w4a16;
        const size_t acc_elems = std::max(C * max_out, lm_q ? lm_rows * c.vocab : 0);
        bool any_f32_codes = false, any_int8 = false, any_bf16 = lm_head.kind == LinKind::bf16;
        auto scan = [&](const DLinear& L) {
            any_int8 = any_int8 || L.w8p();
            any_f32_codes = any_f32_codes || (L.kind == LinKind::w4a4 && !L.w8p());
            any_bf16 = any_bf16 || L.kind == LinKind::bf16;
        };
        for (const DLayer& L : layers)
            for (const DLinear* p : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down, &L.qkv, &L.gu}) scan(*p);
        scan(lm_head);
        if (any_f32_codes) {
            qf.alloc(C * max_in, "activation codes", &bytes);
            acc.alloc(acc_elems, "W4A4 accumulators", &bytes);
            if (split_k) acc_i.alloc(acc_elems, "W4A4 int32 accumulators", &bytes);
        }
        if (any_int8) q8.alloc(C * max_in, "activation codes (bytes)", &bytes);
        if (any_int8 && C > cuda::W4G_GEMV_MAX_M) {  // calls of more rows than the GEMV's may take the wgmma kernel
            wgmma_ws.alloc((size_t)cuda::w4a4_wgmma_ws_ints(), "wgmma split-K workspace", &bytes);
        }
        if (any_bf16) xb.alloc(C * max_in, "bf16 activations", &bytes);
        a_scale.alloc(C, "activation scales", &bytes);
        a_zero.alloc(C, "activation zero points", &bytes);
        if (max_rank > 0) {
            size_t part_elems = 0;  // x·B's k-block sums (fused layers: their parts' in and rank)
            auto need = [&](const DLinear& F) {
                if (F.rank > 0) part_elems = std::max(part_elems, cuda::spectral_xb_scratch((int)C, (int)F.rank, (int)F.in));
            };
            for (const DLayer& L : layers)
                for (const DLinear* F : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) need(*F);
            need(lm_head);
            zb.alloc(C * max_rank, "spectral branch", &bytes);
            if (part_elems) {
                zb_part.alloc(part_elems, "spectral branch k-block sums", &bytes);
                SQ_CUDA(cudaMemsetAsync(zb_part.get(), 0, part_elems * sizeof(float), stream));  // its counter
            }
        }
        logits.alloc(lm_rows * c.vocab, "logits", &bytes);
        tokens.alloc(C, "tokens", &bytes);
        pos_dev.alloc(1, "cache position", &bytes);
        positions.alloc(C, "token positions", &bytes);
        dec_rows.alloc(C, "decode cache rows", &bytes);
        gather_rows.alloc(C, "scored rows", &bytes);
        xs.alloc(lm_rows * d, "scored hidden states", &bytes);
        split_part.alloc(cuda::row_split_part(cuda::kRowSplitMaxRows, (int)std::max<int64_t>(d, ff)),
                         "split row kernel partials", &bytes);
        split_cnt.alloc(cuda::row_split_cnt(cuda::kRowSplitMaxRows), "split row kernel counters", &bytes);
        SQ_CUDA(cudaMemsetAsync(split_cnt.get(), 0, split_cnt.size() * sizeof(int), stream));
        const size_t group = (size_t)(c.n_heads / c.n_kv_heads);
        att_blocks.alloc(2 * (C * group / 16 + C + 1), "attention block table", &bytes);
        SQ_CUDA(cudaStreamSynchronize(stream));
    }

    void init_device(const ModelConfig& c, int capacity, int kvb, float kvc, bool qkr) {
        config_validate(c, "model");
        SQ_CHECK(capacity > 0, "CUDA model: capacity must be positive, got ", capacity);
        SQ_CHECK(kvb == 16 || (kvb >= 2 && kvb <= 8), "model: KV cache bits ", kvb, " out of range (2..8 or 16)");
        int devices = 0;
        const cudaError_t e = cudaGetDeviceCount(&devices);
        if (e != cudaSuccess || devices == 0) {
            (void)cudaGetLastError();
            fail("--device cuda: no CUDA device available (",
                 e != cudaSuccess ? cudaGetErrorString(e) : "0 devices", ")");
        }
        cfg = c;
        cap = capacity;
        kv_bits = kvb;
        kv_clip = kvc;
        qk_rotate = qkr;
        SQ_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        SQ_CUDA(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
        SQ_CUDA(cudaEventCreateWithFlags(&ev_fork, cudaEventDisableTiming));
        SQ_CUDA(cudaEventCreateWithFlags(&ev_join, cudaEventDisableTiming));
        SQ_CUBLAS(cublasCreate(&blas));
        SQ_CUBLAS(cublasSetStream(blas, stream));
        SQ_CUBLAS(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));  // FP32, never TF32
        blas_ws.alloc(kCublasWorkspace, "cuBLAS workspace", &bytes);
        SQ_CUBLAS(cublasSetWorkspace(blas, blas_ws.get(), kCublasWorkspace));
        const char* g = std::getenv("SQ_CUDA_GRAPHS");
        use_graphs = !(g && std::string(g) == "0");
        // 1: the v5 decode attention's last block makes o's codes; default off: act_quant (PDL) was
        // faster end to end (B=1 293.1 vs 281.2 tok/s, same call, docs/perf.md "Decode v5").
        const char* ac = std::getenv("SQ_CUDA_ATT_CODES");
        att_codes = ac && std::string(ac) == "1";
    }

    // A synthetic linear [out, in] (CudaSynthetic): weights random on the device.
    DLinear synth_linear(int64_t in, int64_t out, bool bf16, int rank, uint64_t seed, const std::string& what) {
        DLinear d;
        d.in = in, d.out = out;
        const float amp = 1.7320508f / std::sqrt((float)in);  // uniform, variance 1/in: outputs O(1)
        if (bf16) {
            d.kind = LinKind::bf16;
            d.wb.alloc((size_t)out * in, what + " (bf16)", &bytes);
            cuda::fill_uniform_bf16(d.wb.get(), (int64_t)out * in, amp, seed, stream);
            return d;
        }
        SQ_CHECK(in <= 65536, "CUDA: ", what, ": in = ", in, " > 65536 (W4A4 GEMM limit)");
        d.kind = LinKind::w4a4;
        d.a_bits = 4, d.a_clip = 0.9f;
        d.w8.alloc((size_t)cuda::w4g_bytes(out, in), what + " (CUDA layout)", &bytes);
        d.scale.alloc(out, what + " scales", &bytes);
        d.rowsum.alloc(out, what + " rowsums", &bytes);
        cuda::w4g_fill_random(d.w8.get(), out, in, seed, d.rowsum.get(), stream);
        // |code| ~ 4.6 rms, activation steps ~ range/15: scale ≈ amp/8 keeps outputs O(1)
        cuda::fill_uniform_f32(d.scale.get(), out, amp / 8, amp / 80, seed + 1, stream);
        if (rank > 0) {
            d.rank = rank;
            auto it = bases.find({in, rank});  // the Fourier basis depends on (in, rank) only
            if (it == bases.end()) {
                DevBuf<float> b;
                b.alloc((size_t)rank * in, str("spectral basis ", in, "x", rank), &bytes);
                cuda::fill_uniform_f32(b.get(), (int64_t)rank * in, 0.0f, amp, seed + 2, stream);
                it = bases.emplace(std::make_pair(in, rank), std::move(b)).first;
            }
            d.basis_shared = it->second.get();
            d.coef.alloc((size_t)out * rank, what + " spectral coefficients", &bytes);
            cuda::fill_uniform_f32(d.coef.get(), (int64_t)out * rank, 0.0f, 0.01f, seed + 3, stream);
        }
        return d;
    }
};

int spectral_fuse_rows_from_name(const std::string& v, const std::string& what) {
    if (v == "separate") return 0;
    if (v == "auto") return cuda::W4G_GEMV_MAX_M;  // every GEMV call (decode up to 64 rows), not the tiled GEMM
    if (v == "fused") return std::numeric_limits<int>::max();
    fail(what, " must be separate, auto or fused, got '", v, "'");
}

ModelCudaOptions ModelCudaOptions::from_env() {
    ModelCudaOptions o;
    const char* a = std::getenv("SQ_CUDA_W4A4");
    const char* b = std::getenv("SQ_CUDA_LINEARS");
    const char* f = std::getenv("SQ_CUDA_SPECTRAL");
    const char* u = std::getenv("SQ_CUDA_FUSE");
    const char* kv = std::getenv("SQ_CUDA_KV");
    const char* da = std::getenv("SQ_CUDA_DECODE_ATT");
    if (kv && *kv) {
        SQ_CHECK(std::string(kv) == "packed" || std::string(kv) == "f32", "SQ_CUDA_KV must be packed or f32, got '",
                 kv, "'");
        o.kv_packed = std::string(kv) == "packed";
    }
    if (const char* lh = std::getenv("SQ_CUDA_LM_HEAD"); lh && *lh) {
        SQ_CHECK(std::string(lh) == "q8" || std::string(lh) == "f32", "SQ_CUDA_LM_HEAD must be q8 or f32, got '", lh,
                 "'");
        o.lm_head_q8 = std::string(lh) == "q8";
    }
    if (const char* pa = std::getenv("SQ_CUDA_PREFILL_ATT"); pa && *pa) {
        SQ_CHECK(std::string(pa) == "flash" || std::string(pa) == "f32", "SQ_CUDA_PREFILL_ATT must be flash or f32, got '",
                 pa, "'");
        o.flash_attention = std::string(pa) == "flash";
    }
    if (const char* ng = std::getenv("SQ_CUDA_NORM_GEMV"); ng && *ng) {
        SQ_CHECK(std::string(ng) == "0" || std::string(ng) == "1", "SQ_CUDA_NORM_GEMV must be 0 or 1, got '", ng, "'");
        o.norm_gemv = std::string(ng) == "1";
    }
    o.l2_prefetch_mib = env_int("SQ_CUDA_L2PF", o.l2_prefetch_mib, 0, 4096);  // MiB
    if (da && *da) {
        const std::string v = da;
        SQ_CHECK(v == "v6" || v == "v5" || v == "v4", "SQ_CUDA_DECODE_ATT must be v6, v5 or v4, got '", da, "'");
        o.decode_v5 = v != "v4";
        o.decode_cluster = v == "v6";
    }
    if (u && *u) {
        SQ_CHECK(std::string(u) == "0" || std::string(u) == "1", "SQ_CUDA_FUSE must be 0 or 1, got '", u, "'");
        o.fuse = std::string(u) == "1";
    }
    if (f && *f) {
        o.spectral_fuse_max_rows = spectral_fuse_rows_from_name(f, "SQ_CUDA_SPECTRAL");
    }
    if (a && *a) {
        SQ_CHECK(std::string(a) == "f32" || std::string(a) == "int8", "SQ_CUDA_W4A4 must be int8 or f32, got '", a,
                 "'");
        o.w4a4_f32_codes = std::string(a) == "f32";
    }
    if (b && *b) {
        SQ_CHECK(std::string(b) == "bf16" || std::string(b) == "native", "SQ_CUDA_LINEARS must be native or bf16, got '",
                 b, "'");
        o.bf16 = std::string(b) == "bf16";
    }
    return o;
}

ModelCuda::ModelCuda(const ModelWeights& w, int capacity, const ModelCudaOptions& o) : p_(std::make_unique<Impl>()) {
    Impl& m = *p_;
    const ModelConfig& c = w.cfg;
    SQ_CHECK((int)w.layers.size() == c.n_layers && w.lm_head, "CUDA model: incomplete weights");
    m.opts = o;
    m.init_device(c, capacity, w.kv_bits, w.kv_clip, w.qk_rotate);

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
    bool split_k = false, any_had = false;
    m.layers.resize(c.n_layers);
    for (int l = 0; l < c.n_layers; ++l) {
        const LayerWeights& s = w.layers[l];
        DLayer& L = m.layers[l];
        const std::string p = str("layer ", l, " ");
        L.attn_norm.upload(s.attn_norm.data(), s.attn_norm.size(), p + "attn_norm", &m.bytes);
        L.ffn_norm.upload(s.ffn_norm.data(), s.ffn_norm.size(), p + "ffn_norm", &m.bytes);
        if (!s.k_shift.empty()) L.k_shift.upload(s.k_shift.data(), s.k_shift.size(), p + "k_shift", &m.bytes);
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
            split_k = split_k || (x->kind == LinKind::w4a4 && !x->w8.get() && x->k_chunk < x->in);
            any_had = any_had || x->had_in;
        }
    }
    m.lm_head = m.make_linear(*w.lm_head, "lm_head");
    SQ_CHECK(m.lm_head.in == d && m.lm_head.out == c.vocab, "CUDA model: lm_head shape ", m.lm_head.out, "x",
             m.lm_head.in);
    max_rank = std::max<int64_t>(max_rank, m.lm_head.rank);
    split_k = split_k || (m.lm_head.kind == LinKind::w4a4 && !m.lm_head.w8.get() && m.lm_head.k_chunk < m.lm_head.in);
    any_had = any_had || m.lm_head.had_in;
    if (m.qk_rotate) m.had_matrix((int)hd);
    m.fuse_layers();
    m.alloc_buffers(max_in, max_out, max_rank, split_k, any_had);
}

ModelCuda::ModelCuda(const ModelConfig& c, const CudaSynthetic& s, int capacity) : p_(std::make_unique<Impl>()) {
    Impl& m = *p_;
    SQ_CHECK(s.rank >= 0 && s.rank <= c.d_model, "synthetic model: spectral rank ", s.rank);
    m.opts.bf16 = s.bf16;
    m.opts.spectral_fuse_max_rows = s.spectral_fuse_max_rows;
    m.opts.fuse = s.fuse;
    m.opts.kv_packed = s.kv_packed;
    m.opts.decode_v5 = s.decode_v5;
    m.opts.decode_cluster = s.decode_cluster;
    m.opts.lm_head_q8 = s.lm_head_q8;
    m.opts.flash_attention = s.flash_attention;
    m.opts.l2_prefetch_mib = s.l2_prefetch_mib;
    m.opts.norm_gemv = s.norm_gemv;
    m.init_device(c, capacity, s.kv_bits, 1.0f, false);
    const int64_t d = c.d_model, hd = c.head_dim, qd = (int64_t)c.n_heads * hd, kvd = (int64_t)c.n_kv_heads * hd,
                  ff = c.d_ff, V = c.vocab;
    uint64_t seed = s.seed * 1000003;
    m.embed.alloc((size_t)V * d, "embedding", &m.bytes);
    cuda::fill_uniform_f32(m.embed.get(), V * d, 0.0f, 1.0f, ++seed, m.stream);
    m.final_norm.alloc(d, "final norm", &m.bytes);
    cuda::fill_uniform_f32(m.final_norm.get(), d, 1.0f, 0.1f, ++seed, m.stream);
    const std::vector<float> inv = rope_inv_freq(c);
    m.inv_freq.upload(inv.data(), inv.size(), "RoPE frequencies", &m.bytes);
    m.layers.resize(c.n_layers);
    for (int l = 0; l < c.n_layers; ++l) {
        DLayer& L = m.layers[l];
        const std::string p = str("layer ", l, " ");
        L.attn_norm.alloc(d, p + "attn_norm", &m.bytes);
        L.ffn_norm.alloc(d, p + "ffn_norm", &m.bytes);
        cuda::fill_uniform_f32(L.attn_norm.get(), d, 1.0f, 0.1f, ++seed, m.stream);
        cuda::fill_uniform_f32(L.ffn_norm.get(), d, 1.0f, 0.1f, ++seed, m.stream);
        L.q = m.synth_linear(d, qd, s.bf16, s.rank, seed += 8, p + "q");
        L.k = m.synth_linear(d, kvd, s.bf16, s.rank, seed += 8, p + "k");
        L.v = m.synth_linear(d, kvd, s.bf16, s.rank, seed += 8, p + "v");
        L.o = m.synth_linear(qd, d, s.bf16, s.rank, seed += 8, p + "o");
        L.gate = m.synth_linear(d, ff, s.bf16, s.rank, seed += 8, p + "gate");
        L.up = m.synth_linear(d, ff, s.bf16, s.rank, seed += 8, p + "up");
        L.down = m.synth_linear(ff, d, s.bf16, s.rank, seed += 8, p + "down");
    }
    m.lm_head = m.synth_linear(d, V, true, 0, seed += 8, "lm_head");  // 16-bit in both (SPEC.md §1)
    if (s.lm_head_q8 && !s.bf16) {  // decode v6: a Q8_0 lm_head whose bf16 copy is the same matrix (exact)
        DLinear& h = m.lm_head;
        h.q8c.alloc((size_t)V * d, "lm_head (Q8_0 codes)", &m.bytes);
        h.q8d.alloc((size_t)V * (d / 32), "lm_head (Q8_0 scales)", &m.bytes);
        cuda::q8_fill_random(h.q8c.get(), h.q8d.get(), h.wb.get(), V, d, 1.7320508f / std::sqrt((float)d), seed + 3,
                             m.stream);
    }
    m.fuse_layers();
    m.alloc_buffers(std::max({d, qd, ff}), std::max({qd, kvd, d, ff}), s.bf16 ? 0 : s.rank, false, false);
}

ModelCuda::~ModelCuda() = default;

const ModelConfig& ModelCuda::config() const { return p_->cfg; }
int ModelCuda::capacity() const { return p_->cap; }
int ModelCuda::pos() const { return p_->pos; }
size_t ModelCuda::device_bytes() const { return p_->bytes; }
const ModelCudaOptions& ModelCuda::options() const { return p_->opts; }

CudaMemory ModelCuda::memory() const {
    const Impl& m = *p_;
    CudaMemory r;
    for (const DLayer& L : m.layers) {
        for (const DLinear* x : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down, &L.qkv, &L.gu})
            r.linears += x->bytes();
        r.embed += (L.attn_norm.size() + L.ffn_norm.size()) * sizeof(float);
    }
    r.lm_head = m.lm_head.bytes();
    r.embed += (m.embed.size() + m.final_norm.size() + m.inv_freq.size()) * sizeof(float);
    for (const auto& [n, b] : m.had) r.embed += b.size() * sizeof(float);
    for (const auto& [k, b] : m.bases) r.linears += b.size() * sizeof(float);
    r.kv_cache = m.bytes_kv;
    r.total = m.bytes;
    return r;
}

void ModelCuda::synchronize() { SQ_CUDA(cudaStreamSynchronize(p_->stream)); }

void ModelCuda::set_profile(bool on) { p_->profiling = on; }

std::vector<std::pair<std::string, double>> ModelCuda::profile_take() {
    Impl& m = *p_;
    SQ_CUDA(cudaStreamSynchronize(m.stream));
    std::vector<std::pair<std::string, double>> out;
    std::map<std::string, size_t> idx;
    for (const auto& [what, ev] : m.marks) {
        float ms = 0;
        SQ_CUDA(cudaEventElapsedTime(&ms, ev.first, ev.second));
        auto it = idx.find(what);
        if (it == idx.end()) it = idx.emplace(what, out.size()).first, out.push_back({what, 0.0});
        out[it->second].second += ms;
    }
    m.marks.clear();
    m.ev_used = 0;
    return out;
}

void ModelCuda::decode_setup(int batch, int seq_cap) {
    Impl& m = *p_;
    SQ_CHECK(batch >= 1 && seq_cap >= 1 && (int64_t)batch * seq_cap <= m.cap && batch <= kLogitRows,
             "decode_setup: ", batch, " sequences x ", seq_cap, " rows do not fit the KV cache of ", m.cap,
             " rows (at most ", kLogitRows, " sequences)");
    SQ_CUDA(cudaStreamSynchronize(m.stream));
    for (auto& [b, g] : m.dec_graphs) cudaGraphExecDestroy(g);
    m.dec_graphs.clear();
    m.dec_batch = batch, m.dec_cap = seq_cap;
    m.dec_lens.assign(batch, 0);
    m.pos = 0;
    m.dec_part = {};
    m.dec_part.alloc(cuda::attention_decode_scratch(batch, m.cfg.n_heads, m.cfg.head_dim, seq_cap),
                     "decode attention partials", nullptr);
    m.dec_cnt = {};
    m.dec_cnt.alloc(cuda::attention_decode_counters(batch, m.cfg.n_kv_heads), "decode attention counters", nullptr);
    SQ_CUDA(cudaMemsetAsync(m.dec_cnt.get(), 0, m.dec_cnt.size() * sizeof(int), m.stream));
}

int ModelCuda::decode_len(int b) const {
    SQ_CHECK(b >= 0 && b < p_->dec_batch, "decode: sequence ", b, " outside [0, ", p_->dec_batch, ")");
    return p_->dec_lens[b];
}

void ModelCuda::decode_prefill(int b, const int* tokens, int n, float* logits) {
    Impl& m = *p_;
    SQ_CHECK(b >= 0 && b < m.dec_batch, "decode_prefill: sequence ", b, " outside [0, ", m.dec_batch,
             ") (decode_setup first)");
    SQ_CHECK(n > 0 && m.dec_lens[b] + n <= m.dec_cap, "decode_prefill: ", m.dec_lens[b], " + ", n,
             " tokens > the sequence's ", m.dec_cap, " cache rows");
    struct Restore {
        Impl& m;
        ~Restore() { m.pos = 0, m.kv_row0 = 0; }
    } restore{m};
    m.kv_row0 = b * m.dec_cap;
    m.pos = m.dec_lens[b];
    m.run_layers(tokens, n);
    m.dec_lens[b] += n;
    if (logits) {
        m.lm_rows(n - 1, 1);
        SQ_CUDA(cudaMemcpyAsync(logits, m.logits.get(), (size_t)m.cfg.vocab * sizeof(float), cudaMemcpyDeviceToHost,
                                m.stream));
        SQ_CUDA(cudaStreamSynchronize(m.stream));
    }
}

void ModelCuda::decode_fill_random(int len, uint64_t seed) {
    Impl& m = *p_;
    SQ_CHECK(m.dec_batch > 0 && len >= 0 && len < m.dec_cap, "decode_fill_random: length ", len,
             " needs decode_setup with more than that many rows");
    if (m.kv_pack) {
        cuda::kv_packed_fill_random(m.kv_packed_layer(0, nullptr), (int64_t)m.kpar.size(), m.cfg.head_dim, seed,
                                    m.stream);
    } else {
        cuda::fill_uniform_f32(m.kc.get(), (int64_t)m.kc.size(), 0.0f, 1.0f, seed, m.stream);
        cuda::fill_uniform_f32(m.vc.get(), (int64_t)m.vc.size(), 0.0f, 1.0f, seed + 1, m.stream);
    }
    m.dec_lens.assign(m.dec_batch, len);
}

void ModelCuda::decode_step(const int* tokens, float* logits) {
    Impl& m = *p_;
    const int B = m.dec_batch;
    SQ_CHECK(B > 0, "decode_step: decode_setup first");
    std::vector<int> rows(B), pos(B);
    for (int b = 0; b < B; ++b) {
        SQ_CHECK(m.dec_lens[b] > 0 && m.dec_lens[b] < m.dec_cap, "decode_step: sequence ", b, " has ", m.dec_lens[b],
                 " tokens (needs 1..", m.dec_cap - 1, ": a prompt first, and room for one more)");
        rows[b] = b * m.dec_cap + m.dec_lens[b];
        pos[b] = m.dec_lens[b];
    }
    m.upload_tokens(tokens, B);
    SQ_CUDA(cudaMemcpyAsync(m.dec_rows.get(), rows.data(), B * sizeof(int), cudaMemcpyHostToDevice, m.stream));
    SQ_CUDA(cudaMemcpyAsync(m.positions.get(), pos.data(), B * sizeof(int), cudaMemcpyHostToDevice, m.stream));
    auto body = [&] {
        m.layers_body(B, Mode::batch);
        m.lm_rows(0, B);
    };
    if (!m.use_graphs || m.profiling) {
        body();
    } else {
        auto it = m.dec_graphs.find(B);
        if (it == m.dec_graphs.end()) it = m.dec_graphs.emplace(B, m.capture(body)).first;
        SQ_CUDA(cudaGraphLaunch(it->second, m.stream));
    }
    for (int b = 0; b < B; ++b) ++m.dec_lens[b];
    if (logits) {
        SQ_CUDA(cudaMemcpyAsync(logits, m.logits.get(), (size_t)B * m.cfg.vocab * sizeof(float),
                                cudaMemcpyDeviceToHost, m.stream));
        SQ_CUDA(cudaStreamSynchronize(m.stream));
    }
}

void ModelCuda::truncate(int n) {
    SQ_CHECK(n >= 0 && n <= p_->pos, "CUDA KV cache: truncate to ", n, " with ", p_->pos, " tokens cached");
    p_->pos = n;
}

std::vector<RowScore> ModelCuda::forward_score(const int* tokens, int n, const std::vector<RowTarget>& targets) {
    Impl& m = *p_;
    const int V = m.cfg.vocab;
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
        m.lm_rows(r0, rows);
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
    const int group = m.cfg.n_heads / m.cfg.n_kv_heads;  // the table of the kernel run_layers picks
    const std::vector<int> blocks = m.flash_att(m.cfg.head_dim) ? cuda::attention_flash_blocks(seq_lens, group)
                                                                : cuda::attention_blocks(seq_lens, group);
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
    const int V = m.cfg.vocab;
    m.run_layers(tokens, n);
    const int first = all_logits ? 0 : n - 1, lm_rows = std::min(kLogitRows, m.cap);
    for (int r0 = first; r0 < n; r0 += lm_rows) {
        const int rows = std::min(lm_rows, n - r0);
        m.lm_rows(r0, rows);
        SQ_CUDA(cudaMemcpyAsync(logits + (size_t)(r0 - first) * V, m.logits.get(), (size_t)rows * V * sizeof(float),
                                cudaMemcpyDeviceToHost, m.stream));
        SQ_CUDA(cudaStreamSynchronize(m.stream));  // the logits buffer is reused by the next chunk
    }
}

}  // namespace sq
#endif  // SPECQUANT_HAS_CUDA
