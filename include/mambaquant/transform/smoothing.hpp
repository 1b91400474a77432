// SmoothQuant-style per-channel scales and MambaQuant's per-site smoothing folded into Mamba weights.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/transform/mamba_weights.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>

MQ_NAMESPACE_BEGIN

// SmoothQuant balance. Maxima below `floor` are raised to it, so a dead activation channel or an
// all-zero weight column gives a finite, positive scale instead of 0 or ∞.
struct SmoothParams {
    double alpha = 0.5;  // migration strength: 0 leaves activations alone, 1 moves everything
    double floor = 1e-2;
};

// Per state index clamp of the B/C smoothing (S4) **[choice]**: s_n ∈ [lo, hi].
struct StateSmoothParams {
    double lo = 1e-2;
    double hi = 100.0;
};

// A transformed layer and the vector it was transformed with (s, or μ for the dt shift).
struct SmoothResult {
    MambaLayerWeights weights;
    Eigen::VectorXd scale;
};

namespace detail {
template <class Tag = void>
void smooth_require_stat(const dependent_t<Tag, Eigen::VectorXd>& v, Eigen::Index n, const char* site,
                         const char* what) {
    require(v.size() == n, site, ": ", what, " has ", v.size(), " channels, expected ", n);
    for (Eigen::Index i = 0; i < n; ++i)
        require(std::isfinite(v[i]) && v[i] >= 0.0, site, ": ", what, "[", i, "] = ", v[i],
                " (must be finite and >= 0)");
}
template <class Tag = void>
void smooth_require_scale(const dependent_t<Tag, Eigen::VectorXd>& s, Eigen::Index n, const char* site) {
    require(s.size() == n, site, ": scale has ", s.size(), " entries, expected ", n);
    for (Eigen::Index i = 0; i < n; ++i)
        require(std::isfinite(s[i]) && s[i] > 0.0, site, ": scale[", i, "] = ", s[i], " (must be finite and > 0)");
}
// max_i |W_ij| over the rows of W: one value per input column j.
template <class Tag = void>
Eigen::VectorXd smooth_column_absmax(const dependent_t<Tag, Eigen::Ref<const MatrixXf>>& w) {
    return w.template cast<double>().cwiseAbs().colwise().maxCoeff().transpose();
}
} // namespace detail

// s_j = max(max|X_j|, floor)^α / max(max|W_j|, floor)^(1−α)
// X_j: channel j of the activation entering the weight; W_j: column j of the consuming weight.
// Dividing X_j by s_j and multiplying W_j by s_j leaves x·Wᵀ unchanged and balances the two
// ranges: afterwards max|X_j/s_j| = max|W_j·s_j| when α = 0.5 (and no floor applies).
template <class Tag = void>
Eigen::VectorXd smoothing_scales(const dependent_t<Tag, Eigen::VectorXd>& act_absmax,
                                 const dependent_t<Tag, Eigen::VectorXd>& weight_absmax,
                                 SmoothParams p = {}, const char* site = "smoothing_scales") {
    require(p.alpha >= 0.0 && p.alpha <= 1.0, site, ": alpha must be in [0, 1], got ", p.alpha);
    require(std::isfinite(p.floor) && p.floor > 0.0, site, ": floor must be finite and > 0, got ", p.floor);
    detail::smooth_require_stat(act_absmax, act_absmax.size(), site, "activation max|X|");
    detail::smooth_require_stat(weight_absmax, act_absmax.size(), site, "weight max|W|");
    Eigen::VectorXd s(act_absmax.size());
    for (Eigen::Index j = 0; j < s.size(); ++j)
        s[j] = std::pow(std::max(act_absmax[j], p.floor), p.alpha) /
               std::pow(std::max(weight_absmax[j], p.floor), 1.0 - p.alpha);
    detail::smooth_require_scale(s, s.size(), site); // e.g. an overflow for absurd statistics
    return s;
}

