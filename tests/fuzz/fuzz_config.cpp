// libFuzzer target: config.json parsing (both layouts) on arbitrary text, and the config checked
// against a real checkpoint (tests/golden/tiny-mamba/mamba_ssm). Any input may be rejected with
// mq::error; none may crash, hang, allocate per layer or read out of bounds.
#include <mambaquant/io/config.hpp>
#include <mambaquant/io/mamba_tensors.hpp>
#include <mambaquant/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // The tiny model's header: D 64, 2 layers, vocab 100 (104 padded), untied head.
    static const mq::SafetensorsFile checkpoint = mq::SafetensorsFile::open(MQ_FUZZ_CHECKPOINT);
    try {
        const mq::MambaConfig c = mq::parse_mamba_config(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
        // A config that parses is self-consistent.
        if (c.d_inner == 0 || c.padded_vocab < c.vocab_size || c.padded_vocab % c.pad_vocab_size_multiple != 0) __builtin_trap();
        (void)mq::parse_mamba_config(mq::mamba_config_json(c, c.layout), "roundtrip.json");
        // A config the checkpoint accepts describes exactly that checkpoint (whatever the sizes
        // it claims: 10⁹ layers or a 2⁴⁰ vocabulary must fail on the file's sizes, cheaply).
        mq::TensorClaims claims(checkpoint.header(), checkpoint.source());
        (void)mq::claim_mamba_tensors(c, claims);
        if (c.d_model != 64 || c.n_layer != 2 || c.padded_vocab != 104 || c.d_inner != 128 || c.d_state != 16 ||
            c.dt_rank != 4 || c.d_conv != 4 || !c.conv_bias)
            __builtin_trap();
    } catch (const mq::error&) {
    }
    return 0;
}
