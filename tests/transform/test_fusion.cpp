#include <mambaquant/calib/covariance.hpp>
#include <mambaquant/core/rng.hpp>
#include <mambaquant/transform/fusion.hpp>
#include <mambaquant/transform/hadamard.hpp>
#include <mambaquant/transform/klt.hpp>
#include <mambaquant/transform/klt_hadamard.hpp>
#include <mambaquant/transform/smoothing.hpp>

#include "mamba_reference.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <optional>
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

struct FusionShape {
    mqtest::Shapes s;
    bool hadamard; // K·H with the library's Hadamard; otherwise K·(seeded random orthogonal)
};
std::vector<FusionShape> fusion_shapes() {
    return {
#if !defined(__SANITIZE_ADDRESS__) // the -O2 run covers the Mamba shape; ASan keeps CI short
        {{768, 1536, 16, 48}, true},  // mamba-130m: 768 = 12·64, 1536 = 12·128, 48 = 12·4
#endif
        {{192, 384, 16, 12}, true},   // Vim-S-like, not a power of two: 12·16, 12·32, 12
        {{50, 100, 16, 4}, false}};   // no Hadamard exists: the fusions take any orthogonal Q
}

Eigen::VectorXd absmax(const mq::MatrixXd& m) { return m.cwiseAbs().colwise().maxCoeff().transpose(); }

// The rotation a site would use: Q = K·H from the covariance of `rows`, H the library's Hadamard
// (or a seeded random orthogonal matrix where no Hadamard of that size exists).
mq::MatrixXd klt_rotation(const mq::MatrixXd& rows, bool hadamard, std::uint64_t seed) {
    mq::CovarianceAccumulator acc(static_cast<std::size_t>(rows.cols()));
    acc.add(rows);
    const mq::Klt k = mq::klt_from_covariance(acc.covariance());
    return hadamard ? mq::klt_hadamard(k).matrix : mq::klt_hadamard(k, mqtest::random_orthogonal(rows.cols(), seed)).matrix;
}
mq::MatrixXd plain_rotation(Eigen::Index n, bool hadamard, std::uint64_t seed) {
    return hadamard ? mq::hadamard_matrix<double>(static_cast<std::size_t>(n)) : mqtest::random_orthogonal(n, seed);
}

struct Case {
    mq::MambaLayerWeights w;
    mq::MatrixXd h, out;
    LayerTrace trace;
};
Case make_case(const mqtest::Shapes& s, std::uint64_t seed, Eigen::Index tokens = 48) {
    mq::Rng rng(seed);
    Case c{mqtest::random_layer(s, seed), mqtest::residual_input(rng, s.d, tokens), {}, {}};
    c.out = mixer_forward(c.w, c.h, &c.trace);
    return c;
}
} // namespace

TEST_CASE("fold_norm: γ folded into in_proj, output unchanged") {
    for (const auto& f : fusion_shapes()) {
        CAPTURE(f.s.d);
        Case c = make_case(f.s, 31);
        const mq::MambaLayerWeights w = mq::fold_norm(c.w);
        CHECK((w.norm.array() == 1.0f).all());
        CHECK(rel_error(mixer_forward(w, c.h), c.out) < kTol);
    }
}

TEST_CASE("R1 (residual stream, Q1 = K1·H): one layer computes the rotated output of the original") {
    for (const auto& f : fusion_shapes()) {
        CAPTURE(f.s.d);
        Case c = make_case(f.s, 32);
        const mq::MambaLayerWeights folded = mq::fold_norm(c.w);
        LayerTrace t;
        (void)mixer_forward(folded, c.h, &t);
        const mq::MatrixXd q1 = klt_rotation(t.in_proj_input, f.hadamard, 320);
        const mq::MambaLayerWeights r = mq::rotate_residual(folded, q1);
        // Stream in rotated (h·Q1), stream out rotated: y'·W'_outᵀ = (y·W_outᵀ)·Q1.
        const double err = rel_error(mixer_forward(r, c.h * q1), c.out * q1);
        MESSAGE("R1 D=" << f.s.d << ": relative output error " << err);
        CHECK(err < kTol);
        CHECK_THROWS_WITH_AS(mq::rotate_residual(c.w, q1), doctest::Contains("fold it into in_proj first"), mq::error);
    }
}

