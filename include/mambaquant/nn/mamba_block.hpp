// MambaBlock<Policies>: one Mamba-1 mixer layer with its pre-norm and residual; float policies
// give the float reference block, quantizer policies the quantized one, from the same template.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/nn/activation_tap.hpp>
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
//   hn = RMSNorm(h);  [x, z] = hn·W_inᵀ;  x = SiLU(conv1d(x) + b);  [dt, B, C] = x·W_xᵀ + [−μ, 0, 0]
//   y = scan(x, Δ = softplus(dt·W_dtᵀ + b_dt), A, B, C, D) ⊙ gate(z);  h ← h + y·W_outᵀ
// BasicMambaBlock<Lin, OutLin, Scan> runs it on whatever its parts are: Lin for in_proj, x_proj
// and dt_proj, OutLin for out_proj (any type with Linear's forward(x, y, workspace) and
// workspace_type: a Linear<W, A, R>, or the run-time AnyLinear of nn/site_linear.hpp), Scan a
// ScanPolicy. Every MambaQuant run-time part is in the parts, none is a separate pass:
//   • S-SiLU gate z·σ(g⊙z): ScanWeights::gate_scale, fused into the scan's gating epilogue;
//   • carried-state scale (S4): a SmoothedScan / QuantizedScan with smoothing scales (first-step
//     absorption of a plain carried state, so prefill, decode and a continued prefill all work);
//   • the quantized state·C (with R4): QuantizedScan;
//   • the online Hadamard at out_proj's input fused with its quantization: OutLin's rotation;
//   • the dt shift μ (apply_dt_shift records it and already folded W_dt·μ into b_dt): the block
//     needs no run-time shift, because −μ is x_proj's bias on its dt rows, added in the GEMM's
//     epilogue: (x·W_x,dtᵀ + (−μ))·W_dtᵀ + (b_dt + W_dt·μ) is the shifted reference exactly
//     (the same float operations; tests/nn/test_mamba_block.cpp checks it bit for bit).
// The mixer is mixer_forward(): reusable by a bidirectional (Vision Mamba) layer.
template <class Lin, class OutLin, ScanPolicy Scan>
class BasicMambaBlock {
public:
    using linear_type = Lin;
    using out_linear_type = OutLin;
    using scan_policy = Scan;

    // Scratch for one call, reused across layers and calls (no allocation once warm).
    struct Workspace {
        MatrixXf hn, xz, xc, dbc, delta, y, out;
        typename Lin::workspace_type lin;
        typename OutLin::workspace_type out_lin;
    };

    // Everything a layer runs with, already built (shapes are checked by the constructor).
    struct Parts {
        Eigen::RowVectorXf norm; // [D]
        Lin in_proj;             // [2E, D]
        Lin x_proj;              // [R+2N, E], bias [−μ, 0, 0] or none
        Lin dt_proj;             // [E, R], no bias (b_dt is in scan_w)
        OutLin out_proj;         // [D, E]
        ConvWeights conv;        // [K, E]
        ScanWeights scan_w;      // A, D, b_dt, gate_scale
        Scan scan;
    };

    BasicMambaBlock(std::size_t d_model, std::size_t d_inner, std::size_t d_state, std::size_t dt_rank,
                    std::size_t d_conv, float eps, Parts parts)
        : D_(d_model), E_(d_inner), N_(d_state), R_(dt_rank), K_(d_conv), eps_(eps), norm_(std::move(parts.norm)),
          in_proj_(std::move(parts.in_proj)), x_proj_(std::move(parts.x_proj)), dt_proj_(std::move(parts.dt_proj)),
          out_proj_(std::move(parts.out_proj)), conv_(std::move(parts.conv)), scan_w_(std::move(parts.scan_w)),
          scan_(std::move(parts.scan)) {
        auto lin = [](const auto& l, std::size_t out, std::size_t in, const char* name) {
            require(l.out_features() == out && l.in_features() == in, "MambaBlock: ", name, ": expected shape [", out,
                    ", ", in, "], got [", l.out_features(), ", ", l.in_features(), "]");
        };
        require(static_cast<std::size_t>(norm_.size()) == D_, "MambaBlock: norm.weight: expected [", D_, "], got [",
                norm_.size(), "]");
        lin(in_proj_, 2 * E_, D_, "in_proj.weight");
        lin(x_proj_, R_ + 2 * N_, E_, "x_proj.weight");
        lin(dt_proj_, E_, R_, "dt_proj.weight");
        lin(out_proj_, D_, E_, "out_proj.weight");
        require(conv_.channels() == E_ && conv_.taps() == K_, "MambaBlock: conv1d.weight: expected [", E_, ", ", K_,
                "], got [", conv_.channels(), ", ", conv_.taps(), "]");
        require(scan_w_.channels() == E_ && scan_w_.state_size() == N_, "MambaBlock: A_log: expected [", E_, ", ", N_,
                "], got [", scan_w_.channels(), ", ", scan_w_.state_size(), "]");
        scan_.check(E_, N_);
    }

