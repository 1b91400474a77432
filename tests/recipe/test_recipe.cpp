// The recipes on tiny random models: the offline transforms keep the float function, every method
// quantizes, a custom recipe composes from the same steps, and the checkpoint is reproducible.
#include <mambaquant/eval/layer_report.hpp>
#include <mambaquant/nn/mamba_model.hpp>
#include <mambaquant/nn/quantized_model.hpp>
#include <mambaquant/recipe/recipe.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

namespace {
mq::MambaConfig tiny_config(std::size_t d = 32) {
    mq::MambaConfig c;
    c.d_model = d;
    c.n_layer = 2;
    c.vocab_size = 64;
    c.padded_vocab = 64;
    c.d_state = 16;
    c.d_conv = 4;
    c.d_inner = 2 * d;
    c.dt_rank = 2;
    return c;
}
std::vector<std::uint32_t> some_tokens(std::size_t n, std::uint32_t seed) {
    std::vector<std::uint32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::uint32_t>((i * 2654435761u + seed) % 61u);
    return t;
}
mq::MatrixXf logits_of(const mq::QuantizedMambaModel& m, std::span<const std::uint32_t> t) {
    auto s = m.make_state();
    return m.prefill(t, s, mq::Logits::all);
}
double sqnr_db(const mq::MatrixXf& x, const mq::MatrixXf& y) {
    return 10.0 * std::log10(x.cast<double>().squaredNorm() / (x - y).cast<double>().squaredNorm());
}
std::vector<char> file_bytes(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// A sixth recipe written by a user from the library's parts: S-SiLU gate smoothing and the dt
// shift, then a plain randomized-Hadamard R1, online H at out_proj; static percentile ranges.
mq::Recipe custom_recipe() {
    mq::Recipe r;
    r.name = "my-recipe";
    r.stages.push_back({{mq::steps::shift_dt(), mq::steps::smooth_gate(0.6)}, {}});
    r.stages.push_back({{mq::steps::rotate_residual(mq::steps::R1Basis::hadamard)}, {}});
    r.online = {mq::steps::rotate_out_proj_input()};
    r.range = mq::RangeRule::percentile;
    r.percentile = 0.9999;
    r.random_signs = true;
    return r;
}
} // namespace

TEST_CASE("recipes: offline transforms keep the float function; every method quantizes close to float at w8a8") {
    const auto cfg = tiny_config();
    const auto w = mq::mamba_weights(mq::MambaModel::random(cfg, 11));
    const auto tokens = some_tokens(256, 1);
    const auto windows = mq::calibration_windows(tokens, 64, 3);
    const auto test = some_tokens(96, 9);
    const mq::MatrixXf ref = logits_of(mq::build_quantized_model(w, cfg, mq::QuantizationConfig{}), test);
    std::vector<mq::Recipe> recipes;
    for (auto name : mq::recipe_names()) recipes.push_back(mq::recipe_by_name(name));
    recipes.push_back(custom_recipe());
    for (const auto& recipe : recipes) {
        CAPTURE(recipe.name);
        mq::QuantizeOptions o;
        o.bits = mq::bits_by_name("w8a8");
        const auto q = mq::run_recipe(recipe, w, cfg, windows, o);
        // Undo the online rotations (exact up to rounding) to get the offline-transformed float
        // model: it must compute the original function. Smoothing and rotation are exact in real
        // arithmetic; float rounding of the folded weights (~1e-7 relative, through 2 layers)
        // keeps the logits above 80 dB SQNR (a wrong fold is far below 20 dB).
        const auto off = mq::without_online_rotations(q.weights);
        const auto fl = mq::build_quantized_model(off, cfg, mq::QuantizationConfig{});
        CHECK(sqnr_db(ref, logits_of(fl, test)) > 80.0);
        // W8A8 on a random model: the logits stay close (8-bit quantization noise is ~-48 dB per
        // tensor; through 2 layers and 6 quantized sites each, 20 dB is a loose floor that a
        // wrong static scale — clipping or a 255× too coarse step — falls through).
        const auto qm = mq::build_quantized_model(q.weights, cfg, q.config);
        const double s = sqnr_db(ref, logits_of(qm, test));
        MESSAGE(recipe.name, " w8a8 logits SQNR ", s, " dB");
        CHECK(s > 20.0);
        CHECK(q.config.bits == "w8a8");
    }
}

TEST_CASE("recipes: the quantized checkpoint is bit-identical for the same seed and data, and differs for another seed") {
    const auto cfg = tiny_config();
    const auto w = mq::mamba_weights(mq::MambaModel::random(cfg, 12));
    const auto tokens = some_tokens(200, 2);
    const auto windows = mq::calibration_windows(tokens, 64, 2);
    const auto dir = std::filesystem::temp_directory_path() / "mq_test_recipe";
    std::filesystem::remove_all(dir);
    auto save = [&](std::uint64_t seed, const char* name) {
        mq::QuantizeOptions o;
        o.bits = mq::bits_by_name("w4a8");
        o.seed = seed;
        o.gptq = true;
        const auto q = mq::run_recipe(mq::mambaquant_recipe(), w, cfg, windows, o);
        mq::build_quantized_model(q.weights, cfg, q.config).save(dir / name);
        return file_bytes(dir / name / "model.safetensors");
    };
    const auto a = save(3, "a"), b = save(3, "b"), c = save(4, "c");
    CHECK(!a.empty());
    CHECK(a == b);
    CHECK(a != c);
    std::filesystem::remove_all(dir);
}

TEST_CASE("recipes: per-layer report of the fake-quant twin against float") {
    const auto cfg = tiny_config();
    const auto w = mq::mamba_weights(mq::MambaModel::random(cfg, 13));
    const auto tokens = some_tokens(128, 3);
    const auto windows = mq::calibration_windows(tokens, 64, 2);
    const auto q = mq::run_recipe(mq::rtn_recipe(), w, cfg, windows, {});
    const auto ref = mq::build_quantized_model(w, cfg, mq::QuantizationConfig{});
    const auto twin = mq::build_quantized_model(q.weights, cfg, q.config, mq::FakeQuant::yes);
    const auto rows = mq::layer_report(ref, twin, q.config, windows);
    bool saw = false;
    for (const auto& r : rows) {
        if (r.layer == 0 && r.site == "in_proj_input") {
            saw = true;
            // The first site sees the float embedding: no upstream error, only its own quantizer.
            CHECK(r.drift.sqnr_db() == doctest::Approx(r.drift.sqnr_db()));
            CHECK(r.quant.sqnr_db() > 30.0); // 8-bit static min/max: ~40 dB on a Gaussian-ish tensor
            CHECK(r.quant.cosine() > 0.999);
        }
        if (r.site == "layer_output") CHECK(r.drift.cosine() > 0.9);
    }
    CHECK(saw);
    // The same model against itself: no error anywhere.
    for (const auto& r : mq::layer_report(ref, ref, mq::QuantizationConfig{}, std::span(windows).first(1)))
        CHECK(std::isinf(r.drift.sqnr_db()));
    const auto path = std::filesystem::temp_directory_path() / "mq_test_layers.csv";
    mq::write_layer_report(path, rows);
    std::ifstream in(path);
    std::string header;
    std::getline(in, header);
    CHECK(header == "layer,site,quant_sqnr_db,quant_cosine,drift_sqnr_db,drift_cosine");
    std::filesystem::remove(path);
}

TEST_CASE("recipes: the KLT of the second moment equalizes the mean square of every in_proj input channel") {
    // A residual stream with a mean (a constant added to every embedding row, as a model with
    // massive activations has): the quantizer sees x = μ + fluctuation. With K from M = E[x·xᵀ],
    // diag(Qᵀ·M·Q) = tr(M)/n for Q = K·H; with K from the centred covariance only the variances
    // are equal and channel l's mean square is tr(Cov)/n + (μ·K·H)_l², which differs per channel.
    const auto cfg = tiny_config();
    auto w = mq::mamba_weights(mq::MambaModel::random(cfg, 16));
    for (Eigen::Index j = 0; j < w.embedding.cols(); j += 5) w.embedding.col(j).array() += 3.0f;
    const auto tokens = some_tokens(256, 5);
    const auto windows = mq::calibration_windows(tokens, 64, 3);
    auto spread = [&](mq::steps::KltMoment moment) {
        mq::Recipe r;
        r.name = "r1-klt";
        r.stages.push_back({{mq::steps::rotate_residual(mq::steps::R1Basis::klt_layer0, moment)},
                            mq::plan_with({mq::TapPoint::in_proj_input})});
        const auto q = mq::run_recipe(r, w, cfg, windows, {});
        const auto m = mq::build_quantized_model(q.weights, cfg, mq::QuantizationConfig{});
        const auto st = mq::calibrate(m, windows, mq::plan_with({mq::TapPoint::in_proj_input}), nullptr);
        const auto& acc = st.at("layers.0.in_proj_input").covariance();
        const Eigen::VectorXd ms = acc.second_moment().diagonal() / static_cast<double>(acc.count());
        return (ms.maxCoeff() - ms.minCoeff()) / ms.mean();
    };
    const double second = spread(mq::steps::KltMoment::second_moment), centred = spread(mq::steps::KltMoment::centred);
    MESSAGE("in_proj input mean-square spread (max − min)/mean: second moment ", second, ", centred ", centred);
    // Exact in real arithmetic. The folded weights are rounded to float (2^-24 relative) and the
    // rotated input is a float sum over D = 32 terms: ≲ √32·2^-24 ≈ 3.4e-7 relative per value, so
    // each channel's mean square is off by ≲ 7e-7 and the spread is ≲ 1.4e-6; 1e-5 leaves a 7×
    // margin (measured 5.1e-8). The centred basis leaves (μ·K·H)_l² unequal (measured 0.81).
    CHECK(second < 1e-5);
    CHECK(centred > 0.1);
}

TEST_CASE("recipes: bad input") {
    CHECK_THROWS_WITH_AS(mq::recipe_by_name("awq"), doctest::Contains("unknown method \"awq\""), mq::error);
    CHECK_THROWS_WITH_AS(mq::bits_by_name("w3a8"), doctest::Contains("unknown bit width \"w3a8\""), mq::error);
    const auto cfg = tiny_config();
    const auto tokens = some_tokens(128, 4);
    const auto windows = mq::calibration_windows(tokens, 64, 1);
    auto w = mq::mamba_weights(mq::MambaModel::random(cfg, 14));
    w.layers[1].x_proj(2, 3) = std::nanf("");
    CHECK_THROWS_WITH_AS(mq::run_recipe(mq::rtn_recipe(), w, cfg, windows, {}), doctest::Contains("layers.1.x_proj"),
                         mq::error);
    // d_model 44 = 11·4 has no exact Hadamard: an error naming the size, or the block fallback.
    const auto cfg44 = tiny_config(44);
    const auto w44 = mq::mamba_weights(mq::MambaModel::random(cfg44, 15));
    mq::Recipe r1;
    r1.name = "r1-only";
    r1.stages.push_back({{mq::steps::rotate_residual(mq::steps::R1Basis::hadamard)}, {}});
    CHECK_THROWS_WITH_AS(mq::run_recipe(r1, w44, cfg44, windows, {}), doctest::Contains("44"), mq::error);
    mq::QuantizeOptions o;
    o.fallback = mq::UnsupportedSize::block_hadamard;
    CHECK_NOTHROW(mq::run_recipe(r1, w44, cfg44, windows, o));
}
