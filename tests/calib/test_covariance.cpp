#include <mambaquant/calib/channel_stats.hpp>
#include <mambaquant/calib/covariance.hpp>
#include <mambaquant/core/rng.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>

namespace {
// Rows with a large common mean (|μ| ≫ σ), the case that breaks a naive XᵀX/n − μμᵀ.
mq::MatrixXd rows_with_mean(mq::Rng& rng, Eigen::Index n, Eigen::Index d, double mean, double sigma) {
    mq::MatrixXd x(n, d);
    for (Eigen::Index i = 0; i < n; ++i)
        for (Eigen::Index j = 0; j < d; ++j) x(i, j) = mean * (1.0 + 0.01 * static_cast<double>(j)) + sigma * rng.normal();
    // Correlate neighbouring channels so the covariance is not diagonal.
    for (Eigen::Index j = d - 1; j > 0; --j) x.col(j) += 0.5 * x.col(j - 1);
    return x;
}
// Two-pass reference: Σ(x − μ)ᵀ(x − μ)/(n − 1) in long double.
mq::MatrixXd two_pass_covariance(const mq::MatrixXd& x) {
    const Eigen::Index n = x.rows(), d = x.cols();
    Eigen::VectorXd mu = x.colwise().mean().transpose();
    mq::MatrixXd c(d, d);
    for (Eigen::Index a = 0; a < d; ++a)
        for (Eigen::Index b = 0; b < d; ++b) {
            long double acc = 0;
            for (Eigen::Index i = 0; i < n; ++i) acc += (long double)(x(i, a) - mu[a]) * (long double)(x(i, b) - mu[b]);
            c(a, b) = static_cast<double>(acc / (n - 1));
        }
    return c;
}
double rel(const mq::MatrixXd& a, const mq::MatrixXd& b) { return (a - b).norm() / b.norm(); }
} // namespace

TEST_CASE("CovarianceAccumulator: centred covariance and mean match a two-pass reference, even with |mean| >> sigma") {
    mq::Rng rng(1);
    const mq::MatrixXd x = rows_with_mean(rng, 1500, 37, 1e4, 1.0); // 1500 > kChunkRows: several SYRK chunks
    mq::CovarianceAccumulator acc(37);
    acc.add(x);
    CHECK(acc.count() == 1500);
    const mq::MatrixXd ref = two_pass_covariance(x);
    const double err = rel(acc.covariance(), ref);
    MESSAGE("relative error of the covariance, mean 1e4, sigma 1: " << err);
    CHECK(err < 1e-10);
    CHECK((acc.mean() - x.colwise().mean().transpose()).cwiseAbs().maxCoeff() < 1e-9);
    // Symmetric, and the raw second moment is XᵀX.
    const mq::MatrixXd cov = acc.covariance();
    CHECK(cov == cov.transpose());
    CHECK(rel(acc.second_moment(), x.transpose() * x) < 1e-13);
}

TEST_CASE("CovarianceAccumulator: float rows, several add() calls, one add() give the same statistics") {
    mq::Rng rng(2);
    const mq::MatrixXf x = rows_with_mean(rng, 700, 24, 3.0, 2.0).cast<float>();
    mq::CovarianceAccumulator whole(24), pieces(24);
    whole.add(x);
    pieces.add(mq::view(x).row_block(0, 100));
    pieces.add(mq::view(x).row_block(100, 600));
    CHECK(pieces.count() == whole.count());
    CHECK(rel(pieces.covariance(), whole.covariance()) < 1e-13);
}

TEST_CASE("CovarianceAccumulator: two shards fed halves, merged, equal one fed everything") {
    mq::Rng rng(3);
    const mq::MatrixXd x = rows_with_mean(rng, 2000, 48, 50.0, 3.0);
    mq::CovarianceAccumulator all(48), a(48), b(48);
    all.add(mq::view(x).row_block(0, 1000));
    all.add(mq::view(x).row_block(1000, 1000));
    a.add(mq::view(x).row_block(0, 1000));
    b.add(mq::view(x).row_block(1000, 1000));
    a.merge(b);
    CHECK(a.count() == all.count());
    // Each shard accumulates about its own shift (its first batch's mean), so the merged sums are
    // re-centred: equal to rounding, not bit for bit.
    const double err = rel(a.covariance(), all.covariance());
    MESSAGE("merge vs single accumulator, relative difference: " << err);
    CHECK(err < 1e-12);
    CHECK((a.mean() - all.mean()).cwiseAbs().maxCoeff() < 1e-12 * 60);
    // Merging into an empty accumulator copies; merging an empty one changes nothing.
    mq::CovarianceAccumulator empty(48);
    empty.merge(all);
    CHECK(empty == all);
    mq::CovarianceAccumulator none(48);
    all.merge(none);
    CHECK(empty == all);
}

