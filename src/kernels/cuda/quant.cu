// Quantization kernels: per-token activation quantization, the W4A4 epilogue,
// KV cache fake quantization. Build: cmake -DSPECQUANT_CUDA=ON.
//
// These must equal kernels/ref/w4a4_ref.cpp bit for bit (tests/test_cuda_model.cpp):
// the range reduction is order-free (max/min), and every rounding step the
// reference makes is spelled out with a correctly rounded intrinsic
// (__fmul_rn, __fdiv_rn, rintf = round half to even) so nvcc cannot fuse
// `mx·clip − mn·clip` into an FMA or turn x / s into x · (1/s).
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/quant_math.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/w4a4_spec_dot.cuh"

namespace sq::cuda {

namespace {

// One block per token row. V > 0 (v4): k ≤ V·blockDim.x, the row loaded into registers
// up front (one memory round trip, not one per element per pass: the decode rows are one
// block each, latency bound); max/min are order-free, so the result is the same bits.
template <int V>
__global__ void __launch_bounds__(1024) act_quant_kernel(const float* __restrict__ x, int64_t k, int bits, float clip, float* __restrict__ qf,
                                 uint8_t* __restrict__ q8, float* __restrict__ scale, int32_t* __restrict__ zero) {
    __shared__ float red_mx[32], red_mn[32];
    __shared__ float s_sh;
    __shared__ int z_sh;
    pdl_trigger_then_wait();  // x is the previous kernel's output (decode: launched early, PDL)
    const int64_t t = blockIdx.x;
    const float* xr = x + t * k;
    if constexpr (V > 0) {
        __shared__ float red[64];
        const int tid = threadIdx.x, nt = blockDim.x;
        float xv[V];
        float mx = 0.0f, mn = 0.0f;
#pragma unroll
        for (int j = 0; j < V; ++j) xv[j] = tid + j * nt < k ? xr[tid + j * nt] : 0.0f;
#pragma unroll
        for (int j = 0; j < V; ++j)
            if (tid + j * nt < k) mx = ref_max(mx, xv[j]), mn = ref_min(mn, xv[j]);
        float s;
        int z;
        block_row_params(mx, mn, red, bits, clip, &scale[t], &zero[t], &s, &z);
        const int qmax = (1 << bits) - 1;
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const int64_t i = tid + j * nt;
            if (i >= k) continue;
            const int q = quant_one(xv[j], s, z, qmax);
            if (qf) qf[t * k + i] = (float)q;
            if (q8) q8[t * k + i] = (uint8_t)q;
        }
    } else {
        float mx = 0.0f, mn = 0.0f;  // the range always contains 0
        for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
            const float v = xr[i];
            mx = ref_max(mx, v);
            mn = ref_min(mn, v);
        }
        for (int o = 16; o > 0; o >>= 1) {
            mx = ref_max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            mn = ref_min(mn, __shfl_xor_sync(0xffffffffu, mn, o));
        }
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        if (lane == 0) {
            red_mx[warp] = mx;
            red_mn[warp] = mn;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float a = 0.0f, b = 0.0f;
            for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
                a = ref_max(a, red_mx[w]);
                b = ref_min(b, red_mn[w]);
            }
            float s;
            int z;
            asym_params(a, b, bits, clip, &s, &z);
            s_sh = s;
            z_sh = z;
            scale[t] = s;
            zero[t] = z;
        }
        __syncthreads();
        const float s = s_sh;
        const int z = z_sh, qmax = (1 << bits) - 1;
        for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
            const int q = quant_one(xr[i], s, z, qmax);
            if (qf) qf[t * k + i] = (float)q;
            if (q8) q8[t * k + i] = (uint8_t)q;
        }
    }
}

__global__ void acc_add_kernel(const float* __restrict__ part, int64_t count, bool first, int32_t* __restrict__ acc) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const int32_t p = (int32_t)part[i];
    acc[i] = first ? p : acc[i] + p;
}

__global__ void epilogue_kernel(const float* __restrict__ acc_f, const int32_t* __restrict__ acc_i, int64_t count,
                                int m, const float* __restrict__ act_scale, const int32_t* __restrict__ act_zero,
                                const float* __restrict__ w_scale, const int32_t* __restrict__ w_rowsum,
                                const float* __restrict__ spec, const float* __restrict__ bias, float* __restrict__ y) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const int64_t t = i / m;
    const int j = (int)(i % m);
    const int32_t a = acc_i ? acc_i[i] : (int32_t)acc_f[i];
    float v = epi_base(act_scale[t], w_scale[j], a, act_zero[t], w_rowsum[j]);
    if (spec) v = __fadd_rn(v, spec[i]);
    if (bias) v = __fadd_rn(v, bias[j]);
    y[i] = v;
}

