// QuantizationConfig: the run-time description of a quantized Mamba model (per-site quantizers, online rotations, static activation params).
#pragma once
//
// Interface note (for the recipes, calibration and evaluation; issue 13)
// -----------------------------------------------------------------------
//  • QuantizationConfig — what a recipe produces and what a quantized checkpoint stores in
//    config.json as "quantization_config" (to_json / quantization_config_from_json below):
//      method ("fp", "rtn", "smoothquant", "quarot", "quamba", "mambaquant", "custom"),
//      bits label ("fp32", "w8a8", "w4a8", "w8a16", "w4a16"),
//      sites[Site] = { weight: optional QuantSpec (nullopt: float), act: ActQuant (float, dynamic
//        per token, or static per tensor; bits 8; symmetric or not) } for the eight sites
//        in_proj, conv1d, x_proj, dt_proj, scan_output (state·C), out_proj, embedding, lm_head,
//      out_rotation:   optional RotationSpec of the online rotation at out_proj's input (R2,
//                      hadamard / randomized_hadamard with its seed; size E),
//      state_rotation: optional RotationSpec of the R4 rotation of the state (N×N),
//      layers[i].act[Site]: the static per-tensor activation params (scale, zero) of each site of
//        layer i (sites whose act mode is static_per_tensor), and head_act for the LM head input,
//      weight_params[i][Site]: optional fixed weight grids (GPTQ's scales; the packed codes and
//        scales of a saved model keep them, so a loaded config has none).
//    The static params are NOT in the JSON (they live in the safetensors next to the weights,
//    io/quantized_checkpoint.hpp); to_json writes the choices only.
//  • ActivationTap (nn/activation_tap.hpp) — observer passed to BasicMambaModel::prefill and to
//    QuantizedMambaModel::prefill; called with the input of every site of every layer and the layer
//    output. Null pointer: no cost.
//  • build_quantized_model(weights, config, model_config, FakeQuant::no|yes)
//    (nn/quantized_model.hpp) — the integer model, or its fake-quant twin, from transformed
//    MambaWeights (with the run-time extras) and this config.
//
// Run-time set of quantizers (each a compiled Linear instantiation, see nn/site_linear.hpp):
//   weights W8 per channel symmetric; W4 per channel and per group 128, symmetric and asymmetric;
//   activations A8 per token (dynamic) and A8 per tensor (static, calibrated), symmetric and
//   asymmetric; or float. conv1d: int8 per-channel weights (or float), its input float or A8
//   static per tensor (the integer conv, kernels/quantized_conv1d.hpp). Anything else is refused
//   by validate().

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/quant_spec.hpp>
#include <mambaquant/transform/rotation.hpp>

#include <nlohmann/json.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

MQ_NAMESPACE_BEGIN

// The quantization sites of a Mamba-1 model (METHOD.md §2).
enum class Site : std::uint8_t { in_proj, conv1d, x_proj, dt_proj, scan_output, out_proj, embedding, lm_head };
inline constexpr std::size_t kSiteCount = 8;
inline constexpr std::array<Site, kSiteCount> kAllSites{Site::in_proj,     Site::conv1d,   Site::x_proj,
                                                        Site::dt_proj,     Site::scan_output, Site::out_proj,
                                                        Site::embedding,   Site::lm_head};

template <class = void>
const char* site_name(Site s) noexcept {
    switch (s) {
    case Site::in_proj: return "in_proj";
    case Site::conv1d: return "conv1d";
    case Site::x_proj: return "x_proj";
    case Site::dt_proj: return "dt_proj";
    case Site::scan_output: return "scan_output";
    case Site::out_proj: return "out_proj";
    case Site::embedding: return "embedding";
    case Site::lm_head: return "lm_head";
    }
    return "unknown";
}
template <class = void>
std::optional<Site> site_from_name(std::string_view name) noexcept {
    for (Site s : kAllSites)
        if (name == site_name(s)) return s;
    return std::nullopt;
}
constexpr std::size_t site_index(Site s) noexcept { return static_cast<std::size_t>(s); }

