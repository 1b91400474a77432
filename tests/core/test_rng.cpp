#include <mambaquant/core/rng.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <initializer_list>

TEST_CASE("Rng: same seed, same stream; different seeds differ") {
    mq::Rng a(42), b(42), c(43);
    int differ = 0;
    for (int i = 0; i < 100; ++i) {
        const auto x = a(), y = b(), z = c();
        CHECK(x == y);
        differ += x != z;
    }
    CHECK(differ > 95);
}

TEST_CASE("Rng: the stream is pinned, so a seeded rotation is the same on every machine") {
    // Known values, computed outside the library by a separate Python transcription of the
    // published algorithms (splitmix64 and xoshiro256**, prng.di.unimi.it; the state is four
    // successive splitmix64 outputs of the seed). splitmix64(0)'s first output 0xe220a8397b1dcdaf
    // is the published test value, which checked the transcription.
    mq::Rng r0(0);
    CHECK(r0() == 0x99ec5f36cb75f2b4ULL);
    CHECK(r0() == 0xbf6e1f784956452aULL);
    CHECK(r0() == 0x1a5f849d4933e6e0ULL);
    CHECK(r0() == 0x6aa594f1262d2d2cULL);
    mq::Rng r42(42);
    CHECK(r42() == 0x15780b2e0c2ec716ULL);
    CHECK(r42() == 0x6104d9866d113a7eULL);
    CHECK(r42() == 0xae17533239e499a1ULL);
    CHECK(r42() == 0xecb8ad4703b360a1ULL);
    // The mappings: uniform = (x >> 11)·2^-53 is exact arithmetic, so exact equality.
    mq::Rng u(7);
    CHECK(u.uniform() == 0.7005764821796896);
    CHECK(u.uniform() == 0.2787512294737843);
    // sign = the top bit of each output.
    mq::Rng s(7);
    for (int want : {-1, 1, -1, -1, -1, -1, 1, 1}) CHECK(s.sign() == want);
    // Box-Muller on the same two uniforms: log, sqrt, cos, sin are within an ulp of correctly
    // rounded, so the pair agrees to a few ulps (4e-16 relative ≈ 4 ulps at these magnitudes).
    mq::Rng n(7);
    CHECK(n.normal() == doctest::Approx(-0.2790239910251981).epsilon(4e-16));
    CHECK(n.normal() == doctest::Approx(1.5277231859624536).epsilon(4e-16));
}

TEST_CASE("Rng: uniform, sign and normal have the right moments") {
    mq::Rng r(7);
    const int n = 200000;
    double su = 0, sn = 0, sn2 = 0;
    int plus = 0;
    for (int i = 0; i < n; ++i) {
        const double u = r.uniform();
        REQUIRE(u >= 0.0);
        REQUIRE(u < 1.0);
        su += u;
        plus += r.sign() > 0;
        const double g = r.normal();
        sn += g;
        sn2 += g * g;
    }
    // 5-sigma bounds for n = 2e5 samples.
    CHECK(std::fabs(su / n - 0.5) < 5 * std::sqrt(1.0 / 12 / n));
    CHECK(std::fabs(plus / double(n) - 0.5) < 5 * 0.5 / std::sqrt(n));
    CHECK(std::fabs(sn / n) < 5 / std::sqrt(n));
    CHECK(std::fabs(sn2 / n - 1.0) < 5 * std::sqrt(2.0 / n));
}
