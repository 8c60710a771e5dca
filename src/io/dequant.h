// Scalar dequantizers: GGML tensor types (as stored in GGUF) and the float
// types of safetensors -> float32. These are the reference; they run once at
// load time, so clarity beats speed (a 135M model dequantizes in < 1 s).
//
// Test: build/specquant_tests --gtest_filter='Dequant*'
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace sq {

// GGML type ids as written in GGUF tensor infos (ggml.h's enum ggml_type).
// Only the ones we can dequantize are named; others are rejected by id.
enum GgmlType : uint32_t {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_Q4_K = 12,
    GGML_TYPE_Q5_K = 13,
    GGML_TYPE_Q6_K = 14,
    GGML_TYPE_BF16 = 30,
};

struct GgmlTypeInfo {
    const char* name;    // "Q4_K"
    int block_elems;     // weights per block (1 for float types)
    int block_bytes;     // bytes per block
};

// Traits of a supported type, or nullptr for ids we cannot read.
const GgmlTypeInfo* ggml_type_info(uint32_t type);

// Name of any ggml type id ("Q4_K", "IQ2_XS", ... or "type#99"), for errors.
std::string ggml_type_name(uint32_t type);

// Dequantizes n consecutive weights (n a multiple of the type's block size)
// from src (n / block_elems blocks) into dst[n]. Throws sq::Error for an
// unsupported type or a bad n.
void dequantize(uint32_t type, const void* src, float* dst, int64_t n);

// One-type entry points (n a multiple of the block size).
void dequantize_f32(const void* src, float* dst, int64_t n);
void dequantize_f16(const void* src, float* dst, int64_t n);
void dequantize_bf16(const void* src, float* dst, int64_t n);
void dequantize_q8_0(const void* src, float* dst, int64_t n);
void dequantize_q4_0(const void* src, float* dst, int64_t n);
void dequantize_q4_1(const void* src, float* dst, int64_t n);
void dequantize_q4_k(const void* src, float* dst, int64_t n);
void dequantize_q5_k(const void* src, float* dst, int64_t n);
void dequantize_q6_k(const void* src, float* dst, int64_t n);

}  // namespace sq
