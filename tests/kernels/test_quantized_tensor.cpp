// kernels/quantized_tensor.hpp: every symmetric policy (bits 2..8 × 5 granularities; the asymmetric
// half is test_quantized_tensor_asymmetric.cpp), static and dynamic, checked against the scalar
// formulas of params.hpp; zero/constant rows; bad input.
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/quantized_tensor.hpp>

#include "kernels/quantized_tensor_checker.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace {

using mqtest::heavy_tailed;

mq::QuantSpec spec(int bits, mq::GranularityKind g, bool sym, std::size_t group = 0) {
    mq::QuantSpec s;
    s.bits = bits;
    s.granularity = g;
    s.symmetric = sym;
    s.group = group;
    return s;
}

std::uint32_t ulp_distance(float a, float b) {
    const auto ia = std::bit_cast<std::int32_t>(a), ib = std::bit_cast<std::int32_t>(b);
    return static_cast<std::uint32_t>(ia > ib ? ia - ib : ib - ia); // same sign only
}

using Q8t = mq::A8PerToken;
using Q4g = mq::W4PerGroup<128>;
using QT = mq::A8PerTensor;

template <class F>
std::string message_of(F&& f) {
    try {
        f();
    } catch (const mq::error& e) {
        return e.what();
    }
    return "(no exception)";
}

} // namespace

TEST_CASE("every policy, symmetric: bits 2..8 x per_tensor/per_channel/per_token/per_group<64|128>, dynamic and static") {
    // Σ over bits 2..8 of 5 granularities × bits: every combination ran (the asymmetric half is
    // test_quantized_tensor_asymmetric.cpp, a separate translation unit so the two compile in parallel).
    CHECK(mqtest::check_every_policy<mq::symmetric>(std::make_integer_sequence<int, 7>{}) == 5 * (2 + 3 + 4 + 5 + 6 + 7 + 8));
}

TEST_CASE("visit_quantizer maps a run-time spec onto the Quantizer type") {
    auto name = [](const mq::QuantSpec& s) {
        return mq::visit_quantizer(s, []<class Q>(std::type_identity<Q>) {
            return std::to_string(Q::bits) + mq::detail::granularity_label<typename Q::granularity>() + Q::symmetry::name;
        });
    };
    CHECK(name(spec(4, mq::GranularityKind::per_group, true, 32)) == "4per_group<32>symmetric");
    CHECK(name(spec(8, mq::GranularityKind::per_token, false)) == "8per_tokenasymmetric");
    CHECK(name(spec(3, mq::GranularityKind::per_group, false, 256)) == "3per_group<256>asymmetric");
    CHECK(name(spec(2, mq::GranularityKind::per_channel, true)) == "2per_channelsymmetric");
}

TEST_CASE("bits outside [2, 8] and unsupported run-time group sizes are errors") {
    CHECK_THROWS_WITH_AS(spec(9, mq::GranularityKind::per_token, false).validate(), "QuantSpec: bits must be in [2, 8], got 9", mq::error);
    CHECK_THROWS_WITH_AS(spec(1, mq::GranularityKind::per_token, false).validate(), "QuantSpec: bits must be in [2, 8], got 1", mq::error);
    CHECK_THROWS_WITH_AS(spec(0, mq::GranularityKind::per_tensor, true).validate(), "QuantSpec: bits must be in [2, 8], got 0", mq::error);
    CHECK_THROWS_AS(mq::visit_quantizer(spec(16, mq::GranularityKind::per_token, false), [](auto) { return 0; }), mq::error);
    CHECK_THROWS_WITH_AS(spec(4, mq::GranularityKind::per_group, true, 100).validate(),
                         "QuantSpec: group size must be one of 32, 64, 128, 256 for per_group, got 100", mq::error);
    CHECK_NOTHROW(spec(2, mq::GranularityKind::per_group, true, 256).validate());
    // Compile-time bits outside [2, 8] are a static_assert in Quantizer (not testable at run time).
}

