// The run-time quantized model: float path, integer path vs its fake-quant twin, determinism.
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/nn/mamba_model.hpp>
#include <mambaquant/nn/quantized_model.hpp>
#include <mambaquant/transform/fusion.hpp>
#include <mambaquant/transform/smoothing.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <cstdint>
#include <filesystem>
#include <vector>

namespace {

const std::filesystem::path kRoot = std::filesystem::path(MQ_SOURCE_DIR);

mq::MambaConfig tiny_config() {
    mq::MambaConfig c;
    c.d_model = 64;
    c.n_layer = 2;
    c.vocab_size = 256;
    c.padded_vocab = 256;
    c.d_state = 16;
    c.d_conv = 4;
    c.d_inner = 128;
    c.dt_rank = 4;
    return c;
}

std::vector<std::uint32_t> some_tokens(std::size_t n, std::uint32_t seed) {
    std::vector<std::uint32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::uint32_t>((i * 2654435761u + seed) % 251u);
    return t;
}

std::vector<std::uint32_t> heldout_tokens() { // 256 bytes at the held-out split's start
    const auto f = mq::SafetensorsFile::open(kRoot / "tests" / "golden" / "kjv-mamba-192.safetensors");
    std::vector<std::uint32_t> t;
    for (auto b : f.bytes("tokens")) t.push_back(static_cast<std::uint8_t>(b));
    return t;
}

std::vector<std::uint32_t> argmax_rows(const mq::MatrixXf& logits) {
    std::vector<std::uint32_t> out;
    for (Eigen::Index r = 0; r < logits.rows(); ++r) {
        Eigen::Index best = 0;
        logits.row(r).maxCoeff(&best);
        out.push_back(static_cast<std::uint32_t>(best));
    }
    return out;
}

} // namespace

TEST_CASE("quantized model: a float config runs the float model bit for bit") {
    const auto cfg = tiny_config();
    const auto ref = mq::MambaModel::random(cfg, 3);
    const auto w = mq::mamba_weights(ref);
    mq::QuantizationConfig qc;
    const auto m = mq::build_quantized_model(w, cfg, qc);
    const auto tokens = some_tokens(19, 1);
    auto s0 = ref.make_state();
    auto s1 = m.make_state();
    const mq::MatrixXf a = ref.prefill(tokens, s0);
    const mq::MatrixXf b = m.prefill(tokens, s1);
    CHECK((a.array() == b.array()).all());
    std::vector<float> la(256), lb(256);
    ref.decode(5, s0, la);
    m.decode(5, s1, lb);
    CHECK(la == lb);
}

TEST_CASE("quantized model: the integer path and its fake-quant twin agree") {
    const auto ref = mq::MambaModel::load(kRoot / "models" / "kjv-mamba-192");
    const auto w = mq::mamba_weights(ref);
    const auto tokens = heldout_tokens();
    auto s = ref.make_state();
    const auto float_next = argmax_rows(ref.prefill(tokens, s));
    for (int bits : {8, 4}) {
        CAPTURE(bits);
        // W4 per channel: d_model 192 is not a multiple of 128.
        const auto qc = mq::uniform_quantization_config(bits, 0, mq::ActMode::dynamic_per_token);
        const auto qi = mq::build_quantized_model(w, ref.config(), qc, mq::FakeQuant::no);
        const auto qf = mq::build_quantized_model(w, ref.config(), qc, mq::FakeQuant::yes);
        auto si = qi.make_state();
        auto sf = qf.make_state();
        const mq::MatrixXf li = qi.prefill(tokens, si);
        const mq::MatrixXf lf = qf.prefill(tokens, sf);
        // Same codes, same ŵ; only the accumulation differs (exact int32 sum vs float sum of â·ŵ,
        // relative error ≲ K·2⁻²⁴ ≈ 2e-5 for K = 384) — until a value sits on a rounding boundary
        // of a later quantizer, where one code differs by 1 and that site's output moves by one
        // quantization step. So logits agree to a fraction of the quantization noise, not to
        // float precision; the decision (argmax) is what must agree.
        const auto ni = argmax_rows(li), nf = argmax_rows(lf);
        std::size_t same = 0, same_float = 0;
        for (std::size_t t = 0; t < ni.size(); ++t) {
            same += ni[t] == nf[t];
            same_float += ni[t] == float_next[t];
        }
        MESSAGE("W", bits, "A8: greedy next byte, integer vs fake-quant ", same, "/", ni.size(), ", integer vs float ",
                same_float, "/", ni.size());
        CHECK(same >= ni.size() * 98 / 100);
        const double err = (li - lf).cwiseAbs().maxCoeff() / lf.cwiseAbs().maxCoeff();
        MESSAGE("W", bits, "A8: max |logit difference| / max |logit| integer vs fake = ", err);
        CHECK(err < 0.05);
    }
}

