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

// How far a float32 forward may be from the exact math, as max |Δ| / max |row|: u = 2^-24 per
// rounding; a K-term dot product accumulates ~√K·u (the probabilistic estimate of Higham & Mary,
// SIAM J. Sci. Comput. 2019, in place of the worst case K·u), and the largest K of a layer is
// E = d_inner (x_proj, out_proj); each layer adds its error to the residual stream, so n_layer
// of them add up. tiny-mamba (E = 128, 2 layers): 1.35e-6, measured 4.2e-7. The golden data of
// the bundled models is itself a float32 PyTorch forward with an error of the same estimate, so
// there the two are added (E = 384, 4 layers: 2 × 4.67e-6 = 9.3e-6, measured 1.2e-6).
double float32_forward_bound(const mq::MambaConfig& c) {
    return static_cast<double>(c.n_layer) * std::sqrt(static_cast<double>(c.d_inner)) * std::ldexp(1.0, -24);
}

// Logits and every layer's residual stream within `tol` relative of the golden data.
void check_against_golden(const mq::MambaModel& model, const Golden& g, double tol) {
    auto state = model.make_state();
    std::vector<mq::MatrixXf> hidden;
    const mq::MatrixXf logits = model.prefill(g.tokens, state, mq::Logits::all, &hidden);
    REQUIRE(hidden.size() == g.hidden.size());
    for (std::size_t i = 0; i < hidden.size(); ++i) {
        CAPTURE(i);
        CHECK(max_rel_error(hidden[i], g.hidden[i]) < tol);
    }
    CHECK(max_rel_error(logits, g.logits) < tol);
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
    // The golden forward ran in float64 (tools/make_model_golden.py): only our float32 rounding.
    SUBCASE("mamba_ssm") { check_against_golden(ssm, g, float32_forward_bound(ssm.config())); }
    SUBCASE("transformers") { check_against_golden(hf, g, float32_forward_bound(hf.config())); }
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
        check_against_golden(back, g, float32_forward_bound(back.config()));
        std::filesystem::remove_all(dir);
    }
}

TEST_CASE("bundled kjv models match their PyTorch golden data") {
    for (const char* name : {"kjv-mamba-192", "kjv-mamba-192-outlier"}) {
        CAPTURE(name);
        const auto model_dir = std::filesystem::path(MQ_SOURCE_DIR) / "models" / name;
        const auto golden = kGolden / (std::string(name) + ".safetensors");
        // Both are committed: a missing one is a broken checkout, not a reason to skip.
        REQUIRE_MESSAGE(std::filesystem::exists(model_dir / "config.json"), "models/", name, " is missing");
        REQUIRE_MESSAGE(std::filesystem::exists(golden), golden.string(), " is missing");
        const auto model = mq::MambaModel::load(model_dir);
        const Golden g = load_golden(golden, model.config().n_layer);
        REQUIRE(g.tokens.size() == 256);
        CHECK(g.logits.cols() == static_cast<Eigen::Index>(model.config().padded_vocab));
        // The golden forward is float32 PyTorch (tools/make_golden.py): both sides' rounding.
        const double tol = 2 * float32_forward_bound(model.config());
        check_against_golden(model, g, tol);
        // And decoding token by token reaches the same last logits.
        auto s = model.make_state();
        std::vector<float> row(model.config().padded_vocab);
        for (auto t : g.tokens) model.decode(t, s, row);
        const mq::MatrixXf r = Eigen::Map<const Eigen::RowVectorXf>(row.data(), static_cast<Eigen::Index>(row.size()));
        CHECK(row_rel_error(r, g.logits.bottomRows(1), 0) < tol);
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

TEST_CASE("bad input: empty prefill, a state from another model, decode's logits size") {
    const auto model = mq::MambaModel::load(kGolden / "tiny-mamba" / "hf"); // D = 64, E = 128, 2 layers
    auto st = model.make_state();
    CHECK_THROWS_WITH_AS(model.prefill(std::span<const std::uint32_t>{}, st), Contains("MambaModel::prefill: no tokens"), mq::error);
    const std::vector<std::uint32_t> toks = {1, 2, 3};
    // Another depth: the model refuses the state by its layer count.
    const auto deep = mq::MambaModel::random(mq::parse_mamba_config(R"({"d_model": 64, "n_layer": 3, "vocab_size": 104})"), 1);
    auto deep_state = deep.make_state();
    CHECK_THROWS_WITH_AS(model.prefill(toks, deep_state), Contains("state made for 3 layers, model has 2"), mq::error);
    // Same depth, other widths (E = 96, not 128): the layer's conv refuses the cache by its shape.
    const auto narrow = mq::MambaModel::random(mq::parse_mamba_config(R"({"d_model": 48, "n_layer": 2, "vocab_size": 104})"), 1);
    auto narrow_state = narrow.make_state();
    CHECK_THROWS_WITH_AS(model.prefill(toks, narrow_state), Contains("expected E = 128"), mq::error);
    // decode writes exactly one logit per vocabulary row (padded_vocab = 104).
    std::vector<float> short_row(100), long_row(105);
    CHECK_THROWS_WITH_AS(model.decode(1, st, short_row), Contains("MambaModel::decode: logits span of 100, vocabulary is 104"), mq::error);
    CHECK_THROWS_WITH_AS(model.decode(1, st, long_row), Contains("logits span of 105, vocabulary is 104"), mq::error);
    CHECK(st.position == 0); // nothing ran
}

TEST_CASE("bad input: the block refuses weights of the wrong shape and extras its policies cannot apply") {
    const auto model = mq::MambaModel::load(kGolden / "tiny-mamba" / "hf");
    const auto& c = model.config();
    const mq::MambaLayerWeights good = model.layers()[0].weights();
    auto make = [&](const mq::MambaLayerWeights& w) {
        return mq::MambaBlock<>(w, c.d_model, c.d_inner, c.d_state, c.dt_rank, c.d_conv, c.norm_eps);
    };
    CHECK_NOTHROW(make(good));
    mq::MambaLayerWeights w = good;
    w.A_log = mq::MatrixXf::Zero(128, 8);
    CHECK_THROWS_WITH_AS(make(w), Contains("MambaBlock: A_log: expected shape [128, 16], got [128, 8]"), mq::error);
    w = good;
    w.D = Eigen::VectorXf::Zero(127);
    CHECK_THROWS_WITH_AS(make(w), Contains("MambaBlock: D: expected [128], got [127]"), mq::error);
    w = good;
    w.out_proj = mq::MatrixXf::Zero(64, 64);
    CHECK_THROWS_WITH_AS(make(w), Contains("MambaBlock: out_proj.weight: expected shape [64, 128], got [64, 64]"), mq::error);
    // A carried-state scale the plain scan cannot apply.
    w = good;
    w.state_scale = Eigen::VectorXf::Constant(16, 2.0f);
    CHECK_THROWS_WITH_AS(make(w), Contains("MambaBlock: state_scale"), mq::error);
    // An out_proj rotation given as a matrix while the block's OutRotation is NoRotation.
    w = good;
    w.out_rotation = mq::MatrixXf::Identity(128, 128);
    CHECK_THROWS_WITH_AS(make(w), Contains("OutRotation"), mq::error);
}
