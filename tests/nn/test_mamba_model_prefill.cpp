// MambaModel at its boundaries: chunked prefill (bounded memory, bit-identical to one pass) and
// what loading a checkpoint that disagrees with its config, or holds a non-finite weight, gives.
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/config.hpp>
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/nn/mamba_model.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/resource.h>
#include <unistd.h>
#endif

using doctest::Contains;

namespace {

// D 48 gives dt_rank 3 and an x_proj of 3 + 2·16 = 35 rows: GEMM remainder rows are exercised.
mq::MambaModel small_model() {
    return mq::MambaModel::random(mq::parse_mamba_config(R"({"d_model": 48, "n_layer": 2, "vocab_size": 50})"), 11);
}

std::vector<std::uint32_t> tokens(std::size_t n) {
    std::vector<std::uint32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::uint32_t>((i * 7 + i / 3) % 50);
    return t;
}

struct Run {
    mq::MatrixXf logits;
    std::vector<mq::MatrixXf> hidden;
    mq::MambaModel::State state;
};
Run run(const mq::MambaModel& m, const std::vector<std::uint32_t>& toks, std::size_t chunk, mq::Logits which = mq::Logits::all) {
    Run r{{}, {}, m.make_state()};
    r.state.chunk_tokens = chunk;
    r.logits = m.prefill(toks, r.state, which, &r.hidden);
    return r;
}

std::filesystem::path fresh_dir(const char* name) {
    auto d = std::filesystem::temp_directory_path() / name;
    std::filesystem::remove_all(d);
    std::filesystem::create_directories(d);
    return d;
}

} // namespace

TEST_CASE("chunked prefill is bit-identical to one pass, and its workspace stays chunk-sized") {
    const auto m = small_model();
    for (std::size_t L : {1000u, 1025u, 1026u, 257u, 2u}) {
        CAPTURE(L);
        const auto toks = tokens(L);
        const Run one = run(m, toks, 2048); // L ≤ chunk: one pass
        REQUIRE(one.state.workspace.xz.rows() == static_cast<Eigen::Index>(L));
        for (std::size_t chunk : {256u, 64u, 4u}) {
            CAPTURE(chunk);
            const Run c = run(m, toks, chunk);
            // Exact equality, not a tolerance: the conv window and scan state carry across chunks and
            // every GEMM column keeps its summation order (chunks are multiples of Eigen's nr = 4).
            CHECK(c.logits == one.logits);
            REQUIRE(c.hidden.size() == one.hidden.size());
            for (std::size_t i = 0; i < c.hidden.size(); ++i) CHECK(c.hidden[i] == one.hidden[i]);
            for (std::size_t i = 0; i < c.state.caches.size(); ++i) {
                CHECK(c.state.caches[i].scan.state == one.state.caches[i].scan.state);
                CHECK(c.state.caches[i].conv.window == one.state.caches[i].conv.window);
            }
            CHECK(c.state.position == L);
            // The memory bound itself: scratch rows never exceed chunk + 1 (the tail merge).
            CHECK(c.state.workspace.xz.rows() <= static_cast<Eigen::Index>(chunk + 1));
            CHECK(c.state.h.rows() <= static_cast<Eigen::Index>(chunk + 1));
            // Logits::last: one row, so the head is a GEMV both ways (not a row of the GEMM above).
            CHECK(run(m, toks, chunk, mq::Logits::last).logits == run(m, toks, 2048, mq::Logits::last).logits);
        }
    }
    auto s = m.make_state();
    s.chunk_tokens = 6;
    const auto toks = tokens(8);
    CHECK_THROWS_WITH_AS(m.prefill(toks, s), Contains("chunk_tokens must be a positive multiple of 4, got 6"), mq::error);
    // A bad token anywhere is refused before the state advances.
    s.chunk_tokens = 4;
    auto bad = tokens(20);
    bad[17] = 56; // the padded vocabulary: 50 rounded up to 8
    CHECK_THROWS_WITH_AS(m.prefill(bad, s), Contains("token 56 at position 17 is outside the vocabulary of 56"), mq::error);
    CHECK(s.position == 0);
    CHECK(s.caches[0].scan.state.cwiseAbs().maxCoeff() == 0.0f);
}

