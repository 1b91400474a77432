// Plain float weights of a Mamba-1 layer and model: what smoothing and rotation fusion rewrite.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstddef>
#include <vector>

MQ_NAMESPACE_BEGIN

// One Mamba-1 layer (METHOD.md §1), Hugging Face tensors in their natural shapes, plus the few
// run-time extras that the MambaQuant transforms introduce (all of them neutral by default, so a
// freshly loaded layer computes exactly the reference Mamba block):
//   gate_scale   [E]      S-SiLU scale s: the gate is z·σ(s⊙z) (ones: plain SiLU)          (S2)
//   dt_shift     [R]      subtracted from the dt input before dt_proj (zeros: none)   (dt shift, S5, R5)
//   state_scale  [N]      the state is carried as state/s; only a carried state in the original
//                         units needs it (first-step absorption, METHOD.md §4)      (S4)
//   out_rotation [E,E]    online rotation of the out_proj input a ← a·H (empty: none)  (R2)
//   state_rotation [N,N]  online rotation state ← state·H before y = state·C (empty: none) (R4)
// This is deliberately a minimal struct for the transforms; the model loader (io/, nn/) has its
// own types, and the coordinator will unify the two (a loader-to-this conversion is a copy).
struct MambaLayerWeights {
    MatrixXf in_proj;         // [2E, D]: rows 0..E-1 give x, rows E..2E-1 give z
    MatrixXf conv_w;          // [E, K]: depthwise causal conv (HF shape [E, 1, K])
    Eigen::VectorXf conv_b;   // [E]
    MatrixXf x_proj;          // [R+2N, E]: rows dt [R], B [N], C [N]
    MatrixXf dt_proj;         // [E, R]
    Eigen::VectorXf dt_bias;  // [E]
    MatrixXf A_log;           // [E, N]: A = -exp(A_log)
    Eigen::VectorXf D;        // [E]
    MatrixXf out_proj;        // [D, E]
    Eigen::VectorXf norm;     // [D]: RMSNorm γ

    Eigen::VectorXf gate_scale;   // [E]
    Eigen::VectorXf dt_shift;     // [R]
    Eigen::VectorXf state_scale;  // [N]
    MatrixXf out_rotation;        // [E, E] or empty
    MatrixXf state_rotation;      // [N, N] or empty

    std::size_t d_model() const noexcept { return static_cast<std::size_t>(out_proj.rows()); }
    std::size_t d_inner() const noexcept { return static_cast<std::size_t>(dt_proj.rows()); }
    std::size_t dt_rank() const noexcept { return static_cast<std::size_t>(dt_proj.cols()); }
    std::size_t d_state() const noexcept { return static_cast<std::size_t>(A_log.cols()); }
    std::size_t d_conv() const noexcept { return static_cast<std::size_t>(conv_w.cols()); }

    // Sets the run-time extras to their neutral values for the current shapes. (A template whose
    // Eigen expressions depend on Tag: built only where called, not in every includer.)
    template <class Tag = void>
    void reset_extras() {
        using Vector = dependent_t<Tag, Eigen::VectorXf>;
        gate_scale = Vector::Ones(dt_proj.rows());
        dt_shift = Vector::Zero(dt_proj.cols());
        state_scale = Vector::Ones(A_log.cols());
        out_rotation.resize(0, 0);
        state_rotation.resize(0, 0);
    }
};

namespace detail {
template <class = void>
void require_layer_dims(const char* tensor, Eigen::Index rows, Eigen::Index cols, Eigen::Index want_rows,
                         Eigen::Index want_cols) {
    require(rows == want_rows && cols == want_cols, "MambaLayerWeights: ", tensor, ": expected shape [",
            want_rows, " x ", want_cols, "], got [", rows, " x ", cols, "]");
}
template <class = void>
void require_layer_len(const char* tensor, Eigen::Index size, Eigen::Index want) {
    require(size == want, "MambaLayerWeights: ", tensor, ": expected length ", want, ", got ", size);
}
} // namespace detail