// One warp stores one (token, KV head) vector of hd elements: fake_quant_asym_ref (bits < 16) or a copy;
// around sh [hd] when given (kv_fake_quant_ref: subtract, fake-quantize, add back). dst may be null
// (packed cache only); codes / par (bits ≤ 4): the packed vector (KvPacked) of the same quantizer.
__device__ __forceinline__ void kv_store_vec(const float* __restrict__ src, float* __restrict__ dst, int hd, int bits,
                                             float clip, int lane, const float* __restrict__ sh = nullptr,
                                             uint8_t* __restrict__ codes = nullptr, float2* __restrict__ par = nullptr) {
    if (bits >= 16) {
        for (int i = lane; i < hd; i += 32) dst[i] = src[i];
        return;
    }
    const int qmax = (1 << bits) - 1;
    auto at = [&](int i) { return sh ? __fsub_rn(src[i], sh[i]) : src[i]; };
    float mx = 0.0f, mn = 0.0f;
    for (int i = lane; i < hd; i += 32) {
        mx = ref_max(mx, at(i));
        mn = ref_min(mn, at(i));
    }
    for (int o = 16; o > 0; o >>= 1) {
        mx = ref_max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        mn = ref_min(mn, __shfl_xor_sync(0xffffffffu, mn, o));
    }
    float s;
    int z;
    asym_params(mx, mn, bits, clip, &s, &z);
    // Warp-uniform trip count (base), so the whole warp is in the shuffle: element i + 1 of an
    // even i sits in lane + 1 of the same pass (32 is even).
    for (int base = 0; base < hd; base += 32) {
        const int i = base + lane;
        const int q = i < hd ? quant_one(at(i), s, z, qmax) : 0;
        if (dst && i < hd) {
            const float r = __fmul_rn((float)(q - z), s);
            dst[i] = sh ? __fadd_rn(r, sh[i]) : r;
        }
        if (codes) {
            const int qn = __shfl_down_sync(0xffffffffu, q, 1);
            if (!(lane & 1) && i < hd) codes[i >> 1] = (uint8_t)(q | (i + 1 < hd ? qn << 4 : 0));
        }
    }
    if (par && lane == 0) *par = make_float2(s, (float)z);
}

// One warp per (token, KV head) vector of hd elements: fake_quant_asym_ref on
// k and v (bits < 16; k around k_shift when given: kv_fake_quant_ref) or a
// copy, written to the cache from position *pos_dev on.
__global__ void kv_store_kernel(const float* __restrict__ k, const float* __restrict__ v, int64_t vectors,
                                int kv_heads, int hd, int bits, float clip, float* __restrict__ kc,
                                float* __restrict__ vc, const int* __restrict__ pos_dev,
                                const int* __restrict__ rows, const float* __restrict__ k_shift, KvPacked pk) {
    const int64_t vec = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (vec >= vectors) return;
    const int lane = threadIdx.x & 31;
    // rows: token t's cache row is rows[t] (batched decode); else pos (+ t).
    const int64_t base = rows ? (int64_t)rows[vec / kv_heads] * kv_heads + vec % kv_heads
                              : (pos_dev ? (int64_t)*pos_dev * kv_heads : 0) + vec;
    const int64_t pb = (int64_t)kv_packed_bytes(hd);
    kv_store_vec(k + vec * hd, kc ? kc + base * hd : nullptr, hd, bits, clip, lane,
                 k_shift ? k_shift + (vec % kv_heads) * hd : nullptr, pk.k ? pk.k + base * pb : nullptr,
                 pk.k ? pk.kp + base : nullptr);
    kv_store_vec(v + vec * hd, vc ? vc + base * hd : nullptr, hd, bits, clip, lane, nullptr,
                 pk.k ? pk.v + base * pb : nullptr, pk.k ? pk.vp + base : nullptr);
}

// Bench fills of the packed cache: random codes, scale 2/15 and zero 8 (values in [−1.07, 0.93]).
__global__ void kv_packed_fill_kernel(KvPacked p, int64_t vectors, int64_t bytes, uint64_t seed) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < bytes; i += (int64_t)gridDim.x * blockDim.x) {
        uint64_t h = (seed + (uint64_t)i) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
        h *= 0xBF58476D1CE4E5B9ull;
        h ^= h >> 32;
        p.k[i] = (uint8_t)h;
        p.v[i] = (uint8_t)(h >> 8);
        if (i < vectors) p.kp[i] = p.vp[i] = make_float2(2.0f / 15.0f, 8.0f);
    }
}

