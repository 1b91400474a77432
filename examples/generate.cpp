// Loads a Mamba checkpoint directory and greedily continues a prompt, one byte per token (the
// bundled byte-level models; any model whose vocabulary covers the prompt's bytes works).
//   ./generate models/kjv-mamba-192 "In the beginning" 200
#include <mambaquant/nn/mamba_model.hpp>

#include <charconv>
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace {

constexpr std::size_t kMaxTokens = 1'000'000;

// TOKENS as a whole decimal number in [0, kMaxTokens]: strtoul alone would read "-1" as 2⁶⁴ − 1
// (generating forever) and "12abc" as 12.
bool parse_count(const char* text, std::size_t& count) {
    const std::string_view s(text);
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), count);
    return !s.empty() && ec == std::errc() && end == s.data() + s.size() && count <= kMaxTokens;
}

} // namespace

int main(int argc, char** argv) {
    if (argc < 3 || argc > 4) {
        std::fprintf(stderr, "usage: %s MODEL_DIR PROMPT [TOKENS=200]\n", argv[0]);
        return 2;
    }
    std::size_t count = 200;
    if (argc > 3 && !parse_count(argv[3], count)) {
        std::fprintf(stderr, "error: TOKENS must be a whole number from 0 to %zu, got \"%s\"\n", kMaxTokens, argv[3]);
        return 2;
    }
    if (argv[2][0] == '\0') {
        std::fprintf(stderr, "error: PROMPT must not be empty (the model continues it)\n");
        return 2;
    }
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
    } catch (const std::exception& e) { // mq::error, or the file system's own errors
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
