// SIMD kernels that quantize and dequantize one contiguous row of floats, and their scalar twins.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/range.hpp>

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__AVX__)
#include <immintrin.h>
#endif

MQ_NAMESPACE_BEGIN

// Numerics shared by every kernel here and its `*_ref` twin (they agree bit for bit):
//   quantize:   q  = clamp(round_half_even(x · inv_scale) + zero, qmin, qmax)
//   dequantize: x̂ = float(q − zero) · scale
// • Multiply by inv_scale, never divide: one multiply per element, and the same float op in the
//   SIMD kernel (vmulps) and in the reference (operator*), so both see the same product.
// • Rounding is round-half-to-even, the IEEE default mode: std::nearbyint in the reference,
//   vcvtps2dq in the AVX2 loop and vroundps(_MM_FROUND_TO_NEAREST_INT) in the portable loop.
//   Half-way products go to the even code (0.5 → 0, 1.5 → 2, −2.5 → −2), which avoids the bias
//   of round-half-away. (The process must run in the default rounding mode, as it does unless
//   someone calls fesetround.)
// • The zero point is added and the result clamped *in float*, then converted: the float is
//   already an integer inside [qmin, qmax], so the conversion is exact, and an input far outside
//   the range (static params, outliers) saturates to qmin/qmax instead of overflowing an int.
// • No multiply-add is formed anywhere (rounding sits between the multiply and the add), so
//   -ffp-contract cannot make the kernel and the reference differ.
// Inputs must be finite (setup code checks; the range kernels report it). Kernels never allocate
// or throw; they only MQ_ASSERT their preconditions.

// The value range of a row: lo = min x, hi = max x; `finite` is false when the row holds a NaN or
// an infinity (lo/hi are then meaningless).
struct RowRange {
    float lo = std::numeric_limits<float>::infinity();
    float hi = -std::numeric_limits<float>::infinity();
    bool finite = true;

    // The range of the union of two rows (for per-tensor ranges built row by row).
    constexpr RowRange merged(const RowRange& o) const noexcept {
        return {lo < o.lo ? lo : o.lo, hi > o.hi ? hi : o.hi, finite && o.finite};
    }
};

// Result of the fused dynamic kernel: the parameters it chose from the row's range, and whether
// the row was finite (when not, no code was written).
struct DynamicQuantResult {
    QuantParams params;
    RowRange range;
};

namespace detail {
template <class Arch>
inline constexpr bool is_avx2_arch_v = std::is_base_of_v<xsimd::avx2, Arch>;

// Codes of Range must be representable in Code: signed ranges in int8_t, unsigned in uint8_t.
template <class Range, class Code>
inline constexpr bool code_fits_v = std::is_same_v<Code, std::int8_t>
                                        ? (Range::min >= -128 && Range::max <= 127)
                                        : (std::is_same_v<Code, std::uint8_t> && Range::min >= 0 && Range::max <= 255);

// True in the lanes where a or b is NaN: one unordered compare on AVX (vcmpunordps) for two
// vectors, which keeps the range pass load-bound.
template <class Arch>
MQ_ALWAYS_INLINE xsimd::batch_bool<float, Arch> either_nan(const xsimd::batch<float, Arch>& a,
                                                          const xsimd::batch<float, Arch>& b) noexcept {
#if defined(__AVX__)
    if constexpr (std::is_base_of_v<xsimd::avx, Arch>)
        return xsimd::batch_bool<float, Arch>(_mm256_cmp_ps(a, b, _CMP_UNORD_Q));
    else
#endif
        return xsimd::isnan(a) || xsimd::isnan(b);
}

// The reference formula for one element (identical to quantize_value, spelled out here so the
// kernels' tails use exactly the same operations).
template <class Range>
MQ_ALWAYS_INLINE float quantize_scalar(float x, float inv_scale, float zero) noexcept {
    const float r = std::nearbyint(x * inv_scale) + zero;
    return std::min(std::max(r, static_cast<float>(Range::min)), static_cast<float>(Range::max));
}
} // namespace detail

// ---------------------------------------------------------------------------------------------
// Range: lo = min_i x_i, hi = max_i x_i, finite = no NaN/Inf.
// min/max are exact, so the reduction order does not change the result (up to the sign of a zero).