    std::size_t d_model() const noexcept { return D_; }
    std::size_t d_inner() const noexcept { return E_; }
    std::size_t d_state() const noexcept { return N_; }
    std::size_t dt_rank() const noexcept { return R_; }
    std::size_t d_conv() const noexcept { return K_; }
    float eps() const noexcept { return eps_; }
    const Lin& in_proj() const noexcept { return in_proj_; }
    const Lin& x_proj() const noexcept { return x_proj_; }
    const Lin& dt_proj() const noexcept { return dt_proj_; }
    const OutLin& out_proj() const noexcept { return out_proj_; }
    const ConvWeights& conv() const noexcept { return conv_; }
    const ScanWeights& scan_weights() const noexcept { return scan_w_; }
    const Scan& scan() const noexcept { return scan_; }
    const Eigen::RowVectorXf& norm() const noexcept { return norm_; }
    // The pool the four projections split their output channels over (nullptr: calling thread).
    void set_thread_pool(ThreadPool* pool) {
        in_proj_.set_thread_pool(pool);
        x_proj_.set_thread_pool(pool);
        dt_proj_.set_thread_pool(pool);
        out_proj_.set_thread_pool(pool);
    }

    MambaCache make_cache() const { return MambaCache(E_, N_, K_); }

    // h ← h + Mixer(RMSNorm(h)) over the L rows of h (tokens in order), continuing from `cache`
    // and leaving it at the state after the last row. Prefill is L > 1, decode L = 1: same math.
    // `tap` (optional) sees every site's input and the layer output, as `layer`.
    void forward(MatrixXf& h, MambaCache& cache, Workspace& ws, ActivationTap* tap = nullptr,
                 std::size_t layer = 0) const {
        ws.hn.resize(h.rows(), h.cols());
        rms_norm(view(std::as_const(h)), norm_, eps_, view(ws.hn));
        mixer_forward(view(std::as_const(ws.hn)), cache, ws, tap, layer);
        h += ws.out;
        detail::tap(tap, layer, TapPoint::layer_output, view(std::as_const(h)));
    }

