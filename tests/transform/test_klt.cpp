#include <mambaquant/calib/covariance.hpp>
#include <mambaquant/core/rng.hpp>
#include <mambaquant/transform/klt.hpp>
#include <mambaquant/transform/rotation.hpp>

#include "mamba_reference.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {
// The backends this build can run: Eigen always, LAPACK's drivers when compiled in.
std::vector<mq::EigenBackend> available_backends() {
    std::vector<mq::EigenBackend> out{mq::EigenBackend::automatic, mq::EigenBackend::eigen};
    if (mq::lapack_available) {
        out.push_back(mq::EigenBackend::lapack_mrrr);
        out.push_back(mq::EigenBackend::lapack_divide_and_conquer);
    }
    return out;
}
} // namespace

TEST_CASE("klt: K·Λ·Kᵀ reconstructs the covariance, K is orthogonal, λ descending, signs fixed") {
    mq::Rng rng(11);
    for (const mq::EigenBackend backend : available_backends())
    for (Eigen::Index d : {1, 7, 96}) {
        CAPTURE(mq::to_string(backend));
        CAPTURE(d);
        const mq::MatrixXd g = mqtest::gaussian(rng, 3 * d + 5, d, 1.0);
        mq::CovarianceAccumulator acc(static_cast<std::size_t>(d));
        acc.add(g);
        const mq::MatrixXd cov = acc.covariance();
        const mq::Klt k = mq::klt_from_covariance(cov, backend);
        REQUIRE(k.dim() == static_cast<std::size_t>(d));
        const mq::MatrixXd recon = k.basis * k.eigenvalues.asDiagonal() * k.basis.transpose();
        CHECK((recon - cov).cwiseAbs().maxCoeff() < 1e-12 * cov.cwiseAbs().maxCoeff() * d);
        CHECK((k.basis.transpose() * k.basis - mq::MatrixXd::Identity(d, d)).cwiseAbs().maxCoeff() < 1e-12 * d);
        for (Eigen::Index j = 1; j < d; ++j) CHECK(k.eigenvalues[j - 1] >= k.eigenvalues[j]);
        for (Eigen::Index j = 0; j < d; ++j) {
            Eigen::Index at = 0;
            k.basis.col(j).cwiseAbs().maxCoeff(&at);
            CHECK(k.basis(at, j) > 0.0);
        }
        // Deterministic: the same covariance gives the same bits.
        const mq::Klt again = mq::klt_from_covariance(cov, backend);
        CHECK(again.basis == k.basis);
        CHECK(again.eigenvalues == k.eigenvalues);
    }
}

TEST_CASE("klt: the sign rule makes the basis independent of the eigensolver's sign choice") {
    // A diagonal covariance with distinct entries has eigenvectors ±e_i: the rule picks +e_i, in
    // descending order of the diagonal.
    mq::MatrixXd c = mq::MatrixXd::Zero(4, 4);
    c.diagonal() << 1.0, 4.0, 2.0, 3.0;
    const mq::Klt k = mq::klt_from_covariance(c);
    CHECK(k.eigenvalues[0] == doctest::Approx(4.0));
    CHECK(k.eigenvalues[3] == doctest::Approx(1.0));
    mq::MatrixXd expected = mq::MatrixXd::Zero(4, 4);
    expected(1, 0) = expected(3, 1) = expected(2, 2) = expected(0, 3) = 1.0;
    CHECK((k.basis - expected).cwiseAbs().maxCoeff() < 1e-15);

    mq::MatrixXd flipped = mq::MatrixXd::Identity(3, 3);
    flipped.col(1) *= -1.0;
    mq::fix_eigenvector_signs(flipped);
    CHECK(flipped == mq::MatrixXd::Identity(3, 3));
}