TEST_CASE("zero rows quantize to the zero code and dequantize exactly; constant rows within 1 ulp") {
    auto check_zero = [](auto tag) {
        using Q = typename decltype(tag)::type;
        mq::MatrixXf x = mq::MatrixXf::Zero(3, 256);
        x.row(1).setConstant(-0.0f);
        const auto t = mq::quantize_tensor<Q>(mq::view(x));
        for (const auto& p : t.params) {
            CHECK(p.scale == 1.0f);
            CHECK(p.zero == 0);
        }
        for (auto c : t.codes) CHECK(int(c) == 0);
        const mq::MatrixXf back = t.dequantize();
        CHECK((back.array() == 0.0f).all());
    };
    check_zero(std::type_identity<Q8t>{});
    check_zero(std::type_identity<mq::Quantizer<8, mq::per_token, mq::symmetric>>{});
    check_zero(std::type_identity<Q4g>{});
    check_zero(std::type_identity<mq::Quantizer<2, mq::per_tensor, mq::asymmetric>>{});
    check_zero(std::type_identity<mq::Quantizer<3, mq::per_group<64>, mq::asymmetric>>{});

    // Constant rows c ≠ 0: c maps to an end of the code range, (q − z)·scale lands within 1 ulp.
    auto check_const = [](auto tag) {
        using Q = typename decltype(tag)::type;
        mq::Rng rng(5);
        std::uint32_t worst = 0;
        mq::MatrixXf x(400, 64);
        for (Eigen::Index r = 0; r < x.rows(); ++r) {
            const double mag = std::pow(10.0, rng.uniform(-6.0, 6.0));
            x.row(r).setConstant(static_cast<float>(rng.sign() * mag));
        }
        const auto back = mq::quantize_tensor<Q>(mq::view(x)).dequantize();
        for (Eigen::Index r = 0; r < x.rows(); ++r)
            for (Eigen::Index c = 0; c < x.cols(); ++c) worst = std::max(worst, ulp_distance(back(r, c), x(r, c)));
        CHECK(worst <= 1);
        return worst;
    };
    check_const(std::type_identity<Q8t>{});
    check_const(std::type_identity<mq::Quantizer<8, mq::per_token, mq::symmetric>>{});
    check_const(std::type_identity<mq::Quantizer<4, mq::per_channel, mq::asymmetric>>{});
    check_const(std::type_identity<mq::Quantizer<4, mq::per_group<32>, mq::symmetric>>{});
    check_const(std::type_identity<mq::Quantizer<2, mq::per_token, mq::asymmetric>>{});
}

TEST_CASE("bad input: empty tensors") {
    const mq::ConstMatrixView<float> empty(nullptr, 0, 5);
    CHECK_THROWS_WITH_AS(mq::quantize_tensor<Q8t>(empty),
                         "quantize_tensor: tensor 'x' is empty (shape [0 x 5]); expected at least one element", mq::error);
    std::vector<mq::QuantParams> p(1);
    CHECK_THROWS_WITH_AS(mq::quantize<QT>(mq::ConstMatrixView<float>(nullptr, 4, 0), mq::MatrixView<std::uint8_t>(), p, "act"),
                         "quantize: tensor 'act' is empty (shape [4 x 0]); expected at least one element", mq::error);
    CHECK_THROWS_AS(mq::quantize_static<QT>(empty, p, mq::MatrixView<std::uint8_t>()), mq::error);
    CHECK_THROWS_AS(mq::dequantize<QT>(mq::ConstMatrixView<std::uint8_t>(), p, mq::MatrixView<float>()), mq::error);
}

