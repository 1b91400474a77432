// A seeded generator whose output is the same on every machine and standard library.
#pragma once

#include <mambaquant/core/config.hpp>

#include <cmath>
#include <cstdint>
#include <limits>

MQ_NAMESPACE_BEGIN

// xoshiro256** seeded through splitmix64. std::mt19937 is portable but std::*_distribution is
// not (each standard library maps bits to values its own way), so the library draws its random
// signs and Gaussians from this generator and its own mappings instead.
class Rng {
public:
    using result_type = std::uint64_t;

    explicit Rng(std::uint64_t seed) noexcept {
        for (auto& word : state_) word = splitmix64(seed);
    }

    static constexpr result_type min() noexcept { return 0; }
    static constexpr result_type max() noexcept { return std::numeric_limits<result_type>::max(); }

    result_type operator()() noexcept {
        const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
        const std::uint64_t t = state_[1] << 17;
        state_[2] ^= state_[0];
        state_[3] ^= state_[1];
        state_[1] ^= state_[2];
        state_[0] ^= state_[3];
        state_[2] ^= t;
        state_[3] = rotl(state_[3], 45);
        return result;
    }

    // Uniform in [0, 1) with 53 random bits.
    double uniform() noexcept { return static_cast<double>((*this)() >> 11) * 0x1.0p-53; }
    double uniform(double lo, double hi) noexcept { return lo + (hi - lo) * uniform(); }
    // +1 or -1 with equal probability, from the top bit.
    int sign() noexcept { return ((*this)() >> 63) ? -1 : 1; }
    // Standard normal by Box-Muller (bit-identical wherever log, sqrt and cos are correctly
    // rounded; within an ulp elsewhere).
    double normal() noexcept {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        const double u1 = 1.0 - uniform(); // (0, 1]: log never sees 0
        const double u2 = uniform();
        const double radius = std::sqrt(-2.0 * std::log(u1));
        const double angle = 6.283185307179586476925 * u2;
        spare_ = radius * std::sin(angle);
        has_spare_ = true;
        return radius * std::cos(angle);
    }

private:
    static std::uint64_t splitmix64(std::uint64_t& x) noexcept {
        std::uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }
    static std::uint64_t rotl(std::uint64_t x, int k) noexcept { return (x << k) | (x >> (64 - k)); }

    std::uint64_t state_[4];
    double spare_ = 0.0;
    bool has_spare_ = false;
};

MQ_NAMESPACE_END
