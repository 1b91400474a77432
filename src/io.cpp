// Companion library (mambaquant::compiled): the JSON readers and writers of io/ and of the
// quantization config, compiled once (their headers declare them extern with MQ_COMPILED).
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/config.hpp>
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/nn/quantization_config.hpp>

MQ_NAMESPACE_BEGIN

namespace detail {
template nlohmann::json parse_untrusted_json<>(std::string_view, std::string_view, int);
}
template SafetensorsHeader parse_safetensors_header_json<>(std::string_view, std::size_t, std::string_view);
template SafetensorsHeader parse_safetensors_header<>(std::span<const std::byte>, std::string_view);
template std::vector<std::byte> serialize_safetensors<>(std::span<const TensorData>, const Metadata&);
template void save_safetensors<>(const std::filesystem::path&, std::span<const TensorData>, const Metadata&);
template std::map<std::string, std::string, std::less<>> Checkpoint::parse_index<>(std::string_view, std::string_view,
                                                                                    Metadata*);
template MambaConfig parse_mamba_config<>(std::string_view, std::string_view);
template MambaConfig load_mamba_config<>(const std::filesystem::path&);
template std::string mamba_config_json<>(const MambaConfig&, ConfigLayout);
template nlohmann::json to_json<>(const QuantizationConfig&);
template QuantizationConfig quantization_config_from_json<>(const nlohmann::json&, std::string_view);

MQ_NAMESPACE_END
