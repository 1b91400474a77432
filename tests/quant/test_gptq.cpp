#include <mambaquant/core/rng.hpp>
#include <mambaquant/quant/gptq.hpp>
#include <mambaquant/quant/quantizer.hpp>

#include <Eigen/Dense>
#include <doctest/doctest.h>

#include <cmath>

namespace {
// Correlated inputs X [n, d] (each channel mixes its neighbour) and a weight [out, d].
mq::MatrixXf correlated_inputs(mq::Rng& rng, Eigen::Index n, Eigen::Index d) {
    mq::MatrixXf x(n, d);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.normal());
    for (Eigen::Index j = 1; j < d; ++j) x.col(j) += 0.8f * x.col(j - 1);
    return x;
}
mq::MatrixXf random_weight(mq::Rng& rng, Eigen::Index r, Eigen::Index c) {
    mq::MatrixXf w(r, c);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = static_cast<float>(rng.normal());
    return w;
}
// The textbook one-column-at-a-time GPTQ (no lazy blocks) with per-row symmetric scales from the
// original row, written independently of the library's blocked form.
mq::MatrixXf gptq_unblocked_per_channel(const mq::MatrixXf& w0, const mq::MatrixXd& xtx, int qmax) {
    const Eigen::Index d = w0.cols();
    Eigen::MatrixXd H = xtx;
    H.diagonal().array() += 0.01 * H.diagonal().mean();
    const Eigen::MatrixXd Hinv = H.inverse();
    const Eigen::MatrixXd U = Hinv.llt().matrixU();
    Eigen::MatrixXd W = w0.cast<double>();
    mq::MatrixXf out(w0.rows(), d);
    for (Eigen::Index r = 0; r < W.rows(); ++r) {
        const float s = w0.row(r).cwiseAbs().maxCoeff() / static_cast<float>(qmax);
        const float inv = 1.0f / s;
        for (Eigen::Index i = 0; i < d; ++i) {
            const float q = std::clamp(std::nearbyint(static_cast<float>(W(r, i)) * inv), -float(qmax), float(qmax)) * s;
            out(r, i) = q;
            const double e = (W(r, i) - q) / U(i, i);
            for (Eigen::Index j = i + 1; j < d; ++j) W(r, j) -= e * U(i, j);
        }
    }
    return out;
}
double output_error(const mq::MatrixXf& w, const mq::MatrixXf& wq, const mq::MatrixXf& x) {
    return ((x * (w - wq).transpose()).cast<double>()).squaredNorm();
}
} // namespace

TEST_CASE("gptq: the blocked form equals the unblocked textbook algorithm") {
    mq::Rng rng(7);
    const mq::MatrixXf x = correlated_inputs(rng, 400, 96);
    const mq::MatrixXf w = random_weight(rng, 24, 96);
    const mq::MatrixXd xtx = x.cast<double>().transpose() * x.cast<double>();
    mq::GptqOptions opt;
    opt.block = 32; // several lazy blocks over 96 columns
    const auto res = mq::gptq_quantize<mq::W4PerChannel>(w, xtx, opt);
    const mq::MatrixXf ref = gptq_unblocked_per_channel(w, xtx, 7);
    // Same arithmetic up to the order of the double updates (blocked vs eager): a weight can flip
    // to a neighbouring code only when it sits within ~1e-12 of a rounding boundary; none do here.
    CHECK((res.dequantized - ref).cwiseAbs().maxCoeff() <= 1e-5f);
    CHECK(res.params.size() == 24u);
}

TEST_CASE("gptq: lower output error than round-to-nearest on correlated inputs (W4 per channel and per group)") {
    mq::Rng rng(11);
    const mq::MatrixXf x = correlated_inputs(rng, 512, 256);
    const mq::MatrixXf w = random_weight(rng, 32, 256);
    const mq::MatrixXd xtx = x.cast<double>().transpose() * x.cast<double>();
    // RTN with the same per-row symmetric scales.
    mq::MatrixXf rtn(w.rows(), w.cols());
    for (Eigen::Index r = 0; r < w.rows(); ++r) {
        const float s = w.row(r).cwiseAbs().maxCoeff() / 7.0f;
        for (Eigen::Index c = 0; c < w.cols(); ++c) rtn(r, c) = std::clamp(std::nearbyint(w(r, c) / s), -7.0f, 7.0f) * s;
    }
    const double e_rtn = output_error(w, rtn, x);
    const double e_pc = output_error(w, mq::gptq_quantize<mq::W4PerChannel>(w, xtx).dequantized, x);
    const double e_pg = output_error(w, mq::gptq_quantize<mq::W4PerGroup<128>>(w, xtx).dequantized, x);
    MESSAGE("output error RTN ", e_rtn, ", GPTQ per channel ", e_pc, ", per group 128 ", e_pg);
    // GPTQ minimizes exactly this quadratic greedily; on strongly correlated inputs the paper's
    // gain is several-fold. Requiring half of RTN's error is a claim that fails if the error
    // feedback is wrong (e.g. a sign or an index off by one makes it worse than RTN).
    CHECK(e_pc < 0.5 * e_rtn);
    CHECK(e_pg < 0.5 * e_rtn);
}

TEST_CASE("gptq: every output value lies on its row's quantization grid") {
    mq::Rng rng(3);
    const mq::MatrixXf x = correlated_inputs(rng, 200, 64);
    const mq::MatrixXf w = random_weight(rng, 8, 64);
    const mq::MatrixXd xtx = x.cast<double>().transpose() * x.cast<double>();
    const auto res = mq::gptq_quantize<mq::W8PerChannel>(w, xtx);
    for (Eigen::Index r = 0; r < w.rows(); ++r)
        for (Eigen::Index c = 0; c < w.cols(); ++c) {
            const float k = res.dequantized(r, c) / res.params[static_cast<std::size_t>(r)].scale;
            CHECK(std::fabs(k - std::nearbyint(k)) < 1e-3f);
            CHECK(std::fabs(k) <= 127.0f + 1e-3f);
        }
}

TEST_CASE("gptq: bad input") {
    mq::MatrixXf w = mq::MatrixXf::Ones(4, 8);
    mq::MatrixXd h = mq::MatrixXd::Identity(8, 8);
    CHECK_THROWS_WITH_AS(mq::gptq_quantize<mq::W4PerChannel>(w, mq::MatrixXd::Identity(6, 6)),
                         doctest::Contains("expected [8 x 8]"), mq::error);
    CHECK_THROWS_WITH_AS(mq::gptq_quantize<mq::W4PerGroup<128>>(w, h), doctest::Contains("does not divide"), mq::error);
    w(1, 2) = std::nanf("");
    CHECK_THROWS_WITH_AS(mq::gptq_quantize<mq::W4PerChannel>(w, h), doctest::Contains("non-finite"), mq::error);
    // A dead input (zero variance) zeroes its weights rather than failing.
    w.setOnes();
    h(3, 3) = 0.0;
    const auto res = mq::gptq_quantize<mq::W4PerChannel>(w, h);
    CHECK(res.dequantized.col(3).isZero());
}
