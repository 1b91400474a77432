// The float model against PyTorch golden data (tools/make_model_golden.py), in both layouts.
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/config.hpp>
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/nn/mamba_model.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using doctest::Contains;

namespace {

const std::filesystem::path kGolden = std::filesystem::path(MQ_SOURCE_DIR) / "tests" / "golden";

// max |a − b| / max |b| over a row: the relative error of a whole logit vector (elementwise
// relative error is meaningless for logits near zero).
double row_rel_error(const mq::MatrixXf& a, const mq::MatrixXf& b, Eigen::Index r) {
    const double scale = b.row(r).cwiseAbs().maxCoeff();
    return (a.row(r) - b.row(r)).cwiseAbs().maxCoeff() / std::max(scale, 1e-30);
}
double max_rel_error(const mq::MatrixXf& a, const mq::MatrixXf& b) {
    REQUIRE(a.rows() == b.rows());
    REQUIRE(a.cols() == b.cols());
    double worst = 0;
    for (Eigen::Index r = 0; r < a.rows(); ++r) worst = std::max(worst, row_rel_error(a, b, r));
    return worst;
}

struct Golden {
    std::vector<std::uint32_t> tokens;
    mq::MatrixXf logits;
    std::vector<mq::MatrixXf> hidden;
};
Golden load_golden(const std::filesystem::path& file, std::size_t n_layer) {
    const auto f = mq::SafetensorsFile::open(file);
    Golden g;
    const auto tok = f.bytes("tokens");
    REQUIRE(f.info("tokens").dtype == mq::DType::U8);
    for (auto b : tok) g.tokens.push_back(static_cast<std::uint8_t>(b));
    g.logits = f.load_float("logits").matrix();
    for (std::size_t i = 0; i < n_layer; ++i) g.hidden.push_back(f.load_float("hidden." + std::to_string(i)).matrix());
    return g;
}

// Logits within 1e-4 relative, every layer's residual stream within 1e-4 relative.
void check_against_golden(const mq::MambaModel& model, const Golden& g) {
    auto state = model.make_state();
    std::vector<mq::MatrixXf> hidden;
    const mq::MatrixXf logits = model.prefill(g.tokens, state, mq::Logits::all, &hidden);
    REQUIRE(hidden.size() == g.hidden.size());
    for (std::size_t i = 0; i < hidden.size(); ++i) {
        CAPTURE(i);
        CHECK(max_rel_error(hidden[i], g.hidden[i]) < 1e-4);
    }
    CHECK(max_rel_error(logits, g.logits) < 1e-4);
}

} // namespace

TEST_CASE("tiny Mamba: both layouts load the same model and match PyTorch") {
    const auto dir = kGolden / "tiny-mamba";
    const auto ssm = mq::MambaModel::load(dir / "mamba_ssm");
    const auto hf = mq::MambaModel::load(dir / "hf"); // sharded, index, tied head
    CHECK(ssm.config().layout == mq::ConfigLayout::mamba_ssm);
    CHECK(hf.config().layout == mq::ConfigLayout::transformers);
    CHECK(ssm.config().padded_vocab == 104);
    CHECK(hf.config().padded_vocab == 104);
    CHECK(ssm.config().dt_rank == 4);
    CHECK_FALSE(ssm.tied()); // lm_head.weight stored
    CHECK(hf.tied());
    // Same weights, both spellings and layouts.
    CHECK(ssm.embedding() == hf.embedding());
    CHECK(ssm.lm_head() == hf.lm_head());
    CHECK(ssm.norm_f() == hf.norm_f());
    for (std::size_t i = 0; i < 2; ++i) {
        const auto& a = ssm.layers()[i].weights();
        const auto& b = hf.layers()[i].weights();
        CHECK(a.in_proj == b.in_proj);
        CHECK(a.A_log == b.A_log);
        CHECK(a.conv_w == b.conv_w);
        CHECK(a.out_proj == b.out_proj);
    }
    const Golden g = load_golden(dir / "golden.safetensors", 2);
    REQUIRE(g.tokens.size() == 32);
    SUBCASE("mamba_ssm") { check_against_golden(ssm, g); }
    SUBCASE("transformers") { check_against_golden(hf, g); }
}

