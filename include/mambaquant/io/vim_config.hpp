// VimConfig: the shape of a Vision Mamba (Vim) classifier, read from its config.json.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/config.hpp>
#include <mambaquant/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

MQ_NAMESPACE_BEGIN

// The reference (hustvl/Vim, VisionMamba) with bimamba v2 layers and one class token:
// M = (H/p)·(W/p) patches, the class token inserted at `cls_token_position` (the reference's
// middle token: M/2), so a sequence has M + 1 tokens.
struct VimConfig {
    std::size_t d_model = 0;       // D
    std::size_t n_layer = 0;
    std::size_t d_state = 16;      // N
    std::size_t d_conv = 4;        // K
    std::size_t d_inner = 0;       // E = expand·D
    std::size_t dt_rank = 0;       // R = ceil(D/16) for "auto"
    std::size_t image_height = 0;
    std::size_t image_width = 0;
    std::size_t channels = 0;
    std::size_t patch_size = 0;    // p: square patches, stride p
    std::size_t num_classes = 0;
    std::size_t cls_token_position = 0;
    float norm_eps = 1e-5f;
    bool conv_bias = true;
    // (y_f + y_b)/2 before out_proj (the reference's if_devide_out = True, every released Vim
    // model) or y_f + y_b (False).
    bool divide_out = true;
    // What training multiplied the stored pixel values by to make the model's input (digits:
    // 0..16 → 1/16); images handed to the model are already scaled.
    float pixel_scale = 1.0f;

    std::size_t grid_height() const noexcept { return patch_size ? image_height / patch_size : 0; }
    std::size_t grid_width() const noexcept { return patch_size ? image_width / patch_size : 0; }
    std::size_t num_patches() const noexcept { return grid_height() * grid_width(); }
    std::size_t seq_len() const noexcept { return num_patches() + 1; }
    std::size_t patch_dim() const noexcept { return channels * patch_size * patch_size; }
    std::size_t image_size() const noexcept { return channels * image_height * image_width; }

    friend bool operator==(const VimConfig&, const VimConfig&) = default;
};

// Parses config.json text (the layout tools/train_vim.py writes). Required: d_model, n_layer,
// image_size ([H, W] or one number), channels, patch_size, num_classes. Defaults as the
// reference: d_state 16, d_conv 4, expand 2, dt_rank "auto", eps 1e-5, conv bias, divide_out,
// class token in the middle (M/2). Anything but bimamba v2 is refused by name.
template <class Tag = void>
VimConfig parse_vim_config(std::string_view text, std::string_view source = "config.json") {
    using detail::config_size;
    const dependent_t<Tag, nlohmann::json> j = detail::parse_untrusted_json(text, source, 1);
    require(j.is_object(), source, ": config must be a JSON object, got ", j.type_name());
    if (j.contains("model_type"))
        require(j["model_type"] == "vim", source, ": model_type must be \"vim\", got ", j["model_type"].dump());
    if (j.contains("bimamba_type"))
        require(j["bimamba_type"] == "v2", source, ": bimamba_type ", j["bimamba_type"].dump(),
                " is not supported (only \"v2\": per-direction conv1d, x_proj, dt_proj, A, D)");
    VimConfig c;
    c.d_model = config_size(j, "d_model", source, true, 0);
    c.n_layer = config_size(j, "n_layer", source, true, 0);
    c.d_state = config_size(j, "d_state", source, false, 16);
    c.d_conv = config_size(j, "d_conv", source, false, 4);
    const std::size_t expand = config_size(j, "expand", source, false, 2);
    c.d_inner = config_size(j, "d_inner", source, false, expand * c.d_model);
    detail::config_agree(j.contains("d_inner") && j.contains("expand"), c.d_inner, expand * c.d_model, "d_inner",
                         "expand * d_model", source);
    c.dt_rank = detail::config_rank(j, "dt_rank", source, c.d_model);
    require(j.contains("image_size"), source, ": required field \"image_size\" is missing");
    const auto& is = j["image_size"];
    if (is.is_array()) {
        require(is.size() == 2, source, ": field \"image_size\" must be [height, width], got ", is.dump());
        const dependent_t<Tag, nlohmann::json> hw = {{"height", is[0]}, {"width", is[1]}};
        c.image_height = config_size(hw, "height", detail::concat(source, ": image_size"), true, 0);
        c.image_width = config_size(hw, "width", detail::concat(source, ": image_size"), true, 0);
    } else {
        c.image_height = c.image_width = config_size(j, "image_size", source, true, 0);
    }
    c.channels = config_size(j, "channels", source, true, 0);
    c.patch_size = config_size(j, "patch_size", source, true, 0);
    c.num_classes = config_size(j, "num_classes", source, true, 0);
    c.norm_eps = detail::config_float(j, "norm_eps", source, 1e-5f);
    c.conv_bias = detail::config_bool(j, "conv_bias", source, true);
    c.divide_out = detail::config_bool(j, "if_divide_out", source, true);
    if (j.contains("pixel_scale")) {
        require(j["pixel_scale"].is_number() && j["pixel_scale"].template get<double>() > 0 &&
                    std::isfinite(j["pixel_scale"].template get<double>()),
                source, ": field \"pixel_scale\" must be a positive number, got ", j["pixel_scale"].dump());
        c.pixel_scale = j["pixel_scale"].template get<float>();
    }
    require(c.image_height % c.patch_size == 0 && c.image_width % c.patch_size == 0, source, ": image_size [",
            c.image_height, ", ", c.image_width, "] is not a multiple of patch_size ", c.patch_size);
    const std::size_t M = c.num_patches();
    if (j.contains("num_patches"))
        detail::config_agree(true, config_size(j, "num_patches", source, true, 0), M, "num_patches",
                             "(H/p)*(W/p)", source);
    c.cls_token_position = M / 2;
    if (j.contains("cls_token_position") && !j["cls_token_position"].is_null()) {
        std::size_t pos = 0;
        require(detail::json_to_size(j["cls_token_position"], pos), source,
                ": field \"cls_token_position\" must be a non-negative integer, got ", j["cls_token_position"].dump());
        c.cls_token_position = pos;
    }
    require(c.cls_token_position <= M, source, ": cls_token_position ", c.cls_token_position,
            " is outside the sequence of ", M + 1, " tokens (", M, " patches + the class token: 0..", M, ")");
    return c;
}

template <class Tag = void>
VimConfig load_vim_config(const dependent_t<Tag, std::filesystem::path>& path) {
    const auto file = std::filesystem::is_directory(path) ? path / "config.json" : path;
    return parse_vim_config(detail::read_text_file(file), file.string());
}

MQ_NAMESPACE_END
