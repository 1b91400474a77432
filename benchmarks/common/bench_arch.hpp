// Registers a benchmark family once per SIMD arch this machine runs: avx2, then avx512vnni when
// the CPU has it (MQ_ARCH caps the list), so BM_<dtype>_<op>/<arch>/<shape> reads both off one run.
#pragma once

#include <mambaquant/core/simd.hpp>

#include <string>

namespace mqbench {

template <class Arch>
std::string arch_suffix(Arch) {
    return std::string("/") + (mq::is_avx512vnni_v<Arch> ? "avx512vnni" : "avx2");
}

// f(tag) for avx2 and, where it runs, avx512vnni; returns true (for a static initializer).
template <class F>
bool for_each_bench_arch(F&& f) {
    f(mq::avx2{});
#if MQ_HAS_AVX512VNNI_KERNELS
    if (mq::active_arch() == mq::arch_id::avx512vnni) f(mq::avx512vnni{});
#endif
    return true;
}

} // namespace mqbench
