// Scalar dequantizers, written from the block layouts documented in
// io/gguf_blocks.h. Each block is memcpy'd to a local struct first: GGUF
// only guarantees general.alignment for a tensor's start, and a 34-byte Q8_0
// block puts every other fp16 scale at an odd address when alignment is 1.
#include "io/dequant.h"

#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "io/gguf_blocks.h"

namespace sq {

namespace {

const GgmlTypeInfo k_f32{"F32", 1, 4};
const GgmlTypeInfo k_f16{"F16", 1, 2};
const GgmlTypeInfo k_bf16{"BF16", 1, 2};
const GgmlTypeInfo k_q8_0{"Q8_0", QK8_0, (int)sizeof(block_q8_0)};
const GgmlTypeInfo k_q4_0{"Q4_0", QK4_0, (int)sizeof(block_q4_0)};
const GgmlTypeInfo k_q4_1{"Q4_1", QK4_1, (int)sizeof(block_q4_1)};
const GgmlTypeInfo k_q4_k{"Q4_K", QK_K, (int)sizeof(block_q4_K)};
const GgmlTypeInfo k_q5_k{"Q5_K", QK_K, (int)sizeof(block_q5_K)};
const GgmlTypeInfo k_q6_k{"Q6_K", QK_K, (int)sizeof(block_q6_K)};

template <class Block>
Block block_at(const void* src, int64_t i) {
    Block b;
    std::memcpy(&b, static_cast<const uint8_t*>(src) + i * (int64_t)sizeof(Block), sizeof(Block));
    return b;
}

void check_multiple(int64_t n, int qk, const char* type) {
    SQ_CHECK(n >= 0 && n % qk == 0, "dequantize ", type, ": ", n, " weights is not a multiple of the block size ", qk);
}

}  // namespace

const GgmlTypeInfo* ggml_type_info(uint32_t type) {
    switch (type) {
        case GGML_TYPE_F32: return &k_f32;
        case GGML_TYPE_F16: return &k_f16;
        case GGML_TYPE_BF16: return &k_bf16;
        case GGML_TYPE_Q8_0: return &k_q8_0;
        case GGML_TYPE_Q4_0: return &k_q4_0;
        case GGML_TYPE_Q4_1: return &k_q4_1;
        case GGML_TYPE_Q4_K: return &k_q4_k;
        case GGML_TYPE_Q5_K: return &k_q5_k;
        case GGML_TYPE_Q6_K: return &k_q6_k;
        default: return nullptr;
    }
}

std::string ggml_type_name(uint32_t type) {
    // ggml.h's numbering; gaps are ids ggml has retired.
    static const char* names[] = {
        "F32",     "F16",    "Q4_0",   "Q4_1",  "Q4_2",   "Q4_3",   "Q5_0",   "Q5_1",   "Q8_0",    "Q8_1",
        "Q2_K",    "Q3_K",   "Q4_K",   "Q5_K",  "Q6_K",   "Q8_K",   "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
        "IQ4_NL",  "IQ3_S",  "IQ2_S",  "IQ4_XS", "I8",    "I16",    "I32",    "I64",    "F64",     "IQ1_M",
        "BF16",    "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8",
        "IQ4_NL_8_8", "MXFP4",
    };
    if (type < sizeof(names) / sizeof(names[0])) return names[type];
    return str("type#", type);
}

void dequantize_f32(const void* src, float* dst, int64_t n) {
    if (n > 0) std::memcpy(dst, src, (size_t)n * 4);  // empty tensors may have null pointers
}

void dequantize_f16(const void* src, float* dst, int64_t n) {
    const uint8_t* p = static_cast<const uint8_t*>(src);
    for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = fp16_to_fp32(h);
    }
}

void dequantize_bf16(const void* src, float* dst, int64_t n) {
    const uint8_t* p = static_cast<const uint8_t*>(src);
    for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = bf16_to_fp32(h);
    }
}

void dequantize_q8_0(const void* src, float* dst, int64_t n) {
    check_multiple(n, QK8_0, "Q8_0");
    for (int64_t b = 0; b < n / QK8_0; ++b) {
        const auto blk = block_at<block_q8_0>(src, b);
        const float d = fp16_to_fp32(blk.d);
        float* y = dst + b * QK8_0;
        for (int i = 0; i < QK8_0; ++i) y[i] = d * (float)blk.qs[i];
    }
}

void dequantize_q4_0(const void* src, float* dst, int64_t n) {
    check_multiple(n, QK4_0, "Q4_0");
    for (int64_t b = 0; b < n / QK4_0; ++b) {
        const auto blk = block_at<block_q4_0>(src, b);
        const float d = fp16_to_fp32(blk.d);
        float* y = dst + b * QK4_0;
        for (int j = 0; j < QK4_0 / 2; ++j) {
            y[j] = d * (float)((blk.qs[j] & 0x0f) - 8);
            y[j + QK4_0 / 2] = d * (float)((blk.qs[j] >> 4) - 8);
        }
    }
}

