#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/transform/ssilu.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

TEST_CASE("SSiLU with s = 1 is SiLU, bit for bit, scalar and SIMD") {
    mq::Rng rng(3);
    const mq::SiLU silu;
    const mq::SSiLU ssilu;
    using batch = xsimd::batch<float, mq::default_arch>;
    for (int i = 0; i < 10000; ++i) {
        const float z = static_cast<float>(rng.uniform(-30.0, 30.0));
        CHECK(ssilu(z, 1.0f) == silu(z));
        const batch zb(z);
        CHECK((ssilu(zb, batch(1.0f)) == silu(zb)).get(0) == true);
    }
    CHECK(silu(0.0f) == 0.0f);
    CHECK(silu(100.0f) == 100.0f);
    CHECK(silu(-100.0f) == doctest::Approx(0.0f));
}

TEST_CASE("SSiLU_s(z/s) = SiLU(z)/s: the identity S2 smoothing rests on") {
    mq::Rng rng(4);
    const mq::SiLU silu;
    const mq::SSiLU ssilu;
    double worst = 0.0;
    for (int i = 0; i < 10000; ++i) {
        const double z = rng.uniform(-12.0, 12.0);
        const double s = std::exp(rng.uniform(std::log(0.01), std::log(100.0)));
        const double lhs = ssilu(static_cast<float>(z / s), static_cast<float>(s));
        const double rhs = silu(static_cast<float>(z)) / s;
        worst = std::max(worst, std::fabs(lhs - rhs) / std::max(std::fabs(rhs), 1e-30));
    }
    MESSAGE("max relative difference SSiLU_s(z/s) vs SiLU(z)/s in float: " << worst);
    CHECK(worst < 5e-6); // a few float roundings (z/s, s·z', exp, the divisions) apart
}

TEST_CASE("ssilu_gate matches ssilu_gate_ref on Mamba widths and odd ones") {
    mq::Rng rng(5);
    for (std::size_t n : {1u, 7u, 16u, 1535u, 1536u, 5120u}) {
        CAPTURE(n);
        std::vector<float> y(n), z(n), s(n), out(n), ref(n);
        for (std::size_t i = 0; i < n; ++i) {
            y[i] = static_cast<float>(rng.normal());
            z[i] = static_cast<float>(4.0 * rng.normal());
            s[i] = static_cast<float>(std::exp(rng.uniform(-3.0, 3.0)));
        }
        mq::ssilu_gate(mq::default_arch{}, y.data(), z.data(), s.data(), out.data(), n);
        mq::ssilu_gate_ref(y.data(), z.data(), s.data(), ref.data(), n);
        // xsimd::exp and std::exp are both faithful to ~1 ulp, not identical: bound the gap in
        // ulps of the result (a few roundings of the same formula).
        float worst = 0.0f;
        for (std::size_t i = 0; i < n; ++i) {
            const float tol = 4.0f * std::fabs(ref[i]) * 1.1920929e-7f + 1e-30f;
            worst = std::max(worst, std::fabs(out[i] - ref[i]) / tol);
        }
        CHECK(worst <= 1.0f);
    }
}