inline RowRange row_range_ref(const float* x, std::size_t n) noexcept {
    MQ_ASSERT(x != nullptr || n == 0, "row_range_ref: null input");
    RowRange r;
    for (std::size_t i = 0; i < n; ++i) {
        const float v = x[i];
        if (!std::isfinite(v)) r.finite = false;
        r.lo = std::min(r.lo, v);
        r.hi = std::max(r.hi, v);
    }
    if (!r.finite) r.lo = r.hi = std::numeric_limits<float>::quiet_NaN();
    return r;
}

#if MQ_HAS_AVX512VNNI_KERNELS
MQ_AVX512VNNI_BEGIN
namespace detail {
// The avx512vnni tag's per-token quantization: 16-lane min/max and 64 codes per step. Intrinsics
// in a target region (xsimd 8.1 has no AVX-512 batch in an AVX2 TU); min/max are exact and the
// codes are the same integer-domain formula as the AVX2 form, so both give the same bits. min/max,
// vcvtps2dq and vpermd in their all-lanes masked forms: the plain intrinsics pass an undefined
// vector on which g++ 12 warns -Wmaybe-uninitialized (GCC bug 105593).
template <class Arch>
MQ_ALWAYS_INLINE __m512 min16(__m512 a, __m512 b) noexcept { return _mm512_mask_min_ps(a, 0xFFFF, a, b); }
template <class Arch>
MQ_ALWAYS_INLINE __m512 max16(__m512 a, __m512 b) noexcept { return _mm512_mask_max_ps(a, 0xFFFF, a, b); }

// Horizontal min or max of 16 lanes in registers (exact: the order does not matter), halving the
// width with Op256 then Op128. Not _mm512_reduce_min_ps, whose undefined start vector g++ 12 flags
// -Wuninitialized.
template <auto Op256, auto Op128>
MQ_ALWAYS_INLINE float reduce16(__m512 v) noexcept {
    const __m256 m8 = Op256(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1));
    __m128 m4 = Op128(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
    m4 = Op128(m4, _mm_movehl_ps(m4, m4));
    return _mm_cvtss_f32(Op128(m4, _mm_movehdup_ps(m4)));
}
template <class Arch>
MQ_ALWAYS_INLINE float hmin16(__m512 v) noexcept {
    return reduce16<[](__m256 a, __m256 b) { return _mm256_min_ps(a, b); }, [](__m128 a, __m128 b) { return _mm_min_ps(a, b); }>(v);
}
template <class Arch>
MQ_ALWAYS_INLINE float hmax16(__m512 v) noexcept {
    return reduce16<[](__m256 a, __m256 b) { return _mm256_max_ps(a, b); }, [](__m128 a, __m128 b) { return _mm_max_ps(a, b); }>(v);
}

// Min/max of x[0, 64·⌊n/64⌋) into lo/hi and whether a NaN was seen; returns the count covered.
template <class Arch>
inline std::size_t row_range64(const float* x, std::size_t n, float& lo, float& hi, bool& nan) noexcept {
    const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity()), ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512 lo0 = inf, lo1 = inf, lo2 = inf, lo3 = inf, hi0 = ninf, hi1 = ninf, hi2 = ninf, hi3 = ninf;
    __mmask16 bad = 0;
    std::size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        const __m512 c = _mm512_loadu_ps(x + i + 32), d = _mm512_loadu_ps(x + i + 48);
        lo0 = min16<Arch>(lo0, a), hi0 = max16<Arch>(hi0, a);
        lo1 = min16<Arch>(lo1, b), hi1 = max16<Arch>(hi1, b);
        lo2 = min16<Arch>(lo2, c), hi2 = max16<Arch>(hi2, c);
        lo3 = min16<Arch>(lo3, d), hi3 = max16<Arch>(hi3, d);
        bad |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(c, d, _CMP_UNORD_Q);
    }
    lo = std::min(lo, hmin16<Arch>(min16<Arch>(min16<Arch>(lo0, lo1), min16<Arch>(lo2, lo3))));
    hi = std::max(hi, hmax16<Arch>(max16<Arch>(max16<Arch>(hi0, hi1), max16<Arch>(hi2, hi3))));
    nan = nan || bad != 0;
    return i;
}

