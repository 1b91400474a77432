// The quantized model against float on a mamba-130m-shaped random model (D 768, 24 layers,
// V 50280): decode and prefill (L = 512) tokens/s and the bytes the model holds, float, W8A8
// (W8 per channel) and W4A8 (W4 per group 128), every linear quantized including the LM head
// (tied: its packed rows are the embedding), activations A8 per token, conv int8, scan state·C
// int8. All variants read off one run:
//   BM_model_decode/mamba130m/<variant>/threads:<t>, BM_model_prefill/mamba130m/<variant>/threads:<t>/L:512
// threads:1 is the like-for-like ratio (the float path is Eigen, single-threaded here); threads:2
// lets the integer kernels split output channels over the default pool. Counter model_bytes
// (and model_pct of float) is what the model holds in memory (QuantizedMambaModel::bytes()).
#include <mambaquant/io/config.hpp>
#include <mambaquant/nn/mamba_model.hpp>
#include <mambaquant/nn/quantized_model.hpp>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace {

mq::MambaConfig mamba_130m() {
    return mq::parse_mamba_config(R"({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "pad_vocab_size_multiple": 8})");
}

enum Variant { kFloat, kW8A8, kW4A8 };
const char* const kNames[] = {"float", "w8a8", "w4a8"};

// Built once per variant (quantizing 130M weights takes seconds), then shared by every benchmark.
mq::QuantizedMambaModel& model(Variant v) {
    static std::unique_ptr<mq::QuantizedMambaModel> models[3];
    if (!models[v]) {
        const auto cfg = mamba_130m();
        const auto w = mq::mamba_weights(mq::MambaModel::random(cfg, 42));
        mq::QuantizationConfig qc;
        if (v == kW8A8) qc = mq::uniform_quantization_config(8, 0, mq::ActMode::dynamic_per_token);
        if (v == kW4A8) qc = mq::uniform_quantization_config(4, 128, mq::ActMode::dynamic_per_token);
        models[v] = std::make_unique<mq::QuantizedMambaModel>(mq::build_quantized_model(w, cfg, qc));
    }
    return *models[v];
}

void set_threads(mq::QuantizedMambaModel& m, int threads) {
    m.set_thread_pool(threads == 1 ? nullptr : &mq::default_thread_pool());
}

void counters(benchmark::State& state, Variant v) {
    state.counters["model_bytes"] = static_cast<double>(model(v).bytes());
    state.counters["model_pct"] = 100.0 * static_cast<double>(model(v).bytes()) / static_cast<double>(model(kFloat).bytes());
}

std::vector<std::uint32_t> tokens(std::size_t n) {
    std::vector<std::uint32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::uint32_t>((i * 7919 + 13) % 50277);
    return t;
}

void BM_model_decode(benchmark::State& state, Variant v, int threads) {
    auto& m = model(v);
    set_threads(m, threads);
    auto s = m.make_state();
    m.prefill(tokens(16), s, mq::Logits::none);
    std::vector<float> logits(m.config().padded_vocab);
    std::uint32_t tok = 1;
    for (auto _ : state) {
        m.decode(tok, s, logits);
        tok = (tok * 31 + 7) % 50277;
        benchmark::DoNotOptimize(logits.data());
    }
    state.SetItemsProcessed(state.iterations()); // tokens/s
    counters(state, v);
}

void BM_model_prefill(benchmark::State& state, Variant v, int threads) {
    auto& m = model(v);
    set_threads(m, threads);
    const auto toks = tokens(static_cast<std::size_t>(state.range(0)));
    auto s = m.make_state();
    for (auto _ : state) {
        s.reset();
        m.prefill(toks, s, mq::Logits::last);
        benchmark::DoNotOptimize(s.logits.data());
    }
    state.SetItemsProcessed(state.iterations() * state.range(0)); // tokens/s
    counters(state, v);
}

const bool kRegistered = [] {
    for (Variant v : {kFloat, kW8A8, kW4A8})
        for (int t : {1, 2}) {
            if (v == kFloat && t == 2) continue; // Eigen float path: single-threaded either way
            const std::string suffix = std::string("/mamba130m/") + kNames[v];
            benchmark::RegisterBenchmark(("BM_model_decode" + suffix + "/threads:" + std::to_string(t)).c_str(),
                                         BM_model_decode, v, t)
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime();
            benchmark::RegisterBenchmark(("BM_model_prefill" + suffix + "/threads:" + std::to_string(t)).c_str(),
                                         BM_model_prefill, v, t)
                ->Arg(512)
                ->ArgName("L")
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime()
                ->Iterations(2);
        }
    return true;
}();

} // namespace
