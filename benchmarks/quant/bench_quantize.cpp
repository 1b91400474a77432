// Quantize / dequantize throughput: SIMD kernels (through the quant/ setup API) vs their *_ref
// twins, and the machine's copy bandwidth in the same run. bytes/s = bytes read + bytes written.
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/quantize.hpp>
#include <mambaquant/quant/int4.hpp>
#include <mambaquant/kernels/quantized_tensor.hpp>

#include "common/bench_arch.hpp"
#include "common/memory_bandwidth.hpp"

#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

namespace {

mq::aligned_vector<float> activations(std::size_t rows, std::size_t cols) {
    mq::Rng rng(42);
    mq::aligned_vector<float> x(rows * cols);
    for (auto& v : x) v = static_cast<float>(rng.normal());
    return x;
}

void set_bytes(benchmark::State& state, std::size_t elements, std::size_t bytes_per_element) {
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                            static_cast<std::int64_t>(elements * bytes_per_element));
}

// Dynamic per-token quantization: per row, pass 1 range, pass 2 quantize (row is hot in L1).
template <class Q>
void per_token_dynamic(benchmark::State& state, std::size_t rows, std::size_t cols) {
    const auto x = activations(rows, cols);
    mq::aligned_vector<typename Q::code_type> q(rows * cols);
    std::vector<mq::QuantParams> params(rows);
    for (auto _ : state) {
        mq::quantize<Q>(mq::ConstMatrixView<float>(x.data(), rows, cols), mq::MatrixView<typename Q::code_type>(q.data(), rows, cols), params);
        benchmark::DoNotOptimize(q.data());
        benchmark::ClobberMemory();
    }
    set_bytes(state, rows * cols, sizeof(float) + sizeof(typename Q::code_type));
}

template <class Q>
void per_token_dynamic_ref(benchmark::State& state, std::size_t rows, std::size_t cols) {
    const auto x = activations(rows, cols);
    mq::aligned_vector<typename Q::code_type> q(rows * cols);
    std::vector<mq::QuantParams> params(rows);
    for (auto _ : state) {
        for (std::size_t r = 0; r < rows; ++r)
            params[r] = mq::quantize_row_dynamic_ref<Q::bits, typename Q::symmetry>(x.data() + r * cols, cols, q.data() + r * cols).params;
        benchmark::DoNotOptimize(q.data());
        benchmark::ClobberMemory();
    }
    set_bytes(state, rows * cols, sizeof(float) + sizeof(typename Q::code_type));
}

void BM_f32_quantize_i8_per_token(benchmark::State& state, std::size_t rows, std::size_t cols) {
    per_token_dynamic<mq::A8PerToken>(state, rows, cols);
}
void BM_f32_quantize_i8_per_token_ref(benchmark::State& state, std::size_t rows, std::size_t cols) {
    per_token_dynamic_ref<mq::A8PerToken>(state, rows, cols);
}
void BM_f32_quantize_i8_per_token_sym(benchmark::State& state, std::size_t rows, std::size_t cols) {
    per_token_dynamic<mq::Quantizer<8, mq::per_token, mq::symmetric>>(state, rows, cols);
}
void BM_f32_quantize_i8_per_token_sym_ref(benchmark::State& state, std::size_t rows, std::size_t cols) {
    per_token_dynamic_ref<mq::Quantizer<8, mq::per_token, mq::symmetric>>(state, rows, cols);
}

// Static per-tensor quantization (calibrated scale): one pass, plus the setup's finite check.
void BM_f32_quantize_i8_per_tensor_static(benchmark::State& state, std::size_t rows, std::size_t cols) {
    using Q = mq::A8PerTensor;
    const auto x = activations(rows, cols);
    mq::aligned_vector<std::uint8_t> q(rows * cols);
    const mq::QuantParams p = Q::params(-4.0f, 4.0f);
    for (auto _ : state) {
        mq::quantize_static<Q>(mq::ConstMatrixView<float>(x.data(), rows, cols), std::span(&p, 1), mq::MatrixView<std::uint8_t>(q.data(), rows, cols));
        benchmark::DoNotOptimize(q.data());
        benchmark::ClobberMemory();
    }
    set_bytes(state, rows * cols, 5);
}
void BM_f32_quantize_i8_per_tensor_static_ref(benchmark::State& state, std::size_t rows, std::size_t cols) {
    using Q = mq::A8PerTensor;
    const auto x = activations(rows, cols);
    mq::aligned_vector<std::uint8_t> q(rows * cols);
    const mq::QuantParams p = Q::params(-4.0f, 4.0f);
    for (auto _ : state) {
        mq::quantize_row_ref<Q::range>(x.data(), rows * cols, p, q.data());
        benchmark::DoNotOptimize(q.data());
        benchmark::ClobberMemory();
    }
    set_bytes(state, rows * cols, 5);
}

