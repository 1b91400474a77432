// calib/observer.hpp: exact min/max, percentile accuracy vs an exact sort, MSE clipping that
// beats min/max, merge across shards equals one observer, and the no-sample / NaN errors.
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/calib/observer.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

// The built-in observers model the concept (checked here, not in the header: a static_assert there
// would complete all three classes in every includer).
static_assert(mq::Observer<mq::MinMaxObserver> && mq::Observer<mq::PercentileObserver> && mq::Observer<mq::MseObserver>);

namespace {

// Heavy-tailed data (Student-t-like: normal / sqrt(uniform)), a few big outliers.
mq::MatrixXf calib_data(std::size_t rows, std::size_t cols, std::uint64_t seed, float shift = 0.0f) {
    mq::Rng rng(seed);
    mq::MatrixXf x(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
    for (Eigen::Index i = 0; i < x.size(); ++i) {
        double v = rng.normal() / std::sqrt(0.05 + rng.uniform());
        if (rng.uniform() < 1e-4) v *= 30.0;
        x.data()[i] = static_cast<float>(v) + shift;
    }
    return x;
}

// Quantization MSE of x over [lo, hi] with Q's formula (params.hpp).
template <class Q>
double real_mse(const mq::MatrixXf& x, mq::ValueRange r) {
    const mq::QuantParams p = Q::params(r.lo, r.hi);
    double e = 0.0;
    for (Eigen::Index i = 0; i < x.size(); ++i) {
        const float v = x.data()[i];
        const float b = mq::dequantize_value(mq::quantize_value<typename Q::range>(v, p), p);
        e += double(b - v) * double(b - v);
    }
    return e / double(x.size());
}

mq::ConstMatrixView<float> rows_of(const mq::MatrixXf& x, std::size_t first, std::size_t count) {
    return mq::view(x).row_block(first, count);
}

} // namespace

TEST_CASE("MinMaxObserver: exact range, merge equals one observer") {
    const mq::MatrixXf x = calib_data(64, 768, 1, 0.3f);
    mq::MinMaxObserver all, a, b;
    all.observe(mq::view(x));
    a.observe(rows_of(x, 0, 20));
    b.observe(rows_of(x, 20, 44));
    a.merge(b);
    CHECK(all.range() == mq::ValueRange{x.minCoeff(), x.maxCoeff()});
    CHECK(a.range() == all.range());
    CHECK(a.count() == 64u * 768u);
    CHECK(a.params<mq::A8PerTensor>() == mq::A8PerTensor::params(x.minCoeff(), x.maxCoeff()));
}

TEST_CASE("PercentileObserver: within 2^-7 relative of the exact nearest-rank percentile") {
    const mq::MatrixXf x = calib_data(256, 768, 2);
    std::vector<float> mags(static_cast<std::size_t>(x.size()));
    for (std::size_t i = 0; i < mags.size(); ++i) mags[i] = std::fabs(x.data()[i]);
    std::sort(mags.begin(), mags.end());
    const double n = double(mags.size());
    for (double p : {0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999, 1.0}) {
        mq::PercentileObserver obs(p);
        obs.observe(mq::view(x));
        const std::size_t k = static_cast<std::size_t>(std::max(0.0, std::ceil(p * n) - 1.0));
        const float exact = mags[k];
        const float est = obs.abs_percentile();
        CHECK_MESSAGE(std::fabs(est - exact) <= exact * mq::PercentileObserver::kRelativeError, "p=", p, " exact=", exact, " est=", est);
        const mq::ValueRange r = obs.range();
        CHECK(r.lo == std::max(x.minCoeff(), -est));
        CHECK(r.hi == std::min(x.maxCoeff(), est));
    }
    // Default percentile is 0.999999 (METHOD §2).
    CHECK(mq::PercentileObserver().percentile() == 0.999999);
}

TEST_CASE("PercentileObserver: merge across shards equals one observer, exactly") {
    const mq::MatrixXf x = calib_data(96, 1536, 3);
    mq::PercentileObserver all(0.999), s0(0.999), s1(0.999), s2(0.999);
    all.observe(mq::view(x));
    s0.observe(rows_of(x, 0, 10));
    s1.observe(rows_of(x, 10, 50));
    s2.observe(rows_of(x, 60, 36));
    s1.merge(s2);
    s0.merge(s1);
    CHECK(s0.count() == all.count());
    CHECK(s0.abs_percentile() == all.abs_percentile());
    CHECK(s0.range() == all.range());
    mq::PercentileObserver other(0.99);
    CHECK_THROWS_WITH_AS(all.merge(other), "PercentileObserver::merge: percentiles differ (0.999 vs 0.99)", mq::error);
}

TEST_CASE("MseObserver: clipping beats min/max at 4 bits on heavy tails, stays near 1 at 8 bits on uniform data") {
    const mq::MatrixXf x = calib_data(128, 768, 4);
    mq::MseObserver mse(mq::MseOptions{4, true});
    mse.observe(mq::view(x));
    mq::MinMaxObserver mm;
    mm.observe(mq::view(x));
    using Q4 = mq::Quantizer<4, mq::per_tensor, mq::symmetric>;
    const mq::ValueRange clipped = mse.range();
    CHECK(clipped.hi < mm.range().hi);
    const double e_mse = real_mse<Q4>(x, clipped);
    const double e_mm = real_mse<Q4>(x, mm.range());
    CHECK(e_mse < 0.5 * e_mm); // heavy tails: clipping should at least halve the error
    CHECK(mse.params<Q4>() == Q4::params(clipped.lo, clipped.hi));
    // The modelled MSE tracks the real one (within 25 %) at the chosen range.
    const double modelled = mse.modelled_mse(clipped, 4, true);
    CHECK(modelled == doctest::Approx(e_mse).epsilon(0.25));

    // Uniform data has no tail to clip: 8-bit keeps (almost) the full range.
    mq::Rng rng(9);
    mq::MatrixXf u(64, 512);
    for (Eigen::Index i = 0; i < u.size(); ++i) u.data()[i] = static_cast<float>(rng.uniform(-1.0, 1.0));
    mq::MseObserver m8;
    m8.observe(mq::view(u));
    const mq::ValueRange r8 = m8.range();
    CHECK(r8.hi >= 0.95f * u.maxCoeff());
    CHECK(r8.lo <= 0.95f * u.minCoeff());
}

TEST_CASE("MseObserver: merge across shards equals one observer, exactly") {
    const mq::MatrixXf x = calib_data(64, 2560, 5, 0.4f);
    mq::MseObserver all, a, b;
    all.observe(mq::view(x));
    a.observe(rows_of(x, 0, 33));
    b.observe(rows_of(x, 33, 31));
    a.merge(b);
    CHECK(a.range() == all.range());
    using Q = mq::Quantizer<4, mq::per_tensor, mq::asymmetric>;
    CHECK(a.params<Q>() == all.params<Q>());
    mq::MseObserver other(mq::MseOptions{4, true});
    CHECK_THROWS_AS(all.merge(other), mq::error);
}

TEST_CASE("observers: no samples and non-finite values are errors") {
    mq::MinMaxObserver mm;
    mq::PercentileObserver pc;
    mq::MseObserver ms;
    const char* msg_mm = "MinMaxObserver: no samples observed (count = 0); call observe() with calibration data before asking for a range";
    CHECK_THROWS_WITH_AS(mm.range(), msg_mm, mq::error);
    CHECK_THROWS_WITH_AS(mm.params<mq::A8PerTensor>(), msg_mm, mq::error);
    CHECK_THROWS_WITH_AS(pc.range(), "PercentileObserver: no samples observed (count = 0); call observe() with calibration data before asking for a range", mq::error);
    CHECK_THROWS_WITH_AS(ms.params<mq::A8PerTensor>(), "MseObserver: no samples observed (count = 0); call observe() with calibration data before asking for a range", mq::error);
    // Observing an empty batch adds no samples.
    mm.observe(mq::ConstMatrixView<float>(nullptr, 0, 768));
    CHECK_THROWS_AS(mm.range(), mq::error);
    // Merging two empty observers is still empty.
    mq::MinMaxObserver mm2;
    mm.merge(mm2);
    CHECK_THROWS_AS(mm.range(), mq::error);

    mq::MatrixXf x = calib_data(4, 768, 6);
    x(1, 700) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH_AS(mm.observe(mq::view(x), "layers.3.in_proj.input"),
                         "MinMaxObserver::observe: tensor 'layers.3.in_proj.input' has a non-finite value (inf) at [1, 700]; expected finite values",
                         mq::error);
    x(1, 700) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS(pc.observe(mq::view(x)), "PercentileObserver::observe: tensor 'x' has a non-finite value (nan) at [1, 700]; expected finite values", mq::error);
    CHECK_THROWS_WITH_AS(ms.observe(mq::view(x)), "MseObserver::observe: tensor 'x' has a non-finite value (nan) at [1, 700]; expected finite values", mq::error);

    CHECK_THROWS_WITH_AS(mq::PercentileObserver(1.5), "PercentileObserver: percentile must be in (0, 1], got 1.5", mq::error);
    CHECK_THROWS_WITH_AS(mq::MseObserver(mq::MseOptions{9}), "MseObserver: bits must be in [2, 8], got 9", mq::error);
    CHECK_THROWS_WITH_AS(mq::MseObserver(mq::MseOptions{1}), "MseObserver: bits must be in [2, 8], got 1", mq::error);
}

TEST_CASE("observers on all-zero data give the exact zero range") {
    const mq::MatrixXf z = mq::MatrixXf::Zero(8, 64);
    mq::MinMaxObserver mm;
    mq::PercentileObserver pc;
    mq::MseObserver ms;
    mm.observe(mq::view(z));
    pc.observe(mq::view(z));
    ms.observe(mq::view(z));
    CHECK(mm.range() == mq::ValueRange{0.0f, 0.0f});
    CHECK(pc.range() == mq::ValueRange{0.0f, 0.0f});
    CHECK(ms.range() == mq::ValueRange{0.0f, 0.0f});
    CHECK(ms.params<mq::A8PerTensor>() == mq::QuantParams{1.0f, 1.0f, 0});
}

TEST_CASE("bad input: MseObserver options out of range") {
    mq::MseOptions o;
    o.grid = 0;
    CHECK_THROWS_WITH_AS(mq::MseObserver{o}, "MseObserver: grid must be >= 1, got 0", mq::error);
    o.grid = -3;
    CHECK_THROWS_WITH_AS(mq::MseObserver{o}, "MseObserver: grid must be >= 1, got -3", mq::error);
    o = {};
    o.min_ratio = 0.0;
    CHECK_THROWS_WITH_AS(mq::MseObserver{o}, "MseObserver: min_ratio must be in (0, 1], got 0", mq::error);
    o.min_ratio = 1.5;
    CHECK_THROWS_WITH_AS(mq::MseObserver{o}, "MseObserver: min_ratio must be in (0, 1], got 1.5", mq::error);
    o.min_ratio = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_WITH_AS(mq::MseObserver{o}, "MseObserver: min_ratio must be in (0, 1], got nan", mq::error);
    // The edges are valid: one grid point, α = 1 only.
    o = {};
    o.grid = 1;
    o.min_ratio = 1.0;
    CHECK_NOTHROW(mq::MseObserver{o});
}

namespace {
// A user observer: the documented members alone make it an Observer (the fixed range [-1, 1]).
struct FixedRangeObserver {
    std::uint64_t n = 0;
    void observe(mq::ConstMatrixView<float> x) { n += x.rows * x.cols; }
    void merge(const FixedRangeObserver& o) { n += o.n; }
    std::uint64_t count() const { return n; }
    mq::ValueRange range() const { return {-1.0f, 1.0f}; }
    template <class Q>
    mq::QuantParams params() const { return Q::params(-1.0f, 1.0f); }
};
struct NotAnObserver {
    void observe(mq::ConstMatrixView<float>) {}
};
} // namespace

TEST_CASE("Observer is open: a user type with the documented members models it") {
    static_assert(mq::Observer<FixedRangeObserver> && mq::check_observer<FixedRangeObserver>());
    static_assert(!mq::Observer<NotAnObserver> && !mq::detail::observer_has_merge<NotAnObserver>);
    CHECK(FixedRangeObserver{}.params<mq::A8PerTensor>() == mq::A8PerTensor::params(-1.0f, 1.0f)); // its own range, the policy's params
}
