#include <mambaquant/kernels/qgemm.hpp>

#include "kernels/arch_test_util.hpp"
#include "kernels/qgemm_test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

template <class T>
bool bit_equal(const mq::Matrix<T>& a, const mq::Matrix<T>& b) {
    return a.rows() == b.rows() && a.cols() == b.cols() &&
           std::memcmp(a.data(), b.data(), sizeof(T) * std::size_t(a.size())) == 0;
}

// One shape, one weight policy, one activation policy: fast == ref bit for bit (float and both
// requantized outputs, serial and threaded); ref == the exact dequantized product; and the result
// is within the quantization error bound of the float product.
// The kernel an arch is meant to run on weights packed for it (the tests fail if another ran).
template <class Arch>
mq::QgemmKernel expected_kernel(Arch) {
    if constexpr (mq::is_avx512vnni_v<Arch>) return mq::QgemmKernel::avx512vnni;
    else if constexpr (std::is_base_of_v<xsimd::avx2, Arch>) return mq::QgemmKernel::avx2;
    else return mq::QgemmKernel::reference;
}
template <class Arch>
mq::arch_id id_of(Arch) {
    return mq::is_avx512vnni_v<Arch> ? mq::arch_id::avx512vnni
                                    : std::is_base_of_v<xsimd::avx2, Arch> ? mq::arch_id::avx2 : mq::arch_id::baseline;
}

template <class WQ, class AQ, class Arch>
void check_case(Arch arch, std::size_t M, std::size_t K, std::size_t N, bool with_bias = true) {
    CAPTURE(M);
    CAPTURE(K);
    CAPTURE(N);
    const mq::MatrixXf x = mqtest::random_matrix(M, K, 1000 + M + K, 1.0f, true);
    const mq::MatrixXf w = mqtest::random_matrix(N, K, 2000 + N + K, 0.05f);
    const mq::MatrixXf bias = mqtest::random_matrix(1, N, 3000 + N, 0.1f);
    const auto pw = mq::pack_weights<WQ>(mq::view(w), mq::w8_layout_for(id_of(arch)));
    REQUIRE(mq::qgemm_kernel(arch, pw) == expected_kernel(arch));
    using Code = mq::act_code_t<std::decay_t<decltype(pw)>>;
    mq::ActBuffer<Code> a;
    a.reserve_for(M, pw);
    mq::quantize_activations<AQ>(mq::default_arch{}, mq::view(x), a);
    const mq::Epilogue<float> e{with_bias ? bias.data() : nullptr, {}};

    mq::MatrixXf y_fast(M, N), y_ref(M, N), y_mt(M, N);
    y_fast.setConstant(-1.0f);
    mq::qgemm(arch, a, pw, e, mq::view(y_fast));
    mq::qgemm_ref(a, pw, e, mq::view(y_ref));
    CHECK(bit_equal(y_fast, y_ref));
    mq::ThreadPool pool(3);
    mq::qgemm(arch, a, pw, e, mq::view(y_mt), &pool);
    CHECK(bit_equal(y_mt, y_ref));

    // The integer pipeline computes Σ_k x̂·ŵ + b exactly up to float rounding.
    const mq::MatrixXf wd = mq::dequantize(pw);
    double worst_exact = 0.0, worst_bound_ratio = 0.0;
    for (std::size_t m = 0; m < M; ++m) {
        for (std::size_t n = 0; n < N; ++n) {
            double exact = with_bias ? bias(0, Eigen::Index(n)) : 0.0, mag = std::fabs(exact), flt = exact, bound = 0.0;
            for (std::size_t k = 0; k < K; ++k) {
                const double xh = double(int(a.row(m)[k]) - a.zero[m]) * a.scale[m];
                const double wh = wd(Eigen::Index(n), Eigen::Index(k));
                const double xf = x(Eigen::Index(m), Eigen::Index(k)), wf = w(Eigen::Index(n), Eigen::Index(k));
                exact += xh * wh;
                mag += std::fabs(xh * wh);
                flt += xf * wf;
                // |x̂ŵ − xw| ≤ |x||Δw| + |w||Δx| + |Δx||Δw|, with |Δx| ≤ s_a/2 and |Δw| = |ŵ − w| (known).
                const double dx = 0.5 * a.scale[m], dw = std::fabs(wh - wf);
                bound += std::fabs(xf) * dw + std::fabs(wf) * dx + dx * dw;
            }
            const double got = y_ref(Eigen::Index(m), Eigen::Index(n));
            worst_exact = std::max(worst_exact, std::fabs(got - exact) / (mag + 1e-30));
            worst_bound_ratio = std::max(worst_bound_ratio, std::fabs(got - flt) / (bound + 1e-6 * mag + 1e-12));
        }
    }
    CHECK(worst_exact < 1e-5);        // a few float roundings of sums of magnitude `mag`
    CHECK(worst_bound_ratio <= 1.0);  // within the quantization error bound

    // Requantized outputs (symmetric int8 and asymmetric uint8) equal the reference too.
    const float lo = y_ref.minCoeff(), hi = y_ref.maxCoeff();
    const mq::Epilogue<std::int8_t> e8{e.bias, mq::params_from_range<8, mq::symmetric>(lo, hi)};
    mq::Matrix<std::int8_t> q_fast(M, N), q_ref(M, N);
    mq::qgemm(arch, a, pw, e8, mq::view(q_fast));
    mq::qgemm_ref(a, pw, e8, mq::view(q_ref));
    CHECK(bit_equal(q_fast, q_ref));
    const mq::Epilogue<std::uint8_t> eu{e.bias, mq::params_from_range<8, mq::asymmetric>(lo, hi)};
    mq::Matrix<std::uint8_t> u_fast(M, N), u_ref(M, N);
    mq::qgemm(arch, a, pw, eu, mq::view(u_fast));
    mq::qgemm_ref(a, pw, eu, mq::view(u_ref));
    CHECK(bit_equal(u_fast, u_ref));
    bool requant_ok = true;
    for (std::size_t m = 0; m < M; ++m)
        for (std::size_t n = 0; n < N; ++n)
            requant_ok &= int(q_ref(Eigen::Index(m), Eigen::Index(n))) ==
                          mq::quantize_value<mq::Int8SymmetricRange>(y_ref(Eigen::Index(m), Eigen::Index(n)), e8.out);
    CHECK(requant_ok);
}

