// Quantizer policies: what a tensor is quantized to (bits, granularity, symmetry), as a type.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tags.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/range.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <type_traits>

MQ_NAMESPACE_BEGIN

// Quantizer<4, per_group<128>, symmetric> says *what*; the kernels decide *how*.
template <int Bits, Granularity G, Symmetry S>
struct Quantizer {
    static_assert(Bits >= 2 && Bits <= 8, "Quantizer: bits must be in [2, 8]");
    static constexpr int bits = Bits;
    static constexpr bool is_float = false;
    using granularity = G;
    using symmetry = S;
    using range = BitRange<Bits, S>;
    // Symmetric codes are signed, asymmetric codes unsigned; both fit a byte for Bits <= 8.
    using code_type = std::conditional_t<S::is_symmetric, std::int8_t, std::uint8_t>;

    static QuantParams params(float lo, float hi) noexcept { return params_from_range<Bits, S>(lo, hi); }
};

// The "no quantization" policy: a float Linear or block is the same template with this.
struct FloatPolicy {
    static constexpr bool is_float = true;
    using code_type = float;
};

// ---------------------------------------------------------------------------------------------
// The QuantizerPolicy concept: open. Any type with these members is a quantizer policy, for weights
// and activations alike — no trait to specialize (README "Policies" lists them):
//   static constexpr int  bits        2..8
//   static constexpr bool is_float    false (FloatPolicy's is true)
//   using granularity                 per_tensor | per_channel | per_token | per_group<G>
//   using symmetry                    symmetric | asymmetric
//   using range                       QuantRange<min, max>: the codes q ∈ [min, max]
//   using code_type                   std::int8_t (signed range) or std::uint8_t (unsigned range)
//   static QuantParams params(float lo, float hi)
//                                     (scale, inv_scale = 1/scale, zero) for values in [lo, hi]
// Every path (tensor API, weight packing, activation quantization, the fused Hadamard path, the
// scan's state·C) calls Q::params for the scale and zero point, so a user policy changes how they
// are picked (e.g. power-of-two scales); the integer codes follow the library's formula
// q = clamp(round_half_even(x·inv_scale) + zero, range::min, range::max). params must return a
// finite scale > 0 with inv_scale = 1/scale and a zero point inside the range (0 when symmetric),
// and keep |x·inv_scale| < 2^24 on [lo, hi] (the SIMD kernels saturate through int32).

namespace detail {
template <class Q>
concept has_bits = requires { { Q::bits } -> std::convertible_to<int>; };
template <class Q>
concept has_is_float = requires { { Q::is_float } -> std::convertible_to<bool>; };
template <class Q>
concept has_granularity = requires { typename Q::granularity; } && Granularity<typename Q::granularity>;
template <class Q>
concept has_symmetry = requires { typename Q::symmetry; } && Symmetry<typename Q::symmetry>;
template <class Q>
concept has_range = requires {
    typename Q::range;
    { Q::range::min } -> std::convertible_to<int>;
    { Q::range::max } -> std::convertible_to<int>;
};
template <class Q>
concept has_code_type = requires { typename Q::code_type; } &&
                        (std::same_as<typename Q::code_type, std::int8_t> || std::same_as<typename Q::code_type, std::uint8_t>);
template <class Q>
concept has_params = requires(float lo, float hi) { { Q::params(lo, hi) } -> std::same_as<QuantParams>; };
// The range is non-empty and its codes fit code_type; a symmetric policy has a signed range.
template <class Q>
inline constexpr bool range_fits_v =
    Q::range::min < Q::range::max &&
    (std::same_as<typename Q::code_type, std::int8_t> ? Q::range::min >= -128 && Q::range::max <= 127
                                                      : Q::range::min >= 0 && Q::range::max <= 255) &&
    (!Q::symmetry::is_symmetric || std::same_as<typename Q::code_type, std::int8_t>);

// The built-in Quantizer template (its params are params_from_range, which fused kernels compute
// inline); a user policy takes the generic path that calls its own Q::params.
template <class T>
inline constexpr bool is_builtin_quantizer_v = false;
template <int B, class G, class S>
inline constexpr bool is_builtin_quantizer_v<Quantizer<B, G, S>> = true;
} // namespace detail