// How a site's input activation is quantized.
enum class ActMode : std::uint8_t {
    none,              // float
    dynamic_per_token, // (scale, zero) from each token's range at run time
    static_per_tensor, // one (scale, zero) per layer and site, from calibration
};
template <class = void>
const char* act_mode_name(ActMode m) noexcept {
    switch (m) {
    case ActMode::none: return "float";
    case ActMode::dynamic_per_token: return "dynamic_per_token";
    case ActMode::static_per_tensor: return "static_per_tensor";
    }
    return "unknown";
}

struct ActQuant {
    ActMode mode = ActMode::none;
    int bits = 8;
    bool symmetric = false;
    bool quantized() const noexcept { return mode != ActMode::none; }
    friend bool operator==(const ActQuant&, const ActQuant&) = default;
};

// One site: weight quantizer (nullopt: float weights) and activation quantizer.
struct SiteQuant {
    std::optional<QuantSpec> weight;
    ActQuant act;
    bool is_float() const noexcept { return !weight && !act.quantized(); }
};

// Static activation params of one layer, per site (nullopt where the site is not static).
struct LayerActParams {
    std::array<std::optional<QuantParams>, kSiteCount> act;
    std::optional<QuantParams>& operator[](Site s) noexcept { return act[site_index(s)]; }
    const std::optional<QuantParams>& operator[](Site s) const noexcept { return act[site_index(s)]; }
};

// The weight grid of one layer's sites, where a quantizer chose the codes itself (GPTQ): per site,
// (scale, zero) per output row (per channel) or per row and group (row-major, r·groups + g), as
// GptqResult::params. Empty: the builder quantizes the weight by min/max.
struct LayerWeightParams {
    std::array<std::vector<QuantParams>, kSiteCount> weight;
    std::vector<QuantParams>& operator[](Site s) noexcept { return weight[site_index(s)]; }
    const std::vector<QuantParams>& operator[](Site s) const noexcept { return weight[site_index(s)]; }
};

inline constexpr std::array<std::string_view, 7> kQuantMethods{"fp",     "rtn",        "smoothquant", "quarot",
                                                                "quamba", "mambaquant", "custom"};
inline constexpr std::array<std::string_view, 5> kQuantBitLabels{"fp32", "w8a8", "w4a8", "w8a16", "w4a16"};

template <class = void>
struct BasicQuantizationConfig {
    std::string method = "fp";
    std::string bits = "fp32";
    std::array<SiteQuant, kSiteCount> sites{};
    std::optional<RotationSpec> out_rotation;   // R2, online at out_proj's input (size E)
    std::optional<RotationSpec> state_rotation; // R4, N×N
    std::vector<LayerActParams> layers;         // static activation params per layer
    std::optional<QuantParams> head_act;        // static params of the LM head input
    std::vector<LayerWeightParams> weight_params; // empty, or per layer: fixed weight grids (GPTQ)

    // Layer i's fixed grid for site s (empty: min/max at build time).
    std::span<const QuantParams> weight_grid(std::size_t layer, Site s) const noexcept {
        if (layer >= weight_params.size()) return {};
        return weight_params[layer][s];
    }

    SiteQuant& operator[](Site s) noexcept { return sites[site_index(s)]; }
    const SiteQuant& operator[](Site s) const noexcept { return sites[site_index(s)]; }

    bool is_float() const noexcept {
        for (const auto& s : sites)
            if (!s.is_float()) return false;
        return !out_rotation && !state_rotation;
    }

