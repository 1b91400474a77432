#include <mambaquant/kernels/packed_weights.hpp>

#include "kernels/qgemm_test_util.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

template <class Q>
std::vector<typename Q::code_type> random_codes(std::size_t rows, std::size_t cols, std::uint64_t seed) {
    mq::Rng rng(seed);
    std::vector<typename Q::code_type> c(rows * cols);
    using R = typename Q::range;
    for (auto& v : c) v = static_cast<typename Q::code_type>(R::min + static_cast<int>(rng() % R::levels));
    return c;
}

template <class Q>
std::vector<mq::QuantParams> random_params(std::size_t count, std::uint64_t seed) {
    mq::Rng rng(seed);
    std::vector<mq::QuantParams> p(count);
    for (auto& q : p) {
        q.scale = static_cast<float>(rng.uniform(0.01, 0.1));
        q.inv_scale = 1.0f / q.scale;
        q.zero = Q::symmetry::is_symmetric ? 0 : static_cast<int>(rng() % 16);
    }
    return p;
}

template <class Q>
void check_w4_roundtrip(std::size_t rows, std::size_t cols) {
    CAPTURE(rows);
    CAPTURE(cols);
    std::size_t group = cols;
    if constexpr (mq::is_per_group_v<typename Q::granularity>) group = Q::granularity::group_size;
    const std::size_t groups = cols / group;
    const auto codes = random_codes<Q>(rows, cols, 11);
    const auto params = random_params<Q>(rows * groups, 12);
    const auto p = mq::pack_w4<Q>(mq::ConstMatrixView<typename Q::code_type>(codes.data(), rows, cols), params);
    CHECK(p.k_pad % mq::kPackK == 0);
    CHECK(p.n_pad() % mq::kPackCols == 0);
    bool same = true;
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) same &= p.code(r, c) == int(codes[r * cols + c]);
    CHECK(same);
    bool pad_zero = true;
    for (std::size_t r = 0; r < p.n_pad(); ++r)
        for (std::size_t c = (r < rows ? cols : 0); c < p.k_pad; ++c) pad_zero &= p.nibble(r, c) == 0;
    CHECK(pad_zero);
    // Standard nibble order (2i low, 2i+1 high) gives the same packing.
    const std::size_t rb = (cols + 1) / 2;
    std::vector<std::uint8_t> nib(rows * rb, 0);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) {
            const auto v = static_cast<std::uint8_t>(codes[r * cols + c]) & 0x0F;
            nib[r * rb + c / 2] |= static_cast<std::uint8_t>(c % 2 == 0 ? v : v << 4);
        }
    const auto p2 = mq::pack_w4_nibbles<Q>(nib, rows, cols, params);
    CHECK(std::equal(p.blocks.begin(), p.blocks.end(), p2.blocks.begin(),
                     [](const auto& a, const auto& b) { return std::equal(a.qs, a.qs + 32, b.qs); }));
    CHECK(p.scale == p2.scale);
    CHECK(p.col_corr == p2.col_corr);
    // Dequantized values follow ŵ = (q − z)·s.
    const mq::MatrixXf w = mq::dequantize(p);
    bool deq = true;
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) {
            const auto& qp = params[r * groups + c / group];
            deq &= w(Eigen::Index(r), Eigen::Index(c)) == float(int(codes[r * cols + c]) - qp.zero) * qp.scale;
        }
    CHECK(deq);
}

} // namespace

TEST_CASE("block layouts") {
    CHECK(sizeof(mq::BlockW8x2) * 8 / 16 == 8);  // bits per weight
    CHECK(sizeof(mq::BlockW4x8) * 8 / 64 == 4);
}

TEST_CASE("pack_w8 from codes: round trip, sums, padding") {
    for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {13, 37}, {8, 16}, {40, 768}}) {
        CAPTURE(rows);
        CAPTURE(cols);
        const auto codes = random_codes<mq::W8PerChannel>(rows, cols, 3);
        const auto params = random_params<mq::W8PerChannel>(rows, 4);
        const auto p = mq::pack_w8(mq::ConstMatrixView<std::int8_t>(codes.data(), rows, cols), params);
        bool same = true, sums = true;
        for (std::size_t r = 0; r < rows; ++r) {
            int s = 0;
            for (std::size_t c = 0; c < cols; ++c) {
                same &= p.code(r, c) == codes[r * cols + c];
                s += codes[r * cols + c];
            }
            sums &= p.qsum[r] == s && p.scale[r] == params[r].scale;
        }
        CHECK(same);
        CHECK(sums);
        bool pad = true;
        for (std::size_t r = 0; r < p.n_pad(); ++r)
            for (std::size_t c = (r < rows ? cols : 0); c < p.k_pad; ++c) pad &= p.code(r, c) == 0;
        CHECK(pad);
        CHECK(p.bytes() >= rows * cols);
    }
}

