// RMSNorm over the rows of an activation (a row is a token), as Mamba's pre-norm and final norm.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstddef>

MQ_NAMESPACE_BEGIN

// out = h · rsqrt(mean(h²) + eps) · gamma, row by row. The mean of squares is accumulated in
// float, as PyTorch does for a float32 model (the golden tests pin this against float64).
template <class Tag = void>
void rms_norm(ConstMatrixView<float> h, const dependent_t<Tag, Eigen::RowVectorXf>& gamma, float eps,
              MatrixView<float> out) {
    require(static_cast<std::size_t>(gamma.size()) == h.cols, "rms_norm: gamma: expected ", h.cols, " values, got ",
            gamma.size());
    require_shape(out, h.rows, h.cols, "rms_norm output");
    const auto in = as_eigen(h);
    auto o = as_eigen(out);
    for (Eigen::Index t = 0; t < in.rows(); ++t) {
        const float ms = in.row(t).squaredNorm() / static_cast<float>(h.cols);
        o.row(t) = in.row(t).cwiseProduct(gamma) * (1.0f / std::sqrt(ms + eps));
    }
}

MQ_NAMESPACE_END
