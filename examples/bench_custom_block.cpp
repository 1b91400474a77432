// Google Benchmark of a user-composed block beside the float one: one decode step (1 token) of one
// mamba-130m-shaped layer (D = 768, E = 1536). Run: ./bench_custom_block [--benchmark_min_time=…]
#include <mambaquant/io/config.hpp>
#include <mambaquant/nn/mamba_model.hpp>

#include <benchmark/benchmark.h>

using MyBlock = mq::MambaBlock<mq::W4PerChannel, mq::A8PerToken, mq::HadamardOnline>; // the user's choice

template <class Block>
void BM_block_decode(benchmark::State& state) {
    const auto cfg = mq::parse_mamba_config(R"({"d_model": 768, "n_layer": 1, "vocab_size": 256})");
    const auto model = mq::BasicMambaModel<Block>::random(cfg, 42); // random weights, sizes from cfg
    const Block& block = model.layers()[0];
    auto cache = block.make_cache();
    typename Block::Workspace ws;
    mq::MatrixXf h = mq::MatrixXf::Random(1, 768);
    for (auto _ : state) block.forward(h, cache, ws), benchmark::DoNotOptimize(h.data());
    state.SetItemsProcessed(state.iterations()); // tokens/s
}
BENCHMARK(BM_block_decode<mq::FloatMambaBlock>)->Name("BM_f32_block_decode/768");
BENCHMARK(BM_block_decode<MyBlock>)->Name("BM_w4a8_had_block_decode/768");
BENCHMARK_MAIN();
