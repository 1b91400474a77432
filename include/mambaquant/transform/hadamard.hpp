// Hadamard matrices of every size n = m·2^k a Mamba model has: the orthonormal (and randomized)
// matrix the fast transform computes, materialized for fusion into weights. The m×m blocks and
// the size decomposition live in kernels/hadamard_block.hpp.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/hadamard_block.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

MQ_NAMESPACE_BEGIN

// Sylvester entry of H_{2^k} in natural order: (−1)^popcount(i & j) (the order the radix-2
// butterfly produces).
constexpr int sylvester_sign(std::size_t i, std::size_t j) noexcept {
    std::size_t v = i & j;
    int parity = 0;
    while (v) {
        parity ^= 1;
        v &= v - 1;
    }
    return parity ? -1 : 1;
}

// The orthonormal Hadamard matrix of a decomposition:
//   H = (H_m ⊗ H_{2^k}) / √n,   H[a·2^k + b][a'·2^k + b'] = H_m[a][a']·(−1)^popcount(b & b') / √n
// The fast transform computes y = x·H for a row vector x (FWHT over b inside each of the m
// contiguous chunks, then the dense block across chunks), so this matrix is exactly what it applies.
template <class T = double>
Matrix<T> hadamard_matrix(const HadamardFactors& f) {
    require(is_hadamard_block_size(f.m), "hadamard_matrix: block order ", f.m, " is not supported; ",
            supported_hadamard_factors_text());
    require(is_power_of_two(f.pow2) && (std::size_t{1} << f.log2_pow2) == f.pow2,
            "hadamard_matrix: pow2 = ", f.pow2, " must equal 2^", f.log2_pow2);
    const dependent_t<T, Matrix<int>> hm = hadamard_block<T>(f.m);
    const std::size_t n = f.size();
    const T scale = T(1) / std::sqrt(static_cast<T>(n));
    Matrix<T> H(static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(n));
    for (std::size_t a = 0; a < f.m; ++a)
        for (std::size_t b = 0; b < f.pow2; ++b)
            for (std::size_t a2 = 0; a2 < f.m; ++a2) {
                const T s = static_cast<T>(hm(static_cast<Eigen::Index>(a), static_cast<Eigen::Index>(a2))) * scale;
                for (std::size_t b2 = 0; b2 < f.pow2; ++b2)
                    H(static_cast<Eigen::Index>(a * f.pow2 + b), static_cast<Eigen::Index>(a2 * f.pow2 + b2)) =
                        s * static_cast<T>(sylvester_sign(b, b2));
            }
    return H;
}

// Orthonormal Hadamard of size n (decomposed by decompose_hadamard_size; throws for other n).
template <class T = double>
Matrix<T> hadamard_matrix(std::size_t n) {
    return hadamard_matrix<T>(decompose_hadamard_size(n));
}

// Randomized Hadamard Q = diag(s)·H: y = x·Q = (x ⊙ s)·H, flip the input signs then transform.
template <class T = double>
Matrix<T> randomized_hadamard_matrix(std::size_t n, std::uint64_t seed) {
    Matrix<T> H = hadamard_matrix<T>(n);
    const std::vector<float> s = random_signs(n, seed);
    for (std::size_t i = 0; i < n; ++i)
        if (s[i] < 0) H.row(static_cast<Eigen::Index>(i)) *= T(-1);
    return H;
}

MQ_NAMESPACE_END
