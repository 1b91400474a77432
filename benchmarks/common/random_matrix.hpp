// Seeded Gaussian test matrices for the benchmarks (the same data on every machine).
#pragma once

#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>

#include <cstddef>
#include <cstdint>

namespace mqbench {
inline mq::MatrixXf random_matrix(std::size_t rows, std::size_t cols, std::uint64_t seed, float scale = 1.0f) {
    mq::Rng rng(seed);
    mq::MatrixXf m(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(rng.normal()) * scale;
    return m;
}
} // namespace mqbench
