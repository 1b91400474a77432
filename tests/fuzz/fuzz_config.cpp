// libFuzzer target: config.json parsing (both layouts) on arbitrary text. Any input may be
// rejected with mq::error; none may crash, hang or read out of bounds.
#include <mambaquant/io/config.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const mq::MambaConfig c = mq::parse_mamba_config(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
        // A config that parses is self-consistent.
        if (c.d_inner == 0 || c.padded_vocab < c.vocab_size || c.padded_vocab % c.pad_vocab_size_multiple != 0) __builtin_trap();
        (void)mq::parse_mamba_config(mq::mamba_config_json(c, c.layout), "roundtrip.json");
    } catch (const mq::error&) {
    }
    return 0;
}
