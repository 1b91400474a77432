// Per-token activation quantization into the integer GEMM's layouts (int16 codes for W8 kernels,
// uint8 codes + group sums for W4), beside the scalar reference and the fused online Hadamard.
#include <mambaquant/kernels/fwht.hpp>
#include <mambaquant/kernels/quantized_activations.hpp>

#include "common/random_matrix.hpp"

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>

namespace {
enum class Path { simd, ref, fused_hadamard };

// bytes/s counts the float input read (the codes written are 1/4 or 1/2 of that).
template <class Code, Path path>
void run(benchmark::State& state) {
    const auto M = static_cast<std::size_t>(state.range(0)), K = static_cast<std::size_t>(state.range(1));
    const mq::MatrixXf x = mqbench::random_matrix(M, K, 1);
    // W4 layout: groups of 128 (mq::W4PerGroup<128>); W8: one group per row.
    mq::ActBuffer<Code> a(M, K, K, std::is_same_v<Code, std::uint8_t> ? 128 : K);
    const mq::FwhtPlan plan = mq::make_fwht_plan(K);
    mq::aligned_vector<float> scratch(mq::fwht_quantize_scratch_size(K));
    for (auto _ : state) {
        if constexpr (path == Path::ref) mq::quantize_activations_ref<mq::A8PerToken>(mq::view(x), a);
        else if constexpr (path == Path::simd) mq::quantize_activations<mq::A8PerToken>(mq::default_arch{}, mq::view(x), a);
        else mq::fwht_quantize_activations<mq::A8PerToken>(mq::default_arch{}, mq::view(x), plan, scratch, a);
        benchmark::DoNotOptimize(a.codes.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * M * K * sizeof(float)));
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * M * K));
}
} // namespace

static void BM_quantize_act_i16(benchmark::State& s) { run<std::int16_t, Path::simd>(s); }
static void BM_quantize_act_i16_ref(benchmark::State& s) { run<std::int16_t, Path::ref>(s); }
static void BM_quantize_act_u8(benchmark::State& s) { run<std::uint8_t, Path::simd>(s); }
static void BM_quantize_act_u8_ref(benchmark::State& s) { run<std::uint8_t, Path::ref>(s); }
// The out_proj input: online Hadamard + quantization in one pass (compare with BM_f32_fwht).
static void BM_fwht_quantize_act_i16(benchmark::State& s) { run<std::int16_t, Path::fused_hadamard>(s); }
static void BM_fwht_quantize_act_u8(benchmark::State& s) { run<std::uint8_t, Path::fused_hadamard>(s); }

#define MQ_ACT_SHAPES ->Args({512, 1536})->Args({512, 5120})->Unit(benchmark::kMicrosecond)
BENCHMARK(BM_quantize_act_i16) MQ_ACT_SHAPES;
BENCHMARK(BM_quantize_act_i16_ref) MQ_ACT_SHAPES;
BENCHMARK(BM_quantize_act_u8) MQ_ACT_SHAPES;
BENCHMARK(BM_quantize_act_u8_ref) MQ_ACT_SHAPES;
BENCHMARK(BM_fwht_quantize_act_i16) MQ_ACT_SHAPES;
BENCHMARK(BM_fwht_quantize_act_u8) MQ_ACT_SHAPES;
