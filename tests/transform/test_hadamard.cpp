#include <mambaquant/transform/hadamard.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <string>

namespace {

// Every entry ±1 and H·Hᵀ = m·I exactly (integer arithmetic).
bool is_hadamard(const mq::Matrix<int>& H) {
    if (H.rows() != H.cols()) return false;
    for (Eigen::Index i = 0; i < H.rows(); ++i)
        for (Eigen::Index j = 0; j < H.cols(); ++j)
            if (H(i, j) != 1 && H(i, j) != -1) return false;
    const mq::Matrix<int> G = H * H.transpose();
    const mq::Matrix<int> expected = mq::Matrix<int>::Identity(H.rows(), H.rows()) * static_cast<int>(H.rows());
    return G == expected;
}

void check_williamson(const mq::detail::WilliamsonRows& w) {
    const std::string_view rows[4] = {w.a, w.b, w.c, w.d};
    const std::size_t t = w.t;
    for (auto r : rows) {
        REQUIRE(r.size() == t);
        for (std::size_t i = 1; i < t; ++i) CHECK(r[i] == r[t - i]); // symmetric circulant
    }
    for (std::size_t shift = 1; shift < t; ++shift) {
        int paf = 0;
        for (auto r : rows)
            for (std::size_t i = 0; i < t; ++i)
                paf += (r[i] == '+' ? 1 : -1) * (r[(i + shift) % t] == '+' ? 1 : -1);
        CHECK(paf == 0);
    }
}

} // namespace

TEST_CASE("every dense Hadamard block is a Hadamard matrix: entries ±1, H·Hᵀ = m·I") {
    for (std::size_t m : mq::kHadamardBlockSizes) {
        CAPTURE(m);
        const mq::Matrix<int> H = mq::hadamard_block(m);
        CHECK(H.rows() == static_cast<Eigen::Index>(m));
        CHECK(is_hadamard(H));
    }
}

TEST_CASE("a broken block is caught by the check (the test can fail)") {
    mq::Matrix<int> H = mq::hadamard_block(12);
    H(3, 5) = -H(3, 5);
    CHECK_FALSE(is_hadamard(H));
}

TEST_CASE("Williamson sequences: symmetric, periodic autocorrelations sum to zero") {
    check_williamson(mq::detail::kWilliamson39);
    check_williamson(mq::detail::kWilliamson43);
}

TEST_CASE("decompose_hadamard_size on Mamba dimensions") {
    using F = mq::HadamardFactors;
    CHECK(mq::decompose_hadamard_size(768) == F{12, 64, 6});
    CHECK(mq::decompose_hadamard_size(1536) == F{12, 128, 7});
    CHECK(mq::decompose_hadamard_size(2560) == F{20, 128, 7});
    CHECK(mq::decompose_hadamard_size(5120) == F{20, 256, 8});
    CHECK(mq::decompose_hadamard_size(48) == F{12, 4, 2});
    CHECK(mq::decompose_hadamard_size(160) == F{20, 8, 3});
    CHECK(mq::decompose_hadamard_size(192) == F{12, 16, 4});
    CHECK(mq::decompose_hadamard_size(384) == F{12, 32, 5});
    CHECK(mq::decompose_hadamard_size(4096) == F{1, 4096, 12});
    CHECK(mq::decompose_hadamard_size(1) == F{1, 1, 0});
    CHECK(mq::decompose_hadamard_size(172 * 4) == F{172, 4, 2});
    CHECK(mq::decompose_hadamard_size(40) == F{20, 2, 1}); // smallest block wins
    CHECK(mq::decompose_hadamard_size(52) == F{52, 1, 0});
}

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
