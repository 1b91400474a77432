// Tags that say *what* a quantizer does: its granularity and its symmetry.
#pragma once

#include <mambaquant/core/config.hpp>

#include <concepts>
#include <cstddef>
#include <type_traits>

MQ_NAMESPACE_BEGIN

// One (scale, zero) for the whole tensor.
struct per_tensor {
    static constexpr const char* name = "per_tensor";
};
// One (scale, zero) per row of a weight [out, in] (an output channel).
struct per_channel {
    static constexpr const char* name = "per_channel";
};
// One (scale, zero) per row of an activation [tokens, features] (a token).
struct per_token {
    static constexpr const char* name = "per_token";
};
// One (scale, zero) per G contiguous elements of a row; G must divide the row length.
template <std::size_t G>
struct per_group {
    static_assert(G >= 2, "per_group: a group needs at least two elements");
    static constexpr std::size_t group_size = G;
    static constexpr const char* name = "per_group";
};

// Zero point fixed at 0, range [-(2^(b-1)-1), 2^(b-1)-1]: signed codes, scale = max|x| / qmax.
struct symmetric {
    static constexpr bool is_symmetric = true;
    static constexpr const char* name = "symmetric";
};
// Zero point chosen so [min, max] maps onto [0, 2^b - 1]: unsigned codes.
struct asymmetric {
    static constexpr bool is_symmetric = false;
    static constexpr const char* name = "asymmetric";
};

template <class T>
inline constexpr bool is_per_group_v = false;
template <std::size_t G>
inline constexpr bool is_per_group_v<per_group<G>> = true;

template <class T>
concept Granularity = std::same_as<T, per_tensor> || std::same_as<T, per_channel> ||
                      std::same_as<T, per_token> || is_per_group_v<T>;

template <class T>
concept Symmetry = std::same_as<T, symmetric> || std::same_as<T, asymmetric>;

// Row-wise granularities give every row its own parameters (per_channel for weights and
// per_token for activations are the same arithmetic, named for their use).
template <class G>
inline constexpr bool is_row_wise_v = std::same_as<G, per_channel> || std::same_as<G, per_token>;

MQ_NAMESPACE_END
