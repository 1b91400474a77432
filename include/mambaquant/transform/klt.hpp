// Karhunen–Loève transform: the eigenbasis of an activation covariance, ordered and signed deterministically.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>

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
inline void fix_eigenvector_signs(MatrixXd& basis) noexcept {
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
// (calib/covariance.hpp; transform/ sits above calib/ and does not include it). Eigen's SelfAdjointEigenSolver (Householder
// tridiagonalization + implicit symmetric QR) does the work; it reads the lower triangle, so the
// matrix is checked for symmetry first (a relative asymmetry above 1e-9 is a caller bug, e.g. a
// covariance assembled from the upper triangle of one shard and the lower of another).
// Tiny negative eigenvalues from rounding are kept as they are (they are ~1e-16·λ_0).
// No LAPACK path (MAMBAQUANT_USE_LAPACKE) is wired in: the build machine has no LAPACKE header,
// and its reference LAPACK dsyevd is about 2× slower than this solver (0.45 s vs 0.22 s at d = 768).
// Cost: about 0.25 s at d = 768, 4 s at 1536, 25 s at 2560 (one core, CPU time); the symmetric QR
// with eigenvector accumulation dominates. dsyevd over an optimized BLAS is the way to go faster.
inline Klt klt_from_covariance(const MatrixXd& covariance) {
    const Eigen::Index d = covariance.rows();
    require(d > 0 && covariance.cols() == d, "klt: covariance must be square and non-empty, got [", covariance.rows(),
            " x ", covariance.cols(), "]");
    require(covariance.allFinite(), "klt: covariance has non-finite entries");
    const double scale = covariance.cwiseAbs().maxCoeff();
    const double asym = (covariance - covariance.transpose()).cwiseAbs().maxCoeff();
    require(asym <= 1e-9 * scale, "klt: covariance is not symmetric (max |C - Cᵀ| = ", asym, ", max |C| = ", scale, ")");

    // Column-major copy: Eigen's solver is tuned for it and computes in place.
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(Eigen::MatrixXd(covariance), Eigen::ComputeEigenvectors);
    require(solver.info() == Eigen::Success, "klt: the eigensolver did not converge (d = ", d, ")");

    Klt out;
    out.eigenvalues = solver.eigenvalues().reverse(); // Eigen sorts ascending
    out.basis = solver.eigenvectors().rowwise().reverse();
    fix_eigenvector_signs(out.basis);
    return out;
}

MQ_NAMESPACE_END
