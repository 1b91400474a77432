// Calibration: run a model over windows of calibration tokens and stream every site's input into CalibrationStats.
#pragma once

#include <mambaquant/calib/statistics.hpp>
#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/nn/activation_tap.hpp>
#include <mambaquant/nn/mamba_model.hpp>
#include <mambaquant/transform/mamba_weights.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

MQ_NAMESPACE_BEGIN

// What to collect. Memory is bounded by one layer's activations for one window: the tap streams
// each site's input into its summary as the forward produces it (never keeping a window), so a
// 2.8B model calibrates in the memory of its weights plus one layer's [L, E] activations.
struct CalibrationPlan {
    double percentile = 0.999999;
    // Sites that also keep an fp64 covariance (KLT for R1 / R5, Hessians for GPTQ): d² doubles each.
    std::array<bool, kTapPointCount> covariance{};
    // Per-state-index max|state| (S4): the scan state recomputed from x, Δ, B and A (the forward
    // does not materialise it per token).
    bool state = false;
    // Online rotation of the out_proj input per layer (R2), applied before observing it, so that
    // static ranges and Hessians are those of what the quantizer sees (empty: none).
    std::vector<MatrixXf> out_rotation;
    std::size_t window = 2048;
};

template <class = void>
std::string tap_key(std::size_t layer, std::size_t n_layer, TapPoint p) {
    if (layer >= n_layer) return tap_point_name(p);
    return site_key(layer, tap_point_name(p));
}

// The ActivationTap that fills a CalibrationStats. `scan` gives each layer's A = −exp(A_log) and
// b_dt (only read when plan.state).
template <class Tag = void>
class BasicCalibrationCollector final : public ActivationTap {
public:
    BasicCalibrationCollector(CalibrationStats& stats, const CalibrationPlan& plan, const MambaWeights* weights,
                         std::size_t n_layer)
        : stats_(stats), plan_(plan), weights_(weights), n_layer_(n_layer) {
        require(!plan.state || weights != nullptr, "CalibrationCollector: state statistics need the layer weights");
    }

    void on_activation(std::size_t layer, TapPoint point, ConstMatrixView<float> value) override {
        if (point == TapPoint::layer_output || point == TapPoint::scan_z) return;
        const std::string key = tap_key(layer, n_layer_, point);
        SiteOptions o{plan_.percentile, plan_.covariance[static_cast<std::size_t>(point)]};
        ConstMatrixView<float> v = value;
        if (point == TapPoint::out_proj_input && layer < plan_.out_rotation.size() && plan_.out_rotation[layer].size()) {
            rotated_.noalias() = as_eigen(value) * plan_.out_rotation[layer];
            v = view(std::as_const(rotated_));
        }
        stats_.site(key, v.cols, o).add(v, key);
        if (!plan_.state) return;
        if (point == TapPoint::x_proj_input) x_ = as_eigen(value);
        if (point == TapPoint::scan_delta) delta_ = as_eigen(value);
        if (point == TapPoint::scan_B) observe_state(layer, value);
    }

private:
    // state_t[e,n] = exp(Δ_t[e]·A[e,n])·state_{t−1}[e,n] + Δ_t[e]·B_t[n]·x_t[e],  Δ = softplus(raw + b_dt)
    // from a zero state (each window starts from zero, as calibration windows do). Per state index
    // n, the min and max over (t, e) go into a ChannelStats of dimension N as two rows.
    void observe_state(std::size_t layer, ConstMatrixView<float> B) {
        // Dependent local types (dependent_t): this body is analysed only where the collector is used.
        using ArrayXXf = dependent_t<Tag, Eigen::ArrayXXf>;
        using ArrayXf = dependent_t<Tag, Eigen::ArrayXf>;
        const dependent_t<Tag, MambaLayerWeights>& w = weights_->layers.at(layer);
        const Eigen::Index L = static_cast<Eigen::Index>(B.rows), N = static_cast<Eigen::Index>(B.cols), E = w.A_log.rows();
        require(x_.rows() == L && delta_.rows() == L && x_.cols() == E, "CalibrationCollector: state of layer ", layer,
                ": inputs of mismatched shapes");
        const ArrayXXf A = -w.A_log.array().exp(); // [E, N]
        ArrayXXf state = ArrayXXf::Zero(E, N), dA(E, N);
        dependent_t<Tag, MatrixXf> mm(2, N);
        mm.row(0).setConstant(std::numeric_limits<float>::infinity());
        mm.row(1).setConstant(-std::numeric_limits<float>::infinity());
        ArrayXf d(E), dx(E);
        for (Eigen::Index t = 0; t < L; ++t) {
            const ArrayXf raw = delta_.row(t).transpose().array() + w.dt_bias.array();
            d = (raw > 20.0f).select(raw, raw.exp().log1p()); // softplus
            dx = d * x_.row(t).transpose().array();
            dA = (A.colwise() * d).exp();
            const Eigen::Map<const Eigen::RowVectorXf> b(B.row_ptr(static_cast<std::size_t>(t)), N);
            state = dA * state + (dx.matrix() * b).array();
            mm.row(0) = mm.row(0).cwiseMin(state.colwise().minCoeff().matrix());
            mm.row(1) = mm.row(1).cwiseMax(state.colwise().maxCoeff().matrix());
        }
        stats_.site(site_key(layer, "scan_state"), static_cast<std::size_t>(N), SiteOptions{plan_.percentile, false})
            .add(view(std::as_const(mm)), site_key(layer, "scan_state"));
    }

