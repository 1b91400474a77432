// Test support: a plain double-precision forward of one Mamba-1 layer and model (METHOD.md §1),
// honouring the MambaQuant run-time extras, plus random weights, orthogonal matrices and the
// mamba-130m channel profile committed in data/.
#pragma once

#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/transform/mamba_weights.hpp>

#include <Eigen/Core>
#include <Eigen/QR>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace mqtest {

using mq::MatrixXd;
using mq::MatrixXf;

struct Shapes {
    int d, e, n, r, k = 4;
};

inline std::vector<std::vector<double>> load_channel_profile();

inline MatrixXd gaussian(mq::Rng& rng, Eigen::Index rows, Eigen::Index cols, double sigma) {
    MatrixXd m(rows, cols);
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index j = 0; j < cols; ++j) m(i, j) = sigma * rng.normal();
    return m;
}

// Weights with the magnitudes of a trained Mamba layer's init (mamba_simple.py): dt in
// [1e-3, 1e-1] through the inverse softplus bias, A = -(1..N), D = 1, non-trivial γ.
inline mq::MambaLayerWeights random_layer(const Shapes& s, std::uint64_t seed) {
    mq::Rng rng(seed);
    mq::MambaLayerWeights w;
    w.in_proj = gaussian(rng, 2 * s.e, s.d, 1.0 / std::sqrt(s.d)).cast<float>();
    w.conv_w = gaussian(rng, s.e, s.k, 1.0 / std::sqrt(s.k)).cast<float>();
    w.conv_b = gaussian(rng, s.e, 1, 0.1).cast<float>();
    w.x_proj = gaussian(rng, s.r + 2 * s.n, s.e, 1.0 / std::sqrt(s.e)).cast<float>();
    w.dt_proj = gaussian(rng, s.e, s.r, 1.0 / std::sqrt(s.r)).cast<float>();
    w.dt_bias.resize(s.e);
    for (int i = 0; i < s.e; ++i) {
        const double dt = std::exp(std::log(1e-3) + rng.uniform() * (std::log(1e-1) - std::log(1e-3)));
        w.dt_bias[i] = static_cast<float>(dt + std::log(-std::expm1(-dt)));
    }
    w.A_log.resize(s.e, s.n);
    for (int i = 0; i < s.e; ++i)
        for (int j = 0; j < s.n; ++j) w.A_log(i, j) = static_cast<float>(std::log(1.0 + j));
    w.D = Eigen::VectorXf::Ones(s.e);
    w.out_proj = gaussian(rng, s.d, s.e, 1.0 / std::sqrt(s.e)).cast<float>();
    w.norm.resize(s.d);
    for (int i = 0; i < s.d; ++i) w.norm[i] = static_cast<float>(0.5 + rng.uniform());
    w.reset_extras();
    return w;
}

// Seeded random orthogonal matrix: Q of the QR of a Gaussian, column signs fixed by diag(R).
inline MatrixXd random_orthogonal(Eigen::Index n, std::uint64_t seed) {
    mq::Rng rng(seed);
    const Eigen::MatrixXd g = gaussian(rng, n, n, 1.0);
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
    Eigen::MatrixXd q = qr.householderQ();
    const Eigen::MatrixXd r = qr.matrixQR().triangularView<Eigen::Upper>();
    for (Eigen::Index j = 0; j < n; ++j)
        if (r(j, j) < 0) q.col(j) *= -1.0;
    return q;
}

// Correlated activations with a given per-channel magnitude profile p [d]:
//   x_j = p_j·(√ρ·(f·b_j)/‖b_j‖ + √(1−ρ)·g_j) + μ_j
// with f ~ N(0, I_k) shared factors (the correlation a Hadamard alone cannot undo), b_j ~ N(0, I_k)
// loadings, g independent noise, and a small mean μ_j = 0.1·p_j.
inline MatrixXf profile_activations(mq::Rng& rng, const std::vector<double>& p, Eigen::Index rows, int k, double rho) {
    const auto d = static_cast<Eigen::Index>(p.size());
    MatrixXd b = gaussian(rng, k, d, 1.0);
    for (Eigen::Index j = 0; j < d; ++j) b.col(j) /= b.col(j).norm();
    const MatrixXd f = gaussian(rng, rows, k, 1.0);
    MatrixXd x = std::sqrt(rho) * (f * b) + gaussian(rng, rows, d, std::sqrt(1.0 - rho));
    for (Eigen::Index j = 0; j < d; ++j) x.col(j) = (x.col(j).array() * p[static_cast<std::size_t>(j)] + 0.1 * p[static_cast<std::size_t>(j)]).matrix();
    return x.cast<float>();
}