template <class Q>
concept QuantizerPolicy = detail::has_bits<Q> && detail::has_is_float<Q> && detail::has_granularity<Q> &&
                          detail::has_symmetry<Q> && detail::has_range<Q> && detail::has_code_type<Q> &&
                          detail::has_params<Q> && !Q::is_float && Q::bits >= 2 && Q::bits <= 8 &&
                          detail::range_fits_v<Q>;

// What a Linear or block accepts for weights and activations: a quantizer or float.
template <class P>
concept NumericPolicy = QuantizerPolicy<P> || std::same_as<P, FloatPolicy>;

// One static_assert naming the concept and the first member P lacks or gets wrong; true when P is a
// QuantizerPolicy (or FloatPolicy, with AllowFloat). Templates that take a policy call it first
// thing, so the user's first error message says what to add, at the use site:
//   static_assert(check_quantizer_policy<W>());
template <class Q, bool AllowFloat = true>
consteval bool check_quantizer_policy() {
    if constexpr (AllowFloat && std::same_as<Q, FloatPolicy>) {
        return true;
    } else if constexpr (!detail::has_bits<Q>) {
        static_assert(detail::has_bits<Q>, "QuantizerPolicy: missing member `static constexpr int bits`");
        return false;
    } else if constexpr (!detail::has_is_float<Q>) {
        static_assert(detail::has_is_float<Q>, "QuantizerPolicy: missing member `static constexpr bool is_float = false`");
        return false;
    } else if constexpr (!detail::has_granularity<Q>) {
        static_assert(detail::has_granularity<Q>,
                      "QuantizerPolicy: member `granularity` missing or not one of per_tensor, per_channel, per_token, per_group<G>");
        return false;
    } else if constexpr (!detail::has_symmetry<Q>) {
        static_assert(detail::has_symmetry<Q>, "QuantizerPolicy: member `symmetry` missing or not symmetric / asymmetric");
        return false;
    } else if constexpr (!detail::has_range<Q>) {
        static_assert(detail::has_range<Q>, "QuantizerPolicy: missing member `range` (a QuantRange<min, max> of the codes)");
        return false;
    } else if constexpr (!detail::has_code_type<Q>) {
        static_assert(detail::has_code_type<Q>, "QuantizerPolicy: member `code_type` missing or not std::int8_t / std::uint8_t");
        return false;
    } else if constexpr (!detail::has_params<Q>) {
        static_assert(detail::has_params<Q>, "QuantizerPolicy: missing member `static QuantParams params(float lo, float hi)`");
        return false;
    } else if constexpr (Q::is_float) {
        static_assert(!Q::is_float, "QuantizerPolicy: member `is_float` must be false for a quantizer (FloatPolicy is the float one)");
        return false;
    } else if constexpr (Q::bits < 2 || Q::bits > 8) {
        static_assert(Q::bits >= 2 && Q::bits <= 8, "QuantizerPolicy: member `bits` must be in [2, 8]");
        return false;
    } else if constexpr (!detail::range_fits_v<Q>) {
        static_assert(detail::range_fits_v<Q>, "QuantizerPolicy: member `range` must be non-empty and fit `code_type` "
                                               "(signed int8_t for a symmetric policy)");
        return false;
    } else {
        return true;
    }
}

static_assert(QuantizerPolicy<Quantizer<8, per_token, asymmetric>>);
static_assert(QuantizerPolicy<Quantizer<4, per_group<128>, symmetric>>);
static_assert(!QuantizerPolicy<FloatPolicy> && NumericPolicy<FloatPolicy>);

// Number of (scale, zero) pairs a tensor of rows × cols needs under granularity G.
template <Granularity G>
inline std::size_t param_count(std::size_t rows, std::size_t cols) {
    if constexpr (std::same_as<G, per_tensor>) {
        return 1;
    } else if constexpr (is_row_wise_v<G>) {
        return rows;
    } else {
        require(cols % G::group_size == 0, "per_group<", G::group_size, ">: group size does not divide the row length ", cols);
        return rows * (cols / G::group_size);
    }
}

// Common aliases.
using W8PerChannel = Quantizer<8, per_channel, symmetric>;
using W4PerChannel = Quantizer<4, per_channel, symmetric>;
template <std::size_t G>
using W4PerGroup = Quantizer<4, per_group<G>, symmetric>;
using A8PerToken = Quantizer<8, per_token, asymmetric>;
using A8PerTensor = Quantizer<8, per_tensor, asymmetric>;

MQ_NAMESPACE_END