TEST_CASE("R1 on a whole model: embeddings, layers, final norm, untied LM head give the same logits") {
    for (const auto& f : fusion_shapes()) {
        CAPTURE(f.s.d);
        mq::Rng rng(33);
        mq::MambaWeights m;
        m.embedding = mqtest::gaussian(rng, 64, f.s.d, 1.0).cast<float>();
        for (std::uint64_t i = 0; i < 2; ++i) m.layers.push_back(mqtest::random_layer(f.s, 330 + i));
        m.norm_f.resize(f.s.d);
        for (int j = 0; j < f.s.d; ++j) m.norm_f[j] = static_cast<float>(0.5 + rng.uniform());
        m.tied = true;
        std::vector<int> tokens;
        for (int t = 0; t < 24; ++t) tokens.push_back(static_cast<int>(rng() % 64));
        const mq::MatrixXd logits = mqtest::model_forward(m, tokens);

        // K1 from the embedding rows seen by the first layer, normalized as in_proj sees them.
        LayerTrace t;
        mq::MatrixXd h0(static_cast<Eigen::Index>(tokens.size()), f.s.d);
        for (std::size_t i = 0; i < tokens.size(); ++i) h0.row(static_cast<Eigen::Index>(i)) = m.embedding.row(tokens[i]).cast<double>();
        (void)mixer_forward(mq::fold_norm(m.layers[0]), h0, &t);
        const mq::MatrixXd q1 = klt_rotation(t.in_proj_input, f.hadamard, 331);

        const mq::MambaWeights r = mq::rotate_residual(m, q1);
        CHECK_FALSE(r.tied);
        CHECK((r.norm_f.array() == 1.0f).all());
        const double err = rel_error(mqtest::model_forward(r, tokens), logits);
        MESSAGE("R1 model D=" << f.s.d << ": relative logits error " << err);
        CHECK(err < kTol);
    }
}

TEST_CASE("R5 (dt path, Q5 = K5·H_R), R2 (online H at the out_proj input), R4 (online H on the state)") {
    for (const auto& f : fusion_shapes()) {
        CAPTURE(f.s.d);
        Case c = make_case(f.s, 34);
        const mq::MatrixXd q5 = klt_rotation(c.trace.dt_input, f.hadamard, 340);
        const mq::MambaLayerWeights r5 = mq::rotate_dt_path(c.w, q5);
        LayerTrace t5;
        CHECK(rel_error(mixer_forward(r5, c.h, &t5), c.out) < kTol);
        CHECK(rel_error(t5.dt_input, c.trace.dt_input * q5) < kTol); // the dt input arrives rotated

        const mq::MatrixXd h_e = plain_rotation(f.s.e, f.hadamard, 341);
        const mq::MambaLayerWeights r2 = mq::rotate_out_proj_input(c.w, h_e);
        CHECK(r2.out_rotation.rows() == f.s.e);
        CHECK(rel_error(mixer_forward(r2, c.h), c.out) < kTol);

        const mq::MatrixXd h_n = plain_rotation(f.s.n, f.hadamard, 342);
        const mq::MambaLayerWeights r4 = mq::rotate_state(c.w, h_n);
        LayerTrace t4;
        CHECK(rel_error(mixer_forward(r4, c.h, &t4), c.out) < kTol);
        CHECK(rel_error(t4.c, c.trace.c * h_n) < kTol); // C arrives rotated
    }
}

