#include <mambaquant/eval/accuracy_table.hpp>
#include <mambaquant/eval/bits_per_byte.hpp>
#include <mambaquant/eval/token_file.hpp>
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/nn/mamba_model.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

namespace {
const std::filesystem::path kRoot = std::filesystem::path(MQ_SOURCE_DIR);

// A model that predicts the uniform distribution: bpb = log₂ V exactly.
struct UniformModel {
    struct State {};
    State make_state() const { return {}; }
    mq::MatrixXf prefill(std::span<const std::uint32_t> t, State&, mq::Logits) const {
        return mq::MatrixXf::Constant(static_cast<Eigen::Index>(t.size()), 64, 0.25f);
    }
};
} // namespace

TEST_CASE("bits per byte: the uniform model scores log2(V); chunking counts every token but each chunk's first") {
    std::vector<std::uint32_t> t(5000);
    for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<std::uint32_t>(i % 64);
    const auto r = mq::evaluate(UniformModel{}, t, {2048, 2});
    CHECK(r.predicted == 5000u - 3u); // chunks of 2048, 2048, 904
    CHECK(r.bits_per_token() == doctest::Approx(6.0).epsilon(1e-12));
    CHECK(r.perplexity() == doctest::Approx(64.0).epsilon(1e-10));
}

TEST_CASE("bits per byte: the bundled model on 256 held-out bytes agrees with the PyTorch reference logits") {
    const auto f = mq::SafetensorsFile::open(kRoot / "tests" / "golden" / "kjv-mamba-192.safetensors");
    std::vector<std::uint32_t> tokens;
    for (auto b : f.bytes("tokens")) tokens.push_back(static_cast<std::uint8_t>(b));
    const auto ref_logits = f.load_float("logits");
    // Independent reference: Σ −log₂ softmax over the golden logits (PyTorch, float32).
    double bits = 0;
    for (std::size_t t = 1; t < tokens.size(); ++t) {
        const float* row = ref_logits.data.data() + (t - 1) * 256;
        double mx = row[0], s = 0;
        for (int v = 1; v < 256; ++v) mx = std::max(mx, double(row[v]));
        for (int v = 0; v < 256; ++v) s += std::exp(row[v] - mx);
        bits += (std::log(s) - (row[tokens[t]] - mx)) / std::log(2.0);
    }
    const double ref = bits / 255.0;
    const auto model = mq::MambaModel::load(kRoot / "models" / "kjv-mamba-192");
    const auto one = mq::evaluate(model, tokens, {256, 1});
    const auto two = mq::evaluate(model, tokens, {64, 2});
    // Logits agree with the reference to ~1e-4 absolute (float32 paths with different summation
    // orders); a logit error δ moves −log₂p by at most 2δ/ln2, so bpb agrees to ~3e-4.
    CHECK(one.bits_per_token() == doctest::Approx(ref).epsilon(3e-4));
    CHECK(one.predicted == 255u);
    CHECK(two.predicted == 252u); // 4 chunks of 64
    // Thread count does not change the sum (chunks are added in order).
    const auto two_b = mq::evaluate(model, tokens, {64, 1});
    CHECK(two.bits == two_b.bits);
}

TEST_CASE("token files, accuracy CSV and bad input") {
    const auto dir = std::filesystem::temp_directory_path() / "mq_test_eval";
    std::filesystem::create_directories(dir);
    {
        std::ofstream f(dir / "ids.bin", std::ios::binary);
        const std::uint32_t version = 1, reserved = 0;
        const std::uint64_t count = 3;
        const std::uint32_t ids[3] = {5, 70000, 2};
        f.write(mq::kTokenFileMagic, 8);
        f.write(reinterpret_cast<const char*>(&version), 4);
        f.write(reinterpret_cast<const char*>(&reserved), 4);
        f.write(reinterpret_cast<const char*>(&count), 8);
        f.write(reinterpret_cast<const char*>(ids), 12);
        std::ofstream(dir / "raw.txt") << "In the";
        std::ofstream(dir / "empty.txt");
    }
    CHECK(mq::read_tokens(dir / "ids.bin") == std::vector<std::uint32_t>{5, 70000, 2});
    CHECK(mq::read_tokens(dir / "raw.txt") == std::vector<std::uint32_t>{'I', 'n', ' ', 't', 'h', 'e'});
    CHECK_THROWS_WITH_AS(mq::evaluate(UniformModel{}, mq::read_tokens(dir / "empty.txt")),
                         doctest::Contains("at least 2"), mq::error);
    CHECK_THROWS_WITH_AS(mq::read_tokens(dir / "missing.bin"), doctest::Contains("cannot open"), mq::error);
    CHECK_THROWS_WITH_AS(mq::read_tokens(dir), doctest::Contains("not a regular file"), mq::error);
    {
        // A header whose count·4 wraps around 2^64 to the file's real payload size (4 bytes).
        std::ofstream f(dir / "wrap.bin", std::ios::binary);
        const std::uint32_t version = 1, reserved = 0, id = 7;
        const std::uint64_t count = (std::uint64_t{1} << 62) + 1;
        f.write(mq::kTokenFileMagic, 8);
        f.write(reinterpret_cast<const char*>(&version), 4);
        f.write(reinterpret_cast<const char*>(&reserved), 4);
        f.write(reinterpret_cast<const char*>(&count), 8);
        f.write(reinterpret_cast<const char*>(&id), 4);
    }
    CHECK_THROWS_WITH_AS(mq::read_tokens(dir / "wrap.bin"), doctest::Contains("the file holds 1"), mq::error);

    mq::AccuracyRow r{"m", "rtn", "w8a8", 1.9, 1.5, 0.7, 1000, 100};
    mq::write_accuracy_csv(dir / "a.csv", {r});
    std::ifstream in(dir / "a.csv");
    std::string header;
    std::getline(in, header);
    CHECK(header == "model,method,bits,bpb,delta_pct,size_mib,prefill_tok_s,decode_tok_s");
    CHECK(!std::filesystem::exists(dir / "a.csv.tmp"));
    std::filesystem::remove_all(dir);
}