TEST_CASE("prefill equals step-by-step decode, and a split prefill continues exactly") {
    const auto model = mq::MambaModel::load(kGolden / "tiny-mamba" / "hf");
    const Golden g = load_golden(kGolden / "tiny-mamba" / "golden.safetensors", 2);
    auto s_full = model.make_state();
    const mq::MatrixXf full = model.prefill(g.tokens, s_full);

    auto s_step = model.make_state();
    std::vector<float> row(model.config().padded_vocab);
    for (std::size_t t = 0; t < g.tokens.size(); ++t) {
        model.decode(g.tokens[t], s_step, row);
        const mq::MatrixXf r = Eigen::Map<const Eigen::RowVectorXf>(row.data(), static_cast<Eigen::Index>(row.size()));
        CAPTURE(t);
        // Same arithmetic except GEMM vs GEMV summation order: a few ulps of the row's scale.
        CHECK(row_rel_error(r, full.middleRows(static_cast<Eigen::Index>(t), 1), 0) < 1e-5);
    }
    CHECK(s_step.position == 32);
    CHECK((s_step.caches[1].scan.state - s_full.caches[1].scan.state).cwiseAbs().maxCoeff() < 1e-5);

    // Prefill 13 tokens (more than the conv window), then 2 (fewer), then the rest.
    auto s_split = model.make_state();
    std::span<const std::uint32_t> all(g.tokens);
    model.prefill(all.subspan(0, 13), s_split, mq::Logits::none);
    model.prefill(all.subspan(13, 2), s_split, mq::Logits::none);
    const mq::MatrixXf tail = model.prefill(all.subspan(15), s_split);
    CHECK(max_rel_error(tail, full.bottomRows(17)) < 1e-5);

    // Logits::last is the last row of Logits::all.
    auto s_last = model.make_state();
    const mq::MatrixXf last = model.prefill(g.tokens, s_last, mq::Logits::last);
    CHECK(last.rows() == 1);
    CHECK(max_rel_error(last, full.bottomRows(1)) < 1e-6);
    s_last.reset();
    CHECK(s_last.position == 0);
    CHECK(s_last.caches[0].scan.state.cwiseAbs().maxCoeff() == 0.0f);

    // Greedy generation picks the argmax of the golden logits at the prompt's end.
    const auto gen = model.generate_greedy(g.tokens, 3);
    REQUIRE(gen.size() == 3);
    Eigen::Index best = 0;
    g.logits.row(g.logits.rows() - 1).leftCols(100).maxCoeff(&best);
    CHECK(gen[0] == static_cast<std::uint32_t>(best));
    for (auto t : gen) CHECK(t < 100); // never a padding row
}

TEST_CASE("model loading: wrong shapes, missing tensors, untied head, bad tokens") {
    const auto src = mq::Checkpoint::open(kGolden / "tiny-mamba" / "mamba_ssm");
    const auto cfg = mq::load_mamba_config(kGolden / "tiny-mamba" / "mamba_ssm");
    const auto dir = std::filesystem::temp_directory_path() / "mq_test_model_bad";
    std::filesystem::create_directories(dir);
    // Rewrite the checkpoint with one tensor dropped / replaced.
    auto rewrite = [&](const std::string& drop, const std::string& reshape_name) {
        std::vector<mq::FloatTensor> keep;
        std::vector<std::string> names;
        for (const auto& n : src.names()) {
            if (n == drop) continue;
            keep.push_back(src.load_float(n));
            names.push_back(n);
        }
        std::vector<mq::TensorData> ts;
        for (std::size_t i = 0; i < keep.size(); ++i) {
            auto shape = keep[i].shape;
            if (names[i] == reshape_name) shape = {keep[i].data.size()};
            ts.push_back({names[i], mq::DType::F32, shape, std::as_bytes(std::span(keep[i].data))});
        }
        mq::save_safetensors(dir / "model.safetensors", ts);
        return mq::Checkpoint::open(dir);
    };
    CHECK_THROWS_WITH_AS(mq::MambaModel::from_checkpoint(cfg, rewrite("backbone.layers.1.mixer.A_log", "")),
                         Contains("tensor \"backbone.layers.1.mixer.A_log\" not found"), mq::error);
    CHECK_THROWS_WITH_AS(mq::MambaModel::from_checkpoint(cfg, rewrite("", "backbone.layers.0.mixer.conv1d.weight")),
                         Contains("model.safetensors: tensor \"backbone.layers.0.mixer.conv1d.weight\": expected shape [128, 1, 4], got [512]"), mq::error);
    CHECK_THROWS_WITH_AS(mq::MambaModel::from_checkpoint(cfg, rewrite("backbone.embedding.weight", "")),
                         Contains("tensor \"backbone.embeddings.weight\" (or \"backbone.embedding.weight\") not found"), mq::error);
    // Untied config and no lm_head: an error; tied: the embedding serves as head.
    auto untied = cfg;
    untied.tie_embeddings = false;
    CHECK_THROWS_WITH_AS(mq::MambaModel::from_checkpoint(untied, rewrite("lm_head.weight", "")),
                         Contains("\"lm_head.weight\" not found and the config does not tie embeddings"), mq::error);
    CHECK(mq::MambaModel::from_checkpoint(cfg, rewrite("lm_head.weight", "")).tied());
    // A config that disagrees with the checkpoint (wrong width).
    auto wide = cfg;
    wide.d_model = 96;
    wide.d_inner = 192;
    CHECK_THROWS_WITH_AS(mq::MambaModel::from_checkpoint(wide, src), Contains("expected shape [104, 96], got [104, 64]"), mq::error);
    std::filesystem::remove_all(dir);

    const auto model = mq::MambaModel::from_checkpoint(cfg, src);
    auto st = model.make_state();
    const std::vector<std::uint32_t> bad = {1, 2, 104};
    CHECK_THROWS_WITH_AS(model.prefill(bad, st), Contains("token 104 at position 2 is outside the vocabulary of 104"), mq::error);
}

