// Test support for kernels/quantized_tensor.hpp: checks one Quantizer policy, dynamic and static,
// against the scalar formulas of params.hpp on Mamba-width rows. Shared by the two translation
// units that run every policy (symmetric and asymmetric halves, so they compile in parallel).
#pragma once

#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/quantized_tensor.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

namespace mqtest {

inline mq::MatrixXf heavy_tailed(std::size_t rows, std::size_t cols, std::uint64_t seed, float shift = 0.0f) {
    mq::Rng rng(seed);
    mq::MatrixXf x(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
    for (Eigen::Index r = 0; r < x.rows(); ++r) {
        const float row_scale = static_cast<float>(0.2 + 2.0 * rng.uniform());
        for (Eigen::Index c = 0; c < x.cols(); ++c) {
            float v = static_cast<float>(rng.normal()) * row_scale + shift;
            if (rng.uniform() < 0.005) v *= 15.0f;
            x(r, c) = v;
        }
    }
    return x;
}

// The reference params for element (r, c) under Q, computed with plain loops and params.hpp.
template <class Q>
std::vector<mq::QuantParams> expected_params(const mq::MatrixXf& x) {
    using G = typename Q::granularity;
    const std::size_t rows = static_cast<std::size_t>(x.rows()), cols = static_cast<std::size_t>(x.cols());
    auto range_of = [&](std::size_t r0, std::size_t r1, std::size_t c0, std::size_t c1) {
        float lo = std::numeric_limits<float>::infinity(), hi = -lo;
        for (std::size_t r = r0; r < r1; ++r)
            for (std::size_t c = c0; c < c1; ++c) lo = std::min(lo, x(Eigen::Index(r), Eigen::Index(c))), hi = std::max(hi, x(Eigen::Index(r), Eigen::Index(c)));
        return mq::params_from_range<Q::bits, typename Q::symmetry>(lo, hi);
    };
    std::vector<mq::QuantParams> p;
    if constexpr (std::same_as<G, mq::per_tensor>) {
        p.push_back(range_of(0, rows, 0, cols));
    } else if constexpr (mq::is_row_wise_v<G>) {
        for (std::size_t r = 0; r < rows; ++r) p.push_back(range_of(r, r + 1, 0, cols));
    } else {
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t c = 0; c < cols; c += G::group_size) p.push_back(range_of(r, r + 1, c, c + G::group_size));
    }
    return p;
}

template <class Q>
const mq::QuantParams& param_at(const std::vector<mq::QuantParams>& p, std::size_t r, std::size_t c, std::size_t cols) {
    using G = typename Q::granularity;
    if constexpr (std::same_as<G, mq::per_tensor>)
        return p[0];
    else if constexpr (mq::is_row_wise_v<G>)
        return p[r];
    else
        return p[r * (cols / G::group_size) + c / G::group_size];
}

// Shapes: Mamba widths (768 d_model of 130m, 1536 d_inner, 2560, 5120) and a small one.
inline const std::pair<std::size_t, std::size_t> kShapes[] = {{3, 768}, {2, 1536}, {1, 2560}, {1, 5120}, {5, 256}};

struct Checker {
    template <class Q>
    int operator()(std::type_identity<Q>) const {
        using Code = typename Q::code_type;
        using R = typename Q::range;
        for (auto [rows, cols] : kShapes) {
            const mq::MatrixXf x = heavy_tailed(rows, cols, rows * 7919 + cols + Q::bits,
                                                Q::symmetry::is_symmetric ? 0.0f : 0.5f);
            const auto xv = mq::view(x);
            // Dynamic.
            const mq::QuantizedTensor<Q> t = mq::quantize_tensor<Q>(xv);
            const auto want = expected_params<Q>(x);
            REQUIRE(t.params.size() == want.size());
            CHECK(t.params == want);
            bool codes_ok = true, roundtrip_ok = true, deq_exact = true;
            const mq::MatrixXf back = t.dequantize();
            for (std::size_t r = 0; r < rows; ++r) {
                for (std::size_t c = 0; c < cols; ++c) {
                    const auto& p = param_at<Q>(t.params, r, c, cols);
                    const float v = x(Eigen::Index(r), Eigen::Index(c));
                    const int q = t.codes[r * cols + c];
                    codes_ok = codes_ok && q == mq::quantize_value<R>(v, p) && q >= R::min && q <= R::max;
                    const float b = back(Eigen::Index(r), Eigen::Index(c));
                    deq_exact = deq_exact && b == mq::dequantize_value(q, p);
                    // |x̂ − x| ≤ scale/2, up to the float rounding of x·inv_scale and (q−z)·scale.
                    const float tol = 0.5f * p.scale * (1.0f + 1e-5f) + 4e-7f * std::fabs(v);
                    roundtrip_ok = roundtrip_ok && std::fabs(b - v) <= tol;
                }
            }
            CHECK_MESSAGE(codes_ok, "bits ", Q::bits, " ", Q::granularity::name, " ", Q::symmetry::name, " [", rows, "x", cols, "]");
            CHECK(roundtrip_ok);
            CHECK(deq_exact);

            // Static with the same params: the same codes; the in-place API agrees as well.
            const mq::QuantizedTensor<Q> s = mq::quantize_tensor<Q>(xv, std::span<const mq::QuantParams>(want));
            CHECK(s.codes == t.codes);
            CHECK(s.params == want);
            CHECK(s.dequantize() == back);
            std::vector<Code> codes(rows * cols);
            std::vector<mq::QuantParams> params(want.size());
            mq::quantize<Q>(xv, mq::MatrixView<Code>(codes.data(), rows, cols), params);
            CHECK(params == want);
            CHECK(std::equal(codes.begin(), codes.end(), t.codes.begin()));
            std::vector<mq::QuantParams> only(want.size());
            mq::compute_params<Q>(xv, only);
            CHECK(only == want);

            // Static with 3× tighter params: values beyond saturate, exactly as quantize_value says.
            std::vector<mq::QuantParams> tight;
            for (const auto& p : want) {
                mq::QuantParams q = p;
                q.scale = p.scale / 3.0f;
                q.inv_scale = 1.0f / q.scale;
                tight.push_back(q);
            }
            mq::quantize_static<Q>(xv, tight, mq::MatrixView<Code>(codes.data(), rows, cols));
            bool sat_ok = true;
            for (std::size_t r = 0; r < rows; ++r)
                for (std::size_t c = 0; c < cols; ++c)
                    sat_ok = sat_ok && int(codes[r * cols + c]) ==
                                           mq::quantize_value<R>(x(Eigen::Index(r), Eigen::Index(c)), param_at<Q>(tight, r, c, cols));
            CHECK(sat_ok);
        }
        // d_state-sized rows (16) for the non-group granularities.
        if constexpr (!mq::is_per_group_v<typename Q::granularity>) {
            const mq::MatrixXf x = heavy_tailed(33, 16, 16 + Q::bits);
            const auto t = mq::quantize_tensor<Q>(mq::view(x));
            CHECK(t.params == expected_params<Q>(x));
        }
        return Q::bits;
    }
};

// The five granularities at one bit width and symmetry; returns 5 · Bits when all ran.
template <int Bits, class S>
int check_bits_symmetry() {
    const Checker check;
    return check(std::type_identity<mq::Quantizer<Bits, mq::per_tensor, S>>{}) +
           check(std::type_identity<mq::Quantizer<Bits, mq::per_channel, S>>{}) +
           check(std::type_identity<mq::Quantizer<Bits, mq::per_token, S>>{}) +
           check(std::type_identity<mq::Quantizer<Bits, mq::per_group<64>, S>>{}) +
           check(std::type_identity<mq::Quantizer<Bits, mq::per_group<128>, S>>{});
}

// Bits 2..8 at symmetry S; returns 5 · (2 + … + 8) = 175 when every combination ran.
template <class S, int... Bits>
int check_every_policy(std::integer_sequence<int, Bits...>) {
    return (check_bits_symmetry<Bits + 2, S>() + ...);
}

} // namespace mqtest
