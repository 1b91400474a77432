// libFuzzer target: the "quantization_config" block of a quantized checkpoint's config.json on
// arbitrary text. Any input may be rejected with mq::error; none may crash, hang or read out of bounds.
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/nn/quantization_config.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const auto j = mq::detail::parse_untrusted_json(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json", 1);
        const mq::QuantizationConfig c = mq::quantization_config_from_json(j, "fuzz.json");
        // A config that parses is valid, and writes back to the same choices.
        c.validate();
        const mq::QuantizationConfig back = mq::quantization_config_from_json(mq::to_json(c), "roundtrip.json");
        if (mq::to_json(back) != mq::to_json(c)) __builtin_trap();
    } catch (const mq::error&) {
    }
    return 0;
}
