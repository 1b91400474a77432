// MambaConfig: the shape of a Mamba-1 model, read from config.json in either published layout.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <filesystem>
#include <string>
#include <string_view>

MQ_NAMESPACE_BEGIN

enum class ConfigLayout : std::uint8_t {
    mamba_ssm,    // state-spaces/mamba: d_model, n_layer, vocab_size, ssm_cfg{...}, pad_vocab_size_multiple
    transformers, // transformers MambaConfig: hidden_size, num_hidden_layers, state_size, ...
};

struct MambaConfig {
    std::size_t d_model = 0;      // D
    std::size_t n_layer = 0;
    std::size_t vocab_size = 0;   // as written in the config
    std::size_t padded_vocab = 0; // rows of the embedding: vocab_size rounded up to pad_vocab_size_multiple
    std::size_t pad_vocab_size_multiple = 1;
    std::size_t d_state = 16;     // N
    std::size_t d_conv = 4;       // K
    std::size_t d_inner = 0;      // E = expand·D
    std::size_t dt_rank = 0;      // R = ceil(D/16) for "auto"
    float norm_eps = 1e-5f;
    bool tie_embeddings = true;
    bool conv_bias = true;
    ConfigLayout layout = ConfigLayout::mamba_ssm;

    friend bool operator==(const MambaConfig&, const MambaConfig&) = default;
};

namespace detail {

// A config field read with its type checked; `where` names the file (and "ssm_cfg." prefix).
template <class Tag = void>
std::size_t config_size(const dependent_t<Tag, nlohmann::json>& obj, const char* key, std::string_view where,
                        bool required,
                        std::size_t fallback) {
    if (!obj.contains(key) || obj[key].is_null()) {
        require(!required, where, ": required field \"", key, "\" is missing");
        return fallback;
    }
    std::size_t v = 0;
    const auto& j = obj[key];
    // Some exporters write whole numbers as floats (2.0); accept those, nothing fractional.
    if (j.is_number_float()) {
        const double d = j.template get<double>();
        require(d >= 1 && d <= 1e12 && std::floor(d) == d, where, ": field \"", key, "\" must be a positive integer, got ", j.dump());
        return static_cast<std::size_t>(d);
    }
    require(json_to_size(j, v) && v >= 1 && v <= (std::size_t{1} << 40), where, ": field \"", key,
            "\" must be a positive integer, got ", j.dump());
    return v;
}
template <class Tag = void>
bool config_bool(const dependent_t<Tag, nlohmann::json>& obj, const char* key, std::string_view where, bool fallback) {
    if (!obj.contains(key) || obj[key].is_null()) return fallback;
    require(obj[key].is_boolean(), where, ": field \"", key, "\" must be true or false, got ", obj[key].dump());
    return obj[key].template get<bool>();
}
template <class Tag = void>
float config_float(const dependent_t<Tag, nlohmann::json>& obj, const char* key, std::string_view where,
                   float fallback) {
    if (!obj.contains(key) || obj[key].is_null()) return fallback;
    require(obj[key].is_number(), where, ": field \"", key, "\" must be a number, got ", obj[key].dump());
    const double v = obj[key].template get<double>();
    require(v > 0 && v < 1, where, ": field \"", key, "\" must be in (0, 1), got ", obj[key].dump());
    return static_cast<float>(v);
}
// dt_rank / time_step_rank: "auto" (= ceil(D/16)) or a positive integer.
template <class Tag = void>
std::size_t config_rank(const dependent_t<Tag, nlohmann::json>& obj, const char* key, std::string_view where,
                        std::size_t d_model) {
    const std::size_t automatic = (d_model + 15) / 16;
    if (!obj.contains(key) || obj[key].is_null()) return automatic;
    if (obj[key].is_string()) {
        require(obj[key].template get_ref<const std::string&>() == "auto", where, ": field \"", key,
                "\" must be \"auto\" or a positive integer, got ", obj[key].dump());
        return automatic;
    }
    return config_size(obj, key, where, true, 0);
}
// a·b for sizes read from a file: an overflow (expand × hidden_size = 2⁴⁰ · 2⁴⁰) is an error.
template <class = void>
std::size_t config_product(std::size_t a, std::size_t b, const char* what, std::string_view where) {
    std::size_t p = 0;
    require(!__builtin_mul_overflow(a, b, &p), where, ": ", what, " = ", a, " × ", b, " overflows");
    return p;
}
// Every tensor the config implies must have an element count (and byte count) that a size_t and
// an Eigen index hold; the checkpoint's real sizes bound them further at load (io/mamba_tensors.hpp).
template <class Tag = void>
void config_check_sizes(const dependent_t<Tag, MambaConfig>& c, std::string_view where) {
    constexpr std::size_t kMaxElements = static_cast<std::size_t>(PTRDIFF_MAX) / sizeof(double);
    const std::size_t dbc = c.dt_rank + 2 * c.d_state; // each ≤ 2⁴⁰: no overflow
    const std::pair<const char*, std::size_t> dims[][2] = {
        {{"vocab (padded)", c.padded_vocab}, {"d_model", c.d_model}},
        {{"2·d_inner", 2 * c.d_inner}, {"d_model", c.d_model}},
        {{"dt_rank + 2·d_state", dbc}, {"d_inner", c.d_inner}},
        {{"d_inner", c.d_inner}, {"dt_rank", c.dt_rank}},
        {{"d_inner", c.d_inner}, {"d_state", c.d_state}},
        {{"d_inner", c.d_inner}, {"d_conv", c.d_conv}},
    };
    for (const auto& d : dims) {
        std::size_t n = 0;
        require(!__builtin_mul_overflow(d[0].second, d[1].second, &n) && n <= kMaxElements, where, ": a tensor of ",
                d[0].first, " ", d[0].second, " × ", d[1].first, " ", d[1].second, " elements exceeds the limit of ",
                kMaxElements, " elements");
    }
    require(c.d_inner <= kMaxElements / 2, where, ": d_inner ", c.d_inner, " is too large");
}
template <class = void>
void config_agree(bool has_both, std::size_t a, std::size_t b, const char* key_a, const char* key_b,
                  std::string_view where) {
    require(!has_both || a == b, where, ": contradictory fields \"", key_a, "\" = ", a, " and \"", key_b, "\" = ", b);
}

} // namespace detail

