// IEEE half and bfloat16 <-> float, scalar and exact (round to nearest even).
// Shared by the loaders, the packed formats and the reference kernels.
#pragma once
#include <cstdint>
#include <cstring>

namespace sq {

inline float fp32_from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t fp32_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f;
    const uint32_t man = h & 0x3ff;
    if (exp == 0) {
        if (man == 0) return fp32_from_bits(sign);
        // subnormal: value = man * 2^-24
        float f = (float)man * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    if (exp == 31) return fp32_from_bits(sign | 0x7f800000u | (man << 13));
    return fp32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

inline uint16_t fp32_to_fp16(float f) {
    const uint32_t x = fp32_to_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);  // rounds to inf
    if (ax < 0x38800000u) {                                    // subnormal or zero in half
        // value / 2^-24, round to nearest even
        const float v = fp32_from_bits(ax) * 16777216.0f;
        uint32_t m = (uint32_t)v;
        const float rem = v - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1))) ++m;
        return (uint16_t)(sign | m);
    }
    uint32_t r = ax + 0xfffu + ((ax >> 13) & 1);  // round to nearest even on bit 13
    r -= 112u << 23;
    return (uint16_t)(sign | (r >> 13));
}

inline float bf16_to_fp32(uint16_t b) { return fp32_from_bits((uint32_t)b << 16); }

inline uint16_t fp32_to_bf16(float f) {
    uint32_t x = fp32_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);  // quiet NaN
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

}  // namespace sq