TEST_CASE("MambaQuant end to end on one layer: dt shift → S2, S4, S5, S7 → R1, R2, R4, R5 keeps the output") {
    for (const auto& f : fusion_shapes()) {
        CAPTURE(f.s.d);
        Case c = make_case(f.s, 35);
        mq::MambaLayerWeights w = c.w;
        LayerTrace t;
        // Each step calibrates on the layer as transformed so far (the order of METHOD.md §4).
        (void)mixer_forward(w, c.h, &t);
        w = mq::shift_dt(w, t.dt_input.colwise().minCoeff().transpose(), t.dt_input.colwise().maxCoeff().transpose()).weights;
        (void)mixer_forward(w, c.h, &t);
        w = mq::smooth_gate(w, absmax(t.out_proj_input)).weights;
        w = mq::smooth_state(w, t.state_absmax, absmax(t.c)).weights;
        (void)mixer_forward(w, c.h, &t);
        w = mq::smooth_dt(w, absmax(t.dt_input)).weights;
        w = mq::smooth_conv(w, absmax(t.conv_input)).weights;
        w = mq::fold_norm(w);
        (void)mixer_forward(w, c.h, &t);
        const mq::MatrixXd q1 = klt_rotation(t.in_proj_input, f.hadamard, 350);
        const mq::MatrixXd q5 = klt_rotation(t.dt_input, f.hadamard, 351);
        w = mq::rotate_residual(w, q1);
        w = mq::rotate_out_proj_input(w, plain_rotation(f.s.e, f.hadamard, 352));
        w = mq::rotate_state(w, plain_rotation(f.s.n, f.hadamard, 353));
        w = mq::rotate_dt_path(w, q5);
        const double err = rel_error(mixer_forward(w, c.h * q1), c.out * q1);
        MESSAGE("all transforms D=" << f.s.d << ": relative output error " << err);
        CHECK(err < kTol);
        // The final out_proj is Q1ᵀ·W_out·diag(s)·H (METHOD.md §4): its columns are no longer the original's.
        CHECK(rel_error(w.out_proj.cast<double>(), c.w.out_proj.cast<double>()) > 0.5);
    }
}

TEST_CASE("Fusion: bad rotations are clear errors") {
    const mq::MambaLayerWeights w = mq::fold_norm(mqtest::random_layer({50, 100, 16, 4}, 2));
    CHECK_THROWS_WITH_AS(mq::rotate_residual(w, mqtest::random_orthogonal(49, 1)),
                         doctest::Contains("expected an orthogonal [50 x 50] matrix, got [49 x 49]"), mq::error);
    mq::MatrixXd not_orthogonal = mqtest::random_orthogonal(50, 1);
    not_orthogonal(3, 4) += 0.1;
    CHECK_THROWS_WITH_AS(mq::rotate_residual(w, not_orthogonal), doctest::Contains("Q1: not orthogonal"), mq::error);
    CHECK_THROWS_WITH_AS(mq::rotate_dt_path(w, mq::MatrixXd::Identity(4, 4) * 2.0), doctest::Contains("Q5: not orthogonal"),
                         mq::error);
    CHECK_THROWS_WITH_AS(mq::rotate_out_proj_input(w, mq::MatrixXd::Identity(50, 50)), doctest::Contains("R2): H: expected an orthogonal [100 x 100]"),
                         mq::error);
    mq::MatrixXd nan = mq::MatrixXd::Identity(16, 16);
    nan(0, 0) = std::nan("");
    CHECK_THROWS_WITH_AS(mq::rotate_state(w, nan), doctest::Contains("non-finite"), mq::error);
    mq::MambaWeights m;
    m.embedding = mq::MatrixXf::Ones(8, 50);
    m.norm_f = Eigen::VectorXf::Ones(49);
    CHECK_THROWS_WITH_AS(mq::rotate_residual(m, mqtest::random_orthogonal(50, 1)), doctest::Contains("norm_f: expected length 50, got 49"),
                         mq::error);
}