template <class WQ, class AQ, class Arch>
void check_shapes(Arch arch) {
    // Odd shapes: K not a multiple of the block, N = 1, M = 1, M = 7.
    constexpr bool grouped = mq::is_per_group_v<typename WQ::granularity>;
    if constexpr (!grouped) {
        check_case<WQ, AQ>(arch, 1, 1, 1);
        check_case<WQ, AQ>(arch, 7, 37, 1);
        check_case<WQ, AQ>(arch, 1, 100, 13);
        check_case<WQ, AQ>(arch, 7, 5, 9, false);
    }
    check_case<WQ, AQ>(arch, 1, 128, 17);
    check_case<WQ, AQ>(arch, 7, 256, 40);
    check_case<WQ, AQ>(arch, 13, 384, 24, false);
    check_case<WQ, AQ>(arch, 5, 128, 200); // 25 tiles: 4 tile groups, the last partial, split over threads
    check_case<WQ, AQ>(arch, 1, 256, 203); // GEMV: 26 tiles, the last partial, several per thread
    // Mamba shapes (K = d_model or d_inner of mamba-130m / 2.8b); fewer under sanitizers.
    check_case<WQ, AQ>(arch, 7, 768, 40);
    if (!kSanitized) {
        check_case<WQ, AQ>(arch, 1, 1536, 24);
        check_case<WQ, AQ>(arch, 3, 2560, 16);
        check_case<WQ, AQ>(arch, 1, 5120, 8);
    }
}

template <class WQ, class AQ>
void check_shapes() {
    mqtest::for_each_arch([](auto arch) { check_shapes<WQ, AQ>(arch); });
}

} // namespace

// MQ_EXPECT_ARCH=<arch> (CI's forced-AVX2 run sets it): the widest arch these tests run must be
// that one, so a run meant to test a path cannot pass on another.
TEST_CASE("the kernel tests run the arch CI expects") {
    const auto arches = mqtest::test_arches();
    REQUIRE(!arches.empty());
    CHECK(arches.back() == mq::runnable_arch(mq::active_arch()));
    if (const char* want = std::getenv("MQ_EXPECT_ARCH"); want && *want) CHECK(arches.back() == mq::parse_arch(want));
}

TEST_CASE("W8A8: fast == ref, exact integer pipeline, within the error bound") {
    check_shapes<mq::W8PerChannel, mq::A8PerToken>();
    check_shapes<mq::W8PerChannel, mq::A8PerTensor>();
    check_shapes<mq::W8PerChannel, mq::Quantizer<8, mq::per_token, mq::symmetric>>();
}

TEST_CASE("W4A8 per channel: fast == ref, exact integer pipeline, within the error bound") {
    check_shapes<mq::W4PerChannel, mq::A8PerToken>();
    check_shapes<mq::W4PerChannel, mq::Quantizer<8, mq::per_tensor, mq::symmetric>>();
    check_shapes<mq::Quantizer<4, mq::per_channel, mq::asymmetric>, mq::A8PerTensor>();
}

