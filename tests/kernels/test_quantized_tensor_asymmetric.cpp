// kernels/quantized_tensor.hpp: every asymmetric policy (bits 2..8 × 5 granularities), static and
// dynamic, checked against the scalar formulas of params.hpp (the symmetric half and the other
// cases are in test_quantized_tensor.cpp; split so the two heavy halves compile in parallel).
#include <mambaquant/kernels/quantized_tensor.hpp>

#include "kernels/quantized_tensor_checker.hpp"

#include <doctest/doctest.h>

#include <utility>

TEST_CASE("every policy, asymmetric: bits 2..8 x per_tensor/per_channel/per_token/per_group<64|128>, dynamic and static") {
    // Σ over bits 2..8 of 5 granularities × bits: every combination ran.
    CHECK(mqtest::check_every_policy<mq::asymmetric>(std::make_integer_sequence<int, 7>{}) == 5 * (2 + 3 + 4 + 5 + 6 + 7 + 8));
}
