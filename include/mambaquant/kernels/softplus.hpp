// softplus, which turns the dt projection into the scan's step size Δ, scalar and SIMD.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/kernels/exp.hpp>

#include <cmath>
#include <cstddef>

MQ_NAMESPACE_BEGIN

// softplus(x) = log(1 + e^x), and x itself above the threshold 20 (PyTorch's F.softplus with
// beta = 1, threshold = 20, which mamba's selective_scan_ref uses: there log1p(e^x) = x to
// within 2e-9 relative).
inline constexpr float kSoftplusThreshold = 20.0f;

inline float softplus_ref(float x) noexcept {
    return x > kSoftplusThreshold ? x : std::log1p(std::exp(x));
}

// SIMD form: e^x by exp_approx (≤ kExpMaxRelError relative), log1p by xsimd's (≤ 1 ulp).
// log1p(u(1+ε)) = log1p(u) + ε·u/(1+u) + …, so the absolute error of the result is
// ≤ kExpMaxRelError·u/(1+u) + 1 ulp ≤ kExpMaxRelError·softplus(x) + 1 ulp, because
// u/(1+u) ≤ log1p(u) for u ≥ 0; the relative error is ≤ kExpMaxRelError + 2·2^-23 ≈ 3.9e-7 (measured 1.5e-7).
template <class Arch>
MQ_ALWAYS_INLINE xsimd::batch<float, Arch> softplus(xsimd::batch<float, Arch> x) noexcept {
    using B = xsimd::batch<float, Arch>;
    const B soft = xsimd::log1p(exp_approx<Arch>(x));
    return xsimd::select(x > B(kSoftplusThreshold), x, soft);
}

// y[i] = softplus(x[i] + bias[i]) when
// bias is non-null (the dt bias over one token row), else softplus(x[i]); x and y may alias.
template <class Arch>
void softplus(Arch, const float* x, const float* bias, float* y, std::size_t n) noexcept {
    using B = xsimd::batch<float, Arch>;
    const std::size_t vec_end = simd_floor<Arch>(n);
    std::size_t i = 0;
    for (; i < vec_end; i += B::size) {
        B v = B::load_unaligned(x + i);
        if (bias) v += B::load_unaligned(bias + i);
        softplus<Arch>(v).store_unaligned(y + i);
    }
    for (; i < n; ++i) y[i] = softplus_ref(bias ? x[i] + bias[i] : x[i]);
}

inline void softplus_ref(const float* x, const float* bias, float* y, std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) y[i] = softplus_ref(bias ? x[i] + bias[i] : x[i]);
}

MQ_NAMESPACE_END
