// Karhunen–Loève transform: the eigenbasis of an activation covariance, ordered and signed deterministically.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/transform/symmetric_eigen.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstddef>

MQ_NAMESPACE_BEGIN

// Cov = K·Λ·Kᵀ with K orthogonal; the KLT of a row x is x' = x·K, whose covariance is Λ.
// eigenvalues are sorted descending (λ_0 ≥ λ_1 ≥ …) and column j of `basis` is the unit
// eigenvector for λ_j, its sign fixed so that its largest-magnitude entry (the first one on a
// tie) is positive: eigenvectors are only defined up to sign, and a fixed rule makes the
// rotation — hence the quantized model — reproducible across runs and machines.
struct Klt {
    Eigen::VectorXd eigenvalues;
    MatrixXd basis; // K [d, d]

    std::size_t dim() const noexcept { return static_cast<std::size_t>(basis.rows()); }
};

// Makes column j's largest-|entry| positive (ties: the lowest index wins).
template <class Tag = void>
void fix_eigenvector_signs(dependent_t<Tag, MatrixXd>& basis) noexcept {
    for (Eigen::Index j = 0; j < basis.cols(); ++j) {
        Eigen::Index best = 0;
        double best_abs = -1.0;
        for (Eigen::Index i = 0; i < basis.rows(); ++i) {
            const double a = std::fabs(basis(i, j));
            if (a > best_abs) {
                best_abs = a;
                best = i;
            }
        }
        if (basis(best, j) < 0.0) basis.col(j) *= -1.0;
    }
}

// The KLT of a symmetric covariance [d, d], typically CovarianceAccumulator::covariance()
// (calib/covariance.hpp; transform/ sits above calib/ and does not include it). The backend
// (transform/symmetric_eigen.hpp) validates and decomposes; at d = 5120 Eigen needs ~140 s and
// LAPACK's dsyevd over OpenBLAS ~11 s, hence `automatic` prefers LAPACK when it is compiled in.
// Tiny negative eigenvalues from rounding are kept as they are (they are ~1e-16·λ_0).
// (A template for the same reason as symmetric_eigen: instantiated only where it is called.)
template <class Tag = void>
Klt klt_from_covariance(const dependent_t<Tag, MatrixXd>& covariance, EigenBackend backend = EigenBackend::automatic) {
    SymmetricEigen eig = symmetric_eigen(covariance, backend);
    Klt out;
    out.eigenvalues = eig.values.reverse(); // backends sort ascending
    out.basis = eig.vectors.rowwise().reverse();
    fix_eigenvector_signs(out.basis);
    return out;
}
MQ_EXTERN_TEMPLATE(Klt klt_from_covariance<>(const MatrixXd&, EigenBackend)) // src/transform.cpp

MQ_NAMESPACE_END
