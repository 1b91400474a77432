// Folding rotations (R1, R2, R4, R5) and the RMSNorm γ into the float weights of a Mamba layer.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/transform/mamba_weights.hpp>
#include <mambaquant/transform/orthogonal.hpp>

#include <Eigen/Core>

#include <cstddef>

// Computational invariance: for orthogonal Q, x·Wᵀ = (x·Q)(W·Q)ᵀ. Offline rotations are folded
// into the weights on both sides of a tensor; online ones are applied to the activation at run
// time (recorded in the layer) with their transpose folded into the consuming weight. Every
// product is formed in double from the float weights and rounded to float once per call.
// Each function returns new weights and leaves its input unchanged; Q is checked orthogonal.
// Order (METHOD.md §4): dt shift → S2, S4, S5, S7 (smoothing.hpp) → R1, R2, R4, R5.

MQ_NAMESPACE_BEGIN

namespace detail {
// W·Q (Q acting on the input side of a weight [out, in]).
template <class Tag = void>
MatrixXf fusion_fold_right(const dependent_t<Tag, MatrixXf>& w,
                           const dependent_t<Tag, MatrixXd>& q) { return (w.template cast<double>() * q).template cast<float>(); }
// Qᵀ·W (Q acting on the output side).
template <class Tag = void>
MatrixXf fusion_fold_left(const dependent_t<Tag, MatrixXd>& q, const dependent_t<Tag, Eigen::Ref<const MatrixXf>>& w) {
    return (q.transpose() * w.template cast<double>()).template cast<float>();
}
template <class Tag = void>
bool fusion_all_ones(const dependent_t<Tag, Eigen::VectorXf>& v) { return (v.array() == 1.0f).all(); }
} // namespace detail

// hn = h·rsqrt(mean(h²) + ε)·γ, so hn·W_inᵀ = (h·rsqrt(…))·(W_in·diag(γ))ᵀ:
//   W_in ← W_in·diag(γ),  γ ← 1.
// Needed before R1: the RMS of h is rotation-invariant (‖h·Q‖ = ‖h‖) but h·Q·diag(γ) is not h·diag(γ)·Q.
template <class Tag = void>
MambaLayerWeights fold_norm(const dependent_t<Tag, MambaLayerWeights>& w) {
    validate(w);
    MambaLayerWeights out = w;
    out.in_proj = (w.in_proj.template cast<double>().array().rowwise() * w.norm.template cast<double>().transpose().array()).template cast<float>();
    out.norm.setOnes();
    return out;
}

// R1 on one layer, residual stream h ← h·Q1 (offline; Q1 = K1·H, K1 from the in_proj input):
//   W_in ← W_in·Q1                  reads RMSNorm(h·Q1) = RMSNorm(h)·Q1 (γ folded)
//   W_out ← Q1ᵀ·W_out               writes y·W_outᵀ·Q1 into the rotated stream
// The norm must be folded first (γ = 1): throws otherwise.
template <class Tag = void>
MambaLayerWeights rotate_residual(const dependent_t<Tag, MambaLayerWeights>& w, const dependent_t<Tag, MatrixXd>& q1) {
    validate(w);
    const auto d = static_cast<Eigen::Index>(w.d_model());
    require_orthogonal(q1, d, "rotate_residual (R1): Q1");
    require(detail::fusion_all_ones(w.norm), "rotate_residual (R1): the layer's RMSNorm γ is not 1; fold it into in_proj "
                                      "first (fold_norm)");
    MambaLayerWeights out = w;
    out.in_proj = detail::fusion_fold_right(w.in_proj, q1);
    out.out_proj = detail::fusion_fold_left(q1, w.out_proj);
    return out;
}