TEST_CASE("pack_w8: with_layout moves the bytes to the other layout, exactly as packing in it") {
    const std::size_t rows = 13, cols = 37;
    const auto codes = random_codes<mq::W8PerChannel>(rows, cols, 5);
    const auto params = random_params<mq::W8PerChannel>(rows, 6);
    const mq::ConstMatrixView<std::int8_t> cv(codes.data(), rows, cols);
    for (auto [from, to] : {std::pair{mq::W8Layout::pairs, mq::W8Layout::quads}, std::pair{mq::W8Layout::quads, mq::W8Layout::pairs}}) {
        const auto direct = mq::pack_w8(cv, params, to);
        const auto moved = mq::with_layout(mq::pack_w8(cv, params, from), to);
        CHECK(moved.layout == to);
        CHECK(std::memcmp(moved.blocks.data(), direct.blocks.data(), direct.blocks.size() * sizeof(mq::BlockW8x2)) == 0);
        CHECK((moved.scale == direct.scale && moved.qsum == direct.qsum));
    }
}

TEST_CASE("pack_w4 from codes and from standard nibble order") {
    check_w4_roundtrip<mq::W4PerChannel>(13, 37);
    check_w4_roundtrip<mq::W4PerChannel>(1, 768);
    check_w4_roundtrip<mq::Quantizer<4, mq::per_channel, mq::asymmetric>>(9, 101);
    check_w4_roundtrip<mq::W4PerGroup<32>>(17, 96);
    check_w4_roundtrip<mq::Quantizer<4, mq::per_group<64>, mq::asymmetric>>(8, 128);
    check_w4_roundtrip<mq::Quantizer<4, mq::per_group<128>, mq::asymmetric>>(3, 768);
}

TEST_CASE("packing from float: error at most half a step") {
    const mq::MatrixXf w = mqtest::random_matrix(19, 160, 5);
    auto check = [&](const auto& p, auto step_of) {
        const mq::MatrixXf d = mq::dequantize(p);
        bool ok = true;
        for (Eigen::Index r = 0; r < w.rows(); ++r)
            for (Eigen::Index c = 0; c < w.cols(); ++c)
                ok &= std::fabs(d(r, c) - w(r, c)) <= 0.5f * step_of(std::size_t(r), std::size_t(c)) * 1.0001f;
        CHECK(ok);
    };
    const auto p8 = mq::pack_w8(mq::view(w));
    check(p8, [&](std::size_t r, std::size_t) { return p8.scale[r]; });
    const auto p4 = mq::pack_w4<mq::W4PerGroup<32>>(mq::view(w));
    check(p4, [&](std::size_t r, std::size_t c) { return p4.scale[p4.param_index(r, c / 32)]; });
    const auto p4a = mq::pack_w4<mq::Quantizer<4, mq::per_channel, mq::asymmetric>>(mq::view(w));
    check(p4a, [&](std::size_t r, std::size_t) { return p4a.scale[p4a.param_index(r, 0)]; });
}

TEST_CASE("packing on a given grid: the grid's own codes come back, min/max packing is the special case") {
    const mq::MatrixXf w = mqtest::random_matrix(19, 160, 6);
    using W4G = mq::Quantizer<4, mq::per_group<32>, mq::asymmetric>;
    // On the grid min/max would choose, packing with those params is packing by min/max.
    const auto auto_p = mq::pack_weights<W4G>(mq::view(w));
    std::vector<mq::QuantParams> grid(19 * 5);
    for (std::size_t r = 0; r < 19; ++r)
        for (std::size_t g = 0; g < 5; ++g) grid[r * 5 + g] = {auto_p.scale[auto_p.param_index(r, g)], 0.0f, auto_p.zero[auto_p.param_index(r, g)]};
    for (auto& p : grid) p.inv_scale = 1.0f / p.scale;
    // (inv_scale as params_from_range sets it: the scale's reciprocal)
    const mq::MatrixXf d = mq::dequantize(mq::pack_weights<W4G>(mq::view(w), grid));
    CHECK((d - mq::dequantize(auto_p)).cwiseAbs().maxCoeff() == 0.0f);
    // A coarser grid (every scale ×1.5, as a GPTQ row whose extreme moved) keeps its values: ŵ
    // packed on it dequantizes to ŵ exactly, where a min/max re-grid of ŵ would not.
    for (auto& p : grid) p.scale *= 1.5f, p.inv_scale = 1.0f / p.scale;
    const mq::MatrixXf coarse = mq::dequantize(mq::pack_weights<W4G>(mq::view(w), grid));
    CHECK((mq::dequantize(mq::pack_weights<W4G>(mq::view(coarse), grid)) - coarse).cwiseAbs().maxCoeff() == 0.0f);
    std::vector<mq::QuantParams> rows(19);
    for (std::size_t r = 0; r < 19; ++r) rows[r] = mq::W8PerChannel::params(-0.01f * float(r + 1), 0.02f);
    const mq::MatrixXf w8 = mq::dequantize(mq::pack_weights<mq::W8PerChannel>(mq::view(w), rows));
    CHECK((mq::dequantize(mq::pack_weights<mq::W8PerChannel>(mq::view(w8), rows)) - w8).cwiseAbs().maxCoeff() == 0.0f);
    // Bad grids are refused by name.
    CHECK_THROWS_WITH_AS(mq::pack_weights<mq::W8PerChannel>(mq::view(w), std::span(rows).first(18)),
                         "pack_weights: expected 19 quantization params, got 18", mq::error);
    rows[3].inv_scale *= 2.0f;
    CHECK_THROWS_WITH_AS(mq::pack_weights<mq::W8PerChannel>(mq::view(w), rows), doctest::Contains("params[3].inv_scale"),
                         mq::error);
    rows[3].inv_scale = 1.0f / rows[3].scale;
    mq::MatrixXf bad = w;
    bad(4, 9) = std::nanf("");
    CHECK_THROWS_WITH_AS(mq::pack_weights<mq::W8PerChannel>(mq::view(bad), rows),
                         "pack_weights: weight[4][9] is not finite (nan)", mq::error);
}

