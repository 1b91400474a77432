// libFuzzer target: the safetensors header parser on arbitrary bytes (a whole file in memory),
// a parsed header checked against a fixed Mamba config (the config-against-checkpoint check), and
// the sharded index parser on the same bytes as text. Any input may be rejected with
// mq::error; none may crash, hang, leak or read out of bounds.
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/mamba_tensors.hpp>
#include <mambaquant/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
    try {
        const mq::SafetensorsHeader h = mq::parse_safetensors_header(bytes, "fuzz.safetensors");
        // Everything the header promises must be readable: touch every tensor's bytes.
        volatile std::uint8_t sink = 0;
        for (const auto& t : h.tensors) {
            const auto raw = bytes.subspan(h.data_offset + t.begin, t.nbytes());
            if (!raw.empty()) sink = sink ^ static_cast<std::uint8_t>(raw.front()) ^ static_cast<std::uint8_t>(raw.back());
        }
        (void)sink;
        // D 4, one layer, vocab 8, d_state 2, untied: exactly 13 tensors (seed: corpus/mamba_tiny).
        static const mq::MambaConfig config = mq::parse_mamba_config(
            R"({"d_model": 4, "n_layer": 1, "vocab_size": 8, "tie_embeddings": false, "ssm_cfg": {"d_state": 2}})");
        mq::TensorClaims claims(h, "fuzz.safetensors");
        (void)mq::claim_mamba_tensors(config, claims);
        if (h.tensors.size() != 13) __builtin_trap(); // accepted: every tensor was claimed, none twice
    } catch (const mq::error&) {
    }
    try {
        (void)mq::Checkpoint::parse_index(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.index.json");
    } catch (const mq::error&) {
    }
    return 0;
}
