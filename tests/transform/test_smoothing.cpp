#include <mambaquant/core/rng.hpp>
#include <mambaquant/transform/fusion.hpp>
#include <mambaquant/transform/smoothing.hpp>

#include "mamba_reference.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

using mqtest::LayerTrace;
using mqtest::mixer_forward;
using mqtest::rel_error;

namespace {
// The transforms compute in double and store float weights, so the transformed layer differs
// from the original only by those float32 roundings. One rounding moves each entry by ≤ u = 2^-24
// relative, RMS u/√3; through a linear map independent errors give the output a relative
// Frobenius error of that RMS (Σ x²·δw² over Σ x²·w²), so each rounded tensor adds ≈ u/√3. A
// layer holds 15 tensors (10 weights, 5 extras); added linearly, as if all aligned:
// 15·u/√3 = 5.2e-7. Measured worst 9.6e-8 (the whole chain at the end of test_fusion.cpp),
// close to the quadrature sum √15·u/√3 = 1.3e-7.
const double kTol = 15.0 * std::ldexp(1.0, -24) / std::sqrt(3.0);

std::vector<mqtest::Shapes> shapes() {
#if defined(__SANITIZE_ADDRESS__) // the -O2 run covers the Mamba shape; ASan keeps CI short
    return {{50, 100, 16, 4}};
#else
    return {{768, 1536, 16, 48}, {50, 100, 16, 4}}; // mamba-130m, and odd sizes
#endif
}
Eigen::VectorXd absmax(const mq::MatrixXd& m) { return m.cwiseAbs().colwise().maxCoeff().transpose(); }

struct Case {
    mq::MambaLayerWeights w;
    mq::MatrixXd h, out;
    LayerTrace trace;
};
Case make_case(const mqtest::Shapes& s, std::uint64_t seed) {
    mq::Rng rng(seed);
    Case c{mqtest::random_layer(s, seed), mqtest::residual_input(rng, s.d, 32), {}, {}};
    c.out = mixer_forward(c.w, c.h, &c.trace);
    return c;
}
} // namespace

TEST_CASE("smoothing_scales: s_j = max(a_j, floor)^α / max(w_j, floor)^(1−α)") {
    Eigen::VectorXd a(3), w(3);
    a << 4.0, 0.0, 1e-3;
    w << 1.0, 1.0, 0.25;
    const Eigen::VectorXd s = mq::smoothing_scales(a, w);
    CHECK(s[0] == doctest::Approx(2.0));
    CHECK(s[1] == doctest::Approx(0.1)); // dead channel: floored, not zero
    CHECK(s[2] == doctest::Approx(0.2));
    const Eigen::VectorXd s1 = mq::smoothing_scales(a, w, {1.0, 1e-2});
    CHECK(s1[0] == doctest::Approx(4.0));
    const Eigen::VectorXd s0 = mq::smoothing_scales(a, w, {0.0, 1e-2});
    CHECK(s0[0] == doctest::Approx(1.0));
}

TEST_CASE("dt shift: the dt input is centred and the layer output is unchanged") {
    for (const auto& s : shapes()) {
        CAPTURE(s.d);
        Case c = make_case(s, 21);
        const mq::MatrixXd& dt = c.trace.dt_input;
        const mq::SmoothResult r = mq::shift_dt(c.w, dt.colwise().minCoeff().transpose(), dt.colwise().maxCoeff().transpose());
        LayerTrace t;
        const mq::MatrixXd out = mixer_forward(r.weights, c.h, &t);
        CHECK(rel_error(out, c.out) < kTol);
        const Eigen::VectorXd lo = t.dt_input.colwise().minCoeff(), hi = t.dt_input.colwise().maxCoeff();
        CHECK(((lo + hi).cwiseAbs().array() <= 1e-5 * (hi - lo).array()).all());
        CHECK(r.weights.dt_shift.cast<double>().isApprox(r.scale, 1e-7));
    }
}

