// quant/int4.hpp: the nibble order (element 2i low, 2i+1 high), signed/unsigned round trips on
// Mamba and odd lengths, SIMD unpack == reference, and the packing errors.
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/quant/int4.hpp>
#include <mambaquant/kernels/quantized_tensor.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

namespace {
const std::size_t kLengths[] = {768, 1536, 2560, 5120, 16, 0, 1, 2, 3, 31, 32, 33, 63, 65, 1023};

template <class Code>
std::vector<Code> random_codes(std::size_t n, std::uint64_t seed) {
    mq::Rng rng(seed);
    std::vector<Code> c(n);
    for (auto& v : c) v = static_cast<Code>(mq::kInt4Min<Code> + static_cast<int>(rng() % 16));
    return c;
}
} // namespace

TEST_CASE("nibble order: element 2i in the low nibble, 2i+1 in the high nibble; odd tail zero-padded") {
    const std::vector<std::int8_t> s = {1, 2, 3, -1, 7, -8, -3};
    std::vector<std::uint8_t> p(4);
    mq::pack_int4(std::span<const std::int8_t>(s), std::span<std::uint8_t>(p));
    CHECK(p == std::vector<std::uint8_t>{0x21, 0xF3, 0x87, 0x0D});
    const std::vector<std::uint8_t> u = {15, 0, 0, 15, 9};
    std::vector<std::uint8_t> pu(3);
    mq::pack_int4(std::span<const std::uint8_t>(u), std::span<std::uint8_t>(pu));
    CHECK(pu == std::vector<std::uint8_t>{0x0F, 0xF0, 0x09});

    std::vector<std::int8_t> back(7);
    mq::unpack_int4(std::span<const std::uint8_t>(p), std::span<std::int8_t>(back));
    CHECK(back == s);
    // The same bytes read as unsigned codes: the raw nibbles.
    std::vector<std::uint8_t> raw(7);
    mq::unpack_int4(std::span<const std::uint8_t>(p), std::span<std::uint8_t>(raw));
    CHECK(raw == std::vector<std::uint8_t>{1, 2, 3, 15, 7, 8, 13});
    CHECK(mq::int4_packed_size(7) == 4);
    CHECK(mq::int4_packed_size(0) == 0);
}

TEST_CASE("int4 round trip and SIMD unpack == reference, signed and unsigned, Mamba and odd lengths") {
    auto run = [](auto tag) {
        using Code = typename decltype(tag)::type;
        for (std::size_t n : kLengths) {
            const auto c = random_codes<Code>(n, 100 + n);
            std::vector<std::uint8_t> p(mq::int4_packed_size(n), 0xAA);
            mq::pack_int4(std::span<const Code>(c), std::span<std::uint8_t>(p));
            if (n % 2 == 1) CHECK((p.back() >> 4) == 0);
            std::vector<Code> a(n + 1, Code{5}), b(n + 1, Code{5});
            mq::unpack_int4_row(mq::default_arch{}, p.data(), n, a.data());
            mq::unpack_int4_row_ref(p.data(), n, b.data());
            CHECK(a == b);
            CHECK(a[n] == Code{5});
            a.pop_back();
            CHECK(a == c);
        }
    };
    run(std::type_identity<std::int8_t>{});
    run(std::type_identity<std::uint8_t>{});
}

TEST_CASE("4-bit quantized codes survive packing") {
    mq::Rng rng(3);
    mq::MatrixXf x(4, 256);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.normal());
    const auto t = mq::quantize_tensor<mq::W4PerGroup<128>>(mq::view(x));
    std::vector<std::uint8_t> packed(mq::int4_packed_size(t.codes.size()));
    mq::pack_int4(std::span<const std::int8_t>(t.codes.data(), t.codes.size()), std::span<std::uint8_t>(packed));
    std::vector<std::int8_t> back(t.codes.size());
    mq::unpack_int4(std::span<const std::uint8_t>(packed), std::span<std::int8_t>(back));
    CHECK(std::equal(back.begin(), back.end(), t.codes.begin()));
    const auto u = mq::quantize_tensor<mq::Quantizer<4, mq::per_token, mq::asymmetric>>(mq::view(x));
    std::vector<std::uint8_t> pu(mq::int4_packed_size(u.codes.size()));
    mq::pack_int4(std::span<const std::uint8_t>(u.codes.data(), u.codes.size()), std::span<std::uint8_t>(pu));
    std::vector<std::uint8_t> bu(u.codes.size());
    mq::unpack_int4(std::span<const std::uint8_t>(pu), std::span<std::uint8_t>(bu));
    CHECK(std::equal(bu.begin(), bu.end(), u.codes.begin()));
}

TEST_CASE("int4 packing errors: codes out of 4-bit range, wrong buffer sizes") {
    const std::vector<std::int8_t> s = {1, 8, 3};
    std::vector<std::uint8_t> p(2);
    CHECK_THROWS_WITH_AS(mq::pack_int4(std::span<const std::int8_t>(s), std::span<std::uint8_t>(p), "w"),
                         "pack_int4: 'w'[1] = 8 does not fit 4 bits (expected [-8, 7])", mq::error);
    const std::vector<std::uint8_t> u = {16};
    std::vector<std::uint8_t> pu(1);
    CHECK_THROWS_WITH_AS(mq::pack_int4(std::span<const std::uint8_t>(u), std::span<std::uint8_t>(pu)),
                         "pack_int4: 'codes'[0] = 16 does not fit 4 bits (expected [0, 15])", mq::error);
    const std::vector<std::int8_t> ok = {1, 2, 3};
    std::vector<std::uint8_t> small(1);
    CHECK_THROWS_WITH_AS(mq::pack_int4(std::span<const std::int8_t>(ok), std::span<std::uint8_t>(small)),
                         "pack_int4: 'codes' has 3 codes, so the packed buffer must have 2 bytes, got 1", mq::error);
    std::vector<std::int8_t> out(5);
    CHECK_THROWS_WITH_AS(mq::unpack_int4(std::span<const std::uint8_t>(small), std::span<std::int8_t>(out)),
                         "unpack_int4: 'packed' must have 3 bytes for 5 codes, got 1", mq::error);
}
