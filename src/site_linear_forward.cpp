// Companion library (mambaquant::compiled): AnyLinear::forward, which instantiates the forward pass
// of every layer in the run-time set (nn/site_linear.hpp), compiled once.
#include <mambaquant/nn/site_linear.hpp>

MQ_NAMESPACE_BEGIN

template void AnyLinear::forward<>(ConstMatrixView<float>, MatrixView<float>, workspace_type&) const;

MQ_NAMESPACE_END
