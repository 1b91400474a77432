// MambaBlock's run-time parts: dt shift, S-SiLU, carried-state scale (S4), R2 — each against the
// untransformed block, and each refused when the block's policies cannot apply it.
#include <mambaquant/nn/mamba_block.hpp>
#include <mambaquant/nn/mamba_model.hpp>
#include <mambaquant/transform/fusion.hpp>
#include <mambaquant/transform/smoothing.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace {

constexpr std::size_t kD = 64, kE = 128, kN = 16, kR = 4, kK = 4;

mq::MambaLayerWeights layer() {
    mq::MambaConfig c;
    c.d_model = kD;
    c.n_layer = 1;
    c.vocab_size = c.padded_vocab = 32;
    c.d_state = kN;
    c.d_conv = kK;
    c.d_inner = kE;
    c.dt_rank = kR;
    return mq::MambaModel::random(c, 21).layers()[0].weights();
}

mq::MatrixXf input(Eigen::Index L, unsigned seed) {
    mq::MatrixXf h(L, static_cast<Eigen::Index>(kD));
    for (Eigen::Index i = 0; i < h.size(); ++i) h.data()[i] = std::sin(0.37f * static_cast<float>(i) + static_cast<float>(seed));
    return h;
}

// The transforms are exact in real arithmetic; in float each rescaled weight carries one rounding
// (2⁻²⁴ relative) and each output is a sum of ≤ E·N ≈ 2e3 such terms, so the block outputs agree
// to ~1e-5 of their magnitude; 1e-4 of the largest |output| leaves room without hiding a mistake
// (a wrong scale moves outputs by O(1) of their magnitude).
void check_close(const mq::MatrixXf& a, const mq::MatrixXf& b) {
    REQUIRE(a.rows() == b.rows());
    const double err = (a - b).cwiseAbs().maxCoeff(), scale = b.cwiseAbs().maxCoeff();
    CAPTURE(err);
    CAPTURE(scale);
    CHECK(err <= 1e-4 * scale);
}

template <class Block>
mq::MatrixXf run(const Block& b, mq::MatrixXf h, mq::MambaCache& cache) {
    typename Block::Workspace ws;
    b.forward(h, cache, ws);
    return h;
}

} // namespace

TEST_CASE("MambaBlock: the dt shift runs as x_proj's dt bias, no run-time shift") {
    const auto w = layer();
    const auto shifted = mq::apply_dt_shift(w, Eigen::VectorXd::LinSpaced(kR, -0.4, 0.7));
    const mq::FloatMambaBlock ref(w, kD, kE, kN, kR, kK, 1e-5f), blk(shifted, kD, kE, kN, kR, kK, 1e-5f);
    // −μ sits in x_proj's bias: the GEMM epilogue adds it, a + (−μ) ≡ a − μ in IEEE arithmetic.
    REQUIRE(blk.x_proj().bias().size() == kR + 2 * kN);
    CHECK(blk.x_proj().bias()[0] == doctest::Approx(0.4));
    CHECK(blk.x_proj().bias()[kR] == 0.0f);
    auto c0 = ref.make_cache();
    auto c1 = blk.make_cache();
    check_close(run(blk, input(24, 1), c1), run(ref, input(24, 1), c0));
    CHECK(blk.weights().dt_shift.isApprox(shifted.dt_shift));
}

TEST_CASE("MambaBlock: S-SiLU gate in the scan epilogue") {
    const auto w = layer();
    const auto smoothed = mq::apply_gate_smoothing(w, Eigen::VectorXd::LinSpaced(kE, 0.25, 4.0));
    const mq::FloatMambaBlock ref(w, kD, kE, kN, kR, kK, 1e-5f), blk(smoothed, kD, kE, kN, kR, kK, 1e-5f);
    REQUIRE(blk.scan_weights().gate_scale.size() == kE);
    auto c0 = ref.make_cache();
    auto c1 = blk.make_cache();
    check_close(run(blk, input(24, 2), c1), run(ref, input(24, 2), c0));
}

TEST_CASE("MambaBlock: carried-state scale (S4) — zero state, chunked prefill, decode, carried plain state") {
    const auto w = layer();
    const Eigen::VectorXd s = Eigen::VectorXd::LinSpaced(kN, 0.3, 5.0);
    const auto sw = mq::apply_state_smoothing(w, s);
    const std::vector<float> sf(sw.state_scale.data(), sw.state_scale.data() + kN);
    using Smoothed = mq::MambaBlock<mq::FloatPolicy, mq::FloatPolicy, mq::NoRotation, mq::SmoothedScan>;
    const mq::FloatMambaBlock ref(w, kD, kE, kN, kR, kK, 1e-5f);
    const Smoothed blk(sw, kD, kE, kN, kR, kK, 1e-5f, mq::SmoothedScan(sf));
    const mq::MatrixXf h = input(20, 3);
    SUBCASE("zero state, whole prefill") {
        auto c0 = ref.make_cache();
        auto c1 = blk.make_cache();
        check_close(run(blk, h, c1), run(ref, h, c0));
        CHECK(c1.scan.domain == mq::StateDomain::smoothed);
        const mq::MatrixXf plain = c1.scan.plain_state(sf);
        CHECK((plain - c0.scan.state).cwiseAbs().maxCoeff() <= 1e-4 * c0.scan.state.cwiseAbs().maxCoeff());
    }
    SUBCASE("prefill continuing a cache, then decode steps") {
        auto c0 = ref.make_cache();
        auto c1 = blk.make_cache();
        const mq::MatrixXf whole = run(ref, h, c0);
        check_close(run(blk, h.topRows(12), c1), whole.topRows(12));
        check_close(run(blk, h.middleRows(12, 5), c1), whole.middleRows(12, 5));
        for (Eigen::Index t = 17; t < 20; ++t) check_close(run(blk, h.middleRows(t, 1), c1), whole.middleRows(t, 1));
    }
    SUBCASE("a carried plain state (e.g. from a float prefill) is absorbed in the first step") {
        auto c0 = ref.make_cache();
        const mq::MatrixXf warm = input(9, 4);
        run(ref, warm, c0); // c0: plain state after 9 tokens
        auto c1 = c0;       // the smoothed block continues from the same plain state
        REQUIRE(c1.scan.domain == mq::StateDomain::plain);
        check_close(run(blk, h, c1), run(ref, h, c0));
    }
}