TEST_CASE("bad input: mismatched shapes and params spans of the wrong size") {
    const mq::MatrixXf x = heavy_tailed(3, 256, 1);
    std::vector<std::uint8_t> codes(3 * 256);
    std::vector<mq::QuantParams> p3(3), p2(2);
    CHECK_THROWS_WITH_AS(mq::quantize<Q8t>(mq::view(x), mq::MatrixView<std::uint8_t>(codes.data(), 3, 255), p3, "in_proj.x"),
                         "quantize: 'codes' must have the shape of 'in_proj.x' [3 x 256], got [3 x 255]", mq::error);
    CHECK_THROWS_WITH_AS(mq::quantize<Q8t>(mq::view(x), mq::MatrixView<std::uint8_t>(codes.data(), 3, 256), p2, "in_proj.x"),
                         "quantize: params for 'in_proj.x' must have 3 entries (per_token on [3 x 256]), got 2", mq::error);
    std::vector<mq::QuantParams> g(5);
    std::vector<std::int8_t> c8(3 * 256);
    CHECK_THROWS_WITH_AS(mq::quantize<Q4g>(mq::view(x), mq::MatrixView<std::int8_t>(c8.data(), 3, 256), g, "w"),
                         "quantize: params for 'w' must have 6 entries (per_group<128> on [3 x 256]), got 5", mq::error);
    const auto t = mq::quantize_tensor<Q8t>(mq::view(x));
    mq::MatrixXf out(3, 128);
    CHECK_THROWS_WITH_AS(mq::dequantize<Q8t>(t.code_view(), t.params, mq::view(out)),
                         "dequantize: 'out' must have the shape of 'codes' [3 x 256], got [3 x 128]", mq::error);
    CHECK_THROWS_WITH_AS(mq::quantize_static<Q8t>(mq::view(x), std::span<const mq::QuantParams>(p2), mq::MatrixView<std::uint8_t>(codes.data(), 3, 256)),
                         "quantize_static: params for 'x' must have 3 entries (per_token on [3 x 256]), got 2", mq::error);
}

TEST_CASE("bad input: a group size that does not divide the row") {
    const mq::MatrixXf x = heavy_tailed(2, 100, 2);
    CHECK_THROWS_WITH_AS(mq::quantize_tensor<Q4g>(mq::view(x), "out_proj.weight"),
                         "quantize_tensor: group size 128 does not divide the row length 100 of 'out_proj.weight' (100 % 128 = 100)",
                         mq::error);
    std::vector<mq::QuantParams> p(4);
    std::vector<std::int8_t> c(200);
    CHECK_THROWS_WITH_AS((mq::quantize<mq::Quantizer<4, mq::per_group<32>, mq::symmetric>>(
                             mq::view(x), mq::MatrixView<std::int8_t>(c.data(), 2, 100), p)),
                         "quantize: group size 32 does not divide the row length 100 of 'x' (100 % 32 = 4)", mq::error);
}

TEST_CASE("bad input: NaN or Inf is reported with its position, for every path") {
    mq::MatrixXf x = heavy_tailed(4, 256, 3);
    x(2, 77) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS(mq::quantize_tensor<Q8t>(mq::view(x), "h"),
                         "quantize: tensor 'h' has a non-finite value (nan) at [2, 77]; expected finite values", mq::error);
    CHECK_THROWS_WITH_AS(mq::quantize_tensor<QT>(mq::view(x)),
                         "quantize: tensor 'x' has a non-finite value (nan) at [2, 77]; expected finite values", mq::error);
    CHECK_THROWS_WITH_AS(mq::quantize_tensor<Q4g>(mq::view(x)),
                         "quantize: tensor 'x' has a non-finite value (nan) at [2, 77]; expected finite values", mq::error);
    x(2, 77) = 1.0f;
    x(3, 255) = -std::numeric_limits<float>::infinity();
    const std::vector<mq::QuantParams> p(1, QT::params(-1.0f, 1.0f));
    CHECK_THROWS_WITH_AS(mq::quantize_tensor<QT>(mq::view(x), std::span<const mq::QuantParams>(p)),
                         "quantize_static: tensor 'x' has a non-finite value (-inf) at [3, 255]; expected finite values", mq::error);
    std::vector<mq::QuantParams> q(4);
    CHECK_THROWS_WITH_AS(mq::compute_params<Q8t>(mq::view(x), q, "w"),
                         "compute_params: tensor 'w' has a non-finite value (-inf) at [3, 255]; expected finite values", mq::error);
}

