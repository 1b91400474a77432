// Benchmarks of the causal depthwise conv1d (K = 4, bias, SiLU), float and on 8-bit codes, per
// arch (BM_f32_conv1d/<arch>/E/L, BM_i8_conv1d/<arch>/E/L) beside the scalar references.
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/conv1d.hpp>
#include <mambaquant/kernels/quantized_conv1d.hpp>
#include <mambaquant/quant/params.hpp>

#include "common/bench_arch.hpp"

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

namespace {

struct ConvData {
    mq::MatrixXf x, w, window, y;
    mq::aligned_vector<float> bias;
    ConvData(std::size_t E, std::size_t L) {
        mq::Rng rng(7);
        x.resize(static_cast<Eigen::Index>(L), static_cast<Eigen::Index>(E));
        y.resize(static_cast<Eigen::Index>(L), static_cast<Eigen::Index>(E));
        w.resize(4, static_cast<Eigen::Index>(E)); // tap-major [K, E]
        window.setZero(3, static_cast<Eigen::Index>(E));
        for (auto& v : x.reshaped()) v = static_cast<float>(rng.normal());
        for (auto& v : w.reshaped()) v = static_cast<float>(0.5 * rng.normal());
        bias.assign(E, 0.1f);
    }
    mq::CausalConv1dArgs args() {
        mq::CausalConv1dArgs a;
        a.x = mq::view(x);
        a.weight = mq::view(w);
        a.bias = bias.data();
        a.window = mq::view(window);
        a.y = mq::view(y);
        return a;
    }
};

// The int8 conv's extra inputs: codes in [−127, 127] as weights, s_w·s_x, a static input range.
struct QuantConvData : ConvData {
    mq::aligned_vector<float> out_scale;
    mq::QuantParams input = mq::params_from_range<8, mq::asymmetric>(-3.0f, 3.0f);
    QuantConvData(std::size_t E, std::size_t L) : ConvData(E, L) {
        for (auto& v : w.reshaped()) v = std::round(std::fmin(std::fmax(v * 100.0f, -127.0f), 127.0f));
        out_scale.assign(E, 0.01f * input.scale);
    }
    mq::QuantizedConv1dArgs qargs() {
        mq::QuantizedConv1dArgs q;
        q.conv = args();
        q.out_scale = out_scale.data();
        q.input = input;
        return q;
    }
};

void set_conv_counters(benchmark::State& st, std::size_t E, std::size_t L) {
    st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(L));
    // bytes: x read + y written (the weights stay in cache)
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(2 * L * E * sizeof(float)));
}

// kRef: the scalar reference; otherwise the SIMD kernel on Arch.
template <bool kRef, class Arch = mq::avx2>
void conv(benchmark::State& st) {
    const auto E = static_cast<std::size_t>(st.range(0)), L = static_cast<std::size_t>(st.range(1));
    ConvData data(E, L);
    const auto a = data.args();
    for (auto _ : st) {
        if constexpr (kRef) mq::causal_conv1d_ref(a);
        else mq::causal_conv1d(Arch{}, a);
        benchmark::DoNotOptimize(data.y.data());
    }
    set_conv_counters(st, E, L);
}

template <bool kRef, class Arch = mq::avx2>
void quantized_conv(benchmark::State& st) {
    const auto E = static_cast<std::size_t>(st.range(0)), L = static_cast<std::size_t>(st.range(1));
    QuantConvData data(E, L);
    const auto q = data.qargs();
    for (auto _ : st) {
        if constexpr (kRef) mq::quantized_causal_conv1d_ref(q);
        else mq::quantized_causal_conv1d(Arch{}, q);
        benchmark::DoNotOptimize(data.y.data());
    }
    set_conv_counters(st, E, L);
}

void BM_f32_conv1d_ref(benchmark::State& st) { conv<true>(st); }
void BM_i8_conv1d_ref(benchmark::State& st) { quantized_conv<true>(st); }

[[maybe_unused]] const bool registered = mqbench::for_each_bench_arch([](auto arch) {
    using Arch = decltype(arch);
    const std::string a = mqbench::arch_suffix(arch);
    benchmark::RegisterBenchmark(("BM_f32_conv1d" + a).c_str(), conv<false, Arch>)
        ->Args({1536, 1024})->Args({5120, 1024})->Args({1536, 1})->Args({5120, 1});
    benchmark::RegisterBenchmark(("BM_i8_conv1d" + a).c_str(), quantized_conv<false, Arch>)
        ->Args({1536, 1024})->Args({5120, 1024})->Args({1536, 1})->Args({5120, 1});
});

} // namespace

BENCHMARK(BM_f32_conv1d_ref)->Args({1536, 1024})->Args({5120, 1024})->Args({1536, 1})->Args({5120, 1});
BENCHMARK(BM_i8_conv1d_ref)->Args({1536, 1024})->Args({1536, 1});