    // Everything a quantizer could run with (the run-time set above); with n_layer > 0 also that
    // every static site has finite positive params in every layer. Throws mq::error naming the field.
    void validate(std::size_t n_layer = 0) const {
        bool known = false;
        for (auto m : kQuantMethods) known = known || m == method;
        require(known, "quantization_config.method: unknown method \"", method,
                "\" (expected fp, rtn, smoothquant, quarot, quamba, mambaquant or custom)");
        known = false;
        for (auto b : kQuantBitLabels) known = known || b == bits;
        require(known, "quantization_config.bits: unknown bits \"", bits,
                "\" (expected fp32, w8a8, w4a8, w8a16 or w4a16)");
        for (Site s : kAllSites) validate_site(s);
        if (out_rotation)
            require(out_rotation->kind == RotationKind::hadamard || out_rotation->kind == RotationKind::randomized_hadamard,
                    "quantization_config.out_rotation: kind ", rotation_kind_name(out_rotation->kind),
                    " has no online form (expected hadamard or randomized_hadamard)");
        if (state_rotation)
            require((*this)[Site::scan_output].act.quantized(),
                    "quantization_config.state_rotation: the R4 rotation needs a quantized scan_output");
        if (n_layer == 0) return;
        bool any_static = false;
        for (Site s : kAllSites)
            any_static = any_static || (s != Site::lm_head && (*this)[s].act.mode == ActMode::static_per_tensor);
        require((layers.empty() && !any_static) || layers.size() == n_layer, "quantization_config: static params for ",
                layers.size(), " layers, the model has ", n_layer);
        for (std::size_t i = 0; i < layers.size(); ++i)
            for (Site s : kAllSites) {
                const bool want = (*this)[s].act.mode == ActMode::static_per_tensor && s != Site::lm_head &&
                                  s != Site::embedding;
                const auto& p = layers[i][s];
                require(!want || p.has_value(), "quantization_config: layer ", i, " site ", site_name(s),
                        ": static activation params missing");
                if (p) require_valid_static(*p, (*this)[s].act, detail::concat("layer ", i, " site ", site_name(s)));
            }
        require(weight_params.empty() || weight_params.size() == n_layer, "quantization_config: weight grids for ",
                weight_params.size(), " layers, the model has ", n_layer);
        for (std::size_t i = 0; i < weight_params.size(); ++i)
            for (Site s : kAllSites) {
                if (weight_params[i][s].empty()) continue;
                const bool projection = s == Site::in_proj || s == Site::x_proj || s == Site::dt_proj || s == Site::out_proj;
                require(projection && (*this)[s].weight.has_value(), "quantization_config: layer ", i, " site ", site_name(s),
                        ": a fixed weight grid is for the quantized weights of in_proj, x_proj, dt_proj or out_proj");
            }
        if ((*this)[Site::lm_head].act.mode == ActMode::static_per_tensor) {
            require(head_act.has_value(), "quantization_config: lm_head: static activation params missing");
            require_valid_static(*head_act, (*this)[Site::lm_head].act, "lm_head");
        }
    }

    static void require_valid_static(const QuantParams& p, const ActQuant& a, const std::string& where) {
        require(std::isfinite(p.scale) && p.scale > 0.0f, "quantization_config: ", where,
                ": static activation scale must be finite and > 0, got ", p.scale);
        if (a.symmetric)
            require(p.zero == 0, "quantization_config: ", where, ": symmetric activation zero must be 0, got ", p.zero);
        else
            require(p.zero >= 0 && p.zero <= 255, "quantization_config: ", where,
                    ": asymmetric activation zero must be in [0, 255], got ", p.zero);
    }

private:
    void validate_site(Site s) const {
        const SiteQuant& q = (*this)[s];
        const std::string where = detail::concat("quantization_config.sites.", site_name(s));
        if (q.act.quantized())
            require(q.act.bits == 8, where, ".act: only 8-bit activations run on the integer kernels, got ", q.act.bits);
        if (s == Site::scan_output) {
            require(!q.weight, where, ": the scan output (state·C) has no weight");
            require(q.act.mode != ActMode::static_per_tensor, where,
                    ": state and C are quantized dynamically per token (kernels/quantized_scan.hpp)");
            return;
        }
        if (s == Site::embedding) {
            require(!q.act.quantized(), where, ": the embedding input is a token id; it has no activation quantizer");
            if (q.weight) require_runtime_weight(*q.weight, where);
            return;
        }
        if (s == Site::conv1d) {
            // METHOD.md §2: weights per channel, input per tensor. A per-token input scale cannot
            // work: the K taps mix K tokens, whose codes would not add up under one scale.
            require(q.act.mode != ActMode::dynamic_per_token, where,
                    ".act: the conv1d input is quantized static per tensor or stays float (its K taps mix tokens, so a "
                    "per-token scale leaves no integer sum)");
            require(!q.act.quantized() || q.weight.has_value(), where,
                    ".act: a quantized conv1d input needs int8 conv1d weights (integer products)");
            if (q.weight)
                require(q.weight->bits == 8 && q.weight->granularity == GranularityKind::per_channel && q.weight->symmetric,
                        where, ".weight: conv1d weights are int8 per channel symmetric (METHOD.md §2) or float");
            return;
        }
        // The four projections and the LM head: weights and activations quantized together or not at all.
        require(q.weight.has_value() == q.act.quantized(), where,
                ": weights and activations are quantized together or both float (weight ",
                q.weight ? "quantized" : "float", ", act ", act_mode_name(q.act.mode), ")");
        if (q.weight) require_runtime_weight(*q.weight, where);
    }
    static void require_runtime_weight(const QuantSpec& w, const std::string& where) {
        const bool w8 = w.bits == 8 && w.granularity == GranularityKind::per_channel && w.symmetric;
        const bool w4 = w.bits == 4 && (w.granularity == GranularityKind::per_channel ||
                                        (w.granularity == GranularityKind::per_group && w.group == 128));
        require(w8 || w4, where,
                ".weight: the run-time set is W8 per channel symmetric, W4 per channel or per group 128 (sym/asym); got ",
                w.bits, " bits ", granularity_kind_label(w), w.symmetric ? " symmetric" : " asymmetric");
    }

public:
    static std::string granularity_kind_label(const QuantSpec& w) {
        switch (w.granularity) {
        case GranularityKind::per_tensor: return "per_tensor";
        case GranularityKind::per_channel: return "per_channel";
        case GranularityKind::per_token: return "per_token";
        case GranularityKind::per_group: return detail::concat("per_group_", w.group);
        }
        return "unknown";
    }
};
using QuantizationConfig = BasicQuantizationConfig<>; // a template: compiled only where used (core/config.hpp)

