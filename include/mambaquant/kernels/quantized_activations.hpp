// Activation codes for the integer GEMM/GEMV: a float [M x K] input quantized per token or per tensor.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tags.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/fwht.hpp>
#include <mambaquant/kernels/packed_weights.hpp>
#include <mambaquant/kernels/quantize.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/quantizer.hpp>

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

MQ_NAMESPACE_BEGIN

// An activation policy the integer kernels take: any QuantizerPolicy of 8 bits, per token or per
// tensor, either symmetry (the library's Quantizer or a user's; its params() picks the scales).
template <class Q>
concept A8Policy = QuantizerPolicy<Q> && Q::bits == 8 &&
                   (std::same_as<typename Q::granularity, per_token> || std::same_as<typename Q::granularity, per_tensor>);

// The activation policy of a Linear: FloatPolicy or A8Policy, with one static_assert naming the
// concept and the member that is missing or wrong.
template <class Q>
consteval bool check_act_policy() {
    if constexpr (std::same_as<Q, FloatPolicy>) {
        return true;
    } else if constexpr (!check_quantizer_policy<Q, false>()) {
        return false;
    } else if constexpr (Q::bits != 8) {
        static_assert(Q::bits == 8, "A8Policy: member `bits` must be 8 for the integer kernels' activations");
        return false;
    } else if constexpr (!A8Policy<Q>) {
        static_assert(A8Policy<Q>, "A8Policy: member `granularity` must be per_token or per_tensor");
        return false;
    } else {
        return true;
    }
}

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
    // int16_t codes: whether they are a symmetric policy's q ∈ [-127, 127] (else q ∈ [0, 255]).
    // The VNNI W8 kernel, which multiplies unsigned bytes, then reads q + 128 with zero + 128.
    bool signed_codes = false;

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
    out.signed_codes = std::is_same_v<Code, std::int16_t> && Q::symmetry::is_symmetric;
    if constexpr (std::is_same_v<Code, std::uint8_t>)
        std::fill_n(out.gsum.data() + m * out.groups, out.groups, 0);
}

// Range of a row merged into [lo, hi] (which starts at [0, 0]: params_from_range widens to 0 anyway).
template <class Arch>
MQ_ALWAYS_INLINE void widen_to_row_range(Arch, const float* x, std::size_t n, float& lo, float& hi) noexcept {
    const RowRange r = row_range(Arch{}, x, n);
    lo = std::min(lo, r.lo);
    hi = std::max(hi, r.hi);
}

// One row's codes in the kernel's layout: q = clamp(round_half_even(x·inv_scale) + zero, qmin, qmax)
// (set_act_params already ran for row m). The AVX2 path works in the integer domain, 16 or 32 at
// a time: vcvtps2dq rounds half to even (the default MXCSR mode, as std::nearbyint), and
// |x·inv_scale| ≤ 2^8 because p comes from the range of this row (per token) or of the whole
// input (per tensor) — so adding the zero point as an integer and clamping by saturating packs
// and min/max is exactly quantize_value's float arithmetic (the byte codes come from
// kernels/quantize.hpp's quantize32_in_range). Inputs must be finite.
template <A8Policy Q, class Arch, class Code>
void quantize_act_row(Arch, const float* x, const QuantParams& p, ActBuffer<Code>& out, std::size_t m) noexcept {
    using R = typename Q::range;
    const std::size_t k = out.k;
    Code* dst = out.row(m);
    std::size_t c = 0;
#if XSIMD_WITH_AVX2
    if constexpr (std::is_base_of_v<xsimd::avx2, Arch> && xsimd::batch<float, Arch>::size == 8) {
        const __m256 inv = _mm256_set1_ps(p.inv_scale);
        const __m256i zero16 = _mm256_set1_epi16(static_cast<short>(p.zero));
        if constexpr (std::is_same_v<Code, std::int16_t>) {
            auto rounded = [&](std::size_t i) { return _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv)); };
            const __m256i qmin = _mm256_set1_epi16(static_cast<short>(R::min));
            const __m256i qmax = _mm256_set1_epi16(static_cast<short>(R::max));
            for (; c + 16 <= k; c += 16) {
                // packs works per 128-bit lane (a0..3 b0..3 a4..7 b4..7); 0xD8 restores the order.
                __m256i v = _mm256_permute4x64_epi64(_mm256_packs_epi32(rounded(c), rounded(c + 8)), 0xD8);
                v = _mm256_min_epi16(_mm256_max_epi16(_mm256_adds_epi16(v, zero16), qmin), qmax);
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), v);
            }
        } else if (out.group % 32 == 0) {
            const __m256i bias128 = _mm256_set1_epi8(static_cast<char>(0x80));
            std::int32_t* gsum = out.gsum.data() + m * out.groups;
            __m256i sums = _mm256_setzero_si256(); // Σ codes of the current group, 4 × u64
            auto flush = [&](std::size_t g) {
                const __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
                gsum[g] += static_cast<std::int32_t>(_mm_cvtsi128_si64(s2) + _mm_extract_epi64(s2, 1));
                sums = _mm256_setzero_si256();
            };
            for (; c + 32 <= k; c += 32) {
                __m256i bytes = quantize32_in_range<R>(x + c, inv, zero16);
                if constexpr (Q::symmetry::is_symmetric) bytes = _mm256_xor_si256(bytes, bias128); // q + 128
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), bytes);
                sums = _mm256_add_epi64(sums, _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
                if ((c + 32) % out.group == 0) flush(c / out.group);
            }
            if (c % out.group != 0) flush(c / out.group);
        }
    }
