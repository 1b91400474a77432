// Uses the installed umbrella header with no -m flags: the library must build for plain x86-64.
// Built twice, with and without mambaquant::lapacke; the KLT's default backend follows.
#include <mambaquant/mambaquant.hpp>

#include <cmath>
#include <cstdio>

int main() {
    const auto p = mq::A8PerToken::params(-1.0f, 3.0f);
    mq::MatrixXd cov = mq::MatrixXd::Identity(3, 3);
    cov(0, 0) = 4.0;
    const mq::Klt klt = mq::klt_from_covariance(cov);
    std::printf("mambaquant %d.%d consumer: scale %g zero %d, LAPACK %s, λ_max %g\n", MQ_VERSION_MAJOR,
                MQ_VERSION_MINOR, double(p.scale), int(p.zero), mq::lapack_available ? "yes" : "no",
                klt.eigenvalues[0]);
    return p.scale > 0.0f && std::fabs(klt.eigenvalues[0] - 4.0) < 1e-12 ? 0 : 1;
}
