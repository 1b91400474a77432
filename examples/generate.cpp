// Loads a Mamba checkpoint directory and greedily continues a prompt, one byte per token (the
// bundled byte-level models; any model whose vocabulary covers the prompt's bytes works).
//   ./generate models/kjv-mamba-192 "In the beginning" 200
#include <mambaquant/nn/mamba_model.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s MODEL_DIR PROMPT [TOKENS=200]\n", argv[0]);
        return 2;
    }
    const std::size_t count = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 200;
    try {
        const auto t0 = std::chrono::steady_clock::now();
        const mq::MambaModel model = mq::MambaModel::load(argv[1]);
        const auto t1 = std::chrono::steady_clock::now();
        const auto& c = model.config();
        std::fprintf(stderr, "loaded %s: d_model %zu, %zu layers, vocab %zu (padded %zu) in %.0f ms\n", argv[1],
                     c.d_model, c.n_layer, c.vocab_size, c.padded_vocab,
                     std::chrono::duration<double, std::milli>(t1 - t0).count());
        const std::string prompt = argv[2];
        std::vector<std::uint32_t> tokens;
        for (unsigned char ch : prompt) tokens.push_back(ch);

        // Prefill once, then decode token by token with the per-layer caches.
        auto state = model.make_state();
        const auto t2 = std::chrono::steady_clock::now();
        mq::MatrixXf last = model.prefill(tokens, state, mq::Logits::last);
        std::vector<float> logits(last.data(), last.data() + last.size());
        std::string out;
        for (std::size_t i = 0; i < count; ++i) {
            std::uint32_t best = 0; // argmax over the real vocabulary, never a padding row
            for (std::uint32_t v = 1; v < c.vocab_size; ++v)
                if (logits[v] > logits[best]) best = v;
            out.push_back(static_cast<char>(best & 0xff));
            if (i + 1 < count) model.decode(best, state, logits);
        }
        const auto t3 = std::chrono::steady_clock::now();
        std::printf("%s%s\n", prompt.c_str(), out.c_str());
        std::fprintf(stderr, "%zu prompt + %zu generated tokens in %.1f ms (%.0f tokens/s)\n", tokens.size(), count,
                     std::chrono::duration<double, std::milli>(t3 - t2).count(),
                     static_cast<double>(tokens.size() + count) / std::chrono::duration<double>(t3 - t2).count());
    } catch (const mq::error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
