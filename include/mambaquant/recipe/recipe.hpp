// Recipes: RTN, SmoothQuant, QuaRot-style, Quamba-style and MambaQuant as short lists of transform steps, and the runner.
#pragma once
// Why this header is long-ish (~400 lines): the steps, the five recipes and the runner belong
// together — a user reads one file to see every method as a list, and to write a sixth.

#include <mambaquant/calib/calibrate.hpp>
#include <mambaquant/calib/covariance.hpp>
#include <mambaquant/calib/statistics.hpp>
#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/nn/activation_tap.hpp>
#include <mambaquant/nn/quantization_config.hpp>
#include <mambaquant/nn/quantized_model.hpp>
#include <mambaquant/quant/gptq.hpp>
#include <mambaquant/transform/fusion.hpp>
#include <mambaquant/transform/klt.hpp>
#include <mambaquant/transform/klt_hadamard.hpp>
#include <mambaquant/transform/rotation.hpp>
#include <mambaquant/transform/smoothing.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <type_traits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

MQ_NAMESPACE_BEGIN

// What a step sees: the weights as transformed so far, the quantization config being built, the
// statistics of the *current* weights (each stage is calibrated afresh), and the run's choices.
struct RecipeContext {
    MambaWeights weights;
    MambaConfig model;
    QuantizationConfig config;
    const CalibrationStats* stats = nullptr;
    std::uint64_t seed = 0;
    UnsupportedSize fallback = UnsupportedSize::error; // sizes with no exact Hadamard
    // Consecutive layers that share norm, in_proj and out_proj (1: a Mamba model; 2: a Vim layer's
    // two direction layers, nn/vim_weights.hpp). A step whose scales depend on per-layer weights
    // and rewrite a shared tensor (S7) reads the weights of the whole group.
    std::size_t shared_layers = 1;
};

using RecipeStep = std::function<void(RecipeContext&)>;

// Steps that read statistics of the same weights form a stage; the runner calibrates once per
// stage. `plan` says which covariances the stage needs.
struct RecipeStage {
    std::vector<RecipeStep> steps;
    CalibrationPlan plan;
};

// How static activation ranges are read from the final calibration (on the transformed model).
enum class RangeRule : std::uint8_t { minmax, percentile };

struct Recipe {
    std::string name;
    std::vector<RecipeStage> stages;  // offline transforms, each stage on fresh statistics
    std::vector<RecipeStep> online;   // online rotations (R2, R4): set after the final calibration
    bool act_symmetric = false;       // static per-tensor activations, symmetric or asymmetric
    RangeRule range = RangeRule::minmax;
    double percentile = 0.999999;
    std::vector<TapPoint> percentile_sites; // empty: `range` everywhere; else percentile only here
    bool random_signs = false;        // results depend on the seed (randomized Hadamard)
};

