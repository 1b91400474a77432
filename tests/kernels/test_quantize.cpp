// Row kernels (kernels/quantize.hpp) against their scalar *_ref twins, bit for bit.
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/quantize.hpp>

#include "kernels/arch_test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// Mamba-130m/2.8b widths, d_state, and odd lengths that exercise every loop tail.
const std::size_t kLengths[] = {768, 1536, 2560, 5120, 16, 1, 2, 3, 7, 8, 9, 31, 33, 63, 100, 1023, 1537};

// Heavy-tailed data with a few outliers, optionally shifted (asymmetric ranges).
std::vector<float> make_row(std::size_t n, std::uint64_t seed, float shift = 0.0f) {
    mq::Rng rng(seed);
    std::vector<float> x(n + 1); // +1: the tests also run on x.data() + 1 (unaligned)
    for (auto& v : x) {
        v = static_cast<float>(rng.normal()) * 0.7f + shift;
        if (rng.uniform() < 0.01) v *= 20.0f;
    }
    return x;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

template <int Bits, class S, class Arch>
void check_quantize_bits(Arch arch) {
    using R = mq::BitRange<Bits, S>;
    using Code = std::conditional_t<S::is_symmetric, std::int8_t, std::uint8_t>;
    for (std::size_t n : kLengths) {
        for (std::size_t off : {0, 1}) {
            const auto data = make_row(n, 1000 + n + Bits, S::is_symmetric ? 0.0f : 0.8f);
            const float* x = data.data() + off;
            // Dynamic params, then static params that are 4× too tight (forces clamping both ways).
            const mq::RowRange rr = mq::row_range_ref(x, n);
            const mq::QuantParams p = mq::params_from_range<Bits, S>(rr.lo, rr.hi);
            const mq::QuantParams tight = mq::params_from_range<Bits, S>(rr.lo * 0.25f, rr.hi * 0.25f);
            for (const auto& params : {p, tight}) {
                std::vector<Code> a(n + 1, Code{42}), b(n + 1, Code{42});
                mq::quantize_row<R>(arch, x, n, params, a.data());
                mq::quantize_row_ref<R>(x, n, params, b.data());
                CHECK_MESSAGE(a == b, "n=", n, " off=", off, " bits=", Bits);
                for (std::size_t i = 0; i < n; ++i) {
                    REQUIRE(int(a[i]) >= R::min);
                    REQUIRE(int(a[i]) <= R::max);
                }
                CHECK(a[n] == Code{42}); // nothing written past the end

                std::vector<float> da(n + 1, -7.0f), db(n + 1, -7.0f);
                mq::dequantize_row(arch, a.data(), n, params, da.data());
                mq::dequantize_row_ref(a.data(), n, params, db.data());
                bool same = true;
                for (std::size_t i = 0; i <= n; ++i) same = same && same_bits(da[i], db[i]);
                CHECK_MESSAGE(same, "dequantize n=", n, " bits=", Bits);
                CHECK(da[n] == -7.0f);
            }
            // Fused dynamic kernel: same params and codes as the reference.
            std::vector<Code> a(n), b(n);
            const auto ra = mq::quantize_row_dynamic<Bits, S>(arch, x, n, a.data());
            const auto rb = mq::quantize_row_dynamic_ref<Bits, S>(x, n, b.data());
            CHECK(ra.range.finite);
            CHECK(ra.params == rb.params);
            CHECK(ra.params == p);
            CHECK(a == b);
        }
    }
}

template <class Arch>
void check_all_bits(Arch arch) {
    check_quantize_bits<2, mq::symmetric>(arch);
    check_quantize_bits<3, mq::symmetric>(arch);
    check_quantize_bits<4, mq::symmetric>(arch);
    check_quantize_bits<5, mq::symmetric>(arch);
    check_quantize_bits<6, mq::symmetric>(arch);
    check_quantize_bits<7, mq::symmetric>(arch);
    check_quantize_bits<8, mq::symmetric>(arch);
    check_quantize_bits<2, mq::asymmetric>(arch);
    check_quantize_bits<3, mq::asymmetric>(arch);
    check_quantize_bits<4, mq::asymmetric>(arch);
    check_quantize_bits<5, mq::asymmetric>(arch);
    check_quantize_bits<6, mq::asymmetric>(arch);
    check_quantize_bits<7, mq::asymmetric>(arch);
    check_quantize_bits<8, mq::asymmetric>(arch);
}

} // namespace

