// The config-against-checkpoint check: every tensor present with the config's shape, none unused.
#include <mambaquant/io/mamba_tensors.hpp>

#include <doctest/doctest.h>

#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

using doctest::Contains;

namespace {

// D 16, E 32, N 4, R 1, K 4, V 8; three layers; untied head.
mq::MambaConfig tiny(std::size_t n_layer = 3) {
    // Built by appending: `"literal" + std::to_string(i)` trips g++ 12's false -Wrestrict at -O3
    // (GCC bug 105651), and the Release build treats warnings as errors.
    std::string json = R"({"d_model": 16, "n_layer": )";
    json += std::to_string(n_layer);
    json += R"(, "vocab_size": 8, "tie_embeddings": false, "ssm_cfg": {"d_state": 4}})";
    return mq::parse_mamba_config(json);
}

// A safetensors file (zeros) with every tensor of `c`; `edit` may rename, reshape, drop or add.
struct Entry {
    std::string name;
    std::vector<std::size_t> shape;
    mq::DType dtype = mq::DType::F32;
};
std::vector<Entry> entries(const mq::MambaConfig& c) {
    const std::size_t D = c.d_model, E = c.d_inner, N = c.d_state, R = c.dt_rank, K = c.d_conv, V = c.padded_vocab;
    std::vector<Entry> e = {{"backbone.embeddings.weight", {V, D}}, {"lm_head.weight", {V, D}}, {"backbone.norm_f.weight", {D}}};
    for (std::size_t i = 0; i < c.n_layer; ++i) {
        std::string p = "backbone.layers.";
        p += std::to_string(i);
        p += ".";
        for (const Entry& t : std::vector<Entry>{{"norm.weight", {D}}, {"mixer.in_proj.weight", {2 * E, D}},
                                                 {"mixer.conv1d.weight", {E, 1, K}}, {"mixer.conv1d.bias", {E}},
                                                 {"mixer.x_proj.weight", {R + 2 * N, E}}, {"mixer.dt_proj.weight", {E, R}},
                                                 {"mixer.dt_proj.bias", {E}}, {"mixer.A_log", {E, N}}, {"mixer.D", {E}},
                                                 {"mixer.out_proj.weight", {D, E}}})
            e.push_back({p + t.name, t.shape, t.dtype});
    }
    return e;
}
std::vector<std::byte> file_of(const std::vector<Entry>& es) {
    std::vector<std::vector<std::byte>> data;
    std::vector<mq::TensorData> ts;
    for (const auto& e : es) {
        std::size_t n = mq::dtype_size(e.dtype);
        for (auto d : e.shape) n *= d;
        data.emplace_back(n);
    }
    for (std::size_t i = 0; i < es.size(); ++i) ts.push_back({es[i].name, es[i].dtype, es[i].shape, data[i]});
    return mq::serialize_safetensors(ts);
}
// Runs the check on the header only (no file, no tensor data read).
mq::MambaTensorNames check(const mq::MambaConfig& c, const std::vector<Entry>& es) {
    const auto bytes = file_of(es);
    const auto header = mq::parse_safetensors_header(bytes, "m.safetensors");
    mq::TensorClaims claims(header, "m.safetensors");
    return mq::claim_mamba_tensors(c, claims);
}

} // namespace

TEST_CASE("a checkpoint that matches its config passes; the names come back") {
    const auto names = check(tiny(), entries(tiny()));
    CHECK(names.embedding == "backbone.embeddings.weight");
    CHECK(names.lm_head);
    // mamba_ssm's spelling, tied head, no conv bias.
    auto c = tiny(1);
    c.tie_embeddings = true;
    c.conv_bias = false;
    std::vector<Entry> es;
    for (auto e : entries(c))
        if (e.name != "lm_head.weight" && e.name.find("conv1d.bias") == std::string::npos) es.push_back(e);
    es[0].name = "backbone.embedding.weight";
    const auto n2 = check(c, es);
    CHECK(n2.embedding == "backbone.embedding.weight");
    CHECK_FALSE(n2.lm_head);
}