// 64 floats → 64 codes of an 8-bit Range, in order: quantize32_in_range's arithmetic on 512 bits
// (vcvtps2dq rounds half to even; saturating packs clamp; packs work per 128-bit lane, so a
// dword permute restores the order).
template <class Arch>
MQ_ALWAYS_INLINE __m512i round16(const float* x, __m512 inv) noexcept {
    return _mm512_mask_cvtps_epi32(_mm512_setzero_si512(), 0xFFFF, _mm512_mul_ps(_mm512_loadu_ps(x), inv));
}
template <class Arch, class Range>
MQ_ALWAYS_INLINE __m512i quantize64_in_range(const float* x, __m512 inv, __m512i zero16) noexcept {
    const __m512i ab = _mm512_packs_epi32(round16<Arch>(x, inv), round16<Arch>(x + 16, inv));
    const __m512i cd = _mm512_packs_epi32(round16<Arch>(x + 32, inv), round16<Arch>(x + 48, inv));
    __m512i bytes;
    if constexpr (Range::min < 0)
        bytes = _mm512_max_epi8(_mm512_packs_epi16(ab, cd), _mm512_set1_epi8(static_cast<char>(Range::min)));
    else
        bytes = _mm512_packus_epi16(_mm512_adds_epi16(ab, zero16), _mm512_adds_epi16(cd, zero16));
    // Lane l holds dwords (a_l, b_l, c_l, d_l); output dword 4k + l comes from 4l + k.
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_mask_permutexvar_epi32(bytes, 0xFFFF, order, bytes);
}

template <class Arch, class Range, class Code>
inline std::size_t quantize_row_in_range64(const float* x, std::size_t n, const QuantParams& p, Code* q) noexcept {
    const __m512 inv = _mm512_set1_ps(p.inv_scale);
    const __m512i zero16 = _mm512_set1_epi16(static_cast<short>(p.zero));
    std::size_t i = 0;
    for (; i + 64 <= n; i += 64) _mm512_storeu_si512(q + i, quantize64_in_range<Arch, Range>(x + i, inv, zero16));
    return i;
}
} // namespace detail
MQ_AVX512VNNI_END
#endif // MQ_HAS_AVX512VNNI_KERNELS

template <class Arch>
inline RowRange row_range(Arch, const float* x, std::size_t n) noexcept {
    MQ_ASSERT(x != nullptr || n == 0, "row_range: null input");
#if MQ_HAS_AVX512VNNI_KERNELS
    if constexpr (is_avx512vnni_v<Arch>) {
        RowRange r;
        bool nan = false;
        const std::size_t i = detail::row_range64<Arch>(x, n, r.lo, r.hi, nan);
        if (i < n) { // the rest on AVX2
            const RowRange t = row_range(avx2{}, x + i, n - i);
            if (!t.finite) return t;
            r.lo = std::min(r.lo, t.lo);
            r.hi = std::max(r.hi, t.hi);
        }
        // As below: an empty row keeps lo = +inf, hi = -inf and is finite.
        if (nan || !(std::isfinite(r.lo) && std::isfinite(r.hi)))
            if (n != 0) r.finite = false, r.lo = r.hi = std::numeric_limits<float>::quiet_NaN();
        return r;
    }
#endif
    using B = xsimd::batch<float, Arch>;
    constexpr std::size_t W = B::size;
    constexpr float kInf = std::numeric_limits<float>::infinity();
    // Four independent accumulators hide the min/max latency; the loop is then load-bound.
    B lo0(kInf), lo1(kInf), lo2(kInf), lo3(kInf);
    B hi0(-kInf), hi1(-kInf), hi2(-kInf), hi3(-kInf);
    auto nan = xsimd::batch_bool<float, Arch>(false);
    std::size_t i = 0;
    for (; i + 4 * W <= n; i += 4 * W) {
        const B a = B::load_unaligned(x + i), b = B::load_unaligned(x + i + W);
        const B c = B::load_unaligned(x + i + 2 * W), d = B::load_unaligned(x + i + 3 * W);
        lo0 = xsimd::min(lo0, a), hi0 = xsimd::max(hi0, a);
        lo1 = xsimd::min(lo1, b), hi1 = xsimd::max(hi1, b);
        lo2 = xsimd::min(lo2, c), hi2 = xsimd::max(hi2, c);
        lo3 = xsimd::min(lo3, d), hi3 = xsimd::max(hi3, d);
        // min/max would silently drop a NaN, so flag it apart; ±Inf shows up in lo/hi. (isnan,
        // not x != x: xsimd 8.1's AVX != is the ordered compare, false for NaN.)
        nan = nan || detail::either_nan(a, b) || detail::either_nan(c, d);
    }
    for (; i + W <= n; i += W) {
        const B a = B::load_unaligned(x + i);
        lo0 = xsimd::min(lo0, a), hi0 = xsimd::max(hi0, a);
        nan = nan || xsimd::isnan(a);
    }
    lo0 = xsimd::min(xsimd::min(lo0, lo1), xsimd::min(lo2, lo3));
    hi0 = xsimd::max(xsimd::max(hi0, hi1), xsimd::max(hi2, hi3));
    alignas(64) float los[W], his[W];
    lo0.store_aligned(los);
    hi0.store_aligned(his);
    RowRange r;
    r.finite = !xsimd::any(nan);
    for (std::size_t k = 0; k < W; ++k) r.lo = std::min(r.lo, los[k]), r.hi = std::max(r.hi, his[k]);
    for (; i < n; ++i) {
        const float v = x[i];
        if (v != v) r.finite = false;
        r.lo = std::min(r.lo, v);
        r.hi = std::max(r.hi, v);
    }
    if (!(r.finite && std::isfinite(r.lo) && std::isfinite(r.hi))) {
        // An empty row keeps lo = +inf, hi = -inf but is finite (it holds no bad value).
        if (n != 0) r.finite = false, r.lo = r.hi = std::numeric_limits<float>::quiet_NaN();
    }
    return r;
}