    // The mixer alone: ws.out [L, D] = Mixer(hn) for the normed rows hn [L, D] (which may be
    // ws.hn), continuing from `cache`. A bidirectional layer (Vision Mamba) runs it per direction.
    void mixer_forward(ConstMatrixView<float> hn, MambaCache& cache, Workspace& ws, ActivationTap* tap = nullptr,
                       std::size_t layer = 0) const {
        require(hn.cols == D_, "MambaBlock::mixer_forward: input has ", hn.cols, " columns, d_model is ", D_);
        const auto L = static_cast<Eigen::Index>(hn.rows);
        const auto E = static_cast<Eigen::Index>(E_), R = static_cast<Eigen::Index>(R_),
                   N = static_cast<Eigen::Index>(N_);
        ws.xz.resize(L, 2 * E);
        ws.xc.resize(L, E);
        ws.dbc.resize(L, R + 2 * N);
        ws.delta.resize(L, E);
        ws.y.resize(L, E);
        ws.out.resize(L, static_cast<Eigen::Index>(D_));
        detail::tap(tap, layer, TapPoint::in_proj_input, hn);
        in_proj_.forward(hn, view(ws.xz), ws.lin);                                         // [L, 2E] = [x | z]
        const ConstMatrixView<float> xz = view(std::as_const(ws.xz));
        const ConstMatrixView<float> x(xz.data, xz.rows, E_, xz.stride), z(xz.data + E_, xz.rows, E_, xz.stride);
        detail::tap(tap, layer, TapPoint::conv_input, x);
        dispatch(scan_arch_, [&](auto arch) {                                              // x = SiLU(conv(x) + b)
            causal_conv1d(conv_, x, &cache.conv, view(ws.xc), /*apply_silu=*/true, arch);
        });
        detail::tap(tap, layer, TapPoint::x_proj_input, view(std::as_const(ws.xc)));
        x_proj_.forward(view(std::as_const(ws.xc)), view(ws.dbc), ws.lin);                // [L, R+2N] = [dt | B | C]
        const ConstMatrixView<float> dbc = view(std::as_const(ws.dbc));
        const ConstMatrixView<float> dt(dbc.data, dbc.rows, R_, dbc.stride);
        detail::tap(tap, layer, TapPoint::dt_proj_input, dt);
        dt_proj_.forward(dt, view(ws.delta), ws.lin);
        ScanInputs in;                                                                    // Δ = softplus(· + b_dt) in the scan
        in.x = view(std::as_const(ws.xc));
        in.delta = view(std::as_const(ws.delta));
        in.B = ConstMatrixView<float>(dbc.data + R_, dbc.rows, N_, dbc.stride);
        in.C = ConstMatrixView<float>(dbc.data + R_ + N_, dbc.rows, N_, dbc.stride);
        in.z = z;                                                                         // y ⊙ SiLU(z) fused
        in.delta_softplus = true;
        if (tap) {
            tap->on_activation(layer, TapPoint::scan_delta, in.delta);
            tap->on_activation(layer, TapPoint::scan_B, in.B);
            tap->on_activation(layer, TapPoint::scan_C, in.C);
            tap->on_activation(layer, TapPoint::scan_z, in.z);
        }
        dispatch(scan_arch_, [&](auto arch) { selective_scan(scan_, scan_w_, in, cache.scan, view(ws.y), arch); });
        detail::tap(tap, layer, TapPoint::out_proj_input, view(std::as_const(ws.y)));
        out_proj_.forward(view(std::as_const(ws.y)), view(ws.out), ws.out_lin);
    }

protected:
    std::size_t D_ = 0, E_ = 0, N_ = 0, R_ = 0, K_ = 0;
    float eps_ = 1e-5f;
    Eigen::RowVectorXf norm_;
    Lin in_proj_, x_proj_, dt_proj_;
    OutLin out_proj_;
    ConvWeights conv_;
    ScanWeights scan_w_;
    Scan scan_;
    // The conv's and the scan's SIMD arch, picked once at construction (mq::active_arch(); README "SIMD arch").
    arch_id scan_arch_ = runnable_arch(active_arch());
};

namespace detail {
// x_proj's bias carrying the folded dt shift: [−μ (R), 0 (2N)], or none when μ = 0.
template <class Tag = void>
aligned_vector<float> dt_shift_bias(const dependent_t<Tag, MambaLayerWeights>& w) {
    aligned_vector<float> b;
    if (w.dt_shift.size() == 0 || (w.dt_shift.array() == 0.0f).all()) return b;
    b.assign(static_cast<std::size_t>(w.x_proj.rows()), 0.0f);
    for (Eigen::Index r = 0; r < w.dt_shift.size(); ++r) {
        require(std::isfinite(w.dt_shift[r]), "MambaBlock: dt_shift[", r, "] is not finite");
        b[static_cast<std::size_t>(r)] = -w.dt_shift[r];
    }
    return b;
}
// Q of an online rotation as the rotation applies it (x ← x·Q): the rows of R(I).
template <Rotation R>
MatrixXf online_rotation_matrix(const R& rot, std::size_t n) {
    MatrixXf q = MatrixXf::Identity(static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(n));
    rot.apply(view(q));
    return q;
}
// out_rotation recorded by the transforms (W_out already holds it) must be what `rot` applies.
template <Rotation R>
void require_same_rotation(const MatrixXf& recorded, const R& rot, const char* who) {
    const auto n = static_cast<std::size_t>(recorded.rows());
    require(rot.size() == n, who, ": out_rotation is ", n, " x ", n, " but the online rotation has size ", rot.size());
    const dependent_t<R, MatrixXf> q = online_rotation_matrix(rot, n);
    const float diff = (q - recorded).cwiseAbs().maxCoeff();
    // Both are ±1/√n-scaled Hadamard entries computed in float: equal to a few ulps when the same.
    require(diff <= 1e-5f, who, ": out_rotation differs from the online ", rot.spec().kind == RotationKind::hadamard ? "hadamard" : "rotation",
            " (max |difference| ", diff, "); the weights were rotated with another matrix");
}
} // namespace detail

