// The recipes on the bundled Vim (vim-digits-192): the direction-layer view keeps the float function,
// MambaQuant's transforms keep it too, W8A8 MambaQuant keeps top-1 on test images, and bad inputs.
// One translation unit for the whole quantized-Vim path (the run-time model instantiations are heavy).
#include <mambaquant/eval/vim_accuracy.hpp>
#include <mambaquant/nn/quantized_vim_model.hpp>
#include <mambaquant/recipe/vim_recipe.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <filesystem>

namespace {
using doctest::Contains;
const std::filesystem::path kRoot(MQ_SOURCE_DIR);
const std::filesystem::path kModel = kRoot / "models" / "vim-digits-192";
#if defined(__SANITIZE_ADDRESS__)
constexpr std::size_t kCalib = 8, kTest = 12; // ASan+UBSan (-O1): a forward costs ~50× more
#else
constexpr std::size_t kCalib = 32, kTest = 48;
#endif

struct Data {
    mq::VimConfig cfg = mq::load_vim_config(kModel);
    mq::VimWeights w = mq::load_vim_weights(kModel);
    mq::VimImages calib = mq::load_vim_images(kModel / "digits.safetensors", "calib", cfg);
    mq::SafetensorsFile golden = mq::SafetensorsFile::open(kRoot / "tests" / "golden" / "vim-digits-192.safetensors");
    mq::FloatTensor images = golden.load_float("images");
    mq::MatrixXf ref_logits = golden.load_float("logits").matrix();

    mq::ImageBatch calib_batch() const { return {calib.pixels.data(), std::min(kCalib, calib.count), 1, 8, 8}; }
    mq::ImageBatch test_batch() const { return {images.data.data(), kTest, 1, 8, 8}; }
    double meta(const char* key) const { return std::stod(golden.metadata().at(key)); }
};
const Data& data() {
    static const Data d;
    return d;
}

// Tolerance against the float64 reference logits, as tests/nn/test_vim_model.cpp derives it:
// PyTorch's float32 forward misses the reference by e_t (stored in the golden file); another
// float32 evaluation of the same function in other summation orders errs by the same order, so
// 4·e_t, plus 2·2⁻²⁴·max|ref| for the reference's own rounding to float32 in the file. A model
// whose weights were transformed (in float64, exactly in real arithmetic) and rounded to float32
// once is such an evaluation too: one more rounding per weight, against the K ≥ 12 roundings of
// each dot product e_t already covers — so the same bound must hold, with no widening.
double tolerance(const Data& d) { return 4.0 * d.meta("f32_err_logits") + 2.0 * std::ldexp(d.meta("logits_absmax"), -24); }

// Rows of a and b whose largest logit is in the same column.
std::size_t same_class(const mq::MatrixXf& a, const mq::MatrixXf& b) {
    std::size_t n = 0;
    for (Eigen::Index i = 0; i < a.rows(); ++i) {
        Eigen::Index x = 0, y = 0;
        a.row(i).maxCoeff(&x);
        b.row(i).maxCoeff(&y);
        n += x == y;
    }
    return n;
}

void check_golden(const mq::QuantizedVimModel& m, const Data& d) {
    const double err = (m.logits(d.test_batch()) - d.ref_logits.topRows(kTest)).cwiseAbs().maxCoeff(), tol = tolerance(d);
    MESSAGE("max |logit - float64 reference| = ", err, " (tolerance ", tol, ")");
    CHECK(err <= tol);
}

mq::QuantizeOptions options(const char* bits, std::uint64_t seed = 0) {
    mq::QuantizeOptions o;
    o.bits = mq::bits_by_name(bits);
    o.seed = seed;
    return o;
}
} // namespace

TEST_CASE("quantized Vim: the direction-layer view at a float config is the float Vim (golden logits)") {
    const Data& d = data();
    check_golden(mq::build_quantized_vim_model(d.w, d.cfg, mq::QuantizationConfig{}), d);
}

