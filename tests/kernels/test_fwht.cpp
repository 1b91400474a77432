#include <mambaquant/kernels/fwht.hpp>
#include <mambaquant/transform/hadamard.hpp> // the dense H the fast transform is checked against

#include "kernels/arch_test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

namespace {

struct Rows {
    std::size_t rows, cols;
    mq::aligned_vector<float> data;
    Rows(std::size_t r, std::size_t c, std::uint64_t seed) : rows(r), cols(c), data(r * c) {
        mq::Rng rng(seed);
        for (auto& v : data) v = static_cast<float>(rng.normal());
    }
    mq::MatrixView<float> view() { return {data.data(), rows, cols}; }
};

// ‖y − x·Q‖∞ over all rows, Q in double.
double max_error_vs_dense(const Rows& x, const Rows& y, const mq::MatrixXd& Q) {
    double err = 0;
    for (std::size_t r = 0; r < x.rows; ++r) {
        Eigen::RowVectorXd xr(static_cast<Eigen::Index>(x.cols));
        for (std::size_t i = 0; i < x.cols; ++i) xr(static_cast<Eigen::Index>(i)) = x.data[r * x.cols + i];
        const Eigen::RowVectorXd expect = xr * Q;
        for (std::size_t i = 0; i < x.cols; ++i)
            err = std::max(err, std::abs(expect(static_cast<Eigen::Index>(i)) - y.data[r * x.cols + i]));
    }
    return err;
}

std::vector<unsigned> ks_for(std::size_t m) {
    if (m == 1) return {0, 1, 2, 3, 4, 5, 6, 7, 9, 10};
    if (m >= 108) return {0, 2, 3, 4};
    return {0, 1, 2, 3, 4, 6};
}

} // namespace

// Error bound of a float transform against the exact product. Rows are N(0,1), so outputs are
// ~N(0,1) and partial sums stay below ~4 (after the 1/√n scale): the butterflies round log2(n)
// times, the dense stage up to m times (plainly summed in the reference), each by at most
// 2^-24·4 ≈ 2.4e-7 — so (log2 n + m)·2.4e-7 bounds the worst case; a wrong sign or index shows
// up as an error of order 0.1.
double tol(std::size_t n, std::size_t m) { return (std::log2(double(n)) + double(m) + 2.0) * 2.4e-7; }
constexpr double kTol = 4e-6; // the power-of-two and m ≤ 12 cases below

TEST_CASE("fwht and fwht_ref equal x·H (dense double product) for every block m and several k") {
    for (std::size_t m : mq::kHadamardBlockSizes)
        for (unsigned k : ks_for(m)) {
            const mq::HadamardFactors f{m, std::size_t{1} << k, k};
            CAPTURE(m);
            CAPTURE(k);
            const mq::FwhtPlan plan = mq::make_fwht_plan(f);
            const mq::MatrixXd H = mq::hadamard_matrix(f);
            Rows x(3, f.size(), 1000 + m + k), fast = x, ref = x;
            mq::fwht(mq::default_arch{}, fast.view(), plan);
            mq::fwht_ref(ref.view(), plan);
            CHECK(max_error_vs_dense(x, fast, H) < tol(f.size(), m));
            CHECK(max_error_vs_dense(x, ref, H) < tol(f.size(), m));
            if (m == 1) CHECK(fast.data == ref.data); // same butterflies, same order: bit for bit
        }
}

TEST_CASE("fwht on the Mamba shapes against the reference") {
    for (std::size_t n : {768u, 1536u, 2560u, 5120u, 16u, 48u, 160u, 192u, 384u, 4096u, 8192u}) {
        CAPTURE(n);
        const mq::FwhtPlan plan = mq::make_fwht_plan(n);
        Rows x(5, n, n), fast = x, ref = x;
        mq::fwht(mq::default_arch{}, fast.view(), plan);
        mq::fwht_ref(ref.view(), plan);
        double err = 0;
        for (std::size_t i = 0; i < x.data.size(); ++i) err = std::max(err, double(std::abs(fast.data[i] - ref.data[i])));
        CHECK(err < tol(n, plan.factors.m));
        if (plan.factors.m == 1) CHECK(fast.data == ref.data);
    }
}