TEST_CASE("loading: a config that disagrees with its checkpoint, a non-finite weight") {
    const auto dir = fresh_dir("mq_test_model_checks");
    small_model().save(dir, mq::ConfigLayout::mamba_ssm);
    CHECK(mq::MambaModel::load(dir).layers().size() == 2);
    const auto write_config = [&](const std::string& text) { std::ofstream(dir / "config.json") << text; };
    // Fewer layers than the checkpoint holds: refused, naming the first unused tensor.
    write_config(R"({"d_model": 48, "n_layer": 1, "vocab_size": 50})");
    CHECK_THROWS_WITH_AS(mq::MambaModel::load(dir), Contains("tensor \"backbone.layers.1.mixer.A_log\" is not used by the config (d_model 48, n_layer 1"),
                         mq::error);
    // 10⁹ layers, a 2⁴⁰ vocabulary, an overflowing expand: errors, not std::bad_alloc.
    write_config(R"({"d_model": 48, "n_layer": 1000000000, "vocab_size": 50})");
    CHECK_THROWS_WITH_AS(mq::MambaModel::load(dir), Contains("n_layer = 1000000000 but the checkpoint has no tensors of layer 2"), mq::error);
    write_config(R"({"d_model": 48, "n_layer": 2, "vocab_size": 1099511627776})");
    CHECK_THROWS_WITH_AS(mq::MambaModel::load(dir), Contains("expected shape [1099511627776, 48], got [56, 48]"), mq::error);
    write_config(R"({"d_model": 48, "n_layer": 2, "vocab_size": 50, "ssm_cfg": {"expand": 1099511627776}})");
    CHECK_THROWS_WITH_AS(mq::MambaModel::load(dir), Contains("expected shape [105553116266496, 48], got [192, 48]"), mq::error);
    write_config(R"({"d_model": 48, "n_layer": 2, "vocab_size": 50})");

    // A NaN or inf in any weight: refused at load, naming the tensor (once out_proj and norm_f
    // gave NUL bytes and exit 0; in_proj, norm, the embedding and x_proj an error at the first
    // forward naming nothing).
    const auto ck = mq::Checkpoint::open(dir);
    std::vector<mq::FloatTensor> values;
    const auto names = ck.names();
    for (const auto& n : names) values.push_back(ck.load_float(n));
    for (const char* bad : {"backbone.layers.1.mixer.out_proj.weight", "backbone.norm_f.weight", "backbone.layers.0.mixer.in_proj.weight",
                            "backbone.layers.0.norm.weight", "backbone.embedding.weight", "backbone.layers.1.mixer.x_proj.weight"}) {
        CAPTURE(bad);
        const auto dir2 = fresh_dir("mq_test_model_nan");
        std::filesystem::copy_file(dir / "config.json", dir2 / "config.json");
        auto poisoned = values;
        std::vector<mq::TensorData> ts;
        for (std::size_t i = 0; i < names.size(); ++i) {
            if (names[i] == bad) poisoned[i].data[3] = names[i].find("norm") != std::string::npos
                                                           ? std::numeric_limits<float>::infinity()
                                                           : std::numeric_limits<float>::quiet_NaN();
            ts.push_back(mq::tensor_data<float>(names[i], poisoned[i].data, poisoned[i].shape));
        }
        mq::save_safetensors(dir2 / "model.safetensors", ts);
        const std::string expected = std::string("tensor \"") + bad + "\": element 3 of ";
        CHECK_THROWS_WITH_AS(mq::MambaModel::load(dir2), Contains(expected.c_str()), mq::error);
        std::filesystem::remove_all(dir2);
    }

    std::filesystem::remove_all(dir);
}

#if defined(__linux__) && !defined(__SANITIZE_ADDRESS__)
TEST_CASE("out of memory while loading is an mq::error naming the tensor being allocated") {
    // Under an address-space limit that leaves room to map the checkpoint but not to copy its
    // 64 MiB embedding, the load fails with mq::error naming that tensor, never an escaping
    // std::bad_alloc. (64 MiB is above glibc's largest mmap threshold, so no free heap chunk can
    // serve it. Skipped under ASan, whose allocator reserves address space of its own.)
    const auto dir = fresh_dir("mq_test_model_oom");
    mq::MambaModel::random(mq::parse_mamba_config(R"({"d_model": 256, "n_layer": 1, "vocab_size": 65536})"), 3)
        .save(dir, mq::ConfigLayout::mamba_ssm);
    const auto file_bytes = static_cast<rlim_t>(std::filesystem::file_size(dir / "model.safetensors"));
    long pages = 0;
    std::ifstream("/proc/self/statm") >> pages;
    const auto used = static_cast<rlim_t>(pages) * static_cast<rlim_t>(::sysconf(_SC_PAGESIZE));
    rlimit old{};
    REQUIRE(::getrlimit(RLIMIT_AS, &old) == 0);
    rlimit tight = old;
    tight.rlim_cur = used + file_bytes + (16u << 20);
    REQUIRE(::setrlimit(RLIMIT_AS, &tight) == 0);
    std::string message;
    try {
        (void)mq::MambaModel::load(dir);
    } catch (const mq::error& e) {
        message = e.what();
    } catch (...) {
        message = "another exception";
    }
    REQUIRE(::setrlimit(RLIMIT_AS, &old) == 0);
    CHECK(message.find("model.safetensors: out of memory allocating tensor \"backbone.embedding.weight\" (67108864 bytes)") !=
          std::string::npos);
    CAPTURE(message);
    std::filesystem::remove_all(dir);
}
#endif
