// Tests of exp_approx (error bound, bit-identical scalar twin) and the SiLU/softplus built on it,
// the span kernels on every arch the machine runs (the avx512vnni tag's 16-lane exp bodies too).
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/exp.hpp>
#include <mambaquant/kernels/finite.hpp>
#include <mambaquant/kernels/silu.hpp>
#include <mambaquant/kernels/softplus.hpp>

#include <doctest/doctest.h>

#include "kernels/arch_test_util.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace {
// Every float in [lo, hi] visited with a fixed stride in bit space (dense near 0, ~2M points).
std::vector<float> sweep(float lo, float hi, std::size_t points) {
    std::vector<float> v;
    for (std::size_t i = 0; i <= points; ++i)
        v.push_back(std::min(hi, lo + (hi - lo) * static_cast<float>(static_cast<double>(i) / static_cast<double>(points))));
    for (float x = 1e-30f; x < hi; x *= 1.37f) {
        v.push_back(x);
        v.push_back(-x);
    }
    return v;
}
#if defined(__SANITIZE_ADDRESS__)
constexpr std::size_t kPoints = 1u << 14;
#else
constexpr std::size_t kPoints = 1u << 21;
#endif
} // namespace

TEST_CASE("exp_approx: relative error bound over the clamped range, and the twin is bit-identical") {
    mqtest::for_each_arch([](auto arch) {
        const auto xs = sweep(mq::kExpMin, mq::kExpMax, kPoints);
        std::vector<float> ys(xs.size());
        mq::exp_approx(arch, xs.data(), ys.data(), xs.size());
        double worst = 0.0, worst_small = 0.0;
        float worst_x = 0.0f;
        std::size_t mismatches = 0;
        for (std::size_t i = 0; i < xs.size(); ++i) {
            const double want = std::exp(static_cast<double>(xs[i]));
            const double rel = std::fabs(ys[i] - want) / want;
            // Below FLT_MIN the result is subnormal and any float exp loses relative precision.
            if (want >= static_cast<double>(std::numeric_limits<float>::min())) {
                if (rel > worst) {
                    worst = rel;
                    worst_x = xs[i];
                }
            } else {
                CHECK(std::fabs(ys[i] - want) <= static_cast<double>(std::numeric_limits<float>::min()));
            }
            if (std::fabs(xs[i]) <= 20.0f) worst_small = std::max(worst_small, rel);
            if (std::bit_cast<std::uint32_t>(ys[i]) != std::bit_cast<std::uint32_t>(mq::exp_approx_ref(xs[i]))) ++mismatches;
        }
        MESSAGE("exp_approx max relative error: ", worst, " (at x = ", worst_x, ") on the range, ", worst_small, " on [-20, 20]");
        CHECK(worst <= mq::kExpMaxRelError);
        CHECK(worst_small <= 2.0 * std::numeric_limits<float>::epsilon());
        CHECK(mismatches == 0);
    });
}

TEST_CASE("exp2_approx: relative error bound over [-126, 127], and the twin is bit-identical") {
    mqtest::for_each_arch([](auto arch) {
        auto xs = sweep(mq::kExp2Min, mq::kExp2Max, kPoints);
        // Exact halves: the rounding of x + kExp2Magic breaks these ties its own way (to an even sum,
        // not an even k), which a wider form must reproduce.
        for (float h = -125.5f; h <= 126.5f; h += 1.0f) xs.push_back(h);
        std::vector<float> ys(xs.size());
        mq::exp2_approx(arch, xs.data(), ys.data(), xs.size());
        double worst = 0.0;
        std::size_t mismatches = 0;
        for (std::size_t i = 0; i < xs.size(); ++i) {
            const double want = std::exp2(static_cast<double>(xs[i]));
            worst = std::max(worst, std::fabs(ys[i] - want) / want);
            if (std::bit_cast<std::uint32_t>(ys[i]) != std::bit_cast<std::uint32_t>(mq::exp2_approx_ref(xs[i]))) ++mismatches;
        }
        MESSAGE("exp2_approx max relative error: ", worst);
        CHECK(worst <= mq::kExp2MaxRelError);
        CHECK(mismatches == 0);
    });
    CHECK(mq::exp2_approx_ref(0.0f) == 1.0f);
    CHECK(mq::exp2_approx_ref(-3.0f) == 0.125f);
    CHECK(mq::exp2_approx_ref(-1000.0f) == std::exp2(-126.0f));
    CHECK(mq::exp2_approx_ref(1000.0f) == std::exp2(127.0f));
}

