// A cheap setup-time check that a matrix handed to a fusion is orthogonal (QᵀQ = I).
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>

#include <Eigen/Core>

#include <cmath>

MQ_NAMESPACE_BEGIN

// Throws unless q is [n, n] with finite entries and ‖Qᵀ(Q·v) − v‖∞ ≤ tol·‖v‖∞ for a few seeded
// random probes v. Forming QᵀQ would cost 2n³ flops (seconds at n = 5120); four probes cost 16n²
// and catch any non-orthogonal matrix a caller plausibly passes (a transposed K·H is still
// orthogonal, a scaled Hadamard or a covariance is not). The default tolerance admits matrices
// rounded to float (~1e-7) and rejects an unnormalized Hadamard outright.
template <class Tag = void>
void require_orthogonal(const dependent_t<Tag, MatrixXd>& q, Eigen::Index n, const char* name, double tol = 1e-5) {
    require(q.rows() == n && q.cols() == n, name, ": expected an orthogonal [", n, " x ", n, "] matrix, got [", q.rows(),
            " x ", q.cols(), "]");
    require(q.allFinite(), name, ": has non-finite entries");
    Rng rng(0x6f7274686f67ULL);
    for (int probe = 0; probe < 4; ++probe) {
        dependent_t<Tag, Eigen::VectorXd> v(n);
        for (Eigen::Index i = 0; i < n; ++i) v[i] = rng.normal();
        const dependent_t<Tag, Eigen::VectorXd> back = q.transpose() * (q * v);
        const double err = (back - v).cwiseAbs().maxCoeff() / v.cwiseAbs().maxCoeff();
        require(err <= tol, name, ": not orthogonal (|QᵀQv − v|∞/|v|∞ = ", err, " > ", tol, ")");
    }
}

MQ_NAMESPACE_END
