#include <mambaquant/io/vim_config.hpp>

#include <doctest/doctest.h>

#include <string>

using doctest::Contains;

TEST_CASE("VimConfig: the digits model's config and the reference's defaults") {
    const auto c = mq::parse_vim_config(R"({"model_type": "vim", "d_model": 192, "n_layer": 4, "d_state": 16,
        "d_conv": 4, "expand": 2, "d_inner": 384, "dt_rank": 12, "image_size": [8, 8], "channels": 1, "patch_size": 2,
        "num_patches": 16, "cls_token_position": 8, "num_classes": 10, "norm_eps": 1e-05, "conv_bias": true,
        "bimamba_type": "v2", "if_divide_out": true, "pixel_scale": 0.0625})");
    CHECK(c.d_model == 192);
    CHECK(c.d_inner == 384);
    CHECK(c.num_patches() == 16);
    CHECK(c.seq_len() == 17);
    CHECK(c.patch_dim() == 4);
    CHECK(c.image_size() == 64);
    CHECK(c.cls_token_position == 8);
    CHECK(c.divide_out);
    CHECK(c.pixel_scale == 0.0625f);
    // Vim-T's shape with every default: 224/16 = 14 → 196 patches, class token in the middle (98).
    const auto t = mq::parse_vim_config(R"({"d_model": 192, "n_layer": 24, "image_size": 224, "channels": 3,
        "patch_size": 16, "num_classes": 1000})");
    CHECK(t.num_patches() == 196);
    CHECK(t.cls_token_position == 98);
    CHECK(t.d_inner == 384);
    CHECK(t.dt_rank == 12);
    CHECK(t.d_state == 16);
    CHECK(t.divide_out);
    CHECK(t.pixel_scale == 1.0f);
    CHECK(mq::parse_vim_config(R"({"d_model": 8, "n_layer": 1, "image_size": [4, 6], "channels": 1, "patch_size": 2,
        "num_classes": 2, "if_divide_out": false, "cls_token_position": 0})") ==
          [] {
              mq::VimConfig v;
              v.d_model = 8, v.n_layer = 1, v.d_inner = 16, v.dt_rank = 1, v.image_height = 4, v.image_width = 6;
              v.channels = 1, v.patch_size = 2, v.num_classes = 2, v.divide_out = false, v.cls_token_position = 0;
              return v;
          }());
}

TEST_CASE("VimConfig: bad configs are clear errors") {
    const std::string base = R"("d_model": 8, "n_layer": 1, "channels": 1, "num_classes": 2)";
    auto parse = [&](const std::string& extra) { return mq::parse_vim_config("{" + base + ", " + extra + "}", "vim.json"); };
    CHECK_THROWS_WITH_AS(parse(R"("image_size": 8, "patch_size": 2, "cls_token_position": 17)"),
                         Contains("cls_token_position 17 is outside the sequence of 17 tokens"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"("image_size": 8, "patch_size": 2, "cls_token_position": -1)"),
                         Contains("cls_token_position\" must be a non-negative integer"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"("image_size": 8, "patch_size": 3)"), Contains("not a multiple of patch_size 3"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"("image_size": [8], "patch_size": 2)"), Contains("[height, width]"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"("patch_size": 2)"), Contains("\"image_size\" is missing"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"("image_size": 8, "patch_size": 2, "num_patches": 9)"),
                         Contains("contradictory fields \"num_patches\" = 9"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"("image_size": 8, "patch_size": 2, "bimamba_type": "v1")"),
                         Contains("bimamba_type \"v1\" is not supported"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"("image_size": 8, "patch_size": 2, "model_type": "mamba")"),
                         Contains("model_type must be \"vim\""), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"("image_size": 8, "patch_size": 2, "pixel_scale": 0)"),
                         Contains("pixel_scale\" must be a positive number"), mq::error);
    CHECK_THROWS_WITH_AS(mq::parse_vim_config(R"({"n_layer": 1, "image_size": 8, "channels": 1, "patch_size": 2,
        "num_classes": 2})"), Contains("\"d_model\" is missing"), mq::error);
}
