// Quantized GEMM (prefill, M = 512) and GEMV (decode) against Eigen's float product, on the
// in_proj / out_proj shapes of mamba-130m (768 → 3072, 1536 → 768) and mamba-2.8b
// (2560 → 10240, 5120 → 2560). Quantized timings include quantizing the float activations.
// Names: BM_<dtype>_<op>/<arch>/<M>/<K>/<N> (GEMM) and BM_<dtype>_gemv/<arch>/<K>/<N>, the fast
// kernels once per arch the CPU runs (avx2, avx512vnni: the ratio reads off one run, MQ_ARCH caps
// the list), the weight packed for that arch; "_mt" runs on a
// 2-thread pool (Eigen runs single-threaded: no OpenMP), "_ref" is the scalar twin (small M).
// "_cold" GEMVs stream their weight from DRAM: compare their bytes/s (weight + scales read per
// call) with BM_memory_read (1 thread) and BM_memory_read_mt (2 threads) from the same run; run
// with --benchmark_enable_random_interleaving=true so both meet the same machine load.
// W4 is per group of 128 ("w4a8") or per channel ("w4a8_pc").
#include <mambaquant/kernels/qgemm.hpp>

#include "common/memory_bandwidth.hpp"
#include "common/random_matrix.hpp"

#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

namespace {

using W4 = mq::W4PerGroup<128>;
using A8 = mq::A8PerToken;

using mqbench::random_matrix;

mq::ThreadPool& pool2() {
    static mq::ThreadPool pool(2);
    return pool;
}

void set_counters(benchmark::State& state, std::size_t M, std::size_t K, std::size_t N, std::size_t weight_bytes) {
    state.counters["FLOP/s"] = benchmark::Counter(2.0 * double(M) * double(K) * double(N),
                                                  benchmark::Counter::kIsIterationInvariantRate);
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(weight_bytes));
}

enum class Mode { fast, threaded, ref };

// "cold": cycle through copies of the weight that together exceed this VM's 480 MiB L3, so every
// call streams its weight from DRAM like the copy benchmark does.
constexpr std::size_t kColdBytes = std::size_t{640} << 20;

template <class WQ, Mode mode, class Arch = mq::avx2>
void run_quantized(benchmark::State& state, std::size_t M, std::size_t K, std::size_t N, bool cold = false) {
    const mq::MatrixXf x = random_matrix(M, K, 1, 1.0f), w = random_matrix(N, K, 2, 0.05f), b = random_matrix(1, N, 3, 0.1f);
    constexpr mq::arch_id id = mq::is_avx512vnni_v<Arch> ? mq::arch_id::avx512vnni : mq::arch_id::avx2;
    const auto pw = mq::pack_weights<WQ>(mq::view(w), mq::w8_layout_for(id));
    const std::vector<std::decay_t<decltype(pw)>> copies(cold ? kColdBytes / pw.bytes() + 1 : 1, pw);
    mq::ActBuffer<mq::act_code_t<std::decay_t<decltype(pw)>>> a;
    a.reserve_for(M, pw);
    mq::MatrixXf y(static_cast<Eigen::Index>(M), static_cast<Eigen::Index>(N));
    const mq::Epilogue<float> e{b.data(), {}};
    std::size_t i = 0;
    for (auto _ : state) {
        const auto& wi = copies[i++ % copies.size()];
        if constexpr (mode == Mode::ref) {
            mq::quantize_activations_ref<A8>(mq::view(x), a);
            mq::qgemm_ref(a, wi, e, mq::view(y));
        } else {
            mq::quantize_activations<A8>(Arch{}, mq::view(x), a);
            mq::qgemm(Arch{}, a, wi, e, mq::view(y), mode == Mode::threaded ? &pool2() : nullptr);
        }
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, M, K, N, pw.bytes()); // codes + scales (+ zeros) read per call
}

void run_float(benchmark::State& state, std::size_t M, std::size_t K, std::size_t N, bool cold = false) {
    const mq::MatrixXf w = random_matrix(N, K, 2, 0.05f), b = random_matrix(1, N, 3, 0.1f);
    if (M == 1) {
        const std::vector<mq::MatrixXf> copies(cold ? kColdBytes / (N * K * sizeof(float)) + 1 : 1, w);
        const Eigen::VectorXf x = random_matrix(K, 1, 1, 1.0f);
        Eigen::VectorXf y(static_cast<Eigen::Index>(N));
        std::size_t i = 0;
        for (auto _ : state) {
            y.noalias() = copies[i++ % copies.size()] * x;
            y += b.row(0).transpose();
            benchmark::DoNotOptimize(y.data());
            benchmark::ClobberMemory();
        }
    } else {
        const mq::MatrixXf x = random_matrix(M, K, 1, 1.0f);
        mq::MatrixXf y(static_cast<Eigen::Index>(M), static_cast<Eigen::Index>(N));
        for (auto _ : state) {
            y.noalias() = x * w.transpose();
            y.rowwise() += b.row(0);
            benchmark::DoNotOptimize(y.data());
            benchmark::ClobberMemory();
        }
    }
    set_counters(state, M, K, N, N * K * sizeof(float));
}

template <class WQ, Mode mode, class Arch = mq::avx2>
void BM_gemm(benchmark::State& state) {
    run_quantized<WQ, mode, Arch>(state, std::size_t(state.range(0)), std::size_t(state.range(1)), std::size_t(state.range(2)));
}
template <class WQ, Mode mode, class Arch = mq::avx2>
void BM_gemv(benchmark::State& state) {
    run_quantized<WQ, mode, Arch>(state, 1, std::size_t(state.range(0)), std::size_t(state.range(1)));
}
template <class WQ, Mode mode, class Arch>
void BM_gemv_cold(benchmark::State& state) {
    run_quantized<WQ, mode, Arch>(state, 1, std::size_t(state.range(0)), std::size_t(state.range(1)), true);
}