// Checks that every tensor agrees with the dimensions that out_proj, dt_proj, A_log and conv_w
// define (D, E, R, N, K); throws mq::error naming the first tensor that does not.
template <class Tag = void>
void validate(const dependent_t<Tag, MambaLayerWeights>& w) {
    const Eigen::Index d = w.out_proj.rows(), e = w.dt_proj.rows(), r = w.dt_proj.cols(), n = w.A_log.cols(),
                       k = w.conv_w.cols();
    require(d > 0 && e > 0 && r > 0 && n > 0 && k > 0, "MambaLayerWeights: empty dimension (D=", d, ", E=", e,
            ", R=", r, ", N=", n, ", K=", k, ")");
    detail::require_layer_dims("in_proj", w.in_proj.rows(), w.in_proj.cols(), 2 * e, d);
    detail::require_layer_dims("conv_w", w.conv_w.rows(), w.conv_w.cols(), e, k);
    detail::require_layer_len("conv_b", w.conv_b.size(), e);
    detail::require_layer_dims("x_proj", w.x_proj.rows(), w.x_proj.cols(), r + 2 * n, e);
    detail::require_layer_dims("dt_proj", w.dt_proj.rows(), w.dt_proj.cols(), e, r);
    detail::require_layer_len("dt_bias", w.dt_bias.size(), e);
    detail::require_layer_dims("A_log", w.A_log.rows(), w.A_log.cols(), e, n);
    detail::require_layer_len("D", w.D.size(), e);
    detail::require_layer_dims("out_proj", w.out_proj.rows(), w.out_proj.cols(), d, e);
    detail::require_layer_len("norm", w.norm.size(), d);
    detail::require_layer_len("gate_scale", w.gate_scale.size(), e);
    detail::require_layer_len("dt_shift", w.dt_shift.size(), r);
    detail::require_layer_len("state_scale", w.state_scale.size(), n);
    if (w.out_rotation.size() != 0) detail::require_layer_dims("out_rotation", w.out_rotation.rows(), w.out_rotation.cols(), e, e);
    if (w.state_rotation.size() != 0)
        detail::require_layer_dims("state_rotation", w.state_rotation.rows(), w.state_rotation.cols(), n, n);
}

// A whole Mamba-1 model: embedding [V, D], layers, final norm [D], LM head [V, D]. When
// `tied` the head is the embedding (lm_head is then ignored and may be empty); a residual
// rotation unties them (R1 rotates the embedding's columns and folds norm_f into the head).
struct MambaWeights {
    MatrixXf embedding;
    std::vector<MambaLayerWeights> layers;
    Eigen::VectorXf norm_f;
    MatrixXf lm_head;
    bool tied = true;

    const MatrixXf& head() const noexcept { return tied ? embedding : lm_head; }
};

template <class Tag = void>
void validate(const dependent_t<Tag, MambaWeights>& m) {
    const Eigen::Index d = m.embedding.cols();
    require(m.embedding.rows() > 0 && d > 0, "MambaWeights: embedding is empty");
    require(m.norm_f.size() == d, "MambaWeights: norm_f: expected length ", d, ", got ", m.norm_f.size());
    if (!m.tied)
        require(m.lm_head.rows() == m.embedding.rows() && m.lm_head.cols() == d, "MambaWeights: lm_head: expected shape [",
                m.embedding.rows(), " x ", d, "], got [", m.lm_head.rows(), " x ", m.lm_head.cols(), "]");
    for (std::size_t i = 0; i < m.layers.size(); ++i) {
        validate(m.layers[i]);
        require(static_cast<Eigen::Index>(m.layers[i].d_model()) == d, "MambaWeights: layer ", i, ": d_model ",
                m.layers[i].d_model(), " differs from the embedding width ", d);
    }
}

MQ_NAMESPACE_END