TEST_CASE("MambaBlock: R2 out_rotation runs as the HadamardOnline policy") {
    const auto w = layer();
    const mq::HadamardOnline rot(kE, 5);
    const auto rw = mq::rotate_out_proj_input(w, mq::detail::online_rotation_matrix(rot, kE).cast<double>());
    using Rotated = mq::MambaBlock<mq::FloatPolicy, mq::FloatPolicy, mq::HadamardOnline>;
    const mq::FloatMambaBlock ref(w, kD, kE, kN, kR, kK, 1e-5f);
    const Rotated blk(rw, kD, kE, kN, kR, kK, 1e-5f, {}, rot);
    auto c0 = ref.make_cache();
    auto c1 = blk.make_cache();
    check_close(run(blk, input(16, 5), c1), run(ref, input(16, 5), c0));
}

TEST_CASE("MambaBlock: what the policies cannot apply is refused") {
    using doctest::Contains;
    const auto w = layer();
    const auto sw = mq::apply_state_smoothing(w, Eigen::VectorXd::Constant(kN, 2.0));
    CHECK_THROWS_WITH_AS(mq::FloatMambaBlock(sw, kD, kE, kN, kR, kK, 1e-5f), Contains("state_scale (S4) needs a SmoothedScan"),
                         mq::error);
    using Smoothed = mq::MambaBlock<mq::FloatPolicy, mq::FloatPolicy, mq::NoRotation, mq::SmoothedScan>;
    const std::vector<float> other(kN, 3.0f);
    CHECK_THROWS_WITH_AS(Smoothed(sw, kD, kE, kN, kR, kK, 1e-5f, mq::SmoothedScan(other)), Contains("state_scale[0] = 2"),
                         mq::error);
    const auto rw = mq::rotate_out_proj_input(w, mq::detail::online_rotation_matrix(mq::HadamardOnline(kE, 5), kE).cast<double>());
    CHECK_THROWS_WITH_AS(mq::FloatMambaBlock(rw, kD, kE, kN, kR, kK, 1e-5f), Contains("OutRotation is the identity"), mq::error);
    using Rotated = mq::MambaBlock<mq::FloatPolicy, mq::FloatPolicy, mq::HadamardOnline>;
    CHECK_THROWS_WITH_AS(Rotated(rw, kD, kE, kN, kR, kK, 1e-5f, {}, mq::HadamardOnline(kE, 6)),
                         Contains("out_rotation differs"), mq::error);
    auto r4 = w;
    r4.state_rotation = mq::MatrixXf::Identity(kN, kN);
    CHECK_THROWS_WITH_AS(mq::FloatMambaBlock(r4, kD, kE, kN, kR, kK, 1e-5f), Contains("state_rotation (R4) needs a QuantizedScan"),
                         mq::error);
}

TEST_CASE("MambaBlock: its conv and scan run on the arch picked at construction; AVX2 and the CPU's best give the same bits") {
    const auto w = layer();
    mq::set_arch(mq::arch_id::avx2);
    const mq::FloatMambaBlock narrow(w, kD, kE, kN, kR, kK, 1e-5f);
    mq::reset_arch(); // the block keeps AVX2; `best` takes the CPU's best (capped by MQ_ARCH)
    const mq::FloatMambaBlock best(w, kD, kE, kN, kR, kK, 1e-5f);
    MESSAGE("MambaBlock arch: ", std::string(mq::arch_name(mq::runnable_arch(mq::active_arch()))), " beside avx2");
    auto c0 = narrow.make_cache();
    auto c1 = best.make_cache();
    // kE = 128: 16-lane conv and scan blocks on avx512vnni, each channel's arithmetic the AVX2 one's.
    const mq::MatrixXf a = run(narrow, input(24, 3), c0), b = run(best, input(24, 3), c1);
    CHECK((a.array() == b.array()).all());
    const mq::MatrixXf a1 = run(narrow, input(1, 4), c0), b1 = run(best, input(1, 4), c1); // a decode step
    CHECK((a1.array() == b1.array()).all());
}
