// Tests of the scan policies as the block selects them: concept, quantized policy setup errors.
#include <mambaquant/ssm/scan_policy.hpp>
#include <mambaquant/ssm/selective_scan.hpp>

#include "kernels/scan_test_data.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <span>
#include <cstddef>
#include <utility>
#include <vector>

namespace {
std::vector<float> hadamard16() {
    std::vector<float> h(256);
    for (std::size_t i = 0; i < 16; ++i)
        for (std::size_t j = 0; j < 16; ++j) h[i * 16 + j] = (__builtin_popcount(static_cast<unsigned>(i & j)) % 2 ? -0.25f : 0.25f);
    return h;
}
struct NotAPolicy {};
} // namespace

static_assert(mq::ScanPolicy<mq::PlainScan>);
static_assert(mq::ScanPolicy<mq::SmoothedScan>);
static_assert(mq::ScanPolicy<mq::QuantizedScan<mq::A8PerToken>>);
static_assert(mq::ScanPolicy<mq::QuantizedScan<mq::Quantizer<8, mq::per_token, mq::symmetric>>>);
static_assert(!mq::ScanPolicy<NotAPolicy>);
static_assert(mq::QuantizedScan<mq::A8PerToken>::is_quantized && !mq::PlainScan::is_quantized);

TEST_CASE("QuantizedScan: rotation and smoothing are validated") {
    auto h = hadamard16();
    CHECK_NOTHROW(mq::QuantizedScan<mq::A8PerToken>(mq::ConstMatrixView<float>(h.data(), 16, 16)));
    CHECK_THROWS_WITH_AS(mq::QuantizedScan<mq::A8PerToken>(mq::ConstMatrixView<float>(h.data(), 16, 8)),
                         "QuantizedScan: rotation must be square, got [16 x 8]", mq::error);
    auto bad = h;
    bad[0] = 0.5f;
    CHECK_THROWS_AS(mq::QuantizedScan<mq::A8PerToken>(mq::ConstMatrixView<float>(bad.data(), 16, 16)), mq::error);
    std::vector<float> h8(64);
    for (std::size_t i = 0; i < 8; ++i) h8[i * 8 + i] = 1.0f; // identity: orthogonal, but 8×8
    const mq::QuantizedScan<mq::A8PerToken> q8(mq::ConstMatrixView<float>(h8.data(), 8, 8));
    CHECK_THROWS_WITH_AS(q8.check(32, 16), "QuantizedScan: rotation is 8 x 8 but the state size is 16", mq::error);
    std::vector<float> s(16, 1.0f);
    s[2] = -1.0f;
    CHECK_THROWS_AS(mq::QuantizedScan<mq::A8PerToken>(mq::ConstMatrixView<float>{}, s), mq::error);
}