// A residual-stream input [L, D] shaped like mamba-130m's (its layer-0 channel profile when
// D = 768, a seeded random profile otherwise). The profile is a test input: when it is missing
// the test fails (an exception) instead of quietly running on other data.
inline MatrixXd residual_input(mq::Rng& rng, Eigen::Index d, Eigen::Index rows) {
    std::vector<double> p;
    if (d == 768) {
        const auto profile = load_channel_profile();
        if (profile.size() != 24 || profile[0].size() != 768)
            throw std::runtime_error("data/mamba130m_in_proj_input_channel_stats.csv not found or not 24 x 768");
        p = profile[0];
    } else {
        for (Eigen::Index j = 0; j < d; ++j) p.push_back(0.5 + 2.5 * rng.uniform() * rng.uniform());
    }
    return profile_activations(rng, p, rows, 8, 0.5).cast<double>();
}

// What a calibration pass records inside a layer (all in the layer's own units).
struct LayerTrace {
    MatrixXd in_proj_input; // hn [L, D]
    MatrixXd conv_input;    // x rows of in_proj [L, E]
    MatrixXd dt_input;      // x_proj dt rows minus dt_shift [L, R]
    MatrixXd c;             // [L, N]
    Eigen::VectorXd state_absmax; // max over t, d of |state_t[d, n]| [N]
    MatrixXd out_proj_input;      // a = y ⊙ gate, before any online rotation [L, E]
};

inline double softplus(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }

// The layer's mixer output y·W_outᵀ [L, D] for the residual input h [L, D] (the residual add is
// the caller's). `state0` [E, N] is a carried state in the original units (absorbed through
// log(1/state_scale) on the first step, METHOD.md §4) when absorb is true, or in the layer's
// own (scaled) units when false; `state_out` receives the final state in the layer's units.
inline MatrixXd mixer_forward(const mq::MambaLayerWeights& w, const MatrixXd& h, LayerTrace* trace = nullptr,
                              const MatrixXd* state0 = nullptr, bool absorb = true, MatrixXd* state_out = nullptr) {
    const Eigen::Index L = h.rows(), D = w.out_proj.rows(), E = w.dt_proj.rows(), R = w.dt_proj.cols(),
                       N = w.A_log.cols(), K = w.conv_w.cols();
    const MatrixXd in_proj = w.in_proj.cast<double>(), x_proj = w.x_proj.cast<double>(),
                   dt_proj = w.dt_proj.cast<double>(), out_proj = w.out_proj.cast<double>();
    // hn = h·rsqrt(mean(h²) + 1e-5)·γ
    MatrixXd hn(L, D);
    for (Eigen::Index t = 0; t < L; ++t) {
        const double rs = 1.0 / std::sqrt(h.row(t).squaredNorm() / static_cast<double>(D) + 1e-5);
        for (Eigen::Index j = 0; j < D; ++j) hn(t, j) = h(t, j) * rs * static_cast<double>(w.norm[j]);
    }
    const MatrixXd xz = hn * in_proj.transpose();
    const MatrixXd x = xz.leftCols(E), z = xz.rightCols(E);
    // u = SiLU(causal depthwise conv(x) + b)
    MatrixXd u(L, E);
    for (Eigen::Index t = 0; t < L; ++t)
        for (Eigen::Index e = 0; e < E; ++e) {
            double acc = w.conv_b[e];
            for (Eigen::Index k = 0; k < K; ++k) {
                const Eigen::Index src = t - K + 1 + k;
                if (src >= 0) acc += static_cast<double>(w.conv_w(e, k)) * x(src, e);
            }
            u(t, e) = acc / (1.0 + std::exp(-acc));
        }
    const MatrixXd xdbl = u * x_proj.transpose();
    MatrixXd dt_in = xdbl.leftCols(R);
    dt_in.rowwise() -= w.dt_shift.cast<double>().transpose();
    const MatrixXd B = xdbl.middleCols(R, N), C = xdbl.middleCols(R + N, N);
    MatrixXd delta = dt_in * dt_proj.transpose();
    for (Eigen::Index t = 0; t < L; ++t)
        for (Eigen::Index e = 0; e < E; ++e) delta(t, e) = softplus(delta(t, e) + static_cast<double>(w.dt_bias[e]));
    const MatrixXd A = -w.A_log.cast<double>().array().exp();
    const MatrixXd rot = w.state_rotation.size() ? MatrixXd(w.state_rotation.cast<double>()) : MatrixXd::Identity(N, N);
    const MatrixXd Crot = C * rot.transpose(); // y = (state·rot)·Cᵀ = state·(C·rotᵀ)ᵀ
    MatrixXd state = state0 ? *state0 : MatrixXd::Zero(E, N);
    Eigen::VectorXd state_absmax = Eigen::VectorXd::Zero(N);
    MatrixXd y(L, E);
    for (Eigen::Index t = 0; t < L; ++t) {
        for (Eigen::Index e = 0; e < E; ++e) {
            double acc = 0.0;
            for (Eigen::Index n = 0; n < N; ++n) {
                double log_da = delta(t, e) * A(e, n);
                // first-step addcmul: log dA'_0 = Δ_0·A + log(1/s)
                if (t == 0 && state0 && absorb) log_da += std::log(1.0 / static_cast<double>(w.state_scale[n]));
                state(e, n) = std::exp(log_da) * state(e, n) + delta(t, e) * B(t, n) * u(t, e);
                state_absmax[n] = std::max(state_absmax[n], std::fabs(state(e, n)));
                acc += state(e, n) * Crot(t, n);
            }
            y(t, e) = acc + static_cast<double>(w.D[e]) * u(t, e);
        }
    }
    // a = y ⊙ S-SiLU_s(z) = y ⊙ z·σ(s⊙z)
    MatrixXd a(L, E);
    for (Eigen::Index t = 0; t < L; ++t)
        for (Eigen::Index e = 0; e < E; ++e) {
            const double s = w.gate_scale[e];
            a(t, e) = y(t, e) * z(t, e) / (1.0 + std::exp(-s * z(t, e)));
        }
    if (trace) *trace = LayerTrace{hn, x, dt_in, C, state_absmax, a};
    if (state_out) *state_out = state;
    const MatrixXd a_rot = w.out_rotation.size() ? MatrixXd(a * w.out_rotation.cast<double>()) : a;
    return a_rot * out_proj.transpose();
}

