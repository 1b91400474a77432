// Tests of the ssm/ scan API: bad input, prefill vs decode, chunking, smoothed vs plain (S4).
#include <mambaquant/ssm/selective_scan.hpp>

#include "kernels/scan_test_data.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr std::size_t kN = 16;

struct Layer {
    mqtest::ScanData data;
    mq::ScanWeights weights;
    Layer(std::size_t L, std::size_t E, std::uint64_t seed, bool raw_delta = false)
        : data(L, E, kN, seed, raw_delta),
          weights(mq::ScanWeights::from_A(mq::view(std::as_const(data.A)), data.D, data.dt_bias)) {}
    mq::ScanInputs inputs(bool softplus = false) const {
        mq::ScanInputs in;
        in.x = mq::view(data.x);
        in.delta = mq::view(data.delta);
        in.B = mq::view(data.B);
        in.C = mq::view(data.C);
        in.z = mq::view(data.z);
        in.delta_softplus = softplus;
        return in;
    }
};

template <class M>
std::span<const float> row(const M& m, std::size_t t) {
    return {m.data() + t * static_cast<std::size_t>(m.cols()), static_cast<std::size_t>(m.cols())};
}

std::vector<float> smoothing_scales() {
    std::vector<float> s(kN);
    for (std::size_t n = 0; n < kN; ++n) s[n] = 0.05f * std::pow(1.6f, static_cast<float>(n)); // 0.05 .. 57
    return s;
}

} // namespace

