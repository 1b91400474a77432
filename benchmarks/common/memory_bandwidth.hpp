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

// XOR of every 64-bit word of [p, p + bytes) (bytes a multiple of 64): the loads are the work.
// The range is read as kStreams interleaved sequential streams (one cache line of each per
// step) because one core reads DRAM faster that way: each 4 KiB page stream gets its own
// hardware-prefetch tracker, so more lines are in flight. Measured here on one core, 1 GiB:
// 1 stream 12.3 GB/s, 4 streams 15.8, 8 streams 16.0 (at another moment all ≈ 16.5); a kernel
// is compared with what the core can really read, so the faster form is the yardstick.
inline constexpr std::size_t kStreams = 8;

inline std::uint64_t xor_stream(const char* p, std::size_t bytes) noexcept {
    const std::size_t lines = bytes / 64, per = lines / kStreams;
#if defined(__AVX2__)
    __m256i acc[kStreams];
    for (auto& v : acc) v = _mm256_setzero_si256();
    for (std::size_t l = 0; l < per; ++l)
        for (std::size_t s = 0; s < kStreams; ++s) {
            const auto* q = reinterpret_cast<const __m256i*>(p + (s * per + l) * 64);
            acc[s] = _mm256_xor_si256(acc[s], _mm256_xor_si256(_mm256_load_si256(q), _mm256_load_si256(q + 1)));
        }
    for (std::size_t l = kStreams * per; l < lines; ++l) {
        const auto* q = reinterpret_cast<const __m256i*>(p + l * 64);
        acc[0] = _mm256_xor_si256(acc[0], _mm256_xor_si256(_mm256_load_si256(q), _mm256_load_si256(q + 1)));
    }
    __m256i a = acc[0];
    for (std::size_t s = 1; s < kStreams; ++s) a = _mm256_xor_si256(a, acc[s]);
    alignas(32) std::uint64_t r[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(r), a);
    return r[0] ^ r[1] ^ r[2] ^ r[3];
#else
    std::uint64_t acc[kStreams] = {};
    for (std::size_t l = 0; l < per; ++l)
        for (std::size_t s = 0; s < kStreams; ++s)
            for (std::size_t j = 0; j < 8; ++j) {
                std::uint64_t v;
                std::memcpy(&v, p + (s * per + l) * 64 + 8 * j, sizeof v);
                acc[s] ^= v;
            }
    for (std::size_t l = kStreams * per; l < lines; ++l)
        for (std::size_t j = 0; j < 8; ++j) {
            std::uint64_t v;
            std::memcpy(&v, p + l * 64 + 8 * j, sizeof v);
            acc[0] ^= v;
        }
    std::uint64_t r = 0;
    for (auto v : acc) r ^= v;
    return r;
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
