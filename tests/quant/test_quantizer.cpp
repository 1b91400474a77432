// quant/quantizer.hpp: the QuantizerPolicy concept is open (a user type with the documented members
// models it, no trait to specialize) and refuses types that miss a member or get one wrong.
#include <mambaquant/quant/quantizer.hpp>

#include "support/pow2_quantizer.hpp"

#include <doctest/doctest.h>

#include <cstdint>

namespace {

using UserW8 = mqtest::Pow2Quantizer<8, mq::per_channel, mq::symmetric>;
using UserA8 = mqtest::Pow2Quantizer<8, mq::per_token, mq::asymmetric>;

struct PlainStruct {};

// Every member but `range`.
struct MissingRange {
    static constexpr int bits = 8;
    static constexpr bool is_float = false;
    using granularity = mq::per_channel;
    using symmetry = mq::symmetric;
    using code_type = std::int8_t;
    static mq::QuantParams params(float lo, float hi) noexcept { return mq::params_from_range<8, mq::symmetric>(lo, hi); }
};

// A symmetric policy whose codes are unsigned: a wrong member, not a missing one.
struct UnsignedSymmetric {
    static constexpr int bits = 8;
    static constexpr bool is_float = false;
    using granularity = mq::per_channel;
    using symmetry = mq::symmetric;
    using range = mq::QuantRange<0, 255>;
    using code_type = std::uint8_t;
    static mq::QuantParams params(float, float) noexcept { return {}; }
};

} // namespace

TEST_CASE("QuantizerPolicy: a user type with the documented members is a policy") {
    static_assert(mq::QuantizerPolicy<UserW8> && mq::QuantizerPolicy<UserA8>);
    static_assert(mq::NumericPolicy<UserW8>);
    static_assert(mq::check_quantizer_policy<UserW8>());
    static_assert(mq::QuantizerPolicy<mq::W8PerChannel> && mq::QuantizerPolicy<mq::A8PerTensor>);
    // Only the library's own template takes the fused built-in-params kernels.
    static_assert(mq::detail::is_builtin_quantizer_v<mq::W8PerChannel> && !mq::detail::is_builtin_quantizer_v<UserW8>);
    CHECK(UserW8::params(-3.0f, 1.0f).scale == 0.03125f); // 3/127 = 0.0236 → 2^-5
}

TEST_CASE("QuantizerPolicy: types that miss a member or get one wrong are not policies") {
    static_assert(!mq::QuantizerPolicy<PlainStruct> && !mq::NumericPolicy<PlainStruct>);
    static_assert(!mq::QuantizerPolicy<MissingRange>);
    static_assert(!mq::QuantizerPolicy<UnsignedSymmetric>);
    static_assert(!mq::QuantizerPolicy<mq::FloatPolicy> && mq::NumericPolicy<mq::FloatPolicy>);
    // The member checks the diagnostics are built from (each a separate, named requirement).
    static_assert(!mq::detail::has_bits<PlainStruct> && !mq::detail::has_range<MissingRange>);
    static_assert(mq::detail::has_code_type<UnsignedSymmetric> && !mq::detail::range_fits_v<UnsignedSymmetric>);
    CHECK(true);
}