void dequantize_q4_1(const void* src, float* dst, int64_t n) {
    check_multiple(n, QK4_1, "Q4_1");
    for (int64_t b = 0; b < n / QK4_1; ++b) {
        const auto blk = block_at<block_q4_1>(src, b);
        const float d = fp16_to_fp32(blk.d);
        const float m = fp16_to_fp32(blk.m);
        float* y = dst + b * QK4_1;
        for (int j = 0; j < QK4_1 / 2; ++j) {
            y[j] = d * (float)(blk.qs[j] & 0x0f) + m;
            y[j + QK4_1 / 2] = d * (float)(blk.qs[j] >> 4) + m;
        }
    }
}

void dequantize_q4_k(const void* src, float* dst, int64_t n) {
    check_multiple(n, QK_K, "Q4_K");
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const auto blk = block_at<block_q4_K>(src, b);
        const float d = fp16_to_fp32(blk.d);
        const float dmin = fp16_to_fp32(blk.dmin);
        float* y = dst + b * QK_K;
        for (int c = 0; c < 4; ++c) {  // 4 chunks of 64 weights = 2 sub-blocks
            uint8_t sc0, m0, sc1, m1;
            get_scale_min_k4(2 * c, blk.scales, &sc0, &m0);
            get_scale_min_k4(2 * c + 1, blk.scales, &sc1, &m1);
            const float d0 = d * sc0, o0 = dmin * m0;
            const float d1 = d * sc1, o1 = dmin * m1;
            const uint8_t* q = blk.qs + 32 * c;
            for (int l = 0; l < 32; ++l) {
                y[64 * c + l] = d0 * (float)(q[l] & 0x0f) - o0;
                y[64 * c + 32 + l] = d1 * (float)(q[l] >> 4) - o1;
            }
        }
    }
}

void dequantize_q5_k(const void* src, float* dst, int64_t n) {
    check_multiple(n, QK_K, "Q5_K");
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const auto blk = block_at<block_q5_K>(src, b);
        const float d = fp16_to_fp32(blk.d);
        const float dmin = fp16_to_fp32(blk.dmin);
        float* y = dst + b * QK_K;
        for (int c = 0; c < 4; ++c) {
            uint8_t sc0, m0, sc1, m1;
            get_scale_min_k4(2 * c, blk.scales, &sc0, &m0);
            get_scale_min_k4(2 * c + 1, blk.scales, &sc1, &m1);
            const float d0 = d * sc0, o0 = dmin * m0;
            const float d1 = d * sc1, o1 = dmin * m1;
            const uint8_t* q = blk.qs + 32 * c;
            for (int l = 0; l < 32; ++l) {
                const int h0 = (blk.qh[l] >> (2 * c)) & 1;
                const int h1 = (blk.qh[l] >> (2 * c + 1)) & 1;
                y[64 * c + l] = d0 * (float)((q[l] & 0x0f) + 16 * h0) - o0;
                y[64 * c + 32 + l] = d1 * (float)((q[l] >> 4) + 16 * h1) - o1;
            }
        }
    }
}

void dequantize_q6_k(const void* src, float* dst, int64_t n) {
    check_multiple(n, QK_K, "Q6_K");
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const auto blk = block_at<block_q6_K>(src, b);
        const float d = fp16_to_fp32(blk.d);
        for (int h = 0; h < 2; ++h) {  // two halves of 128 weights
            const uint8_t* ql = blk.ql + 64 * h;
            const uint8_t* qh = blk.qh + 32 * h;
            const int8_t* sc = blk.scales + 8 * h;
            float* y = dst + b * QK_K + 128 * h;
            for (int l = 0; l < 32; ++l) {
                const int s = l / 16;  // 16-weight sub-blocks: scales s, s+2, s+4, s+6
                const int q0 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q1 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[s] * (float)q0;
                y[l + 32] = d * (float)sc[s + 2] * (float)q1;
                y[l + 64] = d * (float)sc[s + 4] * (float)q2;
                y[l + 96] = d * (float)sc[s + 6] * (float)q3;
            }
        }
    }
}

void dequantize(uint32_t type, const void* src, float* dst, int64_t n) {
    switch (type) {
        case GGML_TYPE_F32: return dequantize_f32(src, dst, n);
        case GGML_TYPE_F16: return dequantize_f16(src, dst, n);
        case GGML_TYPE_BF16: return dequantize_bf16(src, dst, n);
        case GGML_TYPE_Q8_0: return dequantize_q8_0(src, dst, n);
        case GGML_TYPE_Q4_0: return dequantize_q4_0(src, dst, n);
        case GGML_TYPE_Q4_1: return dequantize_q4_1(src, dst, n);
        case GGML_TYPE_Q4_K: return dequantize_q4_k(src, dst, n);
        case GGML_TYPE_Q5_K: return dequantize_q5_k(src, dst, n);
        case GGML_TYPE_Q6_K: return dequantize_q6_k(src, dst, n);
        default: fail("dequantize: unsupported ggml type ", ggml_type_name(type));
    }
}

}  // namespace sq