TEST_CASE("fwht with the chunks' last butterfly stage done by the dense stage, against the reference") {
    // m ∈ {20, 28, 36} with 2^k = 128 or 1024 take that path (fwht_split_last_stage); every plan
    // kind: plain, randomized, inverse (the transposed block).
    for (std::size_t m : {20u, 28u, 36u})
        for (std::size_t pow2 : {128u, 1024u}) {
            const mq::HadamardFactors f{m, pow2, pow2 == 128 ? 7u : 10u};
            CAPTURE(m);
            CAPTURE(pow2);
            for (int kind = 0; kind < 3; ++kind) {
                CAPTURE(kind);
                const mq::FwhtPlan plan =
                    kind == 0 ? mq::make_fwht_plan(f)
                              : mq::make_fwht_plan(f, 5, kind == 1 ? mq::FwhtDirection::forward : mq::FwhtDirection::inverse);
                CHECK(mq::detail::fwht_split_last_stage<mq::default_arch>(plan));
                Rows x(3, f.size(), 77 + m + pow2), fast = x, ref = x;
                mq::fwht(mq::default_arch{}, fast.view(), plan);
                mq::fwht_ref(ref.view(), plan);
                double err = 0;
                for (std::size_t i = 0; i < x.data.size(); ++i)
                    err = std::max(err, double(std::abs(fast.data[i] - ref.data[i])));
                CHECK(err < tol(f.size(), m));
            }
        }
}

TEST_CASE("randomized fwht equals x·diag(s)·H; forward then inverse gives x back") {
    for (std::size_t n : {768u, 1024u, 2560u, 48u, 172u * 8}) {
        CAPTURE(n);
        const mq::FwhtPlan fwd = mq::make_fwht_plan(n, 7);
        const mq::FwhtPlan inv = mq::make_fwht_plan(n, 7, mq::FwhtDirection::inverse);
        Rows x(4, n, 3 * n), y = x;
        mq::fwht(mq::default_arch{}, y.view(), fwd);
        const double t = tol(n, fwd.factors.m);
        CHECK(max_error_vs_dense(x, y, mq::randomized_hadamard_matrix(n, 7)) < t);
        Rows yr = x;
        mq::fwht_ref(yr.view(), fwd);
        CHECK(max_error_vs_dense(x, yr, mq::randomized_hadamard_matrix(n, 7)) < t);
        mq::fwht(mq::default_arch{}, y.view(), inv);
        double err = 0;
        for (std::size_t i = 0; i < x.data.size(); ++i) err = std::max(err, double(std::abs(x.data[i] - y.data[i])));
        CHECK(err < 2 * t);
        mq::fwht_ref(yr.view(), inv);
        err = 0;
        for (std::size_t i = 0; i < x.data.size(); ++i) err = std::max(err, double(std::abs(x.data[i] - yr.data[i])));
        CHECK(err < 2 * t);
    }
}

TEST_CASE("plain power-of-two transform applied twice gives the input back") {
    for (std::size_t n : {8u, 256u, 4096u}) {
        const mq::FwhtPlan plan = mq::make_fwht_plan(n);
        Rows x(2, n, n + 1), y = x;
        mq::fwht(mq::default_arch{}, y.view(), plan);
        mq::fwht(mq::default_arch{}, y.view(), plan);
        double err = 0;
        for (std::size_t i = 0; i < x.data.size(); ++i) err = std::max(err, double(std::abs(x.data[i] - y.data[i])));
        CHECK(err < kTol);
    }
}