TEST_CASE("exp_approx: clamping outside the range") {
    CHECK(mq::exp_approx_ref(0.0f) == 1.0f);
    CHECK(mq::exp_approx_ref(-1000.0f) == mq::exp_approx_ref(mq::kExpMin));
    CHECK(mq::exp_approx_ref(-1000.0f) > 0.0f);
    CHECK(mq::exp_approx_ref(-1000.0f) < 1.2e-38f);
    CHECK(std::isfinite(mq::exp_approx_ref(1000.0f)));
    // 16 values: the avx512vnni tag's 16-lane body sees them too.
    const float xs[16] = {-1000.0f, -88.0f, -87.0f, -1.0f, 0.0f, 1.0f, 88.0f, 1000.0f,
                          -87.6f, -87.5f, -0.5f, 0.5f, 87.9f, 88.5f, -1e30f, 1e30f};
    mqtest::for_each_arch([&](auto arch) {
        float ys[16];
        mq::exp_approx(arch, xs, ys, 16);
        for (std::size_t i = 0; i < 16; ++i) {
            CHECK(std::isfinite(ys[i]));
            CHECK(ys[i] == mq::exp_approx_ref(xs[i]));
        }
    });
}

TEST_CASE("silu and softplus: SIMD within their stated bounds of the std::exp forms") {
    mqtest::for_each_arch([](auto arch) {
        const auto xs = sweep(-60.0f, 60.0f, kPoints / 4);
        std::vector<float> s(xs.size()), p(xs.size());
        mq::silu(arch, xs.data(), s.data(), xs.size());
        mq::softplus(arch, xs.data(), nullptr, p.data(), xs.size());
        double worst_silu = 0.0, worst_softplus = 0.0;
        for (std::size_t i = 0; i < xs.size(); ++i) {
            const double x = xs[i];
            const double silu64 = x / (1.0 + std::exp(-x));
            const double softplus64 = x > 20.0 ? x : std::log1p(std::exp(x));
            if (silu64 != 0.0) worst_silu = std::max(worst_silu, std::fabs(s[i] - silu64) / std::fabs(silu64));
            worst_softplus = std::max(worst_softplus, std::fabs(p[i] - softplus64) / softplus64);
            CHECK(s[i] == mq::silu_approx_ref(xs[i]));
        }
        MESSAGE("silu max relative error ", worst_silu, ", softplus ", worst_softplus);
        // exp_approx's bound plus a rounding or two (the header's derivation).
        CHECK(worst_silu <= mq::kExpMaxRelError + 2.5 * std::numeric_limits<float>::epsilon());
        CHECK(worst_softplus <= mq::kExpMaxRelError + 2.5 * std::numeric_limits<float>::epsilon());
        CHECK(mq::silu_ref(0.0f) == 0.0f);
        CHECK(mq::softplus_ref(30.0f) == 30.0f);
    });
}

TEST_CASE("softplus: the bias is added before the activation") {
    std::vector<float> x(19), b(19), y(19);
    for (std::size_t i = 0; i < x.size(); ++i) {
        x[i] = -3.0f + 0.37f * static_cast<float>(i);
        b[i] = 0.5f - 0.11f * static_cast<float>(i);
    }
    mq::softplus(mq::default_arch{}, x.data(), b.data(), y.data(), x.size());
    for (std::size_t i = 0; i < x.size(); ++i) CHECK(y[i] == doctest::Approx(mq::softplus_ref(x[i] + b[i])).epsilon(1e-6));
}

TEST_CASE("all_finite: SIMD and scalar twin agree on NaN, ±inf and negatives anywhere, tails included") {
    mq::MatrixXf m = mq::MatrixXf::Constant(5, 19, 0.5f);
    CHECK(mq::all_finite(mq::default_arch{}, mq::view(std::as_const(m)), true));
    for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), -1.0f}) {
        for (const Eigen::Index col : {Eigen::Index(0), Eigen::Index(9), Eigen::Index(18)}) {
            mq::MatrixXf b = m;
            b(3, col) = bad;
            const auto v = mq::view(std::as_const(b));
            const bool finite = std::isfinite(bad);
            CHECK(mq::all_finite(mq::default_arch{}, v) == finite);
            CHECK(mq::all_finite_ref(v) == finite);
            CHECK_FALSE(mq::all_finite(mq::default_arch{}, v, true));
            CHECK_FALSE(mq::all_finite_ref(v, true));
        }
    }
    mq::MatrixXf z = mq::MatrixXf::Constant(2, 9, -0.0f);
    CHECK(mq::all_finite(mq::default_arch{}, mq::view(std::as_const(z)), true));
}
