// Tests of the ssm/ conv1d API: bad input, decode steps and chunks equal one sequence.
#include <mambaquant/core/rng.hpp>
#include <mambaquant/ssm/conv1d.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <limits>
#include <utility>
#include <vector>

namespace {
mq::MatrixXf random(std::size_t r, std::size_t c, std::uint64_t seed, double scale = 1.0) {
    mq::Rng rng(seed);
    mq::MatrixXf m(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(c));
    for (auto& v : m.reshaped()) v = static_cast<float>(scale * rng.normal());
    return m;
}
} // namespace

TEST_CASE("causal_conv1d (ssm): bad input throws") {
    const mq::MatrixXf w = random(24, 4, 1, 0.5);
    std::vector<float> bias(24, 0.1f);
    const auto cw = mq::ConvWeights::from(mq::view(w), bias);
    CHECK(cw.taps() == 4);
    std::vector<float> short_bias(23);
    CHECK_THROWS_WITH_AS(mq::ConvWeights::from(mq::view(w), short_bias), "ConvWeights: bias: expected 24 values, got 23",
                         mq::error);
    mq::MatrixXf wn = w;
    wn(3, 2) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH_AS(mq::ConvWeights::from(mq::view(std::as_const(wn))), "ConvWeights: weight[3, 2] is not finite",
                         mq::error);

    mq::MatrixXf x = random(10, 24, 2), y(10, 24);
    mq::ConvCache cache(24, 4);
    CHECK_NOTHROW(mq::causal_conv1d(cw, mq::view(std::as_const(x)), &cache, mq::view(y)));
    mq::MatrixXf x_bad(10, 23), y_bad(9, 24);
    CHECK_THROWS_WITH_AS(mq::causal_conv1d(cw, mq::view(std::as_const(x_bad)), &cache, mq::view(y)),
                         "causal_conv1d: x: expected 24 columns, got 23", mq::error);
    CHECK_THROWS_WITH_AS(mq::causal_conv1d(cw, mq::view(std::as_const(x)), &cache, mq::view(y_bad)),
                         "causal_conv1d: y: expected shape [10 x 24], got [9 x 24]", mq::error);
    mq::ConvCache wrong(24, 3);
    CHECK_THROWS_WITH_AS(mq::causal_conv1d(cw, mq::view(std::as_const(x)), &wrong, mq::view(y)),
                         "causal_conv1d: cache: expected E = 24, K = 4, got E = 24, K = 3", mq::error);
    CHECK_THROWS_WITH_AS(mq::causal_conv1d(cw, mq::ConstMatrixView<float>(x.data(), 0, 24), &cache,
                                           mq::MatrixView<float>(y.data(), 0, 24)),
                         "causal_conv1d: the sequence is empty (L = 0)", mq::error);
    x(4, 7) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS(mq::causal_conv1d(cw, mq::view(std::as_const(x)), &cache, mq::view(y)),
                         "causal_conv1d: x[4, 7] is not finite (nan)", mq::error);
}

TEST_CASE("causal_conv1d (ssm): decode steps and chunks equal one sequence, bit for bit") {
    const std::size_t L = 33, E = 1536;
    const mq::MatrixXf w = random(E, 4, 3, 0.5), x = random(L, E, 4);
    std::vector<float> bias(E, -0.05f);
    const auto cw = mq::ConvWeights::from(mq::view(w), bias);
    mq::MatrixXf y_seq(L, E), y_steps(L, E), y_chunks(L, E);
    mq::ConvCache c_seq(E, 4), c_steps(E, 4), c_chunks(E, 4);
    mq::causal_conv1d(cw, mq::view(x), &c_seq, mq::view(y_seq));
    for (std::size_t t = 0; t < L; ++t)
        mq::causal_conv1d_step(cw, {x.data() + t * E, E}, c_steps, {y_steps.data() + t * E, E});
    CHECK((y_steps.array() == y_seq.array()).all());
    CHECK((c_steps.window.array() == c_seq.window.array()).all());
    const std::size_t split = 2; // shorter than the window: the history spans both chunks
    mq::causal_conv1d(cw, mq::view(x).row_block(0, split), &c_chunks, mq::view(y_chunks).row_block(0, split));
    mq::causal_conv1d(cw, mq::view(x).row_block(split, L - split), &c_chunks,
                      mq::view(y_chunks).row_block(split, L - split));
    CHECK((y_chunks.array() == y_seq.array()).all());
    CHECK((c_chunks.window.array() == c_seq.window.array()).all());
    // Without a cache the history is zero: the same as a fresh cache.
    mq::MatrixXf y_nocache(L, E);
    mq::causal_conv1d(cw, mq::view(x), nullptr, mq::view(y_nocache));
    CHECK((y_nocache.array() == y_seq.array()).all());
}

TEST_CASE("bad input: empty or over-long conv weights") {
    const mq::MatrixXf none(0, 4), no_taps(24, 0);
    CHECK_THROWS_WITH_AS(mq::ConvWeights::from(mq::view(none)), "ConvWeights: weight must be non-empty, got [0 x 4]", mq::error);
    CHECK_THROWS_WITH_AS(mq::ConvWeights::from(mq::view(no_taps)), "ConvWeights: weight must be non-empty, got [24 x 0]", mq::error);
    // At most 64 taps (Mamba uses 4): 64 is accepted, 65 is not.
    const mq::MatrixXf w64 = random(3, 64, 2), w65 = random(3, 65, 3);
    CHECK(mq::ConvWeights::from(mq::view(w64)).taps() == 64);
    CHECK_THROWS_WITH_AS(mq::ConvWeights::from(mq::view(w65)), "ConvWeights: at most 64 taps, got 65", mq::error);
    // Running empty weights is refused as well.
    const mq::ConvWeights empty;
    const mq::MatrixXf x = random(5, 3, 4);
    mq::MatrixXf y(5, 3);
    CHECK_THROWS_WITH_AS(mq::causal_conv1d(empty, mq::view(x), nullptr, mq::view(y)), "causal_conv1d: ConvWeights are empty", mq::error);
}
