// Tests of the quantized-output scan (y = Q(state·H)·Q(C·H)ᵀ per token) against its reference.
#include <mambaquant/kernels/quantized_scan.hpp>
#include <mambaquant/quant/quantizer.hpp>

#include "kernels/arch_test_util.hpp"
#include "kernels/scan_test_data.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace {

using A8 = mq::A8PerToken;                                  // asymmetric uint8
using S8 = mq::Quantizer<8, mq::per_token, mq::symmetric>;  // symmetric int8

// The 16×16 Sylvester Hadamard, normalized (entries ±1/4): H·Hᵀ = I.
std::vector<float> hadamard16() {
    std::vector<float> h(256);
    for (std::size_t i = 0; i < 16; ++i)
        for (std::size_t j = 0; j < 16; ++j) h[i * 16 + j] = (__builtin_popcount(static_cast<unsigned>(i & j)) % 2 ? -0.25f : 0.25f);
    return h;
}

// C ← C·H (what folding Hᵀ into W_C's rows produces).
void rotate_rows(mq::MatrixXf& C, const std::vector<float>& h) {
    const auto N = static_cast<std::size_t>(C.cols());
    mq::MatrixXf out(C.rows(), C.cols());
    for (Eigen::Index t = 0; t < C.rows(); ++t)
        for (std::size_t n = 0; n < N; ++n) {
            double acc = 0.0;
            for (std::size_t m = 0; m < N; ++m) acc += double(C(t, static_cast<Eigen::Index>(m))) * h[m * N + n];
            out(t, static_cast<Eigen::Index>(n)) = static_cast<float>(acc);
        }
    C = out;
}

template <class Q>
struct Run {
    mqtest::ScanData data;
    std::vector<float> ws;
    explicit Run(const mqtest::ScanData& d) : data(d), ws(mq::quantized_scan_workspace_size(d.L, d.E, d.N)) {}
    mq::QuantizedScanArgs qargs(const float* rotation) {
        return {rotation, ws.data(), ws.size()};
    }
};

// Bound on |ŷ − y| per output from quantizing both operands (a code is within one scale step
// of its value, clamping included): Σ_n |S_n|·s_C + |C_n|·s_S + s_S·s_C, times |SiLU(z)|.
template <class Q>
std::vector<double> quantization_bound(const mqtest::ScanData& d, const float* rotation) {
    const std::size_t L = d.L, E = d.E, N = d.N;
    std::vector<double> state(E * N), bound(L * E);
    for (std::size_t i = 0; i < E * N; ++i) state[i] = d.state.data()[i];
    std::vector<double> S(E * N);
    for (std::size_t t = 0; t < L; ++t) {
        for (std::size_t e = 0; e < E; ++e)
            for (std::size_t n = 0; n < N; ++n) {
                const double dt = d.delta(t, e);
                state[e * N + n] = std::exp(dt * d.A(e, n)) * state[e * N + n] + dt * d.B(t, n) * d.x(t, e);
            }
        double lo = 1e300, hi = -1e300;
        for (std::size_t e = 0; e < E; ++e)
            for (std::size_t n = 0; n < N; ++n) {
                double r = state[e * N + n];
                if (rotation) {
                    r = 0.0;
                    for (std::size_t m = 0; m < N; ++m) r += state[e * N + m] * rotation[m * N + n];
                }
                S[e * N + n] = r;
                lo = std::min(lo, r);
                hi = std::max(hi, r);
            }
        float clo = d.C(t, 0), chi = d.C(t, 0);
        for (std::size_t n = 0; n < N; ++n) {
            clo = std::min(clo, d.C(t, n));
            chi = std::max(chi, d.C(t, n));
        }
        const double sS = Q::params(static_cast<float>(lo), static_cast<float>(hi)).scale * 1.0001;
        const double sC = Q::params(clo, chi).scale;
        for (std::size_t e = 0; e < E; ++e) {
            double b = 0.0;
            for (std::size_t n = 0; n < N; ++n) b += std::fabs(S[e * N + n]) * sC + std::fabs(d.C(t, n)) * sS + sS * sC;
            const double zv = d.z(t, e);
            bound[t * E + e] = b * std::fabs(zv / (1.0 + std::exp(-zv)));
        }
    }
    return bound;
}

