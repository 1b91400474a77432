// What the load-time finite check costs: every tensor of a mamba-130m-shaped F32 checkpoint (D 768,
// 24 layers, V 50280; 129 M weights, 517 MB) converted into float buffers, with the check
// (load_float_into: convert and check in 16 KB chunks while in L1) and without (convert_to_float,
// a memcpy for F32: the loader before the check), and the check alone over the loaded weights.
#include <mambaquant/core/simd.hpp>
#include <mambaquant/io/config.hpp>
#include <mambaquant/io/dtype.hpp>
#include <mambaquant/io/mamba_tensors.hpp>
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/kernels/finite.hpp>

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace {

using Shaped = mq::MambaTensorShape;

std::vector<Shaped> mamba_130m_tensors() {
    const auto c = mq::parse_mamba_config(R"({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "pad_vocab_size_multiple": 8})");
    std::vector<Shaped> t = {{"backbone.embeddings.weight", {c.padded_vocab, c.d_model}}, {"backbone.norm_f.weight", {c.d_model}}};
    for (std::size_t i = 0; i < c.n_layer; ++i) {
        auto layer = mq::mamba_layer_tensors(c, i);
        t.insert(t.end(), layer.begin(), layer.end());
    }
    return t;
}

// The checkpoint in memory (no disk in the measurement) and one destination buffer per tensor.
struct Fixture {
    std::vector<Shaped> shapes = mamba_130m_tensors();
    std::unique_ptr<mq::SafetensorsFile> file;
    std::vector<mq::aligned_vector<float>> dst;
    std::int64_t bytes = 0;
    Fixture() {
        std::vector<std::vector<float>> values;
        std::vector<mq::TensorData> ts;
        for (const auto& s : shapes) {
            std::size_t n = 1;
            for (auto d : s.shape) n *= d;
            values.emplace_back(n);
            for (std::size_t i = 0; i < n; ++i) values.back()[i] = static_cast<float>((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
            dst.emplace_back(n, 0.0f);
            bytes += static_cast<std::int64_t>(4 * n);
        }
        for (std::size_t i = 0; i < shapes.size(); ++i) ts.push_back(mq::tensor_data<float>(shapes[i].name, values[i], shapes[i].shape));
        file = std::make_unique<mq::SafetensorsFile>(mq::SafetensorsFile::from_bytes(mq::serialize_safetensors(ts), "mamba130m"));
    }
};
Fixture& fixture() {
    static Fixture f;
    return f;
}

void BM_f32_load_checked(benchmark::State& state) {
    auto& f = fixture();
    for (auto _ : state)
        for (std::size_t i = 0; i < f.shapes.size(); ++i) {
            f.file->load_float_into(f.shapes[i].name, f.shapes[i].shape, f.dst[i]);
            benchmark::DoNotOptimize(f.dst[i].data());
        }
    state.SetBytesProcessed(state.iterations() * f.bytes);
}

void BM_f32_load_unchecked(benchmark::State& state) {
    auto& f = fixture();
    for (auto _ : state)
        for (std::size_t i = 0; i < f.shapes.size(); ++i) {
            const auto& t = f.file->info(f.shapes[i].name);
            mq::convert_to_float(t.dtype, f.file->bytes(t).data(), f.dst[i].data(), f.dst[i].size());
            benchmark::DoNotOptimize(f.dst[i].data());
        }
    state.SetBytesProcessed(state.iterations() * f.bytes);
}

void BM_f32_all_finite(benchmark::State& state) {
    auto& f = fixture();
    for (auto _ : state) {
        bool ok = true;
        for (const auto& d : f.dst) ok &= mq::all_finite(mq::default_arch{}, mq::ConstMatrixView<float>(d.data(), 1, d.size()));
        benchmark::DoNotOptimize(ok);
    }
    state.SetBytesProcessed(state.iterations() * f.bytes);
}

} // namespace

BENCHMARK(BM_f32_load_checked)->Name("BM_f32_load_checked/avx2/mamba130m")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_f32_load_unchecked)->Name("BM_f32_load_unchecked/avx2/mamba130m")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_f32_all_finite)->Name("BM_f32_all_finite/avx2/mamba130m")->Unit(benchmark::kMillisecond)->UseRealTime();
