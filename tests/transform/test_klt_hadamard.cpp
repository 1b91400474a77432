#include <mambaquant/calib/covariance.hpp>
#include <mambaquant/core/rng.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/quantizer.hpp>
#include <mambaquant/transform/hadamard.hpp>
#include <mambaquant/transform/klt.hpp>
#include <mambaquant/transform/klt_hadamard.hpp>

#include "mamba_reference.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {
// Centred variance of every column of x.
Eigen::VectorXd column_variances(const mq::MatrixXd& x) {
    const Eigen::RowVectorXd mu = x.colwise().mean();
    return ((x.rowwise() - mu).array().square().colwise().sum() / static_cast<double>(x.rows() - 1)).transpose();
}
double spread(const Eigen::VectorXd& v) { return v.maxCoeff() / v.minCoeff(); }

// SQNR in dB of int8 per-tensor asymmetric quantization (min/max range) of x (rounded to float,
// as activations are). An orthogonal rotation preserves the error norm, so the SQNR of x·Q equals
// that of rotating back after dequantization: the three numbers compare like for like.
double int8_sqnr_db(const mq::MatrixXd& xd) {
    using Q = mq::A8PerTensor;
    const mq::MatrixXf x = xd.cast<float>();
    const mq::QuantParams p = Q::params(x.minCoeff(), x.maxCoeff());
    double signal = 0.0, noise = 0.0;
    for (Eigen::Index i = 0; i < x.size(); ++i) {
        const float v = x.data()[i];
        const float back = mq::dequantize_value(mq::quantize_value<Q::range>(v, p), p);
        signal += double(v) * v;
        noise += double(v - back) * (v - back);
    }
    return 10.0 * std::log10(signal / noise);
}
} // namespace

TEST_CASE("KltHadamard: K·H equalizes channel variances of mamba-130m-shaped activations; H alone does not") {
    const auto profile = mqtest::load_channel_profile();
    REQUIRE_MESSAGE(profile.size() == 24, "data/mamba130m_in_proj_input_channel_stats.csv not found in the source tree");
    const mq::MatrixXd h = mq::hadamard_matrix<double>(768); // 12·64
#if defined(__SANITIZE_ADDRESS__)
    const std::vector<std::size_t> layers = {0};
    const Eigen::Index rows = 2048;
#else
    const std::vector<std::size_t> layers = {0, 12, 23};
    const Eigen::Index rows = 4096;
#endif
    for (std::size_t layer : layers) {
        CAPTURE(layer);
        REQUIRE(profile[layer].size() == 768);
        mq::Rng rng(100 + layer);
        const mq::MatrixXf x = mqtest::profile_activations(rng, profile[layer], rows, 32, 0.5);
        mq::CovarianceAccumulator acc(768);
        acc.add(x);
        const mq::KltHadamard q = mq::klt_hadamard(mq::klt_from_covariance(acc.covariance()), h);
        CHECK((q.matrix.transpose() * q.matrix - mq::MatrixXd::Identity(768, 768)).cwiseAbs().maxCoeff() < 1e-12);

        const mq::MatrixXd xd = x.cast<double>();
        const mq::MatrixXd xh = xd * h, xkh = xd * q.matrix;
        const double s_none = spread(column_variances(xd)), s_h = spread(column_variances(xh)),
                     s_kh = spread(column_variances(xkh));
        // In exact arithmetic channel j of x·K·H has variance Σ_i λ_i·H_ij² = (Σλ)/n (H² = 1/n),
        // so the spread is 1. Two rounding sources move it: the eigensolver's residual (KᵀCK is
        // diagonal up to ‖E‖ ≲ n·ε·λ_max, which reaches a channel variance as ≤ ‖E‖) and the
        // double products x·Q (relative n·ε of each entry, ≤ 2·n·ε·λ_max of a variance); the
        // ratio of two variances doubles it: spread − 1 ≤ 2·(1 + 2)·n·ε·λ_max/λ̄.
        const double n_eps = 768.0 * std::numeric_limits<double>::epsilon();
        const double kh_bound = 6.0 * n_eps * q.eigenvalues.maxCoeff() / q.eigenvalues.mean();
        MESSAGE("layer " << layer << ": channel variance max/min: none " << s_none << ", H " << s_h << ", K·H 1 + "
                         << (s_kh - 1.0) << " (bound 1 + " << kh_bound << ")");
        CHECK(s_kh - 1.0 <= kh_bound);
        CHECK(s_h > 1.5); // H alone leaves the correlated variance unequal
        // Every channel's variance is the mean eigenvalue (Σλ)/n.
        CHECK(column_variances(xkh).mean() == doctest::Approx(q.eigenvalues.mean()).epsilon(1e-9));

        const double q_none = int8_sqnr_db(xd), q_h = int8_sqnr_db(xh), q_kh = int8_sqnr_db(xkh);
        MESSAGE("layer " << layer << ": int8 per-tensor SQNR (dB): none " << q_none << ", H " << q_h << ", K·H " << q_kh);
        CHECK(q_none < q_h);
        CHECK(q_h < q_kh);
    }
}

TEST_CASE("KltHadamard: built on the library's Hadamard for m·2^k sizes, randomized form, and orthogonal") {
    mq::Rng rng(7);
    for (Eigen::Index n : {12, 48, 192}) {
        CAPTURE(n);
        mq::CovarianceAccumulator acc(static_cast<std::size_t>(n));
        acc.add(mq::MatrixXd(mqtest::gaussian(rng, 4 * n, n, 1.0) * mqtest::gaussian(rng, n, n, 1.0)));
        const mq::Klt k = mq::klt_from_covariance(acc.covariance());
        const mq::KltHadamard q = mq::klt_hadamard(k);
        CHECK((q.matrix - k.basis * mq::hadamard_matrix<double>(static_cast<std::size_t>(n))).cwiseAbs().maxCoeff() == 0.0);
        const mq::KltHadamard r = mq::klt_randomized_hadamard(k, 42);
        CHECK((r.matrix.transpose() * r.matrix - mq::MatrixXd::Identity(n, n)).cwiseAbs().maxCoeff() < 1e-12);
        CHECK(q.matrix_f().rows() == n);
    }
}

TEST_CASE("KltHadamard: bad inputs are clear errors") {
    mq::Klt k = mq::klt_from_covariance(mq::MatrixXd::Identity(10, 10));
    // 10 is not m·2^k for a supported m.
    CHECK_THROWS_AS(mq::klt_hadamard(k), mq::error);
    // A non-orthogonal "H" (an unnormalized Hadamard) and a wrong size.
    const mq::MatrixXd unnormalized = mq::hadamard_matrix<double>(12) * std::sqrt(12.0);
    mq::Klt k12 = mq::klt_from_covariance(mq::MatrixXd::Identity(12, 12));
    CHECK_THROWS_WITH_AS(mq::klt_hadamard(k12, unnormalized), doctest::Contains("not orthogonal"), mq::error);
    CHECK_THROWS_WITH_AS(mq::klt_hadamard(k12, mq::hadamard_matrix<double>(24)), doctest::Contains("expected an orthogonal [12 x 12]"),
                         mq::error);
}