TEST_CASE("random model is deterministic and finite") {
    auto cfg = mq::parse_mamba_config(R"({"d_model": 48, "n_layer": 2, "vocab_size": 50})");
    const auto a = mq::MambaModel::random(cfg, 7);
    const auto b = mq::MambaModel::random(cfg, 7);
    auto sa = a.make_state();
    auto sb = b.make_state();
    const std::vector<std::uint32_t> toks = {1, 5, 9, 49, 0, 3};
    const mq::MatrixXf la = a.prefill(toks, sa);
    CHECK(la == b.prefill(toks, sb));
    CHECK(la.allFinite());
    CHECK(la.cwiseAbs().maxCoeff() > 0.0f);
}

TEST_CASE("save then load round-trips a model in both layouts") {
    const auto model = mq::MambaModel::load(kGolden / "tiny-mamba" / "hf");
    const Golden g = load_golden(kGolden / "tiny-mamba" / "golden.safetensors", 2);
    for (auto layout : {mq::ConfigLayout::mamba_ssm, mq::ConfigLayout::transformers}) {
        const auto dir = std::filesystem::temp_directory_path() / "mq_test_model_save";
        std::filesystem::remove_all(dir);
        model.save(dir, layout);
        const auto back = mq::MambaModel::load(dir);
        CHECK(back.config().layout == layout);
        CHECK(back.config().padded_vocab == 104);
        CHECK(back.embedding() == model.embedding());
        // A survives log then exp to within an ulp or two.
        CHECK((back.layers()[1].weights().A_log - model.layers()[1].weights().A_log).cwiseAbs().maxCoeff() < 1e-5f);
        check_against_golden(back, g);
        std::filesystem::remove_all(dir);
    }
}

TEST_CASE("bundled kjv models match their PyTorch golden data") {
    for (const char* name : {"kjv-mamba-192", "kjv-mamba-192-outlier"}) {
        CAPTURE(name);
        const auto model_dir = std::filesystem::path(MQ_SOURCE_DIR) / "models" / name;
        const auto golden = kGolden / (std::string(name) + ".safetensors");
        if (!std::filesystem::exists(model_dir / "config.json") || !std::filesystem::exists(golden)) {
            MESSAGE("skipped: models/" << name << " or its golden file not present");
            continue;
        }
        const auto model = mq::MambaModel::load(model_dir);
        const Golden g = load_golden(golden, model.config().n_layer);
        REQUIRE(g.tokens.size() == 256);
        CHECK(g.logits.cols() == static_cast<Eigen::Index>(model.config().padded_vocab));
        check_against_golden(model, g);
        // And decoding token by token reaches the same last logits.
        auto s = model.make_state();
        std::vector<float> row(model.config().padded_vocab);
        for (auto t : g.tokens) model.decode(t, s, row);
        const mq::MatrixXf r = Eigen::Map<const Eigen::RowVectorXf>(row.data(), static_cast<Eigen::Index>(row.size()));
        CHECK(row_rel_error(r, g.logits.bottomRows(1), 0) < 1e-4);
    }
}

TEST_CASE("the quantized model is the same template with quantizer policies (W8A8 RTN stays close)") {
    using W8A8Model = mq::BasicMambaModel<mq::MambaBlock<mq::W8PerChannel, mq::A8PerToken>>;
    const auto dir = kGolden / "tiny-mamba" / "hf";
    const W8A8Model q = W8A8Model::load(dir);
    const Golden g = load_golden(kGolden / "tiny-mamba" / "golden.safetensors", 2);
    auto s = q.make_state();
    const mq::MatrixXf logits = q.prefill(g.tokens, s);
    const double err = max_rel_error(logits, g.logits);
    // 8-bit weights and activations on a 2-layer model: small but clearly non-zero error.
    CHECK(err < 0.05);
    CHECK(err > 1e-5);
}
