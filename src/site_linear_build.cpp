// Companion library (mambaquant::compiled): AnyLinear::build and from_packed, which instantiate the
// packing and construction of every layer in the run-time set (nn/site_linear.hpp), compiled once.
#include <mambaquant/nn/site_linear.hpp>

MQ_NAMESPACE_BEGIN

template AnyLinear AnyLinear::build<>(ConstMatrixView<float>, std::span<const float>, const SiteQuant&,
                                      const std::optional<RotationSpec>&, std::optional<QuantParams>, bool);
template AnyLinear AnyLinear::from_packed<PackedW8>(PackedW8, std::span<const float>, const SiteQuant&,
                                                    std::optional<HadamardOnline>, std::optional<QuantParams>, bool);
template AnyLinear AnyLinear::from_packed<PackedW4>(PackedW4, std::span<const float>, const SiteQuant&,
                                                    std::optional<HadamardOnline>, std::optional<QuantParams>, bool);

MQ_NAMESPACE_END
