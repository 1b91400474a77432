// SiLU, the gate of the Mamba block (y ⊙ SiLU(z)) and the conv1d activation, scalar and SIMD.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/kernels/exp.hpp>

#include <cmath>
#include <cstddef>

MQ_NAMESPACE_BEGIN

// SiLU(x) = x·σ(x) = x / (1 + e^{−x}).
// The SIMD form uses exp_approx (relative error ≤ kExpMaxRelError); 1 + e^{−x} and the division
// add at most 1 ulp each, so SiLU's relative error is ≤ kExpMaxRelError + 2·2^-23 ≈ 3.9e-7 (measured 2.0e-7) where
// e^{−x} is in range; for x < −88 the result is x·e^{−88}-ish (|SiLU| < 1e-36, absolute error tiny).
// silu_approx_ref repeats the arithmetic bit for bit; silu_ref is the straightforward std::exp form.
inline float silu_ref(float x) noexcept { return x / (1.0f + std::exp(-x)); }

inline float silu_approx_ref(float x) noexcept { return x / (1.0f + exp_approx_ref(-x)); }

template <class Arch>
MQ_ALWAYS_INLINE xsimd::batch<float, Arch> silu(xsimd::batch<float, Arch> x) noexcept {
    using B = xsimd::batch<float, Arch>;
    return x / (B(1.0f) + exp_approx<Arch>(-x));
}

#if MQ_HAS_AVX512VNNI_KERNELS
MQ_AVX512VNNI_BEGIN
// SiLU on 16 lanes (the avx512vnni tag): silu's operations (−x as a sign flip, exp_approx16, one
// add, one IEEE division), so the same bits as the AVX2 form and silu_approx_ref.
template <class Arch>
MQ_ALWAYS_INLINE __m512 silu16(__m512 x) noexcept {
    const __m512 e = exp_approx16<Arch>(_mm512_xor_ps(x, _mm512_set1_ps(-0.0f)));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}
MQ_AVX512VNNI_END
#endif

// y[i] = SiLU(x[i]); x and y may alias (in place).
template <class Arch>
void silu(Arch, const float* x, float* y, std::size_t n) noexcept {
    using B = xsimd::batch<float, Arch>;
    const std::size_t vec_end = simd_floor<Arch>(n);
    std::size_t i = 0;
    for (; i < vec_end; i += B::size) silu<Arch>(B::load_unaligned(x + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] = silu_approx_ref(x[i]);
}

inline void silu_ref(const float* x, float* y, std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) y[i] = silu_ref(x[i]);
}

MQ_NAMESPACE_END
