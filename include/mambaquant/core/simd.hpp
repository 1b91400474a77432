// The SIMD architecture a kernel runs on: chosen once per call, everything below is a template.
#pragma once

#include <mambaquant/core/config.hpp>

#include <xsimd/xsimd.hpp>

#include <cstddef>

MQ_NAMESPACE_BEGIN

// Every kernel is `template <class Arch> kernel(Arch, ...)`; the arch tag is part of the symbol,
// so translation units built with different -m flags never share an inline function (ODR).
// The best arch this translation unit was compiled for; engines that ship several ISAs pass
// their own tag or use xsimd::dispatch.
using default_arch = xsimd::default_arch;

template <class Arch>
inline constexpr std::size_t simd_width_v = xsimd::batch<float, Arch>::size;

// Rounds n down to a multiple of the batch width (the end of the vector loop).
template <class Arch, class T = float>
constexpr std::size_t simd_floor(std::size_t n) noexcept {
    constexpr std::size_t w = xsimd::batch<T, Arch>::size;
    return n - n % w;
}

MQ_NAMESPACE_END