// One warp per (token, head) of the heads + kv_heads heads: query heads are rotated into
// q_out; KV heads rotate k into a per-warp shared row, then store it and v as kv_store_vec.
constexpr int kRopeKvWarps = 8;
__global__ void __launch_bounds__(kRopeKvWarps * 32) rope_kv_kernel(
    const float* __restrict__ q, int64_t ldq, const float* __restrict__ k, int64_t ldk, const float* __restrict__ v,
    int64_t ldv, int n, int heads, int kv_heads, int hd, int pos0, const int* __restrict__ pos_dev,
    const int* __restrict__ positions, const int* __restrict__ rows, const float* __restrict__ inv_freq, int bits,
    float clip, float* __restrict__ q_out, float* __restrict__ kc, float* __restrict__ vc,
    const float* __restrict__ k_shift, KvPacked pk) {
    extern __shared__ float rk[];  // [kRopeKvWarps][hd]
    pdl_trigger_then_wait();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nh = heads + kv_heads;
    const int64_t wv = (int64_t)blockIdx.x * kRopeKvWarps + warp;
    if (wv >= (int64_t)n * nh) return;
    const int t = (int)(wv / nh), h = (int)(wv % nh), half = hd / 2;
    const int p = positions ? positions[t] : pos0 + (pos_dev ? *pos_dev : 0) + t;
    const bool is_q = h < heads;
    const float* src = is_q ? q + t * ldq + (int64_t)h * hd : k + t * ldk + (int64_t)(h - heads) * hd;
    float* dst = is_q ? q_out + ((int64_t)t * heads + h) * hd : rk + warp * hd;
    for (int i = lane; i < half; i += 32) rope_pair(src[i], src[i + half], p, inv_freq[i], &dst[i], &dst[i + half]);
    if ((hd & 1) && lane == 0) dst[hd - 1] = src[hd - 1];  // odd hd: the last element is not rotated (rope())
    if (is_q) return;
    __syncwarp();
    const int j = h - heads;
    const int64_t row = rows ? rows[t] : (positions ? t : pos0 + (pos_dev ? *pos_dev : 0) + t);
    const int64_t vec = row * kv_heads + j, pb = (int64_t)kv_packed_bytes(hd);
    kv_store_vec(dst, kc ? kc + vec * hd : nullptr, hd, bits, clip, lane, k_shift ? k_shift + j * hd : nullptr,
                 pk.k ? pk.k + vec * pb : nullptr, pk.k ? pk.kp + vec : nullptr);
    kv_store_vec(v + t * ldv + (int64_t)j * hd, vc ? vc + vec * hd : nullptr, hd, bits, clip, lane, nullptr,
                 pk.k ? pk.v + vec * pb : nullptr, pk.k ? pk.vp + vec : nullptr);
}

unsigned blocks_for(int64_t count, int threads) { return (unsigned)((count + threads - 1) / threads); }

}  // namespace

void act_quant(const float* x, int n, int64_t k, int bits, float clip, float* qf, uint8_t* q8, float* scale,
               int32_t* zero, cudaStream_t s) {
    if (n <= 0) return;
    // Few rows (decode): one block per row is latency bound (a 4096-wide row is
    // 16 elements per thread at 256 threads, two passes); 1024 threads cut that 4×.
    // The result does not depend on the block size (max/min are order-free).
    const int threads = n < 64 && k >= 2048 ? 1024 : 256;
    auto kern = k > 16 * threads ? act_quant_kernel<0> : k <= 4 * threads ? act_quant_kernel<4> : act_quant_kernel<16>;
    launch_pdl("act_quant", kern, dim3((unsigned)n), dim3(threads), 0, s, x, k, bits, clip, qf, q8, scale, zero);
}

void acc_add_i32(const float* part, int64_t count, bool first, int32_t* acc, cudaStream_t s) {
    if (count <= 0) return;
    acc_add_kernel<<<blocks_for(count, 256), 256, 0, s>>>(part, count, first, acc);
    SQ_CUDA_LAUNCH("acc_add_i32");
}