void BM_w8a8_gemm_ref(benchmark::State& s) { BM_gemm<mq::W8PerChannel, Mode::ref>(s); }
void BM_w4a8_gemm_ref(benchmark::State& s) { BM_gemm<W4, Mode::ref>(s); }
void BM_f32_gemm_eigen(benchmark::State& s) {
    run_float(s, std::size_t(s.range(0)), std::size_t(s.range(1)), std::size_t(s.range(2)));
}
void BM_w8a8_gemv_ref(benchmark::State& s) { BM_gemv<mq::W8PerChannel, Mode::ref>(s); }
void BM_w4a8_gemv_ref(benchmark::State& s) { BM_gemv<W4, Mode::ref>(s); }
void BM_f32_gemv_eigen(benchmark::State& s) { run_float(s, 1, std::size_t(s.range(0)), std::size_t(s.range(1))); }
void BM_f32_gemv_eigen_cold(benchmark::State& s) { run_float(s, 1, std::size_t(s.range(0)), std::size_t(s.range(1)), true); }

// {K, N}: in_proj and out_proj of mamba-130m and mamba-2.8b.
void gemm_shapes(benchmark::internal::Benchmark* b) {
    for (auto [k, n] : {std::pair{768, 3072}, {1536, 768}, {2560, 10240}, {5120, 2560}}) b->Args({512, k, n});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}
void gemm_ref_shapes(benchmark::internal::Benchmark* b) {
    b->Args({16, 768, 3072})->Unit(benchmark::kMillisecond)->UseRealTime();
}
void gemv_shapes(benchmark::internal::Benchmark* b) {
    for (auto [k, n] : {std::pair{2560, 10240}, {768, 3072}, {1536, 768}, {5120, 2560}}) b->Args({k, n});
    b->Unit(benchmark::kMicrosecond)->UseRealTime();
}

// The fast kernels, per arch: BM_<dtype>_<op>/<arch>/<shape>.
template <class Arch>
void register_arch(Arch) {
    const std::string a = std::string("/") + (mq::is_avx512vnni_v<Arch> ? "avx512vnni" : "avx2");
    auto reg = [&](const char* name, auto fn) { return benchmark::RegisterBenchmark((name + a).c_str(), fn); };
    reg("BM_w8a8_gemm", BM_gemm<mq::W8PerChannel, Mode::fast, Arch>)->Apply(gemm_shapes);
    reg("BM_w4a8_gemm", BM_gemm<W4, Mode::fast, Arch>)->Apply(gemm_shapes);
    reg("BM_w8a8_gemm_mt", BM_gemm<mq::W8PerChannel, Mode::threaded, Arch>)->Apply(gemm_shapes);
    reg("BM_w4a8_gemm_mt", BM_gemm<W4, Mode::threaded, Arch>)->Apply(gemm_shapes);
    reg("BM_w8a8_gemv", BM_gemv<mq::W8PerChannel, Mode::fast, Arch>)->Apply(gemv_shapes);
    reg("BM_w4a8_gemv", BM_gemv<W4, Mode::fast, Arch>)->Apply(gemv_shapes);
    reg("BM_w8a8_gemv_mt", BM_gemv<mq::W8PerChannel, Mode::threaded, Arch>)->Apply(gemv_shapes);
    reg("BM_w4a8_gemv_mt", BM_gemv<W4, Mode::threaded, Arch>)->Apply(gemv_shapes);
    for (auto* b : {reg("BM_w8a8_gemv_cold", BM_gemv_cold<mq::W8PerChannel, Mode::fast, Arch>),
                    reg("BM_w4a8_gemv_cold", BM_gemv_cold<W4, Mode::fast, Arch>),
                    reg("BM_w4a8_pc_gemv_cold", BM_gemv_cold<mq::W4PerChannel, Mode::fast, Arch>),
                    reg("BM_w4a8_pc_gemv_cold_mt", BM_gemv_cold<mq::W4PerChannel, Mode::threaded, Arch>),
                    reg("BM_w8a8_gemv_cold_mt", BM_gemv_cold<mq::W8PerChannel, Mode::threaded, Arch>),
                    reg("BM_w4a8_gemv_cold_mt", BM_gemv_cold<W4, Mode::threaded, Arch>)})
        b->Args({2560, 10240})->Unit(benchmark::kMicrosecond)->UseRealTime();
}

[[maybe_unused]] const bool registered = [] {
    register_arch(mq::avx2{});
#if MQ_HAS_AVX512VNNI_KERNELS
    if (mq::active_arch() == mq::arch_id::avx512vnni) register_arch(mq::avx512vnni{});
#endif
    return true;
}();

} // namespace

BENCHMARK(BM_f32_gemm_eigen)->Apply(gemm_shapes);
BENCHMARK(BM_w8a8_gemm_ref)->Apply(gemm_ref_shapes);
BENCHMARK(BM_w4a8_gemm_ref)->Apply(gemm_ref_shapes);
BENCHMARK(BM_f32_gemv_eigen)->Apply(gemv_shapes);
BENCHMARK(BM_f32_gemv_eigen_cold)->Args({2560, 10240})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_w8a8_gemv_ref)->Args({2560, 10240})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_w4a8_gemv_ref)->Args({2560, 10240})->Unit(benchmark::kMillisecond)->UseRealTime();