TEST_CASE("CovarianceAccumulator: serialization round trip is exact, and accumulation continues") {
    mq::Rng rng(4);
    const mq::MatrixXd x = rows_with_mean(rng, 300, 20, 5.0, 1.0);
    mq::CovarianceAccumulator acc(20);
    acc.add(mq::view(x).row_block(0, 200));
    std::stringstream buffer;
    acc.serialize(buffer);
    mq::CovarianceAccumulator back = mq::CovarianceAccumulator::deserialize(buffer);
    CHECK(back == acc);
    CHECK(back.covariance() == acc.covariance());
    acc.add(mq::view(x).row_block(200, 100));
    back.add(mq::view(x).row_block(200, 100));
    CHECK(back == acc);
    // A fresh, empty accumulator round-trips too.
    std::stringstream empty_buffer;
    mq::CovarianceAccumulator(5).serialize(empty_buffer);
    CHECK(mq::CovarianceAccumulator::deserialize(empty_buffer) == mq::CovarianceAccumulator(5));
}

TEST_CASE("CovarianceAccumulator: bad input is a clear error") {
    mq::CovarianceAccumulator acc(4);
    CHECK_THROWS_WITH_AS(mq::CovarianceAccumulator(0), doctest::Contains("dim must be in [1"), mq::error);

    // Too few samples.
    CHECK_THROWS_WITH_AS((void)acc.covariance(), doctest::Contains("needs at least 2 rows, got 0"), mq::error);
    mq::MatrixXd one = mq::MatrixXd::Ones(1, 4);
    acc.add(one);
    CHECK_THROWS_WITH_AS((void)acc.covariance(), doctest::Contains("needs at least 2 rows, got 1"), mq::error);

    // Wrong width.
    mq::MatrixXd wide = mq::MatrixXd::Ones(3, 5);
    CHECK_THROWS_WITH_AS(acc.add(wide), doctest::Contains("rows have 5 columns, expected 4"), mq::error);

    // NaN / Inf rows: named, and nothing of the batch is accumulated.
    mq::MatrixXf bad = mq::MatrixXf::Ones(3, 4);
    bad(2, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS(acc.add(bad), doctest::Contains("non-finite value nan at row 2, column 1"), mq::error);
    bad(2, 1) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH_AS(acc.add(bad), doctest::Contains("at row 2, column 1"), mq::error);
    CHECK(acc.count() == 1);

    mq::CovarianceAccumulator other(3);
    CHECK_THROWS_WITH_AS(acc.merge(other), doctest::Contains("dimension 3 differs from 4"), mq::error);
}

TEST_CASE("CovarianceAccumulator: corrupted, truncated or foreign streams are rejected") {
    mq::Rng rng(5);
    mq::CovarianceAccumulator acc(6);
    acc.add(rows_with_mean(rng, 10, 6, 1.0, 1.0));
    std::stringstream buffer;
    acc.serialize(buffer);
    const std::string bytes = buffer.str();

    auto load = [](const std::string& s) {
        std::stringstream in(s);
        return mq::CovarianceAccumulator::deserialize(in);
    };
    CHECK(load(bytes) == acc);
    CHECK_THROWS_WITH_AS(load(""), doctest::Contains("truncated stream (no header)"), mq::error);
    CHECK_THROWS_WITH_AS(load("not a covariance stream at all"), doctest::Contains("bad magic"), mq::error);
    CHECK_THROWS_WITH_AS(load(bytes.substr(0, bytes.size() - 20)), doctest::Contains("truncated stream at field"), mq::error);
    CHECK_THROWS_WITH_AS(load(bytes.substr(0, bytes.size() - 4)), doctest::Contains("no checksum"), mq::error);
    std::string flipped = bytes;
    flipped[40] = static_cast<char>(flipped[40] ^ 0x10); // inside the statistics
    CHECK_THROWS_WITH_AS(load(flipped), doctest::Contains("checksum mismatch"), mq::error);
    std::string version = bytes;
    version[8] = 7; // first byte of the version field
    CHECK_THROWS_WITH_AS(load(version), doctest::Contains("unsupported version 7"), mq::error);
    std::string huge = bytes;
    huge[8 + 8 + 7] = 0x7f; // top byte of dim
    CHECK_THROWS_WITH_AS(load(huge), doctest::Contains("dim must be in [1"), mq::error);
}

TEST_CASE("ChannelStats: min, max, absmax, mid-range and an exact merge") {
    mq::MatrixXf x(3, 2);
    x << 1.0f, -4.0f, -2.0f, 0.5f, 3.0f, 1.0f;
    mq::ChannelStats all(2), a(2), b(2);
    all.add(x);
    a.add(mq::view(x).row_block(0, 1));
    b.add(mq::view(x).row_block(1, 2));
    a.merge(b);
    CHECK(a.min() == all.min());
    CHECK(a.max() == all.max());
    CHECK(a.count() == 3);
    CHECK(all.absmax()[0] == 3.0);
    CHECK(all.absmax()[1] == 4.0);
    CHECK(all.midrange()[0] == 0.5);
    CHECK(all.midrange()[1] == -1.5);

    mq::ChannelStats empty(2);
    CHECK_THROWS_WITH_AS((void)empty.absmax(), doctest::Contains("no rows accumulated"), mq::error);
    x(1, 1) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH_AS(empty.add(x), doctest::Contains("non-finite value inf at row 1, column 1"), mq::error);
    mq::ChannelStats three(3);
    CHECK_THROWS_WITH_AS(three.merge(all), doctest::Contains("dimension 2 differs from 3"), mq::error);
}
