// A fast vectorized exp for the scan's decay exp(Δ·A) and the gates, with its scalar twin.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>

MQ_NAMESPACE_BEGIN

// Cephes expf by range reduction (as in Cephes `expf.c` and the "avx_mathfun" ports):
//   x = k·ln2 + r,  k = round(x·log2 e),  |r| ≤ ln2/2,  r = x − k·ln2_hi − k·ln2_lo (Cody–Waite)
//   e^r ≈ 1 + r + r²·P(r),  P a degree-5 minimax polynomial
//   e^x = 2^k · e^r,  2^k built directly in the exponent bits.
// The input is clamped to [kExpMin, kExpMax] so that 2^k stays a normal float: below kExpMin
// the result is e^-87.6 ≈ 9e-39 instead of a smaller subnormal or 0 (an absolute error
// < FLT_MIN, irrelevant for a decay factor); above kExpMax it is e^88 ≈ 1.65e38 instead of
// +inf. NaN inputs give unspecified values, so callers validate inputs at the API boundary.
// Error bound (tested in test_exp.cpp against double exp over ~2M points): relative error
// ≤ kExpMaxRelError = 1.5e-7 wherever e^x ≥ FLT_MIN (x ∈ [-87.33, 88]); measured 1.18e-7,
// about 1 ulp. Where e^x < FLT_MIN the result is subnormal (or the clamp's 9e-39) and its
// absolute error is < FLT_MIN.
inline constexpr float kExpMin = -87.6f;               // round(kExpMin·log2 e) = −126: 2^k is normal
inline constexpr float kExpMax = 88.0f;               // round(88·log2 e) = 127: 2^k stays finite
inline constexpr float kExpMaxRelError = 1.5e-7f;

inline constexpr float kLog2e = 1.44269504088896341f;

namespace detail {
inline constexpr float kLn2Hi = 0.693359375f;         // exact in 9 bits: k·ln2_hi is exact
inline constexpr float kLn2Lo = -2.12194440e-4f;
inline constexpr float kExpP0 = 1.9875691500e-4f;
inline constexpr float kExpP1 = 1.3981999507e-3f;
inline constexpr float kExpP2 = 8.3334519073e-3f;
inline constexpr float kExpP3 = 4.1665795894e-2f;
inline constexpr float kExpP4 = 1.6666665459e-1f;
inline constexpr float kExpP5 = 5.0000001201e-1f;
} // namespace detail

// e^x for 8 (AVX2) or 4 (SSE) lanes; every step is one IEEE operation so exp_approx_ref below
// reproduces it bit for bit.
template <class Arch>
MQ_ALWAYS_INLINE xsimd::batch<float, Arch> exp_approx(xsimd::batch<float, Arch> x) noexcept {
    using B = xsimd::batch<float, Arch>;
    using I = xsimd::batch<std::int32_t, Arch>;
    x = xsimd::min(xsimd::max(x, B(kExpMin)), B(kExpMax));
    const B k = xsimd::nearbyint(x * B(kLog2e));
    B r = xsimd::fnma(k, B(detail::kLn2Hi), x); // r = x − k·ln2_hi
    r = xsimd::fnma(k, B(detail::kLn2Lo), r);   // r −= k·ln2_lo
    B p = B(detail::kExpP0);
    p = xsimd::fma(p, r, B(detail::kExpP1));
    p = xsimd::fma(p, r, B(detail::kExpP2));
    p = xsimd::fma(p, r, B(detail::kExpP3));
    p = xsimd::fma(p, r, B(detail::kExpP4));
    p = xsimd::fma(p, r, B(detail::kExpP5));
    const B r2 = r * r;
    p = xsimd::fma(p, r2, r + B(1.0f)); // 1 + r + r²·P(r)
    // 2^k: k ∈ [-126, 127] after the clamp, so (k + 127) << 23 is a normal exponent field.
    const I bits = (xsimd::to_int(k) + I(127)) << 23;
    return p * xsimd::bitwise_cast<B>(bits);
}

