// MambaBlock<Policies>: one Mamba-1 mixer layer with its pre-norm and residual; float policies
// give the float reference block, quantizer policies (later) the quantized one.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/nn/float_ops.hpp>
#include <mambaquant/quant/quantizer.hpp>

#include <Eigen/Core>

#include <cstddef>

MQ_NAMESPACE_BEGIN

// Online rotation at out_proj's input: none (the float block; recipes supply Hadamard ones).
struct NoRotation {
    static constexpr bool is_identity = true;
};
// The scan as a policy: plain float selective scan, state in float (METHOD §1).
struct PlainScan {
    static constexpr bool is_smoothed = false;
};

// Float weights of one layer in checkpoint orientation (W: [out, in], y = x·Wᵀ).
struct MambaLayerWeights {
    Eigen::RowVectorXf norm;  // [D]        backbone.layers.{i}.norm.weight
    MatrixXf in_proj;         // [2E, D]    rows 0..E−1 → x, E..2E−1 → z
    MatrixXf conv_weight;     // [E, K]     conv1d.weight [E, 1, K] squeezed
    Eigen::RowVectorXf conv_bias; // [E]
    MatrixXf x_proj;          // [R+2N, E]  rows: dt, B, C
    MatrixXf dt_proj;         // [E, R]
    Eigen::RowVectorXf dt_bias; // [E]
    MatrixXf A;               // [E, N]     A = −exp(A_log)
    Eigen::RowVectorXf D;     // [E]
    MatrixXf out_proj;        // [D, E]
};

// Decode cache of one layer: the last K−1 conv inputs (oldest first) and the SSM state.
struct MambaCache {
    MatrixXf conv_window; // [K−1, E]
    MatrixXf state;       // [E, N]
    void reset() {
        conv_window.setZero();
        state.setZero();
    }
};

// Scratch for one block call, reused across layers and calls (no allocation once warm).
struct MambaWorkspace {
    MatrixXf hn, xz, xc, dbc, delta, y, out, dA;
    Eigen::VectorXf dx;
};

namespace detail {
// TEMPORARY float linear y = x·Wᵀ (W [out, in]) on Eigen's GEMM/GEMV, until nn/linear.hpp
// (issue 6) lands and the block holds Linear<WeightQ, ActQ, Rotation> members instead.
template <class In>
void float_linear_tmp(const In& x, const MatrixXf& weight, MatrixXf& y) {
    y.resize(x.rows(), weight.rows());
    y.noalias() = x * weight.transpose();
}
} // namespace detail

template <NumericPolicy WeightQ = FloatPolicy, NumericPolicy ActQ = FloatPolicy, class Rotation = NoRotation,
          class Scan = PlainScan>
class MambaBlock {
    static_assert(WeightQ::is_float && ActQ::is_float,
                  "MambaBlock: quantized policies need nn/linear.hpp (issue 6); only FloatPolicy is wired yet");
    static_assert(Rotation::is_identity && !Scan::is_smoothed,
                  "MambaBlock: only NoRotation and PlainScan are wired in the float path");

public:
    using weight_policy = WeightQ;
    using activation_policy = ActQ;
    using rotation_policy = Rotation;
    using scan_policy = Scan;

    MambaBlock() = default;
    // Checks every shape against (D, E, N, R, K) so a wrong checkpoint fails here, by name.
    MambaBlock(MambaLayerWeights w, std::size_t d_model, std::size_t d_inner, std::size_t d_state,
               std::size_t dt_rank, std::size_t d_conv, float eps)
        : D_(d_model), E_(d_inner), N_(d_state), R_(dt_rank), K_(d_conv), eps_(eps), w_(std::move(w)) {
        auto shape = [](const MatrixXf& m, std::size_t r, std::size_t c, const char* name) {
            require(static_cast<std::size_t>(m.rows()) == r && static_cast<std::size_t>(m.cols()) == c, "MambaBlock: ",
                    name, ": expected shape [", r, ", ", c, "], got [", m.rows(), ", ", m.cols(), "]");
        };
        auto len = [](const Eigen::RowVectorXf& v, std::size_t n, const char* name) {
            require(static_cast<std::size_t>(v.size()) == n, "MambaBlock: ", name, ": expected [", n, "], got [", v.size(), "]");
        };
        len(w_.norm, D_, "norm.weight");
        shape(w_.in_proj, 2 * E_, D_, "in_proj.weight");
        shape(w_.conv_weight, E_, K_, "conv1d.weight");
        len(w_.conv_bias, E_, "conv1d.bias");
        shape(w_.x_proj, R_ + 2 * N_, E_, "x_proj.weight");
        shape(w_.dt_proj, E_, R_, "dt_proj.weight");
        len(w_.dt_bias, E_, "dt_proj.bias");
        shape(w_.A, E_, N_, "A_log");
        len(w_.D, E_, "D");
        shape(w_.out_proj, D_, E_, "out_proj.weight");
        conv_t_ = w_.conv_weight.transpose();
    }

    const MambaLayerWeights& weights() const noexcept { return w_; }
    std::size_t d_model() const noexcept { return D_; }

    MambaCache make_cache() const {
        MambaCache c;
        c.conv_window = MatrixXf::Zero(static_cast<Eigen::Index>(K_ - 1), static_cast<Eigen::Index>(E_));
        c.state = MatrixXf::Zero(static_cast<Eigen::Index>(E_), static_cast<Eigen::Index>(N_));
        return c;
    }

    // h ← h + Mixer(RMSNorm(h)) over the L rows of h (tokens in order), continuing from `cache`
    // and leaving it at the state after the last row. Prefill is L > 1, decode L = 1: same math.
    void forward(MatrixXf& h, MambaCache& cache, MambaWorkspace& ws) const {
        const auto E = static_cast<Eigen::Index>(E_), R = static_cast<Eigen::Index>(R_),
                   N = static_cast<Eigen::Index>(N_);
        nn_float::rms_norm(h, w_.norm, eps_, ws.hn);
        detail::float_linear_tmp(ws.hn, w_.in_proj, ws.xz);                                     // [L, 2E] = [x | z]
        nn_float::causal_conv1d(ws.xz.leftCols(E), conv_t_, w_.conv_bias, cache.conv_window, ws.xc);
        ws.xc.array() = nn_float::silu(ws.xc.array());                    // x = SiLU(conv(x) + b)
        detail::float_linear_tmp(ws.xc, w_.x_proj, ws.dbc);                                     // [L, R+2N] = [dt | B | C]
        detail::float_linear_tmp(ws.dbc.leftCols(R), w_.dt_proj, ws.delta);                   // [L, E]
        ws.delta.array() = nn_float::softplus((ws.delta.rowwise() + w_.dt_bias).array());
        nn_float::selective_scan(ws.delta, ws.xc, ws.dbc.middleCols(R, N), ws.dbc.middleCols(R + N, N), w_.A, w_.D,
                                 cache.state, ws.dA, ws.dx, ws.y);
        ws.y.array() *= nn_float::silu(ws.xz.rightCols(E).array());      // y ⊙ SiLU(z)
        detail::float_linear_tmp(ws.y, w_.out_proj, ws.out);
        h += ws.out;
    }

private:
    std::size_t D_ = 0, E_ = 0, N_ = 0, R_ = 0, K_ = 0;
    float eps_ = 1e-5f;
    MambaLayerWeights w_;
    MatrixXf conv_t_; // [K, E]
};

// The float reference block.
using FloatMambaBlock = MambaBlock<>;

MQ_NAMESPACE_END