// How many outputs the SIMD kernel and the reference may disagree on. Both quantize state_t (·H)
// per token; their float states differ by the float scans' rounding (SIMD: exp2_approx and
// another summation order; reference: std::exp), measured here by running the two float scans
// token by token. A code x = S/s + z moves only when x lies within |Δx| of a rounding
// boundary, with probability ≤ 2·|Δx| for a fractional part spread evenly, where
// |Δx| ≤ |ΔS|/s + |S|·|Δs|/s² (the token's scale s moves with its extreme states, and so may its
// zero point z = round(−min/s), which moves every code of the token). An output sums N codes:
// it differs with probability p ≤ min(1, Σ_n 2·|Δx_n| + p_z) (an upper bound: a moved code
// times a C code of 0 changes nothing). The kernels round S·H (N fmas, ≤ N·u·Σ|S_m·H_mn|) and
// x·(1/s) (≤ u·|x|) on each side as well, which widens each window by those amounts.
// Returned: the mean count μ = Σ p over all outputs.
template <class Q>
double expected_disagreements(const mqtest::ScanData& d0, const float* rotation) {
    const std::size_t L = d0.L, E = d0.E, N = d0.N;
    mqtest::ScanData fs = d0, fr = d0;
    mq::MatrixXf y1(1, static_cast<Eigen::Index>(E));
    const double u = std::ldexp(1.0, -24);
    std::vector<double> rs(E * N), rr(E * N), rot_err(E * N, 0.0);
    double mu = 0.0;
    for (std::size_t t = 0; t < L; ++t) {
        for (mqtest::ScanData* f : {&fs, &fr}) {
            mq::SelectiveScanArgs<float> a = f->args();
            auto row = [t](const mq::MatrixXf& m) {
                return mq::ConstMatrixView<float>(m.data() + t * static_cast<std::size_t>(m.cols()), 1, static_cast<std::size_t>(m.cols()));
            };
            a.x = row(f->x); a.delta = row(f->delta); a.B = row(f->B); a.C = row(f->C); a.z = row(f->z);
            a.y = mq::view(y1);
            if (f == &fs) mq::selective_scan(mq::default_arch{}, a);
            else mq::selective_scan_ref(a);
        }
        // The quantized operand: state (·H), in double from each float state.
        for (std::size_t e = 0; e < E; ++e)
            for (std::size_t n = 0; n < N; ++n) {
                double a = 0.0, b = 0.0;
                if (rotation) {
                    double mag = 0.0;
                    for (std::size_t m = 0; m < N; ++m) {
                        a += double(fs.state.data()[e * N + m]) * rotation[m * N + n];
                        b += double(fr.state.data()[e * N + m]) * rotation[m * N + n];
                        mag += std::fabs(double(fs.state.data()[e * N + m]) * rotation[m * N + n]);
                    }
                    rot_err[e * N + n] = 2.0 * static_cast<double>(N) * u * mag; // both sides' rounding
                } else {
                    a = fs.state.data()[e * N + n];
                    b = fr.state.data()[e * N + n];
                }
                rs[e * N + n] = a;
                rr[e * N + n] = b;
            }
        const auto [lo_s, hi_s] = std::minmax_element(rs.begin(), rs.end());
        const auto [lo_r, hi_r] = std::minmax_element(rr.begin(), rr.end());
        const double s = Q::params(static_cast<float>(*lo_s), static_cast<float>(*hi_s)).scale;
        const double ds = std::fabs(s - Q::params(static_cast<float>(*lo_r), static_cast<float>(*hi_r)).scale);
        const double pz = Q::symmetry::is_symmetric ? 0.0
                                                    : 2.0 * (std::fabs(*lo_s - *lo_r) / s + std::fabs(*lo_s) * ds / (s * s));
        for (std::size_t e = 0; e < E; ++e) {
            double p = pz;
            for (std::size_t n = 0; n < N; ++n)
                p += 2.0 * ((std::fabs(rs[e * N + n] - rr[e * N + n]) + rot_err[e * N + n] + 2.0 * u * std::fabs(rs[e * N + n])) / s +
                            std::fabs(rs[e * N + n]) * ds / (s * s));
            mu += std::min(1.0, p);
        }
    }
    return mu;
}

