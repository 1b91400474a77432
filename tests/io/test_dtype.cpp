#include <mambaquant/io/dtype.hpp>

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

TEST_CASE("half_to_float decodes normals, subnormals, zeros, inf and NaN exactly") {
    CHECK(mq::half_to_float(0x3c00) == 1.0f);
    CHECK(mq::half_to_float(0xc000) == -2.0f);
    CHECK(mq::half_to_float(0x7bff) == 65504.0f);
    CHECK(mq::half_to_float(0x0001) == std::ldexp(1.0f, -24)); // smallest subnormal
    CHECK(mq::half_to_float(0x03ff) == std::ldexp(1023.0f, -24));
    CHECK(mq::half_to_float(0x0400) == std::ldexp(1.0f, -14));
    CHECK(std::bit_cast<std::uint32_t>(mq::half_to_float(0x8000)) == 0x80000000u);
    CHECK(mq::half_to_float(0x7c00) == std::numeric_limits<float>::infinity());
    CHECK(std::isnan(mq::half_to_float(0x7e00)));
}

TEST_CASE("float_to_half round-trips every half and rounds to nearest even") {
    for (std::uint32_t h = 0; h < 0x10000; ++h) {
        const auto bits = static_cast<std::uint16_t>(h);
        const float f = mq::half_to_float(bits);
        if (std::isnan(f)) {
            CHECK(std::isnan(mq::half_to_float(mq::float_to_half(f))));
            continue;
        }
        REQUIRE(mq::float_to_half(f) == bits);
    }
    // Halfway between 1 and the next half (1 + 2^-10): ties to even (1.0).
    CHECK(mq::float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);
    CHECK(mq::float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);
    CHECK(mq::float_to_half(65520.0f) == 0x7c00); // rounds past the largest half
    CHECK(mq::float_to_half(std::ldexp(1.0f, -25)) == 0x0000); // tie to even zero
    CHECK(mq::float_to_half(std::ldexp(1.5f, -25)) == 0x0001);
}

TEST_CASE("bfloat16 conversion") {
    CHECK(mq::bf16_to_float(0x3f80) == 1.0f);
    CHECK(mq::float_to_bf16(1.0f) == 0x3f80);
    CHECK(mq::float_to_bf16(std::bit_cast<float>(0x3f808000u)) == 0x3f80); // tie → even
    CHECK(mq::float_to_bf16(std::bit_cast<float>(0x3f818000u)) == 0x3f82);
    CHECK(std::isnan(mq::bf16_to_float(mq::float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST_CASE("dtype names parse and sizes") {
    mq::DType t{};
    CHECK(mq::parse_dtype("BF16", t));
    CHECK(t == mq::DType::BF16);
    CHECK(mq::dtype_size(t) == 2);
    CHECK_FALSE(mq::parse_dtype("F8_E4M3", t));
    CHECK_FALSE(mq::parse_dtype("", t));
}
