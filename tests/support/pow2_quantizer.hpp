// Test support: a user-defined quantizer policy whose results differ visibly from the built-in
// one — every scale rounded *up* to a power of two (no value is clipped, and x·(1/s) is exact).
// It models mq::QuantizerPolicy through its members alone (no trait specialized).
#pragma once

#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/range.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace mqtest {

template <int Bits, class G, class S>
struct Pow2Quantizer {
    static constexpr int bits = Bits;
    static constexpr bool is_float = false;
    using granularity = G;
    using symmetry = S;
    using range = mq::BitRange<Bits, S>;
    using code_type = std::conditional_t<S::is_symmetric, std::int8_t, std::uint8_t>;

    // scale = 2^⌈log2(s)⌉ for the built-in s of [min(lo, 0), max(hi, 0)]; zero re-derived for it.
    static mq::QuantParams params(float lo, float hi) noexcept {
        mq::QuantParams p = mq::params_from_range<Bits, S>(lo, hi);
        p.scale = std::exp2(std::ceil(std::log2(p.scale)));
        p.inv_scale = 1.0f / p.scale; // exact: a power of two
        if constexpr (!S::is_symmetric) {
            const float z = std::nearbyint(-std::min(lo, 0.0f) * p.inv_scale) + static_cast<float>(range::min);
            p.zero = static_cast<std::int32_t>(std::clamp(z, static_cast<float>(range::min), static_cast<float>(range::max)));
        }
        return p;
    }
};

// True when s > 0 is an exact power of two.
inline bool is_power_of_two(float s) {
    int e = 0;
    return s > 0.0f && std::frexp(s, &e) == 0.5f;
}

} // namespace mqtest
