// VimBlock<Policies>: one bidirectional Vision Mamba layer (bimamba v2) with its pre-norm and residual.
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

#include <Eigen/Core>

#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <utility>

MQ_NAMESPACE_BEGIN

// The tensors one scan direction owns (the reference's conv1d, x_proj, dt_proj, A_log, D for the
// forward direction and conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b for the backward one).
struct VimDirectionWeights {
    MatrixXf conv_w;          // [E, K] (checkpoint [E, 1, K])
    Eigen::VectorXf conv_b;   // [E] (empty: no bias)
    MatrixXf x_proj;          // [R+2N, E]: rows dt [R], B [N], C [N]
    MatrixXf dt_proj;         // [E, R]
    Eigen::VectorXf dt_bias;  // [E]
    MatrixXf A_log;           // [E, N]: A = −exp(A_log)
    Eigen::VectorXf D;        // [E]
};

// One Vim layer: the shared norm, in_proj and out_proj, and the two directions.
struct VimLayerWeights {
    Eigen::VectorXf norm;     // [D]
    MatrixXf in_proj;         // [2E, D]: rows 0..E−1 give x, rows E..2E−1 give z
    std::array<VimDirectionWeights, 2> dir; // [0] forward, [1] backward
    MatrixXf out_proj;        // [D, E]
};

enum class VimDirection : std::uint8_t { forward = 0, backward = 1 };

// One layer over S sequences of L tokens each, stacked as the rows of h [S·L, D]:
//   hn = RMSNorm(h);  [x, z] = hn·W_inᵀ
//   y_f = branch_f(x, z);   y_b = rev(branch_b(rev(x), rev(z)))   (rev: reverse each sequence's rows)
//   branch(x, z) = scan(x' = SiLU(conv1d(x) + b), Δ = softplus(dt·W_dtᵀ + b_dt), A, B, C, D) ⊙ gate(z),
//                  [dt, B, C] = x'·W_xᵀ + [−μ, 0, 0]   (exactly the Mamba-1 mixer without out_proj)
//   h ← h + ((y_f + y_b)·c)·W_outᵀ,   c = 1/2 (the reference's if_devide_out) or 1.
// The backward branch is the forward one run over reversed rows — the same conv and scan
// kernels, with a causal conv and a zero initial state per sequence, as the reference's
// flip → mamba_inner_fn_no_out_proj → flip.
// BasicVimBlock<Lin, OutLin, Scan> runs it on whatever its parts are, as BasicMambaBlock does:
// Lin for in_proj and each direction's x_proj and dt_proj, OutLin for out_proj (a Linear<W, A, R>
// or the run-time AnyLinear), Scan a ScanPolicy, one instance per direction. So every MambaQuant
// run-time part runs per direction with the language model's kernels: S-SiLU (ScanWeights::
// gate_scale, the same s in both directions: z is shared), the dt shift (x_proj's dt-row bias −μ),
// state_scale / quantized state·C / R4 (the direction's scan), the online Hadamard fused with
// out_proj's quantization (OutLin's rotation), static activation params (in the Lin parts).
// Tap layers: Vim layer l reports its forward direction as tap layer 2l and its backward one as
// 2l+1 (the recipes' view: one Mamba "direction layer" each, nn/vim_weights.hpp); the sites the
// directions share (in_proj_input, out_proj_input, layer_output) are reported to both.
template <class Lin, class OutLin, ScanPolicy Scan>
class BasicVimBlock {
public:
    using linear_type = Lin;
    using out_linear_type = OutLin;
    using scan_type = Scan;

    // One direction's run-time parts.
    struct Branch {
        ConvWeights conv;
        Lin x_proj, dt_proj; // x_proj's bias: [−μ, 0, 0] or none; dt_proj has none (b_dt is in scan_w)
        ScanWeights scan_w;
        Scan scan;
    };