// MambaBlock<WeightQ, ActQ, OutRotation, Scan>: the compile-time layout most users compose —
// WeightQ/ActQ quantize all four projections (FloatPolicy: float), OutRotation is the online
// rotation at out_proj's input, Scan the scan policy:
//   using Block = mq::MambaBlock<mq::W8PerChannel, mq::A8PerToken, mq::HadamardOnline, mq::SmoothedScan>;
//   Block b(weights, D, E, N, R, K, eps, mq::SmoothedScan(state_scale), mq::HadamardOnline(E));
// Built from MambaLayerWeights with every run-time extra applied (see BasicMambaBlock); what the
// chosen policies cannot apply is refused (mq::error naming it), never silently dropped:
//   gate_scale ≠ 1     → the S-SiLU gate (always available);
//   dt_shift ≠ 0       → x_proj's dt bias (always available);
//   state_scale ≠ 1    → Scan must carry exactly these smoothing scales (SmoothedScan / QuantizedScan);
//   out_rotation given → OutRotation must apply exactly that matrix (W_out already holds it);
//                        without out_rotation, a non-identity OutRotation is folded into W_out here;
//   state_rotation     → Scan must be a QuantizedScan with exactly that rotation.
template <class WeightQ = FloatPolicy, class ActQ = FloatPolicy, class OutRotation = NoRotation, class Scan = PlainScan>
class MambaBlock : public BasicMambaBlock<Linear<WeightQ, ActQ, NoRotation>, Linear<WeightQ, ActQ, OutRotation>, Scan> {
    // A policy that does not model its concept stops with one message naming the concept and member
    // (the Linear parts check theirs as the base is built).
    static_assert(check_weight_policy<WeightQ>() && check_act_policy<ActQ>() && check_rotation<OutRotation>() &&
                  check_scan_policy<Scan>());
    using Base = BasicMambaBlock<Linear<WeightQ, ActQ, NoRotation>, Linear<WeightQ, ActQ, OutRotation>, Scan>;

public:
    using weight_policy = WeightQ;
    using activation_policy = ActQ;
    using rotation_policy = OutRotation;
    using typename Base::linear_type;
    using typename Base::out_linear_type;
    using typename Base::Workspace;
    static constexpr bool is_float = WeightQ::is_float && ActQ::is_float;

    // Checks every shape against (D, E, N, R, K) so a wrong checkpoint fails here, by name.
    MambaBlock(const MambaLayerWeights& w, std::size_t d_model, std::size_t d_inner, std::size_t d_state,
               std::size_t dt_rank, std::size_t d_conv, float eps, Scan scan = {}, OutRotation out_rotation = {})
        : Base(d_model, d_inner, d_state, dt_rank, d_conv, eps,
               make_parts(check_layer(w, d_model, d_inner, d_state, dt_rank, d_conv), std::move(scan),
                          std::move(out_rotation))) {}

