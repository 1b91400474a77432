// Shared helpers for the quantized GEMM tests: random inputs and the float error bound.
#pragma once

#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>

#include <cmath>
#include <cstddef>

namespace mqtest {

// Gaussian entries with a few outlier channels (as Mamba activations have), seeded.
inline mq::MatrixXf random_matrix(std::size_t rows, std::size_t cols, std::uint64_t seed, float scale = 1.0f,
                                  bool outliers = false) {
    mq::Rng rng(seed);
    mq::MatrixXf m(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
    for (Eigen::Index r = 0; r < m.rows(); ++r)
        for (Eigen::Index c = 0; c < m.cols(); ++c) {
            float v = static_cast<float>(rng.normal()) * scale;
            if (outliers && c % 17 == 3) v *= 8.0f;
            m(r, c) = v;
        }
    return m;
}

} // namespace mqtest