TEST_CASE("quantized model: same output on 1 and 2 threads") {
    const auto cfg = tiny_config();
    const auto w = mq::mamba_weights(mq::MambaModel::random(cfg, 4));
    const auto qc = mq::uniform_quantization_config(4, 0, mq::ActMode::dynamic_per_token);
    auto m = mq::build_quantized_model(w, cfg, qc);
    const auto tokens = some_tokens(33, 2);
    auto s1 = m.make_state();
    const mq::MatrixXf two = m.prefill(tokens, s1);
    m.set_thread_pool(nullptr);
    auto s2 = m.make_state();
    const mq::MatrixXf one = m.prefill(tokens, s2);
    CHECK((one.array() == two.array()).all());
}

namespace {

// A W4A8 (per group 128, static per-tensor activations) + R2 + S-SiLU + S4 + dt shift model: every
// part save() must carry. Static params from a float pass's ranges (a stand-in for calibration).
struct Everything {
    mq::MambaConfig cfg;
    mq::MambaWeights w;
    mq::QuantizationConfig qc;
};

Everything everything_model() {
    Everything e;
    e.cfg = tiny_config();
    e.w = mq::mamba_weights(mq::MambaModel::random(e.cfg, 9));
    const auto E = static_cast<Eigen::Index>(e.cfg.d_inner), R = static_cast<Eigen::Index>(e.cfg.dt_rank),
               N = static_cast<Eigen::Index>(e.cfg.d_state);
    for (auto& l : e.w.layers) {
        l = mq::apply_dt_shift(l, Eigen::VectorXd::LinSpaced(R, -0.2, 0.3));
        l = mq::apply_gate_smoothing(l, Eigen::VectorXd::LinSpaced(E, 0.5, 2.0));
        l = mq::apply_state_smoothing(l, Eigen::VectorXd::LinSpaced(N, 0.5, 4.0));
        l = mq::rotate_out_proj_input(l, mq::detail::online_rotation_matrix(mq::HadamardOnline(e.cfg.d_inner, 77), e.cfg.d_inner).cast<double>());
    }
    e.qc = mq::uniform_quantization_config(4, 0, mq::ActMode::static_per_tensor, false, "mambaquant");
    e.qc[mq::Site::out_proj].weight = mq::QuantSpec{4, mq::GranularityKind::per_group, false, 128}; // E = 128
    e.qc.out_rotation = mq::RotationSpec{mq::RotationKind::randomized_hadamard, e.cfg.d_inner, 77, 0};
    // Static params: the float model's per-tensor ranges at each site (what calibration would give).
    struct Ranges : mq::ActivationTap {
        std::vector<std::array<std::pair<float, float>, 4>> r;
        std::pair<float, float> head{0.0f, 0.0f};
        void on_activation(std::size_t layer, mq::TapPoint p, mq::ConstMatrixView<float> v) override {
            int k = p == mq::TapPoint::in_proj_input ? 0 : p == mq::TapPoint::x_proj_input ? 1
                  : p == mq::TapPoint::dt_proj_input ? 2 : p == mq::TapPoint::out_proj_input ? 3 : -1;
            auto* dst = p == mq::TapPoint::lm_head_input ? &head : nullptr;
            if (k >= 0) {
                if (r.size() <= layer) r.resize(layer + 1, {});
                dst = &r[layer][static_cast<std::size_t>(k)];
            }
            if (!dst) return;
            for (std::size_t i = 0; i < v.rows; ++i)
                for (std::size_t j = 0; j < v.cols; ++j) {
                    dst->first = std::min(dst->first, v(i, j));
                    dst->second = std::max(dst->second, v(i, j));
                }
        }
    } ranges;
    auto float_cfg = mq::QuantizationConfig{};
    float_cfg.out_rotation = e.qc.out_rotation;
    const auto fm = mq::build_quantized_model(e.w, e.cfg, float_cfg);
    auto s = fm.make_state();
    fm.prefill(some_tokens(64, 5), s, mq::Logits::all, &ranges);
    e.qc.layers.resize(e.cfg.n_layer);
    const mq::Site sites[4] = {mq::Site::in_proj, mq::Site::x_proj, mq::Site::dt_proj, mq::Site::out_proj};
    for (std::size_t i = 0; i < e.cfg.n_layer; ++i)
        for (int k = 0; k < 4; ++k)
            e.qc.layers[i][sites[k]] = mq::A8PerTensor::params(ranges.r[i][static_cast<std::size_t>(k)].first,
                                                               ranges.r[i][static_cast<std::size_t>(k)].second);
    e.qc.head_act = mq::A8PerTensor::params(ranges.head.first, ranges.head.second);
    return e;
}

std::filesystem::path temp_dir(const char* name) {
    auto d = std::filesystem::temp_directory_path() / (std::string("mq_qmodel_") + name);
    std::filesystem::remove_all(d);
    return d;
}

// Rewrites model.safetensors of `dir` with `edit` applied to the tensor list.
template <class F>
void rewrite_tensors(const std::filesystem::path& dir, F edit) {
    const auto f = mq::SafetensorsFile::open(dir / "model.safetensors");
    std::vector<std::vector<std::byte>> bytes;
    std::vector<mq::TensorData> ts;
    bytes.reserve(f.tensors().size());
    for (const auto& t : f.tensors()) {
        const auto b = f.bytes(t);
        bytes.emplace_back(b.begin(), b.end());
        ts.push_back({t.name, t.dtype, t.shape, {}});
    }
    edit(ts, bytes);
    for (std::size_t i = 0; i < ts.size(); ++i) ts[i].bytes = bytes[i];
    mq::save_safetensors(dir / "model.safetensors", ts, f.metadata());
}

} // namespace

