#include <mambaquant/core/simd.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

TEST_CASE("arch names round-trip; an unknown name is an mq::error naming it") {
    for (mq::arch_id a : {mq::arch_id::baseline, mq::arch_id::avx2, mq::arch_id::avx512vnni})
        CHECK(mq::parse_arch(mq::arch_name(a)) == a);
    try {
        (void)mq::parse_arch("avx1024");
        FAIL("no error");
    } catch (const mq::error& e) {
        CHECK(std::string(e.what()).find("'avx1024'") != std::string::npos);
    }
}

TEST_CASE("set_arch caps the active arch below the CPU's best; reset_arch restores it") {
    const mq::arch_id cpu = mq::detected_arch();
    mq::set_arch(mq::arch_id::avx2);
    CHECK(mq::active_arch() == (cpu == mq::arch_id::baseline ? cpu : mq::arch_id::avx2));
    mq::set_arch(mq::arch_id::avx512vnni); // never above what the CPU has
    CHECK(mq::active_arch() == cpu);
    mq::set_arch(mq::arch_id::baseline);
    CHECK(mq::active_arch() == mq::arch_id::baseline);
    mq::reset_arch();
    const char* env = std::getenv("MQ_ARCH");
    const mq::arch_id cap = env && *env ? mq::parse_arch(env) : mq::arch_id::avx512vnni;
    CHECK(static_cast<int>(mq::active_arch()) == std::min(static_cast<int>(cap), static_cast<int>(cpu)));
}

TEST_CASE("dispatch calls f with the requested arch's tag, lowered to what the TU compiled") {
    auto name = [](mq::arch_id a) { return mq::dispatch(a, [](auto tag) { return std::string(decltype(tag)::name()); }); };
    CHECK(mq::runnable_arch(mq::arch_id::avx512vnni) == mq::compiled_arch());
#if MQ_HAS_AVX512VNNI_KERNELS
    CHECK(name(mq::arch_id::avx512vnni) == "avx512vnni");
#endif
#if MQ_HAS_AVX2_KERNELS
    CHECK(name(mq::arch_id::avx2) == "fma3+avx2");
    // The project's own targets build with -mavx2 -mfma: the AVX2 baseline is always there.
    static_assert(std::is_same_v<mq::default_arch, mq::avx2>);
#endif
    static_assert(std::is_base_of_v<mq::avx2, mq::avx512vnni>, "avx512vnni runs every AVX2 path it does not widen");
}