// ---- steps (each one line of METHOD.md §3–4) ---------------------------------------------------
namespace steps {

template <class Tag = void>
const SiteStats& stat(const dependent_t<Tag, RecipeContext>& c, std::size_t layer, TapPoint p) {
    require(c.stats != nullptr, "recipe: a step needs calibration statistics but its stage has none");
    return c.stats->at(tap_key(layer, c.weights.layers.size(), p));
}

// dt shift: μ = mid-range of the dt input; b_dt absorbs μ·W_dtᵀ.
template <class Tag = void>
RecipeStep shift_dt() {
    return [](dependent_t<Tag, RecipeContext>& c) {
        for (std::size_t i = 0; i < c.weights.layers.size(); ++i) {
            const auto& s = stat(c, i, TapPoint::dt_proj_input).channels();
            c.weights.layers[i] = ::mq::shift_dt(c.weights.layers[i], s.min(), s.max()).weights;
        }
    };
}
// SmoothQuant on the norm → in_proj (the SmoothQuant baseline).
template <class Tag = void>
RecipeStep smooth_norm(double alpha = 0.5) {
    return [alpha](dependent_t<Tag, RecipeContext>& c) {
        for (std::size_t i = 0; i < c.weights.layers.size(); ++i)
            c.weights.layers[i] = ::mq::smooth_norm(c.weights.layers[i], stat(c, i, TapPoint::in_proj_input).channels().absmax(),
                                                    {alpha, 1e-2})
                                      .weights;
    };
}
// S2: S-SiLU at the out_proj input.
template <class Tag = void>
RecipeStep smooth_gate(double alpha = 0.5) {
    return [alpha](dependent_t<Tag, RecipeContext>& c) {
        for (std::size_t i = 0; i < c.weights.layers.size(); ++i)
            c.weights.layers[i] =
                ::mq::smooth_gate(c.weights.layers[i], stat(c, i, TapPoint::out_proj_input).channels().absmax(), {alpha, 1e-2})
                    .weights;
    };
}
// S4: B/C smoothing per state index from max|state| and max|C|.
template <class Tag = void>
RecipeStep smooth_state() {
    return [](dependent_t<Tag, RecipeContext>& c) {
        for (std::size_t i = 0; i < c.weights.layers.size(); ++i) {
            require(c.stats->contains(site_key(i, "scan_state")),
                    "recipe: smooth_state needs the state statistics (CalibrationPlan::state)");
            const Eigen::VectorXd st = c.stats->at(site_key(i, "scan_state")).channels().absmax();
            c.weights.layers[i] =
                ::mq::smooth_state(c.weights.layers[i], st, stat(c, i, TapPoint::scan_C).channels().absmax()).weights;
        }
    };
}
// S5: x_proj dt rows → dt_proj. After the dt shift (same stage, same statistics) the dt input is
// dt − μ with μ the mid-range, so max|dt_r − μ_r| = (max_r − min_r)/2 exactly.
template <class Tag = void>
RecipeStep smooth_dt_after_shift(double alpha = 0.5) {
    return [alpha](dependent_t<Tag, RecipeContext>& c) {
        for (std::size_t i = 0; i < c.weights.layers.size(); ++i) {
            const auto& s = stat(c, i, TapPoint::dt_proj_input).channels();
            c.weights.layers[i] = ::mq::smooth_dt(c.weights.layers[i], (s.max() - s.min()) * 0.5, {alpha, 1e-2}).weights;
        }
    };
}
// S7: in_proj x rows → conv1d. Layers sharing in_proj (a Vim layer's directions) feed one x to
// several convs: s is then from the max over all their filters (as SmoothQuant does for q, k, v
// reading one input), and every one of those convs absorbs the same s.
template <class Tag = void>
RecipeStep smooth_conv(double alpha = 0.5) {
    return [alpha](dependent_t<Tag, RecipeContext>& c) {
        const std::size_t n = c.weights.layers.size(), g = c.shared_layers;
        require(g >= 1 && n % g == 0, "smooth_conv (S7): ", n, " layers are not groups of ", g);
        std::vector<Eigen::VectorXd> s(n);
        for (std::size_t i = 0; i < n; ++i) {
            dependent_t<Tag, Eigen::VectorXd> wmax = Eigen::VectorXd::Zero(c.weights.layers[i].conv_w.rows());
            for (std::size_t j = i / g * g; j < i / g * g + g; ++j)
                wmax = wmax.cwiseMax(c.weights.layers[j].conv_w.template cast<double>().cwiseAbs().rowwise().maxCoeff());
            s[i] = smoothing_scales(stat(c, i, TapPoint::conv_input).channels().absmax(), wmax, {alpha, 1e-2},
                                    "smooth_conv (S7)");
        }
        for (std::size_t i = 0; i < n; ++i) c.weights.layers[i] = apply_conv_smoothing(c.weights.layers[i], s[i]);
    };
}

template <class Tag = void>
MatrixXd hadamard_for(const dependent_t<Tag, RecipeContext>& c, std::size_t n, bool randomized, std::uint64_t seed) {
    return rotation_matrix<double>(choose_rotation(n, c.fallback, seed, randomized));
}

// Which matrix M the KLT diagonalizes (M = K·Λ·Kᵀ). For any symmetric M that K diagonalizes,
// diag(Hᵀ·Kᵀ·M·K·H) = tr(M)/n (every H_jl² = 1/n), so x' = x·K·H equalizes what M measures:
//   second_moment  M = E[x·xᵀ] = XᵀX/n   → every channel gets the same mean square E[x'_l²]
//   centred        M = Cov(x)            → every channel gets the same variance (METHOD.md §3's
//                                           derivation, which assumes centred activations)
// A static per-tensor quantizer sees the raw values, mean included, so the second moment is
// the default **[choice]**: the residual stream of the bundled models is far from centred
// (‖μ‖² is 74–78 % of E‖x‖² at every in_proj input of kjv-mamba-192-outlier), and there the
// centred K leaves μ·K·H unequal across channels (in_proj input 8-bit SQNR 40.9 dB vs 44.8 dB
// with the second moment; see the README's accuracy section).
enum class KltMoment : std::uint8_t { second_moment, centred };
template <class Tag = void>
MatrixXd klt_moment(const dependent_t<Tag, CovarianceAccumulator>& a, KltMoment m) {
    if (m == KltMoment::centred) return a.covariance();
    require(a.count() >= 1, "klt_moment: no rows accumulated");
    return a.second_moment() / static_cast<double>(a.count());
}

// R1: residual rotation with a randomized Hadamard (QuaRot) or KLT·H (MambaQuant: K1 from the
// in_proj input's moment (see KltMoment) with γ folded out, M(hn/γ) = diag(1/γ)·M(hn)·diag(1/γ),
// pooled over layers as the mean of the per-layer matrices, or layer 0).
enum class R1Basis : std::uint8_t { hadamard, klt_pooled, klt_layer0 };
template <class Tag = void>
RecipeStep rotate_residual(R1Basis basis, KltMoment moment = KltMoment::second_moment) {
    return [basis, moment](dependent_t<Tag, RecipeContext>& c) {
        const std::size_t d = static_cast<std::size_t>(c.weights.embedding.cols());
        const MatrixXd h = hadamard_for(c, d, true, c.seed);
        MatrixXd q = h;
        if (basis != R1Basis::hadamard) {
            const std::size_t layers = basis == R1Basis::klt_layer0 ? 1 : c.weights.layers.size();
            MatrixXd cov = MatrixXd::Zero(static_cast<Eigen::Index>(d), static_cast<Eigen::Index>(d));
            for (std::size_t i = 0; i < layers; ++i) {
                const auto& site = stat(c, i, TapPoint::in_proj_input);
                const dependent_t<Tag, Eigen::VectorXd> g = c.weights.layers[i].norm.template cast<double>();
                require((g.array() != 0.0).all(), "rotate_residual (R1): layer ", i, " has a zero RMSNorm weight");
                const dependent_t<Tag, Eigen::VectorXd> inv = g.cwiseInverse();
                cov += inv.asDiagonal() * klt_moment(site.covariance(), moment) * inv.asDiagonal();
            }
            cov /= static_cast<double>(layers);
            q = klt_hadamard(klt_from_covariance(cov), h).matrix;
        }
        c.weights = ::mq::rotate_residual(c.weights, q);
    };
}
// R5: dt path per layer, Q5 = K5·H_R with K5 from the dt input's moment (see KltMoment).
template <class Tag = void>
RecipeStep rotate_dt_path(KltMoment moment = KltMoment::second_moment) {
    return [moment](dependent_t<Tag, RecipeContext>& c) {
        for (std::size_t i = 0; i < c.weights.layers.size(); ++i) {
            const MatrixXd cov = klt_moment(stat(c, i, TapPoint::dt_proj_input).covariance(), moment);
            const MatrixXd h = hadamard_for(c, c.weights.layers[i].dt_rank(), false, 0);
            c.weights.layers[i] = ::mq::rotate_dt_path(c.weights.layers[i], klt_hadamard(klt_from_covariance(cov), h).matrix);
        }
    };
}
// R2: plain Hadamard at the out_proj input, online (fused with its quantization).
template <class Tag = void>
RecipeStep rotate_out_proj_input() {
    return [](dependent_t<Tag, RecipeContext>& c) {
        const std::size_t e = static_cast<std::size_t>(c.model.d_inner);
        const RotationSpec spec = choose_rotation(e, UnsupportedSize::error); // online needs an exact Hadamard
        const MatrixXd h = rotation_matrix<double>(spec);
        for (auto& l : c.weights.layers) l = ::mq::rotate_out_proj_input(l, h);
        c.config.out_rotation = spec;
    };
}
// R4: Hadamard over the state dimension before the quantized state·C.
template <class Tag = void>
RecipeStep rotate_state() {
    return [](dependent_t<Tag, RecipeContext>& c) {
        const RotationSpec spec = choose_rotation(c.model.d_state, UnsupportedSize::error);
        const MatrixXd h = rotation_matrix<double>(spec);
        for (auto& l : c.weights.layers) l = ::mq::rotate_state(l, h);
        c.config.state_rotation = spec;
    };
}

} // namespace steps