TEST_CASE("quantized model: save and load give bit-identical logits, and the twin reloads too") {
    const auto e = everything_model();
    const auto m = mq::build_quantized_model(e.w, e.cfg, e.qc);
    const auto dir = temp_dir("roundtrip");
    m.save(dir);
    const auto back = mq::QuantizedMambaModel::load(dir);
    const auto tokens = some_tokens(40, 7);
    auto s0 = m.make_state();
    auto s1 = back.make_state();
    const mq::MatrixXf a = m.prefill(tokens, s0);
    const mq::MatrixXf b = back.prefill(tokens, s1);
    CHECK((a.array() == b.array()).all());
    std::vector<float> la(256), lb(256);
    m.decode(3, s0, la);
    back.decode(3, s1, lb);
    CHECK(la == lb);
    CHECK(back.bytes() == m.bytes());
    // The twin from the file equals the twin built from the weights.
    const auto twin = mq::build_quantized_model(e.w, e.cfg, e.qc, mq::FakeQuant::yes);
    const auto twin_back = mq::QuantizedMambaModel::load(dir, mq::FakeQuant::yes);
    auto s2 = twin.make_state();
    auto s3 = twin_back.make_state();
    CHECK((twin.prefill(tokens, s2).array() == twin_back.prefill(tokens, s3).array()).all());
    // Everything quantized: the model is far smaller than float.
    const auto fl = mq::build_quantized_model(mq::mamba_weights(mq::MambaModel::random(e.cfg, 9)), e.cfg, {});
    MESSAGE("tiny model bytes: float ", fl.bytes(), ", W4A8 ", m.bytes());
    CHECK(m.bytes() < fl.bytes() / 3);
}

