// Benchmarks of the selective scan (prefill and decode step, BM_f32_selective_scan{,_step}/<arch>/...
// once per arch the CPU runs) against its scalar reference.
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/quantized_scan.hpp>
#include <mambaquant/kernels/selective_scan.hpp>
#include <mambaquant/quant/quantizer.hpp>

#include <benchmark/benchmark.h>

#include "common/bench_arch.hpp"

#include <cmath>
#include <cstddef>
#include <string>

namespace {

constexpr std::size_t kN = 16;

// Mamba-like inputs: Δ = softplus(dt) ∈ ~[1e-3, 1e-1], A = −(1..16) (S4D-real init), x, B, C, z
// standard normal, D = 1.
struct ScanData {
    mq::MatrixXf x, delta, A, B, C, z, state, y;
    mq::aligned_vector<float> D;
    ScanData(std::size_t E, std::size_t L) {
        mq::Rng rng(42);
        const auto Ei = static_cast<Eigen::Index>(E), Li = static_cast<Eigen::Index>(L),
                   Ni = static_cast<Eigen::Index>(kN);
        x.resize(Li, Ei); delta.resize(Li, Ei); z.resize(Li, Ei); y.resize(Li, Ei);
        A.resize(Ei, Ni); state.resize(Ei, Ni); B.resize(Li, Ni); C.resize(Li, Ni);
        for (auto& v : x.reshaped()) v = static_cast<float>(rng.normal());
        for (auto& v : z.reshaped()) v = static_cast<float>(rng.normal());
        for (auto& v : B.reshaped()) v = static_cast<float>(rng.normal());
        for (auto& v : C.reshaped()) v = static_cast<float>(rng.normal());
        for (auto& v : delta.reshaped()) v = static_cast<float>(std::log1p(std::exp(rng.uniform(-6.9, -2.3))));
        for (Eigen::Index d = 0; d < Ei; ++d)
            for (Eigen::Index n = 0; n < Ni; ++n) A(d, n) = -static_cast<float>(n + 1);
        state.setZero();
        D.assign(E, 1.0f);
    }
    mq::SelectiveScanArgs<float> args() {
        mq::SelectiveScanArgs<float> a;
        a.x = mq::view(x); a.delta = mq::view(delta); a.A = mq::view(A); a.B = mq::view(B);
        a.C = mq::view(C); a.D = D.data(); a.z = mq::view(z); a.state = mq::view(state);
        a.y = mq::view(y);
        return a;
    }
};

void set_tokens(benchmark::State& st, std::size_t tokens) {
    st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(tokens));
}

template <class Arch>
void BM_f32_selective_scan(benchmark::State& st) {
    const auto E = static_cast<std::size_t>(st.range(0)), L = static_cast<std::size_t>(st.range(1));
    ScanData data(E, L);
    auto a = data.args();
    for (auto _ : st) {
        mq::selective_scan(Arch{}, a);
        benchmark::DoNotOptimize(data.y.data());
    }
    set_tokens(st, L);
}

void BM_f32_selective_scan_ref(benchmark::State& st) {
    const auto E = static_cast<std::size_t>(st.range(0)), L = static_cast<std::size_t>(st.range(1));
    ScanData data(E, L);
    auto a = data.args();
    for (auto _ : st) {
        mq::selective_scan_ref(a);
        benchmark::DoNotOptimize(data.y.data());
    }
    set_tokens(st, L);
}

// One decode step: the scan over a single token, state carried.
template <class Arch>
void BM_f32_selective_scan_step(benchmark::State& st) {
    const auto E = static_cast<std::size_t>(st.range(0));
    ScanData data(E, 1);
    auto a = data.args();
    for (auto _ : st) {
        mq::selective_scan(Arch{}, a);
        benchmark::DoNotOptimize(data.y.data());
    }
    set_tokens(st, 1);
}

void BM_f32_selective_scan_step_ref(benchmark::State& st) {
    const auto E = static_cast<std::size_t>(st.range(0));
    ScanData data(E, 1);
    auto a = data.args();
    for (auto _ : st) {
        mq::selective_scan_ref(a);
        benchmark::DoNotOptimize(data.y.data());
    }
    set_tokens(st, 1);
}

// The scan with the int8 per-token output matmul (chunks of 8 tokens: recurrence, then quantize), with the
// 16×16 Hadamard on the state dimension (R4).
template <bool kRef, class Arch = mq::avx2>
void quantized_scan(benchmark::State& st) {
    const auto E = static_cast<std::size_t>(st.range(0)), L = static_cast<std::size_t>(st.range(1));
    ScanData data(E, L);
    auto a = data.args();
    mq::aligned_vector<float> ws(mq::quantized_scan_workspace_size(L, E, kN)), h(kN * kN);
    for (std::size_t i = 0; i < kN; ++i)
        for (std::size_t j = 0; j < kN; ++j) h[i * kN + j] = __builtin_popcount(static_cast<unsigned>(i & j)) % 2 ? -0.25f : 0.25f;
    const mq::QuantizedScanArgs q{h.data(), ws.data(), ws.size()};
    for (auto _ : st) {
        if constexpr (kRef) mq::quantized_selective_scan_ref<mq::A8PerToken>(a, q);
        else mq::quantized_selective_scan<Arch, mq::A8PerToken>(Arch{}, a, q);
        benchmark::DoNotOptimize(data.y.data());
    }
    set_tokens(st, L);
}
void BM_i8_quantized_scan_ref(benchmark::State& st) { quantized_scan<true>(st); }

[[maybe_unused]] const bool registered = mqbench::for_each_bench_arch([](auto arch) {
    using Arch = decltype(arch);
    const std::string a = mqbench::arch_suffix(arch);
    benchmark::RegisterBenchmark(("BM_f32_selective_scan" + a).c_str(), BM_f32_selective_scan<Arch>)
        ->Args({1536, 1024})->Args({5120, 1024})->Args({1536, 2048})->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("BM_f32_selective_scan_step" + a).c_str(), BM_f32_selective_scan_step<Arch>)
        ->Arg(1536)->Arg(5120);
    benchmark::RegisterBenchmark(("BM_i8_quantized_scan" + a).c_str(), quantized_scan<false, Arch>)
        ->Args({1536, 1024})->Args({1536, 1})->Unit(benchmark::kMillisecond);
});

} // namespace

BENCHMARK(BM_f32_selective_scan_ref)->Args({1536, 1024})->Args({5120, 1024})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_f32_selective_scan_step_ref)->Arg(1536)->Arg(5120);
BENCHMARK(BM_i8_quantized_scan_ref)->Args({1536, 1024})->Unit(benchmark::kMillisecond);