// ---------------------------------------------------------------------------------------------
// Quantize with given params: q_i = clamp(round_half_even(x_i · inv_scale) + zero, qmin, qmax).

template <class Range, class Code>
inline void quantize_row_ref(const float* x, std::size_t n, const QuantParams& p, Code* q) noexcept {
    static_assert(detail::code_fits_v<Range, Code>, "quantize_row_ref: codes of Range do not fit Code");
    MQ_ASSERT((x != nullptr && q != nullptr) || n == 0, "quantize_row_ref: null pointer");
    const float zero = static_cast<float>(p.zero);
    for (std::size_t i = 0; i < n; ++i)
        q[i] = static_cast<Code>(static_cast<int>(detail::quantize_scalar<Range>(x[i], p.inv_scale, zero)));
}

template <class Range, class Arch, class Code>
inline void quantize_row(Arch, const float* x, std::size_t n, const QuantParams& p, Code* q) noexcept {
    static_assert(detail::code_fits_v<Range, Code>, "quantize_row: codes of Range do not fit Code");
    MQ_ASSERT((x != nullptr && q != nullptr) || n == 0, "quantize_row: null pointer");
    using B = xsimd::batch<float, Arch>;
    constexpr std::size_t W = B::size;
    const float zero = static_cast<float>(p.zero);
    const B vinv(p.inv_scale), vzero(zero);
    const B vmin(static_cast<float>(Range::min)), vmax(static_cast<float>(Range::max));
    // One element's arithmetic, the same ops as detail::quantize_scalar in the same order.
    auto code = [&](B v) { return xsimd::min(xsimd::max(xsimd::nearbyint(v * vinv) + vzero, vmin), vmax); };
    std::size_t i = 0;
#if defined(__AVX2__)
    if constexpr (detail::is_avx2_arch_v<Arch>) {
        // Integer-domain form of the same formula, fewer uops than round + float clamp:
        //   q = clamp(cvt(min(x·inv_scale, 2^30)) + zero, qmin, qmax)
        // vcvtps2dq rounds half to even (default MXCSR mode, as std::nearbyint in the reference)
        // and is exact below 2^31; the 2^30 cap sends huge positive products to qmax instead of
        // INT_MIN, huge negative ones become INT_MIN and clamp to qmin. Integer + zero equals the
        // reference's float + zero wherever the result is not clamped (|·| < 2^24). For
        // [0, 255] → uint8 the saturating packus already is the clamp.
        constexpr bool kPackClamps = std::is_same_v<Code, std::uint8_t> && Range::min == 0 && Range::max == 255;
        const __m256 cap = _mm256_set1_ps(1073741824.0f);
        const __m256i izero = _mm256_set1_epi32(p.zero);
        const __m256i qmin = _mm256_set1_epi32(Range::min), qmax = _mm256_set1_epi32(Range::max);
        auto icode = [&](const float* src) {
            const __m256 v = _mm256_min_ps(_mm256_mul_ps(_mm256_loadu_ps(src), vinv), cap);
            const __m256i c = _mm256_add_epi32(_mm256_cvtps_epi32(v), izero);
            if constexpr (kPackClamps)
                return c;
            else
                return _mm256_min_epi32(_mm256_max_epi32(c, qmin), qmax);
        };
        // 32 floats → 4 × int32x8 → saturating packs to 32 bytes. The packs work per 128-bit
        // lane, leaving dwords in the order (a0 b0 c0 d0 a1 b1 c1 d1); one permute restores it.
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (; i + 32 <= n; i += 32) {
            const __m256i a = icode(x + i), b = icode(x + i + 8), c = icode(x + i + 16), d = icode(x + i + 24);
            const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
            __m256i bytes;
            if constexpr (std::is_same_v<Code, std::int8_t>)
                bytes = _mm256_packs_epi16(ab, cd);
            else
                bytes = _mm256_packus_epi16(ab, cd);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), _mm256_permutevar8x32_epi32(bytes, order));
        }
    }
