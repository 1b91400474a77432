// Companion library (mambaquant::compiled): building and running the quantized model
// (nn/quantized_model.hpp: build_quantized_model and the run-time layers' forward pass), compiled once.
#include <mambaquant/nn/quantized_model.hpp>

MQ_NAMESPACE_BEGIN

template QuantizedMambaModel build_quantized_model<>(const MambaWeights&, const MambaConfig&, const QuantizationConfig&,
                                                     FakeQuant);
template void QuantizedMambaModel::run<>(std::span<const std::uint32_t>, State&, Logits, ActivationTap*) const;

MQ_NAMESPACE_END