TEST_CASE("row_range equals row_range_ref and flags NaN/Inf anywhere, on every arch") {
    mqtest::for_each_arch([](auto arch) {
    for (std::size_t n : kLengths) {
        const auto data = make_row(n, n);
        for (std::size_t off : {0, 1}) {
            const auto a = mq::row_range(arch, data.data() + off, n);
            const auto b = mq::row_range_ref(data.data() + off, n);
            CHECK(a.finite);
            CHECK(a.lo == b.lo);
            CHECK(a.hi == b.hi);
        }
        for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()}) {
            for (std::size_t pos : {std::size_t{0}, n / 2, n - 1}) {
                auto x = data;
                x[pos] = bad;
                CHECK_FALSE(mq::row_range(arch, x.data(), n).finite);
                CHECK_FALSE(mq::row_range(xsimd::sse4_2{}, x.data(), n).finite);
                CHECK_FALSE(mq::row_range_ref(x.data(), n).finite);
            }
        }
    }
    const auto empty = mq::row_range(arch, nullptr, 0);
    CHECK(empty.finite);
    CHECK(empty.lo > empty.hi);
    });
}

TEST_CASE("quantize_row / dequantize_row / quantize_row_dynamic equal the reference, bits 2..8 (AVX2)") {
    check_all_bits(mq::default_arch{});
}

// The wider arches add their own code only for 8 bits (the in-range codes and the range); the
// other widths run the AVX2 code on them, tested above (one instantiation each keeps this TU light).
TEST_CASE("quantize_row_dynamic and the 8-bit kernels equal the reference on every arch") {
    mqtest::for_each_arch([](auto arch) {
        check_quantize_bits<8, mq::symmetric>(arch);
        check_quantize_bits<8, mq::asymmetric>(arch);
    });
}

// The in-range form (per-token 8-bit, the fused rotation's quantizer): the reference's codes on
// every arch, for lengths around its 64- and 32-float steps.
TEST_CASE("quantize_row_in_range equals quantize_row_ref (8-bit, both symmetries), every arch") {
    mqtest::for_each_arch([](auto arch) {
        for (std::size_t n : {1u, 31u, 32u, 63u, 64u, 65u, 96u, 127u, 128u, 200u, 768u, 1537u}) {
            for (std::size_t off : {0, 1}) {
                CAPTURE(n);
                const auto data = make_row(n, 77 + n, off ? 0.8f : 0.0f);
                const float* x = data.data() + off;
                const mq::RowRange rr = mq::row_range_ref(x, n);
                auto run = [&]<class S>(S) {
                    using R = mq::BitRange<8, S>;
                    using Code = std::conditional_t<S::is_symmetric, std::int8_t, std::uint8_t>;
                    const mq::QuantParams p = mq::params_from_range<8, S>(rr.lo, rr.hi);
                    std::vector<Code> a(n + 1, Code{42}), b(n + 1, Code{42});
                    mq::quantize_row_in_range<R>(arch, x, n, p, a.data());
                    mq::quantize_row_ref<R>(x, n, p, b.data());
                    CHECK(a == b);
                };
                run(mq::symmetric{});
                run(mq::asymmetric{});
            }
        }
    });
}

TEST_CASE("the portable (non-AVX2) vector path equals the reference too (SSE4.2)") {
    check_all_bits(xsimd::sse4_2{});
}