TEST_CASE("ScanWeights: A = −exp(A_log), shapes and finiteness checked") {
    mq::MatrixXf A_log(3, 2);
    A_log << 0.0f, 1.0f, 2.0f, -1.0f, 0.5f, 0.25f;
    const auto w = mq::ScanWeights::from_A_log(mq::view(std::as_const(A_log)));
    CHECK(w.A(0, 0) == -1.0f);
    CHECK(w.A(0, 1) == doctest::Approx(-std::exp(1.0f)));
    CHECK(w.D.empty());
    std::vector<float> D(2);
    CHECK_THROWS_WITH_AS(mq::ScanWeights::from_A_log(mq::view(std::as_const(A_log)), D),
                         "ScanWeights: D: expected 3 values, got 2", mq::error);
    A_log(1, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS(mq::ScanWeights::from_A_log(mq::view(std::as_const(A_log))),
                         "ScanWeights: A_log[1, 1] is not finite", mq::error);
}

TEST_CASE("selective_scan: bad input throws at the API boundary") {
    Layer layer(8, 24, 1);
    mq::ScanCache<float> cache(24, kN);
    mq::MatrixXf y(8, 24);
    auto in = layer.inputs();
    const mq::PlainScan plain;
    auto run = [&](const mq::ScanInputs& i) { mq::selective_scan(plain, layer.weights, i, cache, mq::view(y)); };
    CHECK_NOTHROW(run(in));

    auto bad = in;
    bad.delta.rows = 7;
    CHECK_THROWS_WITH_AS(run(bad), "selective_scan: delta: expected shape [8 x 24], got [7 x 24]", mq::error);
    bad = in;
    bad.B.cols = 15;
    CHECK_THROWS_WITH_AS(run(bad), "selective_scan: B: expected shape [8 x 16], got [8 x 15]", mq::error);
    bad = in;
    bad.C.rows = 9;
    CHECK_THROWS_WITH_AS(run(bad), "selective_scan: C: expected shape [8 x 16], got [9 x 16]", mq::error);
    bad = in;
    bad.x.cols = 23;
    CHECK_THROWS_WITH_AS(run(bad), "selective_scan: x: expected shape [8 x 24], got [8 x 23]", mq::error);
    bad = in;
    bad.z.cols = 25;
    CHECK_THROWS_WITH_AS(run(bad), "selective_scan: z: expected shape [8 x 24], got [8 x 25]", mq::error);
    bad = in;
    bad.x.rows = bad.delta.rows = bad.B.rows = bad.C.rows = bad.z.rows = 0;
    CHECK_THROWS_WITH_AS(run(bad), "selective_scan: the sequence is empty (L = 0)", mq::error);

    // A / D against x: weights for 32 channels, inputs with 24.
    Layer wide(8, 32, 2);
    CHECK_THROWS_WITH_AS(mq::selective_scan(plain, wide.weights, in, cache, mq::view(y)),
                         "selective_scan: x: expected shape [8 x 32], got [8 x 24]", mq::error);
    mq::ScanCache<float> small(24, 8);
    CHECK_THROWS_WITH_AS(mq::selective_scan(plain, layer.weights, in, small, mq::view(y)),
                         "selective_scan: cache state: expected [24 x 16], got [24 x 8]", mq::error);
    mq::MatrixXf y_bad(8, 23);
    CHECK_THROWS_WITH_AS(mq::selective_scan(plain, layer.weights, in, cache, mq::view(y_bad)),
                         "selective_scan: y: expected shape [8 x 24], got [8 x 23]", mq::error);

    // Non-finite inputs, named with their position.
    Layer nan_layer = layer;
    nan_layer.data.x(3, 5) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS(run(nan_layer.inputs()), "selective_scan: x[3, 5] is not finite (nan)", mq::error);
    nan_layer = layer;
    nan_layer.data.delta(0, 0) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH_AS(run(nan_layer.inputs()), "selective_scan: delta[0, 0] is not finite (inf)", mq::error);
    nan_layer = layer;
    nan_layer.data.B(7, 15) = -std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH_AS(run(nan_layer.inputs()), "selective_scan: B[7, 15] is not finite (-inf)", mq::error);
    nan_layer = layer;
    nan_layer.data.C(2, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS(run(nan_layer.inputs()), "selective_scan: C[2, 1] is not finite (nan)", mq::error);
    nan_layer = layer;
    nan_layer.data.z(1, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS(run(nan_layer.inputs()), "selective_scan: z[1, 1] is not finite (nan)", mq::error);
    nan_layer = layer;
    nan_layer.data.delta(4, 2) = -0.5f;
    CHECK_THROWS_AS(run(nan_layer.inputs()), mq::error); // a negative Δ without softplus
    CHECK_NOTHROW(run(nan_layer.inputs(true)));           // the raw projection may be negative

    // Smoothing scales: wrong count, non-positive.
    std::vector<float> s(8, 1.0f);
    CHECK_THROWS_WITH_AS(mq::selective_scan(mq::SmoothedScan(s), layer.weights, in, cache, mq::view(y)),
                         "SmoothedScan: expected 16 smoothing scales (one per state index), got 8", mq::error);
    s.assign(kN, 1.0f);
    s[3] = 0.0f;
    CHECK_THROWS_WITH_AS(mq::SmoothedScan{s}, "SmoothedScan: smoothing scale s[3] must be finite and positive, got 0",
                         mq::error);
    // A plain scan refuses a state left in the smoothed domain.
    cache.domain = mq::StateDomain::smoothed;
    CHECK_THROWS_AS(run(in), mq::error);
}

TEST_CASE("selective_scan: prefill of L tokens equals L decode steps; two chunks equal one prefill") {
    for (const bool softplus : {false, true}) {
        CAPTURE(softplus);
        const std::size_t L = 48, E = 1536;
        Layer layer(L, E, 3, softplus);
        const mq::PlainScan plain;
        mq::ScanCache<float> prefill(E, kN), steps(E, kN), chunks(E, kN);
        mq::MatrixXf y_prefill(L, E), y_steps(L, E), y_chunks(L, E);
        mq::selective_scan(plain, layer.weights, layer.inputs(softplus), prefill, mq::view(y_prefill));
        for (std::size_t t = 0; t < L; ++t) {
            mq::ScanStepInputs in{row(layer.data.x, t), row(layer.data.delta, t), row(layer.data.B, t),
                                  row(layer.data.C, t), row(layer.data.z, t), softplus};
            mq::selective_scan_step(plain, layer.weights, in, steps,
                                    std::span<float>(y_steps.data() + t * E, E));
        }
        // Same kernel, same per-channel arithmetic: bit for bit.
        CHECK(y_steps == y_prefill);
        CHECK(steps.state == prefill.state);

        const std::size_t split = 19;
        auto in = layer.inputs(softplus);
        auto first = in, second = in;
        first.x = in.x.row_block(0, split); first.delta = in.delta.row_block(0, split);
        first.B = in.B.row_block(0, split); first.C = in.C.row_block(0, split); first.z = in.z.row_block(0, split);
        second.x = in.x.row_block(split, L - split); second.delta = in.delta.row_block(split, L - split);
        second.B = in.B.row_block(split, L - split); second.C = in.C.row_block(split, L - split);
        second.z = in.z.row_block(split, L - split);
        mq::selective_scan(plain, layer.weights, first, chunks, mq::view(y_chunks).row_block(0, split));
        mq::selective_scan(plain, layer.weights, second, chunks, mq::view(y_chunks).row_block(split, L - split));
        CHECK(y_chunks == y_prefill);
        CHECK(chunks.state == prefill.state);
    }
}

TEST_CASE("selective_scan: delta_softplus with b_dt equals Δ computed beforehand (compute_delta)") {
    const std::size_t L = 20, E = 40, R = 5;
    Layer layer(L, E, 4);
    mq::Rng rng(5);
    mq::MatrixXf dt(L, R), W_dt(E, R);
    for (auto& v : dt.reshaped()) v = static_cast<float>(rng.normal());
    for (auto& v : W_dt.reshaped()) v = static_cast<float>(rng.normal() * 0.3);
    mq::MatrixXf raw = dt * W_dt.transpose(), delta(L, E);
    mq::compute_delta(mq::view(std::as_const(dt)), mq::view(std::as_const(W_dt)), layer.data.dt_bias, mq::view(delta));
    for (std::size_t t = 0; t < L; ++t)
        for (std::size_t d = 0; d < E; ++d)
            CHECK(delta(t, d) == doctest::Approx(mq::softplus_ref(raw(t, d) + layer.data.dt_bias[d])).epsilon(1e-6));
    mq::ScanCache<float> c1(E, kN), c2(E, kN);
    mq::MatrixXf y1(L, E), y2(L, E);
    auto in = layer.inputs();
    in.delta = mq::view(std::as_const(delta));
    mq::selective_scan(mq::PlainScan{}, layer.weights, in, c1, mq::view(y1));
    in.delta = mq::view(std::as_const(raw));
    in.delta_softplus = true;
    mq::selective_scan(mq::PlainScan{}, layer.weights, in, c2, mq::view(y2));
    CHECK(y1 == y2); // the fused softplus is the same SIMD softplus

    mq::MatrixXf bad(L, E + 1);
    CHECK_THROWS_WITH_AS(mq::compute_delta(mq::view(std::as_const(dt)), mq::view(std::as_const(W_dt)),
                                           layer.data.dt_bias, mq::view(bad)),
                         "compute_delta: delta: expected shape [20 x 40], got [20 x 41]", mq::error);
}

TEST_CASE("SmoothedScan equals the plain scan, with zero and with non-zero initial state") {
#if defined(__SANITIZE_ADDRESS__)
    const std::size_t L = 64;
#else
    const std::size_t L = 512;
#endif
    const std::size_t E = 1536;
    const auto s = smoothing_scales();
    const mq::SmoothedScan smoothed(s);
    for (const bool carried : {false, true}) {
        CAPTURE(carried);
        Layer plain_layer(L, E, 6);
        if (carried) plain_layer.data.random_state(7);
        Layer smooth_layer = plain_layer;
        smoothed.smooth_bc(mq::view(smooth_layer.data.B), mq::view(smooth_layer.data.C)); // B/s, C·s

        mq::ScanCache<float> pc(E, kN), sc(E, kN);
        pc.state = plain_layer.data.state;
        sc.state = plain_layer.data.state; // plain domain: the smoothed scan absorbs 1/s in step 0
        mq::MatrixXf yp(L, E), ys(L, E);
        const auto r64 = mqtest::reference64(plain_layer.data.args(), mqtest::to_double(plain_layer.data.state));
        mq::selective_scan(mq::PlainScan{}, plain_layer.weights, plain_layer.inputs(), pc, mq::view(yp));
        mq::selective_scan(smoothed, smooth_layer.weights, smooth_layer.inputs(), sc, mq::view(ys));
        CHECK(sc.domain == mq::StateDomain::smoothed);
        const double err_plain = mqtest::max_rel_to_magnitude(yp.data(), r64.y, r64.mag_y);
        const double err_smooth = mqtest::max_rel_to_magnitude(ys.data(), r64.y, r64.mag_y);
        const mq::MatrixXf state_back = sc.plain_state(s);
        const double err_state = mqtest::max_rel_to_magnitude(state_back.data(), r64.state, r64.mag_state);
        MESSAGE("smoothed vs float64: y ", err_smooth, " (plain ", err_plain, "), state ", err_state);
        CHECK(err_plain <= 1e-5);
        CHECK(err_smooth <= 1e-5);
        CHECK(err_state <= 1e-5);

        if (carried) {
            // Without the absorption the carried state would enter unscaled: visibly wrong.
            mq::ScanCache<float> wrong(E, kN);
            wrong.state = plain_layer.data.state;
            wrong.domain = mq::StateDomain::smoothed;
            mq::MatrixXf yw(L, E);
            mq::selective_scan(smoothed, smooth_layer.weights, smooth_layer.inputs(), wrong, mq::view(yw));
            CHECK(mqtest::max_rel_to_magnitude(yw.data(), r64.y, r64.mag_y) > 1e-2);

            // Decoding on from the smoothed cache stays equal to the plain scan (no second absorption).
            Layer next_plain(8, E, 8);
            Layer next_smooth = next_plain;
            smoothed.smooth_bc(mq::view(next_smooth.data.B), mq::view(next_smooth.data.C));
            mq::MatrixXf yp2(8, E), ys2(8, E);
            mqtest::ScanData ref_in = next_plain.data;
            ref_in.state = pc.state;
            const auto r64b = mqtest::reference64(ref_in.args(), mqtest::to_double(pc.state));
            mq::selective_scan(mq::PlainScan{}, next_plain.weights, next_plain.inputs(), pc, mq::view(yp2));
            mq::selective_scan(smoothed, next_smooth.weights, next_smooth.inputs(), sc, mq::view(ys2));
            CHECK(mqtest::max_rel_to_magnitude(ys2.data(), r64b.y, r64b.mag_y) <= 1e-5);
            CHECK(mqtest::max_rel_to_magnitude(yp2.data(), r64b.y, r64b.mag_y) <= 1e-5);
        }
    }
}