// ---- the five methods (METHOD.md §5) -----------------------------------------------------------
template <class = void>
CalibrationPlan plan_with(std::initializer_list<TapPoint> covariance, bool state = false) {
    CalibrationPlan p;
    for (TapPoint t : covariance) p.covariance[static_cast<std::size_t>(t)] = true;
    p.state = state;
    return p;
}

template <class = void>
Recipe rtn_recipe() { return {"rtn", {}, {}, false, RangeRule::minmax, 0.999999, {}, false}; }

template <class = void>
Recipe smoothquant_recipe(double alpha = 0.5) {
    // The norm → in_proj smoothing; out_proj's input a = y ⊙ SiLU(z) has no linear producer to
    // absorb a scale without S-SiLU (that is MambaQuant's S2), so SmoothQuant stops at in_proj.
    return {"smoothquant", {{{steps::smooth_norm(alpha)}, {}}}, {}, true, RangeRule::minmax, 0.999999, {}, false};
}

template <class = void>
Recipe quarot_recipe() {
    return {"quarot",      {{{steps::rotate_residual(steps::R1Basis::hadamard)}, {}}}, {steps::rotate_out_proj_input()},
            false,         RangeRule::minmax, 0.999999, {}, true};
}

template <class = void>
Recipe quamba_recipe(double percentile = 0.99999) {
    // Percentile clipping of the scan input (x_proj's input, Quamba's outlier site), min/max
    // elsewhere, online Hadamard at out_proj's input, static symmetric per-tensor activations.
    return {"quamba", {}, {steps::rotate_out_proj_input()}, true, RangeRule::minmax, percentile, {TapPoint::x_proj_input},
            false};
}