TEST_CASE("quantized model: bad checkpoints are refused by name") {
    using doctest::Contains;
    const auto e = everything_model();
    const auto dir = temp_dir("bad");
    const auto fresh = [&] {
        std::filesystem::remove_all(dir);
        mq::build_quantized_model(e.w, e.cfg, e.qc).save(dir);
    };
    const std::string L0 = "backbone.layers.0.mixer.";
    auto drop = [&](const std::string& name) {
        rewrite_tensors(dir, [&](auto& ts, auto& bytes) {
            for (std::size_t i = 0; i < ts.size(); ++i)
                if (ts[i].name == name) {
                    ts.erase(ts.begin() + static_cast<std::ptrdiff_t>(i));
                    bytes.erase(bytes.begin() + static_cast<std::ptrdiff_t>(i));
                    return;
                }
            FAIL("no tensor ", name);
        });
    };
    auto set_float = [&](const std::string& name, std::size_t index, float value) {
        rewrite_tensors(dir, [&](auto& ts, auto& bytes) {
            for (std::size_t i = 0; i < ts.size(); ++i)
                if (ts[i].name == name) std::memcpy(bytes[i].data() + index * sizeof(float), &value, sizeof value);
        });
    };
    fresh();
    drop(L0 + "in_proj.scales");
    CHECK_THROWS_WITH_AS(mq::QuantizedMambaModel::load(dir), Contains(("\"" + L0 + "in_proj.scales\" not found").c_str()), mq::error);
    fresh();
    rewrite_tensors(dir, [&](auto& ts, auto& bytes) {
        for (std::size_t i = 0; i < ts.size(); ++i)
            if (ts[i].name == L0 + "x_proj.qweight") {
                ts[i].shape[1] -= 1; // one byte short per row
                bytes[i].resize(ts[i].shape[0] * ts[i].shape[1]);
            }
    });
    CHECK_THROWS_WITH_AS(mq::QuantizedMambaModel::load(dir), Contains((L0 + "x_proj.qweight\" has shape").c_str()), mq::error);
    for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
        CAPTURE(bad);
        fresh();
        set_float(L0 + "out_proj.scales", 3, bad);
        CHECK_THROWS_WITH_AS(mq::QuantizedMambaModel::load(dir), Contains((L0 + "out_proj.scales\": scale[").c_str()), mq::error);
        fresh();
        set_float(L0 + "dt_proj.input_quant", 0, bad);
        CHECK_THROWS_WITH_AS(mq::QuantizedMambaModel::load(dir), Contains((L0 + "dt_proj.input_quant\": activation scale").c_str()),
                             mq::error);
    }
    // quantization_config: unknown method, unknown bits, rotation of the wrong size.
    auto edit_config = [&](auto f) {
        fresh();
        std::ifstream in(dir / "config.json");
        nlohmann::json j = nlohmann::json::parse(in);
        f(j["quantization_config"]);
        std::ofstream(dir / "config.json") << j.dump(2);
    };
    edit_config([](auto& q) { q["method"] = "magic"; });
    CHECK_THROWS_WITH_AS(mq::QuantizedMambaModel::load(dir), Contains("unknown method \"magic\""), mq::error);
    edit_config([](auto& q) { q["bits"] = "w3a8"; });
    CHECK_THROWS_WITH_AS(mq::QuantizedMambaModel::load(dir), Contains("unknown bits \"w3a8\""), mq::error);
    edit_config([](auto& q) { q["sites"]["x_proj"]["weight"]["bits"] = 5; });
    CHECK_THROWS_WITH_AS(mq::QuantizedMambaModel::load(dir), Contains("sites.x_proj.weight.bits: unsupported bit width 5"),
                         mq::error);
    edit_config([](auto& q) { q["out_rotation"]["size"] = 64; });
    CHECK_THROWS_WITH_AS(mq::QuantizedMambaModel::load(dir), Contains("out_proj: rotation size 64 does not match in_features 128"),
                         mq::error);
    // A float checkpoint where a quantized one is expected, and the reverse.
    const auto float_dir = temp_dir("float");
    mq::MambaModel::random(e.cfg, 1).save(float_dir);
    CHECK_THROWS_WITH_AS(mq::QuantizedMambaModel::load(float_dir), Contains("this is a float checkpoint"), mq::error);
    fresh();
    CHECK_THROWS_WITH_AS(mq::MambaModel::load(dir), Contains("quantized checkpoint"), mq::error);
    // Float tensor where the config says quantized.
    fresh();
    rewrite_tensors(dir, [&](auto& ts, auto&) {
        for (auto& t : ts)
            if (t.name == L0 + "in_proj.qweight") t.name = L0 + "in_proj.weight";
    });
    CHECK_THROWS_WITH_AS(mq::QuantizedMambaModel::load(dir), Contains((L0 + "in_proj.weight\" is float").c_str()), mq::error);
}
