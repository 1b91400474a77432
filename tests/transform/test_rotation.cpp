#include <mambaquant/transform/rotation.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <utility>
#include <vector>

namespace {

mq::MatrixXd gaussian(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
    mq::Rng rng(seed);
    mq::MatrixXd m(rows, cols);
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index j = 0; j < cols; ++j) m(i, j) = rng.normal();
    return m;
}

double orthogonality_error(const mq::MatrixXd& Q) {
    return (Q * Q.transpose() - mq::MatrixXd::Identity(Q.rows(), Q.rows())).cwiseAbs().maxCoeff();
}

} // namespace

TEST_CASE("random_orthogonal: orthogonal, deterministic from the seed, any size") {
    for (std::size_t n : {1u, 7u, 37u, 100u}) {
        CAPTURE(n);
        const mq::MatrixXd Q = mq::random_orthogonal(n, 5);
        CHECK(orthogonality_error(Q) < 1e-12);
        CHECK(Q == mq::random_orthogonal(n, 5));
        if (n > 1) CHECK(Q != mq::random_orthogonal(n, 6));
    }
    CHECK_THROWS_AS(mq::random_orthogonal(0, 1), mq::error);
}

TEST_CASE("block_diagonal_hadamard: blocks on the diagonal, orthonormal; bad blocks rejected") {
    const mq::MatrixXd Q = mq::block_diagonal_hadamard(100, 20);
    CHECK(orthogonality_error(Q) < 1e-12);
    const mq::MatrixXd H = mq::hadamard_matrix(20);
    CHECK(Q.block(40, 40, 20, 20) == H);
    CHECK(Q.block(0, 20, 20, 20).cwiseAbs().maxCoeff() == 0.0);
    CHECK_THROWS_WITH(mq::block_diagonal_hadamard(100, 30), doctest::Contains("does not divide n = 100"));
    CHECK_THROWS_WITH(mq::block_diagonal_hadamard(100, 25), doctest::Contains("unsupported Hadamard dimension 25"));
}

TEST_CASE("choose_rotation: exact Hadamard when it exists, the caller's fallback otherwise") {
    using K = mq::RotationKind;
    CHECK(mq::choose_rotation(2560, mq::UnsupportedSize::error).kind == K::hadamard);
    CHECK(mq::choose_rotation(2560, mq::UnsupportedSize::error, 3, true).kind == K::randomized_hadamard);
    CHECK_THROWS_WITH(mq::choose_rotation(100, mq::UnsupportedSize::error),
                      doctest::Contains("unsupported Hadamard dimension 100"));
    const auto b = mq::choose_rotation(100, mq::UnsupportedSize::block_hadamard);
    CHECK(b.kind == K::block_hadamard);
    CHECK(b.block == 20);
    CHECK(mq::choose_rotation(6 * 7, mq::UnsupportedSize::block_hadamard).block == 2);
    CHECK_THROWS_WITH(mq::choose_rotation(35, mq::UnsupportedSize::block_hadamard), doctest::Contains("odd size 35"));
    const auto r = mq::choose_rotation(35, mq::UnsupportedSize::random_orthogonal, 9);
    CHECK(r.kind == K::random_orthogonal);
    CHECK(r.seed == 9);
    CHECK_THROWS_AS(mq::choose_rotation(0, mq::UnsupportedSize::random_orthogonal), mq::error);
}

TEST_CASE("invariance (x·Q)(W·Q)ᵀ = x·Wᵀ and (x·Wᵀ)·Q = x·(Qᵀ·W')ᵀ for every rotation kind, Mamba shapes") {
    using K = mq::RotationKind;
    const std::vector<mq::RotationSpec> specs = {
        {K::hadamard, 768, 0, 0},           {K::hadamard, 1536, 0, 0},        {K::randomized_hadamard, 2560, 17, 0},
        {K::hadamard, 160, 0, 0},           {K::block_hadamard, 100, 0, 20},  {K::random_orthogonal, 96, 4, 0},
        {K::randomized_hadamard, 48, 2, 0},
    };
    for (const auto& spec : specs) {
        CAPTURE(mq::rotation_kind_name(spec.kind));
        CAPTURE(spec.n);
        const auto n = static_cast<Eigen::Index>(spec.n);
        const mq::MatrixXd Q = mq::rotation_matrix(spec);
        CHECK(orthogonality_error(Q) < 1e-11);
        const mq::MatrixXd x = gaussian(6, n, 1);
        // Consumer: W [out × n] gets W·Q, the activation gets x·Q.
        mq::MatrixXd W = gaussian(24, n, 2);
        const mq::MatrixXd y = x * W.transpose();
        mq::fold_rotation_right(W, Q);
        CHECK(((x * Q) * W.transpose() - y).cwiseAbs().maxCoeff() < 1e-9);
        // Producer: W2 [n × in] gets Qᵀ·W2, so its output arrives rotated: x2·(Qᵀ·W2)ᵀ = (x2·W2ᵀ)·Q.
        mq::MatrixXd W2 = gaussian(n, 16, 3);
        const mq::MatrixXd x2 = gaussian(5, 16, 4);
        const mq::MatrixXd out = x2 * W2.transpose();
        mq::fold_rotation_left(Q, W2);
        CHECK((x2 * W2.transpose() - out * Q).cwiseAbs().maxCoeff() < 1e-9);
    }
}

