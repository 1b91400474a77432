// KLT eigendecomposition time (Eigen's SelfAdjointEigenSolver + ordering and sign fix) on Mamba widths.
#include <mambaquant/calib/covariance.hpp>
#include <mambaquant/core/rng.hpp>
#include <mambaquant/transform/klt.hpp>

#include <benchmark/benchmark.h>

#include <cstdlib>

namespace {
// A full-rank covariance with a decaying spectrum, as real activations have.
mq::MatrixXd test_covariance(Eigen::Index d) {
    mq::Rng rng(2);
    mq::MatrixXd g(2 * d, d);
    for (Eigen::Index i = 0; i < g.size(); ++i) g.data()[i] = rng.normal();
    for (Eigen::Index j = 0; j < d; ++j) g.col(j) *= 1.0 / (1.0 + 0.01 * static_cast<double>(j));
    mq::CovarianceAccumulator acc(static_cast<std::size_t>(d));
    acc.add(g);
    return acc.covariance();
}
} // namespace

// items/s = eigenpairs per second (d per iteration); the time per iteration is the number to read.
static void BM_klt_eig(benchmark::State& state) {
    const auto d = static_cast<Eigen::Index>(state.range(0));
    const mq::MatrixXd cov = test_covariance(d);
    for (auto _ : state) {
        mq::Klt k = mq::klt_from_covariance(cov);
        benchmark::DoNotOptimize(k.basis.data());
    }
    state.SetItemsProcessed(state.iterations() * d);
}
BENCHMARK(BM_klt_eig)->Arg(768)->Arg(1536)->Iterations(2)->Unit(benchmark::kSecond)->UseRealTime();
BENCHMARK(BM_klt_eig)->Arg(2560)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();

// d = 5120 (mamba-2.8b's d_inner) takes minutes with Eigen; registered only on request:
//   MQ_BENCH_LARGE=1 ./bench_transform --benchmark_filter=BM_klt_eig/5120
static const bool kLargeRegistered = [] {
    if (std::getenv("MQ_BENCH_LARGE")) BENCHMARK(BM_klt_eig)->Arg(5120)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();
    return true;
}();
