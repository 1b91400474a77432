// KLT-enhanced rotation Q = K·H: equalizes every channel's variance, materialized for weight fusion.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/transform/hadamard.hpp>
#include <mambaquant/transform/klt.hpp>
#include <mambaquant/transform/orthogonal.hpp>

#include <Eigen/Core>

#include <cstddef>
#include <cstdint>

MQ_NAMESPACE_BEGIN

// x' = x·K·H. With Cov(x) = K·Λ·Kᵀ, Cov(x') = Hᵀ·Λ·H, whose l-th diagonal entry is
//   Σ_j H_jl²·λ_j = (Σ_j λ_j)/n     (every H_jl² = 1/n),
// so every channel of x' has the mean eigenvalue as its variance, whatever K and Λ are — which a
// Hadamard alone cannot promise: after x·H alone, channel l has Σ_j (Σ_i H_il·K_ij)²·λ_j.
// Q is orthogonal (a product of two), so it folds into weights like any rotation: x·Wᵀ =
// (x·Q)(W·Q)ᵀ. `matrix` is Q in double; fusion rounds the folded weights to float once.
struct KltHadamard {
    MatrixXd matrix;                 // Q = K·H [n, n]
    Eigen::VectorXd eigenvalues;     // Λ of the KLT, descending

    std::size_t dim() const noexcept { return static_cast<std::size_t>(matrix.rows()); }
    template <class Tag = void>
    Matrix<float> matrix_f() const {
        const dependent_t<Tag, MatrixXd>& q = matrix; // the cast's types are built only where called
        return q.template cast<float>();
    }
};

// Q = K·H for a caller-supplied orthogonal H (e.g. a randomized Hadamard, or a seeded random
// orthogonal matrix for a size with no Hadamard).
template <class Tag = void>
KltHadamard klt_hadamard(const dependent_t<Tag, Klt>& k, const dependent_t<Tag, MatrixXd>& h) {
    const auto n = static_cast<Eigen::Index>(k.dim());
    require(n > 0 && k.basis.cols() == n && k.eigenvalues.size() == n, "klt_hadamard: malformed KLT (basis [",
            k.basis.rows(), " x ", k.basis.cols(), "], ", k.eigenvalues.size(), " eigenvalues)");
    require_orthogonal(h, n, "klt_hadamard: H");
    return KltHadamard{k.basis * h, k.eigenvalues};
}

// Q = K·H with H the orthonormal Hadamard of size n = m·2^k (throws, naming the supported
// factors, for other sizes).
template <class Tag = void>
KltHadamard klt_hadamard(const dependent_t<Tag, Klt>& k) { return klt_hadamard(k, hadamard_matrix<double>(k.dim())); }

// Q = K·diag(±1)·H with seeded signs (the randomized Hadamard of transform/hadamard.hpp).
template <class Tag = void>
KltHadamard klt_randomized_hadamard(const dependent_t<Tag, Klt>& k, std::uint64_t seed) {
    return klt_hadamard(k, randomized_hadamard_matrix<double>(k.dim(), seed));
}

MQ_NAMESPACE_END