template <class = void>
Recipe mambaquant_recipe(steps::R1Basis r1 = steps::R1Basis::klt_pooled,
                         steps::KltMoment moment = steps::KltMoment::second_moment) {
    Recipe r;
    r.name = "mambaquant";
    // Stage 1 (float statistics): dt shift → S2, S4, S5, S7.
    r.stages.push_back({{steps::shift_dt(), steps::smooth_gate(), steps::smooth_state(), steps::smooth_dt_after_shift(),
                         steps::smooth_conv()},
                        plan_with({}, /*state=*/true)});
    // Stage 2 (statistics of the smoothed model): R1 (KLT·H), R5 (KLT·H_R).
    r.stages.push_back({{steps::rotate_residual(r1, moment), steps::rotate_dt_path(moment)},
                        plan_with({TapPoint::in_proj_input, TapPoint::dt_proj_input})});
    r.online = {steps::rotate_out_proj_input(), steps::rotate_state()};
    r.act_symmetric = false;
    r.range = RangeRule::percentile;
    r.random_signs = true;
    return r;
}

template <class = void>
std::vector<std::string_view> recipe_names() { return {"rtn", "smoothquant", "quarot", "quamba", "mambaquant"}; }

template <class = void>
Recipe recipe_by_name(std::string_view name) {
    if (name == "rtn") return rtn_recipe();
    if (name == "smoothquant") return smoothquant_recipe();
    if (name == "quarot") return quarot_recipe();
    if (name == "quamba") return quamba_recipe();
    if (name == "mambaquant") return mambaquant_recipe();
    fail("unknown method \"", name, "\" (expected rtn, smoothquant, quarot, quamba or mambaquant)");
}

// ---- bits ------------------------------------------------------------------------------------
struct BitsChoice {
    std::string label; // fp32, w8a8, w4a8
    int weight_bits = 0; // 0: float
    std::size_t group = 0; // W4 per group (0: per channel)
};
template <class = void>
BitsChoice bits_by_name(std::string_view name) {
    if (name == "fp32") return {"fp32", 0, 0};
    if (name == "w8a8") return {"w8a8", 8, 0};
    if (name == "w4a8") return {"w4a8", 4, 0};
    fail("unknown bit width \"", name, "\" (expected fp32, w8a8 or w4a8)");
}

