// Benchmarks of the causal depthwise conv1d (K = 4, bias, SiLU) against its scalar reference.
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/conv1d.hpp>

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>

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

template <bool kRef>
void conv(benchmark::State& st) {
    const auto E = static_cast<std::size_t>(st.range(0)), L = static_cast<std::size_t>(st.range(1));
    ConvData data(E, L);
    const auto a = data.args();
    for (auto _ : st) {
        if constexpr (kRef) mq::causal_conv1d_ref(a);
        else mq::causal_conv1d(mq::default_arch{}, a);
        benchmark::DoNotOptimize(data.y.data());
    }
    st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(L));
    // bytes: x read + y written (the weights stay in cache)
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(2 * L * E * sizeof(float)));
}

void BM_f32_conv1d(benchmark::State& st) { conv<false>(st); }
void BM_f32_conv1d_ref(benchmark::State& st) { conv<true>(st); }

} // namespace

BENCHMARK(BM_f32_conv1d)->Args({1536, 1024})->Args({5120, 1024})->Args({1536, 1})->Args({5120, 1});
BENCHMARK(BM_f32_conv1d_ref)->Args({1536, 1024})->Args({5120, 1024})->Args({1536, 1})->Args({5120, 1});
