// Vim calibration: run a Vim model over calibration images and stream every site's input, per direction layer, into CalibrationStats.
#pragma once

#include <mambaquant/calib/calibrate.hpp>
#include <mambaquant/calib/statistics.hpp>
#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/nn/vim_model.hpp>
#include <mambaquant/transform/mamba_weights.hpp>

#include <cstddef>
#include <functional>

MQ_NAMESPACE_BEGIN

// The language model's collector over a Vim model: the statistics are keyed by direction layer
// (tap layer 2l: layer l's forward direction, 2l+1: its backward one; nn/vim_weights.hpp), the
// head input by "lm_head_input". Each image is one sequence from a zero state — the model runs
// images one at a time when tapped — so the per-state-index statistics (plan.state) recompute each
// direction's scan over its own 17-token sequence in its own order. `directions` are the weights
// the model was built from (their A and b_dt; read only when plan.state).
template <class Model>
dependent_t<Model, CalibrationStats> calibrate_vim(const Model& model, const ImageBatch& images, const CalibrationPlan& plan,
                                                   const MambaWeights* directions,
                                                   const std::function<void(std::size_t, std::size_t)>& progress = {}) {
    require(images.count > 0, "calibrate_vim: no calibration images");
    const std::size_t n_dir = 2 * model.config().n_layer;
    require(directions == nullptr || directions->layers.size() == n_dir, "calibrate_vim: ",
            directions ? directions->layers.size() : 0, " direction layers given, the model has ", n_dir);
    dependent_t<Model, CalibrationStats> stats;
    dependent_t<Model, CalibrationCollector> tap(stats, plan, directions, n_dir);
    for (std::size_t i = 0; i < images.count; ++i) {
        const ImageBatch one{images.image(i), 1, images.channels, images.height, images.width};
        (void)model.logits(one, nullptr, nullptr, 1, &tap);
        stats.count_window();
        if (progress) progress(i + 1, images.count);
    }
    return stats;
}

MQ_NAMESPACE_END
