// The machine's memory bandwidth, measured in the same run as a kernel so a ratio reads off one
// run: a STREAM-style copy and a read-only stream over buffers far larger than the last-level
// cache, on one thread and on a 2-thread pool (the _mt twins, split like the kernels' _mt runs).
// Include from exactly one translation unit per benchmark executable.
//
// Which to compare with: a GEMV reads its weight once and writes almost nothing, so its bytes/s
// (weight bytes per call) is fairly compared with BM_memory_read (bytes read); BM_memory_copy
// counts read + written bytes and pays write-allocate traffic, so it is a looser yardstick.
// One core cannot saturate a server's memory controllers (a core's line-fill buffers cap its
// outstanding misses), so a 1-thread kernel is compared with the 1-thread read and a 2-thread
// kernel with BM_memory_read_mt.
#pragma once

#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/parallel.hpp>
#include <mambaquant/kernels/qgemm.hpp>

#include <benchmark/benchmark.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace mqbench {

// 1 GiB per buffer: twice this VM's 480 MiB L3 (lscpu), so no pass finds its data cached.
inline constexpr std::size_t kStreamBytes = std::size_t{1} << 30;

inline mq::ThreadPool& bandwidth_pool() {
    static mq::ThreadPool pool(2);
    return pool;
}

// XOR of every 64-bit word of [p, p + bytes) (bytes a multiple of 256): the loads are the work;
// four independent accumulators keep the adds off the critical path.
inline std::uint64_t xor_stream(const char* p, std::size_t bytes) noexcept {
#if defined(__AVX2__)
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (std::size_t i = 0; i < bytes; i += 256) {
        const auto* q = reinterpret_cast<const __m256i*>(p + i);
        a0 = _mm256_xor_si256(a0, _mm256_xor_si256(_mm256_load_si256(q + 0), _mm256_load_si256(q + 1)));
        a1 = _mm256_xor_si256(a1, _mm256_xor_si256(_mm256_load_si256(q + 2), _mm256_load_si256(q + 3)));
        a2 = _mm256_xor_si256(a2, _mm256_xor_si256(_mm256_load_si256(q + 4), _mm256_load_si256(q + 5)));
        a3 = _mm256_xor_si256(a3, _mm256_xor_si256(_mm256_load_si256(q + 6), _mm256_load_si256(q + 7)));
    }
    const __m256i a = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    alignas(32) std::uint64_t r[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(r), a);
    return r[0] ^ r[1] ^ r[2] ^ r[3];
#else
    std::uint64_t a[4] = {0, 0, 0, 0};
    for (std::size_t i = 0; i < bytes; i += 32)
        for (int j = 0; j < 4; ++j) {
            std::uint64_t v;
            std::memcpy(&v, p + i + 8 * j, sizeof v);
            a[j] ^= v;
        }
    return a[0] ^ a[1] ^ a[2] ^ a[3];
#endif
}

// The 2-thread runs cut the buffer like qgemv cuts its weight (kGemvTasksPerThread contiguous
// ranges per thread, claimed as threads finish), so both meet a busy machine the same way.
inline constexpr std::size_t kLine = 256;

// bytes/s = bytes read + bytes written.
inline void memory_copy(benchmark::State& state, mq::ThreadPool* pool) {
    const auto bytes = static_cast<std::size_t>(state.range(0));
    mq::aligned_vector<char> src(bytes, 1), dst(bytes, 0);
    for (auto _ : state) {
        mq::parallel_ranges(pool, bytes / kLine, [&](std::size_t l0, std::size_t l1) {
            std::memcpy(dst.data() + l0 * kLine, src.data() + l0 * kLine, (l1 - l0) * kLine);
        }, mq::kGemvTasksPerThread);
        benchmark::DoNotOptimize(dst.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * 2 * static_cast<std::int64_t>(bytes));
}

// bytes/s = bytes read.
inline void memory_read(benchmark::State& state, mq::ThreadPool* pool) {
    const auto bytes = static_cast<std::size_t>(state.range(0));
    const mq::aligned_vector<char> src(bytes, 1);
    std::atomic<std::uint64_t> sink{0};
    for (auto _ : state) {
        mq::parallel_ranges(pool, bytes / kLine, [&](std::size_t l0, std::size_t l1) {
            sink.fetch_xor(xor_stream(src.data() + l0 * kLine, (l1 - l0) * kLine), std::memory_order_relaxed);
        }, mq::kGemvTasksPerThread);
        std::uint64_t v = sink.load(std::memory_order_relaxed);
        benchmark::DoNotOptimize(v);
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(bytes));
}

} // namespace mqbench

inline void BM_memory_copy(benchmark::State& state) { mqbench::memory_copy(state, nullptr); }
inline void BM_memory_copy_mt(benchmark::State& state) { mqbench::memory_copy(state, &mqbench::bandwidth_pool()); }
inline void BM_memory_read(benchmark::State& state) { mqbench::memory_read(state, nullptr); }
inline void BM_memory_read_mt(benchmark::State& state) { mqbench::memory_read(state, &mqbench::bandwidth_pool()); }
BENCHMARK(BM_memory_copy)->Arg(mqbench::kStreamBytes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_memory_copy_mt)->Arg(mqbench::kStreamBytes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_memory_read)->Arg(mqbench::kStreamBytes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_memory_read_mt)->Arg(mqbench::kStreamBytes)->Unit(benchmark::kMillisecond)->UseRealTime();
