// Activation codes for the integer GEMM/GEMV: a float [M x K] input quantized per token or per tensor.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tags.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/packed_weights.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/quantizer.hpp>

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

MQ_NAMESPACE_BEGIN

// An activation policy the integer kernels take: 8-bit, per token or per tensor, either symmetry.
template <class Q>
concept A8Policy = QuantizerPolicy<Q> && Q::bits == 8 &&
                   (std::same_as<typename Q::granularity, per_token> || std::same_as<typename Q::granularity, per_tensor>);

// Codes as the kernels read them, x̂[m][k] = (code[m][k] − zero[m])·scale[m]:
//  - Code = int16_t (W8 kernels, vpmaddwd pairs): code = q, the policy's code; zero = z (0 if symmetric).
//  - Code = uint8_t (W4 kernels, vpmaddubsw wants unsigned activations): asymmetric code = q ∈ [0, 255];
//    symmetric q ∈ [-127, 127] is stored as q + 128 with zero 128 (same x̂, one unsigned kernel).
// Rows are padded with code 0 to k_pad (the packed weight's k_pad). For W4, gsum[m][g] = Σ_{k∈g} code
// over the weight's groups, the term the weight zero point multiplies. A buffer is sized once
// (setup, allocates) and refilled per call by quantize_activations (allocates nothing).
template <class Code>
struct ActBuffer {
    static_assert(std::is_same_v<Code, std::int16_t> || std::is_same_v<Code, std::uint8_t>,
                  "ActBuffer: int16_t codes for W8 kernels, uint8_t codes for W4 kernels");
    std::size_t rows = 0, capacity = 0, k = 0, k_pad = 0, group = 0, groups = 0;
    aligned_vector<Code> codes;          // [capacity][k_pad]
    aligned_vector<float> scale;         // [capacity]
    aligned_vector<std::int32_t> zero;   // [capacity]
    aligned_vector<std::int32_t> gsum;   // [capacity][groups] (uint8_t codes only)

    ActBuffer() = default;
    // Room for up to max_rows tokens of k features, laid out for weights padded to k_pad with
    // `group` k per weight group (per-channel weights: group = k_pad).
    ActBuffer(std::size_t max_rows, std::size_t k_, std::size_t k_pad_, std::size_t group_) { reserve(max_rows, k_, k_pad_, group_); }

    void reserve(std::size_t max_rows, std::size_t k_, std::size_t k_pad_, std::size_t group_) {
        require(k_ > 0 && k_pad_ >= k_ && k_pad_ % kPackK == 0, "ActBuffer: k_pad ", k_pad_, " must be a multiple of ",
                kPackK, " and >= k ", k_);
        require(group_ > 0 && k_pad_ % group_ == 0, "ActBuffer: group ", group_, " does not divide k_pad ", k_pad_);
        if (max_rows <= capacity && k_ == k && k_pad_ == k_pad && group_ == group) return;
        capacity = std::max(max_rows, std::size_t{1});
        k = k_;
        k_pad = k_pad_;
        group = group_;
        groups = k_pad / group;
        codes.assign(capacity * k_pad, Code{0});
        scale.assign(capacity, 1.0f);
        zero.assign(capacity, 0);
        gsum.assign(std::is_same_v<Code, std::uint8_t> ? capacity * groups : 0, 0);
    }
    // A buffer fit for a packed weight.
    void reserve_for(std::size_t max_rows, const PackedW8& w) { reserve(max_rows, w.k, w.k_pad, w.k_pad); }
    void reserve_for(std::size_t max_rows, const PackedW4& w) { reserve(max_rows, w.k, w.k_pad, w.group); }

    const Code* row(std::size_t m) const noexcept { return codes.data() + m * k_pad; }
    Code* row(std::size_t m) noexcept { return codes.data() + m * k_pad; }
};

template <class W>
using act_code_t = std::conditional_t<std::is_same_v<W, PackedW8>, std::int16_t, std::uint8_t>;

