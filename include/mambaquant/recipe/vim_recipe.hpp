// Vim recipes: the five methods of recipe/recipe.hpp run unchanged on a Vim model's direction layers, calibrated over images.
#pragma once

#include <mambaquant/calib/statistics.hpp>
#include <mambaquant/calib/vim_calibrate.hpp>
#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/io/vim_config.hpp>
#include <mambaquant/nn/quantization_config.hpp>
#include <mambaquant/nn/quantized_vim_model.hpp>
#include <mambaquant/nn/vim_model.hpp>
#include <mambaquant/nn/vim_weights.hpp>
#include <mambaquant/recipe/recipe.hpp>

#include <cstddef>
#include <string_view>
#include <utility>

MQ_NAMESPACE_BEGIN

struct QuantizedVimRecipe {
    VimWeights weights;           // transformed (and GPTQ-rounded) float weights
    QuantizationConfig config;    // static params per direction layer
    CalibrationStats final_stats; // of the transformed model (the static ranges' source)
};

// run_recipe over VimWeights: every stage's statistics come from the float Vim model of the
// current weights run over `calib` (calibrate_vim: per direction layer, each image a sequence from
// a zero state). The steps are the language model's, on the direction layers (nn/vim_weights.hpp
// says why that is the same math); the result is checked to have kept each pair's shared tensors
// identical (validate), so a step that cannot apply to a bidirectional layer is refused by name.
// The one Vim-specific choice inside a step: S7's scale per channel of the shared x reads both
// directions' conv filters (RecipeContext::shared_layers = 2), and both convs absorb it.
// R1 rotates the table (patch embedding, class token, position rows, head) with the layers; the
// Vim-specific choices of METHOD.md — static per-tensor activation scales, the percentile observer
// where the method says so, B/C smoothing (S4) per direction with the first-step absorption — are
// the recipes' own. (A template never spelled by callers; with MQ_COMPILED compiled once in the
// companion library, src/vim.cpp.)
template <class Tag = void>
QuantizedVimRecipe run_vim_recipe(const dependent_t<Tag, Recipe>& recipe,
                                  const dependent_t<Tag, VimWeights>& float_weights,
                                  const dependent_t<Tag, VimConfig>& cfg,
                                  const dependent_t<Tag, ImageBatch>& calib, const dependent_t<Tag, QuantizeOptions>& opt) {
    validate(float_weights, cfg);
    require(calib.count > 0, "run_vim_recipe: no calibration images");
    QuantizedRecipe r = run_recipe(
        recipe, float_weights.directions, vim_direction_config(cfg),
        [&](const MambaWeights& w, const CalibrationPlan& plan, std::string_view what) {
            const auto m = build_quantized_vim_model<Tag>({w, float_weights.head_bias}, cfg, QuantizationConfig{});
            return calibrate_vim(m, calib, plan, &w, [&](std::size_t d, std::size_t t) {
                if (opt.progress) opt.progress(what, d, t);
            });
        },
        opt, /*shared_layers=*/2);
    QuantizedVimRecipe out{{std::move(r.weights), float_weights.head_bias}, std::move(r.config), std::move(r.final_stats)};
    validate(out.weights, cfg);
    return out;
}
MQ_EXTERN_TEMPLATE(QuantizedVimRecipe run_vim_recipe<>(const Recipe&, const VimWeights&, const VimConfig&, const ImageBatch&,
                                                       const QuantizeOptions&))

// The offline-transformed float weights (online rotations undone): the float function in the
// transformed basis, the per-layer report's reference.
template <class = void>
VimWeights without_online_rotations(VimWeights w) {
    w.directions = without_online_rotations(std::move(w.directions));
    return w;
}

MQ_NAMESPACE_END
