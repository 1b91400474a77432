// Tests of the SIMD selective scan against its scalar reference and a float64 reference.
#include <mambaquant/kernels/selective_scan.hpp>

#include "kernels/arch_test_util.hpp"
#include "kernels/scan_test_data.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr std::size_t kLongL = 64;
#else
constexpr std::size_t kLongL = 2048;
#endif

// Tolerance: 1e-5 relative to the magnitude of the summed terms (scan_test_data.hpp). The float
// scan's error per step is a few ulp (exp_approx ≤ 1.5e-7, roundings 6e-8 each) relative to the
// state magnitude; it decays with the state, so over Mamba's Δ range it stays ~1e-6.
constexpr double kTol = 1e-5;

void check_scan(std::size_t L, std::size_t E, std::size_t N, bool softplus, bool with_state, std::uint64_t seed) {
    CAPTURE(L); CAPTURE(E); CAPTURE(N); CAPTURE(softplus); CAPTURE(with_state);
    mqtest::ScanData simd(L, E, N, seed, softplus);
    if (with_state) simd.random_state(seed + 1);
    mqtest::ScanData ref = simd;
    const auto state0 = mqtest::to_double(simd.state);
    const auto r64 = mqtest::reference64(simd.args(softplus), state0);
    mq::selective_scan(mq::default_arch{}, simd.args(softplus));
    mq::selective_scan_ref(ref.args(softplus));
    const double err_simd = mqtest::max_rel_to_magnitude(simd.y.data(), r64.y, r64.mag_y);
    const double err_ref = mqtest::max_rel_to_magnitude(ref.y.data(), r64.y, r64.mag_y);
    const double err_state = mqtest::max_rel_to_magnitude(simd.state.data(), r64.state, r64.mag_state);
    MESSAGE("max error / magnitude: simd ", err_simd, ", ref ", err_ref, ", state ", err_state);
    CHECK(err_simd <= kTol);
    CHECK(err_ref <= kTol);
    CHECK(err_state <= kTol);
    // SIMD against the float reference directly, on the same scale.
    std::vector<double> ref_y(ref.y.data(), ref.y.data() + ref.y.size());
    CHECK(mqtest::max_rel_to_magnitude(simd.y.data(), ref_y, r64.mag_y) <= kTol);
}

} // namespace

TEST_CASE("selective_scan: SIMD and reference match float64 on Mamba shapes") {
    check_scan(kLongL, 1536, 16, false, false, 1);
    check_scan(256, 5120, 16, true, true, 2);
    check_scan(kLongL / 4, 5120, 16, false, true, 3);
}

TEST_CASE("selective_scan: odd shapes, channel tails, other state sizes") {
    check_scan(37, 13, 5, false, true, 4);   // N without a SIMD specialization, E < one block
    check_scan(50, 21, 16, true, true, 5);   // a 5-channel tail after two blocks
    check_scan(64, 40, 4, false, true, 6);
    check_scan(64, 24, 8, true, false, 7);
    check_scan(33, 16, 32, false, true, 8);
    check_scan(1, 1536, 16, true, true, 9);  // one decode token
}

TEST_CASE("selective_scan: without D and gate, with first-step log scale") {
    mqtest::ScanData simd(80, 24, 16, 11);
    simd.random_state(12);
    std::vector<float> log_scale(16);
    for (std::size_t n = 0; n < 16; ++n) log_scale[n] = -std::log(0.25f + 0.2f * static_cast<float>(n));
    mqtest::ScanData ref = simd;
    auto make = [&](mqtest::ScanData& s) {
        auto a = s.args();
        a.D = nullptr;
        a.z = {};
        a.first_step_log_scale = log_scale.data();
        return a;
    };
    const auto r64 = mqtest::reference64(make(simd), mqtest::to_double(simd.state), log_scale.data());
    mq::selective_scan(mq::default_arch{}, make(simd));
    mq::selective_scan_ref(make(ref));
    CHECK(mqtest::max_rel_to_magnitude(simd.y.data(), r64.y, r64.mag_y) <= kTol);
    CHECK(mqtest::max_rel_to_magnitude(ref.y.data(), r64.y, r64.mag_y) <= kTol);
}

