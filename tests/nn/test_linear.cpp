#include <mambaquant/nn/linear.hpp>

#include "kernels/qgemm_test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

namespace {

// A test rotation: the orthonormal Sylvester-Hadamard of size n (a power of two), x ← H·x / √n.
static_assert(mq::Rotation<mq::HadamardOnline> && mq::Rotation<mq::NoRotation>);

template <class T>
bool bit_equal(const mq::Matrix<T>& a, const mq::Matrix<T>& b) {
    return a.rows() == b.rows() && a.cols() == b.cols() &&
           std::memcmp(a.data(), b.data(), sizeof(T) * std::size_t(a.size())) == 0;
}

// A quantized layer against the float one: every output within the quantization error bound
// Σ_k |x||Δw| + |w||Δx| + |Δx||Δw| (|Δx| ≤ s_a/2 of its token, Δw from the packed weight), and
// the relative error of the whole output returned for a sanity check.
template <class L>
double check_layer(std::size_t M, std::size_t K, std::size_t N, bool threads) {
    CAPTURE(M);
    CAPTURE(K);
    CAPTURE(N);
    const mq::MatrixXf x = mqtest::random_matrix(M, K, 7, 1.0f, true);
    const mq::MatrixXf w = mqtest::random_matrix(N, K, 8, 0.05f);
    const mq::MatrixXf b = mqtest::random_matrix(1, N, 9, 0.1f);
    mq::FloatLinear<> ref(mq::view(w), std::span(b.data(), N));
    L q(mq::view(w), std::span(b.data(), N));
    if (!threads) q.set_thread_pool(nullptr);
    mq::MatrixXf y_ref(M, N), y(M, N);
    ref.forward(mq::view(x), mq::view(y_ref));
    typename L::workspace_type ws;
    q.forward(mq::view(x), mq::view(y), ws);
    const mq::MatrixXf wd = mq::dequantize(q.weights());
    bool within = true;
    for (std::size_t m = 0; m < M; ++m) {
        const double dx = 0.5 * ws.act.scale[m];
        for (std::size_t n = 0; n < N; ++n) {
            double bound = 0.0, mag = 0.0;
            for (std::size_t k = 0; k < K; ++k) {
                const double xf = x(Eigen::Index(m), Eigen::Index(k)), wf = w(Eigen::Index(n), Eigen::Index(k));
                const double dw = std::fabs(wd(Eigen::Index(n), Eigen::Index(k)) - wf);
                bound += std::fabs(xf) * dw + std::fabs(wf) * dx + dx * dw;
                mag += std::fabs(xf * wf);
            }
            within &= std::fabs(y(Eigen::Index(m), Eigen::Index(n)) - y_ref(Eigen::Index(m), Eigen::Index(n))) <= bound + 1e-5 * mag;
        }
    }
    CHECK(within);
    return double((y - y_ref).norm() / y_ref.norm());
}

} // namespace

TEST_CASE("float Linear is Eigen's x·Wᵀ + b") {
    const mq::MatrixXf x = mqtest::random_matrix(7, 37, 1), w = mqtest::random_matrix(13, 37, 2), b = mqtest::random_matrix(1, 13, 3);
    mq::FloatLinear<> l(mq::view(w), std::span(b.data(), 13));
    CHECK(l.in_features() == 37);
    CHECK(l.out_features() == 13);
    mq::MatrixXf y(7, 13);
    l.forward(mq::view(x), mq::view(y));
    // Independent reference: plain loops in float64 on the same float32 inputs. Any float32
    // evaluation order of a K-term dot product plus the bias is within γ_{K+1}·(Σ|x·w| + |b|),
    // γ_n = n·u/(1 − n·u), u = 2^-24 (Higham, Accuracy and Stability, §3.1); the float64
    // reference's own error is ~2^-29 times smaller.
    const double u = std::ldexp(1.0, -24), gamma = 38 * u / (1 - 38 * u);
    bool within = true;
    for (Eigen::Index m = 0; m < 7; ++m)
        for (Eigen::Index n = 0; n < 13; ++n) {
            double exact = b(0, n), mag = std::fabs(double(b(0, n)));
            for (Eigen::Index k = 0; k < 37; ++k) {
                exact += double(x(m, k)) * double(w(n, k));
                mag += std::fabs(double(x(m, k)) * double(w(n, k)));
            }
            within &= std::fabs(double(y(m, n)) - exact) <= gamma * mag;
        }
    CHECK(within);
}