TEST_CASE("config and checkpoint disagree: fewer or more layers, inflated sizes, leftovers") {
    const auto full = entries(tiny());
    // Fewer layers in the config: layer 2's tensors are unused; the first in name order is named.
    CHECK_THROWS_WITH_AS(check(tiny(2), full),
                         Contains("m.safetensors: tensor \"backbone.layers.2.mixer.A_log\" is not used by the config (d_model 16, n_layer 2,"),
                         mq::error);
    // 10⁹ layers: fails at the first missing layer, having allocated nothing per layer.
    CHECK_THROWS_WITH_AS(check(tiny(1000000000), full),
                         Contains("the config says n_layer = 1000000000 but the checkpoint has no tensors of layer 3"), mq::error);
    // A 2⁴⁰ vocabulary: refuted by the embedding's real shape.
    auto huge_vocab = tiny();
    huge_vocab.vocab_size = huge_vocab.padded_vocab = std::size_t{1} << 40;
    CHECK_THROWS_WITH_AS(check(huge_vocab, full),
                         Contains("tensor \"backbone.embeddings.weight\": expected shape [1099511627776, 16], got [8, 16]"), mq::error);
    // A wider inner dimension.
    auto wide = tiny();
    wide.d_inner = 64;
    CHECK_THROWS_WITH_AS(check(wide, full), Contains("tensor \"backbone.layers.0.mixer.in_proj.weight\": expected shape [128, 16], got [64, 16]"),
                         mq::error);
    // No conv bias in the config, one in the file.
    auto no_bias = tiny();
    no_bias.conv_bias = false;
    CHECK_THROWS_WITH_AS(check(no_bias, full), Contains("tensor \"backbone.layers.0.mixer.conv1d.bias\" is not used by the config"), mq::error);
    // A stray tensor.
    auto stray = full;
    stray.push_back({"backbone.layers.0.mixer.extra", {4}});
    CHECK_THROWS_WITH_AS(check(tiny(), stray), Contains("tensor \"backbone.layers.0.mixer.extra\" is not used by the config"), mq::error);
    // Integer codes where float weights belong.
    auto ints = full;
    ints[2].dtype = mq::DType::I8;
    CHECK_THROWS_WITH_AS(check(tiny(), ints), Contains("tensor \"backbone.norm_f.weight\": dtype I8 is not a float type"), mq::error);
    // Missing pieces.
    auto missing = full;
    missing.erase(missing.begin() + 1); // lm_head
    CHECK_THROWS_WITH_AS(check(tiny(), missing), Contains("\"lm_head.weight\" not found and the config does not tie embeddings"), mq::error);
    missing = full;
    missing.pop_back(); // layer 2's out_proj
    CHECK_THROWS_WITH_AS(check(tiny(), missing), Contains("tensor \"backbone.layers.2.mixer.out_proj.weight\" not found"), mq::error);
    auto both = full;
    both.push_back({"backbone.embedding.weight", {8, 16}});
    CHECK_THROWS_WITH_AS(check(tiny(), both), Contains("both \"backbone.embeddings.weight\" and \"backbone.embedding.weight\" present"), mq::error);
}

TEST_CASE("on a sharded checkpoint, messages name the shard that holds the tensor") {
    const auto dir = std::filesystem::temp_directory_path() / "mq_test_mamba_tensors";
    std::filesystem::remove_all(dir);
    const auto es = entries(tiny());
    std::vector<std::vector<float>> data;
    std::vector<mq::TensorData> ts;
    for (const auto& e : es) {
        std::size_t n = 1;
        for (auto d : e.shape) n *= d;
        data.emplace_back(n, 0.0f);
    }
    for (std::size_t i = 0; i < es.size(); ++i) ts.push_back(mq::tensor_data<float>(es[i].name, data[i], es[i].shape));
    mq::save_sharded_safetensors(dir, ts, 4096);
    const auto ck = mq::Checkpoint::open(dir);
    REQUIRE(ck.shard_count() > 1);
    CHECK(mq::check_mamba_checkpoint(tiny(), ck).lm_head);
    try {
        mq::check_mamba_checkpoint(tiny(2), ck);
        FAIL("expected an error");
    } catch (const mq::error& e) {
        const std::string msg = e.what();
        CHECK(msg.find(ck.source_of("backbone.layers.2.mixer.A_log") + ": tensor \"backbone.layers.2.mixer.A_log\" is not used") == 0);
        CHECK(msg.find(".safetensors") != std::string::npos);
    }
    std::filesystem::remove_all(dir);
}
