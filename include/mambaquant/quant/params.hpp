// Quantization parameters (scale, zero point) and how they follow from a value range.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/tags.hpp>
#include <mambaquant/quant/range.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>

MQ_NAMESPACE_BEGIN

// x̂ = (q − zero)·scale. `inv_scale` is kept beside `scale` because the kernels multiply by it
// instead of dividing (as FBGEMM does): one multiply per element, and the scalar reference and
// the SIMD kernels use the very same float operation, so they agree bit for bit.
struct QuantParams {
    float scale = 1.0f;
    float inv_scale = 1.0f;
    std::int32_t zero = 0;

    friend bool operator==(const QuantParams&, const QuantParams&) = default;
};

// Parameters for the range [lo, hi] of a tensor (or row, or group).
//   symmetric:  scale = max(|lo|, |hi|) / qmax,            zero = 0
//   asymmetric: scale = (max(hi,0) − min(lo,0)) / (2^b − 1), zero = round(−min(lo,0)/scale)
// The asymmetric range is widened to contain 0 so that 0 (padding, ReLU-like zeros) is exact.
// A zero range (all-zero input) gives scale 1, zero 0: every value quantizes to the code of 0 and
// dequantizes exactly. Non-finite bounds are the caller's to reject (setup code checks them).
template <int Bits, Symmetry S>
inline QuantParams params_from_range(float lo, float hi) noexcept {
    using R = BitRange<Bits, S>;
    QuantParams p;
    if constexpr (S::is_symmetric) {
        const float amax = std::max(std::fabs(lo), std::fabs(hi));
        p.scale = amax > 0.0f ? amax / static_cast<float>(R::max) : 1.0f;
        p.zero = 0;
    } else {
        const float mn = std::min(lo, 0.0f);
        const float mx = std::max(hi, 0.0f);
        const float span = mx - mn;
        p.scale = span > 0.0f ? span / static_cast<float>(R::max - R::min) : 1.0f;
        const float z = std::nearbyint(-mn / p.scale) + static_cast<float>(R::min);
        p.zero = static_cast<std::int32_t>(
            std::clamp(z, static_cast<float>(R::min), static_cast<float>(R::max)));
    }
    // A subnormal scale would overflow its inverse; such a tensor is all (almost) zeros.
    if (!(p.scale >= 1e-30f)) p.scale = 1e-30f;
    p.inv_scale = 1.0f / p.scale;
    return p;
}

// q = clamp(round_half_even(x · inv_scale) + zero, qmin, qmax). Rounding is the FPU's default
// round-to-nearest-even (std::nearbyint), the same mode as the SIMD kernels' vroundps/cvtps2dq.
template <class Range>
inline int quantize_value(float x, const QuantParams& p) noexcept {
    const float r = std::nearbyint(x * p.inv_scale) + static_cast<float>(p.zero);
    return static_cast<int>(std::clamp(r, static_cast<float>(Range::min), static_cast<float>(Range::max)));
}

// x̂ = (q − zero)·scale
inline float dequantize_value(int q, const QuantParams& p) noexcept {
    return static_cast<float>(q - p.zero) * p.scale;
}

MQ_NAMESPACE_END