TEST_CASE("bad input: a finite range too wide for a finite scale (asymmetric)") {
    mq::MatrixXf x = mq::MatrixXf::Zero(2, 64);
    x(1, 3) = -3e38f;
    x(1, 9) = 3e38f;
    CHECK_THROWS_WITH_AS(mq::quantize_tensor<Q8t>(mq::view(x)),
                         "quantize: the range [-3e+38, 3e+38] of 'x' (row 1) is too wide for a finite float scale; expected max − min <= 3.40282e+38",
                         mq::error);
    CHECK_THROWS_AS(mq::quantize_tensor<QT>(mq::view(x)), mq::error);
    // Symmetric: max|x|/qmax is always finite, so the same tensor quantizes.
    const auto t = mq::quantize_tensor<mq::Quantizer<8, mq::per_token, mq::symmetric>>(mq::view(x));
    CHECK(t.params[1].scale == mq::params_from_range<8, mq::symmetric>(-3e38f, 3e38f).scale);
    CHECK(int(t.codes[64 + 9]) == 127);
}

TEST_CASE("bad input: invalid static params") {
    const mq::MatrixXf x = heavy_tailed(1, 64, 4);
    std::vector<std::uint8_t> c(64);
    std::vector<std::int8_t> s(64);
    auto run = [&](mq::QuantParams p) {
        return message_of([&] { mq::quantize_static<QT>(mq::view(x), std::span<const mq::QuantParams>(&p, 1), mq::MatrixView<std::uint8_t>(c.data(), 1, 64)); });
    };
    CHECK(run({0.0f, 1.0f, 0}) == "quantize_static: params[0] for 'x' need a finite scale > 0 and inv_scale > 0, got scale 0, inv_scale 1");
    CHECK(run({std::numeric_limits<float>::quiet_NaN(), 1.0f, 0}).find("need a finite scale > 0") != std::string::npos);
    CHECK(run({1.0f, 1.0f, 300}) == "quantize_static: params[0] for 'x' need a zero point in [0, 255], got 300");
    CHECK(run({1.0f, 1.0f, -1}) == "quantize_static: params[0] for 'x' need a zero point in [0, 255], got -1");
    const mq::QuantParams bad{1.0f, 1.0f, 3};
    CHECK_THROWS_WITH_AS((mq::quantize_static<mq::Quantizer<8, mq::per_tensor, mq::symmetric>>(
                             mq::view(x), std::span<const mq::QuantParams>(&bad, 1), mq::MatrixView<std::int8_t>(s.data(), 1, 64))),
                         "quantize_static: params[0] for 'x' of a symmetric quantizer need zero 0, got 3", mq::error);
}

TEST_CASE("strided views: a row block of a wider tensor quantizes like a copy of it") {
    const mq::MatrixXf big = heavy_tailed(6, 1536, 9);
    const mq::ConstMatrixView<float> sub(big.data() + 3, 4, 768, 1536); // [4 x 768], stride 1536
    const mq::MatrixXf copy = big.block(0, 3, 4, 768);
    const auto a = mq::quantize_tensor<Q8t>(sub);
    const auto b = mq::quantize_tensor<Q8t>(mq::view(copy));
    CHECK(a.params == b.params);
    CHECK(a.codes == b.codes);
}

