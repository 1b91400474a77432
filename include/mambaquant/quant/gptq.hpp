// GPTQ: weight quantization with second-order error feedback from a calibration Hessian (Frantar et al., 2022).
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tags.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/quantizer.hpp>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <vector>

MQ_NAMESPACE_BEGIN

// Options as the GPTQ paper and the MambaQuant authors run it: damping 1 % of the mean diagonal,
// lazy batch updates of 128 columns, no activation ordering (act-order off: columns in order,
// which keeps groups contiguous).
struct GptqOptions {
    double damping = 0.01;
    std::size_t block = 128;
};

// The quantized weight as dequantized floats Ŵ and the (scale, zero) of each row (per_channel) or
// each row's groups (per_group<G>, row-major: row r, group g at r·(in/G) + g).
struct GptqResult {
    MatrixXf dequantized;
    std::vector<QuantParams> params;
};

// Minimizes ‖(W − Ŵ)·Xᵀ‖² column by column. With H = XᵀX + λ·mean(diag)·I and U the upper
// Cholesky factor of H⁻¹ (H⁻¹ = Uᵀ·U), column i is quantized, q_i = Q(w_i), and its error is
// pushed onto the columns not yet quantized:
//   e = (w_i − q_i) / U_ii,   w_j ← w_j − e·U_ij   (j > i)
// which is the optimal (OBS) update of the remaining columns for the quadratic error. Scales:
// per_channel from each row's full original range; per_group<G> from the group's current
// (already error-updated) values when the group's first column is reached. Inputs with zero
// variance (diag(H) = 0) carry no signal: their weights are set to 0 and H_ii to 1.
// `second_moment` is XᵀX [in, in] (any positive multiple: the scale cancels).
// The matrices are spelled dependent_t<Q, …> (core/config.hpp): the body's Eigen code (the LLT
// solves, the block updates) is then compiled only where a caller instantiates it.
template <QuantizerPolicy Q>
GptqResult gptq_quantize(const dependent_t<Q, MatrixXf>& weight, const dependent_t<Q, MatrixXd>& second_moment,
                         GptqOptions opt = {}) {
    using G = typename Q::granularity;
    using Mat = dependent_t<Q, Eigen::MatrixXd>;
    static_assert(std::same_as<G, per_channel> || is_per_group_v<G>, "gptq_quantize: weights are per_channel or per_group<G>");
    const Eigen::Index rows = weight.rows(), cols = weight.cols();
    require(rows > 0 && cols > 0, "gptq_quantize: empty weight [", rows, " x ", cols, "]");
    require(second_moment.rows() == cols && second_moment.cols() == cols, "gptq_quantize: Hessian is [",
            second_moment.rows(), " x ", second_moment.cols(), "], expected [", cols, " x ", cols, "] (the weight's inputs)");
    require(second_moment.allFinite(), "gptq_quantize: Hessian has non-finite entries");
    require(weight.allFinite(), "gptq_quantize: weight has non-finite entries");
    require(opt.damping > 0.0 && std::isfinite(opt.damping), "gptq_quantize: damping must be > 0, got ", opt.damping);
    require(opt.block > 0, "gptq_quantize: block must be > 0");
    std::size_t group = static_cast<std::size_t>(cols);
    if constexpr (is_per_group_v<G>) {
        group = G::group_size;
        require(static_cast<std::size_t>(cols) % group == 0, "gptq_quantize: group size ", group,
                " does not divide the weight's ", cols, " input columns");
    }

    Mat W = weight.template cast<double>();
    Mat H = second_moment;
    for (Eigen::Index i = 0; i < cols; ++i)
        if (H(i, i) == 0.0) {
            H(i, i) = 1.0;
            W.col(i).setZero();
        }
    H.diagonal().array() += opt.damping * H.diagonal().mean();
    Eigen::LLT<Mat> llt(H);
    require(llt.info() == Eigen::Success, "gptq_quantize: the damped Hessian is not positive definite");
    const Mat Hinv = llt.solve(Mat::Identity(cols, cols));
    Eigen::LLT<Mat> llt_inv(Hinv);
    require(llt_inv.info() == Eigen::Success, "gptq_quantize: the inverse Hessian is not positive definite");
    const Mat U = llt_inv.matrixU();

    const std::size_t groups = static_cast<std::size_t>(cols) / group;
    GptqResult out;
    out.params.resize(static_cast<std::size_t>(rows) * groups);
    auto set_params = [&](Eigen::Index g0, const Mat& src, Eigen::Index src_col) {
        const std::size_t g = static_cast<std::size_t>(g0) / group;
        for (Eigen::Index r = 0; r < rows; ++r) {
            const auto seg = src.row(r).segment(src_col, static_cast<Eigen::Index>(group));
            out.params[static_cast<std::size_t>(r) * groups + g] =
                Q::params(static_cast<float>(seg.minCoeff()), static_cast<float>(seg.maxCoeff()));
        }
    };
    if constexpr (std::same_as<G, per_channel>) set_params(0, W, 0);

    Mat Qd(rows, cols);
    const auto B = static_cast<Eigen::Index>(opt.block);
    for (Eigen::Index i1 = 0; i1 < cols; i1 += B) {
        const Eigen::Index n = std::min(B, cols - i1);
        Mat W1 = W.middleCols(i1, n);
        Mat Err(rows, n);
        for (Eigen::Index i = 0; i < n; ++i) {
            const Eigen::Index col = i1 + i;
            if constexpr (is_per_group_v<G>)
                if (static_cast<std::size_t>(col) % group == 0) {
                    // The group may straddle this block's end: take the in-block part from W1
                    // (updated) and the rest from W (updated by the earlier blocks' lazy step).
                    Mat cur = W.middleCols(col, static_cast<Eigen::Index>(group));
                    const Eigen::Index in_block = std::min<Eigen::Index>(static_cast<Eigen::Index>(group), n - i);
                    cur.leftCols(in_block) = W1.middleCols(i, in_block);
                    set_params(col, cur, 0);
                }
            const std::size_t g = static_cast<std::size_t>(col) / group;
            const double d = U(col, col);
            for (Eigen::Index r = 0; r < rows; ++r) {
                const QuantParams& p = out.params[static_cast<std::size_t>(r) * groups + g];
                const double w = W1(r, i);
                const double q = dequantize_value(quantize_value<typename Q::range>(static_cast<float>(w), p), p);
                Qd(r, col) = q;
                Err(r, i) = (w - q) / d;
            }
            if (i + 1 < n) W1.rightCols(n - i - 1).noalias() -= Err.col(i) * U.row(col).segment(col + 1, n - i - 1);
        }
        if (i1 + n < cols) W.rightCols(cols - i1 - n).noalias() -= Err * U.block(i1, i1 + n, n, cols - i1 - n);
    }
    out.dequantized = Qd.template cast<float>();
    return out;
}

MQ_NAMESPACE_END