    // Everything a layer runs with, already built (shapes are checked by the constructor).
    struct Parts {
        Eigen::RowVectorXf norm; // [D]
        Lin in_proj;             // [2E, D]
        OutLin out_proj;         // [D, E]
        std::array<Branch, 2> dir; // [0] forward, [1] backward
    };

    // Scratch for one call (one per thread that runs the block concurrently).
    struct Workspace {
        MatrixXf hn, xz, xz_rev, xc, dbc, delta, y, y_rev, out;
        ScanCache<float> scan;
        typename Lin::workspace_type lin;
        typename OutLin::workspace_type out_lin;
    };

    BasicVimBlock(std::size_t d_model, std::size_t d_inner, std::size_t d_state, std::size_t dt_rank,
                  std::size_t d_conv, float eps, bool divide_out, Parts parts)
        : D_(d_model), E_(d_inner), N_(d_state), R_(dt_rank), K_(d_conv), eps_(eps), divide_out_(divide_out),
          norm_(std::move(parts.norm)), in_proj_(std::move(parts.in_proj)), out_proj_(std::move(parts.out_proj)),
          branches_(std::move(parts.dir)) {
        auto lin = [](const auto& l, std::size_t out, std::size_t in, const char* name) {
            require(l.out_features() == out && l.in_features() == in, "VimBlock: ", name, ": expected shape [", out, ", ",
                    in, "], got [", l.out_features(), ", ", l.in_features(), "]");
        };
        require(static_cast<std::size_t>(norm_.size()) == D_, "VimBlock: norm.weight: expected [", D_, "], got [",
                norm_.size(), "]");
        lin(in_proj_, 2 * E_, D_, "in_proj.weight");
        lin(out_proj_, D_, E_, "out_proj.weight");
        for (auto& b : branches_) {
            lin(b.x_proj, R_ + 2 * N_, E_, "x_proj.weight");
            lin(b.dt_proj, E_, R_, "dt_proj.weight");
            require(b.conv.channels() == E_ && b.conv.taps() == K_, "VimBlock: conv1d.weight: expected [", E_, ", ", K_,
                    "], got [", b.conv.channels(), ", ", b.conv.taps(), "]");
            require(b.scan_w.channels() == E_ && b.scan_w.state_size() == N_, "VimBlock: A_log: expected [", E_, ", ",
                    N_, "], got [", b.scan_w.channels(), ", ", b.scan_w.state_size(), "]");
            b.scan.check(E_, N_);
        }
        // The model parallelises over images; a layer runs on the calling thread (a pool run
        // from inside a pool task would deadlock).
        in_proj_.set_thread_pool(nullptr);
        out_proj_.set_thread_pool(nullptr);
        for (auto& b : branches_) {
            b.x_proj.set_thread_pool(nullptr);
            b.dt_proj.set_thread_pool(nullptr);
        }
    }

    std::size_t d_model() const noexcept { return D_; }
    std::size_t d_inner() const noexcept { return E_; }
    std::size_t d_state() const noexcept { return N_; }
    std::size_t dt_rank() const noexcept { return R_; }
    std::size_t d_conv() const noexcept { return K_; }
    float eps() const noexcept { return eps_; }
    bool divide_out() const noexcept { return divide_out_; }
    const Eigen::RowVectorXf& norm() const noexcept { return norm_; }
    const Lin& in_proj() const noexcept { return in_proj_; }
    const OutLin& out_proj() const noexcept { return out_proj_; }
    const Branch& branch(VimDirection d) const noexcept { return branches_[static_cast<std::size_t>(d)]; }