    // Dependent types (core/config.hpp: dependent_t): the bodies are analysed only where used.
    dependent_t<Tag, CalibrationStats>& stats_;
    const dependent_t<Tag, CalibrationPlan>& plan_;
    const dependent_t<Tag, MambaWeights>* weights_;
    std::size_t n_layer_;
    dependent_t<Tag, MatrixXf> rotated_, x_, delta_;
};
using CalibrationCollector = BasicCalibrationCollector<>; // a template: compiled only where used (core/config.hpp)

// Fixed calibration windows: `count` windows of `window` tokens at evenly spaced offsets over
// `tokens` (offset_i = ⌊i·(n − window)/(count − 1)⌋), so the sample is documented and the same on
// every run. Throws when the text is shorter than one window.
template <class = void>
std::vector<std::span<const std::uint32_t>> calibration_windows(std::span<const std::uint32_t> tokens,
                                                                std::size_t window, std::size_t count) {
    require(window >= 2, "calibration: window must be at least 2 tokens, got ", window);
    require(count >= 1, "calibration: at least one window");
    require(tokens.size() >= window, "calibration: the calibration text has ", tokens.size(),
            " tokens, shorter than one window of ", window);
    std::vector<std::span<const std::uint32_t>> out;
    const std::size_t span = tokens.size() - window;
    for (std::size_t i = 0; i < count; ++i) {
        const std::size_t off = count == 1 ? 0 : (i * span) / (count - 1);
        out.push_back(tokens.subspan(off, window));
    }
    return out;
}

namespace detail {
// BasicMambaModel::prefill takes (tokens, state, which, hidden, tap), QuantizedMambaModel's
// (tokens, state, which, tap): one call for both. Logits::all: the LM head input is a site too.
template <class Model, class State>
void prefill_tapped(const Model& model, std::span<const std::uint32_t> tokens, State& state, ActivationTap* tap) {
    if constexpr (requires { model.prefill(tokens, state, Logits::all, nullptr, tap); })
        (void)model.prefill(tokens, state, Logits::all, nullptr, tap);
    else
        (void)model.prefill(tokens, state, Logits::all, tap);
}
} // namespace detail

// Runs `model` (anything with make_state() and prefill(tokens, state, Logits, hidden, tap)) over
// each window from a zero state, collecting into a fresh CalibrationStats. `progress(done, total)`
// is called after every window.
template <class Model>
dependent_t<Model, CalibrationStats> calibrate(const Model& model, std::span<const std::span<const std::uint32_t>> windows,
                                               const CalibrationPlan& plan, const MambaWeights* weights,
                                               const std::function<void(std::size_t, std::size_t)>& progress = {}) {
    dependent_t<Model, CalibrationStats> stats;
    dependent_t<Model, CalibrationCollector> tap(stats, plan, weights, model.config().n_layer);
    for (std::size_t i = 0; i < windows.size(); ++i) {
        auto state = model.make_state();
        detail::prefill_tapped(model, windows[i], state, &tap);
        stats.count_window();
        if (progress) progress(i + 1, windows.size());
    }
    return stats;
}

MQ_NAMESPACE_END