#endif
    // Portable vector loop: convert to int32 in registers, narrow through a small buffer.
    alignas(64) std::int32_t buf[W];
    for (; i + W <= n; i += W) {
        xsimd::batch_cast<std::int32_t>(code(B::load_unaligned(x + i))).store_aligned(buf);
        for (std::size_t k = 0; k < W; ++k) q[i + k] = static_cast<Code>(buf[k]);
    }
    for (; i < n; ++i) q[i] = static_cast<Code>(static_cast<int>(detail::quantize_scalar<Range>(x[i], p.inv_scale, zero)));
}

// ---------------------------------------------------------------------------------------------
// Quantize with params taken from the data's own range (dynamic per token or per tensor, 8-bit):
// then |x·inv_scale| ≤ 2^8, so the AVX2 form needs no cap, adds the zero point in int16 and
// clamps by saturating packs — fewer ops than quantize_row, same codes.

namespace detail {
#if defined(__AVX2__)
// 32 floats → the 32 codes of an 8-bit Range, in order (int8 bytes for a signed range, whose
// zero point is 0; uint8 for an unsigned one). vcvtps2dq rounds half to even, as std::nearbyint.
template <class Range>
MQ_ALWAYS_INLINE __m256i quantize32_in_range(const float* x, __m256 inv, __m256i zero16) noexcept {
    static_assert(Range::max - Range::min >= 254, "quantize32_in_range: 8-bit ranges only");
    auto rounded = [&](std::size_t i) { return _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv)); };
    const __m256i ab = _mm256_packs_epi32(rounded(0), rounded(8)), cd = _mm256_packs_epi32(rounded(16), rounded(24));
    __m256i bytes;
    if constexpr (Range::min < 0) // [-127, 127]: int8 saturation gives [-128, 127], then lift −128
        bytes = _mm256_max_epi8(_mm256_packs_epi16(ab, cd), _mm256_set1_epi8(static_cast<char>(Range::min)));
    else
        bytes = _mm256_packus_epi16(_mm256_adds_epi16(ab, zero16), _mm256_adds_epi16(cd, zero16));
    // The packs work per 128-bit lane: dwords come out a0 b0 c0 d0 a1 b1 c1 d1.
    return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
#endif
} // namespace detail

// q_i = clamp(round_half_even(x_i · inv_scale) + zero, qmin, qmax), bit for bit as quantize_row,
// for p = params_from_range<8, S>(lo, hi) with [lo, hi] ⊇ the values of x (a precondition).
template <class Range, class Arch, class Code>
inline void quantize_row_in_range(Arch, const float* x, std::size_t n, const QuantParams& p, Code* q) noexcept {
    static_assert(detail::code_fits_v<Range, Code>, "quantize_row_in_range: codes of Range do not fit Code");
    MQ_ASSERT(Range::min >= 0 || p.zero == 0, "quantize_row_in_range: a signed range has zero point 0");
    std::size_t i = 0;
#if MQ_HAS_AVX512VNNI_KERNELS
    if constexpr (is_avx512vnni_v<Arch>) i = detail::quantize_row_in_range64<Arch, Range>(x, n, p, q);
#endif
#if defined(__AVX2__)
    if constexpr (detail::is_avx2_arch_v<Arch>) {
        const __m256 inv = _mm256_set1_ps(p.inv_scale);
        const __m256i zero16 = _mm256_set1_epi16(static_cast<short>(p.zero));
        for (; i + 32 <= n; i += 32)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), detail::quantize32_in_range<Range>(x + i, inv, zero16));
    }