// ---- the runner ------------------------------------------------------------------------------
struct QuantizeOptions {
    BitsChoice bits = bits_by_name("w8a8");
    std::uint64_t seed = 0;
    bool gptq = false;
    GptqOptions gptq_options{};
    UnsupportedSize fallback = UnsupportedSize::error;
    std::function<void(std::string_view, std::size_t, std::size_t)> progress; // (what, done, total)
};

struct QuantizedRecipe {
    MambaWeights weights;         // transformed (and GPTQ-rounded) float weights
    QuantizationConfig config;    // with static params
    CalibrationStats final_stats; // of the transformed model (the static ranges' source)
};

namespace detail {
// A NaN or ∞ in a weight would turn every statistic downstream into garbage: refuse it by name.
template <class Tag = void>
void require_finite_weights(const dependent_t<Tag, MambaWeights>& w) {
    auto check = [](const auto& m, const std::string& name) {
        if (m.size() == 0 || m.allFinite()) return;
        for (Eigen::Index i = 0; i < m.size(); ++i)
            require(std::isfinite(m.data()[i]), "recipe: weight '", name, "' has a non-finite value (", m.data()[i],
                    ") at flat index ", i);
    };
    check(w.embedding, "embedding");
    check(w.norm_f, "norm_f");
    if (!w.tied) check(w.lm_head, "lm_head");
    for (std::size_t i = 0; i < w.layers.size(); ++i) {
        const auto& l = w.layers[i];
        const std::string p = "layers." + std::to_string(i) + ".";
        check(l.in_proj, p + "in_proj"), check(l.conv_w, p + "conv1d.weight"), check(l.conv_b, p + "conv1d.bias");
        check(l.x_proj, p + "x_proj"), check(l.dt_proj, p + "dt_proj"), check(l.dt_bias, p + "dt_proj.bias");
        check(l.A_log, p + "A_log"), check(l.D, p + "D"), check(l.out_proj, p + "out_proj"), check(l.norm, p + "norm");
    }
}
template <class Tag = void>
QuantizationConfig recipe_base_config(const dependent_t<Tag, Recipe>& r, const dependent_t<Tag, BitsChoice>& b) {
    QuantizationConfig c = uniform_quantization_config(b.weight_bits, b.group, ActMode::static_per_tensor, r.act_symmetric,
                                                       "custom");
    // METHOD.md §2: conv1d's weights per channel (int8), its input static per tensor — the integer
    // conv (kernels/quantized_conv1d.hpp), with the recipe's symmetry and range rule as every other
    // static site (run_recipe calibrates it on the transformed model).
    if (c[Site::conv1d].weight) c[Site::conv1d].act = ActQuant{ActMode::static_per_tensor, 8, r.act_symmetric};
    for (auto m : kQuantMethods)
        if (m == r.name) c.method = r.name;
    c.bits = b.label;
    return c;
}
template <class Tag = void>
QuantParams act_params(const dependent_t<Tag, SiteStats>& s, bool percentile, bool sym) {
    const ValueRange v = percentile ? s.percentile_range() : s.minmax_range();
    return sym ? params_from_range<8, symmetric>(v.lo, v.hi) : params_from_range<8, asymmetric>(v.lo, v.hi);
}
// GPTQ of one weight with the (already rotated) input second moment XᵀX: ŵ and the grid GPTQ chose
// its codes on (the builder packs ŵ on that grid, so the model holds GPTQ's own codes and scales).
template <class Tag = void>
GptqResult gptq_weight(const dependent_t<Tag, MatrixXf>& w, const dependent_t<Tag, CalibrationStats>& st,
                       const dependent_t<Tag, std::string>& key, const dependent_t<Tag, QuantSpec>& spec,
                       const dependent_t<Tag, GptqOptions>& o) {
    const MatrixXd h = st.at(key).covariance().second_moment();
    return visit_quantizer(spec, [&]<class Q>(std::type_identity<Q>) -> GptqResult {
        if constexpr (std::same_as<typename Q::granularity, per_channel> || is_per_group_v<typename Q::granularity>)
            return gptq_quantize<Q>(w, h, o);
        else
            fail("GPTQ: weights must be per channel or per group, got ", QuantizationConfig::granularity_kind_label(spec));
    });
}
} // namespace detail

