// The integer code range of a quantizer: a tiny policy type, fixed at compile time.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/tags.hpp>

#include <cstdint>

MQ_NAMESPACE_BEGIN

// Codes q ∈ [Min, Max]; `levels` is the number of representable codes.
template <int Min, int Max>
struct QuantRange {
    static_assert(Min < Max, "QuantRange: empty range");
    static_assert(Min >= -128 && Max <= 255, "QuantRange: codes must fit in a byte");
    static constexpr int min = Min;
    static constexpr int max = Max;
    static constexpr int levels = Max - Min + 1;
};

// Symmetric codes are signed and drop -2^(b-1) so that the range is symmetric about 0
// (q = -qmax..qmax; the lost code buys an exact negation). Asymmetric codes are unsigned.
template <int Bits, Symmetry S>
using BitRange = std::conditional_t<S::is_symmetric,
                                    QuantRange<-((1 << (Bits - 1)) - 1), (1 << (Bits - 1)) - 1>,
                                    QuantRange<0, (1 << Bits) - 1>>;

using Int8SymmetricRange = BitRange<8, symmetric>;   // [-127, 127]
using UInt8AsymmetricRange = BitRange<8, asymmetric>; // [0, 255]
using Int4SymmetricRange = BitRange<4, symmetric>;   // [-7, 7]
using UInt4AsymmetricRange = BitRange<4, asymmetric>; // [0, 15]

MQ_NAMESPACE_END