// ---- norm → in_proj (the SmoothQuant baseline) -----------------------------------------------
// hn = RMSNorm(h)·γ, so dividing channel j of hn by s_j is γ_j ← γ_j/s_j, and in_proj absorbs it:
//   W_in ← W_in·diag(s)   (both the x and the z rows read hn).
template <class Tag = void>
MambaLayerWeights apply_norm_smoothing(const dependent_t<Tag, MambaLayerWeights>& w,
                                       const dependent_t<Tag, Eigen::VectorXd>& s) {
    validate(w);
    detail::smooth_require_scale(s, w.norm.size(), "apply_norm_smoothing");
    MambaLayerWeights out = w;
    out.norm = (w.norm.template cast<double>().array() / s.array()).template cast<float>().matrix();
    out.in_proj = (w.in_proj.template cast<double>().array().rowwise() * s.transpose().array()).template cast<float>();
    return out;
}
// s from max|hn_j| (the in_proj input) and the in_proj columns.
template <class Tag = void>
SmoothResult smooth_norm(const dependent_t<Tag, MambaLayerWeights>& w,
                         const dependent_t<Tag, Eigen::VectorXd>& in_proj_input_absmax,
                         SmoothParams p = {}) {
    validate(w);
    const Eigen::VectorXd s =
        smoothing_scales(in_proj_input_absmax, detail::smooth_column_absmax(w.in_proj), p, "smooth_norm");
    return {apply_norm_smoothing(w, s), s};
}

// ---- S2: S-SiLU at the out_proj input ----------------------------------------------------------
// a = y ⊙ SiLU(z). With z' = z/s (W_z ← diag(1/s)·W_z, the gate rows E..2E−1 of in_proj),
//   S-SiLU_s(z') = z'·σ(s⊙z') = SiLU(z)/s   ⇒   a' = y ⊙ S-SiLU_s(z') = a/s,
// and out_proj absorbs s: W_out ← W_out·diag(s). The layer's gate_scale becomes gate_scale⊙s
// (an already smoothed gate composes: with z'' = z'/s₁, z''·σ(s₀s₁⊙z'') = S-SiLU_{s₀}(z')/s₁).
// Must precede R2: the online Hadamard at the out_proj input sees the smoothed a'.
template <class Tag = void>
MambaLayerWeights apply_gate_smoothing(const dependent_t<Tag, MambaLayerWeights>& w,
                                       const dependent_t<Tag, Eigen::VectorXd>& s) {
    validate(w);
    const Eigen::Index e = static_cast<Eigen::Index>(w.d_inner());
    detail::smooth_require_scale(s, e, "apply_gate_smoothing");
    require(w.out_rotation.size() == 0, "apply_gate_smoothing: the layer already has an online out_proj rotation (R2); "
                                        "apply S2 before R2");
    MambaLayerWeights out = w;
    out.in_proj.bottomRows(e) = (w.in_proj.bottomRows(e).template cast<double>().array().colwise() / s.array()).template cast<float>();
    out.gate_scale = (w.gate_scale.template cast<double>().array() * s.array()).template cast<float>().matrix();
    out.out_proj = (w.out_proj.template cast<double>().array().rowwise() * s.transpose().array()).template cast<float>();
    return out;
}
// s from max|a_e| (the out_proj input, measured on the layer as it is) and the out_proj columns.
template <class Tag = void>
SmoothResult smooth_gate(const dependent_t<Tag, MambaLayerWeights>& w,
                         const dependent_t<Tag, Eigen::VectorXd>& out_proj_input_absmax,
                         SmoothParams p = {}) {
    validate(w);
    const Eigen::VectorXd s =
        smoothing_scales(out_proj_input_absmax, detail::smooth_column_absmax(w.out_proj), p, "smooth_gate (S2)");
    return {apply_gate_smoothing(w, s), s};
}

