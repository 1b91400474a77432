#include <mambaquant/calib/calibrate.hpp>
#include <mambaquant/nn/mamba_model.hpp>
#include <mambaquant/nn/quantized_model.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

namespace {
mq::MambaConfig tiny_config() {
    mq::MambaConfig c;
    c.d_model = 32;
    c.n_layer = 2;
    c.vocab_size = 64;
    c.padded_vocab = 64;
    c.d_state = 16;
    c.d_conv = 4;
    c.d_inner = 64;
    c.dt_rank = 2;
    return c;
}
std::vector<std::uint32_t> some_tokens(std::size_t n, std::uint32_t seed) {
    std::vector<std::uint32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::uint32_t>((i * 2654435761u + seed) % 61u);
    return t;
}
// Records x, the raw Δ and B of layer 0 (to recompute the state independently in double).
struct Recorder final : mq::ActivationTap {
    mq::MatrixXf x, delta, B;
    void on_activation(std::size_t layer, mq::TapPoint p, mq::ConstMatrixView<float> v) override {
        if (layer != 0) return;
        if (p == mq::TapPoint::x_proj_input) x = mq::as_eigen(v);
        if (p == mq::TapPoint::scan_delta) delta = mq::as_eigen(v);
        if (p == mq::TapPoint::scan_B) B = mq::as_eigen(v);
    }
};
} // namespace

TEST_CASE("calibrate: per-state-index max|state| equals a plain double-precision scan") {
    const auto model = mq::MambaModel::random(tiny_config(), 5);
    const auto w = mq::mamba_weights(model);
    const auto tokens = some_tokens(96, 1);
    const std::vector<std::span<const std::uint32_t>> windows{std::span<const std::uint32_t>(tokens)};
    mq::CalibrationPlan plan;
    plan.state = true;
    const auto stats = mq::calibrate(model, windows, plan, &w);
    Recorder rec;
    auto st = model.make_state();
    (void)model.prefill(tokens, st, mq::Logits::none, nullptr, &rec);
    const auto& l = w.layers[0];
    const Eigen::Index L = rec.x.rows(), E = rec.x.cols(), N = rec.B.cols();
    Eigen::MatrixXd state = Eigen::MatrixXd::Zero(E, N);
    Eigen::VectorXd absmax = Eigen::VectorXd::Zero(N);
    for (Eigen::Index t = 0; t < L; ++t)
        for (Eigen::Index e = 0; e < E; ++e) {
            const double d = std::log1p(std::exp(double(rec.delta(t, e)) + double(l.dt_bias[e])));
            for (Eigen::Index n = 0; n < N; ++n) {
                state(e, n) = std::exp(-d * std::exp(double(l.A_log(e, n)))) * state(e, n) + d * rec.B(t, n) * rec.x(t, e);
                absmax[n] = std::max(absmax[n], std::fabs(state(e, n)));
            }
        }
    const Eigen::VectorXd got = stats.at(mq::site_key(0, "scan_state")).channels().absmax();
    // float recurrence vs double: ~L·ε_float relative drift at most (96 steps · 6e-8 ≈ 6e-6); 1e-4 leaves room for exp.
    for (Eigen::Index n = 0; n < N; ++n) CHECK(got[n] == doctest::Approx(absmax[n]).epsilon(1e-4));
    // Every site of every layer and the LM head input are there.
    CHECK(stats.contains("layers.1.out_proj_input"));
    CHECK(stats.contains("lm_head_input"));
    CHECK(stats.at("layers.0.in_proj_input").rows() == 96u);
}

TEST_CASE("calibrate: shards merged equal one run; fixed windows") {
    const auto model = mq::MambaModel::random(tiny_config(), 6);
    const auto tokens = some_tokens(400, 2);
    const auto windows = mq::calibration_windows(tokens, 64, 4);
    CHECK(windows[0].data() == tokens.data());
    CHECK(windows[3].data() + 64 == tokens.data() + tokens.size());
    mq::CalibrationPlan plan;
    plan.covariance[static_cast<std::size_t>(mq::TapPoint::in_proj_input)] = true;
    const auto all = mq::calibrate(model, windows, plan, nullptr);
    auto a = mq::calibrate(model, std::span(windows).first(2), plan, nullptr);
    a.merge(mq::calibrate(model, std::span(windows).last(2), plan, nullptr));
    for (const auto& [key, s] : all.sites()) {
        const auto& t = a.at(key);
        CHECK(s.channels().min() == t.channels().min());
        CHECK(s.channels().max() == t.channels().max());
        CHECK(s.percentile_range() == t.percentile_range());
    }
    const auto ca = all.at("layers.0.in_proj_input").covariance().covariance();
    const auto cb = a.at("layers.0.in_proj_input").covariance().covariance();
    CHECK((ca - cb).cwiseAbs().maxCoeff() <= 1e-9 * ca.cwiseAbs().maxCoeff());
}

TEST_CASE("calibrate: bad input") {
    const auto tokens = some_tokens(100, 3);
    CHECK_THROWS_WITH_AS(mq::calibration_windows(tokens, 128, 2), doctest::Contains("shorter than one window"), mq::error);
    // Finite but absurd weights overflow an activation to ±∞ (x ~ 1e20 times x_proj rows ~ 1e20):
    // calibration names the site where the non-finite value first shows up.
    auto w = mq::mamba_weights(mq::MambaModel::random(tiny_config(), 7));
    w.layers[1].in_proj *= 1e20f;
    w.layers[1].x_proj *= 1e20f;
    const auto bad = mq::build_quantized_model(w, tiny_config(), mq::QuantizationConfig{});
    const auto windows = mq::calibration_windows(tokens, 32, 1);
    CHECK_THROWS_WITH_AS(mq::calibrate(bad, windows, mq::CalibrationPlan{}, nullptr),
                         doctest::Contains("layers.1.dt_proj_input"), mq::error);
}