TEST_CASE("S2 (S-SiLU): out_proj input smoothed through the gate, output unchanged, ranges balanced") {
    for (const auto& s : shapes()) {
        CAPTURE(s.d);
        Case c = make_case(s, 22);
        const mq::SmoothResult r = mq::smooth_gate(c.w, absmax(c.trace.out_proj_input));
        LayerTrace t;
        const mq::MatrixXd out = mixer_forward(r.weights, c.h, &t);
        const double err = rel_error(out, c.out);
        MESSAGE("S2 D=" << s.d << ": relative output error " << err);
        CHECK(err < kTol);
        CHECK((r.weights.gate_scale.cast<double>() - r.scale).cwiseAbs().maxCoeff() <= 1e-6 * r.scale.maxCoeff());
        // a' = a/s exactly (to rounding) ...
        CHECK(rel_error(t.out_proj_input, c.trace.out_proj_input.array().rowwise() / r.scale.transpose().array()) < kTol);
        // ... and with α = 0.5, max|a'_e| = max|W'_out[:, e]| = √(max|a_e|·max|W_e|) where no floor applies.
        const Eigen::VectorXd act = absmax(t.out_proj_input), wmax = absmax(r.weights.out_proj.cast<double>());
        const Eigen::VectorXd act0 = absmax(c.trace.out_proj_input), w0 = absmax(c.w.out_proj.cast<double>());
        int balanced = 0;
        for (Eigen::Index e = 0; e < act.size(); ++e) {
            if (act0[e] < 1e-2 || w0[e] < 1e-2) continue;
            CHECK(act[e] == doctest::Approx(wmax[e]).epsilon(1e-5));
            ++balanced;
        }
        CHECK(balanced > act.size() / 2);
    }
}

TEST_CASE("S4 (B/C smoothing): zero initial state, output unchanged, state and C balanced") {
    for (const auto& s : shapes()) {
        CAPTURE(s.d);
        Case c = make_case(s, 23);
        const mq::SmoothResult r = mq::smooth_state(c.w, c.trace.state_absmax, absmax(c.trace.c));
        LayerTrace t;
        const mq::MatrixXd out = mixer_forward(r.weights, c.h, &t);
        CHECK(rel_error(out, c.out) < kTol);
        // state' = state/s and C' = C·s, so max|state'_n| = max|C'_n| (no clamp active here).
        CHECK(((r.scale.array() > 1e-2) && (r.scale.array() < 100.0)).all());
        const Eigen::VectorXd cmax = absmax(t.c);
        for (Eigen::Index n = 0; n < cmax.size(); ++n) CHECK(t.state_absmax[n] == doctest::Approx(cmax[n]).epsilon(1e-5));
    }
}

TEST_CASE("S4 (B/C smoothing): a carried state enters through the first-step addcmul; caches chain") {
    for (const auto& s : shapes()) {
        CAPTURE(s.d);
        Case c = make_case(s, 24);
        mq::Rng rng(240);
        const mq::MatrixXd state0 = mqtest::gaussian(rng, s.e, s.n, 0.5);
        const mq::SmoothResult r = mq::smooth_state(c.w, c.trace.state_absmax, absmax(c.trace.c));
        mq::MatrixXd final0, final1;
        const mq::MatrixXd out0 = mixer_forward(c.w, c.h, nullptr, &state0, true, &final0);
        // The smoothed layer receives the state in the original units: log dA'_0 = Δ_0·A + log(1/s).
        const mq::MatrixXd out1 = mixer_forward(r.weights, c.h, nullptr, &state0, true, &final1);
        CHECK(rel_error(out1, out0) < kTol);
        CHECK(rel_error(final1, final0.array().rowwise() / r.scale.transpose().array()) < kTol);
        // Without the absorption the carried state is wrong by the scale: the test can fail.
        const mq::MatrixXd wrong = mixer_forward(r.weights, c.h, nullptr, &state0, false);
        CHECK(rel_error(wrong, out0) > 1e-3);
        // The next chunk continues from each layer's own cache (no absorption needed).
        const mq::MatrixXd h2 = mqtest::residual_input(rng, s.d, 8);
        const mq::MatrixXd next0 = mixer_forward(c.w, h2, nullptr, &final0, false);
        const mq::MatrixXd next1 = mixer_forward(r.weights, h2, nullptr, &final1, false);
        CHECK(rel_error(next1, next0) < kTol);
    }
}

TEST_CASE("S5 (x_proj dt rows → dt_proj) and S7 (in_proj x rows → conv1d): output unchanged") {
    for (const auto& s : shapes()) {
        CAPTURE(s.d);
        Case c = make_case(s, 25);
        // S5 after the dt shift, on the shifted dt input's range (dt_shift is rescaled too).
        const mq::MatrixXd& dt = c.trace.dt_input;
        const mq::MambaLayerWeights shifted =
            mq::shift_dt(c.w, dt.colwise().minCoeff().transpose(), dt.colwise().maxCoeff().transpose()).weights;
        LayerTrace ts;
        (void)mixer_forward(shifted, c.h, &ts);
        const mq::SmoothResult s5 = mq::smooth_dt(shifted, absmax(ts.dt_input));
        LayerTrace t5;
        CHECK(rel_error(mixer_forward(s5.weights, c.h, &t5), c.out) < kTol);
        CHECK(rel_error(t5.dt_input, ts.dt_input.array().rowwise() / s5.scale.transpose().array()) < kTol);

        const mq::SmoothResult s7 = mq::smooth_conv(c.w, absmax(c.trace.conv_input));
        LayerTrace t7;
        CHECK(rel_error(mixer_forward(s7.weights, c.h, &t7), c.out) < kTol);
        CHECK(rel_error(t7.conv_input, c.trace.conv_input.array().rowwise() / s7.scale.transpose().array()) < kTol);
        CHECK(s7.weights.conv_b == c.w.conv_b);

        // The SmoothQuant baseline: norm → in_proj.
        const mq::SmoothResult s1 = mq::smooth_norm(c.w, absmax(c.trace.in_proj_input));
        CHECK(rel_error(mixer_forward(s1.weights, c.h), c.out) < kTol);
    }
}

