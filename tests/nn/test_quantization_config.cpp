// QuantizationConfig: validation of the run-time set, JSON round trip, bad JSON named by field.
#include <mambaquant/nn/quantization_config.hpp>

#include <doctest/doctest.h>

using doctest::Contains;

TEST_CASE("QuantizationConfig: JSON round trip of every choice") {
    auto c = mq::uniform_quantization_config(4, 128, mq::ActMode::static_per_tensor, true, "quarot");
    c[mq::Site::x_proj] = {mq::QuantSpec{4, mq::GranularityKind::per_channel, false, 0},
                           mq::ActQuant{mq::ActMode::dynamic_per_token, 8, false}};
    c.out_rotation = mq::RotationSpec{mq::RotationKind::randomized_hadamard, 1536, 99, 0};
    c.state_rotation = mq::RotationSpec{mq::RotationKind::hadamard, 16, 0, 0};
    const auto back = mq::quantization_config_from_json(mq::to_json(c));
    CHECK(back.method == "quarot");
    CHECK(back.bits == "w4a8");
    for (mq::Site s : mq::kAllSites) {
        CAPTURE(mq::site_name(s));
        CHECK(back[s].act == c[s].act);
        REQUIRE(back[s].weight.has_value() == c[s].weight.has_value());
        if (c[s].weight) {
            CHECK(back[s].weight->bits == c[s].weight->bits);
            CHECK(back[s].weight->granularity == c[s].weight->granularity);
            CHECK(back[s].weight->symmetric == c[s].weight->symmetric);
            if (c[s].weight->granularity == mq::GranularityKind::per_group) CHECK(back[s].weight->group == c[s].weight->group);
        }
    }
    CHECK(back.out_rotation == c.out_rotation);
    CHECK(back.state_rotation == c.state_rotation);
    CHECK(mq::to_json(back) == mq::to_json(c));
    CHECK(mq::QuantizationConfig{}.is_float());
}