#endif
    if (i < n) quantize_row<Range>(Arch{}, x + i, n - i, p, q + i);
}

// ---------------------------------------------------------------------------------------------
// Dequantize: x̂_i = float(q_i − zero) · scale.

template <class Code>
inline void dequantize_row_ref(const Code* q, std::size_t n, const QuantParams& p, float* out) noexcept {
    MQ_ASSERT((q != nullptr && out != nullptr) || n == 0, "dequantize_row_ref: null pointer");
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(static_cast<std::int32_t>(q[i]) - p.zero) * p.scale;
}

template <class Arch, class Code>
inline void dequantize_row(Arch, const Code* q, std::size_t n, const QuantParams& p, float* out) noexcept {
    static_assert(std::is_same_v<Code, std::int8_t> || std::is_same_v<Code, std::uint8_t>,
                  "dequantize_row: codes are int8_t or uint8_t");
    MQ_ASSERT((q != nullptr && out != nullptr) || n == 0, "dequantize_row: null pointer");
    using B = xsimd::batch<float, Arch>;
    using I = xsimd::batch<std::int32_t, Arch>;
    constexpr std::size_t W = B::size;
    const B vscale(p.scale);
    const I vzero(p.zero);
    std::size_t i = 0;
#if defined(__AVX2__)
    if constexpr (detail::is_avx2_arch_v<Arch>) {
        auto widen = [](const Code* src) {
            const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src));
            if constexpr (std::is_same_v<Code, std::int8_t>)
                return I(_mm256_cvtepi8_epi32(b));
            else
                return I(_mm256_cvtepu8_epi32(b));
        };
        for (; i + 32 <= n; i += 32) {
            for (std::size_t k = 0; k < 32; k += 8)
                (xsimd::batch_cast<float>(widen(q + i + k) - vzero) * vscale).store_unaligned(out + i + k);
        }
        for (; i + 8 <= n; i += 8) (xsimd::batch_cast<float>(widen(q + i) - vzero) * vscale).store_unaligned(out + i);
    }
#endif
    alignas(64) std::int32_t buf[W];
    for (; i + W <= n; i += W) {
        for (std::size_t k = 0; k < W; ++k) buf[k] = q[i + k];
        (xsimd::batch_cast<float>(I::load_aligned(buf) - vzero) * vscale).store_unaligned(out + i);
    }
    for (; i < n; ++i) out[i] = static_cast<float>(static_cast<std::int32_t>(q[i]) - p.zero) * p.scale;
}

// ---------------------------------------------------------------------------------------------
// Fused dynamic quantization of one row: pass 1 finds [lo, hi] (the row is then hot in L1/L2),
// params = params_from_range<Bits, S>(lo, hi), pass 2 quantizes. When the row is not finite the
// params are left default and no code is written (the caller reports the position).

template <int Bits, class S, class Code>
inline DynamicQuantResult quantize_row_dynamic_ref(const float* x, std::size_t n, Code* q) noexcept {
    DynamicQuantResult r;
    r.range = row_range_ref(x, n);
    if (!r.range.finite || n == 0) return r;
    r.params = params_from_range<Bits, S>(r.range.lo, r.range.hi);
    quantize_row_ref<BitRange<Bits, S>>(x, n, r.params, q);
    return r;
}

template <int Bits, class S, class Arch, class Code>
inline DynamicQuantResult quantize_row_dynamic(Arch arch, const float* x, std::size_t n, Code* q) noexcept {
    DynamicQuantResult r;
    r.range = row_range(arch, x, n);
    if (!r.range.finite || n == 0) return r;
    r.params = params_from_range<Bits, S>(r.range.lo, r.range.hi);
    // 8 bits: the in-range form (the same codes, fewer ops; 64 at a time on AVX-512).
    if constexpr (Bits == 8 && detail::code_fits_v<BitRange<8, S>, Code>)
        quantize_row_in_range<BitRange<Bits, S>>(arch, x, n, r.params, q);
    else
        quantize_row<BitRange<Bits, S>>(arch, x, n, r.params, q);
    return r;
}

MQ_NAMESPACE_END