TEST_CASE("W4A8 per group: fast == ref, exact integer pipeline, within the error bound") {
    check_shapes<mq::W4PerGroup<32>, mq::A8PerToken>();
    check_shapes<mq::W4PerGroup<64>, mq::A8PerTensor>();
    check_shapes<mq::Quantizer<4, mq::per_group<128>, mq::asymmetric>, mq::A8PerToken>();
    check_shapes<mq::Quantizer<4, mq::per_group<32>, mq::asymmetric>, mq::Quantizer<8, mq::per_token, mq::symmetric>>();
}

namespace {

// All activations 255 and all weights at the extreme code: the largest partial sums, for the
// GEMM tiles (M = 5) and the GEMV kernels (M = 1), whose int16 / int32 bounds differ. At
// K = kMaxPackedK the W8 int32 sum reaches 65536·255·127 = 2,122,383,360, 98.8 % of 2^31 − 1:
// the proof's bound itself, not a comfortable fraction of it.
template <class Arch>
void check_worst_case(Arch arch, std::size_t M, std::size_t K) {
    CAPTURE(M);
    CAPTURE(K);
    const std::size_t N = 16, last = M - 1;
    std::vector<std::int8_t> c8(N * K, -127);
    std::vector<std::int8_t> c4(N * K, -7);
    std::vector<std::uint8_t> c4u(N * K, 15);
    std::vector<mq::QuantParams> p8(N), p4(N * (K / 32)), p4u(N * (K / 32));
    for (auto& p : p4u) p.zero = 0;
    const auto w8 = mq::pack_w8(mq::ConstMatrixView<std::int8_t>(c8.data(), N, K), p8, mq::w8_layout_for(id_of(arch)));
    REQUIRE(mq::qgemm_kernel(arch, w8) == expected_kernel(arch));
    const auto w4 = mq::pack_w4<mq::W4PerChannel>(mq::ConstMatrixView<std::int8_t>(c4.data(), N, K), std::span(p4.data(), N));
    const auto w4u = mq::pack_w4<mq::Quantizer<4, mq::per_group<32>, mq::asymmetric>>(
        mq::ConstMatrixView<std::uint8_t>(c4u.data(), N, K), p4u);
    mq::MatrixXf x(M, K);
    x.setConstant(1.0f);
    if (M > 1) x(0, 0) = 0.0f; // row 0 holds code 0 too; the asymmetric range is [0, 1] either way
    mq::ActBuffer<std::int16_t> a8;
    a8.reserve_for(M, w8);
    mq::quantize_activations<mq::A8PerToken>(mq::default_arch{}, mq::view(x), a8);
    mq::ActBuffer<std::uint8_t> a4(M, K, w4.k_pad, w4.group), a4u(M, K, w4u.k_pad, w4u.group);
    mq::quantize_activations<mq::A8PerToken>(mq::default_arch{}, mq::view(x), a4);
    mq::quantize_activations<mq::A8PerToken>(mq::default_arch{}, mq::view(x), a4u);
    CHECK(int(a4u.row(last)[7]) == 255);
    mq::MatrixXf y(M, N), yr(M, N);
    mq::qgemm(arch, a8, w8, mq::Epilogue<float>{}, mq::view(y));
    mq::qgemm_ref(a8, w8, mq::Epilogue<float>{}, mq::view(yr));
    CHECK(bit_equal(y, yr));
    CHECK(y(last, 3) == doctest::Approx(-127.0 * double(K)).epsilon(1e-6)); // x̂ = 255·(1/255) = 1, ŵ = -127
    // Symmetric activations: codes 127, which the VNNI kernel reads as 127 + 128 = 255.
    mq::quantize_activations<mq::Quantizer<8, mq::per_token, mq::symmetric>>(mq::default_arch{}, mq::view(x), a8);
    mq::qgemm(arch, a8, w8, mq::Epilogue<float>{}, mq::view(y));
    mq::qgemm_ref(a8, w8, mq::Epilogue<float>{}, mq::view(yr));
    CHECK(bit_equal(y, yr));
    CHECK(y(last, 3) == doctest::Approx(-127.0 * double(K)).epsilon(1e-6));
    mq::qgemm(arch, a4, w4, mq::Epilogue<float>{}, mq::view(y));
    mq::qgemm_ref(a4, w4, mq::Epilogue<float>{}, mq::view(yr));
    CHECK(bit_equal(y, yr));
    CHECK(y(last, 0) == doctest::Approx(-7.0 * double(K)).epsilon(1e-6));
    mq::qgemm(arch, a4u, w4u, mq::Epilogue<float>{}, mq::view(y));
    mq::qgemm_ref(a4u, w4u, mq::Epilogue<float>{}, mq::view(yr));
    CHECK(bit_equal(y, yr));
    CHECK(y(last, 15) == doctest::Approx(15.0 * double(K)).epsilon(1e-6));
    // Asymmetric code 0 is the GEMM tile's most negative recentred nibble (0 − 8).
    std::vector<std::uint8_t> c4z(N * K, 0);
    std::vector<mq::QuantParams> pz(N);
    for (auto& p : pz) p.zero = 15;
    const auto w4z = mq::pack_w4<mq::Quantizer<4, mq::per_channel, mq::asymmetric>>(
        mq::ConstMatrixView<std::uint8_t>(c4z.data(), N, K), pz);
    mq::qgemm(arch, a4, w4z, mq::Epilogue<float>{}, mq::view(y));
    mq::qgemm_ref(a4, w4z, mq::Epilogue<float>{}, mq::view(yr));
    CHECK(bit_equal(y, yr));
    CHECK(y(last, 7) == doctest::Approx(-15.0 * double(K)).epsilon(1e-6));
}

} // namespace