// ---- S4: B/C smoothing with A absorption -------------------------------------------------------
// s_n = clamp(sqrt(max|state_n| / max|C_n|), lo, hi)            (balances state and C ranges)
// W_C ← diag(s)·W_C, W_B ← diag(1/s)·W_B (x_proj rows R+N.. and R..). The recurrence
//   state_t = exp(Δ_t·A)·state_{t−1} + Δ_t·B_t·x_t
// is linear in B, so from a zero state it runs as state/s, and y = Σ_n (state_n/s_n)(C_n·s_n) is
// exact. A carried state in the original units enters through the first step only:
//   log dA'_0 = Δ_0·A + log(1/s)   (one addcmul), later steps unchanged;
// state_scale (⊙ s) records s for that. Must precede R4 (the state rotation acts on state/s).
template <class Tag = void>
MambaLayerWeights apply_state_smoothing(const dependent_t<Tag, MambaLayerWeights>& w,
                                        const dependent_t<Tag, Eigen::VectorXd>& s) {
    validate(w);
    const Eigen::Index r = static_cast<Eigen::Index>(w.dt_rank()), n = static_cast<Eigen::Index>(w.d_state());
    detail::smooth_require_scale(s, n, "apply_state_smoothing");
    require(w.state_rotation.size() == 0,
            "apply_state_smoothing: the layer already has an online state rotation (R4); apply S4 before R4");
    MambaLayerWeights out = w;
    out.x_proj.middleRows(r, n) = (w.x_proj.middleRows(r, n).template cast<double>().array().colwise() / s.array()).template cast<float>();
    out.x_proj.middleRows(r + n, n) =
        (w.x_proj.middleRows(r + n, n).template cast<double>().array().colwise() * s.array()).template cast<float>();
    out.state_scale = (w.state_scale.template cast<double>().array() * s.array()).template cast<float>().matrix();
    return out;
}
template <class Tag = void>
Eigen::VectorXd state_smoothing_scales(const dependent_t<Tag, Eigen::VectorXd>& state_absmax,
                                       const dependent_t<Tag, Eigen::VectorXd>& c_absmax,
                                       StateSmoothParams p = {}) {
    const char* site = "state_smoothing_scales (S4)";
    require(std::isfinite(p.lo) && std::isfinite(p.hi) && p.lo > 0.0 && p.lo <= p.hi, site,
            ": clamp must satisfy 0 < lo <= hi, got [", p.lo, ", ", p.hi, "]");
    detail::smooth_require_stat(state_absmax, state_absmax.size(), site, "max|state|");
    detail::smooth_require_stat(c_absmax, state_absmax.size(), site, "max|C|");
    Eigen::VectorXd s(state_absmax.size());
    constexpr double kTiny = 1e-30; // 0/0 → 1; 0 in C alone → hi; 0 in the state alone → lo
    for (Eigen::Index i = 0; i < s.size(); ++i)
        s[i] = std::clamp(std::sqrt(std::max(state_absmax[i], kTiny) / std::max(c_absmax[i], kTiny)), p.lo, p.hi);
    return s;
}
template <class Tag = void>
SmoothResult smooth_state(const dependent_t<Tag, MambaLayerWeights>& w,
                          const dependent_t<Tag, Eigen::VectorXd>& state_absmax,
                          const dependent_t<Tag, Eigen::VectorXd>& c_absmax, StateSmoothParams p = {}) {
    validate(w);
    require(state_absmax.size() == static_cast<Eigen::Index>(w.d_state()), "smooth_state (S4): max|state| has ",
            state_absmax.size(), " entries, expected d_state = ", w.d_state());
    const Eigen::VectorXd s = state_smoothing_scales(state_absmax, c_absmax, p);
    return {apply_state_smoothing(w, s), s};
}

// ---- S5: x_proj dt rows → dt_proj --------------------------------------------------------------
// dt = x·W_x,dtᵀ − dt_shift; W_x,dt ← diag(1/s)·W_x,dt and dt_shift ← dt_shift/s give dt/s, and
// W_dt ← W_dt·diag(s) restores (dt/s)·(W_dt·diag(s))ᵀ = dt·W_dtᵀ.
template <class Tag = void>
MambaLayerWeights apply_dt_smoothing(const dependent_t<Tag, MambaLayerWeights>& w,
                                     const dependent_t<Tag, Eigen::VectorXd>& s) {
    validate(w);
    const Eigen::Index r = static_cast<Eigen::Index>(w.dt_rank());
    detail::smooth_require_scale(s, r, "apply_dt_smoothing");
    MambaLayerWeights out = w;
    out.x_proj.topRows(r) = (w.x_proj.topRows(r).template cast<double>().array().colwise() / s.array()).template cast<float>();
    out.dt_shift = (w.dt_shift.template cast<double>().array() / s.array()).template cast<float>().matrix();
    out.dt_proj = (w.dt_proj.template cast<double>().array().rowwise() * s.transpose().array()).template cast<float>();
    return out;
}
// s from max|dt_r| of the dt input as the layer computes it (after any shift) and dt_proj columns.
template <class Tag = void>
SmoothResult smooth_dt(const dependent_t<Tag, MambaLayerWeights>& w,
                       const dependent_t<Tag, Eigen::VectorXd>& dt_input_absmax, SmoothParams p = {}) {
    validate(w);
    const Eigen::VectorXd s = smoothing_scales(dt_input_absmax, detail::smooth_column_absmax(w.dt_proj), p, "smooth_dt (S5)");
    return {apply_dt_smoothing(w, s), s};
}

