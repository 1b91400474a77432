// MambaBlock<Policies>: one Mamba-1 mixer layer with its pre-norm and residual; float policies
// give the float reference block, quantizer policies the quantized one, from the same template.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/nn/linear.hpp>
#include <mambaquant/nn/rms_norm.hpp>
#include <mambaquant/quant/quantizer.hpp>
#include <mambaquant/ssm/cache.hpp>
#include <mambaquant/ssm/conv1d.hpp>
#include <mambaquant/ssm/scan_policy.hpp>
#include <mambaquant/ssm/selective_scan.hpp>
#include <mambaquant/transform/mamba_weights.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstddef>
#include <span>
#include <utility>

MQ_NAMESPACE_BEGIN

// Decode cache of one layer: the last K−1 conv inputs (oldest first) and the SSM state.
using MambaCache = LayerCache<float>;

namespace detail {
template <class Vector>
std::span<const float> span_of(const Vector& v) noexcept {
    return {v.data(), static_cast<std::size_t>(v.size())};
}
} // namespace detail

// One layer:
//   hn = RMSNorm(h);  [x, z] = hn·W_inᵀ;  x = SiLU(conv1d(x) + b);  [dt, B, C] = x·W_xᵀ
//   y = scan(x, Δ = softplus(dt·W_dtᵀ + b_dt), A, B, C, D) ⊙ SiLU(z);  h ← h + y·W_outᵀ
// WeightQ/ActQ quantize all four projections (FloatPolicy: float); OutRotation is the online
// rotation at out_proj's input (folded into W_out by Linear); Scan the scan policy.
template <class WeightQ = FloatPolicy, class ActQ = FloatPolicy, class OutRotation = NoRotation, class Scan = PlainScan>
class MambaBlock {
    // First: a policy that does not model its concept stops here, naming the concept and member.
    static_assert(check_weight_policy<WeightQ>() && check_act_policy<ActQ>() && check_rotation<OutRotation>() &&
                  check_scan_policy<Scan>());

public:
    using weight_policy = WeightQ;
    using activation_policy = ActQ;
    using rotation_policy = OutRotation;
    using scan_policy = Scan;
    using linear_type = Linear<WeightQ, ActQ, NoRotation>;
    using out_linear_type = Linear<WeightQ, ActQ, OutRotation>;
    static constexpr bool is_float = WeightQ::is_float && ActQ::is_float;

    // Scratch for one call, reused across layers and calls (no allocation once warm).
    struct Workspace {
        MatrixXf hn, xz, xc, dbc, delta, y, out;
        typename linear_type::workspace_type lin;
        typename out_linear_type::workspace_type out_lin;
    };

    // Checks every shape against (D, E, N, R, K) so a wrong checkpoint fails here, by name.
    MambaBlock(const MambaLayerWeights& w, std::size_t d_model, std::size_t d_inner, std::size_t d_state,
               std::size_t dt_rank, std::size_t d_conv, float eps, Scan scan = {}, OutRotation out_rotation = {})
        : D_(d_model), E_(d_inner), N_(d_state), R_(dt_rank), K_(d_conv), eps_(eps),
          norm_(check_layer(w, d_model, d_inner, d_state, dt_rank, d_conv).norm.transpose()), in_proj_(view(w.in_proj)),
          x_proj_(view(w.x_proj)), dt_proj_(view(w.dt_proj)), out_proj_(view(w.out_proj), {}, std::move(out_rotation)),
          conv_(ConvWeights::from(view(w.conv_w), detail::span_of(w.conv_b))),
          scan_w_(ScanWeights::from_A_log(view(w.A_log), detail::span_of(w.D), detail::span_of(w.dt_bias))),
          scan_(std::move(scan)) {}

    std::size_t d_model() const noexcept { return D_; }
    std::size_t d_inner() const noexcept { return E_; }
    const linear_type& in_proj() const noexcept { return in_proj_; }
    const linear_type& x_proj() const noexcept { return x_proj_; }
    const linear_type& dt_proj() const noexcept { return dt_proj_; }
    const out_linear_type& out_proj() const noexcept { return out_proj_; }
    const ConvWeights& conv() const noexcept { return conv_; }
    const ScanWeights& scan_weights() const noexcept { return scan_w_; }
    const Eigen::RowVectorXf& norm() const noexcept { return norm_; }

    // The float weights back (float blocks only; out_proj has the rotation folded in, if any).
    MambaLayerWeights weights() const
        requires(WeightQ::is_float && ActQ::is_float)
    {
        MambaLayerWeights w;
        w.norm = norm_.transpose();
        w.in_proj = in_proj_.weights();
        w.conv_w = conv_.weight_t.transpose();
        w.conv_b = Eigen::VectorXf::Zero(static_cast<Eigen::Index>(E_));
        if (!conv_.bias.empty()) w.conv_b = Eigen::Map<const Eigen::VectorXf>(conv_.bias.data(), static_cast<Eigen::Index>(E_));
        w.x_proj = x_proj_.weights();
        w.dt_proj = dt_proj_.weights();
        w.dt_bias = Eigen::Map<const Eigen::VectorXf>(scan_w_.dt_bias.data(), static_cast<Eigen::Index>(E_));
        w.A_log = (-scan_w_.A.array()).log().matrix(); // A_log = log(−A)
        w.D = Eigen::Map<const Eigen::VectorXf>(scan_w_.D.data(), static_cast<Eigen::Index>(E_));
        w.out_proj = out_proj_.weights();
        w.reset_extras();
        return w;
    }

    MambaCache make_cache() const { return MambaCache(E_, N_, K_); }

