// Tests of the integer conv1d (int8 per-channel weights × 8-bit per-tensor input) against its reference.
#include <mambaquant/core/rng.hpp>
#include <mambaquant/kernels/quantized_conv1d.hpp>
#include <mambaquant/quant/quantizer.hpp>

#include "kernels/arch_test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace {

struct QConvData {
    std::size_t L, E, K;
    mq::MatrixXf x, codes, window, y; // codes: q_w [K, E] as floats
    std::vector<float> bias, w_scale, out_scale;
    mq::QuantParams input;
    bool symmetric;
    QConvData(std::size_t L_, std::size_t E_, std::size_t K_, bool sym, std::uint64_t seed) : L(L_), E(E_), K(K_), symmetric(sym) {
        mq::Rng rng(seed);
        x.resize(static_cast<Eigen::Index>(L), static_cast<Eigen::Index>(E));
        codes.resize(static_cast<Eigen::Index>(K), static_cast<Eigen::Index>(E));
        window.resize(static_cast<Eigen::Index>(K - 1), static_cast<Eigen::Index>(E));
        y.resize(static_cast<Eigen::Index>(L), static_cast<Eigen::Index>(E));
        for (auto& v : x.reshaped()) v = static_cast<float>(rng.normal());
        for (auto& v : window.reshaped()) v = static_cast<float>(rng.normal());
        for (auto& v : codes.reshaped()) v = std::round(static_cast<float>(rng.uniform() * 254.0 - 127.0));
        bias.resize(E);
        w_scale.resize(E);
        out_scale.resize(E);
        for (auto& v : bias) v = static_cast<float>(rng.normal() * 0.1);
        for (auto& v : w_scale) v = static_cast<float>(0.002 + 0.01 * rng.uniform());
        // A static range narrower than the data (±2.5 σ, asymmetric: shifted) so that clamping is exercised.
        input = sym ? mq::params_from_range<8, mq::symmetric>(-2.5f, 2.5f) : mq::params_from_range<8, mq::asymmetric>(-2.0f, 3.0f);
        for (std::size_t d = 0; d < E; ++d) out_scale[d] = w_scale[d] * input.scale;
    }
    mq::QuantizedConv1dArgs args(bool with_window, bool silu) {
        mq::QuantizedConv1dArgs q;
        q.conv.x = mq::view(x);
        q.conv.weight = mq::view(codes);
        q.conv.bias = bias.data();
        if (with_window) q.conv.window = mq::view(window);
        q.conv.silu = silu;
        q.conv.y = mq::view(y);
        q.out_scale = out_scale.data();
        q.input = input;
        q.qmin = symmetric ? -127 : 0;
        q.qmax = symmetric ? 127 : 255;
        return q;
    }
};

bool same_bits(const mq::MatrixXf& a, const mq::MatrixXf& b) { return (a.array() == b.array()).all(); }

} // namespace

TEST_CASE("quantized conv1d: SIMD equals the reference bit for bit on every arch (Mamba and odd widths, window or not, SiLU or not)") {
    // E = 1536: 16-lane blocks only on avx512vnni; 20 = 16 + 4 and 29 = 16 + 8 + 5: every channel path.
    mqtest::for_each_arch([](auto arch) {
        for (std::size_t E : {1536u, 20u, 29u})
            for (bool sym : {false, true})
                for (bool with_window : {false, true})
                    for (bool silu : {false, true}) {
                        CAPTURE(E); CAPTURE(sym); CAPTURE(with_window); CAPTURE(silu);
                        QConvData simd(37, E, 4, sym, 7), ref = simd;
                        mq::quantized_causal_conv1d(arch, simd.args(with_window, silu));
                        mq::quantized_causal_conv1d_ref(ref.args(with_window, silu));
                        CHECK(same_bits(simd.y, ref.y));
                        CHECK(same_bits(simd.window, ref.window));
                    }
    });
}

TEST_CASE("quantized conv1d: the dequantized conv Σ ŵ·x̂ + b, and chunks or decode steps equal one pass") {
    QConvData d(29, 64, 4, false, 3);
    const mq::MatrixXf window0 = d.window;
    mq::quantized_causal_conv1d_ref(d.args(true, false));
    // float64 Σ_k (q_w·s_w)·x̂ + b with x̂ = (q(x) − z)·s_x: the kernel's integer sum is exact, so
    // the only rounding is the final fma (and the float products s_w·s_x): ≤ 3 ulp of max(|y|, Σ|ŵ·x̂|).
    const auto xq = [&](float v) { return mq::dequantize_value(mq::quantize_value<mq::BitRange<8, mq::asymmetric>>(v, d.input), d.input); };
    double worst = 0.0;
    for (std::size_t t = 0; t < d.L; ++t)
        for (std::size_t e = 0; e < d.E; ++e) {
            double acc = d.bias[e], mag = std::fabs(d.bias[e]);
            for (std::size_t k = 0; k < d.K; ++k) {
                const auto src = static_cast<std::ptrdiff_t>(t + k) - static_cast<std::ptrdiff_t>(d.K - 1);
                const float xv = src >= 0 ? d.x(src, static_cast<Eigen::Index>(e))
                                          : window0(static_cast<Eigen::Index>(d.K - 1) + src, static_cast<Eigen::Index>(e));
                const double term = double(d.codes(static_cast<Eigen::Index>(k), static_cast<Eigen::Index>(e))) * d.w_scale[e] * xq(xv);
                acc += term;
                mag += std::fabs(term);
            }
            worst = std::max(worst, std::fabs(acc - d.y(static_cast<Eigen::Index>(t), static_cast<Eigen::Index>(e))) / mag);
        }
    CHECK(worst <= 3.0 * std::ldexp(1.0, -24));
    // One pass vs chunks of 5 vs one token at a time, all continuing the same window.
    QConvData one(29, 64, 4, true, 5), chunked = one, steps = one;
    mq::quantized_causal_conv1d(mq::default_arch{}, one.args(true, true));
    auto run_rows = [](QConvData& c, std::size_t t, std::size_t n) {
        auto q = c.args(true, true);
        q.conv.x = mq::ConstMatrixView<float>(c.x.data() + t * c.E, n, c.E);
        q.conv.y = mq::MatrixView<float>(c.y.data() + t * c.E, n, c.E);
        mq::quantized_causal_conv1d(mq::default_arch{}, q);
    };
    for (std::size_t t = 0; t < 29; t += 5) run_rows(chunked, t, std::min<std::size_t>(5, 29 - t));
    for (std::size_t t = 0; t < 29; ++t) run_rows(steps, t, 1);
    CHECK(same_bits(chunked.y, one.y));
    CHECK(same_bits(steps.y, one.y));
    CHECK(same_bits(chunked.window, one.window));
}