TEST_CASE("a strided view transforms only its columns") {
    const mq::FwhtPlan plan = mq::make_fwht_plan(768);
    mq::aligned_vector<float> buf(4 * 800, 5.0f);
    mq::MatrixView<float> v(buf.data(), 4, 768, 800);
    for (std::size_t r = 0; r < 4; ++r)
        for (std::size_t c = 0; c < 768; ++c) v(r, c) = static_cast<float>((r * 7 + c * 3) % 11) - 5.0f;
    mq::aligned_vector<float> ref(4 * 768);
    for (std::size_t r = 0; r < 4; ++r) std::memcpy(ref.data() + r * 768, v.row_ptr(r), 768 * sizeof(float));
    mq::fwht(mq::default_arch{}, v, plan);
    mq::fwht_ref(mq::MatrixView<float>(ref.data(), 4, 768), plan);
    for (std::size_t r = 0; r < 4; ++r) {
        for (std::size_t c = 0; c < 768; ++c) CHECK(std::abs(v(r, c) - ref[r * 768 + c]) < 1e-5f);
        for (std::size_t c = 768; c < 800; ++c) CHECK(buf[r * 800 + c] == 5.0f);
    }
}

TEST_CASE("make_fwht_plan rejects unsupported sizes with a clear error") {
    CHECK_THROWS_WITH(mq::make_fwht_plan(100), doctest::Contains("unsupported Hadamard dimension 100"));
    CHECK_THROWS_AS(mq::make_fwht_plan(mq::HadamardFactors{24, 4, 2}), mq::error);
    CHECK_THROWS_AS(mq::make_fwht_plan(mq::HadamardFactors{12, 4, 3}), mq::error);
}

TEST_CASE("the compile-time Paley blocks equal hadamard_block") {
    auto check = [](auto table, std::size_t m) {
        const mq::Matrix<int> h = mq::hadamard_block(m);
        for (std::size_t i = 0; i < m; ++i)
            for (std::size_t j = 0; j < m; ++j)
                CHECK(table[i][j] == h(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j)));
    };
    check(mq::detail::fixed_hadamard_table<12>(), 12);
    check(mq::detail::fixed_hadamard_table<20>(), 20);
    check(mq::detail::fixed_hadamard_table<28>(), 28);
    check(mq::detail::fixed_hadamard_table<36>(), 36);
}

namespace {

template <class S, class Arch>
void check_fused(Arch arch, std::size_t n, std::optional<std::uint64_t> seed) {
    using code_t = mq::int8_code_t<S>;
    using R = mq::BitRange<8, S>;
    CAPTURE(n);
    CAPTURE(S::name);
    const mq::FwhtPlan plan = mq::make_fwht_plan(n, seed);
    const std::size_t rows = 7;
    Rows x(rows, n, 5 * n + 1);
    // Give rows different ranges, one all-zero row and one constant row (degenerate ranges).
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t i = 0; i < n; ++i) x.data[r * n + i] *= static_cast<float>(r + 1) * 0.5f;
    for (std::size_t i = 0; i < n; ++i) x.data[2 * n + i] = 0.0f;
    for (std::size_t i = 0; i < n; ++i) x.data[3 * n + i] = 1.5f;
    const Rows x_before = x;

    std::vector<code_t> fused(rows * n), ref(rows * n);
    std::vector<mq::QuantParams> pf(rows), pr(rows);
    mq::aligned_vector<float> scratch(mq::fwht_quantize_scratch_size(n));
    mq::fwht_quantize<S>(arch, mq::ConstMatrixView<float>(x.data.data(), rows, n), plan,
                         mq::MatrixView<code_t>(fused.data(), rows, n), pf, scratch);
    CHECK(x.data == x_before.data); // input untouched
    // The unpipelined form (scratch of n floats) gives the same codes.
    {
        std::vector<code_t> single(rows * n);
        std::vector<mq::QuantParams> ps(rows);
        mq::aligned_vector<float> small(n);
        mq::fwht_quantize<S>(arch, mq::ConstMatrixView<float>(x.data.data(), rows, n), plan,
                             mq::MatrixView<code_t>(single.data(), rows, n), ps, small);
        CHECK(single == fused);
        CHECK(ps == pf);
    }

    // Transform-then-quantize with the bare SIMD transform and the scalar quantizer: bit for bit.
    Rows y = x;
    mq::fwht(arch, y.view(), plan);
    for (std::size_t r = 0; r < rows; ++r) {
        float lo = y.data[r * n], hi = lo;
        for (std::size_t i = 0; i < n; ++i) {
            lo = std::min(lo, y.data[r * n + i]);
            hi = std::max(hi, y.data[r * n + i]);
        }
        const mq::QuantParams p = mq::params_from_range<8, S>(lo, hi);
        CHECK(pf[r] == p);
        for (std::size_t i = 0; i < n; ++i)
            CHECK(fused[r * n + i] == static_cast<code_t>(mq::quantize_value<R>(y.data[r * n + i], p)));
    }