template <class Q>
void check_quantized(std::size_t L, std::size_t E, bool rotate, std::uint64_t seed) {
    CAPTURE(L); CAPTURE(E); CAPTURE(rotate); CAPTURE(Q::symmetry::name);
    mqtest::ScanData d(L, E, 16, seed);
    d.random_state(seed + 1);
    const auto h = hadamard16();
    if (rotate) rotate_rows(d.C, h);
    const float* rot = rotate ? h.data() : nullptr;
    // Exact float y from the float64 scan with the rotation undone (C·H·Hᵀ = C).
    mqtest::ScanData plain = d;
    if (rotate) {
        std::vector<float> ht(256);
        for (std::size_t i = 0; i < 16; ++i)
            for (std::size_t j = 0; j < 16; ++j) ht[i * 16 + j] = h[j * 16 + i];
        rotate_rows(plain.C, ht);
    }
    const auto r64 = mqtest::reference64(plain.args(), mqtest::to_double(plain.state));
    const auto bound = quantization_bound<Q>(d, rot);
    Run<Q> simd(d), ref(d);
    mq::quantized_selective_scan<mq::default_arch, Q>(mq::default_arch{}, simd.data.args(), simd.qargs(rot));
    mq::quantized_selective_scan_ref<Q>(ref.data.args(), ref.qargs(rot));
    double worst_simd = 0.0, worst_ref = 0.0, mean_err = 0.0, mean_mag = 0.0;
    std::size_t differ = 0;
    for (std::size_t i = 0; i < L * E; ++i) {
        const double allowed = bound[i] + 1e-5 * r64.mag_y[i];
        worst_simd = std::max(worst_simd, std::fabs(simd.data.y.data()[i] - r64.y[i]) / allowed);
        worst_ref = std::max(worst_ref, std::fabs(ref.data.y.data()[i] - r64.y[i]) / allowed);
        mean_err += std::fabs(simd.data.y.data()[i] - r64.y[i]);
        mean_mag += r64.mag_y[i];
        if (std::fabs(simd.data.y.data()[i] - ref.data.y.data()[i]) > 1e-5 * r64.mag_y[i]) ++differ;
    }
    // The count of disagreements is a sum of independent rare events with mean ≤ μ; by a
    // Chernoff bound P(count ≥ μ + t) ≤ exp(−t²/(2(μ + t/3))), below 1e-5 for t = 6√μ + 6.
    const double mu = expected_disagreements<Q>(d, rot);
    const double allowed_differ = mu + 6.0 * std::sqrt(mu) + 6.0;
    MESSAGE("quantized scan: error / bound simd ", worst_simd, ", ref ", worst_ref, "; mean |err| / mean magnitude ",
            mean_err / mean_mag, "; outputs where simd and ref differ by > 1e-5·mag: ", differ, " of ", L * E,
            " (expected at most ", mu, ", allowed ", allowed_differ, ")");
    CHECK(worst_simd <= 1.0);
    CHECK(worst_ref <= 1.0);
    // The two differ only where a state value sits within its float rounding of a code boundary.
    CHECK(static_cast<double>(differ) <= allowed_differ);
    // The final state is the float scan's (quantization touches only the output).
    mqtest::ScanData fl = d;
    mq::selective_scan(mq::default_arch{}, fl.args());
    CHECK((simd.data.state.array() == fl.state.array()).all());
    // And the reference's is selective_scan_ref's, so the float states expected_disagreements
    // compares are the two kernels' own.
    mqtest::ScanData fr = d;
    mq::selective_scan_ref(fr.args());
    CHECK((ref.data.state.array() == fr.state.array()).all());
}

} // namespace

TEST_CASE("quantized scan: within the quantization bound of the float scan, SIMD vs reference") {
#if defined(__SANITIZE_ADDRESS__)
    const std::size_t L = 16;
#else
    const std::size_t L = 128;
#endif
    check_quantized<A8>(L, 1536, false, 1);
    check_quantized<A8>(L, 1536, true, 2);
    check_quantized<S8>(L, 512, true, 3);
    check_quantized<S8>(L / 2, 40, false, 4);
}

