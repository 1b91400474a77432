// The machine's memory bandwidth, measured in the same run as a kernel so a ratio reads off one
// run: a STREAM-style copy of buffers far larger than the caches (bytes/s counts read + write).
// Include from exactly one translation unit per benchmark executable.
#pragma once

#include <mambaquant/core/tensor.hpp>

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstring>

inline void BM_memory_copy(benchmark::State& state) {
    const auto bytes = static_cast<std::size_t>(state.range(0));
    mq::aligned_vector<char> src(bytes, 1), dst(bytes, 0);
    for (auto _ : state) {
        std::memcpy(dst.data(), src.data(), bytes);
        benchmark::DoNotOptimize(dst.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * 2 * static_cast<std::int64_t>(bytes));
}
BENCHMARK(BM_memory_copy)->Arg(256 << 20)->Unit(benchmark::kMillisecond)->UseRealTime();
