#include <mambaquant/calib/statistics.hpp>
#include <mambaquant/core/rng.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <sstream>

namespace {
mq::MatrixXf rows(mq::Rng& rng, Eigen::Index n, Eigen::Index d, float spread) {
    mq::MatrixXf x(n, d);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = spread * static_cast<float>(rng.normal());
    return x;
}
void add_all(mq::CalibrationStats& s, const mq::MatrixXf& a, const mq::MatrixXf& b) {
    s.site("layers.0.in_proj", 8, {0.99, true}).add(mq::view(a), "in_proj");
    s.site("layers.0.out_proj", 8).add(mq::view(b), "out_proj");
    s.count_window();
}
void check_equal(const mq::CalibrationStats& x, const mq::CalibrationStats& y) {
    REQUIRE(x.sites().size() == y.sites().size());
    CHECK(x.windows() == y.windows());
    for (const auto& [key, s] : x.sites()) {
        const auto& t = y.at(key);
        CHECK(s.rows() == t.rows());
        CHECK(s.channels().min() == t.channels().min());
        CHECK(s.channels().max() == t.channels().max());
        CHECK(s.percentile().abs_percentile() == t.percentile().abs_percentile());
        CHECK(s.percentile_range() == t.percentile_range());
        CHECK(s.has_covariance() == t.has_covariance());
        if (s.has_covariance()) CHECK((s.covariance().covariance() - t.covariance().covariance()).cwiseAbs().maxCoeff() < 1e-12);
    }
}
} // namespace

TEST_CASE("calibration statistics: channel stats, percentile and covariance of a site") {
    mq::Rng rng(1);
    mq::MatrixXf x = rows(rng, 1000, 8, 1.0f);
    x(17, 3) = 50.0f; // one outlier: min/max sees it, the 99th percentile does not
    mq::CalibrationStats s;
    s.site("layers.0.in_proj", 8, {0.99, true}).add(mq::view(x), "in_proj");
    const auto& site = s.at("layers.0.in_proj");
    CHECK(site.channels().absmax()[3] == doctest::Approx(50.0));
    CHECK(site.minmax_range().hi == 50.0f);
    // |N(0,1)| 99th percentile is 2.576; from 8000 samples within a few %.
    CHECK(site.percentile().abs_percentile() == doctest::Approx(2.576).epsilon(0.08));
    CHECK(site.covariance().count() == 1000u);
}

TEST_CASE("calibration statistics: save / load round trip and shard merge equal one run") {
    mq::Rng rng(2);
    const mq::MatrixXf a1 = rows(rng, 300, 8, 1.0f), b1 = rows(rng, 300, 8, 3.0f);
    const mq::MatrixXf a2 = rows(rng, 200, 8, 2.0f), b2 = rows(rng, 200, 8, 0.5f);
    mq::CalibrationStats one, shard1, shard2;
    add_all(one, a1, b1);
    add_all(one, a2, b2);
    add_all(shard1, a1, b1);
    add_all(shard2, a2, b2);

    std::stringstream f1, f2;
    shard1.serialize(f1);
    shard2.serialize(f2);
    mq::CalibrationStats merged = mq::CalibrationStats::deserialize(f1);
    merged.merge(mq::CalibrationStats::deserialize(f2));
    check_equal(one, merged);

    const auto path = std::filesystem::temp_directory_path() / "mq_test_statistics.bin";
    one.save(path);
    check_equal(one, mq::CalibrationStats::load(path));
    CHECK(!std::filesystem::exists(path.string() + ".tmp"));
    std::filesystem::remove(path);
}

TEST_CASE("calibration statistics: bad input") {
    mq::CalibrationStats s;
    mq::MatrixXf x = mq::MatrixXf::Ones(4, 8);
    x(2, 5) = std::nanf("");
    auto& site = s.site("layers.1.x_proj", 8);
    CHECK_THROWS_WITH_AS(site.add(mq::view(x), "layers.1.x_proj"), doctest::Contains("layers.1.x_proj"), mq::error);
    CHECK(site.rows() == 0u); // nothing half-added
    CHECK_THROWS_WITH_AS(s.site("layers.1.x_proj", 9), doctest::Contains("dimension 8"), mq::error);
    CHECK_THROWS_WITH_AS(s.at("layers.9.x_proj"), doctest::Contains("no statistics"), mq::error);
    std::stringstream bad("not a calibration file");
    CHECK_THROWS_WITH_AS(mq::CalibrationStats::deserialize(bad), doctest::Contains("bad magic"), mq::error);
    // A truncated file names the field it stopped at.
    std::stringstream good;
    const mq::MatrixXf ones = mq::MatrixXf::Ones(3, 8);
    s.site("layers.0.in_proj", 8).add(mq::view(ones), "in_proj");
    s.serialize(good);
    std::string bytes = good.str();
    std::stringstream cut(bytes.substr(0, bytes.size() - 5));
    CHECK_THROWS_WITH_AS(mq::CalibrationStats::deserialize(cut), doctest::Contains("truncated"), mq::error);
}