TEST_CASE("worst-case codes do not overflow the int16 / int32 partial sums") {
    mqtest::for_each_arch([](auto arch) {
        check_worst_case(arch, 5, 2560);
        check_worst_case(arch, 1, 2560);
        check_worst_case(arch, 5, mq::kMaxPackedK);
        check_worst_case(arch, 1, mq::kMaxPackedK);
    });
}

TEST_CASE("bad input: weights wider than the exact-int32 limit are refused when packed") {
    const std::size_t K = mq::kMaxPackedK + 32; // a whole superchunk past the limit
    std::vector<std::int8_t> c(K, 1);
    std::vector<mq::QuantParams> p8(1), p4(1);
    CHECK_THROWS_WITH_AS(mq::pack_w8(mq::ConstMatrixView<std::int8_t>(c.data(), 1, K), p8),
                         doctest::Contains("in_features 65568 exceeds the exact-int32 limit 65536"), mq::error);
    CHECK_THROWS_WITH_AS(mq::pack_w4<mq::W4PerChannel>(mq::ConstMatrixView<std::int8_t>(c.data(), 1, K), std::span(p4.data(), 1)),
                         doctest::Contains("in_features 65568 exceeds the exact-int32 limit 65536"), mq::error);
    const mq::MatrixXf w = mq::MatrixXf::Constant(1, static_cast<Eigen::Index>(K), 0.5f);
    CHECK_THROWS_WITH_AS(mq::pack_w8(mq::view(w)), doctest::Contains("exceeds the exact-int32 limit 65536"), mq::error);
    // At the limit itself packing succeeds (the worst case above runs there).
    std::vector<std::int8_t> ok(mq::kMaxPackedK, 1);
    CHECK_NOTHROW(mq::pack_w8(mq::ConstMatrixView<std::int8_t>(ok.data(), 1, mq::kMaxPackedK), p8));
}

TEST_CASE("ThreadPool runs every task once, serial fallback without a pool") {
    mq::ThreadPool pool(2);
    CHECK(pool.size() == 2);
    for (int rep = 0; rep < 50; ++rep) {
        std::vector<int> hits(37, 0);
        mq::parallel_ranges(&pool, hits.size(), [&](std::size_t b, std::size_t e) {
            for (std::size_t i = b; i < e; ++i) ++hits[i];
        });
        CHECK(std::count(hits.begin(), hits.end(), 1) == 37);
        std::vector<std::atomic<int>> fine(37);
        std::atomic<int> ranges{0};
        mq::parallel_ranges(&pool, fine.size(), [&](std::size_t b, std::size_t e) {
            ++ranges;
            for (std::size_t i = b; i < e; ++i) ++fine[i];
        }, 4);
        CHECK(ranges == 8); // 2 threads x 4 contiguous ranges
        CHECK(std::all_of(fine.begin(), fine.end(), [](const std::atomic<int>& h) { return h == 1; }));
    }
    // Runs after the workers and the caller gave up spinning take the blocking path.
    for (int rep = 0; rep < 3; ++rep) {
        std::this_thread::sleep_for(std::chrono::microseconds(3 * mq::ThreadPool::kSpinMicros));
        std::atomic<int> sum{0};
        pool.run(5, [&](std::size_t t) {
            if (t == 0) std::this_thread::sleep_for(std::chrono::microseconds(2 * mq::ThreadPool::kSpinMicros));
            sum += int(t) + 1;
        });
        CHECK(sum == 15);
    }
    int calls = 0;
    mq::parallel_ranges(nullptr, 10, [&](std::size_t b, std::size_t e) { calls += int(e - b) * 100 + 1; });
    CHECK(calls == 1001);
}