TEST_CASE("quantized Linear equals the kernel pipeline bit for bit") {
    const std::size_t M = 7, K = 768, N = 40;
    const mq::MatrixXf x = mqtest::random_matrix(M, K, 4, 1.0f, true), w = mqtest::random_matrix(N, K, 5, 0.05f);
    using L = mq::Linear<mq::W4PerGroup<128>, mq::A8PerToken>;
    L l(mq::view(w));
    mq::MatrixXf y(M, N), y_ref(M, N);
    l.forward(mq::view(x), mq::view(y));
    const auto pw = mq::pack_w4<mq::W4PerGroup<128>>(mq::view(w));
    mq::ActBuffer<std::uint8_t> a;
    a.reserve_for(M, pw);
    mq::quantize_activations_ref<mq::A8PerToken>(mq::view(x), a);
    mq::qgemm_ref(a, pw, mq::Epilogue<float>{}, mq::view(y_ref));
    CHECK(bit_equal(y, y_ref));
    // An explicit workspace gives the same result.
    L::workspace_type ws;
    mq::MatrixXf y2(M, N);
    l.forward(mq::view(x), mq::view(y2), ws);
    CHECK(bit_equal(y, y2));
}

TEST_CASE("Linear picks its SIMD arch once, at construction; every arch gives the same bits") {
    const std::size_t K = 768, N = 40;
    const mq::MatrixXf w = mqtest::random_matrix(N, K, 5, 0.05f);
    using L = mq::Linear<mq::W8PerChannel, mq::Quantizer<8, mq::per_token, mq::symmetric>>;
    for (std::size_t M : {std::size_t{1}, std::size_t{7}}) {
        CAPTURE(M);
        const mq::MatrixXf x = mqtest::random_matrix(M, K, 4, 1.0f, true);
        L best(mq::view(w)); // the CPU's best (capped by MQ_ARCH)
        mq::set_arch(mq::arch_id::avx2);
        L avx2(mq::view(w));
        mq::reset_arch();
        CHECK(avx2.arch() == mq::arch_id::avx2);
        CHECK(avx2.weights().layout == mq::W8Layout::pairs);
        CHECK(best.arch() == mq::runnable_arch(mq::active_arch()));
        CHECK((best.arch() == mq::arch_id::avx512vnni) == (best.weights().layout == mq::W8Layout::quads));
        mq::MatrixXf y(M, N), y2(M, N), y_ref(M, N);
        best.forward(mq::view(x), mq::view(y));
        mq::set_arch(mq::arch_id::avx2); // a built layer keeps its arch
        avx2.forward(mq::view(x), mq::view(y2));
        mq::reset_arch();
        CHECK(bit_equal(y, y2));
        const auto pw = mq::pack_w8(mq::view(w));
        mq::ActBuffer<std::int16_t> a;
        a.reserve_for(M, pw);
        mq::quantize_activations_ref<mq::Quantizer<8, mq::per_token, mq::symmetric>>(mq::view(x), a);
        mq::qgemm_ref(a, pw, mq::Epilogue<float>{}, mq::view(y_ref));
        CHECK(bit_equal(y, y_ref));
    }
}

TEST_CASE("quantized Linear is close to the float Linear (both weight formats, both act granularities)") {
    // Per output: the proven bound. Overall (sanity, RTN on Gaussian weights with 8x outlier
    // channels in x): 8-bit weights a few percent, 4-bit weights tens of percent at most.
    for (bool threads : {false, true}) {
        CHECK(check_layer<mq::Linear<mq::W8PerChannel, mq::A8PerToken>>(7, 768, 64, threads) < 0.05);
        CHECK(check_layer<mq::Linear<mq::W8PerChannel, mq::A8PerTensor>>(1, 1536, 40, threads) < 0.05);
        CHECK(check_layer<mq::Linear<mq::W4PerChannel, mq::A8PerToken>>(7, 768, 64, threads) < 0.25);
        CHECK(check_layer<mq::Linear<mq::W4PerGroup<32>, mq::A8PerTensor>>(7, 768, 64, threads) < 0.25);
        CHECK(check_layer<mq::Linear<mq::Quantizer<4, mq::per_group<64>, mq::asymmetric>, mq::A8PerToken>>(1, 37 * 64, 9, threads) < 0.25);
        CHECK(check_layer<mq::Linear<mq::W8PerChannel, mq::Quantizer<8, mq::per_token, mq::symmetric>>>(1, 37, 1, threads) < 0.05);
    }
}

