// Companion library (mambaquant::compiled): the symmetric eigensolver and the KLT built on it
// (Eigen's tridiagonal QR and the LAPACK drivers), and the rotation matrices (the random
// orthogonal one's Householder QR), compiled once (their headers declare them extern with MQ_COMPILED).
#include <mambaquant/transform/klt.hpp>
#include <mambaquant/transform/rotation.hpp>
#include <mambaquant/transform/symmetric_eigen.hpp>

MQ_NAMESPACE_BEGIN

template SymmetricEigen symmetric_eigen<>(const MatrixXd&, EigenBackend);
template Klt klt_from_covariance<>(const MatrixXd&, EigenBackend);
template Matrix<double> random_orthogonal<double>(std::size_t, std::uint64_t);
template Matrix<double> rotation_matrix<double>(const RotationSpec&);
template Matrix<float> rotation_matrix<float>(const RotationSpec&);

MQ_NAMESPACE_END