TEST_CASE("quantized Vim: MambaQuant's transforms without quantization keep the float function") {
    const Data& d = data();
    // Offline transforms (dt shift, S2, S4 per direction with first-step absorption, S5, S7, R1
    // KLT·H over the table and layers, R5 per direction) with the online R2/R4 undone, run in float.
    const mq::QuantizedVimRecipe q = mq::run_vim_recipe(mq::mambaquant_recipe(), d.w, d.cfg, d.calib_batch(), options("w8a8"));
    const mq::VimWeights offline = mq::without_online_rotations(q.weights);
    const auto& l0 = offline.directions.layers[0];
    REQUIRE(!(l0.gate_scale.array() == 1.0f).all()); // the transforms really ran
    REQUIRE(!(l0.state_scale.array() == 1.0f).all());
    REQUIRE(!(offline.directions.layers[1].state_scale.array() == l0.state_scale.array()).all()); // per direction
    check_golden(mq::build_quantized_vim_model(offline, d.cfg, mq::QuantizationConfig{}), d);
}

TEST_CASE("quantized Vim: W8A8 MambaQuant keeps the float top-1 on test images; integer path = its fake-quant twin") {
    const Data& d = data();
    const auto labels = d.golden.bytes("labels");
    std::vector<std::uint8_t> lab;
    for (std::size_t i = 0; i < kTest; ++i) lab.push_back(static_cast<std::uint8_t>(labels[i]));
    const mq::QuantizedVimRecipe q = mq::run_vim_recipe(mq::mambaquant_recipe(), d.w, d.cfg, d.calib_batch(), options("w8a8"));
    // The conv1d input static per tensor as in the language model (METHOD.md §2), one quantizer per
    // direction (each direction has its own conv), so both models below run the integer conv.
    CHECK(q.config[mq::Site::conv1d].act.mode == mq::ActMode::static_per_tensor);
    for (const auto& l : q.config.layers) CHECK(l[mq::Site::conv1d].has_value());
    const mq::QuantizedVimModel im = mq::build_quantized_vim_model(q.weights, d.cfg, q.config);
    const mq::QuantizedVimModel twin = mq::build_quantized_vim_model(q.weights, d.cfg, q.config, mq::FakeQuant::yes);
    const mq::MatrixXf li = im.logits(d.test_batch()), lt = twin.logits(d.test_batch());
    const mq::MatrixXf lf = d.ref_logits.topRows(kTest);
    const double acc_f = mq::top1(lf, lab), acc_q = mq::top1(li, lab);
    const std::size_t agree = same_class(li, lf);
    MESSAGE("float top-1 ", acc_f, ", W8A8 MambaQuant top-1 ", acc_q, ", same class as float ", agree, "/", kTest,
            ", max |logit diff| vs float ", (li - lf).cwiseAbs().maxCoeff(), ", vs twin ", (li - lt).cwiseAbs().maxCoeff());
    // W8A8 must not lose an image here (the paper's Vim-T loses 0.5 points; one image is 2 points of 48).
    CHECK(acc_q >= acc_f);
    CHECK(agree >= kTest - 1);
    CHECK((li - lf).cwiseAbs().maxCoeff() > 0.0f); // it really quantized
    // Integer path vs its twin, as tests/nn/test_quantized_model.cpp argues: same codes and ŵ, only
    // the accumulation differs (exact int32 vs float sums, relative ≲ K·2⁻²⁴ for K ≤ 384) until a
    // value sits on a later quantizer's rounding boundary and one code moves by 1 — so the logits
    // agree to a fraction of the quantization noise (the same 5 % of max |logit| bound), and the
    // decisions agree.
    CHECK(same_class(li, lt) == kTest);
    CHECK((li - lt).cwiseAbs().maxCoeff() < 0.05f * lt.cwiseAbs().maxCoeff());
}

