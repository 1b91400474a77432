// The SIMD architecture a kernel runs on: the arch tags, the running CPU's best, and run-time dispatch.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>

#include <xsimd/xsimd.hpp>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <string_view>

// The AVX-512 VNNI kernels are compiled inside `#pragma GCC target` regions (see
// MQ_AVX512VNNI_BEGIN), so a translation unit built for AVX2 still contains them and the running
// CPU decides. Only GCC-compatible x86-64 compilers that honour the pragma get them (clang ignores
// `#pragma GCC target`, so it is left out), and only over an AVX2+FMA baseline: the generic
// (xsimd) parts of every kernel run on the AVX2 batches.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#define MQ_HAS_AVX2_KERNELS 1
#define MQ_HAS_AVX512VNNI_KERNELS 1
#elif defined(__AVX2__) && defined(__FMA__)
#define MQ_HAS_AVX2_KERNELS 1
#define MQ_HAS_AVX512VNNI_KERNELS 0
#else
#define MQ_HAS_AVX2_KERNELS 0
#define MQ_HAS_AVX512VNNI_KERNELS 0
#endif

// A consumer that compiles without -mavx2 -mfma gets xsimd's default arch for this translation
// unit (SSE2 on plain x86-64) and the scalar references: say so once at build time, because the
// int8 GEMM is then ~10x slower than it could be. Define MQ_NO_ARCH_MESSAGE to silence it.
#if !MQ_HAS_AVX2_KERNELS && (defined(__x86_64__) || defined(_M_X64)) && !defined(MQ_NO_ARCH_MESSAGE)
#pragma message("mambaquant: built without -mavx2 -mfma (-march=x86-64-v3): kernels run on SSE2 and the scalar " \
                "references; add -mavx2 -mfma -mf16c for AVX2 and run-time AVX-512 VNNI dispatch "                 \
                "(define MQ_NO_ARCH_MESSAGE to silence)")
#endif

// Kernel regions compiled for AVX-512 F/BW/DQ/VL + VNNI whatever the TU's -m flags. Everything
// defined inside must be a template on the arch tag (or always-inline and used only there), so
// no AVX-512 code is ever emitted under a symbol an AVX2 caller could bind to (ODR, as
// ruy/path.h explains): the tag is part of every kernel's mangled name.
#if MQ_HAS_AVX512VNNI_KERNELS
#define MQ_AVX512VNNI_BEGIN \
    _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni\")")
#define MQ_AVX512VNNI_END _Pragma("GCC pop_options")
#endif

MQ_NAMESPACE_BEGIN

// Every kernel is `template <class Arch> kernel(Arch, ...)`; the arch tag is part of the symbol,
// so translation units built with different -m flags never share an inline function (ODR).
// The best arch this translation unit was compiled for; engines that ship several ISAs pass
// their own tag or use mq::dispatch.
using default_arch = xsimd::default_arch;

// The AVX2+FMA baseline (the project's own -mavx2 -mfma -mf16c).
using avx2 = xsimd::fma3<xsimd::avx2>;

// AVX-512 F/BW/DQ/VL with VNNI (vpdpbusd): Ice Lake / Sapphire Rapids Xeons, Zen 4. Derived from
// the AVX2+FMA tag, whose xsimd batches (256-bit) it reuses: every kernel without a wider
// specialization runs its AVX2 path unchanged, and the kernels that pay (the int8/int4 GEMM and
// GEMV) add intrinsics compiled in MQ_AVX512VNNI_BEGIN/END regions.
struct avx512vnni : avx2 {
    static constexpr bool supported() noexcept { return MQ_HAS_AVX512VNNI_KERNELS; }
    static constexpr bool available() noexcept { return true; }
    static constexpr unsigned version() noexcept { return xsimd::generic::version(3, 5, 0); }
    static constexpr char const* name() noexcept { return "avx512vnni"; }
};

template <class Arch>
inline constexpr bool is_avx512vnni_v = std::is_base_of_v<avx512vnni, Arch>;

// Run-time arch ids, ordered: a CPU that supports one supports those below it.
enum class arch_id : int {
    baseline = 0,   // this TU's xsimd::default_arch without AVX2 (SSE2 on plain x86-64) and scalar references
    avx2 = 1,       // AVX2 + FMA + F16C
    avx512vnni = 2, // AVX-512 F/BW/DQ/VL + VNNI
};

constexpr const char* arch_name(arch_id a) noexcept {
    switch (a) {
    case arch_id::avx512vnni: return "avx512vnni";
    case arch_id::avx2: return "avx2";
    default: return "baseline";
    }
}