    // The pool the four projections split their output channels over; nullptr runs everything on
    // the calling thread (engines with their own threads).
    void set_thread_pool(ThreadPool* pool) noexcept {
        in_proj_.set_thread_pool(pool);
        x_proj_.set_thread_pool(pool);
        dt_proj_.set_thread_pool(pool);
        out_proj_.set_thread_pool(pool);
    }

    // h ← h + Mixer(RMSNorm(h)) over the L rows of h (tokens in order), continuing from `cache`
    // and leaving it at the state after the last row. Prefill is L > 1, decode L = 1: same math.
    void forward(MatrixXf& h, MambaCache& cache, Workspace& ws) const {
        const auto L = h.rows();
        const auto E = static_cast<Eigen::Index>(E_), R = static_cast<Eigen::Index>(R_),
                   N = static_cast<Eigen::Index>(N_);
        ws.hn.resize(L, h.cols());
        ws.xz.resize(L, 2 * E);
        ws.xc.resize(L, E);
        ws.dbc.resize(L, R + 2 * N);
        ws.delta.resize(L, E);
        ws.y.resize(L, E);
        ws.out.resize(L, h.cols());
        rms_norm(view(std::as_const(h)), norm_, eps_, view(ws.hn));
        in_proj_.forward(view(std::as_const(ws.hn)), view(ws.xz), ws.lin);                 // [L, 2E] = [x | z]
        const ConstMatrixView<float> xz = view(std::as_const(ws.xz));
        const ConstMatrixView<float> x(xz.data, xz.rows, E_, xz.stride), z(xz.data + E_, xz.rows, E_, xz.stride);
        causal_conv1d(conv_, x, &cache.conv, view(ws.xc), /*apply_silu=*/true);          // x = SiLU(conv(x) + b)
        x_proj_.forward(view(std::as_const(ws.xc)), view(ws.dbc), ws.lin);                // [L, R+2N] = [dt | B | C]
        const ConstMatrixView<float> dbc = view(std::as_const(ws.dbc));
        dt_proj_.forward(ConstMatrixView<float>(dbc.data, dbc.rows, R_, dbc.stride), view(ws.delta), ws.lin);
        ScanInputs in;                                                                    // Δ = softplus(· + b_dt) in the scan
        in.x = view(std::as_const(ws.xc));
        in.delta = view(std::as_const(ws.delta));
        in.B = ConstMatrixView<float>(dbc.data + R_, dbc.rows, N_, dbc.stride);
        in.C = ConstMatrixView<float>(dbc.data + R_ + N_, dbc.rows, N_, dbc.stride);
        in.z = z;                                                                         // y ⊙ SiLU(z) fused
        in.delta_softplus = true;
        selective_scan(scan_, scan_w_, in, cache.scan, view(ws.y));
        out_proj_.forward(view(std::as_const(ws.y)), view(ws.out), ws.out_lin);
        h += ws.out;
    }

private:
    static const MambaLayerWeights& check_layer(const MambaLayerWeights& w, std::size_t D, std::size_t E,
                                                std::size_t N, std::size_t R, std::size_t K) {
        auto shape = [](const MatrixXf& m, std::size_t r, std::size_t c, const char* name) {
            require(static_cast<std::size_t>(m.rows()) == r && static_cast<std::size_t>(m.cols()) == c, "MambaBlock: ",
                    name, ": expected shape [", r, ", ", c, "], got [", m.rows(), ", ", m.cols(), "]");
        };
        auto len = [](const Eigen::VectorXf& v, std::size_t n, const char* name) {
            require(static_cast<std::size_t>(v.size()) == n, "MambaBlock: ", name, ": expected [", n, "], got [", v.size(), "]");
        };
        len(w.norm, D, "norm.weight");
        shape(w.in_proj, 2 * E, D, "in_proj.weight");
        shape(w.conv_w, E, K, "conv1d.weight");
        len(w.conv_b, E, "conv1d.bias");
        shape(w.x_proj, R + 2 * N, E, "x_proj.weight");
        shape(w.dt_proj, E, R, "dt_proj.weight");
        len(w.dt_bias, E, "dt_proj.bias");
        shape(w.A_log, E, N, "A_log");
        len(w.D, E, "D");
        shape(w.out_proj, D, E, "out_proj.weight");
        // The MambaQuant run-time extras (S-SiLU gate scale, dt shift, carried-state scale, online
        // rotations given as matrices) are not applied by this block yet: refuse them rather than
        // compute a different function. An empty extra is neutral too.
        auto neutral = [](const Eigen::VectorXf& v, float value) { return v.size() == 0 || (v.array() == value).all(); };
        require(neutral(w.gate_scale, 1.0f), "MambaBlock: gate_scale (S-SiLU) is not supported by this block yet");
        require(neutral(w.dt_shift, 0.0f), "MambaBlock: dt_shift is not supported by this block yet; fold it into dt_proj.bias");
        require(neutral(w.state_scale, 1.0f), "MambaBlock: state_scale (carried-state absorption) is not supported by this block yet");
        require(w.out_rotation.size() == 0 && w.state_rotation.size() == 0,
                "MambaBlock: online rotations are given as the OutRotation policy, not as matrices in the weights");
        return w;
    }

    std::size_t D_ = 0, E_ = 0, N_ = 0, R_ = 0, K_ = 0;
    float eps_ = 1e-5f;
    Eigen::RowVectorXf norm_;
    linear_type in_proj_, x_proj_, dt_proj_;
    out_linear_type out_proj_;
    ConvWeights conv_;
    ScanWeights scan_w_;
    Scan scan_;
};

// The float reference block.
using FloatMambaBlock = MambaBlock<>;

MQ_NAMESPACE_END
