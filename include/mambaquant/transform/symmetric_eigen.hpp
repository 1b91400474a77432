// Eigendecomposition of a symmetric matrix: Eigen's solver, or LAPACK's dsyevr/dsyevd when built with LAPACKE.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include <climits>
#include <string_view>
#include <vector>

// LAPACK is an opt-in dependency: link the `mambaquant::lapacke` CMake target (it defines
// MAMBAQUANT_HAS_LAPACKE=1 and links liblapacke), or define the macro and link -llapacke yourself.
#if defined(MAMBAQUANT_HAS_LAPACKE) && MAMBAQUANT_HAS_LAPACKE
#ifndef LAPACK_COMPLEX_CUSTOM
#define LAPACK_COMPLEX_CPP // std::complex, not C99 _Complex (which -Wpedantic rejects in C++)
#endif
#include <lapacke.h>
#define MQ_HAS_LAPACKE 1
#else
#define MQ_HAS_LAPACKE 0
#endif

MQ_NAMESPACE_BEGIN

// Why more than one backend: the KLT of a d = 5120 covariance (mamba-2.8b's d_inner) takes Eigen's
// tridiagonal QR ~140 s on one core, most of it accumulating Givens rotations into the
// eigenvectors. LAPACK's divide-and-conquer (dsyevd) and MRRR (dsyevr) drivers spend their time
// in BLAS-3 and finish in ~11–13 s over an optimized BLAS (OpenBLAS on Debian, 2 cores); over the
// reference BLAS they are no faster than Eigen.
enum class EigenBackend {
    automatic,                 // LAPACK divide-and-conquer when compiled in, else Eigen
    eigen,                     // Eigen::SelfAdjointEigenSolver (Householder tridiagonalization + implicit QR)
    lapack_divide_and_conquer, // dsyevd: 10.8 s at d = 5120, ‖VᵀV − I‖ ~3e-13
    lapack_mrrr                // dsyevr: 12.6 s at d = 5120, ‖VᵀV − I‖ ~2e-11 (MRRR is weaker on clusters)
};

inline constexpr bool lapack_available = MQ_HAS_LAPACKE != 0;

constexpr std::string_view to_string(EigenBackend b) noexcept {
    switch (b) {
    case EigenBackend::automatic: return "automatic";
    case EigenBackend::eigen: return "eigen";
    case EigenBackend::lapack_mrrr: return "lapack_mrrr";
    case EigenBackend::lapack_divide_and_conquer: return "lapack_divide_and_conquer";
    }
    return "?";
}

// A = V·diag(values)·Vᵀ; values ascending (the LAPACK and Eigen convention), column j of
// `vectors` the unit eigenvector of values[j]. Signs are whatever the backend produced.
struct SymmetricEigen {
    Eigen::VectorXd values;
    Eigen::MatrixXd vectors;
};

namespace detail {
#if MQ_HAS_LAPACKE
template <class Tag = void>
SymmetricEigen lapack_symmetric_eigen(const dependent_t<Tag, MatrixXd>& a, EigenBackend backend) {
    require(a.rows() <= INT_MAX / 2, "symmetric_eigen: d = ", a.rows(), " exceeds LAPACK's 32-bit index range");
    const auto n = static_cast<lapack_int>(a.rows());
    // Only the lower triangle is read; a symmetric row-major matrix is its own column-major copy.
    Eigen::MatrixXd work = a;
    SymmetricEigen out;
    out.values.resize(n);
    lapack_int info = 0;
    if (backend == EigenBackend::lapack_divide_and_conquer) {
        info = LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'L', n, work.data(), n, out.values.data());
        out.vectors = std::move(work);
    } else {
        out.vectors.resize(n, n);
        std::vector<lapack_int> support(2 * static_cast<std::size_t>(n));
        lapack_int found = 0;
        info = LAPACKE_dsyevr(LAPACK_COL_MAJOR, 'V', 'A', 'L', n, work.data(), n, 0.0, 0.0, 0, 0, 0.0, &found,
                              out.values.data(), out.vectors.data(), n, support.data());
        require(info != 0 || found == n, "symmetric_eigen: dsyevr returned ", found, " of ", n, " eigenpairs");
    }
    require(info == 0, "symmetric_eigen: LAPACK ", to_string(backend), " failed with info = ", info, " (d = ", n,
            info < 0 ? "; an argument was illegal)" : "; did not converge)");
    return out;
}
#endif
} // namespace detail

// Checks shape, finiteness and symmetry (a relative asymmetry above 1e-9 is a caller bug, e.g. a
// covariance assembled from the upper triangle of one shard and the lower of another: every
// backend reads only the lower triangle), then decomposes.
// A template (never spelled by callers) so that Eigen's solver is instantiated only in the
// translation units that call it: as a plain inline function it cost every includer ~4 s of
// compile time (scripts/compile-time), used or not.
template <class Tag = void>
SymmetricEigen symmetric_eigen(const dependent_t<Tag, MatrixXd>& a, EigenBackend backend = EigenBackend::automatic) {
    const Eigen::Index d = a.rows();
    require(d > 0 && a.cols() == d, "symmetric_eigen: matrix must be square and non-empty, got [", a.rows(), " x ",
            a.cols(), "]");
    require(a.allFinite(), "symmetric_eigen: matrix has non-finite entries");
    const double scale = a.cwiseAbs().maxCoeff();
    const double asym = (a - a.transpose()).cwiseAbs().maxCoeff();
    require(asym <= 1e-9 * scale, "symmetric_eigen: matrix is not symmetric (max |A - Aᵀ| = ", asym,
            ", max |A| = ", scale, ")");

    if (backend == EigenBackend::automatic)
        backend = lapack_available ? EigenBackend::lapack_divide_and_conquer : EigenBackend::eigen;
    if (backend != EigenBackend::eigen) {
#if MQ_HAS_LAPACKE
        return detail::lapack_symmetric_eigen(a, backend);
#else
        fail("symmetric_eigen: backend ", to_string(backend),
             " needs LAPACKE; link the mambaquant::lapacke CMake target (Debian: liblapacke-dev, libopenblas-dev)");
#endif
    }
    // Column-major copy: Eigen's solver is tuned for it and computes in place.
    Eigen::SelfAdjointEigenSolver<dependent_t<Tag, Eigen::MatrixXd>> solver(Eigen::MatrixXd(a), Eigen::ComputeEigenvectors);
    require(solver.info() == Eigen::Success, "symmetric_eigen: Eigen's solver did not converge (d = ", d, ")");
    return {solver.eigenvalues(), solver.eigenvectors()};
}
MQ_EXTERN_TEMPLATE(SymmetricEigen symmetric_eigen<>(const MatrixXd&, EigenBackend)) // src/transform.cpp

MQ_NAMESPACE_END