TEST_CASE("a rotated Linear computes the same product (rotation fused into the weight)") {
    const std::size_t M = 7, K = 256, N = 24;
    const mq::MatrixXf x = mqtest::random_matrix(M, K, 10, 1.0f, true), w = mqtest::random_matrix(N, K, 11, 0.05f);
    mq::FloatLinear<> plain(mq::view(w));
    mq::FloatLinear<mq::HadamardOnline> rotated(mq::view(w), {}, mq::HadamardOnline(K));
    mq::MatrixXf y0(M, N), y1(M, N), y2(M, N);
    plain.forward(mq::view(x), mq::view(y0));
    rotated.forward(mq::view(x), mq::view(y1));
    CHECK((y1 - y0).cwiseAbs().maxCoeff() < 1e-4f);
    mq::Linear<mq::W8PerChannel, mq::A8PerToken, mq::HadamardOnline> q(mq::view(w), {}, mq::HadamardOnline(K));
    q.forward(mq::view(x), mq::view(y2));
    CHECK(double((y2 - y0).norm() / y0.norm()) < 0.02);
    // The rotation helps with outlier channels: per-tensor activations err less after rotation.
    mq::Linear<mq::W8PerChannel, mq::A8PerTensor, mq::HadamardOnline> qr(mq::view(w), {}, mq::HadamardOnline(K));
    mq::Linear<mq::W8PerChannel, mq::A8PerTensor> qn(mq::view(w));
    qr.forward(mq::view(x), mq::view(y1));
    qn.forward(mq::view(x), mq::view(y2));
    CHECK((y1 - y0).norm() < (y2 - y0).norm());
}

// The fused path (rotate + quantize per token in one pass) against the unfused computation: the
// same rotated rows, quantized by quantize_activations, through the same packed weight.
template <class WQ, class AQ>
void check_fused_linear(std::size_t M, std::size_t K, std::size_t N) {
    CAPTURE(K);
    const mq::MatrixXf x = mqtest::random_matrix(M, K, 20, 1.0f, true), w = mqtest::random_matrix(N, K, 21, 0.05f);
    const std::vector<float> bias(N, 0.25f);
    mq::Linear<WQ, AQ, mq::HadamardOnline> fused(mq::view(w), bias, mq::HadamardOnline(K, 9));
    REQUIRE(fused.fused_input_quantization());
    mq::Linear<WQ, AQ> unrotated(fused.weights(), bias); // the weight Q is already folded into
    mq::MatrixXf xq = x;
    fused.input_rotation().apply(mq::view(xq));
    mq::MatrixXf y_fused(M, N), y_ref(M, N);
    fused.forward(mq::view(x), mq::view(y_fused));
    unrotated.forward(mq::view(std::as_const(xq)), mq::view(y_ref));
    CHECK(y_fused == y_ref);
}

TEST_CASE("Linear: per-token activations behind a full HadamardOnline take the fused kernel, same result") {
    using SymToken = mq::Quantizer<8, mq::per_token, mq::symmetric>;
    check_fused_linear<mq::W8PerChannel, mq::A8PerToken>(7, 2560, 40);
    check_fused_linear<mq::W8PerChannel, SymToken>(1, 768, 24);
    check_fused_linear<mq::W4PerGroup<128>, mq::A8PerToken>(7, 1536, 33);
    check_fused_linear<mq::W4PerChannel, SymToken>(3, 2560, 16);
    // Per-tensor activations and block-diagonal rotations keep the two-pass path.
    const mq::MatrixXf w = mqtest::random_matrix(8, 256, 1);
    CHECK_FALSE((mq::Linear<mq::W8PerChannel, mq::A8PerTensor, mq::HadamardOnline>(mq::view(w), {}, mq::HadamardOnline(256))
                     .fused_input_quantization()));
    CHECK_FALSE((mq::Linear<mq::W8PerChannel, mq::A8PerToken, mq::HadamardOnline>(
                     mq::view(w), {}, mq::HadamardOnline::block_diagonal(256, 64))
                     .fused_input_quantization()));
}

