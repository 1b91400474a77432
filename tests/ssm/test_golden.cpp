// The scan and conv1d against PyTorch golden data (tools/make_scan_golden.py, mamba's
// selective_scan_ref and F.conv1d), read from small committed safetensors files.
#include <mambaquant/ssm/conv1d.hpp>
#include <mambaquant/ssm/selective_scan.hpp>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

namespace {

// A minimal F32-only safetensors reader for the golden files (the library's io/ has the real one).
struct Golden {
    std::map<std::string, mq::MatrixXf> tensors;
    nlohmann::json metadata;

    explicit Golden(const std::string& name) {
        const std::string path = std::string(MQ_SOURCE_DIR) + "/tests/golden/" + name;
        std::ifstream in(path, std::ios::binary);
        REQUIRE_MESSAGE(in.good(), "cannot open ", path);
        const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        REQUIRE(bytes.size() >= 8);
        std::uint64_t header_len = 0;
        for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
        REQUIRE(8 + header_len <= bytes.size());
        const auto header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(header_len));
        const char* data = bytes.data() + 8 + header_len;
        for (const auto& [key, info] : header.items()) {
            if (key == "__metadata__") {
                metadata = info;
                continue;
            }
            REQUIRE(info["dtype"] == "F32");
            const auto shape = info["shape"].get<std::vector<std::size_t>>();
            const auto off = info["data_offsets"].get<std::vector<std::size_t>>();
            const std::size_t rows = shape.size() == 2 ? shape[0] : 1, cols = shape.back();
            REQUIRE(off[1] - off[0] == rows * cols * sizeof(float));
            REQUIRE(8 + header_len + off[1] <= bytes.size());
            mq::MatrixXf m(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
            std::memcpy(m.data(), data + off[0], rows * cols * sizeof(float));
            tensors.emplace(key, std::move(m));
        }
    }
    bool has(const std::string& k) const { return tensors.count(k) != 0; }
    const mq::MatrixXf& operator[](const std::string& k) const {
        REQUIRE_MESSAGE(has(k), "golden tensor ", k, " missing");
        return tensors.at(k);
    }
};

std::span<const float> flat(const mq::MatrixXf& m) { return {m.data(), static_cast<std::size_t>(m.size())}; }

void check_scan_golden(const std::string& file) {
    CAPTURE(file);
    const Golden g(file);
    const bool softplus = g.metadata["delta_softplus"] == "true";
    const auto w = mq::ScanWeights::from_A(mq::view(g["A"]), g.has("D") ? flat(g["D"]) : std::span<const float>{},
                                           g.has("delta_bias") ? flat(g["delta_bias"]) : std::span<const float>{});
    const auto L = static_cast<std::size_t>(g["x"].rows()), E = w.channels(), N = w.state_size();
    mq::ScanInputs in;
    in.x = mq::view(g["x"]);
    in.delta = mq::view(g["delta"]);
    in.B = mq::view(g["B"]);
    in.C = mq::view(g["C"]);
    if (g.has("z")) in.z = mq::view(g["z"]);
    in.delta_softplus = softplus;
    mq::ScanCache<float> cache(E, N);
    cache.state = g["initial_state"];
    mq::MatrixXf y(static_cast<Eigen::Index>(L), static_cast<Eigen::Index>(E));
    mq::selective_scan(mq::PlainScan{}, w, in, cache, mq::view(y));
    const auto& want = g["y"];
    const auto& mag = g["y_magnitude"];
    double worst = 0.0;
    for (Eigen::Index i = 0; i < y.size(); ++i)
        worst = std::max(worst, std::fabs(double(y.data()[i]) - want.data()[i]) / std::max(double(mag.data()[i]), 1e-30));
    MESSAGE(file, ": max |y − torch| / magnitude = ", worst);
    CHECK(worst <= 1e-5);
    const auto& state = g["final_state"];
    double worst_state = 0.0, max_state = 0.0;
    for (Eigen::Index i = 0; i < state.size(); ++i) {
        worst_state = std::max(worst_state, double(std::fabs(cache.state.data()[i] - state.data()[i])));
        max_state = std::max(max_state, double(std::fabs(state.data()[i])));
    }
    CHECK(worst_state <= 1e-5 * max_state);

    // The step form over the same tokens lands on the same outputs.
    mq::ScanCache<float> step_cache(E, N);
    step_cache.state = g["initial_state"];
    mq::MatrixXf y_steps(static_cast<Eigen::Index>(L), static_cast<Eigen::Index>(E));
    for (std::size_t t = 0; t < L; ++t) {
        mq::ScanStepInputs s{in.x.row(t), in.delta.row(t), in.B.row(t), in.C.row(t),
                             in.z.data ? in.z.row(t) : std::span<const float>{}, softplus};
        mq::selective_scan_step(mq::PlainScan{}, w, s, step_cache, std::span<float>(y_steps.data() + t * E, E));
    }
    CHECK((y_steps.array() == y.array()).all());
}

} // namespace

TEST_CASE("golden: selective_scan matches mamba's selective_scan_ref (PyTorch)") {
    check_scan_golden("scan_softplus_gated.safetensors"); // softplus + dt bias, D, z, E = 37 (a tail)
    check_scan_golden("scan_carried_state.safetensors");  // non-zero initial state, no D, no z
}

TEST_CASE("golden: causal_conv1d matches PyTorch's Conv1d(groups=E, padding=K−1) + SiLU") {
    const Golden g("conv1d_k4.safetensors");
    const auto w = mq::ConvWeights::from(mq::view(g["weight"]), flat(g["bias"]));
    const auto& x = g["x"];
    mq::MatrixXf y(x.rows(), x.cols());
    mq::causal_conv1d(w, mq::view(x), nullptr, mq::view(y));
    const auto& want = g["y"];
    for (Eigen::Index i = 0; i < y.size(); ++i)
        CHECK(y.data()[i] == doctest::Approx(want.data()[i]).epsilon(1e-5).scale(1.0));
    // Decoding token by token with the rolling window gives the same outputs.
    mq::ConvCache cache(w.channels(), w.taps());
    mq::MatrixXf y_steps(x.rows(), x.cols());
    for (Eigen::Index t = 0; t < x.rows(); ++t)
        mq::causal_conv1d_step(w, {x.data() + t * x.cols(), static_cast<std::size_t>(x.cols())}, cache,
                               {y_steps.data() + t * x.cols(), static_cast<std::size_t>(x.cols())});
    CHECK((y_steps.array() == y.array()).all());
}