    // h [S·L, D]: S sequences of seq_len tokens; each sequence starts from a zero state and a zero
    // conv history in both directions. `tap` (optional) sees every site's input as `layer`
    // (tap layers 2·layer and 2·layer + 1, see above).
    void forward(MatrixXf& h, std::size_t seq_len, Workspace& ws, ActivationTap* tap = nullptr,
                 std::size_t layer = 0) const {
        const auto rows = h.rows();
        require(seq_len > 0 && static_cast<std::size_t>(rows) % seq_len == 0, "VimBlock::forward: ", rows,
                " rows are not whole sequences of ", seq_len, " tokens");
        require(static_cast<std::size_t>(h.cols()) == D_, "VimBlock::forward: h has ", h.cols(), " columns, d_model is ", D_);
        const auto E = static_cast<Eigen::Index>(E_);
        ws.hn.resize(rows, h.cols());
        ws.xz.resize(rows, 2 * E);
        ws.xz_rev.resize(rows, 2 * E);
        ws.y.resize(rows, E);
        ws.y_rev.resize(rows, E);
        ws.out.resize(rows, h.cols());
        if (ws.scan.channels() != E_ || ws.scan.state_size() != N_) ws.scan.resize(E_, N_);
        rms_norm(view(std::as_const(h)), norm_, eps_, view(ws.hn));
        tap_both(tap, layer, TapPoint::in_proj_input, view(std::as_const(ws.hn)));
        in_proj_.forward(view(std::as_const(ws.hn)), view(ws.xz), ws.lin); // [S·L, 2E] = [x | z]
        run_branch(0, ws.xz, seq_len, ws, ws.y, tap, 2 * layer);
        reverse_rows(ws.xz, seq_len, ws.xz_rev);
        run_branch(1, ws.xz_rev, seq_len, ws, ws.y_rev, tap, 2 * layer + 1);
        const float c = divide_out_ ? 0.5f : 1.0f;
        const std::size_t S = static_cast<std::size_t>(rows) / seq_len;
        for (std::size_t s = 0; s < S; ++s)
            for (std::size_t t = 0; t < seq_len; ++t) {
                const auto r = static_cast<Eigen::Index>(s * seq_len + t), rr = static_cast<Eigen::Index>(s * seq_len + seq_len - 1 - t);
                ws.y.row(r) = (ws.y.row(r) + ws.y_rev.row(rr)) * c; // ·1/2 is exact: the reference's order
            }
        tap_both(tap, layer, TapPoint::out_proj_input, view(std::as_const(ws.y)));
        out_proj_.forward(view(std::as_const(ws.y)), view(ws.out), ws.out_lin);
        h += ws.out;
        tap_both(tap, layer, TapPoint::layer_output, view(std::as_const(h)));
    }

protected:
    static void tap_both(ActivationTap* tap, std::size_t layer, TapPoint p, ConstMatrixView<float> v) {
        detail::tap(tap, 2 * layer, p, v);
        detail::tap(tap, 2 * layer + 1, p, v);
    }

    // rev: each sequence's rows in reverse order.
    static void reverse_rows(const MatrixXf& src, std::size_t seq_len, MatrixXf& dst) {
        const std::size_t S = static_cast<std::size_t>(src.rows()) / seq_len;
        for (std::size_t s = 0; s < S; ++s)
            for (std::size_t t = 0; t < seq_len; ++t)
                dst.row(static_cast<Eigen::Index>(s * seq_len + t)) = src.row(static_cast<Eigen::Index>(s * seq_len + seq_len - 1 - t));
    }

