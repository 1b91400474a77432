#include <mambaquant/kernels/quantized_activations.hpp>

#include "kernels/qgemm_test_util.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

namespace {

template <class Q, class Code>
void check_policy(std::size_t rows, std::size_t cols, std::size_t k_pad, std::size_t group) {
    CAPTURE(rows);
    CAPTURE(cols);
    const mq::MatrixXf x = mqtest::random_matrix(rows, cols, 42, 2.0f, true);
    mq::ActBuffer<Code> fast(rows, cols, k_pad, group), ref(rows, cols, k_pad, group);
    mq::quantize_activations<Q>(mq::default_arch{}, mq::view(x), fast);
    mq::quantize_activations_ref<Q>(mq::view(x), ref);
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
}

} // namespace

TEST_CASE("quantize_activations equals its reference bit for bit") {
    check_both_codes<mq::A8PerToken>();
    check_both_codes<mq::A8PerTensor>();
    check_both_codes<mq::Quantizer<8, mq::per_token, mq::symmetric>>();
    check_both_codes<mq::Quantizer<8, mq::per_tensor, mq::symmetric>>();
}

TEST_CASE("ActBuffer: bad layout is reported") {
    mq::ActBuffer<std::uint8_t> b;
    CHECK_THROWS_WITH_AS(b.reserve(4, 40, 40, 40), "ActBuffer: k_pad 40 must be a multiple of 32 and >= k 40", mq::error);
    CHECK_THROWS_WITH_AS(b.reserve(4, 64, 64, 48), "ActBuffer: group 48 does not divide k_pad 64", mq::error);
}