TEST_CASE("Linear: bad input is reported") {
    const mq::MatrixXf w = mqtest::random_matrix(8, 48, 1), x = mqtest::random_matrix(3, 47, 2);
    std::vector<float> bias(7);
    CHECK_THROWS_WITH_AS(mq::FloatLinear<>(mq::view(w), bias), "Linear: bias must have out_features = 8 elements, got 7", mq::error);
    CHECK_THROWS_WITH_AS((mq::Linear<mq::W4PerGroup<32>, mq::A8PerToken>(mq::view(w))),
                         "pack_w4: group size 32 does not divide in_features 48", mq::error);
    mq::Linear<mq::W8PerChannel, mq::A8PerToken> l(mq::view(w));
    mq::MatrixXf y(3, 8), y_bad(3, 9);
    CHECK_THROWS_WITH_AS(l.forward(mq::view(x), mq::view(y)), "Linear::forward input x: expected shape [3 x 48], got [3 x 47]", mq::error);
    const mq::MatrixXf x_ok = mqtest::random_matrix(3, 48, 2);
    CHECK_THROWS_WITH_AS(l.forward(mq::view(x_ok), mq::view(y_bad)), "Linear::forward output y: expected shape [3 x 8], got [3 x 9]", mq::error);
    CHECK_NOTHROW(l.forward(mq::view(x_ok), mq::view(y)));
    CHECK_THROWS_AS(mq::FloatLinear<>(mq::ConstMatrixView<float>(w.data(), 0, 48)), mq::error);
}

// ---------------------------------------------------------------------------------------------
// A user policy is honoured on every path of a Linear: weight packing (W8 and W4), activation
// quantization (per token and per tensor), the fused Hadamard path and the GEMM/GEMV epilogue.
#include "support/pow2_quantizer.hpp"

