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

template <class T>
inline constexpr bool is_quantizer_v = false;
template <int B, class G, class S>
inline constexpr bool is_quantizer_v<Quantizer<B, G, S>> = true;

// A quantizer policy: bits, granularity, symmetry, its code range and code storage type.
template <class Q>
concept QuantizerPolicy = is_quantizer_v<Q> && requires {
    { Q::bits } -> std::convertible_to<int>;
    typename Q::granularity;
    typename Q::symmetry;
    typename Q::range;
    typename Q::code_type;
};

// What a Linear or block accepts for weights and activations: a quantizer or float.
template <class P>
concept NumericPolicy = QuantizerPolicy<P> || std::same_as<P, FloatPolicy>;

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