// R1 on a whole model: every layer's γ folded and rotated, the embedding rotated (E ← E·Q1, so the
// stream starts rotated), and the final norm folded into a separately stored head that reads the
// rotated stream: W_head ← W_head·diag(γ_f)·Q1, γ_f ← 1. This unties embedding and head.
template <class Tag = void>
MambaWeights rotate_residual(const dependent_t<Tag, MambaWeights>& m, const dependent_t<Tag, MatrixXd>& q1) {
    validate(m);
    const auto d = m.embedding.cols();
    require_orthogonal(q1, d, "rotate_residual (R1): Q1");
    MambaWeights out;
    out.layers.reserve(m.layers.size());
    for (const auto& layer : m.layers) out.layers.push_back(rotate_residual(fold_norm(layer), q1));
    out.embedding = detail::fusion_fold_right(m.embedding, q1);
    const MatrixXd head_gamma = m.head().template cast<double>().array().rowwise() * m.norm_f.template cast<double>().transpose().array();
    out.lm_head = (head_gamma * q1).template cast<float>();
    out.norm_f = Eigen::VectorXf::Ones(d);
    out.tied = false;
    return out;
}

// R5, the low-rank dt path, offline (Q5 = K5·H_R per layer): dt ← dt·Q5.
//   W_x,dt ← Q5ᵀ·W_x,dt (x_proj rows 0..R−1),  dt_shift ← Q5ᵀ·dt_shift,  W_dt ← W_dt·Q5
// since (x·W_x,dtᵀ − μ)·Q5 = x·(Q5ᵀ·W_x,dt)ᵀ − μ·Q5 and dt·Q5·(W_dt·Q5)ᵀ = dt·W_dtᵀ.
template <class Tag = void>
MambaLayerWeights rotate_dt_path(const dependent_t<Tag, MambaLayerWeights>& w, const dependent_t<Tag, MatrixXd>& q5) {
    validate(w);
    const auto r = static_cast<Eigen::Index>(w.dt_rank());
    require_orthogonal(q5, r, "rotate_dt_path (R5): Q5");
    MambaLayerWeights out = w;
    out.x_proj.topRows(r) = detail::fusion_fold_left(q5, w.x_proj.topRows(r));
    out.dt_shift = (q5.transpose() * w.dt_shift.template cast<double>()).template cast<float>();
    out.dt_proj = detail::fusion_fold_right(w.dt_proj, q5);
    return out;
}

// R2, the out_proj input, online (plain H of size E): a ← a·H at run time (fused with its
// quantization), W_out ← W_out·H, since a·H·(W_out·H)ᵀ = a·W_outᵀ. A second rotation composes:
// the recorded online matrix becomes out_rotation·H.
template <class Tag = void>
MambaLayerWeights rotate_out_proj_input(const dependent_t<Tag, MambaLayerWeights>& w,
                                        const dependent_t<Tag, MatrixXd>& h) {
    validate(w);
    const auto e = static_cast<Eigen::Index>(w.d_inner());
    require_orthogonal(h, e, "rotate_out_proj_input (R2): H");
    MambaLayerWeights out = w;
    out.out_proj = detail::fusion_fold_right(w.out_proj, h);
    out.out_rotation = w.out_rotation.size() == 0 ? MatrixXf(h.template cast<float>())
                                                  : detail::fusion_fold_right(w.out_rotation, h);
    return out;
}

// R4, the state dimension of y_t[d] = Σ_n state_t[d,n]·C_t[n]: C arrives rotated and the state is
// rotated online before the (quantized) matmul:
//   W_C ← Hᵀ·W_C (x_proj rows R+N..R+2N−1), so C' = C·H;   state' = state·H at run time;
//   state'·C'ᵀ = state·H·Hᵀ·Cᵀ = state·Cᵀ.
// The recurrence itself keeps the unrotated state (B is untouched).
template <class Tag = void>
MambaLayerWeights rotate_state(const dependent_t<Tag, MambaLayerWeights>& w, const dependent_t<Tag, MatrixXd>& h) {
    validate(w);
    const auto r = static_cast<Eigen::Index>(w.dt_rank()), n = static_cast<Eigen::Index>(w.d_state());
    require_orthogonal(h, n, "rotate_state (R4): H");
    MambaLayerWeights out = w;
    out.x_proj.middleRows(r + n, n) = detail::fusion_fold_left(h, w.x_proj.middleRows(r + n, n));
    out.state_rotation = w.state_rotation.size() == 0 ? MatrixXf(h.template cast<float>())
                                                      : detail::fusion_fold_right(w.state_rotation, h);
    return out;
}

MQ_NAMESPACE_END