    // The float weights back (float blocks only; out_proj has the rotation folded in, if any;
    // gate_scale and dt_shift are returned as they run).
    MambaLayerWeights weights() const
        requires(WeightQ::is_float && ActQ::is_float)
    {
        const auto E = static_cast<Eigen::Index>(this->E_);
        MambaLayerWeights w;
        w.norm = this->norm_.transpose();
        w.in_proj = this->in_proj_.weights();
        w.conv_w = this->conv_.weight_t.transpose();
        w.conv_b = Eigen::VectorXf::Zero(E);
        if (!this->conv_.bias.empty()) w.conv_b = Eigen::Map<const Eigen::VectorXf>(this->conv_.bias.data(), E);
        w.x_proj = this->x_proj_.weights();
        w.dt_proj = this->dt_proj_.weights();
        w.dt_bias = Eigen::Map<const Eigen::VectorXf>(this->scan_w_.dt_bias.data(), E);
        w.A_log = (-this->scan_w_.A.array()).log().matrix(); // A_log = log(−A)
        w.D = Eigen::Map<const Eigen::VectorXf>(this->scan_w_.D.data(), E);
        w.out_proj = this->out_proj_.weights();
        w.reset_extras();
        if (!this->scan_w_.gate_scale.empty()) w.gate_scale = Eigen::Map<const Eigen::VectorXf>(this->scan_w_.gate_scale.data(), E);
        const auto& xb = this->x_proj_.bias();
        for (Eigen::Index r = 0; r < w.dt_shift.size() && !xb.empty(); ++r) w.dt_shift[r] = -xb[static_cast<std::size_t>(r)];
        return w;
    }

private:
    static typename Base::Parts make_parts(const dependent_t<Scan, MambaLayerWeights>& w, Scan scan, OutRotation out_rotation) {
        using L = linear_type;
        using OL = out_linear_type;
        const aligned_vector<float> xb = detail::dt_shift_bias(w);
        ScanWeights sw = ScanWeights::from_A_log(view(w.A_log), detail::span_of(w.D), detail::span_of(w.dt_bias));
        if (w.gate_scale.size() != 0 && !(w.gate_scale.array() == 1.0f).all()) sw.set_gate_scale(detail::span_of(w.gate_scale));
        // The carried-state scale: the scan must carry exactly these smoothing scales.
        const bool smoothed = w.state_scale.size() != 0 && !(w.state_scale.array() == 1.0f).all();
        if constexpr (requires { scan.scale(); }) {
            const auto s = scan.scale();
            if (smoothed) {
                require(s.size() == static_cast<std::size_t>(w.state_scale.size()), "MambaBlock: state_scale has ",
                        w.state_scale.size(), " entries but the ", Scan::name, " scan carries ", s.size());
                for (std::size_t n = 0; n < s.size(); ++n)
                    require(s[n] == w.state_scale[static_cast<Eigen::Index>(n)], "MambaBlock: state_scale[", n, "] = ",
                            w.state_scale[static_cast<Eigen::Index>(n)], " but the ", Scan::name, " scan carries ", s[n]);
            } else {
                require(s.empty(), "MambaBlock: the ", Scan::name, " scan carries smoothing scales but the weights have no state_scale");
            }
        } else {
            require(!smoothed, "MambaBlock: state_scale (S4) needs a SmoothedScan or QuantizedScan with these scales, the block's scan is ",
                    Scan::name);
        }
        if (w.state_rotation.size() != 0) {
            if constexpr (requires { scan.rotation(); }) {
                const auto r = scan.rotation();
                const auto n = static_cast<std::size_t>(w.state_rotation.rows());
                require(r.size() == n * n, "MambaBlock: state_rotation is ", n, " x ", n, " but the scan's rotation has ",
                        r.size(), " entries");
                for (std::size_t i = 0; i < n * n; ++i)
                    require(std::fabs(r[i] - w.state_rotation(static_cast<Eigen::Index>(i / n), static_cast<Eigen::Index>(i % n))) <= 1e-6f,
                            "MambaBlock: state_rotation differs from the scan's rotation at [", i / n, ", ", i % n, "]");
            } else {
                fail("MambaBlock: state_rotation (R4) needs a QuantizedScan with that rotation, the block's scan is ", Scan::name);
            }
        }
        auto lin = [](const MatrixXf& m, std::span<const float> bias = {}) { return L(view(m), bias); };
        OL out = [&] {
            if (w.out_rotation.size() == 0) return OL(view(w.out_proj), {}, std::move(out_rotation));
            if constexpr (OutRotation::is_identity) {
                fail("MambaBlock: out_rotation (R2) is set in the weights but the block's OutRotation is the identity; use "
                     "HadamardOnline of that rotation");
            } else {
                detail::require_same_rotation(w.out_rotation, out_rotation, "MambaBlock");
                // W_out already holds the rotation (rotate_out_proj_input): pack it as it is.
                if constexpr (WeightQ::is_float) return OL(MatrixXf(w.out_proj), {}, std::move(out_rotation));
                else return OL(pack_weights<WeightQ>(view(w.out_proj)), {}, std::move(out_rotation));
            }
        }();
        return {w.norm.transpose(),
                lin(w.in_proj),
                lin(w.x_proj, std::span<const float>(xb.data(), xb.size())),
                lin(w.dt_proj),
                std::move(out),
                ConvWeights::from(view(w.conv_w), detail::span_of(w.conv_b)),
                std::move(sw),
                std::move(scan)};
    }

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
        // Run-time extras: lengths here, values where they are applied (make_parts).
        auto len_or_empty = [](const Eigen::VectorXf& v, std::size_t n, const char* name) {
            require(v.size() == 0 || static_cast<std::size_t>(v.size()) == n, "MambaBlock: ", name, ": expected [", n,
                    "], got [", v.size(), "]");
        };
        len_or_empty(w.gate_scale, E, "gate_scale");
        len_or_empty(w.dt_shift, R, "dt_shift");
        len_or_empty(w.state_scale, N, "state_scale");
        if (w.out_rotation.size() != 0) shape(w.out_rotation, E, E, "out_rotation");
        if (w.state_rotation.size() != 0) shape(w.state_rotation, N, N, "state_rotation");
        return w;
    }

};

// The float reference block.
using FloatMambaBlock = MambaBlock<>;

MQ_NAMESPACE_END
