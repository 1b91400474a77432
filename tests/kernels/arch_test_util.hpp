// The kernel tests run once per SIMD arch this binary compiled and the CPU supports (capped by
// MQ_ARCH), and say at exit which arches ran; MQ_EXPECT_ARCH=<arch> makes the widest one a check.
#pragma once

#include <mambaquant/core/simd.hpp>

#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace mqtest {

struct ArchLog {
    bool ran[3] = {false, false, false};
    ~ArchLog() {
        std::string s;
        for (int i = 0; i < 3; ++i)
            if (ran[i]) s += std::string(s.empty() ? "" : " ") + mq::arch_name(static_cast<mq::arch_id>(i));
        if (!s.empty()) std::printf("mambaquant kernel tests ran on: %s (CPU best: %s)\n", s.c_str(),
                                    mq::arch_name(mq::detected_arch()));
    }
};
inline ArchLog& arch_log() {
    static ArchLog log;
    return log;
}

// avx2 and up to the active arch (the CPU's best, capped by MQ_ARCH), as far as this TU compiled.
inline std::vector<mq::arch_id> test_arches() {
    std::vector<mq::arch_id> v;
    const mq::arch_id top = mq::runnable_arch(mq::active_arch());
    for (mq::arch_id a : {mq::arch_id::baseline, mq::arch_id::avx2, mq::arch_id::avx512vnni})
        if (static_cast<int>(a) <= static_cast<int>(top) && (a != mq::arch_id::baseline || top == a)) v.push_back(a);
    return v;
}

// f(tag) for every test arch, each under a doctest CAPTURE of its name.
template <class F>
void for_each_arch(F&& f) {
    for (mq::arch_id a : test_arches()) {
        const std::string name = mq::arch_name(a);
        CAPTURE(name);
        arch_log().ran[static_cast<int>(a)] = true;
        mq::dispatch(a, f);
    }
}

} // namespace mqtest
