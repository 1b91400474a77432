// Float Mamba model throughput on a mamba-130m-shaped random model (D 768, 24 layers, V 50280):
// prefill and decode in tokens/s, and the time to load it from a safetensors checkpoint.
// BM_memory_copy (same binary) gives the machine's bandwidth: decode reads every weight once
// per token, so bytes_per_second of BM_model_decode against it shows how close to the bound it is.
#include <mambaquant/io/config.hpp>
#include <mambaquant/nn/mamba_model.hpp>

#include "common/memory_bandwidth.hpp"

#include <benchmark/benchmark.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

namespace {

mq::MambaConfig mamba_130m() {
    return mq::parse_mamba_config(R"({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "pad_vocab_size_multiple": 8})");
}

const mq::MambaModel& model_130m() {
    static const auto model = std::make_unique<mq::MambaModel>(mq::MambaModel::random(mamba_130m(), 42));
    return *model;
}

// Bytes of weights one decode step reads: every projection, the conv, A, D, biases, norms and
// the (tied) LM head.
std::int64_t weight_bytes(const mq::MambaModel& m) {
    const auto& c = m.config();
    const std::size_t D = c.d_model, E = c.d_inner, N = c.d_state, R = c.dt_rank, K = c.d_conv;
    const std::size_t per_layer = 2 * E * D + (R + 2 * N) * E + E * R + D * E + E * N + E * K + 4 * E + D;
    return static_cast<std::int64_t>(4 * (c.n_layer * per_layer + c.padded_vocab * D + D));
}

std::vector<std::uint32_t> tokens(std::size_t n) {
    std::vector<std::uint32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::uint32_t>((i * 7919 + 13) % 50277);
    return t;
}

void BM_model_prefill(benchmark::State& state) {
    const auto& m = model_130m();
    const auto toks = tokens(static_cast<std::size_t>(state.range(0)));
    auto s = m.make_state();
    for (auto _ : state) {
        s.reset();
        auto logits = m.prefill(toks, s, mq::Logits::last);
        benchmark::DoNotOptimize(logits.data());
    }
    state.SetItemsProcessed(state.iterations() * state.range(0)); // tokens/s
}

void BM_model_decode(benchmark::State& state) {
    const auto& m = model_130m();
    auto s = m.make_state();
    const auto prompt = tokens(16);
    m.prefill(prompt, s, mq::Logits::none);
    std::vector<float> logits(m.config().padded_vocab);
    std::uint32_t tok = 1;
    for (auto _ : state) {
        m.decode(tok, s, logits);
        tok = (tok * 31 + 7) % 50277;
        benchmark::DoNotOptimize(logits.data());
    }
    state.SetItemsProcessed(state.iterations()); // tokens/s
    state.SetBytesProcessed(state.iterations() * weight_bytes(m));
}

void BM_model_load(benchmark::State& state) {
    const auto dir = std::filesystem::temp_directory_path() / "mq_bench_mamba130m";
    if (!std::filesystem::exists(dir / "model.safetensors")) model_130m().save(dir, mq::ConfigLayout::transformers);
    const auto bytes = static_cast<std::int64_t>(std::filesystem::file_size(dir / "model.safetensors"));
    for (auto _ : state) {
        auto m = mq::MambaModel::load(dir);
        benchmark::DoNotOptimize(m.embedding().data());
    }
    state.SetBytesProcessed(state.iterations() * bytes);
}

} // namespace

BENCHMARK(BM_model_prefill)->Name("BM_model_prefill/mamba130m")->Arg(64)->Arg(256)->ArgName("L")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_model_decode)->Name("BM_model_decode/mamba130m")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_model_load)->Name("BM_model_load/mamba130m")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