// Common layouts, for tests and recipes: every linear (incl. the LM head) W8 or W4 (per channel,
// or per group `group`; dt_proj per channel) with A8 activations of `act` mode; conv1d int8 weights; scan output A8
// per token; embedding rows quantized as the head (a tied table is then stored once). Static
// params are left to the caller.
template <class Tag = void>
dependent_t<Tag, QuantizationConfig> uniform_quantization_config(int weight_bits, std::size_t group, ActMode act,
                                                                 bool act_symmetric = false, std::string method = "rtn") {
    dependent_t<Tag, QuantizationConfig> c;
    c.method = std::move(method);
    c.bits = detail::concat("w", weight_bits, "a8");
    QuantSpec w;
    w.bits = weight_bits;
    w.symmetric = true;
    w.granularity = group ? GranularityKind::per_group : GranularityKind::per_channel;
    w.group = group;
    const ActQuant a{act, 8, act_symmetric};
    for (Site s : {Site::in_proj, Site::x_proj, Site::dt_proj, Site::out_proj, Site::lm_head}) c[s] = {w, a};
    // dt_proj's input is dt_rank = ceil(D/16) wide (48 in mamba-130m), rarely a multiple of a group:
    // per channel there, said in the config (not a silent fallback).
    c[Site::dt_proj].weight->granularity = GranularityKind::per_channel;
    c[Site::dt_proj].weight->group = 0;
    QuantSpec w8c{8, GranularityKind::per_channel, true, 0};
    c[Site::conv1d] = {w8c, ActQuant{}};
    c[Site::scan_output] = {std::nullopt, ActQuant{ActMode::dynamic_per_token, 8, false}};
    c[Site::embedding] = {w, ActQuant{}}; // as the head: a tied table is stored once
    return c;
}

// ---- JSON (config.json's "quantization_config"): choices only, static params are tensors ----

