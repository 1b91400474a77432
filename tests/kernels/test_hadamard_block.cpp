// Tests for kernels/hadamard_block.hpp: the dense blocks and the size decomposition.
#include <mambaquant/kernels/hadamard_block.hpp>

#include <doctest/doctest.h>

#include <string>
#include <string_view>

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
