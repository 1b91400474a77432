// KLT eigendecomposition time (eigensolver + ordering and sign fix) on Mamba widths, per backend.
#include <mambaquant/calib/covariance.hpp>
#include <mambaquant/core/rng.hpp>
#include <mambaquant/transform/klt.hpp>

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <string>

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
// BM_klt_eig uses the default backend (LAPACK dsyevd when built with mambaquant::lapacke, else
// Eigen); the _eigen and _lapack_mrrr twins time the other backends in the same run. LAPACK runs on
// every core through OpenBLAS, Eigen's solver on one: compare real time.
static void run_klt(benchmark::State& state, mq::EigenBackend backend) {
    const auto d = static_cast<Eigen::Index>(state.range(0));
    const mq::MatrixXd cov = test_covariance(d);
    for (auto _ : state) {
        mq::Klt k = mq::klt_from_covariance(cov, backend);
        benchmark::DoNotOptimize(k.basis.data());
    }
    state.SetItemsProcessed(state.iterations() * d);
    state.SetLabel(std::string(mq::to_string(backend)));
}
static void BM_klt_eig(benchmark::State& s) { run_klt(s, mq::EigenBackend::automatic); }
static void BM_klt_eig_eigen(benchmark::State& s) { run_klt(s, mq::EigenBackend::eigen); }
static void BM_klt_eig_lapack_mrrr(benchmark::State& s) { run_klt(s, mq::EigenBackend::lapack_mrrr); }

static void register_klt(benchmark::internal::Benchmark* b, bool large) {
    if (large) b->Arg(5120)->Iterations(1);
    else b->Arg(768)->Arg(1536)->Arg(2560)->Iterations(1);
    b->Unit(benchmark::kSecond)->UseRealTime();
}

// d = 5120 (mamba-2.8b's d_inner) takes minutes with Eigen; registered only on request:
//   MQ_BENCH_LARGE=1 ./bench_transform --benchmark_filter=BM_klt_eig.*/5120
static const bool kRegistered = [] {
    for (bool large : {false, true}) {
        if (large && !std::getenv("MQ_BENCH_LARGE")) break;
        register_klt(benchmark::RegisterBenchmark("BM_klt_eig", BM_klt_eig), large);
        register_klt(benchmark::RegisterBenchmark("BM_klt_eig_eigen", BM_klt_eig_eigen), large);
        if (mq::lapack_available)
            register_klt(benchmark::RegisterBenchmark("BM_klt_eig_lapack_mrrr", BM_klt_eig_lapack_mrrr), large);
    }
    return true;
}();