namespace detail {
template <class Tag = void>
nlohmann::json rotation_json(const dependent_t<Tag, RotationSpec>& r) {
    nlohmann::json j{{"kind", rotation_kind_name(r.kind)}, {"size", r.n}};
    if (r.kind == RotationKind::randomized_hadamard || r.kind == RotationKind::random_orthogonal) j["seed"] = r.seed;
    if (r.kind == RotationKind::block_hadamard) j["block"] = r.block;
    return j;
}
// A non-negative JSON integer (parsed text gives unsigned; a json built in code may hold signed).
template <class Tag = void>
bool json_unsigned(const dependent_t<Tag, nlohmann::json>& j) {
    return j.is_number_unsigned() || (j.is_number_integer() && j.template get<std::int64_t>() >= 0);
}
template <class Tag = void>
RotationSpec rotation_from_json(const dependent_t<Tag, nlohmann::json>& j, const dependent_t<Tag, std::string>& where) {
    require(j.is_object(), where, ": expected an object");
    require(j.contains("kind") && j["kind"].is_string(), where, ".kind: missing or not a string");
    require(j.contains("size") && json_unsigned(j["size"]), where, ".size: missing or not an unsigned integer");
    RotationSpec r;
    const std::string kind = j["kind"].template get<std::string>();
    bool ok = false;
    for (RotationKind k : {RotationKind::hadamard, RotationKind::randomized_hadamard, RotationKind::block_hadamard,
                           RotationKind::random_orthogonal})
        if (kind == rotation_kind_name(k)) {
            r.kind = k;
            ok = true;
        }
    require(ok, where, ".kind: unknown rotation kind \"", kind, "\"");
    r.n = j["size"].template get<std::size_t>();
    require(r.n > 0, where, ".size must be > 0");
    if (j.contains("seed")) {
        require(json_unsigned(j["seed"]), where, ".seed: not an unsigned integer");
        r.seed = j["seed"].template get<std::uint64_t>();
    }
    if (j.contains("block")) {
        require(json_unsigned(j["block"]), where, ".block: not an unsigned integer");
        r.block = j["block"].template get<std::size_t>();
    }
    return r;
}
template <class Tag = void>
const nlohmann::json& json_member(const dependent_t<Tag, nlohmann::json>& j, const char* key,
                                  const dependent_t<Tag, std::string>& where) {
    require(j.is_object() && j.contains(key), where, ": missing \"", key, "\"");
    return j[key];
}
} // namespace detail

// (to_json and quantization_config_from_json are templates never spelled by callers, so their
// JSON work is instantiated only where they are called; with MQ_COMPILED once, in the companion
// library — core/config.hpp.)
template <class Tag = void>
nlohmann::json to_json(const dependent_t<Tag, QuantizationConfig>& c) {
    dependent_t<Tag, nlohmann::json> j;
    j["quant_method"] = "mambaquant";
    j["method"] = c.method;
    j["bits"] = c.bits;
    dependent_t<Tag, nlohmann::json> sites = dependent_t<Tag, nlohmann::json>::object();
    for (Site s : kAllSites) {
        const SiteQuant& q = c[s];
        dependent_t<Tag, nlohmann::json> sj;
        if (q.weight) {
            sj["weight"] = {{"bits", q.weight->bits},
                            {"granularity", dependent_t<Tag, QuantizationConfig>::granularity_kind_label(*q.weight)},
                            {"symmetric", q.weight->symmetric}};
        } else {
            sj["weight"] = "float";
        }
        if (q.act.quantized())
            sj["act"] = {{"mode", act_mode_name(q.act.mode)}, {"bits", q.act.bits}, {"symmetric", q.act.symmetric}};
        else
            sj["act"] = "float";
        sites[site_name(s)] = std::move(sj);
    }
    j["sites"] = std::move(sites);
    j["out_rotation"] = c.out_rotation ? detail::rotation_json(*c.out_rotation) : nlohmann::json(nullptr);
    j["state_rotation"] = c.state_rotation ? detail::rotation_json(*c.state_rotation) : nlohmann::json(nullptr);
    return j;
}
MQ_EXTERN_TEMPLATE(nlohmann::json to_json<>(const QuantizationConfig&))

