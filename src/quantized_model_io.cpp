// Companion library (mambaquant::compiled): saving and loading the quantized model
// (nn/quantized_model.hpp), compiled once.
#include <mambaquant/nn/quantized_model.hpp>

MQ_NAMESPACE_BEGIN

template void QuantizedMambaModel::save<>(const std::filesystem::path&) const;
template QuantizedMambaModel QuantizedMambaModel::load<>(const std::filesystem::path&, FakeQuant);

MQ_NAMESPACE_END
