// int4 packed storage: two 4-bit codes per byte, in a fixed, documented nibble order.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/simd.hpp>

#include <xsimd/xsimd.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

MQ_NAMESPACE_BEGIN

// Nibble order (other code relies on it — GEMM kernels, export):
//   byte i = code[2i] in bits 0..3 (LOW nibble) | code[2i+1] in bits 4..7 (HIGH nibble)
// An odd count leaves the high nibble of the last byte zero. This is the order of ggml's Q4 and
// of most int4 GEMM kernels: the even element is reached with `b & 0xF`, the odd with `b >> 4`.
// Signed codes (int8_t, range [-8, 7]; symmetric 4-bit quantizers use [-7, 7]) are stored as
// two's-complement nibbles (-1 → 0xF) and sign-extended on unpacking; unsigned codes (uint8_t,
// [0, 15]) are stored as is. 4 bits per weight: a [rows × cols] tensor takes rows·⌈cols/2⌉ bytes
// when packed row by row (rows stay byte-aligned).

template <class Code>
inline constexpr bool is_int4_code_v = std::is_same_v<Code, std::int8_t> || std::is_same_v<Code, std::uint8_t>;

template <class Code>
inline constexpr int kInt4Min = std::is_same_v<Code, std::int8_t> ? -8 : 0;
template <class Code>
inline constexpr int kInt4Max = std::is_same_v<Code, std::int8_t> ? 7 : 15;

// Bytes that n packed codes take.
constexpr std::size_t int4_packed_size(std::size_t n) noexcept { return (n + 1) / 2; }

// Code of nibble `nib` (0..15): sign-extended for signed codes.
template <class Code>
constexpr Code int4_from_nibble(unsigned nib) noexcept {
    if constexpr (std::is_same_v<Code, std::int8_t>)
        return static_cast<Code>(static_cast<int>(nib & 0xFu) - ((nib & 0x8u) ? 16 : 0));
    else
        return static_cast<Code>(nib & 0xFu);
}

// Kernel: packed[i] = (c[2i] & 0xF) | (c[2i+1] & 0xF) << 4. Codes must lie in the int4 range.
template <class Code>
inline void pack_int4_row(const Code* codes, std::size_t n, std::uint8_t* packed) noexcept {
    static_assert(is_int4_code_v<Code>, "pack_int4_row: codes are int8_t or uint8_t");
    MQ_ASSERT((codes != nullptr && packed != nullptr) || n == 0, "pack_int4_row: null pointer");
    std::size_t i = 0;
    for (; i + 1 < n; i += 2) {
        const unsigned lo = static_cast<unsigned>(codes[i]) & 0xFu;
        const unsigned hi = static_cast<unsigned>(codes[i + 1]) & 0xFu;
        packed[i / 2] = static_cast<std::uint8_t>(lo | (hi << 4));
    }
    if (i < n) packed[i / 2] = static_cast<std::uint8_t>(static_cast<unsigned>(codes[i]) & 0xFu);
}

// Scalar reference unpack: out[2i] = low nibble of packed[i], out[2i+1] = high nibble.
template <class Code>
inline void unpack_int4_row_ref(const std::uint8_t* packed, std::size_t n, Code* out) noexcept {
    static_assert(is_int4_code_v<Code>, "unpack_int4_row_ref: codes are int8_t or uint8_t");
    MQ_ASSERT((packed != nullptr && out != nullptr) || n == 0, "unpack_int4_row_ref: null pointer");
    for (std::size_t i = 0; i < n; ++i) {
        const unsigned byte = packed[i / 2];
        out[i] = int4_from_nibble<Code>((i % 2 == 0) ? byte : (byte >> 4));
    }
}

// SIMD unpack (AVX2: 16 bytes → 32 codes per step; other archs use the reference loop).
// Signed nibbles are sign-extended with (v ^ 8) − 8, which maps 0..7 → 0..7 and 8..15 → −8..−1.
template <class Arch, class Code>
inline void unpack_int4_row(Arch, const std::uint8_t* packed, std::size_t n, Code* out) noexcept {
    static_assert(is_int4_code_v<Code>, "unpack_int4_row: codes are int8_t or uint8_t");
    MQ_ASSERT((packed != nullptr && out != nullptr) || n == 0, "unpack_int4_row: null pointer");
    std::size_t i = 0;
#if defined(__AVX2__)
    if constexpr (std::is_base_of_v<xsimd::avx2, Arch>) {
        const __m128i mask = _mm_set1_epi8(0x0F);
        const __m128i eight = _mm_set1_epi8(8);
        for (; i + 32 <= n; i += 32) {
            const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + i / 2));
            __m128i lo = _mm_and_si128(b, mask);
            __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
            if constexpr (std::is_same_v<Code, std::int8_t>) {
                lo = _mm_sub_epi8(_mm_xor_si128(lo, eight), eight);
                hi = _mm_sub_epi8(_mm_xor_si128(hi, eight), eight);
            }
            // Interleave: (lo0 hi0 lo1 hi1 ...) is element order 0, 1, 2, 3, ...
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_unpacklo_epi8(lo, hi));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i + 16), _mm_unpackhi_epi8(lo, hi));
        }
    }
#endif
    unpack_int4_row_ref(packed + i / 2, n - i, out + i);
}

// Setup: packs `codes` into `packed` (exactly int4_packed_size(codes.size()) bytes), checking
// that every code fits 4 bits.
template <class Code>
inline void pack_int4(std::span<const Code> codes, std::span<std::uint8_t> packed, const char* name = "codes") {
    static_assert(is_int4_code_v<Code>, "pack_int4: codes are int8_t or uint8_t");
    require(packed.size() == int4_packed_size(codes.size()), "pack_int4: '", name, "' has ", codes.size(),
            " codes, so the packed buffer must have ", int4_packed_size(codes.size()), " bytes, got ",
            packed.size());
    for (std::size_t i = 0; i < codes.size(); ++i) {
        const int c = codes[i];
        require(c >= kInt4Min<Code> && c <= kInt4Max<Code>, "pack_int4: '", name, "'[", i, "] = ", c,
                " does not fit 4 bits (expected [", kInt4Min<Code>, ", ", kInt4Max<Code>, "])");
    }
    pack_int4_row(codes.data(), codes.size(), packed.data());
}

// Setup: unpacks `out.size()` codes from `packed` (which must hold int4_packed_size(out.size())).
template <class Code>
inline void unpack_int4(std::span<const std::uint8_t> packed, std::span<Code> out, const char* name = "packed") {
    static_assert(is_int4_code_v<Code>, "unpack_int4: codes are int8_t or uint8_t");
    require(packed.size() == int4_packed_size(out.size()), "unpack_int4: '", name, "' must have ",
            int4_packed_size(out.size()), " bytes for ", out.size(), " codes, got ", packed.size());
    unpack_int4_row(default_arch{}, packed.data(), out.size(), out.data());
}

MQ_NAMESPACE_END