// The offline-transformed float weights of a recipe's result: the online rotations undone (R2:
// W_out·H·Hᵀ; R4: C rows H·Hᵀ·W_C), so the plain float path computes the original function in the
// same transformed basis — the reference of the per-layer report.
template <class Tag = void>
MambaWeights without_online_rotations(dependent_t<Tag, MambaWeights> w) {
    for (auto& l : w.layers) {
        if (l.out_rotation.size()) {
            l.out_proj = (l.out_proj.template cast<double>() * l.out_rotation.template cast<double>().transpose()).template cast<float>();
            l.out_rotation.resize(0, 0);
        }
        if (l.state_rotation.size()) {
            const auto r = static_cast<Eigen::Index>(l.dt_rank()), n = static_cast<Eigen::Index>(l.d_state());
            l.x_proj.middleRows(r + n, n) =
                (l.state_rotation.template cast<double>() * l.x_proj.middleRows(r + n, n).template cast<double>()).template cast<float>();
            l.state_rotation.resize(0, 0);
        }
    }
    return w;
}

// A calibration pass: the statistics of the float model with these weights (keys as tap_key);
// `what` names the pass for progress reports. run_recipe's own runs the language model over token
// windows; a Vim model runs over images (recipe/vim_recipe.hpp).
using RecipeCalibrator =
    std::function<CalibrationStats(const MambaWeights& weights, const CalibrationPlan& plan, std::string_view what)>;

