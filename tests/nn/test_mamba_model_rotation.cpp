// nn/mamba_model.hpp with an online rotation in every block: load() builds each block's rotation
// from the config's d_inner (a separate TU to keep test_mamba_model.cpp's instantiations light).
#include <mambaquant/nn/mamba_model.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <vector>

namespace {
const std::filesystem::path kTiny = std::filesystem::path(MQ_SOURCE_DIR) / "tests" / "golden" / "tiny-mamba" / "hf";

std::vector<std::uint32_t> tokens(std::size_t n, std::uint32_t vocab) {
    std::vector<std::uint32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::uint32_t>((i * 37 + 11) % vocab);
    return t;
}
} // namespace

TEST_CASE("BasicMambaModel<… HadamardOnline …>::load takes the rotation size from the config") {
    using FloatModel = mq::BasicMambaModel<mq::MambaBlock<>>;
    using RotatedW8A8 = mq::BasicMambaModel<mq::MambaBlock<mq::W8PerChannel, mq::A8PerToken, mq::HadamardOnline>>;
    const FloatModel f = FloatModel::load(kTiny);
    const RotatedW8A8 q = RotatedW8A8::load(kTiny); // threw "rotation size is 0" before
    const std::size_t E = f.config().d_inner;
    REQUIRE(q.layers().size() == f.layers().size());
    for (const auto& block : q.layers()) CHECK(block.out_proj().input_rotation().size() == E);
    const auto t = tokens(24, f.config().vocab_size);
    auto sf = f.make_state();
    auto sq = q.make_state();
    const mq::MatrixXf lf = f.prefill(t, sf), lq = q.prefill(t, sq);
    // W8A8 with the rotation folded into out_proj: the same function up to quantization error
    // (the un-rotated W8A8 model stays within 5 % on this model, test_mamba_model.cpp).
    const double rel = double((lq - lf).norm() / lf.norm());
    CAPTURE(rel);
    CHECK(rel < 0.05);
    CHECK(rel > 1e-6);
}