TEST_CASE("quantized scan: bit-identical to the reference when the states are (A = 0, Δ = 1, no gate)") {
    for (const bool rotate : {false, true}) {
        mqtest::ScanData d(21, 64, 16, 9); // 21: two chunks of 8 tokens and a tail of 5
        d.random_state(10);
        d.A.setZero();
        d.delta.setOnes();
        const auto h = hadamard16();
        const float* rot = rotate ? h.data() : nullptr;
        Run<A8> simd(d), ref(d);
        auto a1 = simd.data.args(), a2 = ref.data.args();
        a1.z = {};
        a2.z = {};
        mq::quantized_selective_scan<mq::default_arch, A8>(mq::default_arch{}, a1, simd.qargs(rot));
        mq::quantized_selective_scan_ref<A8>(a2, ref.qargs(rot));
        CHECK((simd.data.state.array() == ref.data.state.array()).all());
        CHECK((simd.data.y.array() == ref.data.y.array()).all());
    }
}

TEST_CASE("quantized scan: the Hadamard on the state dimension lowers the error of an outlier channel") {
    // One state index carries most of the energy (B and C column 0 scaled up), the case R4 is for.
    mqtest::ScanData d(64, 256, 16, 11);
    for (Eigen::Index t = 0; t < d.B.rows(); ++t) {
        d.B(t, 0) *= 30.0f;
        d.C(t, 0) *= 30.0f;
    }
    const auto h = hadamard16();
    mqtest::ScanData rotated = d;
    rotate_rows(rotated.C, h);
    const auto r64 = mqtest::reference64(d.args(), mqtest::to_double(d.state));
    Run<A8> plain_run(d), rot_run(rotated);
    mq::quantized_selective_scan<mq::default_arch, A8>(mq::default_arch{}, plain_run.data.args(), plain_run.qargs(nullptr));
    mq::quantized_selective_scan<mq::default_arch, A8>(mq::default_arch{}, rot_run.data.args(), rot_run.qargs(h.data()));
    double e_plain = 0.0, e_rot = 0.0;
    for (std::size_t i = 0; i < r64.y.size(); ++i) {
        e_plain += std::pow(plain_run.data.y.data()[i] - r64.y[i], 2);
        e_rot += std::pow(rot_run.data.y.data()[i] - r64.y[i], 2);
    }
    MESSAGE("quantized scan squared error: plain ", e_plain, ", Hadamard-rotated ", e_rot);
    CHECK(e_rot < e_plain);
}

// The 16-lane path (avx512vnni, E a multiple of 16) keeps the AVX2 block's per-channel
// arithmetic and the exact per-token min/max: outputs and states equal the first arch's bit for
// bit, with and without the rotation, both symmetries, the S-SiLU gate scales and the first-step
// log scale, chunks of 8 with a tail (L = 21), one decode token, and E = 40 (not a multiple of 16:
// 8-channel blocks on every arch).
TEST_CASE("quantized scan: every arch gives the first arch's floats bit for bit") {
    struct Case {
        std::size_t L, E, N;
        bool rotate, extras;
    };
    const auto h = hadamard16();
    for (const Case c : {Case{21, 64, 16, true, true}, Case{21, 48, 16, false, false}, Case{1, 1536, 16, true, false},
                         Case{9, 40, 16, true, true}, Case{12, 32, 8, false, true}}) {
        CAPTURE(c.L); CAPTURE(c.E); CAPTURE(c.N); CAPTURE(c.rotate);
        mqtest::ScanData base(c.L, c.E, c.N, 60 + c.E);
        base.random_state(61);
        std::vector<float> gate_scale(c.E), log_scale(c.N);
        for (std::size_t d = 0; d < c.E; ++d) gate_scale[d] = 0.5f + 0.03f * static_cast<float>(d % 17);
        for (std::size_t n = 0; n < c.N; ++n) log_scale[n] = -0.1f * static_cast<float>(n);
        const float* rot = c.rotate && c.N == 16 ? h.data() : nullptr;
        std::vector<mq::MatrixXf> ys, states;
        mqtest::for_each_arch([&](auto arch) {
            using Arch = decltype(arch);
            auto run = [&]<class Q>(Q) {
                Run<Q> r(base);
                auto a = r.data.args();
                if (c.extras) {
                    a.gate_scale = gate_scale.data();
                    a.first_step_log_scale = log_scale.data();
                }
                mq::quantized_selective_scan<Arch, Q>(arch, a, r.qargs(rot));
                ys.push_back(r.data.y);
                states.push_back(r.data.state);
            };
            run(A8{});
            run(S8{});
        });
        for (std::size_t i = 2; i < ys.size(); ++i) {
            CHECK(ys[i] == ys[i % 2]);
            CHECK(states[i] == states[i % 2]);
        }
    }
}
