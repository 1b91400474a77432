// VimWeights: a Vim model's float weights as the recipes see them (one Mamba layer per scan direction), and the way back.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/config.hpp>
#include <mambaquant/io/vim_config.hpp>
#include <mambaquant/nn/vim_block.hpp>
#include <mambaquant/nn/vim_model.hpp>
#include <mambaquant/transform/mamba_weights.hpp>

#include <Eigen/Core>

#include <cstddef>
#include <filesystem>
#include <string>

MQ_NAMESPACE_BEGIN

// Why a Vim model is held as MambaWeights: every MambaQuant transform is a rewrite of one Mamba-1
// layer, and a bimamba v2 layer is two Mamba-1 mixers — a forward and a backward branch, each with
// its own conv1d, x_proj, dt_proj, A, D — that share the norm, in_proj and out_proj. So Vim layer l
// is held as two "direction layers" of a MambaWeights:
//   directions.layers[2l]     = {norm, in_proj, out_proj} + the forward branch's tensors,
//   directions.layers[2l + 1] = {norm, in_proj, out_proj} + the backward branch's tensors,
// and the recipes run on it unchanged. A step that rewrites a shared tensor (S2: in_proj's z rows
// and out_proj's columns; S7: in_proj's x rows; SmoothQuant: γ and in_proj; R1; R2; GPTQ) reads
// statistics the two direction layers share (VimBlock reports the shared sites' inputs — hn, the
// combined out_proj input a = (y_f + y_b)/2 — to both tap layers 2l and 2l+1, and x to both convs),
// so it rewrites both copies identically; validate() checks that they stayed bit-identical, which
// is what "the recipe applies to Vim unchanged" must mean. Steps on a direction's own tensors (dt
// shift, S4, S5, R4, R5) use that direction's statistics (its scan in its own token order).
// The embedding table holds every row vector that lives in the residual stream's basis (R1 turns
// each such row v into v·Q1), then the head's rows:
//   rows [0, P)            W_peᵀ (P = C·p·p: a token is patch·W_peᵀ + b_pe)
//   row  P                 b_pe
//   row  P + 1             the class token
//   rows [P+2, P+2+L)      the position embedding (L = seq_len)
//   rows [P+2+L, +classes) W_head, tied: the head is table·diag(γ_f) (as a tied LM head is), so R1
//                          folds norm_f into it and rotates it, W_head ← W_head·diag(γ_f)·Q1.
// head_bias stays outside the table (a bias of the logits, not a residual-space vector).
struct VimWeights {
    MambaWeights directions;
    Eigen::VectorXf head_bias; // [classes]
};

template <class Tag = void>
std::size_t vim_table_rows(const dependent_t<Tag, VimConfig>& c) { return c.patch_dim() + 2 + c.seq_len() + c.num_classes; }

// The Mamba config of the direction layers (what RecipeContext::model and the calibration need).
template <class Tag = void>
MambaConfig vim_direction_config(const dependent_t<Tag, VimConfig>& c) {
    MambaConfig m;
    m.d_model = c.d_model;
    m.n_layer = 2 * c.n_layer;
    m.vocab_size = m.padded_vocab = vim_table_rows(c);
    m.d_state = c.d_state;
    m.d_conv = c.d_conv;
    m.d_inner = c.d_inner;
    m.dt_rank = c.dt_rank;
    m.norm_eps = c.norm_eps;
    m.tie_embeddings = true;
    m.conv_bias = c.conv_bias;
    return m;
}

// One direction of a Vim layer as a Mamba layer (neutral extras; no conv bias → zeros).
template <class Tag = void>
MambaLayerWeights vim_direction_layer(const dependent_t<Tag, VimLayerWeights>& w, std::size_t dir) {
    require(dir < 2, "vim_direction_layer: direction ", dir, " (expected 0 forward or 1 backward)");
    const VimDirectionWeights& d = w.dir[dir];
    dependent_t<Tag, MambaLayerWeights> l;
    l.norm = w.norm;
    l.in_proj = w.in_proj;
    l.out_proj = w.out_proj;
    l.conv_w = d.conv_w;
    l.conv_b = d.conv_b.size() ? d.conv_b : Eigen::VectorXf::Zero(d.conv_w.rows());
    l.x_proj = d.x_proj;
    l.dt_proj = d.dt_proj;
    l.dt_bias = d.dt_bias;
    l.A_log = d.A_log;
    l.D = d.D;
    l.reset_extras();
    return l;
}