TEST_CASE("klt: every backend finds the known spectrum and eigenvectors of a built covariance") {
    // C = Q·diag(1, 2, …, d)·Qᵀ with Q a seeded orthogonal matrix: the eigenvalues are known
    // exactly (d, d − 1, …, 1 descending) and the eigenvector of λ = i + 1 is ±Q's column i.
    // A backward-stable solver is exact for C + E with ‖E‖ ≲ d·ε·‖C‖ ≈ 64·2.2e-16·64 ≈ 1e-12, so
    // |λ̂ − λ| ≤ ‖E‖ (Weyl) and each eigenvector moves by ≲ ‖E‖/gap with gap ≥ 1 (Davis–Kahan);
    // building C in floating point adds an error of the same order. Bounds: 1e-12·d for λ, 1e-11
    // per entry of the basis.
    const Eigen::Index d = 64;
    const mq::MatrixXd q = mq::random_orthogonal<double>(static_cast<std::size_t>(d), 5);
    Eigen::VectorXd spectrum(d);
    for (Eigen::Index i = 0; i < d; ++i) spectrum[i] = static_cast<double>(i + 1);
    const mq::MatrixXd cov = q * spectrum.asDiagonal() * q.transpose();
    const mq::MatrixXd symmetric = 0.5 * (cov + cov.transpose());
    Eigen::VectorXd want_values(d);
    mq::MatrixXd want_basis(d, d);
    for (Eigen::Index j = 0; j < d; ++j) {
        want_values[j] = static_cast<double>(d - j);
        want_basis.col(j) = q.col(d - 1 - j);
        // The sign rule, written out: the largest-|entry| of each column positive.
        Eigen::Index at = 0;
        want_basis.col(j).cwiseAbs().maxCoeff(&at);
        if (want_basis(at, j) < 0.0) want_basis.col(j) *= -1.0;
    }
    for (const mq::EigenBackend backend : available_backends()) {
        CAPTURE(mq::to_string(backend));
        const mq::Klt k = mq::klt_from_covariance(symmetric, backend);
        CHECK((k.eigenvalues - want_values).cwiseAbs().maxCoeff() < 1e-12 * d);
        CHECK((k.basis - want_basis).cwiseAbs().maxCoeff() < 1e-11);
    }
    INFO("LAPACK backends compiled in: ", mq::lapack_available);
}

TEST_CASE("klt: LAPACK by name works where it is linked and is a clear error where it is not") {
    const mq::MatrixXd c = mq::MatrixXd(Eigen::Vector2d(1.0, 3.0).asDiagonal());
    for (const mq::EigenBackend backend : {mq::EigenBackend::lapack_mrrr, mq::EigenBackend::lapack_divide_and_conquer}) {
        CAPTURE(mq::to_string(backend));
        if (mq::lapack_available) {
            const mq::Klt k = mq::klt_from_covariance(c, backend);
            CHECK(k.eigenvalues[0] == doctest::Approx(3.0).epsilon(1e-15));
            CHECK(k.eigenvalues[1] == doctest::Approx(1.0).epsilon(1e-15));
        } else {
            CHECK_THROWS_WITH_AS(mq::klt_from_covariance(c, backend), doctest::Contains("needs LAPACKE"), mq::error);
        }
    }
}

TEST_CASE("klt: bad covariances are clear errors") {
    CHECK_THROWS_WITH_AS(mq::klt_from_covariance(mq::MatrixXd(0, 0)), doctest::Contains("square and non-empty"), mq::error);
    CHECK_THROWS_WITH_AS(mq::klt_from_covariance(mq::MatrixXd::Zero(3, 4)), doctest::Contains("got [3 x 4]"), mq::error);
    mq::MatrixXd c = mq::MatrixXd::Identity(3, 3);
    c(1, 2) = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_WITH_AS(mq::klt_from_covariance(c), doctest::Contains("non-finite"), mq::error);
    c = mq::MatrixXd::Identity(3, 3);
    c(0, 2) = 0.5;
    CHECK_THROWS_WITH_AS(mq::klt_from_covariance(c), doctest::Contains("not symmetric"), mq::error);
}