TEST_CASE("selective_scan: strided inputs (column blocks of a larger tensor)") {
    // x and z as the two halves of an in_proj output [L, 2E]; B and C as blocks of x_proj's [L, R+2N].
    const std::size_t L = 40, E = 32, N = 16, R = 3;
    mqtest::ScanData base(L, E, N, 21);
    mq::MatrixXf xz(L, 2 * E), dbc(L, R + 2 * N);
    xz << base.x, base.z;
    dbc.setZero();
    dbc.middleCols(R, N) = base.B;
    dbc.middleCols(R + N, N) = base.C;
    mqtest::ScanData strided = base;
    auto a = strided.args();
    a.x = mq::ConstMatrixView<float>(xz.data(), L, E, 2 * E);
    a.z = mq::ConstMatrixView<float>(xz.data() + E, L, E, 2 * E);
    a.B = mq::ConstMatrixView<float>(dbc.data() + R, L, N, R + 2 * N);
    a.C = mq::ConstMatrixView<float>(dbc.data() + R + N, L, N, R + 2 * N);
    mq::selective_scan(mq::default_arch{}, a);
    mq::selective_scan(mq::default_arch{}, base.args());
    CHECK(strided.y == base.y); // same arithmetic on the same values: bit for bit
    CHECK(strided.state == base.state);
}

// The wider paths keep the AVX2 block's per-channel arithmetic: outputs and states equal the first
// arch's bit for bit, for 16-channel blocks, an 8-channel AVX2 block and a reference tail after
// them (E = 45), every specialized N, softplus, carried state, S-SiLU gate scales, the first-step
// log scale and one decode token.
TEST_CASE("selective_scan: every arch gives the first arch's floats bit for bit") {
    struct Case {
        std::size_t L, E, N;
        bool softplus, extras;
    };
    for (const Case c : {Case{64, 45, 16, true, false}, Case{33, 48, 4, false, true}, Case{20, 32, 8, true, true},
                         Case{17, 24, 32, true, false}, Case{1, 1536, 16, true, true}, Case{9, 13, 5, true, false}}) {
        CAPTURE(c.L); CAPTURE(c.E); CAPTURE(c.N);
        mqtest::ScanData base(c.L, c.E, c.N, 40 + c.E, c.softplus);
        base.random_state(41);
        std::vector<float> gate_scale(c.E), log_scale(c.N);
        for (std::size_t d = 0; d < c.E; ++d) gate_scale[d] = 0.5f + 0.03f * static_cast<float>(d % 17);
        for (std::size_t n = 0; n < c.N; ++n) log_scale[n] = -0.1f * static_cast<float>(n);
        std::vector<mq::MatrixXf> ys, states;
        mqtest::for_each_arch([&](auto arch) {
            mqtest::ScanData run = base;
            auto a = run.args(c.softplus);
            if (c.extras) {
                a.gate_scale = gate_scale.data();
                a.first_step_log_scale = log_scale.data();
            }
            mq::selective_scan(arch, a);
            ys.push_back(run.y);
            states.push_back(run.state);
        });
        for (std::size_t i = 1; i < ys.size(); ++i) {
            CHECK(ys[i] == ys[0]);
            CHECK(states[i] == states[0]);
        }
    }
}

// Rows 8 floats past a cache line (as Eigen's 32-byte aligned allocations of large matrices sit):
// every 16-lane piece spans two lines. Every arch still gives the floats of the same scan on
// 64-byte aligned rows bit for bit (E = 48: 3 blocks of 16; E = 56: 3 of 16 and one AVX2 block of 8).
TEST_CASE("selective_scan: rows half a cache line off give the aligned rows' floats on every arch") {
    for (const std::size_t E : {std::size_t{48}, std::size_t{56}}) {
        CAPTURE(E);
        const std::size_t L = 19, N = 16;
        mqtest::ScanData base(L, E, N, 70 + E, true);
        base.random_state(71);
        mqtest::ScanData aligned_run = base;
        mq::selective_scan(mq::avx2{}, aligned_run.args(true));
        // x, Δ, z and y copied to rows that start 8 floats (32 bytes) past a 64-byte boundary.
        auto off = [&](const mq::MatrixXf& m, mq::aligned_vector<float>& buf) {
            buf.assign(8 + L * E, 0.0f);
            std::copy(m.data(), m.data() + L * E, buf.begin() + 8);
            return buf.data() + 8;
        };
        mqtest::for_each_arch([&](auto arch) {
            mqtest::ScanData run = base;
            mq::aligned_vector<float> xb, db, zb, yb;
            auto a = run.args(true);
            a.x = mq::ConstMatrixView<float>(off(run.x, xb), L, E);
            a.delta = mq::ConstMatrixView<float>(off(run.delta, db), L, E);
            a.z = mq::ConstMatrixView<float>(off(run.z, zb), L, E);
            float* y = off(run.y, yb);
            a.y = mq::MatrixView<float>(y, L, E);
            REQUIRE(reinterpret_cast<std::uintptr_t>(a.x.data) % 64 == 32);
            mq::selective_scan(arch, a);
            CHECK(std::equal(y, y + L * E, aligned_run.y.data()));
            CHECK(run.state == aligned_run.state);
        });
    }
}
