// Linear layers with the online Hadamard at their input (the out_proj of a MambaQuant block):
// the fused rotate+quantize path against rotating first and quantizing in a second pass.
#include <mambaquant/nn/linear.hpp>

#include "common/random_matrix.hpp"

#include <benchmark/benchmark.h>

#include <cstddef>
#include <utility>

namespace {
using mqbench::random_matrix;

// FLOP/s counts the GEMM (2·M·K·N); the rotation and quantization are the overhead being compared.
template <class Layer>
void run(benchmark::State& state, bool two_pass) {
    const auto M = static_cast<std::size_t>(state.range(0)), K = static_cast<std::size_t>(state.range(1)),
               N = static_cast<std::size_t>(state.range(2));
    const mq::MatrixXf x = random_matrix(M, K, 1), w = random_matrix(N, K, 2);
    Layer layer(mq::view(w), {}, mq::HadamardOnline(K));
    layer.set_thread_pool(nullptr);
    // The unfused path: rotate a copy, then a layer without rotation over the same packed weight.
    using Plain = mq::Linear<typename Layer::weight_policy, typename Layer::act_policy>;
    Plain plain(layer.weights());
    plain.set_thread_pool(nullptr);
    mq::MatrixXf rotated(x.rows(), x.cols()), y(static_cast<Eigen::Index>(M), static_cast<Eigen::Index>(N));
    for (auto _ : state) {
        if (two_pass) {
            rotated = x;
            layer.input_rotation().apply(mq::view(rotated));
            plain.forward(mq::view(std::as_const(rotated)), mq::view(y));
        } else {
            layer.forward(mq::view(x), mq::view(y));
        }
        benchmark::DoNotOptimize(y.data());
    }
    state.counters["FLOP/s"] = benchmark::Counter(2.0 * double(M * K * N) * double(state.iterations()),
                                                  benchmark::Counter::kIsRate);
}

using W8Hadamard = mq::Linear<mq::W8PerChannel, mq::A8PerToken, mq::HadamardOnline>;
using W4Hadamard = mq::Linear<mq::W4PerGroup<128>, mq::A8PerToken, mq::HadamardOnline>;
} // namespace

static void BM_linear_w8a8_hadamard_fused(benchmark::State& s) { run<W8Hadamard>(s, false); }
static void BM_linear_w8a8_hadamard_two_pass(benchmark::State& s) { run<W8Hadamard>(s, true); }
static void BM_linear_w4a8_hadamard_fused(benchmark::State& s) { run<W4Hadamard>(s, false); }
static void BM_linear_w4a8_hadamard_two_pass(benchmark::State& s) { run<W4Hadamard>(s, true); }

// out_proj of mamba-130m (1536 → 768) and mamba-2.8b (5120 → 2560); prefill M = 512, decode M = 1.
#define MQ_LINEAR_SHAPES ->Args({512, 1536, 768})->Args({1, 1536, 768})->Args({1, 5120, 2560})->Unit(benchmark::kMicrosecond)
BENCHMARK(BM_linear_w8a8_hadamard_fused) MQ_LINEAR_SHAPES;
BENCHMARK(BM_linear_w8a8_hadamard_two_pass) MQ_LINEAR_SHAPES;
BENCHMARK(BM_linear_w4a8_hadamard_fused) MQ_LINEAR_SHAPES;
BENCHMARK(BM_linear_w4a8_hadamard_two_pass) MQ_LINEAR_SHAPES;