TEST_CASE("QuantizedScan through the ssm API: rotated and smoothed, close to the float scan") {
    const std::size_t L = 64, E = 256, N = 16;
    mqtest::ScanData d(L, E, N, 31);
    d.random_state(32);
    const auto w = mq::ScanWeights::from_A(mq::view(std::as_const(d.A)), d.D);
    const auto h = hadamard16();
    // S4 scales as METHOD §4 calibrates them: s_n = sqrt(max|state_n| / max|C_n|), in [1e-2, 100],
    // from a float pass over the same tokens (decode steps, to see every state).
    std::vector<float> s(N);
    {
        std::vector<float> state_max(N, 0.0f), c_max(N, 0.0f);
        mq::ScanCache<float> cal(E, N);
        cal.state = d.state;
        std::vector<float> y_row(E);
        for (std::size_t t = 0; t < L; ++t) {
            const auto row = [&](const mq::MatrixXf& m) {
                return std::span<const float>(m.data() + t * static_cast<std::size_t>(m.cols()), static_cast<std::size_t>(m.cols()));
            };
            mq::selective_scan_step(mq::PlainScan{}, w, {row(d.x), row(d.delta), row(d.B), row(d.C), row(d.z), false}, cal, y_row);
            for (std::size_t n = 0; n < N; ++n) {
                state_max[n] = std::max(state_max[n], cal.state.col(static_cast<Eigen::Index>(n)).cwiseAbs().maxCoeff());
                c_max[n] = std::max(c_max[n], std::fabs(d.C(static_cast<Eigen::Index>(t), static_cast<Eigen::Index>(n))));
            }
        }
        for (std::size_t n = 0; n < N; ++n) s[n] = std::clamp(std::sqrt(state_max[n] / c_max[n]), 1e-2f, 100.0f);
    }
    const mq::QuantizedScan<mq::A8PerToken> q(mq::ConstMatrixView<float>(h.data(), N, N), s);

    // Smoothed then rotated C: C·diag(s)·H; B/s.
    mq::MatrixXf B = d.B, C = d.C;
    for (Eigen::Index t = 0; t < static_cast<Eigen::Index>(L); ++t)
        for (std::size_t n = 0; n < N; ++n) {
            B(t, static_cast<Eigen::Index>(n)) /= s[n];
            C(t, static_cast<Eigen::Index>(n)) *= s[n];
        }
    mq::MatrixXf CH = mq::MatrixXf::Zero(static_cast<Eigen::Index>(L), static_cast<Eigen::Index>(N));
    for (Eigen::Index t = 0; t < static_cast<Eigen::Index>(L); ++t)
        for (std::size_t n = 0; n < N; ++n)
            for (std::size_t m = 0; m < N; ++m)
                CH(t, static_cast<Eigen::Index>(n)) += C(t, static_cast<Eigen::Index>(m)) * h[m * N + n];
    mq::ScanInputs in{mq::view(d.x), mq::view(d.delta), mq::view(std::as_const(B)), mq::view(std::as_const(CH)),
                      mq::view(d.z), false};
    mq::ScanCache<float> qc(E, N), fc(E, N);
    qc.state = d.state;
    fc.state = d.state;
    mq::MatrixXf yq(L, E), yf(L, E);
    mq::selective_scan(q, w, in, qc, mq::view(yq));
    mq::ScanInputs fin{mq::view(d.x), mq::view(d.delta), mq::view(d.B), mq::view(d.C), mq::view(d.z), false};
    mq::selective_scan(mq::PlainScan{}, w, fin, fc, mq::view(yf));
    CHECK(qc.domain == mq::StateDomain::smoothed);
    // The carried state was absorbed (1/s in step 0): the state in the plain domain matches.
    const mq::MatrixXf back = qc.plain_state(s);
    CHECK(((back - fc.state).cwiseAbs().maxCoeff()) <= 1e-5f * fc.state.cwiseAbs().maxCoeff());
    // The same scan quantized without rotation or smoothing, for scale.
    mq::ScanCache<float> pc(E, N);
    pc.state = d.state;
    mq::MatrixXf yp(L, E);
    mq::selective_scan(mq::QuantizedScan<mq::A8PerToken>{}, w, fin, pc, mq::view(yp));
    CHECK(pc.domain == mq::StateDomain::plain);
    const double rel = (yq - yf).norm() / yf.norm(), rel_plain = (yp - yf).norm() / yf.norm();
    MESSAGE("QuantizedScan relative RMS error vs float: Hadamard + smoothing ", rel, ", neither ", rel_plain);
    // One 8-bit scale per token over all E×N state values: about 1%; calibrated S4 + Hadamard lower it.
    CHECK(rel_plain < 5e-2);
    CHECK(rel < rel_plain);
    CHECK(rel > 0.0);
}

TEST_CASE("bad input: a scan policy sized for another state refuses the layer through the ssm API") {
    const std::size_t L = 4, E = 32, N = 16;
    mqtest::ScanData d(L, E, N, 41);
    const auto w = mq::ScanWeights::from_A(mq::view(std::as_const(d.A)), d.D);
    const mq::ScanInputs in{mq::view(d.x), mq::view(d.delta), mq::view(d.B), mq::view(d.C), mq::view(d.z), false};
    mq::ScanCache<float> cache(E, N);
    mq::MatrixXf y(static_cast<Eigen::Index>(L), static_cast<Eigen::Index>(E));
    // An 8×8 rotation for N = 16.
    std::vector<float> h8(64, 0.0f);
    for (std::size_t i = 0; i < 8; ++i) h8[i * 8 + i] = 1.0f;
    const mq::QuantizedScan<mq::A8PerToken> q8(mq::ConstMatrixView<float>(h8.data(), 8, 8));
    CHECK_THROWS_WITH_AS(mq::selective_scan(q8, w, in, cache, mq::view(y)),
                         "QuantizedScan: rotation is 8 x 8 but the state size is 16", mq::error);
    // Smoothing scales for another state size, in the quantized and the smoothed policy.
    const std::vector<float> s12(12, 1.0f);
    const mq::QuantizedScan<mq::A8PerToken> qs(mq::ConstMatrixView<float>{}, s12);
    CHECK_THROWS_WITH_AS(mq::selective_scan(qs, w, in, cache, mq::view(y)),
                         "QuantizedScan: expected 16 smoothing scales (one per state index), got 12", mq::error);
    CHECK_THROWS_WITH_AS(mq::selective_scan(mq::SmoothedScan(s12), w, in, cache, mq::view(y)),
                         "SmoothedScan: expected 16 smoothing scales (one per state index), got 12", mq::error);
    CHECK_THROWS_WITH_AS(mq::SmoothedScan(std::span<const float>{}),
                         "SmoothedScan: needs one smoothing scale per state index, got none", mq::error);
    CHECK(cache.state_is_zero()); // nothing ran
}