// Logits of the whole model for a token sequence.
inline MatrixXd model_forward(const mq::MambaWeights& m, const std::vector<int>& tokens) {
    const Eigen::Index L = static_cast<Eigen::Index>(tokens.size()), D = m.embedding.cols();
    MatrixXd h(L, D);
    for (Eigen::Index t = 0; t < L; ++t) h.row(t) = m.embedding.row(tokens[static_cast<std::size_t>(t)]).cast<double>();
    for (const auto& layer : m.layers) h += mixer_forward(layer, h);
    for (Eigen::Index t = 0; t < L; ++t) {
        const double rs = 1.0 / std::sqrt(h.row(t).squaredNorm() / static_cast<double>(D) + 1e-5);
        h.row(t) = (h.row(t).array() * rs * m.norm_f.cast<double>().transpose().array()).matrix();
    }
    return h * m.head().cast<double>().transpose();
}

// ‖a − b‖_F / ‖b‖_F
inline double rel_error(const MatrixXd& a, const MatrixXd& b) { return (a - b).norm() / b.norm(); }

// A data file committed with the repository (data/, provenance in data/README.md).
inline std::string data_file(const std::string& relative) { return std::string(MQ_SOURCE_DIR) + "/data/" + relative; }

// The real mamba-130m in_proj input channel magnitudes: 24 rows (layers) of 768 values.
inline std::vector<std::vector<double>> load_channel_profile() {
    const std::string path = data_file("mamba130m_in_proj_input_channel_stats.csv");
    std::vector<std::vector<double>> rows;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        std::vector<double> row;
        std::stringstream ss(line);
        std::string cell;
        while (std::getline(ss, cell, ',')) row.push_back(std::stod(cell));
        if (!row.empty()) rows.push_back(std::move(row));
    }
    return rows;
}

} // namespace mqtest