#endif
    {   // Other arches (and W4 groups that are not a multiple of 32): round in SIMD, store one by one.
        using B = xsimd::batch<float, Arch>;
        constexpr std::size_t W = B::size;
        const B inv(p.inv_scale), zf(static_cast<float>(p.zero));
        const B qmin(static_cast<float>(R::min)), qmax(static_cast<float>(R::max));
        alignas(64) std::int32_t tmp[W];
        for (; c + W <= k; c += W) {
            const B r = xsimd::min(xsimd::max(xsimd::nearbyint(B::load_unaligned(x + c) * inv) + zf, qmin), qmax);
            xsimd::to_int(r).store_aligned(tmp);
            for (std::size_t i = 0; i < W; ++i) store_act_code<Q>(out, m, c + i, tmp[i]);
        }
    }
    for (; c < k; ++c) store_act_code<Q>(out, m, c, quantize_value<R>(x[c], p));
}

} // namespace detail

// q = clamp(round_half_even(x·inv_scale) + zero, qmin, qmax) per row (per_token) or with one
// (scale, zero) for the whole input (per_tensor); the range is min/max of the row or tensor.
// Bit-identical to quantize_activations_ref (same float multiply, same rounding, same clamp).
template <A8Policy Q, class Arch, class Code>
void quantize_activations(Arch, ConstMatrixView<float> x, ActBuffer<Code>& out) noexcept {
    MQ_ASSERT(x.rows <= out.capacity && x.cols == out.k, "quantize_activations: buffer does not fit the input");
    out.rows = x.rows;
    QuantParams p{};
    if constexpr (std::same_as<typename Q::granularity, per_tensor>) {
        float lo = 0.0f, hi = 0.0f;
        for (std::size_t m = 0; m < x.rows; ++m) detail::widen_to_row_range(Arch{}, x.row_ptr(m), x.cols, lo, hi);
        p = Q::params(lo, hi);
    }
    for (std::size_t m = 0; m < x.rows; ++m) {
        const float* xr = x.row_ptr(m);
        if constexpr (std::same_as<typename Q::granularity, per_token>) {
            float lo = 0.0f, hi = 0.0f;
            detail::widen_to_row_range(Arch{}, xr, x.cols, lo, hi);
            p = Q::params(lo, hi);
        }
        detail::set_act_params<Q>(out, m, p);
        detail::quantize_act_row<Q>(Arch{}, xr, p, out, m);
    }
}

// Static per-tensor activations: one calibrated (scale, zero) `p` for every row (MambaQuant's
// deployable setting). Values outside the calibrated range clamp to the code range, exactly as
// quantize_value. The fast row kernel is exact while |x·inv_scale| < 2^31 (vcvtps2dq saturates to
// INT_MIN beyond, and the int16/uint8 packs saturate correctly below); a row with a larger
// magnitude (a wildly out-of-calibration token) takes the scalar quantize_value path instead.
template <A8Policy Q, class Arch, class Code>
    requires std::same_as<typename Q::granularity, per_tensor>
void quantize_activations_static(Arch, ConstMatrixView<float> x, const QuantParams& p, ActBuffer<Code>& out) noexcept {
    MQ_ASSERT(x.rows <= out.capacity && x.cols == out.k, "quantize_activations_static: buffer does not fit the input");
    out.rows = x.rows;
    for (std::size_t m = 0; m < x.rows; ++m) {
        const float* xr = x.row_ptr(m);
        detail::set_act_params<Q>(out, m, p);
        const RowRange r = row_range(Arch{}, xr, x.cols);
        if (r.finite && std::max(std::fabs(r.lo), std::fabs(r.hi)) * p.inv_scale < 1073741824.0f) {
            detail::quantize_act_row<Q>(Arch{}, xr, p, out, m);
        } else {
            for (std::size_t c = 0; c < x.cols; ++c)
                detail::store_act_code<Q>(out, m, c, quantize_value<typename Q::range>(xr[c], p));
        }
    }
}

// The online Hadamard (kernels/fwht.hpp) and per-token quantization in one pass: each rotated row
// is quantized while it is still in L1. Equals fwht(x) then quantize_activations bit for bit.
// scratch: at least n floats, 2·n (fwht_quantize_scratch_size) to pipeline rows.
template <A8Policy Q, class Arch, class Code>
    requires std::same_as<typename Q::granularity, per_token>
void fwht_quantize_activations(Arch, ConstMatrixView<float> x, const FwhtPlan& plan, std::span<float> scratch,
                               ActBuffer<Code>& out) noexcept {
    MQ_ASSERT(x.rows <= out.capacity && x.cols == out.k, "fwht_quantize_activations: buffer does not fit the input");
    out.rows = x.rows;
    struct Sink {
        ActBuffer<Code>& out;
        QuantParams params[2]; // rows r and r − 1 are in flight
        void range(std::size_t r, float lo, float hi) noexcept {
            params[r % 2] = Q::params(lo, hi);
            detail::set_act_params<Q>(out, r, params[r % 2]);
        }
        void row(std::size_t r, const float* y) noexcept { detail::quantize_act_row<Q>(Arch{}, y, params[r % 2], out, r); }
    } sink{out, {}};
    fwht_rows(Arch{}, x, plan, scratch, sink);
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
