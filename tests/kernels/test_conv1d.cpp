// Tests of the SIMD causal conv1d against its scalar reference and a float64 reference.
#include <mambaquant/core/rng.hpp>
#include <mambaquant/kernels/conv1d.hpp>

#include "kernels/arch_test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <vector>

namespace {

struct ConvData {
    std::size_t L, E, K;
    mq::MatrixXf x, w, window, y;
    std::vector<float> bias;
    ConvData(std::size_t L_, std::size_t E_, std::size_t K_, std::uint64_t seed) : L(L_), E(E_), K(K_) {
        mq::Rng rng(seed);
        x.resize(static_cast<Eigen::Index>(L), static_cast<Eigen::Index>(E));
        w.resize(static_cast<Eigen::Index>(K), static_cast<Eigen::Index>(E)); // tap-major
        window.resize(static_cast<Eigen::Index>(K - 1), static_cast<Eigen::Index>(E));
        y.resize(static_cast<Eigen::Index>(L), static_cast<Eigen::Index>(E));
        for (auto& v : x.reshaped()) v = static_cast<float>(rng.normal());
        for (auto& v : w.reshaped()) v = static_cast<float>(rng.normal() * 0.5);
        for (auto& v : window.reshaped()) v = static_cast<float>(rng.normal());
        bias.resize(E);
        for (auto& v : bias) v = static_cast<float>(rng.normal() * 0.1);
    }
    mq::CausalConv1dArgs args(bool with_window, bool silu = true) {
        mq::CausalConv1dArgs a;
        a.x = mq::view(x);
        a.weight = mq::view(w);
        a.bias = bias.data();
        if (with_window) a.window = mq::view(window);
        a.silu = silu;
        a.y = mq::view(y);
        return a;
    }
};

bool same_bits(const mq::MatrixXf& a, const mq::MatrixXf& b) { return (a.array() == b.array()).all(); }

// The SIMD conv on every arch the machine runs: the first (AVX2) into `simd`, and every wider one
// must give its bits (output and window): each channel's arithmetic is the same on every width.
void conv_all_arches(ConvData& simd, bool with_window, bool silu) {
    const ConvData input = simd;
    bool first = true;
    mqtest::for_each_arch([&](auto arch) {
        ConvData run = input;
        mq::causal_conv1d(arch, run.args(with_window, silu));
        if (first) simd = run, first = false;
        CHECK(same_bits(run.y, simd.y));
        CHECK(same_bits(run.window, simd.window));
    });
}

// float64 conv + SiLU with the magnitude Σ|w·x| + |b| (scaled by |σ|-ish through SiLU's slope ≤ 1.1).
void check_conv(std::size_t L, std::size_t E, std::size_t K, bool with_window, bool silu, std::uint64_t seed) {
    CAPTURE(L); CAPTURE(E); CAPTURE(K); CAPTURE(with_window); CAPTURE(silu);
    ConvData simd(L, E, K, seed);
    ConvData ref = simd;
    const mq::MatrixXf window0 = simd.window;
    conv_all_arches(simd, with_window, silu);
    mq::causal_conv1d_ref(ref.args(with_window, silu));
    double worst_simd = 0.0, worst_ref = 0.0;
    for (std::size_t t = 0; t < L; ++t)
        for (std::size_t d = 0; d < E; ++d) {
            double acc = simd.bias[d], mag = std::fabs(simd.bias[d]);
            for (std::size_t k = 0; k < K; ++k) {
                const std::ptrdiff_t src = static_cast<std::ptrdiff_t>(t + k) - static_cast<std::ptrdiff_t>(K - 1);
                double xv = 0.0;
                if (src >= 0) xv = simd.x(src, static_cast<Eigen::Index>(d));
                else if (with_window) xv = window0(static_cast<Eigen::Index>(K - 1) + src, static_cast<Eigen::Index>(d));
                acc += double(simd.w(static_cast<Eigen::Index>(k), static_cast<Eigen::Index>(d))) * xv;
                mag += std::fabs(double(simd.w(static_cast<Eigen::Index>(k), static_cast<Eigen::Index>(d))) * xv);
            }
            // SiLU's slope is within [-0.1, 1.1]: an error e in the sum moves SiLU by ≤ 1.1·e.
            const double want = silu ? acc / (1.0 + std::exp(-acc)) : acc;
            const double scale = silu ? 1.1 * mag + std::fabs(want) : mag;
            worst_simd = std::max(worst_simd, std::fabs(simd.y(t, d) - want) / std::max(scale, 1e-30));
            worst_ref = std::max(worst_ref, std::fabs(ref.y(t, d) - want) / std::max(scale, 1e-30));
        }
    MESSAGE("conv1d max error / magnitude: simd ", worst_simd, ", ref ", worst_ref);
    CHECK(worst_simd <= 1e-6);
    CHECK(worst_ref <= 1e-6);
    if (with_window) {
        // The window now holds the last K−1 inputs of [window0; x].
        for (std::size_t k = 0; k + 1 < K; ++k)
            for (std::size_t d = 0; d < E; ++d) {
                const std::ptrdiff_t src = static_cast<std::ptrdiff_t>(L + k) - static_cast<std::ptrdiff_t>(K - 1);
                const float want = src >= 0 ? simd.x(src, static_cast<Eigen::Index>(d))
                                            : window0(static_cast<Eigen::Index>(K - 1) + src, static_cast<Eigen::Index>(d));
                CHECK(simd.window(static_cast<Eigen::Index>(k), static_cast<Eigen::Index>(d)) == want);
                CHECK(ref.window(static_cast<Eigen::Index>(k), static_cast<Eigen::Index>(d)) == want);
            }
    }
}

} // namespace

TEST_CASE("causal_conv1d: SIMD and reference match float64, Mamba shapes") {
    check_conv(1024, 1536, 4, false, true, 1);
    check_conv(256, 5120, 4, true, true, 2);
}

TEST_CASE("causal_conv1d: odd shapes, taps, windows shorter than K−1, no SiLU") {
    check_conv(1, 13, 4, true, true, 3);   // one decode token, an AVX2 batch and a channel tail
    check_conv(1, 1536, 4, true, true, 10); // one decode token, 16-lane blocks only
    check_conv(2, 21, 4, true, false, 4);  // L < K−1: the window shifts partly
    check_conv(17, 40, 3, true, true, 5);
    check_conv(9, 16, 2, false, true, 6);
    check_conv(9, 19, 5, true, true, 7);   // K without a SIMD specialization
    check_conv(9, 19, 1, false, true, 8);  // K = 1: no history
}

TEST_CASE("causal_conv1d: SIMD and reference agree bit for bit without SiLU (same FMAs), on every arch") {
    // E = 29 = 16 + 8 + 5: a 16-lane block (avx512vnni), an AVX2 batch and a scalar tail.
    ConvData a(30, 29, 4, 9);
    ConvData b = a;
    conv_all_arches(a, true, false);
    mq::causal_conv1d_ref(b.args(true, false));
    CHECK(same_bits(a.y, b.y));
    CHECK(same_bits(a.window, b.window));
}
