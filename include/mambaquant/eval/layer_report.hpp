// Per-layer error report: SQNR and cosine of each site's input and each layer's output, quantized model vs float.
#pragma once

#include <mambaquant/calib/calibrate.hpp>
#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/io/atomic_file.hpp>
#include <mambaquant/nn/activation_tap.hpp>
#include <mambaquant/nn/quantization_config.hpp>
#include <mambaquant/transform/rotation.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <filesystem>
#include <ostream>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

MQ_NAMESPACE_BEGIN

//   SQNR = 10·log10(Σ x² / Σ (x − x̂)²) dB,   cosine = Σ x·x̂ / (‖x‖·‖x̂‖)
// x: the float model's tensor, x̂: the quantized model's (fake-quant twin: the same numbers as the
// integer path, in float). Two errors per site: `quant_*` is the site's own static quantizer
// applied to the float input (how much the activation quantizer alone loses there), `drift_*` is
// the twin's input against the float input (everything upstream, accumulated).
struct ErrorSums {
    double xx = 0, yy = 0, xy = 0, ee = 0;
    void add(const float* x, const float* y, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) {
            const double a = x[i], b = y[i];
            xx += a * a, yy += b * b, xy += a * b, ee += (a - b) * (a - b);
        }
    }
    double sqnr_db() const { return ee > 0 ? 10.0 * std::log10(xx / ee) : std::numeric_limits<double>::infinity(); }
    double cosine() const { return (xx > 0 && yy > 0) ? xy / std::sqrt(xx * yy) : 1.0; }
};

struct LayerReportRow {
    std::size_t layer = 0;
    std::string site;
    ErrorSums quant, drift;
};

namespace detail {
// Keeps a copy of every tap point's value of the last call.
template <class = void>
class BasicTapRecorder final : public ActivationTap {
public:
    void on_activation(std::size_t layer, TapPoint point, ConstMatrixView<float> v) override {
        values[{layer, point}] = as_eigen(v);
    }
    std::map<std::pair<std::size_t, TapPoint>, MatrixXf> values;
};
using TapRecorder = BasicTapRecorder<>; // a template: compiled only where used (core/config.hpp)
template <class = void>
std::optional<Site> site_of(TapPoint p) {
    switch (p) {
    case TapPoint::in_proj_input: return Site::in_proj;
    case TapPoint::conv_input: return Site::conv1d;
    case TapPoint::x_proj_input: return Site::x_proj;
    case TapPoint::dt_proj_input: return Site::dt_proj;
    case TapPoint::out_proj_input: return Site::out_proj;
    case TapPoint::lm_head_input: return Site::lm_head;
    default: return std::nullopt;
    }
}
} // namespace detail

namespace detail {
// Adds one run's recorded tensors (float `ref`, quantized `q`) to the per-(layer, tap point) sums.
// Tap layers ≥ n_layer are the head's.
template <class Tag = void>
void add_layer_report(dependent_t<Tag, std::map<std::pair<std::size_t, TapPoint>, LayerReportRow>>& rows,
                      const dependent_t<Tag, TapRecorder>& ref,
                      const dependent_t<Tag, TapRecorder>& q, const dependent_t<Tag, QuantizationConfig>& qc, std::size_t n_layer) {
    const MatrixXf rot_out = qc.out_rotation ? rotation_matrix<float>(*qc.out_rotation) : MatrixXf();
    // With R4 the quantized model's C arrives rotated (C·H): rotate it back to compare in one basis.
    const MatrixXf rot_state_t =
        qc.state_rotation ? MatrixXf(rotation_matrix<float>(*qc.state_rotation).transpose()) : MatrixXf();
    for (const auto& [key, x] : ref.values) {
        const auto it = q.values.find(key);
        if (it == q.values.end() || it->second.size() != x.size()) continue;
        auto& row = rows[key];
        row.layer = key.first;
        row.site = tap_point_name(key.second);
        if (key.second == TapPoint::scan_C && rot_state_t.size()) {
            const MatrixXf back = it->second * rot_state_t;
            row.drift.add(x.data(), back.data(), static_cast<std::size_t>(x.size()));
        } else {
            row.drift.add(x.data(), it->second.data(), static_cast<std::size_t>(x.size()));
        }
        const auto site = site_of(key.second);
        if (!site) continue;
        const bool is_head = key.first >= n_layer;
        std::optional<QuantParams> p;
        if (is_head) p = qc.head_act;
        else if (key.first < qc.layers.size()) p = qc.layers[key.first][*site];
        if (!p) continue;
        // out_proj's quantizer sees a·H when R2 is on: rotate first (the SQNR is invariant to H).
        const MatrixXf xs = key.second == TapPoint::out_proj_input && rot_out.size() ? MatrixXf(x * rot_out) : x;
        MatrixXf xq = xs;
        const int lo = qc[*site].act.symmetric ? -127 : 0, hi = qc[*site].act.symmetric ? 127 : 255;
        for (Eigen::Index i = 0; i < xq.size(); ++i) {
            const float v = std::clamp(std::nearbyint(xs.data()[i] * p->inv_scale) + static_cast<float>(p->zero),
                                       static_cast<float>(lo), static_cast<float>(hi));
            xq.data()[i] = (v - static_cast<float>(p->zero)) * p->scale;
        }
        row.quant.add(xs.data(), xq.data(), static_cast<std::size_t>(xs.size()));
    }
}
template <class Tag = void>
std::vector<LayerReportRow> layer_report_rows(dependent_t<Tag, std::map<std::pair<std::size_t, TapPoint>, LayerReportRow>>& rows) {
    std::vector<LayerReportRow> out;
    for (auto& [k, r] : rows) out.push_back(std::move(r));
    return out;
}
} // namespace detail

// Runs both models window by window (one window's activations held at a time) and accumulates
// the sums per (layer, tap point). `reference` is the float model the quantized one was built
// from (same transformed basis, so the tensors compare element by element).
template <class Reference, class Quantized>
std::vector<LayerReportRow> layer_report(const Reference& reference, const Quantized& quantized,
                                         const QuantizationConfig& qc,
                                         std::span<const std::span<const std::uint32_t>> windows) {
    std::map<std::pair<std::size_t, TapPoint>, LayerReportRow> rows;
    for (auto w : windows) {
        dependent_t<Reference, detail::TapRecorder> ref_tap, q_tap;
        auto s1 = reference.make_state();
        detail::prefill_tapped(reference, w, s1, &ref_tap);
        auto s2 = quantized.make_state();
        detail::prefill_tapped(quantized, w, s2, &q_tap);
        detail::add_layer_report(rows, ref_tap, q_tap, qc, reference.config().n_layer);
    }
    return detail::layer_report_rows(rows);
}

// layers.csv: layer,site,quant_sqnr_db,quant_cosine,drift_sqnr_db,drift_cosine (written to a
// temporary file, then renamed). Sites without a static quantizer leave the quant columns empty.
template <class Tag = void>
void write_layer_report(const dependent_t<Tag, std::filesystem::path>& path,
                        const dependent_t<Tag, std::vector<LayerReportRow>>& rows) {
    write_atomically(path, [&](std::ostream& f) {
        f << "layer,site,quant_sqnr_db,quant_cosine,drift_sqnr_db,drift_cosine\n";
        for (const auto& r : rows) {
            f << r.layer << ',' << r.site << ',';
            if (r.quant.xx > 0) f << r.quant.sqnr_db() << ',' << r.quant.cosine();
            else f << ',';
            f << ',' << r.drift.sqnr_db() << ',' << r.drift.cosine() << '\n';
        }
    });
}

MQ_NAMESPACE_END
