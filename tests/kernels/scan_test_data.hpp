// Test helper (not a library header): Mamba-like random scan inputs and a float64 reference.
#pragma once

#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/selective_scan.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace mqtest {

// Δ = softplus(dt) with dt such that Δ ∈ ~[1e-3, 1e-1] (mamba's dt init range), A = −(n+1)·u
// with u ∈ [0.8, 1.25] (S4D-real init, perturbed), x, B, C, z ~ N(0, 1), D ∈ [0.5, 1.5].
struct ScanData {
    std::size_t L, E, N;
    mq::MatrixXf x, delta, A, B, C, z, state, y;
    mq::aligned_vector<float> D, dt_bias;
    ScanData(std::size_t L_, std::size_t E_, std::size_t N_, std::uint64_t seed, bool raw_delta = false)
        : L(L_), E(E_), N(N_) {
        mq::Rng rng(seed);
        const auto Li = static_cast<Eigen::Index>(L), Ei = static_cast<Eigen::Index>(E),
                   Ni = static_cast<Eigen::Index>(N);
        x.resize(Li, Ei); delta.resize(Li, Ei); z.resize(Li, Ei); y.resize(Li, Ei);
        A.resize(Ei, Ni); state.resize(Ei, Ni); B.resize(Li, Ni); C.resize(Li, Ni);
        for (auto& v : x.reshaped()) v = static_cast<float>(rng.normal());
        for (auto& v : z.reshaped()) v = static_cast<float>(rng.normal());
        for (auto& v : B.reshaped()) v = static_cast<float>(rng.normal());
        for (auto& v : C.reshaped()) v = static_cast<float>(rng.normal());
        dt_bias.resize(E);
        for (auto& v : dt_bias) v = static_cast<float>(rng.uniform(-6.0, -3.0));
        for (auto& v : delta.reshaped()) {
            const double raw = rng.uniform(-6.9, -2.25);
            v = raw_delta ? static_cast<float>(0.5 * rng.normal()) : static_cast<float>(std::log1p(std::exp(raw)));
        }
        for (Eigen::Index d = 0; d < Ei; ++d)
            for (Eigen::Index n = 0; n < Ni; ++n) A(d, n) = -static_cast<float>((n + 1) * rng.uniform(0.8, 1.25));
        state.setZero();
        D.resize(E);
        for (auto& v : D) v = static_cast<float>(rng.uniform(0.5, 1.5));
    }
    void random_state(std::uint64_t seed) {
        mq::Rng rng(seed);
        for (auto& v : state.reshaped()) v = static_cast<float>(rng.normal());
    }
    mq::SelectiveScanArgs<float> args(bool softplus = false) {
        mq::SelectiveScanArgs<float> a;
        a.x = mq::view(x); a.delta = mq::view(delta); a.A = mq::view(A); a.B = mq::view(B);
        a.C = mq::view(C); a.D = D.data(); a.z = mq::view(z); a.state = mq::view(state);
        a.y = mq::view(y);
        a.delta_softplus = softplus;
        a.delta_bias = softplus ? dt_bias.data() : nullptr;
        return a;
    }
};

// The scan in float64 from the same inputs, with the magnitude of what each output sums:
//   |s|_t = exp(Δ·A)·|s|_{t−1} + |Δ·B·x|,   mag_y = (Σ_n |s|_n·|C_n| + |D·x|)·|SiLU(z)|
// An error "relative to the magnitude" is the usual bound for a sum of terms of either sign
// (it does not blow up where y is near 0 by cancellation).
struct Reference64 {
    std::vector<double> y, mag_y, state, mag_state;
};

inline Reference64 reference64(const mq::SelectiveScanArgs<float>& a, const std::vector<double>& state0,
                               const float* first_log_scale = nullptr) {
    const std::size_t L = a.length(), E = a.channels(), N = a.state_size();
    Reference64 r;
    r.y.assign(L * E, 0.0); r.mag_y.assign(L * E, 0.0);
    r.state = state0;
    r.mag_state.resize(E * N);
    for (std::size_t i = 0; i < E * N; ++i) r.mag_state[i] = std::fabs(state0[i]);
    for (std::size_t t = 0; t < L; ++t)
        for (std::size_t d = 0; d < E; ++d) {
            const double xv = a.x(t, d);
            double dt = a.delta(t, d);
            if (a.delta_softplus) {
                const double v = dt + (a.delta_bias ? a.delta_bias[d] : 0.0f);
                dt = v > 20.0 ? v : std::log1p(std::exp(v));
            }
            double acc = 0.0, mag = 0.0;
            for (std::size_t n = 0; n < N; ++n) {
                double arg = dt * a.A(d, n);
                if (t == 0 && first_log_scale) arg += first_log_scale[n];
                const double dA = std::exp(arg), dBu = dt * a.B(t, n) * xv;
                double& s = r.state[d * N + n];
                double& m = r.mag_state[d * N + n];
                s = dA * s + dBu;
                m = dA * m + std::fabs(dBu);
                acc += s * a.C(t, n);
                mag += m * std::fabs(a.C(t, n));
            }
            if (a.D) {
                acc += double(a.D[d]) * xv;
                mag += std::fabs(double(a.D[d]) * xv);
            }
            if (a.z.data) {
                const double zv = a.z(t, d), g = zv / (1.0 + std::exp(-zv));
                acc *= g;
                mag *= std::fabs(g);
            }
            r.y[t * E + d] = acc;
            r.mag_y[t * E + d] = mag;
        }
    return r;
}

// max_i |got_i − want_i| / mag_i (mag floored at 1e-30)
template <class Got>
double max_rel_to_magnitude(const Got& got, const std::vector<double>& want, const std::vector<double>& mag) {
    double worst = 0.0;
    for (std::size_t i = 0; i < want.size(); ++i)
        worst = std::max(worst, std::fabs(double(got[i]) - want[i]) / std::max(mag[i], 1e-30));
    return worst;
}

inline std::vector<double> to_double(const mq::MatrixXf& m) {
    std::vector<double> v(static_cast<std::size_t>(m.size()));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = m.data()[i];
    return v;
}

} // namespace mqtest
