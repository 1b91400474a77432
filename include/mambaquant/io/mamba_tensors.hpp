// The tensors a float Mamba-1 checkpoint holds for a config (Hugging Face names and shapes), and
// the check that a checkpoint holds exactly those, run before a loader allocates anything.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/config.hpp>
#include <mambaquant/io/safetensors.hpp>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

MQ_NAMESPACE_BEGIN

// Which optional tensors the checkpoint has, as a loader needs to know.
struct MambaTensorNames {
    std::string embedding; // "backbone.embeddings.weight" (transformers) or "backbone.embedding.weight" (mamba_ssm)
    bool lm_head = false;  // an untied "lm_head.weight" is present
};

// One tensor a float Mamba-1 checkpoint holds: its Hugging Face name and shape.
struct MambaTensorShape {
    std::string name;
    std::vector<std::size_t> shape;
};

// The tensors of layer i (the conv bias only when the config has one), in load order.
template <class Tag = void>
std::vector<MambaTensorShape> mamba_layer_tensors(const dependent_t<Tag, MambaConfig>& c, std::size_t i) {
    const std::size_t D = c.d_model, E = c.d_inner, N = c.d_state, R = c.dt_rank, K = c.d_conv;
    const std::string p = detail::concat("backbone.layers.", i, "."), mx = p + "mixer.";
    std::vector<MambaTensorShape> t = {{p + "norm.weight", {D}}, {mx + "in_proj.weight", {2 * E, D}}, {mx + "conv1d.weight", {E, 1, K}}};
    if (c.conv_bias) t.push_back({mx + "conv1d.bias", {E}});
    t.insert(t.end(), {{mx + "x_proj.weight", {R + 2 * N, E}}, {mx + "dt_proj.weight", {E, R}}, {mx + "dt_proj.bias", {E}},
                       {mx + "A_log", {E, N}}, {mx + "D", {E}}, {mx + "out_proj.weight", {D, E}}});
    return t;
}

// The config's sizes in one line, for messages.
template <class Tag = void>
std::string mamba_config_summary(const dependent_t<Tag, MambaConfig>& c) {
    return detail::concat("the config (d_model ", c.d_model, ", n_layer ", c.n_layer, ", vocab ", c.padded_vocab,
                          ", d_inner ", c.d_inner, ", d_state ", c.d_state, ", dt_rank ", c.dt_rank, ", d_conv ",
                          c.d_conv, c.conv_bias ? ", conv bias" : ", no conv bias", ")");
}

// Claims every tensor a float Mamba-1 model of config `c` reads (METHOD §1's names; shapes from the
// config), failing on the first one missing, misshapen or not float, then on the first tensor of the
// checkpoint left unread. Cost: a few map lookups per tensor, no allocation proportional to a
// dimension, so a config with 10⁹ layers or a 2⁴⁰ vocabulary fails here on the file's real sizes.
// Layers are claimed in order and a missing layer is named as such (n_layer larger than the file).
template <class Tag = void>
MambaTensorNames claim_mamba_tensors(const dependent_t<Tag, MambaConfig>& c, dependent_t<Tag, TensorClaims>& claims) {
    const std::size_t D = c.d_model, V = c.padded_vocab;
    const std::string& src = claims.source();
    MambaTensorNames names;
    const bool new_name = claims.contains("backbone.embeddings.weight");
    const bool old_name = claims.contains("backbone.embedding.weight");
    require(new_name || old_name, src, ": tensor \"backbone.embeddings.weight\" (or \"backbone.embedding.weight\") not found");
    require(!(new_name && old_name), src, ": both \"backbone.embeddings.weight\" and \"backbone.embedding.weight\" present");
    names.embedding = new_name ? "backbone.embeddings.weight" : "backbone.embedding.weight";
    claims.claim(names.embedding, {V, D});
    names.lm_head = claims.contains("lm_head.weight");
    if (names.lm_head) claims.claim("lm_head.weight", {V, D});
    else require(c.tie_embeddings, src, ": tensor \"lm_head.weight\" not found and the config does not tie embeddings");
    claims.claim("backbone.norm_f.weight", {D});
    for (std::size_t i = 0; i < c.n_layer; ++i) {
        const std::vector<MambaTensorShape> layer = mamba_layer_tensors(c, i);
        require(claims.contains(layer[0].name) || claims.contains(layer[1].name), src, ": the config says n_layer = ", c.n_layer,
                " but the checkpoint has no tensors of layer ", i, " (\"", layer[0].name, "\" not found)");
        for (const auto& t : layer) claims.claim(t.name, t.shape);
    }
    claims.require_all_claimed(mamba_config_summary(c));
    return names;
}

// The same check on a checkpoint (what BasicMambaModel::from_checkpoint runs first).
template <class Tag = void>
MambaTensorNames check_mamba_checkpoint(const dependent_t<Tag, MambaConfig>& c,
                                        const dependent_t<Tag, Checkpoint>& ck) {
    TensorClaims claims(ck);
    return claim_mamba_tensors(c, claims);
}

MQ_NAMESPACE_END