    // Against the plain reference: identical for power-of-two sizes (same arithmetic); otherwise
    // the dense stage sums in another order, so a code may move by one step at a rounding tie.
    Rows z = x;
    mq::fwht_quantize_ref<S>(z.view(), plan, mq::MatrixView<code_t>(ref.data(), rows, n), pr);
    int max_diff = 0;
    for (std::size_t i = 0; i < fused.size(); ++i) max_diff = std::max(max_diff, std::abs(int(fused[i]) - int(ref[i])));
    if (plan.factors.m == 1) {
        CHECK(max_diff == 0);
        for (std::size_t r = 0; r < rows; ++r) CHECK(pf[r] == pr[r]);
    } else {
        CHECK(max_diff <= 1);
    }
    // Dequantized codes approximate the rotated row within half a step.
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t i = 0; i < n; i += 97)
            CHECK(std::abs(mq::dequantize_value(fused[r * n + i], pf[r]) - y.data[r * n + i]) <= 0.5f * pf[r].scale * 1.0001f);
}

} // namespace

TEST_CASE("fused Hadamard + per-token int8 equals transform-then-quantize, on every arch") {
    mqtest::for_each_arch([](auto arch) {
        // 20·512: the AVX-512 path's split last stage; 16, 8192: its shortest and longest chunk.
        for (std::size_t n : {768u, 1536u, 2560u, 5120u, 256u, 1024u, 48u, 8u, 16u, 8192u, 172u * 4, 28u * 128,
                              36u * 1024, 20u * 512}) {
            check_fused<mq::asymmetric>(arch, n, std::nullopt);
            check_fused<mq::symmetric>(arch, n, std::nullopt);
        }
        check_fused<mq::asymmetric>(arch, 2560, 11);
        check_fused<mq::symmetric>(arch, 4096, 12);
    });
}

// The wider paths keep the AVX2 path's operation order: the same floats, bit for bit, for every
// pass structure (chunks of 2^0 … 2^15, the dense blocks, the split last stage, randomized forward
// and inverse plans, a strided view).
TEST_CASE("fwht: every arch gives the first arch's floats bit for bit") {
    std::vector<std::pair<mq::HadamardFactors, int>> cases; // (factors, 0 plain / 1 randomized / 2 inverse)
    for (unsigned k = 0; k <= 15; ++k) cases.push_back({{1, std::size_t{1} << k, k}, 0});
    for (std::size_t m : mq::kHadamardBlockSizes)
        for (unsigned k : {2u, 3u, 4u, 5u, 7u, 9u})
            if (m > 1 && m << k <= 40000) cases.push_back({{m, std::size_t{1} << k, k}, 0});
    for (int kind : {1, 2}) {
        cases.push_back({{1, 4096, 12}, kind});
        cases.push_back({{12, 128, 7}, kind});
        cases.push_back({{20, 512, 9}, kind});
        cases.push_back({{52, 8, 3}, kind});
    }
    for (const auto& [f, kind] : cases) {
        CAPTURE(f.m);
        CAPTURE(f.pow2);
        CAPTURE(kind);
        const mq::FwhtPlan plan = kind == 0 ? mq::make_fwht_plan(f)
                                            : mq::make_fwht_plan(f, 9, kind == 1 ? mq::FwhtDirection::forward
                                                                                 : mq::FwhtDirection::inverse);
        const std::size_t n = f.size(), stride = n + 16;
        const Rows x(3, stride, 31 + n);
        std::vector<mq::aligned_vector<float>> out;
        mqtest::for_each_arch([&](auto arch) {
            mq::aligned_vector<float> y = x.data;
            mq::fwht(arch, mq::MatrixView<float>(y.data(), 3, n, stride), plan);
            out.push_back(std::move(y));
        });
        for (std::size_t a = 1; a < out.size(); ++a) CHECK(out[a] == out[0]);
    }
}
