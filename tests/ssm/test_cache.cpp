// ssm/cache.hpp: the decode caches' constructors and the smoothed-state conversion refuse bad sizes.
#include <mambaquant/ssm/cache.hpp>

#include <doctest/doctest.h>

#include <vector>

TEST_CASE("caches: sizes and a fresh (zero) state") {
    mq::LayerCache<> c(24, 16, 4);
    CHECK(c.scan.channels() == 24);
    CHECK(c.scan.state_size() == 16);
    CHECK(c.conv.channels() == 24);
    CHECK(c.conv.taps() == 4);
    CHECK(c.conv.window.rows() == 3); // K − 1 past inputs
    CHECK(c.scan.state_is_zero());
    CHECK(c.scan.domain == mq::StateDomain::plain);
    c.scan.state(3, 5) = 1.0f;
    c.conv.window(1, 2) = 2.0f;
    c.reset();
    CHECK(c.scan.state_is_zero());
    CHECK(c.conv.window.cwiseAbs().maxCoeff() == 0.0f);
    // One tap keeps no history.
    const mq::ConvCache one(8, 1);
    CHECK(one.window.rows() == 0);
    CHECK(one.taps() == 1);
}

TEST_CASE("bad input: cache constructors refuse empty sizes") {
    CHECK_THROWS_WITH_AS(mq::ScanCache<float>(0, 16), "ScanCache: channels and state size must be positive, got [0 x 16]", mq::error);
    CHECK_THROWS_WITH_AS(mq::ScanCache<float>(24, 0), "ScanCache: channels and state size must be positive, got [24 x 0]", mq::error);
    CHECK_THROWS_WITH_AS(mq::ScanCache<double>(0, 0), "ScanCache: channels and state size must be positive, got [0 x 0]", mq::error);
    CHECK_THROWS_WITH_AS(mq::ConvCache(0, 4), "ConvCache: channels must be positive and taps >= 1, got E = 0, K = 4", mq::error);
    CHECK_THROWS_WITH_AS(mq::ConvCache(24, 0), "ConvCache: channels must be positive and taps >= 1, got E = 24, K = 0", mq::error);
    CHECK_THROWS_WITH_AS(mq::LayerCache<>(24, 16, 0), "ConvCache: channels must be positive and taps >= 1, got E = 24, K = 0", mq::error);
    CHECK_THROWS_WITH_AS(mq::LayerCache<>(24, 0, 4), "ScanCache: channels and state size must be positive, got [24 x 0]", mq::error);
    mq::ScanCache<float> s(2, 4);
    CHECK_THROWS_WITH_AS(s.resize(0, 4), "ScanCache: channels and state size must be positive, got [0 x 4]", mq::error);
}

TEST_CASE("bad input: plain_state of a smoothed cache needs one scale per state index") {
    mq::ScanCache<float> s(2, 4);
    s.state.setConstant(3.0f);
    const std::vector<float> three(3, 2.0f), four = {1.0f, 2.0f, 0.5f, 4.0f};
    CHECK(s.plain_state(three) == s.state); // plain domain: returned as it is, scales unused
    s.domain = mq::StateDomain::smoothed;
    CHECK_THROWS_WITH_AS(s.plain_state(three), "ScanCache::plain_state: expected 4 smoothing scales, got 3", mq::error);
    const mq::MatrixXf p = s.plain_state(four); // state_smoothed · diag(s)
    for (Eigen::Index d = 0; d < 2; ++d)
        for (Eigen::Index n = 0; n < 4; ++n) CHECK(p(d, n) == 3.0f * four[static_cast<std::size_t>(n)]);
}
