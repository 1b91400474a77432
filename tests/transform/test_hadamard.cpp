#include <mambaquant/transform/hadamard.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <string>

TEST_CASE("unsupported sizes are a clear error naming the size and the factors") {
    CHECK_THROWS_AS(mq::decompose_hadamard_size(100), mq::error);
    CHECK_THROWS_WITH(mq::decompose_hadamard_size(100),
                      doctest::Contains("unsupported Hadamard dimension 100"));
    CHECK_THROWS_WITH(mq::decompose_hadamard_size(100), doctest::Contains("156, 172}"));
    CHECK_THROWS_AS(mq::decompose_hadamard_size(0), mq::error);
    CHECK_THROWS_AS(mq::decompose_hadamard_size(168), mq::error);
    CHECK_THROWS_AS(mq::hadamard_matrix(6), mq::error);
    CHECK_THROWS_WITH(mq::hadamard_block(24), doctest::Contains("block order 24"));
    CHECK_FALSE(mq::try_decompose_hadamard_size(100).has_value());
}

TEST_CASE("hadamard_matrix is orthonormal with entries ±1/√n") {
    for (std::size_t n : {1u, 2u, 8u, 12u, 48u, 80u, 96u, 104u, 172u, 312u, 344u, 768u}) {
        CAPTURE(n);
        const mq::MatrixXd H = mq::hadamard_matrix(n);
        REQUIRE(H.rows() == static_cast<Eigen::Index>(n));
        const double e = 1.0 / std::sqrt(static_cast<double>(n));
        CHECK((H.array().abs() - e).abs().maxCoeff() < 1e-15);
        const mq::MatrixXd G = H * H.transpose();
        CHECK((G - mq::MatrixXd::Identity(G.rows(), G.cols())).cwiseAbs().maxCoeff() < 1e-12);
    }
}

TEST_CASE("hadamard_matrix is H_m ⊗ H_2^k in the documented element order") {
    const mq::HadamardFactors f{12, 8, 3};
    const mq::MatrixXd H = mq::hadamard_matrix(f);
    const mq::Matrix<int> hm = mq::hadamard_block(12);
    const double s = 1.0 / std::sqrt(96.0);
    for (int a = 0; a < 12; ++a)
        for (int b = 0; b < 8; ++b)
            for (int a2 = 0; a2 < 12; ++a2)
                for (int b2 = 0; b2 < 8; ++b2)
                    CHECK(H(a * 8 + b, a2 * 8 + b2) == doctest::Approx(hm(a, a2) * mq::sylvester_sign(b, b2) * s));
    // The explicit 40-block is a Hadamard decomposition too.
    const mq::MatrixXd H40 = mq::hadamard_matrix(mq::HadamardFactors{40, 2, 1});
    CHECK((H40 * H40.transpose() - mq::MatrixXd::Identity(80, 80)).cwiseAbs().maxCoeff() < 1e-12);
    CHECK_THROWS_AS(mq::hadamard_matrix(mq::HadamardFactors{24, 2, 1}), mq::error);
    CHECK_THROWS_AS(mq::hadamard_matrix(mq::HadamardFactors{12, 6, 2}), mq::error);
}

TEST_CASE("randomized Hadamard: same seed same matrix, diag(s)·H, orthonormal") {
    const mq::MatrixXd A = mq::randomized_hadamard_matrix(768, 42);
    const mq::MatrixXd B = mq::randomized_hadamard_matrix(768, 42);
    const mq::MatrixXd C = mq::randomized_hadamard_matrix(768, 43);
    CHECK(A == B);
    CHECK(A != C);
    const mq::MatrixXd H = mq::hadamard_matrix(768);
    const auto s = mq::random_signs(768, 42);
    int negatives = 0;
    for (Eigen::Index i = 0; i < 768; ++i) {
        CHECK(A.row(i) == H.row(i) * static_cast<double>(s[static_cast<std::size_t>(i)]));
        negatives += s[static_cast<std::size_t>(i)] < 0;
    }
    CHECK(negatives > 300);
    CHECK(negatives < 468);
    CHECK((A * A.transpose() - mq::MatrixXd::Identity(768, 768)).cwiseAbs().maxCoeff() < 1e-12);
    // Pinned values: the signs come from mq::Rng only, so they are the same on every machine.
    const auto s0 = mq::random_signs(8, 0);
    std::string pattern;
    for (float v : s0) pattern += v > 0 ? '+' : '-';
    CHECK(pattern == "--++--+-");
}