// Scalar twin of exp_approx: the same operations in the same order (std::fma), bit-identical.
inline float exp_approx_ref(float x) noexcept {
    x = std::fmin(std::fmax(x, kExpMin), kExpMax);
    const float k = std::nearbyint(x * kLog2e);
    float r = std::fma(-k, detail::kLn2Hi, x);
    r = std::fma(-k, detail::kLn2Lo, r);
    float p = detail::kExpP0;
    p = std::fma(p, r, detail::kExpP1);
    p = std::fma(p, r, detail::kExpP2);
    p = std::fma(p, r, detail::kExpP3);
    p = std::fma(p, r, detail::kExpP4);
    p = std::fma(p, r, detail::kExpP5);
    const float r2 = r * r;
    p = std::fma(p, r2, r + 1.0f);
    const std::int32_t bits = (static_cast<std::int32_t>(k) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

// 2^x, the scan's decay in base 2: exp(Δ·A) = 2^(Δ·A·log2 e) with A·log2 e folded once per
// channel block, which saves the Cody–Waite reduction (f = x − round(x) is exact):
//   k = round(x) via the "magic number" M = 1.5·2^23 + 127: x + M rounds x to an integer and
//       leaves k + 127 in the low mantissa bits, so bits(x + M) << 23 is the float 2^k.
//   2^f ≈ 1 + f·P(f), |f| ≤ 1/2, P of degree 5 (Cephes exp2f coefficients; a minimax fit
//   reproduces them to float precision, fit error 2e-9).
// The input is clamped to [-126, 127] (2^k normal). Relative error ≤ kExp2MaxRelError = 1.5e-7
// against double exp2 over the whole range (tested in test_exp.cpp). 12 vector ops where
// exp_approx takes 19.
inline constexpr float kExp2Min = -126.0f;
inline constexpr float kExp2Max = 127.0f;
inline constexpr float kExp2MaxRelError = 1.5e-7f;

namespace detail {
inline constexpr float kExp2Magic = 12583039.0f; // 1.5·2^23 + 127
inline constexpr float kExp2P0 = 1.535336188319500e-4f;
inline constexpr float kExp2P1 = 1.339887440266574e-3f;
inline constexpr float kExp2P2 = 9.618437357674640e-3f;
inline constexpr float kExp2P3 = 5.550332471162809e-2f;
inline constexpr float kExp2P4 = 2.402264791363012e-1f;
inline constexpr float kExp2P5 = 6.931472028550421e-1f;
} // namespace detail

template <class Arch>
MQ_ALWAYS_INLINE xsimd::batch<float, Arch> exp2_approx(xsimd::batch<float, Arch> x) noexcept {
    using B = xsimd::batch<float, Arch>;
    using I = xsimd::batch<std::int32_t, Arch>;
    x = xsimd::min(xsimd::max(x, B(kExp2Min)), B(kExp2Max));
    const B km = x + B(detail::kExp2Magic);
    const B f = x - (km - B(detail::kExp2Magic)); // x − round(x), exact
    B p = B(detail::kExp2P0);
    p = xsimd::fma(p, f, B(detail::kExp2P1));
    p = xsimd::fma(p, f, B(detail::kExp2P2));
    p = xsimd::fma(p, f, B(detail::kExp2P3));
    p = xsimd::fma(p, f, B(detail::kExp2P4));
    p = xsimd::fma(p, f, B(detail::kExp2P5));
    p = xsimd::fma(p, f, B(1.0f));
    const I bits = xsimd::bitwise_cast<I>(km) << 23;
    return p * xsimd::bitwise_cast<B>(bits);
}

// Scalar twin of exp2_approx, bit-identical.
inline float exp2_approx_ref(float x) noexcept {
    x = std::fmin(std::fmax(x, kExp2Min), kExp2Max);
    const float km = x + detail::kExp2Magic;
    const float f = x - (km - detail::kExp2Magic);
    float p = detail::kExp2P0;
    p = std::fma(p, f, detail::kExp2P1);
    p = std::fma(p, f, detail::kExp2P2);
    p = std::fma(p, f, detail::kExp2P3);
    p = std::fma(p, f, detail::kExp2P4);
    p = std::fma(p, f, detail::kExp2P5);
    p = std::fma(p, f, 1.0f);
    std::uint32_t kbits;
    std::memcpy(&kbits, &km, sizeof kbits);
    kbits <<= 23;
    float scale;
    std::memcpy(&scale, &kbits, sizeof scale);
    return p * scale;
}

#if MQ_HAS_AVX512VNNI_KERNELS
MQ_AVX512VNNI_BEGIN
// exp2_approx on 16 lanes (the avx512vnni tag's scan): the same IEEE operations, so the same bits.
// min/max and vscalefps in their all-lanes masked form (the plain intrinsics pass an undefined
// vector on which g++ 12 warns -Wmaybe-uninitialized, GCC bug 105593).
template <class Arch>
MQ_ALWAYS_INLINE __m512 exp2_approx16(__m512 x) noexcept {
    constexpr __mmask16 all = 0xFFFF;
    x = _mm512_mask_max_ps(x, all, x, _mm512_set1_ps(kExp2Min));
    x = _mm512_mask_min_ps(x, all, x, _mm512_set1_ps(kExp2Max));
    const __m512 magic = _mm512_set1_ps(detail::kExp2Magic);
    const __m512 km = _mm512_add_ps(x, magic);
    const __m512 f = _mm512_sub_ps(x, _mm512_sub_ps(km, magic));
    __m512 p = _mm512_set1_ps(detail::kExp2P0);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(detail::kExp2P1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(detail::kExp2P2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(detail::kExp2P3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(detail::kExp2P4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(detail::kExp2P5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    // p·2^k by vscalefps (p·2^⌊k⌋, k integral): one instruction instead of the shift that builds
    // 2^k and the multiply. The same rounding of the same exact product p·2^k (2^k is normal for
    // k ∈ [−126, 127], |p| < 2), so the same bits; the scan's inner loop is port-bound, so the
    // saved µop per state element is time saved.
    return _mm512_mask_scalef_ps(p, all, p, _mm512_sub_ps(km, magic));
}
// exp_approx on 16 lanes (the avx512vnni tag's conv1d SiLU): exp_approx's IEEE operations in its
// order (vroundps → vrndscaleps to nearest, the same integer k; the scaling by 2^k as below), so
// the same bits as the AVX2 form and exp_approx_ref.
template <class Arch>
MQ_ALWAYS_INLINE __m512 exp_approx16(__m512 x) noexcept {
    constexpr __mmask16 all = 0xFFFF;
    x = _mm512_mask_max_ps(x, all, x, _mm512_set1_ps(kExpMin));
    x = _mm512_mask_min_ps(x, all, x, _mm512_set1_ps(kExpMax));
    const __m512 xl = _mm512_mul_ps(x, _mm512_set1_ps(kLog2e));
    const __m512 k = _mm512_mask_roundscale_ps(xl, all, xl, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(detail::kLn2Hi), x); // r = x − k·ln2_hi
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(detail::kLn2Lo), r);         // r −= k·ln2_lo
    __m512 p = _mm512_set1_ps(detail::kExpP0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(detail::kExpP1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(detail::kExpP2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(detail::kExpP3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(detail::kExpP4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(detail::kExpP5));
    const __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f))); // 1 + r + r²·P(r)
    // p·2^k by vscalefps, as in exp2_approx16: the same product as building 2^k in the exponent
    // bits and multiplying (k ∈ [−126, 127] integral), so the same bits, in one µop instead of four.
    return _mm512_mask_scalef_ps(p, all, p, k);
}

namespace detail {
// The spans' 16-lane body: y = exp2_approx16(x) / exp_approx16(x) for x[0, 16·⌊n/16⌋); returns
// the count done.
template <class Arch, bool Base2>
inline std::size_t exp_approx16_span(const float* MQ_RESTRICT x, float* MQ_RESTRICT y, std::size_t n) noexcept {
    std::size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        _mm512_storeu_ps(y + i, Base2 ? exp2_approx16<Arch>(v) : exp_approx16<Arch>(v));
    }
    return i;
}
} // namespace detail
MQ_AVX512VNNI_END
#endif

// y[i] = 2^{x[i]} over a span (16-lane body on the avx512vnni tag, vector body, scalar tail with
// the bit-identical twin).
template <class Arch>
void exp2_approx(Arch, const float* MQ_RESTRICT x, float* MQ_RESTRICT y, std::size_t n) noexcept {
    using B = xsimd::batch<float, Arch>;
    const std::size_t vec_end = simd_floor<Arch>(n);
    std::size_t i = 0;
#if MQ_HAS_AVX512VNNI_KERNELS
    if constexpr (is_avx512vnni_v<Arch>) i = detail::exp_approx16_span<Arch, true>(x, y, n);
#endif
    for (; i < vec_end; i += B::size) exp2_approx<Arch>(B::load_unaligned(x + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] = exp2_approx_ref(x[i]);
}

// y[i] = e^{x[i]} over a span (16-lane body on the avx512vnni tag, vector body, scalar tail with
// the bit-identical twin).
template <class Arch>
void exp_approx(Arch, const float* MQ_RESTRICT x, float* MQ_RESTRICT y, std::size_t n) noexcept {
    using B = xsimd::batch<float, Arch>;
    const std::size_t vec_end = simd_floor<Arch>(n);
    std::size_t i = 0;
#if MQ_HAS_AVX512VNNI_KERNELS
    if constexpr (is_avx512vnni_v<Arch>) i = detail::exp_approx16_span<Arch, false>(x, y, n);
#endif
    for (; i < vec_end; i += B::size) exp_approx<Arch>(B::load_unaligned(x + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] = exp_approx_ref(x[i]);
}

MQ_NAMESPACE_END
