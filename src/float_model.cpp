// Companion library (mambaquant::compiled): the float model and the W8A8 (per-channel weights,
// per-token activations) model, compiled once (nn/mamba_model.hpp declares them extern with MQ_COMPILED).
#include <mambaquant/nn/mamba_model.hpp>

MQ_NAMESPACE_BEGIN

template class BasicMambaModel<MambaBlock<>>;
template class BasicMambaModel<MambaBlock<W8PerChannel, A8PerToken>>;

MQ_NAMESPACE_END