template <class Tag = void>
VimWeights vim_weights(const dependent_t<Tag, VimModelWeights>& m, const dependent_t<Tag, VimConfig>& c) {
    require(m.layers.size() == c.n_layer, "vim_weights: ", m.layers.size(), " layers, the config says ", c.n_layer);
    dependent_t<Tag, VimWeights> w;
    const auto P = static_cast<Eigen::Index>(c.patch_dim()), L = static_cast<Eigen::Index>(c.seq_len()),
               Q = static_cast<Eigen::Index>(c.num_classes);
    dependent_t<Tag, MatrixXf>& t = w.directions.embedding;
    t.resize(static_cast<Eigen::Index>(vim_table_rows(c)), static_cast<Eigen::Index>(c.d_model));
    t.topRows(P) = m.embedding.patch_w.transpose();
    t.row(P) = m.embedding.patch_b;
    t.row(P + 1) = m.embedding.cls_token;
    t.middleRows(P + 2, L) = m.embedding.pos_embed;
    t.bottomRows(Q) = m.head_w;
    w.directions.tied = true;
    w.directions.norm_f = m.norm_f.transpose();
    for (const auto& l : m.layers)
        for (std::size_t d = 0; d < 2; ++d) w.directions.layers.push_back(vim_direction_layer(l, d));
    w.head_bias = m.head_b.transpose();
    return w;
}

// From a Vim checkpoint directory (config.json + model.safetensors).
template <class Tag = void>
VimWeights load_vim_weights(const dependent_t<Tag, std::filesystem::path>& dir) {
    const VimConfig c = load_vim_config(dir);
    return vim_weights(read_vim_weights(c, dependent_t<Tag, Checkpoint>::open(dir)), c);
}

// Shapes against the config, and the shared tensors of each direction pair bit-identical.
template <class Tag = void>
void validate(const dependent_t<Tag, VimWeights>& w, const dependent_t<Tag, VimConfig>& c) {
    const MambaWeights& m = w.directions;
    validate(m);
    require(m.layers.size() == 2 * c.n_layer, "VimWeights: ", m.layers.size(), " direction layers, the config's ",
            c.n_layer, " Vim layers need ", 2 * c.n_layer);
    require(static_cast<std::size_t>(m.embedding.rows()) == vim_table_rows(c) &&
                static_cast<std::size_t>(m.embedding.cols()) == c.d_model,
            "VimWeights: embedding table is [", m.embedding.rows(), " x ", m.embedding.cols(), "], the config needs [",
            vim_table_rows(c), " x ", c.d_model, "] (W_peᵀ, b_pe, class token, position rows, head rows)");
    require(static_cast<std::size_t>(w.head_bias.size()) == c.num_classes, "VimWeights: head_bias has ",
            w.head_bias.size(), " entries, the config has ", c.num_classes, " classes");
    for (std::size_t l = 0; l < c.n_layer; ++l) {
        const MambaLayerWeights &f = m.layers[2 * l], &b = m.layers[2 * l + 1];
        require(f.d_inner() == c.d_inner && f.d_state() == c.d_state && f.dt_rank() == c.dt_rank && f.d_conv() == c.d_conv,
                "VimWeights: layer ", l, " shape differs from the config");
        auto same = [&](const auto& x, const auto& y, const char* name) {
            require(x.rows() == y.rows() && x.cols() == y.cols() && (x.size() == 0 || (x.array() == y.array()).all()),
                    "VimWeights: layer ", l, ": the shared ", name, " differs between the forward and backward direction ",
                    "layers (", 2 * l, ", ", 2 * l + 1, "): a step rewrote a shared tensor for one direction only");
        };
        same(f.norm, b.norm, "norm");
        same(f.in_proj, b.in_proj, "in_proj");
        same(f.out_proj, b.out_proj, "out_proj");
        same(f.gate_scale, b.gate_scale, "gate_scale (S-SiLU acts on the shared z)");
        same(f.out_rotation, b.out_rotation, "out_rotation");
    }
}

// The parts back: the tensors in front of the layers, and the head's rows (γ_f not folded: it is
// norm_f, as for the model).
template <class Tag = void>
VimEmbedding vim_embedding(const dependent_t<Tag, VimWeights>& w, const dependent_t<Tag, VimConfig>& c) {
    const dependent_t<Tag, MatrixXf>& t = w.directions.embedding;
    const auto P = static_cast<Eigen::Index>(c.patch_dim()), L = static_cast<Eigen::Index>(c.seq_len());
    return {t.topRows(P).transpose(), t.row(P), t.row(P + 1), t.middleRows(P + 2, L)};
}
template <class Tag = void>
MatrixXf vim_head(const dependent_t<Tag, VimWeights>& w, const dependent_t<Tag, VimConfig>& c) {
    return w.directions.head().bottomRows(static_cast<Eigen::Index>(c.num_classes));
}

MQ_NAMESPACE_END