// ---- S7: in_proj x rows → conv1d ---------------------------------------------------------------
// The conv is depthwise: conv_t[e] = Σ_k w[e,k]·x_{t−K+1+k}[e] + b[e]. With W_in,x ← diag(1/s)·W_in,x
// the conv input is x/s, and w[e,:] ← s_e·w[e,:] gives the same conv output (bias unchanged).
template <class Tag = void>
MambaLayerWeights apply_conv_smoothing(const dependent_t<Tag, MambaLayerWeights>& w,
                                       const dependent_t<Tag, Eigen::VectorXd>& s) {
    validate(w);
    const Eigen::Index e = static_cast<Eigen::Index>(w.d_inner());
    detail::smooth_require_scale(s, e, "apply_conv_smoothing");
    MambaLayerWeights out = w;
    out.in_proj.topRows(e) = (w.in_proj.topRows(e).template cast<double>().array().colwise() / s.array()).template cast<float>();
    out.conv_w = (w.conv_w.template cast<double>().array().colwise() * s.array()).template cast<float>();
    return out;
}
// s from max|x_e| of the conv input and max_k |w[e,k]| (each channel has its own conv filter).
template <class Tag = void>
SmoothResult smooth_conv(const dependent_t<Tag, MambaLayerWeights>& w,
                         const dependent_t<Tag, Eigen::VectorXd>& conv_input_absmax,
                         SmoothParams p = {}) {
    validate(w);
    const Eigen::VectorXd wmax = w.conv_w.template cast<double>().cwiseAbs().rowwise().maxCoeff();
    const Eigen::VectorXd s = smoothing_scales(conv_input_absmax, wmax, p, "smooth_conv (S7)");
    return {apply_conv_smoothing(w, s), s};
}

// ---- dt mid-range shift ------------------------------------------------------------------------
// The dt input is asymmetric (its range is far from centred on 0); subtracting its mid-range μ
// centres it for a symmetric quantizer, and dt_proj's bias absorbs the shift:
//   (dt − μ)·W_dtᵀ + (b_dt + W_dt·μ) = dt·W_dtᵀ + b_dt.
// dt_shift ← dt_shift + μ (the run time subtracts it from the dt input, fused with quantization).
template <class Tag = void>
MambaLayerWeights apply_dt_shift(const dependent_t<Tag, MambaLayerWeights>& w,
                                 const dependent_t<Tag, Eigen::VectorXd>& mu) {
    validate(w);
    const Eigen::Index r = static_cast<Eigen::Index>(w.dt_rank());
    require(mu.size() == r, "apply_dt_shift: shift has ", mu.size(), " entries, expected dt_rank = ", r);
    require(mu.allFinite(), "apply_dt_shift: shift has non-finite entries");
    MambaLayerWeights out = w;
    out.dt_shift = (w.dt_shift.template cast<double>() + mu).template cast<float>();
    out.dt_bias = (w.dt_bias.template cast<double>() + w.dt_proj.template cast<double>() * mu).template cast<float>();
    return out;
}
// μ = (min + max)/2 of the dt input as the layer computes it.
template <class Tag = void>
SmoothResult shift_dt(const dependent_t<Tag, MambaLayerWeights>& w,
                      const dependent_t<Tag, Eigen::VectorXd>& dt_input_min,
                      const dependent_t<Tag, Eigen::VectorXd>& dt_input_max) {
    validate(w);
    const Eigen::Index r = static_cast<Eigen::Index>(w.dt_rank());
    require(dt_input_min.size() == r && dt_input_max.size() == r, "shift_dt: dt statistics have ", dt_input_min.size(),
            " / ", dt_input_max.size(), " channels, expected dt_rank = ", r);
    for (Eigen::Index i = 0; i < r; ++i)
        require(std::isfinite(dt_input_min[i]) && std::isfinite(dt_input_max[i]) && dt_input_min[i] <= dt_input_max[i],
                "shift_dt: channel ", i, " has min ", dt_input_min[i], ", max ", dt_input_max[i]);
    const Eigen::VectorXd mu = (dt_input_min + dt_input_max) * 0.5;
    return {apply_dt_shift(w, mu), mu};
}

MQ_NAMESPACE_END