    // y = branch(x, z) over xz = [x | z] (rows in the direction's own order).
    void run_branch(std::size_t dir, const MatrixXf& xz_m, std::size_t seq_len, Workspace& ws, MatrixXf& y_m,
                    ActivationTap* tap, std::size_t tap_layer) const {
        const Branch& b = branches_[dir];
        const auto rows = xz_m.rows();
        const auto E = static_cast<Eigen::Index>(E_), R = static_cast<Eigen::Index>(R_), N = static_cast<Eigen::Index>(N_);
        ws.xc.resize(rows, E);
        ws.dbc.resize(rows, R + 2 * N);
        ws.delta.resize(rows, E);
        const ConstMatrixView<float> xz = view(xz_m);
        const std::size_t S = static_cast<std::size_t>(rows) / seq_len;
        detail::tap(tap, tap_layer, TapPoint::conv_input, ConstMatrixView<float>(xz.data, xz.rows, E_, xz.stride));
        for (std::size_t s = 0; s < S; ++s) { // x = SiLU(conv(x) + b), from a zero history per sequence
            const std::size_t r0 = s * seq_len;
            causal_conv1d(b.conv, ConstMatrixView<float>(xz.row_ptr(r0), seq_len, E_, xz.stride), nullptr,
                          MatrixView<float>(ws.xc.data() + r0 * E_, seq_len, E_), /*apply_silu=*/true);
        }
        detail::tap(tap, tap_layer, TapPoint::x_proj_input, view(std::as_const(ws.xc)));
        b.x_proj.forward(view(std::as_const(ws.xc)), view(ws.dbc), ws.lin); // [dt | B | C]
        const ConstMatrixView<float> dbc = view(std::as_const(ws.dbc));
        const ConstMatrixView<float> dt(dbc.data, dbc.rows, R_, dbc.stride);
        detail::tap(tap, tap_layer, TapPoint::dt_proj_input, dt);
        b.dt_proj.forward(dt, view(ws.delta), ws.lin);
        const ConstMatrixView<float> xc = view(std::as_const(ws.xc)), delta = view(std::as_const(ws.delta));
        if (tap) {
            tap->on_activation(tap_layer, TapPoint::scan_delta, delta);
            tap->on_activation(tap_layer, TapPoint::scan_B, ConstMatrixView<float>(dbc.data + R_, dbc.rows, N_, dbc.stride));
            tap->on_activation(tap_layer, TapPoint::scan_C, ConstMatrixView<float>(dbc.data + R_ + N_, dbc.rows, N_, dbc.stride));
            tap->on_activation(tap_layer, TapPoint::scan_z, ConstMatrixView<float>(xz.data + E_, xz.rows, E_, xz.stride));
        }
        for (std::size_t s = 0; s < S; ++s) {
            const std::size_t r0 = s * seq_len;
            ScanInputs in; // Δ = softplus(· + b_dt) and ⊙ gate(z) inside the scan
            in.x = ConstMatrixView<float>(xc.row_ptr(r0), seq_len, E_, xc.stride);
            in.delta = ConstMatrixView<float>(delta.row_ptr(r0), seq_len, E_, delta.stride);
            in.B = ConstMatrixView<float>(dbc.row_ptr(r0) + R_, seq_len, N_, dbc.stride);
            in.C = ConstMatrixView<float>(dbc.row_ptr(r0) + R_ + N_, seq_len, N_, dbc.stride);
            in.z = ConstMatrixView<float>(xz.row_ptr(r0) + E_, seq_len, E_, xz.stride);
            in.delta_softplus = true;
            ws.scan.reset();
            selective_scan(b.scan, b.scan_w, in, ws.scan, MatrixView<float>(y_m.data() + r0 * E_, seq_len, E_));
        }
    }

    std::size_t D_ = 0, E_ = 0, N_ = 0, R_ = 0, K_ = 0;
    float eps_ = 1e-5f;
    bool divide_out_ = true;
    Eigen::RowVectorXf norm_;
    Lin in_proj_;
    OutLin out_proj_;
    std::array<Branch, 2> branches_;
};

// VimBlock<WeightQ, ActQ, OutRotation, Scan>: the compile-time layout, as MambaBlock — WeightQ/ActQ
// for the four projections of both directions, OutRotation online at out_proj's input, Scan the
// scan policy of each direction (one instance per direction: a smoothed scan's S4 scales are per
// direction). Built from the float VimLayerWeights (no run-time extras: those come through the
// recipes' direction layers and build_quantized_vim_model, nn/quantized_vim_model.hpp).
template <NumericPolicy WeightQ = FloatPolicy, NumericPolicy ActQ = FloatPolicy, Rotation OutRotation = NoRotation,
          ScanPolicy Scan = PlainScan>
