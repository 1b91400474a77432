// BM_f32_fwht/<arch>/<n> (SIMD kernel, once per arch the CPU runs) beside BM_f32_fwht_ref/<n> (plain
// radix-2 loop + dense block) on a batch of 1024 rows, in place; items = elements transformed,
// bytes = 4 read + 4 written per element. BM_f32_fwht_quant_i8/<arch>/<n>: the fused transform +
// per-token uint8 quantization.
#include <mambaquant/kernels/fwht.hpp>

#include "common/bench_arch.hpp"

#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

namespace {

constexpr std::size_t kRows = 1024;

mq::aligned_vector<float> random_rows(std::size_t n) {
    mq::aligned_vector<float> x(kRows * n);
    mq::Rng rng(n);
    for (auto& v : x) v = static_cast<float>(rng.normal());
    return x;
}

void set_counters(benchmark::State& state, std::size_t n, std::size_t bytes_per_element) {
    const auto elements = static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(kRows * n);
    state.SetItemsProcessed(elements);
    state.SetBytesProcessed(elements * static_cast<std::int64_t>(bytes_per_element));
}

template <class Arch>
void BM_f32_fwht(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    const mq::FwhtPlan plan = mq::make_fwht_plan(n);
    auto x = random_rows(n);
    for (auto _ : state) {
        mq::fwht(Arch{}, mq::MatrixView<float>(x.data(), kRows, n), plan);
        benchmark::ClobberMemory();
    }
    set_counters(state, n, 8);
}

void BM_f32_fwht_ref(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    const mq::FwhtPlan plan = mq::make_fwht_plan(n);
    auto x = random_rows(n);
    for (auto _ : state) {
        mq::fwht_ref(mq::MatrixView<float>(x.data(), kRows, n), plan);
        benchmark::ClobberMemory();
    }
    set_counters(state, n, 8);
}

// Fused online rotation + dynamic per-token uint8 (mq::A8PerToken); bytes = 4 read + 1 written.
template <class Arch>
void BM_f32_fwht_quant_i8(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    const mq::FwhtPlan plan = mq::make_fwht_plan(n);
    const auto x = random_rows(n);
    std::vector<std::uint8_t> codes(kRows * n);
    std::vector<mq::QuantParams> params(kRows);
    mq::aligned_vector<float> scratch(mq::fwht_quantize_scratch_size(n));
    for (auto _ : state) {
        mq::fwht_quantize<mq::asymmetric>(Arch{}, mq::ConstMatrixView<float>(x.data(), kRows, n), plan,
                                          mq::MatrixView<std::uint8_t>(codes.data(), kRows, n), params, scratch);
        benchmark::DoNotOptimize(codes.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, n, 5);
}

void sizes(benchmark::internal::Benchmark* b) {
    for (long n : {256, 1024, 2048, 4096, 8192, 768, 1536, 2560, 5120}) b->Arg(n);
    b->Unit(benchmark::kMicrosecond);
}

[[maybe_unused]] const bool registered = mqbench::for_each_bench_arch([](auto arch) {
    using Arch = decltype(arch);
    const std::string a = mqbench::arch_suffix(arch);
    benchmark::RegisterBenchmark(("BM_f32_fwht" + a).c_str(), BM_f32_fwht<Arch>)->Apply(sizes);
    benchmark::RegisterBenchmark(("BM_f32_fwht_quant_i8" + a).c_str(), BM_f32_fwht_quant_i8<Arch>)->Apply(sizes);
});

} // namespace

BENCHMARK(BM_f32_fwht_ref)->Apply(sizes);