// Parses config.json text. Layout: mamba_ssm if it has d_model/n_layer, transformers if it has
// hidden_size/num_hidden_layers (both present only when they agree). Defaults follow the reference
// implementations (mamba_ssm MambaConfig / Mamba(); transformers MambaConfig): d_state 16, d_conv 4,
// expand 2, dt_rank "auto", eps 1e-5, tied embeddings, conv bias. The sizes (model width, layers,
// vocabulary) have no sensible default and must be present. Features outside Mamba-1 with RMSNorm
// (Mamba-2 layers, attention layers, MLPs, biased projections) are refused by name.
// (The config functions are templates never spelled by callers, `template <class = void>`: their
// JSON work is instantiated only where they are called, and with MQ_COMPILED not even there:
// the companion library compiles them once; core/config.hpp.)
template <class Tag = void>
MambaConfig parse_mamba_config(std::string_view text, std::string_view source = "config.json") {
    using detail::config_bool;
    using detail::config_size;
    const dependent_t<Tag, nlohmann::json> j = detail::parse_untrusted_json(text, source, 1);
    require(j.is_object(), source, ": config must be a JSON object, got ", j.type_name());
    const bool ssm_keys = j.contains("d_model") || j.contains("n_layer");
    const bool hf_keys = j.contains("hidden_size") || j.contains("num_hidden_layers");
    require(ssm_keys || hf_keys, source, ": required field \"d_model\" (mamba_ssm) or \"hidden_size\" (transformers) is missing");
    MambaConfig c;
    std::size_t expand = 2;
    if (ssm_keys) {
        c.layout = ConfigLayout::mamba_ssm;
        c.d_model = config_size(j, "d_model", source, true, 0);
        c.n_layer = config_size(j, "n_layer", source, true, 0);
        c.vocab_size = config_size(j, "vocab_size", source, true, 0);
        c.pad_vocab_size_multiple = config_size(j, "pad_vocab_size_multiple", source, false, 8);
        c.tie_embeddings = config_bool(j, "tie_embeddings", source, true);
        require(config_bool(j, "rms_norm", source, true), source, ": field \"rms_norm\" = false (LayerNorm) is not supported");
        require(!j.contains("d_intermediate") || j["d_intermediate"] == 0, source, ": field \"d_intermediate\" = ",
                j.value("d_intermediate", nlohmann::json()).dump(), " (an MLP after each mixer) is not supported");
        require(!j.contains("attn_layer_idx") || (j["attn_layer_idx"].is_array() && j["attn_layer_idx"].empty()),
                source, ": field \"attn_layer_idx\" (hybrid attention layers) is not supported");
        dependent_t<Tag, nlohmann::json> ssm = dependent_t<Tag, nlohmann::json>::object();
        if (j.contains("ssm_cfg") && !j["ssm_cfg"].is_null()) {
            require(j["ssm_cfg"].is_object(), source, ": field \"ssm_cfg\" must be an object, got ", j["ssm_cfg"].dump());
            ssm = j["ssm_cfg"];
        }
        const std::string where = detail::concat(source, ": ssm_cfg");
        if (ssm.contains("layer"))
            require(ssm["layer"] == "Mamba1", where, ": field \"layer\" = ", ssm["layer"].dump(), " is not supported (Mamba1 only)");
        c.d_state = config_size(ssm, "d_state", where, false, 16);
        c.d_conv = config_size(ssm, "d_conv", where, false, 4);
        expand = config_size(ssm, "expand", where, false, 2);
        c.d_inner = detail::config_product(expand, c.d_model, "d_inner (expand × d_model)", where);
        c.dt_rank = detail::config_rank(ssm, "dt_rank", where, c.d_model);
        c.conv_bias = config_bool(ssm, "conv_bias", where, true);
        require(!config_bool(ssm, "bias", where, false), where, ": field \"bias\" = true (biased in/out projections) is not supported");
        if (hf_keys) { // a hybrid file: accept only if both spellings agree
            detail::config_agree(j.contains("hidden_size"), c.d_model, config_size(j, "hidden_size", source, false, 0),
                                 "d_model", "hidden_size", source);
            detail::config_agree(j.contains("num_hidden_layers"), c.n_layer,
                                 config_size(j, "num_hidden_layers", source, false, 0), "n_layer", "num_hidden_layers", source);
        }
    } else {
        c.layout = ConfigLayout::transformers;
        c.d_model = config_size(j, "hidden_size", source, true, 0);
        c.n_layer = config_size(j, "num_hidden_layers", source, true, 0);
        c.vocab_size = config_size(j, "vocab_size", source, true, 0);
        // transformers stores the vocabulary already padded; honour the mamba_ssm key if present.
        c.pad_vocab_size_multiple = config_size(j, "pad_vocab_size_multiple", source, false, 1);
        c.d_state = config_size(j, "state_size", source, false, 16);
        c.d_conv = config_size(j, "conv_kernel", source, false, 4);
        expand = config_size(j, "expand", source, false, 2);
        const bool has_inner = j.contains("intermediate_size") && !j["intermediate_size"].is_null();
        const std::size_t expanded =
            has_inner && !j.contains("expand")
                ? 0 // intermediate_size alone decides; expand's default never enters
                : detail::config_product(expand, c.d_model, "intermediate_size (expand × hidden_size)", source);
        c.d_inner = config_size(j, "intermediate_size", source, false, expanded);
        detail::config_agree(has_inner && j.contains("expand"), c.d_inner, expanded, "intermediate_size",
                             "expand·hidden_size", source);
        c.dt_rank = detail::config_rank(j, "time_step_rank", source, c.d_model);
        c.norm_eps = detail::config_float(j, "layer_norm_epsilon", source, 1e-5f);
        c.tie_embeddings = config_bool(j, "tie_word_embeddings", source, true);
        c.conv_bias = config_bool(j, "use_conv_bias", source, true);
        require(!config_bool(j, "use_bias", source, false), source, ": field \"use_bias\" = true (biased in/out projections) is not supported");
        if (j.contains("hidden_act"))
            require(j["hidden_act"] == "silu", source, ": field \"hidden_act\" = ", j["hidden_act"].dump(), " is not supported (silu only)");
    }
    const std::size_t m = c.pad_vocab_size_multiple; // both ≤ 2⁴⁰: the rounding cannot overflow
    c.padded_vocab = (c.vocab_size + m - 1) / m * m;
    detail::config_check_sizes(c, source);
    return c;
}
MQ_EXTERN_TEMPLATE(MambaConfig parse_mamba_config<>(std::string_view, std::string_view))