class VimBlock : public BasicVimBlock<Linear<WeightQ, ActQ, NoRotation>, Linear<WeightQ, ActQ, OutRotation>, Scan> {
    using Base = BasicVimBlock<Linear<WeightQ, ActQ, NoRotation>, Linear<WeightQ, ActQ, OutRotation>, Scan>;

public:
    using typename Base::linear_type;
    using typename Base::out_linear_type;
    using typename Base::Workspace;
    using out_rotation_type = OutRotation;
    static constexpr bool is_float = WeightQ::is_float && ActQ::is_float;

    // Checks every shape against (D, E, N, R, K), naming the tensor as "<prefix><name>".
    VimBlock(const VimLayerWeights& w, std::size_t d_model, std::size_t d_inner, std::size_t d_state,
             std::size_t dt_rank, std::size_t d_conv, float eps, bool divide_out = true,
             std::array<Scan, 2> scans = {}, OutRotation out_rotation = {}, const std::string& prefix = "")
        : Base(d_model, d_inner, d_state, dt_rank, d_conv, eps, divide_out,
               make_parts(check_layer(w, d_model, d_inner, d_state, dt_rank, d_conv, prefix), std::move(scans),
                          std::move(out_rotation))) {}

private:
    static typename Base::Parts make_parts(const VimLayerWeights& w, std::array<Scan, 2> scans, OutRotation out_rotation) {
        auto span_of = [](const Eigen::VectorXf& v) { return std::span<const float>(v.data(), static_cast<std::size_t>(v.size())); };
        auto branch = [&](std::size_t i) {
            const VimDirectionWeights& d = w.dir[i];
            return typename Base::Branch{ConvWeights::from(view(d.conv_w), span_of(d.conv_b)), linear_type(view(d.x_proj)),
                                         linear_type(view(d.dt_proj)),
                                         ScanWeights::from_A_log(view(d.A_log), span_of(d.D), span_of(d.dt_bias)),
                                         std::move(scans[i])};
        };
        return {w.norm.transpose(), linear_type(view(w.in_proj)), out_linear_type(view(w.out_proj), {}, std::move(out_rotation)),
                {branch(0), branch(1)}};
    }

    static const VimLayerWeights& check_layer(const VimLayerWeights& w, std::size_t D, std::size_t E, std::size_t N,
                                              std::size_t R, std::size_t K, const std::string& p) {
        auto shape = [&](const MatrixXf& m, std::size_t r, std::size_t c, const std::string& name) {
            require(static_cast<std::size_t>(m.rows()) == r && static_cast<std::size_t>(m.cols()) == c, "VimBlock: ",
                    p, name, ": expected shape [", r, ", ", c, "], got [", m.rows(), ", ", m.cols(), "]");
        };
        auto len = [&](const Eigen::VectorXf& v, std::size_t n, const std::string& name) {
            require(static_cast<std::size_t>(v.size()) == n, "VimBlock: ", p, name, ": expected [", n, "], got [",
                    v.size(), "]");
        };
        len(w.norm, D, "norm.weight");
        shape(w.in_proj, 2 * E, D, "mixer.in_proj.weight");
        shape(w.out_proj, D, E, "mixer.out_proj.weight");
        for (std::size_t i = 0; i < 2; ++i) {
            const std::string b = i == 0 ? "" : "_b";
            const auto& d = w.dir[i];
            shape(d.conv_w, E, K, "mixer.conv1d" + b + ".weight");
            if (d.conv_b.size() != 0) len(d.conv_b, E, "mixer.conv1d" + b + ".bias");
            shape(d.x_proj, R + 2 * N, E, "mixer.x_proj" + b + ".weight");
            shape(d.dt_proj, E, R, "mixer.dt_proj" + b + ".weight");
            len(d.dt_bias, E, "mixer.dt_proj" + b + ".bias");
            shape(d.A_log, E, N, i == 0 ? "mixer.A_log" : "mixer.A_b_log");
            len(d.D, E, "mixer.D" + b);
        }
        return w;
    }
};

// The float reference block.
using FloatVimBlock = VimBlock<>;

MQ_NAMESPACE_END