// The every-policy test above takes its expected params from params_from_range; these pin that
// function (and the codes it leads to) to values worked out by hand from the formulas
//   symmetric:  scale = max(|lo|, |hi|)/qmax, zero = 0
//   asymmetric: [mn, mx] = [min(lo, 0), max(hi, 0)], scale = (mx − mn)/(qmax − qmin),
//               zero = clamp(round_half_even(−mn/scale) + qmin, qmin, qmax)
// with ranges chosen so every quotient is exact in float.
TEST_CASE("params and codes by hand: asymmetric zero points, symmetric scales, round half to even") {
    using A4 = mq::Quantizer<4, mq::per_tensor, mq::asymmetric>; // codes [0, 15]
    using A8 = mq::Quantizer<8, mq::per_tensor, mq::asymmetric>; // codes [0, 255]
    using S8 = mq::Quantizer<8, mq::per_tensor, mq::symmetric>;  // codes [-127, 127]
    // [-2.5, 12.5]: scale 15/15 = 1, −mn/scale = 2.5 rounds to the even 2 (not 3).
    mq::QuantParams p = A4::params(-2.5f, 12.5f);
    CHECK(p.scale == 1.0f);
    CHECK(p.zero == 2);
    // [-1, 3] in 8 bits: scale 4/255, −mn/scale = 63.75 → zero 64.
    p = A8::params(-1.0f, 3.0f);
    CHECK(p.scale == 4.0f / 255.0f);
    CHECK(p.zero == 64);
    // All positive [2, 6]: the range is widened to [0, 6], zero 0, scale 6/255.
    p = A8::params(2.0f, 6.0f);
    CHECK(p.scale == 6.0f / 255.0f);
    CHECK(p.zero == 0);
    // All negative [-5, -1]: widened to [-5, 0], zero = 5/(5/255) = 255 = qmax.
    p = A8::params(-5.0f, -1.0f);
    CHECK(p.zero == 255);
    // [-8, 4] in 4 bits: scale 12/15 = 0.8, −mn/scale = 10 → zero 10.
    p = A4::params(-8.0f, 4.0f);
    CHECK(p.scale == 0.8f);
    CHECK(p.zero == 10);
    // Symmetric: scale = 3/127 from the larger magnitude, zero 0.
    p = S8::params(-3.0f, 1.25f);
    CHECK(p.scale == 3.0f / 127.0f);
    CHECK(p.zero == 0);

    // Codes through the public API (dynamic per-tensor) with the [-2.5, 12.5] range, scale 1,
    // zero 2: q = round_half_even(x) + 2, so −2.5 → −2 + 2 = 0, 0.5 → 0 + 2, 1.5 → 2 + 2,
    // 2.5 → 2 + 2, 3.5 → 4 + 2, 12.5 → 12 + 2.
    mq::MatrixXf x(1, 6);
    x << -2.5f, 0.5f, 1.5f, 2.5f, 3.5f, 12.5f;
    const auto t = mq::quantize_tensor<A4>(mq::view(x));
    REQUIRE(t.params.size() == 1);
    CHECK(t.params[0].zero == 2);
    const std::vector<int> want = {0, 2, 4, 4, 6, 14};
    for (std::size_t i = 0; i < want.size(); ++i) {
        CAPTURE(i);
        CHECK(int(t.codes[i]) == want[i]);
    }
    // x̂ = (q − 2)·1.
    mq::MatrixXf back_want(1, 6);
    back_want << -2.0f, 0.0f, 2.0f, 2.0f, 4.0f, 12.0f;
    CHECK(t.dequantize() == back_want);
}

// A user policy is honoured by the tensor API: its own params (power-of-two scales here), not the
// built-in ones, and codes from the library formula with those params.
#include "support/pow2_quantizer.hpp"

TEST_CASE("quantize_tensor honours a user policy's params (power-of-two scales)") {
    using Q = mqtest::Pow2Quantizer<8, mq::per_token, mq::asymmetric>;
    using G = mqtest::Pow2Quantizer<4, mq::per_group<32>, mq::symmetric>;
    mq::Rng rng(77);
    mq::MatrixXf x(5, 96);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.uniform(-3.0, 2.0));
    const auto t = mq::quantize_tensor<Q>(mq::view(x));
    const auto g = mq::quantize_tensor<G>(mq::view(x));
    const auto b = mq::quantize_tensor<mq::A8PerToken>(mq::view(x));
    bool pow2 = true, codes_match = true, differs = false;
    for (std::size_t r = 0; r < 5; ++r) {
        const mq::QuantParams p = t.params[r];
        pow2 &= mqtest::is_power_of_two(p.scale);
        differs |= p.scale != b.params[r].scale;
        // the reference: the policy's params of the row's range, then quantize_value element-wise
        const auto row = x.row(Eigen::Index(r));
        const mq::QuantParams ref = Q::params(row.minCoeff(), row.maxCoeff());
        codes_match &= ref == p;
        for (std::size_t c = 0; c < 96; ++c)
            codes_match &= t.codes[r * 96 + c] == mq::quantize_value<Q::range>(x(Eigen::Index(r), Eigen::Index(c)), ref);
        for (std::size_t k = 0; k < 3; ++k) pow2 &= mqtest::is_power_of_two(g.params[r * 3 + k].scale);
    }
    CHECK(pow2);
    CHECK(codes_match);
    CHECK(differs);
}
