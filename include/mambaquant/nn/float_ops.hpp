// TEMPORARY float path of the Mamba block (RMSNorm, causal conv1d, selective scan, SiLU) on Eigen
// arrays, used until the ssm/ and kernels/ scan and conv1d land; the golden tests pin its math.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/tensor.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstddef>

MQ_NAMESPACE_BEGIN
namespace nn_float {

// hn = h · rsqrt(mean(h²) + eps) · gamma, row by row (a row is a token).
inline void rms_norm(const Eigen::Ref<const MatrixXf>& h, const Eigen::RowVectorXf& gamma, float eps, MatrixXf& out) {
    out.resize(h.rows(), h.cols());
    for (Eigen::Index t = 0; t < h.rows(); ++t) {
        const float ms = h.row(t).squaredNorm() / static_cast<float>(h.cols());
        out.row(t) = h.row(t).cwiseProduct(gamma) * (1.0f / std::sqrt(ms + eps));
    }
}

// silu(x) = x · σ(x) = x / (1 + e^−x)
template <class Derived>
auto silu(const Eigen::ArrayBase<Derived>& x) {
    return x / (1.0f + (-x).exp());
}

// softplus(x) = log(1 + eˣ), and x itself above 20 (PyTorch's threshold: log1p(e^20) = 20 in float).
template <class Derived>
auto softplus(const Eigen::ArrayBase<Derived>& x) {
    return (x > 20.0f).select(x, x.exp().log1p());
}

// Causal depthwise conv over time: out[t,d] = b[d] + Σ_k w[k,d]·in[t−(K−1)+k, d], with in[<0]
// taken from `window` (the last K−1 inputs of the previous call, oldest first; zeros at start).
// `w_t` is the conv weight transposed to [K, E] so that each tap is one contiguous row.
// The window is then advanced to the last K−1 inputs seen.
inline void causal_conv1d(const Eigen::Ref<const MatrixXf>& x, const MatrixXf& w_t, const Eigen::RowVectorXf& bias,
                          MatrixXf& window, MatrixXf& out) {
    const Eigen::Index L = x.rows(), E = x.cols(), K = w_t.rows();
    out.resize(L, E);
    for (Eigen::Index t = 0; t < L; ++t) {
        out.row(t) = bias;
        for (Eigen::Index k = 0; k < K; ++k) {
            const Eigen::Index src = t - (K - 1) + k; // < 0: from the window
            if (src >= 0) out.row(t) += w_t.row(k).cwiseProduct(x.row(src));
            else out.row(t) += w_t.row(k).cwiseProduct(window.row(src + K - 1));
        }
    }
    if (K > 1) {
        // New window = last K−1 rows of [window; x].
        MatrixXf joined(K - 1 + L, E);
        joined.topRows(K - 1) = window;
        joined.bottomRows(L) = x;
        window = joined.bottomRows(K - 1);
    }
}

// Selective scan (selective_scan_ref semantics), state in float, one token at a time:
//   state_t[d,n] = exp(Δ_t[d]·A[d,n])·state_{t−1}[d,n] + Δ_t[d]·B_t[n]·x_t[d]
//   y_t[d]       = Σ_n state_t[d,n]·C_t[n] + D[d]·x_t[d]
// delta [L,E], x [L,E], B/C [L,N] (column blocks of x_proj's output), A [E,N]; y [L,E].
inline void selective_scan(const MatrixXf& delta, const MatrixXf& x, const Eigen::Ref<const MatrixXf>& B,
                           const Eigen::Ref<const MatrixXf>& C, const MatrixXf& A, const Eigen::RowVectorXf& Dv,
                           MatrixXf& state, MatrixXf& dA, Eigen::VectorXf& dx, MatrixXf& y) {
    const Eigen::Index L = x.rows(), E = x.cols();
    y.resize(L, E);
    dA.resize(A.rows(), A.cols());
    dx.resize(E);
    for (Eigen::Index t = 0; t < L; ++t) {
        // exp(Δ·A)·state first, then the rank-1 Δ·x ⊗ B written over state (no temporaries).
        dA.array() = (A.array().colwise() * delta.row(t).transpose().array()).exp() * state.array();
        dx = delta.row(t).cwiseProduct(x.row(t)).transpose();
        state.noalias() = dx * B.row(t);
        state += dA;
        y.row(t).noalias() = C.row(t) * state.transpose();
        y.row(t) += Dv.cwiseProduct(x.row(t));
    }
}

} // namespace nn_float
MQ_NAMESPACE_END
