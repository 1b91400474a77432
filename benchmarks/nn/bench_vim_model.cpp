// Batch inference of the bundled Vim (vim-digits-192) over the 360 test images: the calling thread
// alone against a pool of 2 (images split over threads in groups of 16 stacked sequences).
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/kernels/parallel.hpp>
#include <mambaquant/nn/vim_model.hpp>

#include <benchmark/benchmark.h>

#include <cstddef>
#include <filesystem>

namespace {
const std::filesystem::path kRoot(MQ_SOURCE_DIR);

// items/s = images/s; FLOP/s counts the projections' multiply-adds (2 per MAC) only.
void run(benchmark::State& state) {
    static const mq::VimModel model = mq::VimModel::load(kRoot / "models" / "vim-digits-192");
    static const mq::FloatTensor images =
        mq::SafetensorsFile::open(kRoot / "tests" / "golden" / "vim-digits-192.safetensors").load_float("images");
    const auto threads = static_cast<std::size_t>(state.range(0));
    mq::ThreadPool pool(threads);
    const auto& c = model.config();
    const mq::ImageBatch batch{images.data.data(), images.shape[0], c.channels, c.image_height, c.image_width};
    for (auto _ : state) {
        const mq::MatrixXf logits = model.logits(batch, threads > 1 ? &pool : nullptr);
        benchmark::DoNotOptimize(logits.data());
    }
    const double D = double(c.d_model), E = double(c.d_inner), R = double(c.dt_rank), N = double(c.d_state);
    const double macs_per_token = D * 2 * E + E * D + 2 * (E * (R + 2 * N) + R * E);
    const double flop = 2.0 * macs_per_token * double(c.seq_len()) * double(c.n_layer) * double(batch.count);
    state.counters["FLOP/s"] = benchmark::Counter(flop * double(state.iterations()), benchmark::Counter::kIsRate);
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * batch.count));
}
} // namespace

static void BM_f32_vim_logits(benchmark::State& s) { run(s); }
// Arg: threads (1: calling thread only; 2: both cores). 360 images of 8×8, 17 tokens each.
BENCHMARK(BM_f32_vim_logits)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