namespace detail {

// Stores one row's policy codes as the kernel's codes and its group sums.
template <A8Policy Q, class Code>
MQ_ALWAYS_INLINE void store_act_code(ActBuffer<Code>& out, std::size_t m, std::size_t c, int q) noexcept {
    const int code = (std::is_same_v<Code, std::uint8_t> && Q::symmetry::is_symmetric) ? q + 128 : q;
    out.row(m)[c] = static_cast<Code>(code);
    if constexpr (std::is_same_v<Code, std::uint8_t>) out.gsum[m * out.groups + c / out.group] += code;
}

template <A8Policy Q, class Code>
MQ_ALWAYS_INLINE void set_act_params(ActBuffer<Code>& out, std::size_t m, const QuantParams& p) noexcept {
    out.scale[m] = p.scale;
    out.zero[m] = (std::is_same_v<Code, std::uint8_t> && Q::symmetry::is_symmetric) ? 128 : p.zero;
    if constexpr (std::is_same_v<Code, std::uint8_t>)
        std::fill_n(out.gsum.data() + m * out.groups, out.groups, 0);
}

// Range of a row, widened to contain 0 (params_from_range widens to 0 anyway, so the result is the same).
template <class Arch>
void act_row_min_max(Arch, const float* x, std::size_t n, float& lo, float& hi) noexcept {
    using B = xsimd::batch<float, Arch>;
    constexpr std::size_t W = B::size;
    B vlo(lo), vhi(hi);
    std::size_t c = 0;
    for (; c + W <= n; c += W) {
        const B v = B::load_unaligned(x + c);
        vlo = xsimd::min(vlo, v);
        vhi = xsimd::max(vhi, v);
    }
    alignas(64) float l[W], h[W];
    vlo.store_aligned(l);
    vhi.store_aligned(h);
    for (std::size_t i = 0; i < W; ++i) {
        lo = std::min(lo, l[i]);
        hi = std::max(hi, h[i]);
    }
    for (; c < n; ++c) {
        lo = std::min(lo, x[c]);
        hi = std::max(hi, x[c]);
    }
}

} // namespace detail

// q = clamp(round_half_even(x·inv_scale) + zero, qmin, qmax) per row (per_token) or with one
// (scale, zero) for the whole input (per_tensor); the range is min/max of the row or tensor.
// Bit-identical to quantize_activations_ref (same float multiply, same rounding, same clamp).
template <A8Policy Q, class Arch, class Code>
void quantize_activations(Arch, ConstMatrixView<float> x, ActBuffer<Code>& out) noexcept {
    MQ_ASSERT(x.rows <= out.capacity && x.cols == out.k, "quantize_activations: buffer does not fit the input");
    using B = xsimd::batch<float, Arch>;
    constexpr std::size_t W = B::size;
    using R = typename Q::range;
    out.rows = x.rows;
    QuantParams p{};
    if constexpr (std::same_as<typename Q::granularity, per_tensor>) {
        float lo = 0.0f, hi = 0.0f;
        for (std::size_t m = 0; m < x.rows; ++m) detail::act_row_min_max(Arch{}, x.row_ptr(m), x.cols, lo, hi);
        p = Q::params(lo, hi);
    }
    const B qmin(static_cast<float>(R::min)), qmax(static_cast<float>(R::max));
    alignas(64) std::int32_t tmp[W];
    for (std::size_t m = 0; m < x.rows; ++m) {
        const float* xr = x.row_ptr(m);
        if constexpr (std::same_as<typename Q::granularity, per_token>) {
            float lo = 0.0f, hi = 0.0f;
            detail::act_row_min_max(Arch{}, xr, x.cols, lo, hi);
            p = Q::params(lo, hi);
        }
        detail::set_act_params<Q>(out, m, p);
        const B inv(p.inv_scale), zf(static_cast<float>(p.zero));
        std::size_t c = 0;
        for (; c + W <= x.cols; c += W) {
            const B r = xsimd::min(xsimd::max(xsimd::nearbyint(B::load_unaligned(xr + c) * inv) + zf, qmin), qmax);
            xsimd::to_int(r).store_aligned(tmp);
            for (std::size_t i = 0; i < W; ++i) detail::store_act_code<Q>(out, m, c + i, tmp[i]);
        }
        for (; c < x.cols; ++c) detail::store_act_code<Q>(out, m, c, quantize_value<R>(xr[c], p));
    }
}

// The scalar twin: params_from_range and quantize_value element by element.
template <A8Policy Q, class Code>
void quantize_activations_ref(ConstMatrixView<float> x, ActBuffer<Code>& out) noexcept {
    MQ_ASSERT(x.rows <= out.capacity && x.cols == out.k, "quantize_activations_ref: buffer does not fit the input");
    out.rows = x.rows;
    auto range = [&](std::size_t m, float& lo, float& hi) {
        for (std::size_t c = 0; c < x.cols; ++c) {
            lo = std::min(lo, x(m, c));
            hi = std::max(hi, x(m, c));
        }
    };
    QuantParams p{};
    if constexpr (std::same_as<typename Q::granularity, per_tensor>) {
        float lo = 0.0f, hi = 0.0f;
        for (std::size_t m = 0; m < x.rows; ++m) range(m, lo, hi);
        p = Q::params(lo, hi);
    }
    for (std::size_t m = 0; m < x.rows; ++m) {
        if constexpr (std::same_as<typename Q::granularity, per_token>) {
            float lo = 0.0f, hi = 0.0f;
            range(m, lo, hi);
            p = Q::params(lo, hi);
        }
        detail::set_act_params<Q>(out, m, p);
        for (std::size_t c = 0; c < x.cols; ++c)
            detail::store_act_code<Q>(out, m, c, quantize_value<typename Q::range>(x(m, c), p));
    }
}

MQ_NAMESPACE_END
