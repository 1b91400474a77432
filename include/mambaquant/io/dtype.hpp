// Element types of a checkpoint file and their conversion to float (F16/BF16 decoded exactly).
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

MQ_NAMESPACE_BEGIN

// The safetensors dtypes we read. F32/F16/BF16 (and F64) load as float; I8/U8 carry our own
// quantized codes; the wider integers only appear as metadata-like tensors (token ids).
enum class DType : std::uint8_t { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

constexpr std::string_view dtype_name(DType t) noexcept {
    switch (t) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
    }
    return "?";
}

constexpr std::size_t dtype_size(DType t) noexcept {
    switch (t) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    case DType::I8: case DType::U8: case DType::BOOL: return 1;
    }
    return 0;
}

// False for a name safetensors defines but we do not read (F8_*, U16, U32, U64, ...) or garbage.
constexpr bool parse_dtype(std::string_view s, DType& out) noexcept {
    constexpr DType all[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64,
                             DType::I32, DType::I16, DType::I8,  DType::U8,   DType::BOOL};
    for (DType t : all)
        if (dtype_name(t) == s) {
            out = t;
            return true;
        }
    return false;
}

constexpr bool dtype_is_float(DType t) noexcept {
    return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

// IEEE binary16 → binary32, exact for every input (subnormals, ±inf, NaN payload kept).
constexpr float half_to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    std::uint32_t exp = (h >> 10) & 0x1fu;
    std::uint32_t mant = h & 0x3ffu;
    std::uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (mant << 13); // rebias 15 → 127
    } else if (mant == 0) {
        bits = sign;
    } else {
        // Subnormal: value = mant·2^-24; normalize the mantissa into the float's implicit bit.
        exp = 113;
        while ((mant & 0x400u) == 0) {
            mant <<= 1;
            --exp;
        }
        bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
    return std::bit_cast<float>(bits);
}

// binary32 → binary16, round to nearest even, overflow to ±inf (the writer's F16 export).
constexpr std::uint16_t float_to_half(float f) noexcept {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
    const std::uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) // inf or NaN (NaN keeps a quiet bit)
        return static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
    if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u); // rounds past 65504
    if (abs < 0x38800000u) {                                                     // subnormal half
        // q = round_half_even(f / 2^-24) = round(m · 2^(e − 126)) with m the 24-bit mantissa.
        const std::uint32_t shift = 126u - (abs >> 23);
        if (shift > 24) return sign; // below 2^-25: rounds to ±0
        const std::uint32_t m = (abs & 0x7fffffu) | 0x800000u;
        std::uint32_t q = m >> shift;
        const std::uint32_t rem = m & ((1u << shift) - 1u);
        const std::uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) ++q;
        return static_cast<std::uint16_t>(sign | q);
    }
    std::uint32_t r = abs - 0x38000000u; // rebias 127 → 15 (exponent field minus 112)
    const std::uint32_t lsb = (r >> 13) & 1u;
    r += 0xfffu + lsb; // round half to even on the 13 dropped bits
    return static_cast<std::uint16_t>(sign | (r >> 13));
}

// bfloat16 is the top half of a binary32.
constexpr float bf16_to_float(std::uint16_t b) noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}
constexpr std::uint16_t float_to_bf16(float f) noexcept {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u); // NaN
    return static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// Decodes `count` little-endian elements of type `t` from `src` into floats. The source is raw
// file bytes (maybe unaligned inside a mapped file), so every element goes through memcpy.
template <class = void>
void convert_to_float(DType t, const std::byte* src, float* dst, std::size_t count) {
    static_assert(std::endian::native == std::endian::little, "mambaquant io assumes a little-endian host");
    switch (t) {
    case DType::F32: std::memcpy(dst, src, count * 4); return;
    case DType::F64:
        for (std::size_t i = 0; i < count; ++i) {
            double v;
            std::memcpy(&v, src + 8 * i, 8);
            dst[i] = static_cast<float>(v);
        }
        return;
    case DType::F16:
    case DType::BF16:
        for (std::size_t i = 0; i < count; ++i) {
            std::uint16_t v;
            std::memcpy(&v, src + 2 * i, 2);
            dst[i] = t == DType::F16 ? half_to_float(v) : bf16_to_float(v);
        }
        return;
    case DType::I8:
        for (std::size_t i = 0; i < count; ++i) dst[i] = static_cast<float>(static_cast<std::int8_t>(src[i]));
        return;
    case DType::U8:
    case DType::BOOL:
        for (std::size_t i = 0; i < count; ++i) dst[i] = static_cast<float>(static_cast<std::uint8_t>(src[i]));
        return;
    case DType::I16:
    case DType::I32:
    case DType::I64:
        for (std::size_t i = 0; i < count; ++i) {
            std::int64_t v = 0;
            if (t == DType::I16) {
                std::int16_t w;
                std::memcpy(&w, src + 2 * i, 2);
                v = w;
            } else if (t == DType::I32) {
                std::int32_t w;
                std::memcpy(&w, src + 4 * i, 4);
                v = w;
            } else {
                std::memcpy(&v, src + 8 * i, 8);
            }
            dst[i] = static_cast<float>(v);
        }
        return;
    }
}

MQ_NAMESPACE_END
