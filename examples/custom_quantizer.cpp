// A user-defined quantizer policy in a whole model. The policy is a plain struct with the members
// the QuantizerPolicy concept documents (README "Policies") — no trait to specialize. This one
// rounds every scale up to a power of two (a shift instead of a multiply on fixed-point hardware);
// the library calls its params() wherever a scale is picked: weight packing, activation
// quantization, the fused Hadamard path. Prints each model's error against the float model.
//   ./custom_quantizer [MODEL_DIR] [TEXT]     (default: the bundled kjv-mamba-192)
#include <mambaquant/nn/mamba_model.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#ifndef MQ_SOURCE_DIR
#define MQ_SOURCE_DIR "."
#endif

// scale = 2^⌈log2(s)⌉ for the usual min/max scale s: never clips, x·(1/scale) is exact.
template <int Bits, class Granularity, class Symmetry>
struct Pow2Quantizer {
    static constexpr int bits = Bits;
    static constexpr bool is_float = false;
    using granularity = Granularity;
    using symmetry = Symmetry;
    using range = mq::BitRange<Bits, Symmetry>;
    using code_type = std::conditional_t<Symmetry::is_symmetric, std::int8_t, std::uint8_t>;

    static mq::QuantParams params(float lo, float hi) noexcept {
        mq::QuantParams p = mq::params_from_range<Bits, Symmetry>(lo, hi);
        p.scale = std::exp2(std::ceil(std::log2(p.scale)));
        p.inv_scale = 1.0f / p.scale;
        if constexpr (!Symmetry::is_symmetric) { // re-derive the zero point for the new scale
            const float z = std::nearbyint(-std::min(lo, 0.0f) * p.inv_scale);
            p.zero = static_cast<std::int32_t>(std::clamp(z, float(range::min), float(range::max)));
        }
        return p;
    }
};
static_assert(mq::QuantizerPolicy<Pow2Quantizer<8, mq::per_token, mq::asymmetric>>);

using Pow2W8 = Pow2Quantizer<8, mq::per_channel, mq::symmetric>;
using Pow2A8 = Pow2Quantizer<8, mq::per_token, mq::asymmetric>;

template <class Model>
mq::MatrixXf logits_of(const std::string& dir, const std::vector<std::uint32_t>& tokens) {
    const Model model = Model::load(dir);
    auto state = model.make_state();
    return model.prefill(tokens, state);
}

int main(int argc, char** argv) {
    const std::string dir = argc > 1 ? argv[1] : std::string(MQ_SOURCE_DIR) + "/models/kjv-mamba-192";
    const std::string text = argc > 2 ? argv[2]
                                      : "In the beginning God created the heaven and the earth. And the earth was "
                                        "without form, and void; and darkness was upon the face of the deep.";
    std::vector<std::uint32_t> tokens(text.begin(), text.end()); // byte-level model
    try {
        const mq::MatrixXf ref = logits_of<mq::MambaModel>(dir, tokens);
        auto report = [&](const char* name, const mq::MatrixXf& l) {
            std::size_t agree = 0; // next-byte argmax agreement with the float model
            for (Eigen::Index t = 0; t < l.rows(); ++t) {
                Eigen::Index a = 0, b = 0;
                l.row(t).maxCoeff(&a);
                ref.row(t).maxCoeff(&b);
                agree += a == b;
            }
            std::printf("%-50s rel. error %.4f   argmax agreement %5.1f %%\n", name, double((l - ref).norm() / ref.norm()),
                        100.0 * double(agree) / double(l.rows()));
        };
        report("W8A8 built-in (min/max scales)",
               logits_of<mq::BasicMambaModel<mq::MambaBlock<mq::W8PerChannel, mq::A8PerToken>>>(dir, tokens));
        report("W8A8 power-of-two scales (user policy)",
               logits_of<mq::BasicMambaModel<mq::MambaBlock<Pow2W8, Pow2A8>>>(dir, tokens));
        report("W8A8 power-of-two + online Hadamard at out_proj",
               logits_of<mq::BasicMambaModel<mq::MambaBlock<Pow2W8, Pow2A8, mq::HadamardOnline>>>(dir, tokens));
    } catch (const mq::error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