// "avx2", "avx512vnni", "baseline" → the id; anything else throws mq::error naming the value.
inline arch_id parse_arch(std::string_view name) {
    for (arch_id a : {arch_id::baseline, arch_id::avx2, arch_id::avx512vnni})
        if (name == arch_name(a)) return a;
    require(false, "mambaquant: unknown SIMD arch '", name, "' (expected baseline, avx2 or avx512vnni)");
    return arch_id::baseline;
}

// The widest arch the running CPU (and OS: __builtin_cpu_supports checks the XSAVE state too)
// supports, whatever this binary was compiled for.
inline arch_id detected_arch() noexcept {
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    static const arch_id best = [] {
        if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return arch_id::baseline;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx512vnni"))
            return arch_id::avx512vnni;
        return arch_id::avx2;
    }();
    return best;
#else
    return arch_id::baseline;
#endif
}

namespace detail {
// -1: not set by set_arch(); the environment variable MQ_ARCH (read once) then applies.
inline std::atomic<int>& arch_override() noexcept {
    static std::atomic<int> v{-1};
    return v;
}
inline arch_id env_arch() {
    static const arch_id a = [] {
        const char* s = std::getenv("MQ_ARCH");
        return (s && *s) ? parse_arch(s) : arch_id::avx512vnni;
    }();
    return a;
}
} // namespace detail

// Caps the arch that active_arch() reports (tests and benchmarks force AVX2 on an AVX-512
// machine this way). Without a call, the environment variable MQ_ARCH=avx2|avx512vnni|baseline
// caps it; without either, the CPU decides. Objects that pick their arch at construction
// (Linear, the models built from it) keep the one they picked.
inline void set_arch(arch_id a) noexcept { detail::arch_override().store(static_cast<int>(a)); }
inline void reset_arch() noexcept { detail::arch_override().store(-1); }

// The arch new kernels run on: the CPU's best, capped by set_arch() or MQ_ARCH. Throws mq::error
// for an unknown MQ_ARCH value.
inline arch_id active_arch() {
    const int o = detail::arch_override().load();
    const arch_id cap = o >= 0 ? static_cast<arch_id>(o) : detail::env_arch();
    const arch_id cpu = detected_arch();
    return static_cast<int>(cap) < static_cast<int>(cpu) ? cap : cpu;
}

// The widest arch this translation unit can run: what `dispatch` clamps to. A macro-derived
// value, so it is a template (each TU's lambda types differ anyway; see dispatch).
template <class = void>
constexpr arch_id compiled_arch() noexcept {
#if MQ_HAS_AVX512VNNI_KERNELS
    return arch_id::avx512vnni;
#elif MQ_HAS_AVX2_KERNELS
    return arch_id::avx2;
#else
    return arch_id::baseline;
#endif
}

// The arch `dispatch(a, f)` runs for a request a: a, lowered to what this TU compiled.
template <class = void>
constexpr arch_id runnable_arch(arch_id a) noexcept {
    return static_cast<int>(a) < static_cast<int>(compiled_arch()) ? a : compiled_arch();
}

// Calls f(tag) with the tag of arch a (lowered to what this TU compiled): avx512vnni{}, avx2{} or
// default_arch{}. The shape of xsimd::dispatch, with the choice made by the caller once (at
// construction) instead of per call. Every branch is instantiated, so f must compile for each.
template <class F>
decltype(auto) dispatch(arch_id a, F&& f) {
    switch (runnable_arch(a)) {
#if MQ_HAS_AVX512VNNI_KERNELS
    case arch_id::avx512vnni: return f(avx512vnni{});
#endif
#if MQ_HAS_AVX2_KERNELS
    case arch_id::avx2: return f(avx2{});
#endif
    default: return f(default_arch{});
    }
}

template <class Arch>
inline constexpr std::size_t simd_width_v = xsimd::batch<float, Arch>::size;

// Rounds n down to a multiple of the batch width (the end of the vector loop).
template <class Arch, class T = float>
constexpr std::size_t simd_floor(std::size_t n) noexcept {
    constexpr std::size_t w = xsimd::batch<T, Arch>::size;
    return n - n % w;
}

MQ_NAMESPACE_END

// avx512vnni runs xsimd batches as AVX2+FMA registers (the wide kernels use intrinsics).
#if MQ_HAS_AVX512VNNI_KERNELS
namespace xsimd::types {
XSIMD_DECLARE_SIMD_REGISTER_ALIAS(mq::avx512vnni, mq::avx2);
} // namespace xsimd::types
#endif