// Dequantize per token: read 1 B, write 4 B.
void BM_i8_dequantize_per_token(benchmark::State& state, std::size_t rows, std::size_t cols) {
    using Q = mq::A8PerToken;
    const auto x = activations(rows, cols);
    const auto t = mq::quantize_tensor<Q>(mq::ConstMatrixView<float>(x.data(), rows, cols));
    mq::aligned_vector<float> out(rows * cols);
    for (auto _ : state) {
        mq::dequantize<Q>(t.code_view(), t.params, mq::MatrixView<float>(out.data(), rows, cols));
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    set_bytes(state, rows * cols, 5);
}
void BM_i8_dequantize_per_token_ref(benchmark::State& state, std::size_t rows, std::size_t cols) {
    using Q = mq::A8PerToken;
    const auto x = activations(rows, cols);
    const auto t = mq::quantize_tensor<Q>(mq::ConstMatrixView<float>(x.data(), rows, cols));
    mq::aligned_vector<float> out(rows * cols);
    for (auto _ : state) {
        for (std::size_t r = 0; r < rows; ++r) mq::dequantize_row_ref(t.codes.data() + r * cols, cols, t.params[r], out.data() + r * cols);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    set_bytes(state, rows * cols, 5);
}

// Weight-style 4-bit per-group (G = 128) symmetric quantization, one int8 code per element.
void BM_f32_quantize_i4_per_group128(benchmark::State& state, std::size_t rows, std::size_t cols) {
    using Q = mq::W4PerGroup<128>;
    const auto x = activations(rows, cols);
    mq::aligned_vector<std::int8_t> q(rows * cols);
    std::vector<mq::QuantParams> params(rows * cols / 128);
    for (auto _ : state) {
        mq::quantize<Q>(mq::ConstMatrixView<float>(x.data(), rows, cols), mq::MatrixView<std::int8_t>(q.data(), rows, cols), params);
        benchmark::DoNotOptimize(q.data());
        benchmark::ClobberMemory();
    }
    set_bytes(state, rows * cols, 5);
}
void BM_f32_quantize_i4_per_group128_ref(benchmark::State& state, std::size_t rows, std::size_t cols) {
    const auto x = activations(rows, cols);
    mq::aligned_vector<std::int8_t> q(rows * cols);
    std::vector<mq::QuantParams> params(rows * cols / 128);
    for (auto _ : state) {
        for (std::size_t g = 0; g < rows * cols / 128; ++g)
            params[g] = mq::quantize_row_dynamic_ref<4, mq::symmetric>(x.data() + g * 128, 128, q.data() + g * 128).params;
        benchmark::DoNotOptimize(q.data());
        benchmark::ClobberMemory();
    }
    set_bytes(state, rows * cols, 5);
}

// int4 unpack: read 0.5 B, write 1 B per code.
void BM_i4_unpack(benchmark::State& state, std::size_t rows, std::size_t cols) {
    const std::size_t n = rows * cols;
    std::vector<std::uint8_t> packed(n / 2, 0x9C);
    mq::aligned_vector<std::int8_t> out(n);
    for (auto _ : state) {
        mq::unpack_int4_row(mq::default_arch{}, packed.data(), n, out.data());
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n + n / 2));
}
void BM_i4_unpack_ref(benchmark::State& state, std::size_t rows, std::size_t cols) {
    const std::size_t n = rows * cols;
    std::vector<std::uint8_t> packed(n / 2, 0x9C);
    mq::aligned_vector<std::int8_t> out(n);
    for (auto _ : state) {
        mq::unpack_int4_row_ref(packed.data(), n, out.data());
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n + n / 2));
}