template <class Tag = void>
MambaConfig load_mamba_config(const dependent_t<Tag, std::filesystem::path>& path) {
    const auto file = std::filesystem::is_directory(path) ? path / "config.json" : path;
    return parse_mamba_config(detail::read_text_file(file), file.string());
}
MQ_EXTERN_TEMPLATE(MambaConfig load_mamba_config<>(const std::filesystem::path&))

// config.json text in the requested layout (the vocabulary written padded in the transformers one).
template <class Tag = void>
std::string mamba_config_json(const dependent_t<Tag, MambaConfig>& c, ConfigLayout layout) {
    dependent_t<Tag, nlohmann::json> j;
    const bool whole_expand = c.d_model > 0 && c.d_inner % c.d_model == 0;
    if (layout == ConfigLayout::mamba_ssm) {
        require(whole_expand, "mamba_config_json: d_inner ", c.d_inner, " is not a multiple of d_model ", c.d_model,
                ", which the mamba_ssm layout (expand) cannot express");
        j = {{"d_model", c.d_model}, {"n_layer", c.n_layer}, {"vocab_size", c.vocab_size},
             {"ssm_cfg", {{"d_state", c.d_state}, {"d_conv", c.d_conv}, {"expand", c.d_inner / c.d_model},
                          {"dt_rank", c.dt_rank}, {"conv_bias", c.conv_bias}}},
             {"rms_norm", true}, {"residual_in_fp32", true}, {"fused_add_norm", true},
             {"pad_vocab_size_multiple", c.pad_vocab_size_multiple}, {"tie_embeddings", c.tie_embeddings}};
    } else {
        j = {{"model_type", "mamba"}, {"hidden_size", c.d_model}, {"num_hidden_layers", c.n_layer},
             {"vocab_size", c.padded_vocab}, {"state_size", c.d_state}, {"conv_kernel", c.d_conv},
             {"expand", c.d_inner / c.d_model}, {"intermediate_size", c.d_inner}, {"time_step_rank", c.dt_rank},
             {"layer_norm_epsilon", c.norm_eps}, {"tie_word_embeddings", c.tie_embeddings},
             {"use_conv_bias", c.conv_bias}, {"use_bias", false}, {"hidden_act", "silu"}};
        if (!whole_expand) j.erase("expand");
    }
    return j.dump(2);
}
MQ_EXTERN_TEMPLATE(std::string mamba_config_json<>(const MambaConfig&, ConfigLayout))

MQ_NAMESPACE_END