namespace {

using Pow2W8 = mqtest::Pow2Quantizer<8, mq::per_channel, mq::symmetric>;
using Pow2W4 = mqtest::Pow2Quantizer<4, mq::per_group<64>, mq::asymmetric>;
using Pow2Token = mqtest::Pow2Quantizer<8, mq::per_token, mq::asymmetric>;
using Pow2Tensor = mqtest::Pow2Quantizer<8, mq::per_tensor, mq::symmetric>;

// Fake quantization with the policy's own params, in double: codes q = quantize_value(x, P(range))
// with the range of a row (per token / per channel), a group, or all rows (per tensor), each
// widened to contain 0 as the kernels do. Returns x̂ = (q − zero)·scale.
template <class P>
mq::MatrixXd fake_quant(const mq::MatrixXf& x) {
    const auto R = x.rows(), C = x.cols();
    std::size_t group = static_cast<std::size_t>(C);
    if constexpr (mq::is_per_group_v<typename P::granularity>) group = P::granularity::group_size;
    mq::MatrixXd out(R, C);
    const float tlo = std::min(x.minCoeff(), 0.0f), thi = std::max(x.maxCoeff(), 0.0f);
    for (Eigen::Index r = 0; r < R; ++r)
        for (Eigen::Index g = 0; g < C; g += Eigen::Index(group)) {
            const auto seg = x.row(r).segment(g, Eigen::Index(group));
            mq::QuantParams p = std::same_as<typename P::granularity, mq::per_tensor>
                                    ? P::params(tlo, thi)
                                    : P::params(std::min(seg.minCoeff(), 0.0f), std::max(seg.maxCoeff(), 0.0f));
            for (Eigen::Index c = g; c < g + Eigen::Index(group); ++c)
                out(r, c) = double(mq::quantize_value<typename P::range>(x(r, c), p) - p.zero) * double(p.scale);
        }
    return out;
}

// y = fake_quant_A(x)·fake_quant_W(W)ᵀ + b against the layer. The layer's integer sums are exact;
// its float epilogue rounds a handful of times (≤ 2·groups + 4 operations, each 2^-24 relative) on
// terms bounded by mag = Σ_k |x̂ŵ| + |zero_a·s_a|·Σ_k |ŵ|, so 1e-5·mag (≈ 168·2^-24) bounds it.
template <class WQ, class AQ>
void check_user_policy_linear(std::size_t M, std::size_t K, std::size_t N) {
    CAPTURE(M);
    CAPTURE(K);
    const mq::MatrixXf x = mqtest::random_matrix(M, K, 31, 1.0f, true), w = mqtest::random_matrix(N, K, 32, 0.05f);
    const std::vector<float> bias(N, 0.125f);
    mq::Linear<WQ, AQ> layer(mq::view(w), bias);
    mq::Linear<mq::Quantizer<WQ::bits, typename WQ::granularity, typename WQ::symmetry>,
               mq::Quantizer<8, typename AQ::granularity, typename AQ::symmetry>>
        builtin(mq::view(w), bias);
    typename mq::Linear<WQ, AQ>::workspace_type ws;
    mq::MatrixXf y(M, N), y_builtin(M, N);
    layer.forward(mq::view(x), mq::view(y), ws);
    builtin.forward(mq::view(x), mq::view(y_builtin));
    // the packed weight scales and the activation scales are the policy's: powers of two
    bool pow2 = true;
    for (float s : layer.weights().scale) pow2 &= s == 0.0f || mqtest::is_power_of_two(s); // 0: padded channels
    for (std::size_t m = 0; m < M; ++m) pow2 &= mqtest::is_power_of_two(ws.act.scale[m]);
    CHECK(pow2);
    const mq::MatrixXd xq = fake_quant<AQ>(x), wq = fake_quant<WQ>(w);
    double worst = 0.0, visible = 0.0;
    bool within = true;
    for (std::size_t m = 0; m < M; ++m) {
        const double za = std::fabs(double(ws.act.zero[m]) * ws.act.scale[m]);
        for (std::size_t n = 0; n < N; ++n) {
            double ref = bias[n], mag = std::fabs(bias[n]);
            for (std::size_t k = 0; k < K; ++k) {
                const double a = xq(Eigen::Index(m), Eigen::Index(k)), b = wq(Eigen::Index(n), Eigen::Index(k));
                ref += a * b;
                mag += std::fabs(a * b) + za * std::fabs(b);
            }
            const double err = std::fabs(double(y(Eigen::Index(m), Eigen::Index(n))) - ref);
            within &= err <= 1e-5 * mag;
            worst = std::max(worst, err / mag);
            visible = std::max(visible, std::fabs(double(y_builtin(Eigen::Index(m), Eigen::Index(n))) - ref) / mag);
        }
    }
    CAPTURE(worst);
    CAPTURE(visible);
    CHECK(within);
    // The built-in policy's output misses the user policy's reference by more than 10× the bound
    // above (the same check would fail it): the test tells the two policies apart.
    CHECK(visible > 10 * 1e-5);
}

} // namespace

TEST_CASE("Linear honours a user quantizer policy (power-of-two scales) on every path") {
    check_user_policy_linear<Pow2W8, Pow2Token>(7, 768, 40);  // GEMM
    check_user_policy_linear<Pow2W8, Pow2Tensor>(1, 256, 24); // GEMV
    check_user_policy_linear<Pow2W4, Pow2Token>(5, 512, 16);
    check_user_policy_linear<Pow2W4, Pow2Tensor>(1, 384, 9);
    // The fused Hadamard path: the same codes as rotate, then the policy's quantization.
    check_fused_linear<Pow2W8, Pow2Token>(7, 768, 24);
    mq::Linear<Pow2W8, Pow2Token, mq::HadamardOnline> fused(mq::view(mqtest::random_matrix(8, 768, 3)), {},
                                                            mq::HadamardOnline(768));
    REQUIRE(fused.fused_input_quantization());
    typename decltype(fused)::workspace_type ws;
    const mq::MatrixXf x = mqtest::random_matrix(3, 768, 4, 1.0f, true);
    mq::MatrixXf y(3, 8);
    fused.forward(mq::view(x), mq::view(y), ws);
    CHECK((mqtest::is_power_of_two(ws.act.scale[0]) && mqtest::is_power_of_two(ws.act.scale[2])));
}
