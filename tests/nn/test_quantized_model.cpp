// The run-time quantized model: float path, integer path vs its fake-quant twin, determinism.
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/nn/mamba_model.hpp>
#include <mambaquant/nn/quantized_model.hpp>
#include <mambaquant/transform/fusion.hpp>
#include <mambaquant/transform/smoothing.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <new>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

// The run-time scan is a scan policy like the compile-time ones (checked here rather than in the
// header, where the check would build its variant in every includer).
static_assert(mq::ScanPolicy<mq::RuntimeScan>);

// GCC 12 flags the replaced operator delete's free() as "mismatched" wherever it inlines a library
// allocation of this TU; the pair below is malloc/free (and aligned_alloc/free) throughout.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

// A counting allocator: every operator new of the binary counts while `g_counting` is set (the
// steady-state decode step must allocate nothing).
namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};
} // namespace
void* operator new(std::size_t n) {
    if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a) {
    if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
    const std::size_t al = static_cast<std::size_t>(a);
    if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

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

// A W4A8 (per group 128, static per-tensor activations, the integer conv) + R2 + S-SiLU + S4 + dt
// shift model: every part save() must carry. Static params from a float pass's ranges (a stand-in for calibration).
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
    e.qc[mq::Site::conv1d].act = mq::ActQuant{mq::ActMode::static_per_tensor, 8, false}; // the integer conv
    e.qc[mq::Site::out_proj].weight = mq::QuantSpec{4, mq::GranularityKind::per_group, false, 128}; // E = 128
    e.qc.out_rotation = mq::RotationSpec{mq::RotationKind::randomized_hadamard, e.cfg.d_inner, 77, 0};
    // Static params: the float model's per-tensor ranges at each site (what calibration would give).
    struct Ranges : mq::ActivationTap {
        std::vector<std::array<std::pair<float, float>, 5>> r;
        std::pair<float, float> head{0.0f, 0.0f};
        void on_activation(std::size_t layer, mq::TapPoint p, mq::ConstMatrixView<float> v) override {
            int k = p == mq::TapPoint::in_proj_input ? 0 : p == mq::TapPoint::x_proj_input ? 1
                  : p == mq::TapPoint::dt_proj_input ? 2 : p == mq::TapPoint::out_proj_input ? 3
                  : p == mq::TapPoint::conv_input ? 4 : -1;
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
    const mq::Site sites[5] = {mq::Site::in_proj, mq::Site::x_proj, mq::Site::dt_proj, mq::Site::out_proj, mq::Site::conv1d};
    for (std::size_t i = 0; i < e.cfg.n_layer; ++i)
        for (int k = 0; k < 5; ++k)
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
    // The float model (tied: one table) round-trips too.
    const auto fdir = temp_dir("float_roundtrip");
    const auto fm = mq::build_quantized_model(mq::mamba_weights(mq::MambaModel::random(e.cfg, 2)), e.cfg, {});
    fm.save(fdir);
    const auto fback = mq::QuantizedMambaModel::load(fdir);
    auto s4 = fm.make_state();
    auto s5 = fback.make_state();
    CHECK((fm.prefill(tokens, s4).array() == fback.prefill(tokens, s5).array()).all());
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
        set_float(L0 + "conv1d.input_quant", 0, bad);
        CHECK_THROWS_WITH_AS(mq::QuantizedMambaModel::load(dir), Contains((L0 + "conv1d.input_quant\": activation scale").c_str()),
                             mq::error);
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

TEST_CASE("quantized model: the steady-state decode step allocates nothing") {
    const auto cfg = tiny_config();
    const auto w = mq::mamba_weights(mq::MambaModel::random(cfg, 6));
    for (int bits : {8, 4}) {
        CAPTURE(bits);
        auto m = mq::build_quantized_model(w, cfg, mq::uniform_quantization_config(bits, 0, mq::ActMode::dynamic_per_token));
        for (mq::ThreadPool* pool : {static_cast<mq::ThreadPool*>(nullptr), &mq::default_thread_pool()}) {
            m.set_thread_pool(pool);
            auto s = m.make_state();
            std::vector<float> logits(cfg.padded_vocab);
            m.prefill(some_tokens(8, 1), s, mq::Logits::none);
            m.decode(1, s, logits); // warm: the decode-sized buffers
            g_allocations = 0;
            g_counting = true;
            for (std::uint32_t t = 0; t < 5; ++t) m.decode(t + 2, s, logits);
            g_counting = false;
            CHECK(g_allocations.load() == 0);
        }
    }
}

namespace {

// max |a − b| / max |b|
double rel_diff(const mq::MatrixXf& a, const mq::MatrixXf& b) {
    REQUIRE(a.rows() == b.rows());
    return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / static_cast<double>(b.cwiseAbs().maxCoeff());
}

mq::MatrixXf all_logits(const mq::QuantizedMambaModel& m, const std::vector<std::uint32_t>& tokens, std::size_t chunk = 256) {
    auto s = m.make_state();
    s.chunk_tokens = chunk;
    return m.prefill(tokens, s);
}

} // namespace

TEST_CASE("quantized model: chunked prefill is bit-identical to one pass (per-token and static activations)") {
    const auto cfg = tiny_config();
    const auto w = mq::mamba_weights(mq::MambaModel::random(cfg, 8));
    const auto e = everything_model(); // static per tensor, R2, S-SiLU, S4, dt shift
    const auto tokens = some_tokens(45, 3); // chunks of 8: five of them and a 5-row tail
    const std::vector<std::pair<std::string, mq::QuantizedMambaModel>> models = [&] {
        std::vector<std::pair<std::string, mq::QuantizedMambaModel>> v;
        v.emplace_back("float", mq::build_quantized_model(w, cfg, {}));
        v.emplace_back("W8A8 per token", mq::build_quantized_model(w, cfg, mq::uniform_quantization_config(8, 0, mq::ActMode::dynamic_per_token)));
        v.emplace_back("W4A8 static + extras", mq::build_quantized_model(e.w, e.cfg, e.qc));
        return v;
    }();
    for (const auto& [name, m] : models) {
        CAPTURE(name);
        auto one = m.make_state();
        auto chunked = m.make_state();
        chunked.chunk_tokens = 8;
        const mq::MatrixXf a = m.prefill(tokens, one);
        const mq::MatrixXf b = m.prefill(tokens, chunked);
        CHECK((a.array() == b.array()).all());
        // The caches carried across chunks: the next decode step agrees too, and so does Logits::last.
        std::vector<float> la(256), lb(256);
        m.decode(7, one, la);
        m.decode(7, chunked, lb);
        CHECK(la == lb);
        auto last_one = m.make_state();
        auto last_chunked = m.make_state();
        last_chunked.chunk_tokens = 8;
        CHECK((m.prefill(tokens, last_one, mq::Logits::last).array() == m.prefill(tokens, last_chunked, mq::Logits::last).array()).all());
    }
    auto s = models[0].second.make_state();
    s.chunk_tokens = 6;
    CHECK_THROWS_WITH_AS(models[0].second.prefill(tokens, s), doctest::Contains("chunk_tokens must be a positive multiple of 4"),
                         mq::error);
}

// The transforms are exact in real arithmetic; in float each rescaled or rotated weight carries one
// rounding (2⁻²⁴ relative) and each output is a sum of ≤ E·N ≈ 2e3 such terms, so a layer's output
// agrees to ~1e-5 of its magnitude (tests/nn/test_mamba_block.cpp), and two layers and the head add
// as much again: 1e-4 of the largest |logit| leaves room without hiding a mistake. Each case also
// runs a wrong model (one part of the transform left out) that must miss by 10× that tolerance.
constexpr double kTransformTol = 1e-4;

TEST_CASE("quantized model: the dt shift is folded (x_proj's dt bias), so the model equals the unshifted one") {
    const auto cfg = tiny_config();
    const auto w = mq::mamba_weights(mq::MambaModel::random(cfg, 10));
    auto shifted = w;
    for (auto& l : shifted.layers) l = mq::apply_dt_shift(l, Eigen::VectorXd::LinSpaced(static_cast<Eigen::Index>(cfg.dt_rank), -0.4, 0.7));
    const auto tokens = some_tokens(24, 4);
    const mq::MatrixXf ref = all_logits(mq::build_quantized_model(w, cfg, {}), tokens);
    const auto m = mq::build_quantized_model(shifted, cfg, {});
    // No run-time shift: −μ is x_proj's bias on its dt rows, added in the GEMM's epilogue.
    REQUIRE(m.layers()[0].x_proj().bias().size() == cfg.dt_rank + 2 * cfg.d_state);
    CHECK(m.layers()[0].x_proj().bias()[0] == doctest::Approx(0.4));
    const double err = rel_diff(all_logits(m, tokens), ref);
    MESSAGE("dt shift folded vs unshifted: max |logit difference| / max |logit| = ", err);
    CHECK(err <= kTransformTol);
    // b_dt holds W_dt·μ; without x_proj's −μ the model is not the same model.
    auto unfolded = shifted;
    for (auto& l : unfolded.layers) l.dt_shift.setZero();
    const double wrong = rel_diff(all_logits(mq::build_quantized_model(unfolded, cfg, {}), tokens), ref);
    MESSAGE("without the x_proj bias: ", wrong);
    CHECK(wrong > 10 * kTransformTol);
}

TEST_CASE("quantized model: S-SiLU, the state scale (S4) and R2 transform the float model without changing it") {
    const auto cfg = tiny_config();
    const auto w = mq::mamba_weights(mq::MambaModel::random(cfg, 11));
    const auto E = static_cast<Eigen::Index>(cfg.d_inner), N = static_cast<Eigen::Index>(cfg.d_state);
    const mq::RotationSpec r2{mq::RotationKind::randomized_hadamard, cfg.d_inner, 77, 0};
    auto t = w;
    for (auto& l : t.layers) {
        l = mq::apply_gate_smoothing(l, Eigen::VectorXd::LinSpaced(E, 0.25, 4.0));
        l = mq::apply_state_smoothing(l, Eigen::VectorXd::LinSpaced(N, 0.3, 5.0));
        l = mq::rotate_out_proj_input(l, mq::detail::online_rotation_matrix(mq::HadamardOnline::from_spec(r2), cfg.d_inner).cast<double>());
    }
    mq::QuantizationConfig qc; // float sites: the transform alone
    qc.out_rotation = r2;
    const auto tokens = some_tokens(24, 5);
    const mq::MatrixXf ref = all_logits(mq::build_quantized_model(w, cfg, {}), tokens);
    const double err = rel_diff(all_logits(mq::build_quantized_model(t, cfg, qc), tokens), ref);
    MESSAGE("S-SiLU + S4 + R2 vs float: ", err);
    CHECK(err <= kTransformTol);
    auto no_gate = t; // W_gate still divided by s, but a plain SiLU gate: SiLU(z/s) ≠ SiLU(z)/s
    for (auto& l : no_gate.layers) l.gate_scale.setOnes();
    const double wrong = rel_diff(all_logits(mq::build_quantized_model(no_gate, cfg, qc), tokens), ref);
    MESSAGE("without the S-SiLU gate: ", wrong);
    CHECK(wrong > 10 * kTransformTol);
}

namespace {
// Layer 0's out_proj input (the gated scan output y ⊙ gate), as the model runs it.
struct ScanOutputTap : mq::ActivationTap {
    mq::MatrixXf y;
    void on_activation(std::size_t layer, mq::TapPoint p, mq::ConstMatrixView<float> v) override {
        if (layer == 0 && p == mq::TapPoint::out_proj_input) y = mq::as_eigen(v);
    }
};
mq::MatrixXf layer0_scan_output(const mq::QuantizedMambaModel& m, const std::vector<std::uint32_t>& tokens) {
    ScanOutputTap tap;
    auto s = m.make_state();
    m.prefill(tokens, s, mq::Logits::none, &tap);
    return tap.y;
}
} // namespace

TEST_CASE("quantized model: R4 with the int8 state·C, on top of S-SiLU, S4 and R2") {
    // Only the scan output is quantized (A8 per token, both operands; D = 0 so that y is the state·C
    // term alone), so layer 0 of the transformed model differs from the float model by that
    // quantization only (its inputs agree to float rounding, kTransformTol). Per token, with
    // M_S = max|S|, M_C = max|C| and steps s ≤ 2M/255 (asymmetric, round to nearest: error ≤ s/2),
    //   |ŷ − y| ≤ Σ_n (|S_n|·s_C/2 + |C_n|·s_S/2 + s_S·s_C/4) ≤ N·M_S·M_C·(2/255 + 1/255²),
    // while max_d |y| ≳ M_S·M_C·√N (N terms of random sign: a typical size, not a worst case), so
    // relative to the largest output the error is ≲ 2√N/255 ≈ 0.031 (N = 16; measured 0.026). y ⊙ S-SiLU is compared as (y/s)·s. With C rotated
    // by one Hadamard and the state by another, state·(C·H₁)ᵀ·… loses C·Hᵀ·H = C: an O(1) error.
    const auto cfg = tiny_config();
    auto w = mq::mamba_weights(mq::MambaModel::random(cfg, 12));
    for (auto& l : w.layers) l.D.setZero();
    const auto E = static_cast<Eigen::Index>(cfg.d_inner), N = static_cast<Eigen::Index>(cfg.d_state);
    const Eigen::VectorXd gate = Eigen::VectorXd::LinSpaced(E, 0.5, 2.0);
    const mq::RotationSpec r2{mq::RotationKind::randomized_hadamard, cfg.d_inner, 77, 0};
    const mq::RotationSpec r4{mq::RotationKind::randomized_hadamard, cfg.d_state, 5, 0};
    auto transformed = [&](const mq::RotationSpec& c_rotation) {
        auto t = w;
        for (auto& l : t.layers) {
            l = mq::apply_gate_smoothing(l, gate);
            l = mq::apply_state_smoothing(l, Eigen::VectorXd::LinSpaced(N, 0.5, 4.0));
            l = mq::rotate_out_proj_input(l, mq::detail::online_rotation_matrix(mq::HadamardOnline::from_spec(r2), cfg.d_inner).cast<double>());
            l = mq::rotate_state(l, mq::rotation_matrix<double>(c_rotation));
            l.state_rotation = mq::rotation_matrix<double>(r4).cast<float>(); // what the scan applies
        }
        return t;
    };
    mq::QuantizationConfig qc;
    qc[mq::Site::scan_output].act = mq::ActQuant{mq::ActMode::dynamic_per_token, 8, false};
    qc.out_rotation = r2;
    qc.state_rotation = r4;
    const auto tokens = some_tokens(24, 6);
    const auto ref_model = mq::build_quantized_model(w, cfg, {});
    const mq::MatrixXf ref = layer0_scan_output(ref_model, tokens);
    auto unsmoothed = [&](mq::MatrixXf y) { // (y/s)·s
        for (Eigen::Index d = 0; d < E; ++d) y.col(d) *= static_cast<float>(gate[d]);
        return y;
    };
    const double tol = 2.0 * std::sqrt(static_cast<double>(N)) / 255.0;
    const auto m = mq::build_quantized_model(transformed(r4), cfg, qc);
    const double err = rel_diff(unsmoothed(layer0_scan_output(m, tokens)), ref);
    MESSAGE("S-SiLU + S4 + R2 + R4, int8 state·C vs float, layer 0 scan output: ", err, " (bound ", tol, ")");
    CHECK(err <= tol);
    const double logit_err = rel_diff(all_logits(m, tokens), all_logits(ref_model, tokens));
    MESSAGE("logits (both layers): ", logit_err);
    // The twin runs the same quantized scan: identical (all other sites are float).
    const auto twin = mq::build_quantized_model(transformed(r4), cfg, qc, mq::FakeQuant::yes);
    CHECK((all_logits(twin, tokens).array() == all_logits(m, tokens).array()).all());
    const mq::RotationSpec other{mq::RotationKind::randomized_hadamard, cfg.d_state, 6, 0};
    const double wrong = rel_diff(unsmoothed(layer0_scan_output(mq::build_quantized_model(transformed(other), cfg, qc), tokens)), ref);
    MESSAGE("C rotated by another Hadamard than the state: ", wrong);
    CHECK(wrong > 10 * tol);
}