// calibrate (per stage) → transforms → online rotations → final calibration on the transformed
// model (static ranges; Hessians for GPTQ) → optional GPTQ → the config with its static params.
// `shared_layers`: RecipeContext::shared_layers. (A template for the companion library, as below.)
template <class Tag = void>
QuantizedRecipe run_recipe(const dependent_t<Tag, Recipe>& recipe, const dependent_t<Tag, MambaWeights>& float_weights,
                           const dependent_t<Tag, MambaConfig>& model,
                           const dependent_t<Tag, RecipeCalibrator>& calibrate_model, const dependent_t<Tag, QuantizeOptions>& opt,
                           std::size_t shared_layers = 1) {
    validate(float_weights);
    detail::require_finite_weights(float_weights);
    RecipeContext c{float_weights, model, detail::recipe_base_config(recipe, opt.bits), nullptr, opt.seed, opt.fallback,
                    shared_layers};
    for (std::size_t s = 0; s < recipe.stages.size(); ++s) {
        const RecipeStage& stage = recipe.stages[s];
        CalibrationStats stats = calibrate_model(c.weights, stage.plan, "calibrate");
        c.stats = &stats;
        for (const auto& step : stage.steps) step(c);
        c.stats = nullptr;
    }
    // The final calibration runs the offline-transformed float model; the online rotations are
    // set afterwards, and the collector applies R2 to the out_proj input it observes, so the static
    // range and GPTQ's Hessian are those of what the quantizer sees.
    const MambaWeights offline = c.weights;
    for (const auto& step : recipe.online) step(c);
    CalibrationPlan plan;
    plan.percentile = recipe.percentile;
    if (opt.gptq)
        for (TapPoint t : {TapPoint::in_proj_input, TapPoint::x_proj_input, TapPoint::dt_proj_input, TapPoint::out_proj_input,
                           TapPoint::lm_head_input})
            plan.covariance[static_cast<std::size_t>(t)] = true;
    for (const auto& l : c.weights.layers) plan.out_rotation.push_back(l.out_rotation);
    QuantizedRecipe out;
    out.final_stats = calibrate_model(offline, plan, "calibrate (transformed)");
    const std::size_t n = c.weights.layers.size();
    c.config.layers.assign(n, LayerActParams{});
    auto use_percentile = [&](TapPoint t) {
        if (recipe.percentile_sites.empty()) return recipe.range == RangeRule::percentile;
        for (TapPoint p : recipe.percentile_sites)
            if (p == t) return true;
        return recipe.range == RangeRule::percentile;
    };
    const std::pair<Site, TapPoint> sites[] = {{Site::in_proj, TapPoint::in_proj_input},
                                               {Site::conv1d, TapPoint::conv_input},
                                               {Site::x_proj, TapPoint::x_proj_input},
                                               {Site::dt_proj, TapPoint::dt_proj_input},
                                               {Site::out_proj, TapPoint::out_proj_input}};
    for (std::size_t i = 0; i < n; ++i)
        for (const auto& [site, tap] : sites)
            if (c.config[site].act.mode == ActMode::static_per_tensor)
                c.config.layers[i][site] = detail::act_params(out.final_stats.at(tap_key(i, n, tap)), use_percentile(tap),
                                                              c.config[site].act.symmetric);
    if (c.config[Site::lm_head].act.mode == ActMode::static_per_tensor)
        c.config.head_act = detail::act_params(out.final_stats.at(tap_key(n, n, TapPoint::lm_head_input)),
                                               use_percentile(TapPoint::lm_head_input), c.config[Site::lm_head].act.symmetric);
    if (opt.gptq) {
        require(opt.bits.weight_bits > 0, "GPTQ needs quantized weights (bits ", opt.bits.label, ")");
        c.config.weight_params.assign(n, LayerWeightParams{});
        for (std::size_t i = 0; i < n; ++i) {
            auto& l = c.weights.layers[i];
            // Each Hessian is the second moment of the site's input as the quantized layer sees it
            // (in_proj: hn = RMSNorm(h)·γ; out_proj: a·H after R2). The LM head is left to RTN:
            // when tied it is the embedding, which GPTQ's input-side objective does not cover.
            // The weights become ŵ and the config keeps GPTQ's grid for the builder.
            auto gptq = [&](Site site, TapPoint tap, MatrixXf& weight) {
                GptqResult g = detail::gptq_weight(weight, out.final_stats, tap_key(i, n, tap), *c.config[site].weight,
                                                   opt.gptq_options);
                weight = std::move(g.dequantized);
                c.config.weight_params[i][site] = std::move(g.params);
            };
            gptq(Site::in_proj, TapPoint::in_proj_input, l.in_proj);
            gptq(Site::x_proj, TapPoint::x_proj_input, l.x_proj);
            gptq(Site::dt_proj, TapPoint::dt_proj_input, l.dt_proj);
            gptq(Site::out_proj, TapPoint::out_proj_input, l.out_proj);
            if (opt.progress) opt.progress("gptq", i + 1, n);
        }
    }
    out.weights = std::move(c.weights);
    out.config = std::move(c.config);
    return out;
}
MQ_EXTERN_TEMPLATE(QuantizedRecipe run_recipe<>(const Recipe&, const MambaWeights&, const MambaConfig&,
                                                const RecipeCalibrator&, const QuantizeOptions&, std::size_t))

// The language model's recipe run: each calibration pass runs the float model of the current
// weights over the token windows. (A template never spelled by callers: instantiated only where
// called, and with MQ_COMPILED compiled once in the companion library, src/recipe.cpp —
// core/config.hpp.)
template <class Tag = void>
QuantizedRecipe run_recipe(const dependent_t<Tag, Recipe>& recipe, const dependent_t<Tag, MambaWeights>& float_weights,
                           const dependent_t<Tag, MambaConfig>& model,
                           std::span<const std::span<const std::uint32_t>> windows, const dependent_t<Tag, QuantizeOptions>& opt) {
    return run_recipe<>(recipe, float_weights, model,
                      [&](const MambaWeights& w, const CalibrationPlan& plan, std::string_view what) {
                          const auto m = build_quantized_model<Tag>(w, model, QuantizationConfig{});
                          return calibrate(m, windows, plan, &w, [&](std::size_t d, std::size_t t) {
                              if (opt.progress) opt.progress(what, d, t);
                          });
                      },
                      opt);
}
MQ_EXTERN_TEMPLATE(QuantizedRecipe run_recipe<>(const Recipe&, const MambaWeights&, const MambaConfig&,
                                                std::span<const std::span<const std::uint32_t>>, const QuantizeOptions&))

MQ_NAMESPACE_END