TEST_CASE("packing: bad input is reported") {
    const mq::MatrixXf w = mqtest::random_matrix(4, 48, 1);
    CHECK_THROWS_WITH_AS(mq::pack_w4<mq::W4PerGroup<32>>(mq::view(w)),
                         "pack_w4: group size 32 does not divide in_features 48", mq::error);
    std::vector<std::int8_t> codes(4 * 48, 1);
    std::vector<mq::QuantParams> params(3);
    CHECK_THROWS_WITH_AS(mq::pack_w8(mq::ConstMatrixView<std::int8_t>(codes.data(), 4, 48), params),
                         "pack_w8: expected 4 quantization params, got 3", mq::error);
    params.resize(4);
    params[2].zero = 5;
    CHECK_THROWS_WITH_AS(mq::pack_w8(mq::ConstMatrixView<std::int8_t>(codes.data(), 4, 48), params),
                         "pack_w8: params[2].zero must be 0 for symmetric weights, got 5", mq::error);
    params[2].zero = 0;
    params[1].scale = 0.0f;
    CHECK_THROWS_AS(mq::pack_w8(mq::ConstMatrixView<std::int8_t>(codes.data(), 4, 48), params), mq::error);
    params[1].scale = 1.0f;
    codes[5] = -128;
    CHECK_THROWS_WITH_AS(mq::pack_w8(mq::ConstMatrixView<std::int8_t>(codes.data(), 4, 48), params),
                         "pack_w8: code[0][5] = -128 is outside [-127, 127]", mq::error);
    std::vector<std::int8_t> c4(4 * 48, 9);
    CHECK_THROWS_WITH_AS(mq::pack_w4<mq::W4PerChannel>(mq::ConstMatrixView<std::int8_t>(c4.data(), 4, 48), params),
                         "pack_w4: code[0][0] = 9 is outside [-7, 7]", mq::error);
    // Standard-order nibbles: rows start on byte boundaries, so an odd row length needs a pad nibble.
    std::vector<std::uint8_t> nib(4 * 24 - 1);
    CHECK_THROWS_WITH_AS(mq::pack_w4_nibbles<mq::W4PerChannel>(nib, 4, 48, params),
                         "pack_w4_nibbles: a [4 x 48] int4 tensor with byte-aligned rows needs 96 bytes, got 95", mq::error);
    std::vector<std::uint8_t> nib_odd(4 * 23);
    CHECK_THROWS_AS(mq::pack_w4_nibbles<mq::W4PerChannel>(nib_odd, 4, 47, params), mq::error); // 4·24 needed
    mq::MatrixXf bad = w;
    bad(2, 7) = std::nanf("");
    CHECK_THROWS_WITH_AS(mq::pack_w8(mq::view(bad)), "pack_w8: weight[2][7] is not finite (nan)", mq::error);
    CHECK_THROWS_AS(mq::pack_w8(mq::ConstMatrixView<float>(w.data(), 0, 48)), mq::error);
    std::vector<mq::QuantParams> pa(4);
    pa[0].zero = 16;
    std::vector<std::uint8_t> ca(4 * 48, 1);
    using W4A = mq::Quantizer<4, mq::per_channel, mq::asymmetric>;
    const mq::ConstMatrixView<std::uint8_t> cav(ca.data(), 4, 48);
    CHECK_THROWS_WITH_AS(mq::pack_w4<W4A>(cav, pa),
                         "pack_w4: params[0].zero must be in [0, 15], got 16", mq::error);
}