TEST_CASE("quantized Vim: calibration is per direction layer; shared sites are seen by both") {
    const Data& d = data();
    const mq::QuantizedVimModel m = mq::build_quantized_vim_model(d.w, d.cfg, mq::QuantizationConfig{});
    mq::CalibrationPlan plan;
    plan.state = true;
    const mq::CalibrationStats s = mq::calibrate_vim(m, d.calib_batch(), plan, &d.w.directions);
    const std::size_t n = 2 * d.cfg.n_layer;
    auto absmax = [&](std::size_t layer, mq::TapPoint p) {
        return s.at(mq::tap_key(layer, n, p)).channels().absmax().eval();
    };
    for (std::size_t l = 0; l < d.cfg.n_layer; ++l) {
        CAPTURE(l);
        CHECK(absmax(2 * l, mq::TapPoint::in_proj_input) == absmax(2 * l + 1, mq::TapPoint::in_proj_input));
        CHECK(absmax(2 * l, mq::TapPoint::out_proj_input) == absmax(2 * l + 1, mq::TapPoint::out_proj_input));
        CHECK(absmax(2 * l, mq::TapPoint::conv_input) == absmax(2 * l + 1, mq::TapPoint::conv_input));
        CHECK(absmax(2 * l, mq::TapPoint::x_proj_input) != absmax(2 * l + 1, mq::TapPoint::x_proj_input));
        CHECK(s.contains(mq::site_key(2 * l + 1, "scan_state")));
    }
    CHECK(s.contains("lm_head_input"));
}

TEST_CASE("quantized Vim: bad input") {
    const Data& d = data();
    SUBCASE("a step that changes one direction's copy of a shared tensor is refused by name") {
        mq::VimWeights w = d.w;
        w.directions.layers[3].in_proj(0, 0) += 1.0f; // layer 1's backward copy
        CHECK_THROWS_WITH_AS(mq::validate(w, d.cfg), Contains("layer 1: the shared in_proj differs"), mq::error);
        w = d.w;
        w.directions.layers[0].gate_scale[5] = 2.0f;
        CHECK_THROWS_WITH_AS(mq::build_quantized_vim_model(w, d.cfg, mq::QuantizationConfig{}), Contains("gate_scale"), mq::error);
    }
    SUBCASE("direction layers, table rows and head bias must match the config") {
        mq::VimWeights w = d.w;
        w.directions.layers.pop_back();
        CHECK_THROWS_WITH_AS(mq::validate(w, d.cfg), Contains("7 direction layers"), mq::error);
        w = d.w;
        w.head_bias.resize(3);
        CHECK_THROWS_WITH_AS(mq::validate(w, d.cfg), Contains("head_bias has 3 entries"), mq::error);
    }
    SUBCASE("static params for the Vim layers instead of the direction layers; shared params that differ") {
        const mq::QuantizedVimRecipe q = mq::run_vim_recipe(mq::rtn_recipe(), d.w, d.cfg, d.calib_batch(), options("w8a8"));
        mq::QuantizationConfig c = q.config;
        c.layers.resize(d.cfg.n_layer);
        CHECK_THROWS_WITH_AS(mq::build_quantized_vim_model(q.weights, d.cfg, c), Contains("static params for 4 layers"), mq::error);
        c = q.config;
        c.layers[1][mq::Site::in_proj]->scale *= 2.0f;
        CHECK_THROWS_WITH_AS(mq::build_quantized_vim_model(q.weights, d.cfg, c), Contains("static in_proj params differ"), mq::error);
    }
    SUBCASE("no calibration images; images of the wrong size") {
        const mq::ImageBatch none{d.calib.pixels.data(), 0, 1, 8, 8};
        CHECK_THROWS_WITH_AS(mq::run_vim_recipe(mq::rtn_recipe(), d.w, d.cfg, none, options("w8a8")),
                             Contains("no calibration images"), mq::error);
        mq::VimConfig other = d.cfg;
        other.image_height = other.image_width = 16;
        CHECK_THROWS_WITH_AS(mq::load_vim_images(kModel / "digits.safetensors", "test", other), Contains("must be [n, 16, 16]"),
                             mq::error);
        const mq::QuantizedVimModel m = mq::build_quantized_vim_model(d.w, d.cfg, mq::QuantizationConfig{});
        const mq::ImageBatch wrong{d.calib.pixels.data(), 1, 1, 4, 16};
        CHECK_THROWS_WITH_AS(m.logits(wrong), Contains("images are 4x16"), mq::error);
    }
}