TEST_CASE("rounding is round-half-to-even, saturation at the code range ends") {
    using R = mq::BitRange<8, mq::symmetric>;
    // inv_scale = 1: x·inv_scale is exact, so the halfway cases are real ties.
    const mq::QuantParams p{1.0f, 1.0f, 0};
    std::vector<float> x = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.49f, 126.5f, 127.5f, 1e30f, -1e30f, -127.5f};
    x.resize(40, 0.25f); // long enough for the 32-wide AVX2 loop
    std::vector<std::int8_t> a(x.size()), b(x.size());
    mq::quantize_row<R>(mq::default_arch{}, x.data(), x.size(), p, a.data());
    mq::quantize_row_ref<R>(x.data(), x.size(), p, b.data());
    const int want[] = {0, 2, 2, 0, -2, -2, 3, 126, 127, 127, -127, -127};
    for (int i = 0; i < 12; ++i) {
        CHECK(int(a[i]) == want[i]);
        CHECK(int(b[i]) == want[i]);
    }
    CHECK(int(a[39]) == 0);
    // Asymmetric: the zero point is added after rounding.
    using U = mq::BitRange<4, mq::asymmetric>;
    const mq::QuantParams pu{1.0f, 1.0f, 3};
    std::vector<std::uint8_t> u(x.size()), v(x.size());
    mq::quantize_row<U>(mq::default_arch{}, x.data(), x.size(), pu, u.data());
    mq::quantize_row_ref<U>(x.data(), x.size(), pu, v.data());
    CHECK(u == v);
    CHECK(int(u[0]) == 3);   // round(0.5) = 0, + 3
    CHECK(int(u[2]) == 5);   // round(2.5) = 2, + 3
    CHECK(int(u[5]) == 1);   // round(-2.5) = -2, + 3
    CHECK(int(u[7]) == 15);  // saturates at qmax
    CHECK(int(u[10]) == 0);  // saturates at qmin
}

TEST_CASE("huge products saturate exactly like the reference (8-bit asymmetric: clamp by packus)") {
    using R = mq::BitRange<8, mq::asymmetric>;
    const mq::QuantParams p{0.5f, 2.0f, 128};
    std::vector<float> x = {1e30f, -1e30f, 3e9f, -3e9f, 1.1e9f, -1.1e9f, 2.2e9f, -2.2e9f, 63.75f, -64.25f, 63.5f, -64.5f,
                            16777217.0f, -16777217.0f, std::numeric_limits<float>::max(), -std::numeric_limits<float>::max()};
    x.resize(64, 0.3f);
    for (std::size_t shift = 0; shift < 32; ++shift) { // every lane position of the 32-wide loop
        std::vector<float> y(x.size());
        for (std::size_t i = 0; i < x.size(); ++i) y[(i + shift) % y.size()] = x[i];
        std::vector<std::uint8_t> a(y.size()), b(y.size());
        mq::quantize_row<R>(mq::default_arch{}, y.data(), y.size(), p, a.data());
        mq::quantize_row_ref<R>(y.data(), y.size(), p, b.data());
        CHECK(a == b);
    }
    std::vector<std::uint8_t> b(x.size());
    mq::quantize_row_ref<R>(x.data(), x.size(), p, b.data());
    CHECK(int(b[0]) == 255);
    CHECK(int(b[1]) == 0);
    CHECK(int(b[8]) == 255); // round(127.5) = 128 (even), + 128 → clamp 255
    CHECK(int(b[9]) == 0);   // round(-128.5) = -128, + 128 = 0
    CHECK(int(b[10]) == 255); // round(127) + 128 = 255
    CHECK(int(b[11]) == 0);  // round(-129) + 128 → clamp 0
}

TEST_CASE("fused dynamic kernel writes nothing for a non-finite row") {
    auto x = make_row(100, 7);
    x[57] = std::numeric_limits<float>::quiet_NaN();
    std::vector<std::int8_t> q(100, 5);
    const auto r = mq::quantize_row_dynamic<8, mq::symmetric>(mq::default_arch{}, x.data(), 100, q.data());
    CHECK_FALSE(r.range.finite);
    CHECK(q == std::vector<std::int8_t>(100, 5));
}