void w4a4_epilogue(const float* acc_f, const int32_t* acc_i, int n, int m, const float* act_scale,
                   const int32_t* act_zero, const float* w_scale, const int32_t* w_rowsum, const float* spec,
                   const float* bias, float* y, cudaStream_t s) {
    const int64_t count = (int64_t)n * m;
    if (count <= 0) return;
    epilogue_kernel<<<blocks_for(count, 256), 256, 0, s>>>(acc_f, acc_i, count, m, act_scale, act_zero, w_scale,
                                                           w_rowsum, spec, bias, y);
    SQ_CUDA_LAUNCH("w4a4_epilogue");
}

namespace {
void check_kv_dest(const char* what, const float* kc, const float* vc, int bits, const KvPacked& pk) {
    SQ_CHECK(!pk || (bits <= 4 && pk.v && pk.kp && pk.vp), "CUDA ", what, ": a packed KV cache needs bits ≤ 4 (got ",
             bits, ") and all four of its arrays");
    SQ_CHECK((kc && vc) || (pk && !kc && !vc), "CUDA ", what, ": no KV cache to write (fp32 k/v, or packed alone)");
}
}  // namespace

void kv_store(const float* k, const float* v, int n, int kv_heads, int hd, int bits, float clip, float* kc,
              float* vc, const int* pos_dev, cudaStream_t s, const float* k_shift, const KvPacked& pk) {
    check_kv_dest("kv_store", kc, vc, bits, pk);
    const int64_t vectors = (int64_t)n * kv_heads;
    if (vectors <= 0) return;
    kv_store_kernel<<<blocks_for(vectors, 8), 256, 0, s>>>(k, v, vectors, kv_heads, hd, bits, clip, kc, vc, pos_dev,
                                                           nullptr, k_shift, pk);
    SQ_CUDA_LAUNCH("kv_store");
}

void kv_store_rows(const float* k, const float* v, int n, int kv_heads, int hd, int bits, float clip, float* kc,
                   float* vc, const int* rows, cudaStream_t s, const float* k_shift, const KvPacked& pk) {
    SQ_CHECK(rows, "CUDA kv_store_rows: no rows");
    check_kv_dest("kv_store_rows", kc, vc, bits, pk);
    const int64_t vectors = (int64_t)n * kv_heads;
    if (vectors <= 0) return;
    kv_store_kernel<<<blocks_for(vectors, 8), 256, 0, s>>>(k, v, vectors, kv_heads, hd, bits, clip, kc, vc, nullptr,
                                                           rows, k_shift, pk);
    SQ_CUDA_LAUNCH("kv_store_rows");
}

void kv_packed_fill_random(const KvPacked& p, int64_t vectors, int hd, uint64_t seed, cudaStream_t s) {
    SQ_CHECK(p && p.v && p.kp && p.vp, "CUDA kv_packed_fill_random: incomplete packed cache");
    const int64_t bytes = vectors * kv_packed_bytes(hd);
    if (bytes <= 0) return;
    kv_packed_fill_kernel<<<1024, 256, 0, s>>>(p, vectors, bytes, seed);
    SQ_CUDA_LAUNCH("kv_packed_fill_random");
}

void rope_kv_store(const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv, int n,
                   int heads, int kv_heads, int hd, int pos0, const int* pos_dev, const int* positions,
                   const int* rows, const float* inv_freq, int bits, float clip, float* q_out, float* kc, float* vc,
                   cudaStream_t s, const float* k_shift, const KvPacked& pk) {
    check_kv_dest("rope_kv_store", kc, vc, bits, pk);
    if (n <= 0) return;
    SQ_CHECK(hd >= 1 && hd <= 1024 && heads >= 0 && kv_heads >= 1, "CUDA rope_kv_store: heads ", heads, ", kv_heads ",
             kv_heads, ", head_dim ", hd);
    SQ_CHECK(ldq >= (int64_t)heads * hd && ldk >= (int64_t)kv_heads * hd && ldv >= (int64_t)kv_heads * hd,
             "CUDA rope_kv_store: row strides ", ldq, "/", ldk, "/", ldv, " narrower than the heads");
    SQ_CHECK(!rows || positions, "CUDA rope_kv_store: cache rows need positions");
    const int64_t vectors = (int64_t)n * (heads + kv_heads);
    const size_t smem = (size_t)kRopeKvWarps * hd * sizeof(float);
    launch_pdl("rope_kv_store", rope_kv_kernel, dim3(blocks_for(vectors, kRopeKvWarps)), dim3(kRopeKvWarps * 32), smem,
               s, q, ldq, k, ldk, v, ldv, n, heads, kv_heads, hd, pos0, pos_dev, positions, rows, inv_freq, bits, clip,
               q_out, kc, vc, k_shift, pk);
}

}  // namespace sq::cuda