// Parses and validates (without per-layer params, which come from the tensors).
template <class Tag = void>
QuantizationConfig quantization_config_from_json(const dependent_t<Tag, nlohmann::json>& j,
                                                 std::string_view source = "quantization_config") {
    const std::string where(source);
    require(j.is_object(), where, ": expected an object");
    QuantizationConfig c;
    const auto& m = detail::json_member(j, "method", where);
    require(m.is_string(), where, ".method: not a string");
    c.method = m.template get<std::string>();
    const auto& b = detail::json_member(j, "bits", where);
    require(b.is_string(), where, ".bits: not a string");
    c.bits = b.template get<std::string>();
    const auto& sites = detail::json_member(j, "sites", where);
    require(sites.is_object(), where, ".sites: expected an object");
    for (auto it = sites.begin(); it != sites.end(); ++it)
        require(site_from_name(it.key()).has_value(), where, ".sites: unknown site \"", it.key(), "\"");
    for (Site s : kAllSites) {
        const std::string sw = detail::concat(where, ".sites.", site_name(s));
        const auto& sj = detail::json_member(sites, site_name(s), where + ".sites");
        SiteQuant& q = c[s];
        const auto& w = detail::json_member(sj, "weight", sw);
        if (!(w.is_string() && w.template get<std::string>() == "float")) {
            require(w.is_object(), sw, ".weight: expected \"float\" or an object");
            QuantSpec spec;
            const auto& wb = detail::json_member(w, "bits", sw + ".weight");
            require(wb.is_number_integer(), sw, ".weight.bits: not an integer");
            spec.bits = wb.template get<int>();
            require(spec.bits == 4 || spec.bits == 8, sw, ".weight.bits: unsupported bit width ", spec.bits,
                    " (expected 4 or 8)");
            const auto& g = detail::json_member(w, "granularity", sw + ".weight");
            require(g.is_string(), sw, ".weight.granularity: not a string");
            const std::string gs = g.template get<std::string>();
            if (gs == "per_channel") {
                spec.granularity = GranularityKind::per_channel;
            } else if (gs.rfind("per_group_", 0) == 0) {
                spec.granularity = GranularityKind::per_group;
                const std::string num = gs.substr(10);
                require(!num.empty() && num.size() <= 4 && num.find_first_not_of("0123456789") == std::string::npos, sw,
                        ".weight.granularity: bad group size in \"", gs, "\"");
                spec.group = static_cast<std::size_t>(std::stoul(num));
            } else {
                fail(sw, ".weight.granularity: unknown granularity \"", gs, "\" (expected per_channel or per_group_<G>)");
            }
            const auto& sy = detail::json_member(w, "symmetric", sw + ".weight");
            require(sy.is_boolean(), sw, ".weight.symmetric: not a boolean");
            spec.symmetric = sy.template get<bool>();
            q.weight = spec;
        }
        const auto& a = detail::json_member(sj, "act", sw);
        if (!(a.is_string() && a.template get<std::string>() == "float")) {
            require(a.is_object(), sw, ".act: expected \"float\" or an object");
            const auto& md = detail::json_member(a, "mode", sw + ".act");
            require(md.is_string(), sw, ".act.mode: not a string");
            const std::string ms = md.template get<std::string>();
            if (ms == "dynamic_per_token") q.act.mode = ActMode::dynamic_per_token;
            else if (ms == "static_per_tensor") q.act.mode = ActMode::static_per_tensor;
            else fail(sw, ".act.mode: unknown mode \"", ms, "\" (expected dynamic_per_token or static_per_tensor)");
            const auto& ab = detail::json_member(a, "bits", sw + ".act");
            require(ab.is_number_integer(), sw, ".act.bits: not an integer");
            q.act.bits = ab.template get<int>();
            require(q.act.bits == 8, sw, ".act.bits: unsupported bit width ", q.act.bits, " (expected 8)");
            const auto& as = detail::json_member(a, "symmetric", sw + ".act");
            require(as.is_boolean(), sw, ".act.symmetric: not a boolean");
            q.act.symmetric = as.template get<bool>();
        }
    }
    if (j.contains("out_rotation") && !j["out_rotation"].is_null())
        c.out_rotation = detail::rotation_from_json(j["out_rotation"], where + ".out_rotation");
    if (j.contains("state_rotation") && !j["state_rotation"].is_null())
        c.state_rotation = detail::rotation_from_json(j["state_rotation"], where + ".state_rotation");
    c.validate();
    return c;
}
MQ_EXTERN_TEMPLATE(QuantizationConfig quantization_config_from_json<>(const nlohmann::json&, std::string_view))

MQ_NAMESPACE_END