TEST_CASE("QuantizationConfig: what the run-time set cannot run is refused by field") {
    auto c = mq::uniform_quantization_config(8, 0, mq::ActMode::dynamic_per_token);
    c[mq::Site::in_proj].weight->bits = 6;
    CHECK_THROWS_WITH_AS(c.validate(), Contains("sites.in_proj.weight: the run-time set"), mq::error);
    c = mq::uniform_quantization_config(8, 0, mq::ActMode::dynamic_per_token);
    c[mq::Site::out_proj].weight.reset();
    CHECK_THROWS_WITH_AS(c.validate(), Contains("sites.out_proj: weights and activations are quantized together"), mq::error);
    c = mq::uniform_quantization_config(8, 0, mq::ActMode::dynamic_per_token);
    c[mq::Site::scan_output].act.mode = mq::ActMode::static_per_tensor;
    CHECK_THROWS_WITH_AS(c.validate(), Contains("sites.scan_output: state and C are quantized dynamically"), mq::error);
    c = mq::uniform_quantization_config(8, 0, mq::ActMode::static_per_tensor);
    CHECK_THROWS_WITH_AS(c.validate(3), Contains("static params for 0 layers, the model has 3"), mq::error);
    c.layers.resize(3);
    CHECK_THROWS_WITH_AS(c.validate(3), Contains("layer 0 site in_proj: static activation params missing"), mq::error);
    for (auto& l : c.layers)
        for (mq::Site s : {mq::Site::in_proj, mq::Site::x_proj, mq::Site::dt_proj, mq::Site::out_proj})
            l[s] = mq::QuantParams{0.5f, 2.0f, 3};
    c.head_act = mq::QuantParams{0.5f, 2.0f, 3};
    CHECK_NOTHROW(c.validate(3));
    c.layers[2][mq::Site::x_proj]->scale = -1.0f;
    CHECK_THROWS_WITH_AS(c.validate(3), Contains("layer 2 site x_proj: static activation scale must be finite and > 0"), mq::error);
    c = mq::QuantizationConfig{};
    c.state_rotation = mq::RotationSpec{mq::RotationKind::hadamard, 16, 0, 0};
    CHECK_THROWS_WITH_AS(c.validate(), Contains("state_rotation: the R4 rotation needs a quantized scan_output"), mq::error);
    // conv1d: input static per tensor (METHOD.md §2) on int8 weights, never per token.
    c = mq::uniform_quantization_config(8, 0, mq::ActMode::dynamic_per_token);
    c[mq::Site::conv1d].act = mq::ActQuant{mq::ActMode::dynamic_per_token, 8, false};
    CHECK_THROWS_WITH_AS(c.validate(), Contains("sites.conv1d.act: the conv1d input is quantized static per tensor"), mq::error);
    c[mq::Site::conv1d].act.mode = mq::ActMode::static_per_tensor;
    CHECK_NOTHROW(c.validate());
    c.layers.resize(2);
    CHECK_THROWS_WITH_AS(c.validate(2), Contains("layer 0 site conv1d: static activation params missing"), mq::error);
    c[mq::Site::conv1d].weight.reset();
    CHECK_THROWS_WITH_AS(c.validate(), Contains("sites.conv1d.act: a quantized conv1d input needs int8 conv1d weights"), mq::error);
    // Fixed weight grids (GPTQ's): one entry per layer, only on the projections' quantized weights.
    c = mq::uniform_quantization_config(4, 0, mq::ActMode::dynamic_per_token);
    c.weight_params.resize(1);
    CHECK_THROWS_WITH_AS(c.validate(2), Contains("weight grids for 1 layers, the model has 2"), mq::error);
    c.weight_params.resize(2);
    c.weight_params[1][mq::Site::x_proj].assign(3, mq::QuantParams{0.5f, 2.0f, 0});
    CHECK_NOTHROW(c.validate(2));
    CHECK(c.weight_grid(1, mq::Site::x_proj).size() == 3);
    CHECK(c.weight_grid(0, mq::Site::x_proj).empty());
    CHECK(c.weight_grid(5, mq::Site::x_proj).empty());
    c.weight_params[0][mq::Site::conv1d].assign(3, mq::QuantParams{0.5f, 2.0f, 0});
    CHECK_THROWS_WITH_AS(c.validate(2), Contains("layer 0 site conv1d: a fixed weight grid is for the quantized weights"),
                         mq::error);
    c.weight_params[0][mq::Site::conv1d].clear();
    c[mq::Site::x_proj] = {};
    CHECK_THROWS_WITH_AS(c.validate(2), Contains("layer 1 site x_proj: a fixed weight grid"), mq::error);
}

TEST_CASE("QuantizationConfig: bad JSON is refused by field") {
    const auto good = mq::to_json(mq::uniform_quantization_config(8, 0, mq::ActMode::dynamic_per_token));
    auto bad = good;
    bad["method"] = "gptq-magic";
    CHECK_THROWS_WITH_AS(mq::quantization_config_from_json(bad), Contains("unknown method \"gptq-magic\""), mq::error);
    bad = good;
    bad["bits"] = "w2a8";
    CHECK_THROWS_WITH_AS(mq::quantization_config_from_json(bad), Contains("unknown bits \"w2a8\""), mq::error);
    bad = good;
    bad["sites"]["lm_head"]["act"]["mode"] = "per_channel";
    CHECK_THROWS_WITH_AS(mq::quantization_config_from_json(bad), Contains("sites.lm_head.act.mode: unknown mode"), mq::error);
    bad = good;
    bad["sites"].erase("conv1d");
    CHECK_THROWS_WITH_AS(mq::quantization_config_from_json(bad), Contains("missing \"conv1d\""), mq::error);
    bad = good;
    bad["sites"]["attention"] = bad["sites"]["in_proj"];
    CHECK_THROWS_WITH_AS(mq::quantization_config_from_json(bad), Contains("unknown site \"attention\""), mq::error);
    bad = good;
    bad["out_rotation"] = {{"kind", "klt"}, {"size", 16}};
    CHECK_THROWS_WITH_AS(mq::quantization_config_from_json(bad), Contains("out_rotation.kind: unknown rotation kind"), mq::error);
    bad = good;
    bad["sites"]["in_proj"]["weight"]["granularity"] = "per_group_x";
    CHECK_THROWS_WITH_AS(mq::quantization_config_from_json(bad), Contains("bad group size"), mq::error);
}