TEST_CASE("fold_rotation_* name the weight on a shape mismatch") {
    mq::MatrixXf W = mq::MatrixXf::Ones(4, 10);
    const mq::MatrixXd Q = mq::hadamard_matrix(12);
    CHECK_THROWS_WITH(mq::fold_rotation_right(W, Q, "out_proj.weight"),
                      doctest::Contains("out_proj.weight: fold_rotation_right expects 12 columns"));
    CHECK_THROWS_WITH(mq::fold_rotation_left(Q, W, "in_proj.weight"),
                      doctest::Contains("in_proj.weight: fold_rotation_left expects 12 rows"));
}

#if defined(__SANITIZE_ADDRESS__)
constexpr std::size_t kOnlineSizes[] = {768, 2560}; // materializing 5120² doubles is slow under ASan
#else
constexpr std::size_t kOnlineSizes[] = {768, 1536, 2560, 5120};
#endif

TEST_CASE("HadamardOnline: apply = x·Q, fold_into_weight = W·Q, and the float path keeps x·Wᵀ") {
    for (std::size_t n : kOnlineSizes) {
        CAPTURE(n);
        const auto N = static_cast<Eigen::Index>(n);
        for (int randomized = 0; randomized < 2; ++randomized) {
            const mq::HadamardOnline rot = randomized ? mq::HadamardOnline(n, 99) : mq::HadamardOnline(n);
            const mq::MatrixXd Q = mq::rotation_matrix(rot.spec());
            mq::MatrixXf x = gaussian(4, N, 7).cast<float>();
            mq::MatrixXf W = gaussian(8, N, 8).cast<float>();
            const mq::MatrixXd y = x.cast<double>() * W.cast<double>().transpose();
            const mq::MatrixXd xQ = x.cast<double>() * Q;
            const mq::MatrixXd WQ = W.cast<double>() * Q;
            rot.apply(mq::view(x));
            rot.fold_into_weight(W);
            CHECK((x.cast<double>() - xQ).cwiseAbs().maxCoeff() < 2e-5);
            CHECK((W.cast<double>() - WQ).cwiseAbs().maxCoeff() < 1e-6); // folded in double, rounded once
            // |y| ~ √n; float rounding of x·Q and W·Q contributes ~√n·1e-6.
            CHECK((x.cast<double>() * W.cast<double>().transpose() - y).cwiseAbs().maxCoeff() < 1e-3);
        }
    }
    mq::MatrixXf bad = mq::MatrixXf::Ones(2, 100);
    CHECK_THROWS_WITH(mq::HadamardOnline(768).fold_into_weight(bad), doctest::Contains("weight has 100 columns"));
    CHECK_THROWS_WITH(mq::HadamardOnline(100), doctest::Contains("unsupported Hadamard dimension 100"));
}

TEST_CASE("HadamardOnline block-diagonal and fused forms") {
    const mq::HadamardOnline rot = mq::HadamardOnline::block_diagonal(100, 20);
    const mq::MatrixXd Q = mq::rotation_matrix(rot.spec());
    CHECK(Q == mq::block_diagonal_hadamard(100, 20));
    mq::MatrixXf x = gaussian(3, 100, 1).cast<float>();
    const mq::MatrixXd xQ = x.cast<double>() * Q;
    rot.apply(mq::view(x));
    CHECK((x.cast<double>() - xQ).cwiseAbs().maxCoeff() < 2e-6);
    mq::MatrixXf W = gaussian(5, 100, 2).cast<float>();
    const mq::MatrixXd WQ = W.cast<double>() * Q;
    rot.fold_into_weight(W);
    CHECK((W.cast<double>() - WQ).cwiseAbs().maxCoeff() < 1e-6);
    CHECK_THROWS_AS(mq::HadamardOnline::block_diagonal(100, 30), mq::error);
    CHECK_THROWS_AS(mq::HadamardOnline::from_spec({mq::RotationKind::random_orthogonal, 64, 1, 0}), mq::error);

    // Fused rotate + quantize equals apply() then per-token quantization.
    const mq::HadamardOnline full(2560);
    mq::MatrixXf a = gaussian(4, 2560, 3).cast<float>();
    std::vector<std::uint8_t> q(4 * 2560);
    std::vector<mq::QuantParams> p(4);
    mq::aligned_vector<float> scratch(full.scratch_size());
    full.apply_quantize<mq::asymmetric>(mq::view(std::as_const(a)), mq::MatrixView<std::uint8_t>(q.data(), 4, 2560), p,
                                        scratch);
    full.apply(mq::view(a));
    for (Eigen::Index r = 0; r < 4; ++r) {
        const auto pr = mq::params_from_range<8, mq::asymmetric>(a.row(r).minCoeff(), a.row(r).maxCoeff());
        CHECK(p[static_cast<std::size_t>(r)] == pr);
        for (Eigen::Index i = 0; i < 2560; i += 13)
            CHECK(q[static_cast<std::size_t>(r * 2560 + i)] == mq::quantize_value<mq::UInt8AsymmetricRange>(a(r, i), pr));
    }
}

TEST_CASE("NoRotation is the identity policy") {
    static_assert(mq::Rotation<mq::NoRotation>);
    static_assert(mq::NoRotation::is_identity);
    static_assert(!mq::FusedQuantRotation<mq::NoRotation>);
    mq::MatrixXf x = mq::MatrixXf::Ones(2, 3);
    mq::NoRotation{}.apply(mq::view(x));
    mq::NoRotation{}.fold_into_weight(x);
    CHECK(x == mq::MatrixXf::Ones(2, 3));
}