TEST_CASE("Smoothing: bad inputs are clear errors") {
    const mq::MambaLayerWeights w = mqtest::random_layer({50, 100, 16, 4}, 1);
    Eigen::VectorXd s = Eigen::VectorXd::Ones(100);
    s[3] = 0.0;
    CHECK_THROWS_WITH_AS(mq::apply_gate_smoothing(w, s), doctest::Contains("scale[3] = 0 (must be finite and > 0)"), mq::error);
    s[3] = std::numeric_limits<double>::infinity();
    CHECK_THROWS_WITH_AS(mq::apply_conv_smoothing(w, s), doctest::Contains("scale[3] = inf"), mq::error);
    s[3] = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_WITH_AS(mq::apply_gate_smoothing(w, s), doctest::Contains("scale[3] = nan"), mq::error);
    CHECK_THROWS_WITH_AS(mq::apply_dt_smoothing(w, Eigen::VectorXd::Ones(5)), doctest::Contains("scale has 5 entries, expected 4"),
                         mq::error);
    CHECK_THROWS_WITH_AS(mq::apply_state_smoothing(w, Eigen::VectorXd::Ones(8)), doctest::Contains("expected 16"), mq::error);

    // Statistics that do not match the weights, or are not finite and non-negative.
    CHECK_THROWS_WITH_AS(mq::smooth_gate(w, Eigen::VectorXd::Ones(99)), doctest::Contains("weight max|W| has 100 channels, expected 99"),
                         mq::error);
    CHECK_THROWS_WITH_AS(mq::smooth_dt(w, Eigen::VectorXd::Ones(48)), doctest::Contains("smooth_dt (S5)"), mq::error);
    Eigen::VectorXd nan_stat = Eigen::VectorXd::Ones(100);
    nan_stat[7] = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_WITH_AS(mq::smooth_conv(w, nan_stat), doctest::Contains("activation max|X|[7] = nan"), mq::error);
    CHECK_THROWS_WITH_AS(mq::smooth_state(w, Eigen::VectorXd::Ones(15), Eigen::VectorXd::Ones(16)),
                         doctest::Contains("expected d_state = 16"), mq::error);
    CHECK_THROWS_WITH_AS(mq::smoothing_scales(Eigen::VectorXd::Ones(2), Eigen::VectorXd::Ones(2), {1.5, 1e-2}),
                         doctest::Contains("alpha must be in [0, 1], got 1.5"), mq::error);
    CHECK_THROWS_WITH_AS(mq::smoothing_scales(Eigen::VectorXd::Ones(2), Eigen::VectorXd::Ones(2), {0.5, 0.0}),
                         doctest::Contains("floor must be finite and > 0"), mq::error);
    CHECK_THROWS_WITH_AS(mq::shift_dt(w, Eigen::VectorXd::Ones(4), Eigen::VectorXd::Zero(4)),
                         doctest::Contains("channel 0 has min 1, max 0"), mq::error);
    CHECK_THROWS_WITH_AS(mq::apply_dt_shift(w, Eigen::VectorXd::Ones(3)), doctest::Contains("expected dt_rank = 4"), mq::error);

    // Order: S2 before R2, S4 before R4.
    const mq::MambaLayerWeights r2 = mq::rotate_out_proj_input(w, mqtest::random_orthogonal(100, 5));
    CHECK_THROWS_WITH_AS(mq::apply_gate_smoothing(r2, Eigen::VectorXd::Ones(100)), doctest::Contains("apply S2 before R2"), mq::error);
    const mq::MambaLayerWeights r4 = mq::rotate_state(w, mqtest::random_orthogonal(16, 6));
    CHECK_THROWS_WITH_AS(mq::apply_state_smoothing(r4, Eigen::VectorXd::Ones(16)), doctest::Contains("apply S4 before R4"), mq::error);

    // Weights whose tensors disagree.
    mq::MambaLayerWeights broken = w;
    broken.in_proj.resize(10, 10);
    CHECK_THROWS_WITH_AS(mq::apply_gate_smoothing(broken, Eigen::VectorXd::Ones(100)),
                         doctest::Contains("in_proj: expected shape [200 x 50], got [10 x 10]"), mq::error);
}
