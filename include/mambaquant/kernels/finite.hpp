// A vectorized check that a tensor is finite (and optionally non-negative), for API boundaries.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>

#include <cmath>
#include <cstddef>

MQ_NAMESPACE_BEGIN

// v·0 is 0 for a finite v and NaN for ±inf or NaN, so one running sum of v·0 answers "all
// finite" with one multiply-add per element and no branch (a plain scalar loop with an early
// exit runs at a few cycles per element, as long as a fast kernel it guards). With
// `nonnegative`, also min(v) ≥ 0 (−0 counts as 0).
template <class Arch>
bool all_finite(Arch, ConstMatrixView<float> v, bool nonnegative = false) noexcept {
    using B = xsimd::batch<float, Arch>;
    B acc(0.0f), lo(0.0f);
    float acc_s = 0.0f, lo_s = 0.0f;
    const std::size_t vec_end = simd_floor<Arch>(v.cols);
    for (std::size_t r = 0; r < v.rows; ++r) {
        const float* row = v.data + r * v.stride;
        std::size_t c = 0;
        for (; c < vec_end; c += B::size) {
            const B x = B::load_unaligned(row + c);
            acc = xsimd::fma(x, B(0.0f), acc);
            lo = xsimd::min(lo, x);
        }
        for (; c < v.cols; ++c) {
            acc_s += row[c] * 0.0f;
            lo_s = std::fmin(lo_s, row[c]);
        }
    }
    const float sum = xsimd::hadd(acc) + acc_s;
    if (!(sum == 0.0f)) return false;
    if (!nonnegative) return true;
    alignas(64) float lanes[B::size];
    lo.store_aligned(lanes);
    for (std::size_t i = 0; i < B::size; ++i) lo_s = std::fmin(lo_s, lanes[i]);
    return lo_s >= 0.0f;
}

// Scalar twin.
inline bool all_finite_ref(ConstMatrixView<float> v, bool nonnegative = false) noexcept {
    for (std::size_t r = 0; r < v.rows; ++r)
        for (std::size_t c = 0; c < v.cols; ++c) {
            const float x = v(r, c);
            if (!std::isfinite(x) || (nonnegative && x < 0.0f)) return false;
        }
    return true;
}

MQ_NAMESPACE_END
