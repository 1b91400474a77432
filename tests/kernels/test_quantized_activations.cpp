#include <mambaquant/kernels/fwht.hpp>
#include <mambaquant/kernels/quantized_activations.hpp>

#include "kernels/arch_test_util.hpp"
#include "kernels/qgemm_test_util.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace {

template <class Q, class Code>
void check_policy(std::size_t rows, std::size_t cols, std::size_t k_pad, std::size_t group) {
    CAPTURE(rows);
    CAPTURE(cols);
    const mq::MatrixXf x = mqtest::random_matrix(rows, cols, 42, 2.0f, true);
    mq::ActBuffer<Code> fast(rows, cols, k_pad, group), ref(rows, cols, k_pad, group);
    mq::quantize_activations_ref<Q>(mq::view(x), ref);
    // Every arch (avx512vnni: the 64-wide row range) equals the reference; `fast` keeps the last.
    mqtest::for_each_arch([&](auto arch) {
        mq::quantize_activations<Q>(arch, mq::view(x), fast);
        CHECK(fast.codes == ref.codes);
        CHECK(fast.scale == ref.scale);
    });
    CHECK(fast.rows == rows);
    CHECK(fast.codes == ref.codes);
    CHECK(fast.scale == ref.scale);
    CHECK(fast.zero == ref.zero);
    CHECK(fast.gsum == ref.gsum);
    // The stored codes decode to the policy's x̂ and sit within half a step of x.
    bool close = true, pad = true;
    for (std::size_t m = 0; m < rows; ++m) {
        for (std::size_t c = 0; c < cols; ++c) {
            const float xh = float(int(fast.row(m)[c]) - fast.zero[m]) * fast.scale[m];
            close &= std::fabs(xh - x(Eigen::Index(m), Eigen::Index(c))) <= 0.5001f * fast.scale[m];
        }
        for (std::size_t c = cols; c < k_pad; ++c) pad &= fast.row(m)[c] == 0;
    }
    CHECK(close);
    CHECK(pad);
    if constexpr (std::same_as<typename Q::granularity, mq::per_tensor>)
        for (std::size_t m = 1; m < rows; ++m) CHECK(fast.scale[m] == fast.scale[0]);
}

template <class Q>
void check_both_codes() {
    check_policy<Q, std::int16_t>(7, 37, 64, 64);
    check_policy<Q, std::uint8_t>(7, 37, 64, 64);
    check_policy<Q, std::uint8_t>(3, 768, 768, 32);
    check_policy<Q, std::int16_t>(1, 2560, 2560, 2560);
    check_policy<Q, std::uint8_t>(13, 5120, 5120, 128);
    check_policy<Q, std::uint8_t>(5, 100, 128, 64); // a partial last group, a scalar tail
    check_policy<Q, std::uint8_t>(5, 90, 96, 48);   // groups not a multiple of 32: the generic path
}

// Rows of exact ties: with range [-127, 127] (symmetric, scale 1) or [0, 255] (asymmetric, scale
// 1, zero 0) every k + 0.5 must round half to even, and the range ends must land on qmin/qmax.
template <class Q, class Code>
void check_ties() {
    const std::size_t cols = 512;
    mq::MatrixXf x(2, Eigen::Index(cols));
    for (std::size_t c = 0; c < cols; ++c) {
        const float t = float(c % (Q::symmetry::is_symmetric ? 254 : 255)) + 0.5f; // inside the range
        x(0, Eigen::Index(c)) = Q::symmetry::is_symmetric ? t - 127.0f : t;
        x(1, Eigen::Index(c)) = -x(0, Eigen::Index(c));
    }
    x(0, 0) = Q::symmetry::is_symmetric ? -127.0f : 0.0f;
    x(0, 1) = Q::symmetry::is_symmetric ? 127.0f : 255.0f;
    mq::ActBuffer<Code> fast(2, cols, cols, 32), ref(2, cols, cols, 32);
    mq::quantize_activations<Q>(mq::default_arch{}, mq::view(x), fast);
    mq::quantize_activations_ref<Q>(mq::view(x), ref);
    CHECK(fast.scale[0] == 1.0f);
    CHECK(fast.codes == ref.codes);
    CHECK(fast.gsum == ref.gsum);
}

} // namespace

TEST_CASE("quantize_activations equals its reference bit for bit") {
    check_both_codes<mq::A8PerToken>();
    check_both_codes<mq::A8PerTensor>();
    check_both_codes<mq::Quantizer<8, mq::per_token, mq::symmetric>>();
    check_both_codes<mq::Quantizer<8, mq::per_tensor, mq::symmetric>>();
}

TEST_CASE("quantize_activations: exact ties round half to even, range ends clamp") {
    check_ties<mq::A8PerToken, std::int16_t>();
    check_ties<mq::A8PerToken, std::uint8_t>();
    check_ties<mq::Quantizer<8, mq::per_token, mq::symmetric>, std::int16_t>();
    check_ties<mq::Quantizer<8, mq::per_token, mq::symmetric>, std::uint8_t>();
}

// The fused online Hadamard + per-token quantization equals fwht then quantize_activations.
template <class Q, class Code>
void check_fused(std::size_t rows, std::size_t n, std::size_t k_pad, std::size_t group, std::size_t scratch_rows) {
    CAPTURE(n);
    CAPTURE(scratch_rows);
    const mq::MatrixXf x = mqtest::random_matrix(rows, n, 7, 2.0f, true);
    const mq::FwhtPlan plan = mq::make_fwht_plan(n, 3);
    mq::aligned_vector<float> scratch(scratch_rows * n);
    // On every arch (avx512vnni: the 16-lane FWHT); the FWHT's floats are the same on every arch.
    mqtest::for_each_arch([&](auto arch) {
        mq::ActBuffer<Code> fused(rows, n, k_pad, group), ref(rows, n, k_pad, group);
        mq::fwht_quantize_activations<Q>(arch, mq::view(x), plan, scratch, fused);
        mq::MatrixXf rotated = x;
        mq::fwht(mq::default_arch{}, mq::view(rotated), plan);
        mq::quantize_activations<Q>(mq::default_arch{}, mq::view(std::as_const(rotated)), ref);
        CHECK(fused.rows == rows);
        CHECK(fused.codes == ref.codes);
        CHECK(fused.scale == ref.scale);
        CHECK(fused.zero == ref.zero);
        CHECK(fused.gsum == ref.gsum);
    });
}

TEST_CASE("fwht_quantize_activations equals fwht then quantize_activations bit for bit") {
    using Sym = mq::Quantizer<8, mq::per_token, mq::symmetric>;
    for (std::size_t scratch_rows : {1, 2}) {
        check_fused<mq::A8PerToken, std::int16_t>(5, 768, 768, 768, scratch_rows);
        check_fused<mq::A8PerToken, std::uint8_t>(5, 1536, 1536, 128, scratch_rows);
        check_fused<Sym, std::int16_t>(3, 2560, 2560, 2560, scratch_rows);
        check_fused<Sym, std::uint8_t>(4, 48, 64, 32, scratch_rows);
        check_fused<mq::A8PerToken, std::uint8_t>(1, 1024, 1024, 64, scratch_rows);
    }
}

TEST_CASE("ActBuffer: bad layout is reported") {
    mq::ActBuffer<std::uint8_t> b;
    CHECK_THROWS_WITH_AS(b.reserve(4, 40, 40, 40), "ActBuffer: k_pad 40 must be a multiple of 32 and >= k 40", mq::error);
    CHECK_THROWS_WITH_AS(b.reserve(4, 64, 64, 48), "ActBuffer: group 48 does not divide k_pad 64", mq::error);
}
