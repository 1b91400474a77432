// fp64 covariance accumulation (SYRK through Eigen) against a hand rank-1 loop and the machine's
// measured double FMA peak, in one run so the ratios read off directly.
#include <mambaquant/calib/covariance.hpp>
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/simd.hpp>

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace {
mq::MatrixXf random_rows(Eigen::Index rows, Eigen::Index d) {
    mq::Rng rng(1);
    mq::MatrixXf x(rows, d);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.normal());
    return x;
}
// SYRK on the lower triangle: d(d+1)/2 multiply-adds per row, 2 flops each.
double syrk_flops(std::int64_t rows, std::int64_t d) { return static_cast<double>(rows) * static_cast<double>(d * (d + 1)); }
} // namespace

// The library path: rows in float, converted in chunks, S += Xcᵀ·Xc by Eigen's rank-k update.
static void BM_f64_cov_accumulate(benchmark::State& state) {
    const auto d = static_cast<Eigen::Index>(state.range(0));
    const Eigen::Index rows = 2048;
    const mq::MatrixXf x = random_rows(rows, d);
    mq::CovarianceAccumulator acc(static_cast<std::size_t>(d));
    for (auto _ : state) {
        acc.add(x);
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(state.iterations() * rows);
    state.counters["FLOP/s"] = benchmark::Counter(syrk_flops(rows, d), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_f64_cov_accumulate)->Arg(768)->Arg(1536)->Arg(2560)->Unit(benchmark::kMillisecond);

// Reference twin: the hand loop the issue rules out, S_ij += x_i·x_j for j ≤ i, one row at a time.
static void BM_f64_cov_accumulate_ref(benchmark::State& state) {
    const auto d = static_cast<Eigen::Index>(state.range(0));
    const Eigen::Index rows = 64;
    const mq::MatrixXf x = random_rows(rows, d);
    std::vector<double> s(static_cast<std::size_t>(d * d), 0.0), row(static_cast<std::size_t>(d));
    for (auto _ : state) {
        for (Eigen::Index r = 0; r < rows; ++r) {
            for (Eigen::Index i = 0; i < d; ++i) row[static_cast<std::size_t>(i)] = x(r, i);
            for (Eigen::Index i = 0; i < d; ++i) {
                const double xi = row[static_cast<std::size_t>(i)];
                double* si = s.data() + i * d;
                for (Eigen::Index j = 0; j <= i; ++j) si[j] += xi * row[static_cast<std::size_t>(j)];
            }
        }
        benchmark::DoNotOptimize(s.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(state.iterations() * rows);
    state.counters["FLOP/s"] = benchmark::Counter(syrk_flops(rows, d), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_f64_cov_accumulate_ref)->Arg(768)->Arg(1536)->Arg(2560)->Unit(benchmark::kMillisecond);

// The double FMA peak of one core for the ISA these benchmarks are built for (mq::default_arch):
// 16 independent accumulator chains, enough to cover FMA latency × ports on current cores.
static void BM_f64_fma_peak(benchmark::State& state) {
    using batch = xsimd::batch<double, mq::default_arch>;
    constexpr int kChains = 16;
    constexpr std::int64_t kSteps = 1 << 16;
    double seed_a = 0.999999, seed_b = 1e-7;
    benchmark::DoNotOptimize(seed_a);
    benchmark::DoNotOptimize(seed_b);
    const batch a(seed_a), b(seed_b);
    for (auto _ : state) {
        batch acc[kChains];
        for (int c = 0; c < kChains; ++c) acc[c] = batch(static_cast<double>(c));
        for (std::int64_t i = 0; i < kSteps; ++i)
            for (int c = 0; c < kChains; ++c) acc[c] = xsimd::fma(acc[c], a, b);
        batch sum = acc[0];
        for (int c = 1; c < kChains; ++c) sum += acc[c];
        alignas(64) double out[batch::size];
        sum.store_aligned(out);
        benchmark::DoNotOptimize(out);
        benchmark::ClobberMemory();
    }
    const double flops = 2.0 * batch::size * kChains * static_cast<double>(kSteps);
    state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_f64_fma_peak)->Unit(benchmark::kMillisecond);