// Range (min/max) reduction alone: read 4 B.
void BM_f32_range(benchmark::State& state, std::size_t rows, std::size_t cols) {
    const auto x = activations(rows, cols);
    for (auto _ : state) {
        mq::RowRange r;
        for (std::size_t i = 0; i < rows; ++i) r = r.merged(mq::row_range(mq::default_arch{}, x.data() + i * cols, cols));
        benchmark::DoNotOptimize(r);
    }
    set_bytes(state, rows * cols, 4);
}
void BM_f32_range_ref(benchmark::State& state, std::size_t rows, std::size_t cols) {
    const auto x = activations(rows, cols);
    for (auto _ : state) {
        mq::RowRange r;
        for (std::size_t i = 0; i < rows; ++i) r = r.merged(mq::row_range_ref(x.data() + i * cols, cols));
        benchmark::DoNotOptimize(r);
    }
    set_bytes(state, rows * cols, 4);
}

// The kernel per arch: per row, row_range then the 8-bit codes (quantize_row_dynamic), uint8.
template <class Arch>
void BM_f32_quantize_i8_per_token_kernel(benchmark::State& state) {
    const auto rows = static_cast<std::size_t>(state.range(0)), cols = static_cast<std::size_t>(state.range(1));
    const auto x = activations(rows, cols);
    mq::aligned_vector<std::uint8_t> q(rows * cols);
    std::vector<mq::QuantParams> params(rows);
    for (auto _ : state) {
        for (std::size_t r = 0; r < rows; ++r)
            params[r] = mq::quantize_row_dynamic<8, mq::asymmetric>(Arch{}, x.data() + r * cols, cols, q.data() + r * cols).params;
        benchmark::DoNotOptimize(q.data());
        benchmark::ClobberMemory();
    }
    set_bytes(state, rows * cols, sizeof(float) + sizeof(std::uint8_t));
}
[[maybe_unused]] const bool registered = mqbench::for_each_bench_arch([](auto arch) {
    const std::string name = "BM_f32_quantize_i8_per_token" + mqbench::arch_suffix(arch);
    benchmark::RegisterBenchmark(name.c_str(), BM_f32_quantize_i8_per_token_kernel<decltype(arch)>)
        ->Args({4096, 1536})->Args({64, 1536})->Args({1, 768})->Unit(benchmark::kMicrosecond);
});

#define MQ_BENCH_SHAPE(fn, r, c) \
    BENCHMARK_CAPTURE(fn, r##x##c, r, c)->Unit(benchmark::kMillisecond)->UseRealTime()

MQ_BENCH_SHAPE(BM_f32_quantize_i8_per_token, 4096, 1536);
MQ_BENCH_SHAPE(BM_f32_quantize_i8_per_token_ref, 4096, 1536);
MQ_BENCH_SHAPE(BM_f32_quantize_i8_per_token, 1, 768);
MQ_BENCH_SHAPE(BM_f32_quantize_i8_per_token_ref, 1, 768);
MQ_BENCH_SHAPE(BM_f32_quantize_i8_per_token_sym, 4096, 1536);
MQ_BENCH_SHAPE(BM_f32_quantize_i8_per_token_sym_ref, 4096, 1536);
MQ_BENCH_SHAPE(BM_f32_quantize_i8_per_tensor_static, 4096, 1536);
MQ_BENCH_SHAPE(BM_f32_quantize_i8_per_tensor_static_ref, 4096, 1536);
MQ_BENCH_SHAPE(BM_i8_dequantize_per_token, 4096, 1536);
MQ_BENCH_SHAPE(BM_i8_dequantize_per_token_ref, 4096, 1536);
MQ_BENCH_SHAPE(BM_f32_quantize_i4_per_group128, 1536, 768);
MQ_BENCH_SHAPE(BM_f32_quantize_i4_per_group128_ref, 1536, 768);
MQ_BENCH_SHAPE(BM_i4_unpack, 1536, 768);
MQ_BENCH_SHAPE(BM_i4_unpack_ref, 1536, 768);
MQ_BENCH_SHAPE(BM_f32_range, 4096, 1536);
MQ_BENCH_SHAPE(BM_f32_range_ref, 4096, 1536);

} // namespace
