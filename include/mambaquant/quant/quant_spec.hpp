// A run-time quantizer description (QuantSpec: bits, granularity, symmetry, group) and
// visit_quantizer, which maps it once, at the top, onto a compile-time Quantizer type.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tags.hpp>
#include <mambaquant/quant/quantizer.hpp>

#include <array>
#include <cstddef>
#include <type_traits>
#include <utility>

MQ_NAMESPACE_BEGIN

// Run-time choice of quantizer (recipes read bits and granularity from a config): a QuantSpec is
// mapped once, at the top, onto a Quantizer type, and everything below is compiled for it.

enum class GranularityKind { per_tensor, per_channel, per_token, per_group };

// Group sizes a run-time spec may name (each is a compiled instantiation).
inline constexpr std::array<std::size_t, 4> kRuntimeGroupSizes{32, 64, 128, 256};

struct QuantSpec {
    int bits = 8;
    GranularityKind granularity = GranularityKind::per_token;
    bool symmetric = false;
    std::size_t group = 0; // per_group only

    // Throws mq::error for bits outside [2, 8] or an unsupported group size.
    void validate() const {
        require(bits >= 2 && bits <= 8, "QuantSpec: bits must be in [2, 8], got ", bits);
        if (granularity == GranularityKind::per_group) {
            bool ok = false;
            for (std::size_t g : kRuntimeGroupSizes) ok = ok || g == group;
            require(ok, "QuantSpec: group size must be one of 32, 64, 128, 256 for per_group, got ", group);
        }
    }
};

namespace detail {
template <int Bits, class S, class F>
decltype(auto) visit_granularity(const QuantSpec& spec, F&& f) {
    switch (spec.granularity) {
    case GranularityKind::per_tensor: return f(std::type_identity<Quantizer<Bits, per_tensor, S>>{});
    case GranularityKind::per_channel: return f(std::type_identity<Quantizer<Bits, per_channel, S>>{});
    case GranularityKind::per_token: return f(std::type_identity<Quantizer<Bits, per_token, S>>{});
    case GranularityKind::per_group: break;
    }
    switch (spec.group) {
    case 32: return f(std::type_identity<Quantizer<Bits, per_group<32>, S>>{});
    case 64: return f(std::type_identity<Quantizer<Bits, per_group<64>, S>>{});
    case 128: return f(std::type_identity<Quantizer<Bits, per_group<128>, S>>{});
    default: return f(std::type_identity<Quantizer<Bits, per_group<256>, S>>{});
    }
}
template <int Bits, class F>
decltype(auto) visit_symmetry(const QuantSpec& spec, F&& f) {
    if (spec.symmetric) return visit_granularity<Bits, symmetric>(spec, std::forward<F>(f));
    return visit_granularity<Bits, asymmetric>(spec, std::forward<F>(f));
}
} // namespace detail

// Calls f(std::type_identity<Q>{}) with the Quantizer the spec names (after validate()); every
// branch must return the same type. Example:
//   visit_quantizer(spec, [&]<class Q>(std::type_identity<Q>) { return quantize_tensor<Q>(x).dequantize(); });
template <class F>
decltype(auto) visit_quantizer(const QuantSpec& spec, F&& f) {
    spec.validate();
    switch (spec.bits) {
    case 2: return detail::visit_symmetry<2>(spec, std::forward<F>(f));
    case 3: return detail::visit_symmetry<3>(spec, std::forward<F>(f));
    case 4: return detail::visit_symmetry<4>(spec, std::forward<F>(f));
    case 5: return detail::visit_symmetry<5>(spec, std::forward<F>(f));
    case 6: return detail::visit_symmetry<6>(spec, std::forward<F>(f));
    case 7: return detail::visit_symmetry<7>(spec, std::forward<F>(f));
    default: return detail::visit_symmetry<8>(spec, std::forward<F>(f));
    }
}

MQ_NAMESPACE_END
