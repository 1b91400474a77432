#include <mambaquant/io/config.hpp>

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#if defined(__unix__)
#include <sys/stat.h>
#endif

using doctest::Contains;

TEST_CASE("mamba_ssm layout: defaults, dt_rank auto, vocabulary padding") {
    // state-spaces/mamba-130m's config.json.
    const auto c = mq::parse_mamba_config(R"({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {},
        "rms_norm": true, "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 8})");
    CHECK(c.layout == mq::ConfigLayout::mamba_ssm);
    CHECK(c.d_model == 768);
    CHECK(c.n_layer == 24);
    CHECK(c.vocab_size == 50277);
    CHECK(c.padded_vocab == 50280);
    CHECK(c.d_inner == 1536);
    CHECK(c.d_state == 16);
    CHECK(c.d_conv == 4);
    CHECK(c.dt_rank == 48);
    CHECK(c.tie_embeddings);
    CHECK(c.conv_bias);
    CHECK(c.norm_eps == 1e-5f);
    const auto d = mq::parse_mamba_config(R"({"d_model": 100, "n_layer": 2, "vocab_size": 10,
        "ssm_cfg": {"d_state": 8, "d_conv": 3, "expand": 3, "dt_rank": 5, "conv_bias": false}, "tie_embeddings": false})");
    CHECK(d.padded_vocab == 16); // default multiple 8
    CHECK(d.d_inner == 300);
    CHECK(d.dt_rank == 5);
    CHECK(d.d_state == 8);
    CHECK(d.d_conv == 3);
    CHECK_FALSE(d.conv_bias);
    CHECK_FALSE(d.tie_embeddings);
    CHECK(mq::parse_mamba_config(R"({"d_model": 100, "n_layer": 1, "vocab_size": 10, "ssm_cfg": {"dt_rank": "auto"}})").dt_rank == 7); // ceil(100/16)
}

TEST_CASE("transformers layout, and both layouts describe the same model") {
    // state-spaces/mamba-130m-hf's config.json (abridged).
    const auto h = mq::parse_mamba_config(R"({"model_type": "mamba", "hidden_size": 768, "num_hidden_layers": 24,
        "vocab_size": 50280, "state_size": 16, "expand": 2, "intermediate_size": 1536, "conv_kernel": 4,
        "time_step_rank": 48, "layer_norm_epsilon": 1e-05, "use_bias": false, "use_conv_bias": true,
        "hidden_act": "silu", "tie_word_embeddings": true, "initializer_range": 0.1})");
    CHECK(h.layout == mq::ConfigLayout::transformers);
    CHECK(h.padded_vocab == 50280);
    CHECK(h.d_inner == 1536);
    CHECK(h.dt_rank == 48);
    auto s = mq::parse_mamba_config(R"({"d_model": 768, "n_layer": 24, "vocab_size": 50277})");
    CHECK(s.padded_vocab == h.padded_vocab);
    // Round trip through both writers.
    for (auto layout : {mq::ConfigLayout::mamba_ssm, mq::ConfigLayout::transformers}) {
        auto r = mq::parse_mamba_config(mq::mamba_config_json(s, layout));
        CHECK(r.layout == layout);
        r.layout = s.layout;
        if (layout == mq::ConfigLayout::transformers) { // written already padded
            CHECK(r.padded_vocab == s.padded_vocab);
            r.vocab_size = s.vocab_size;
            r.pad_vocab_size_multiple = s.pad_vocab_size_multiple;
        }
        CHECK(r == s);
    }
    CHECK(mq::parse_mamba_config(R"({"hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 9, "time_step_rank": "auto"})").dt_rank == 4);
}

TEST_CASE("bad configs: missing, mistyped, contradictory or unsupported fields name the field") {
    const auto bad = [](const std::string& text) { return mq::parse_mamba_config(text, "m/config.json"); };
    CHECK_THROWS_WITH_AS(bad(R"({"vocab_size": 3})"), Contains("m/config.json: required field \"d_model\" (mamba_ssm) or \"hidden_size\""), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 64, "vocab_size": 3})"), Contains("required field \"n_layer\" is missing"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 64, "n_layer": 2})"), Contains("required field \"vocab_size\" is missing"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"hidden_size": 64, "num_hidden_layers": 2})"), Contains("required field \"vocab_size\""), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": "64", "n_layer": 2, "vocab_size": 3})"), Contains("field \"d_model\" must be a positive integer, got \"64\""), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 0, "n_layer": 2, "vocab_size": 3})"), Contains("field \"d_model\" must be a positive integer, got 0"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 64.5, "n_layer": 2, "vocab_size": 3})"), Contains("\"d_model\""), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 64, "n_layer": 2, "vocab_size": 3, "ssm_cfg": {"d_state": -1}})"), Contains("ssm_cfg: field \"d_state\" must be a positive integer"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 64, "n_layer": 2, "vocab_size": 3, "ssm_cfg": {"dt_rank": "half"}})"), Contains("field \"dt_rank\" must be \"auto\" or a positive integer"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 64, "n_layer": 2, "vocab_size": 3, "ssm_cfg": 5})"), Contains("field \"ssm_cfg\" must be an object"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 64, "n_layer": 2, "vocab_size": 3, "tie_embeddings": "yes"})"), Contains("field \"tie_embeddings\" must be true or false"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 64, "n_layer": 2, "vocab_size": 3, "ssm_cfg": {"layer": "Mamba2"}})"), Contains("field \"layer\" = \"Mamba2\" is not supported"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 64, "n_layer": 2, "vocab_size": 3, "d_intermediate": 128})"), Contains("field \"d_intermediate\" = 128"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 64, "n_layer": 2, "vocab_size": 3, "attn_layer_idx": [1]})"), Contains("\"attn_layer_idx\""), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 64, "n_layer": 2, "vocab_size": 3, "rms_norm": false})"), Contains("\"rms_norm\" = false"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 64, "n_layer": 2, "vocab_size": 3, "hidden_size": 32})"), Contains("contradictory fields \"d_model\" = 64 and \"hidden_size\" = 32"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 3, "expand": 2, "intermediate_size": 100})"), Contains("contradictory fields \"intermediate_size\" = 100 and \"expand·hidden_size\" = 128"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 3, "hidden_act": "gelu"})"), Contains("\"hidden_act\" = \"gelu\""), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 3, "use_bias": true})"), Contains("\"use_bias\" = true"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 3, "layer_norm_epsilon": -1})"), Contains("\"layer_norm_epsilon\" must be in (0, 1)"), mq::error);
    CHECK_THROWS_WITH_AS(bad(R"({"d_model": 64, "d_model": 64, "n_layer": 2, "vocab_size": 3})"), Contains("duplicate key \"d_model\""), mq::error);
    CHECK_THROWS_WITH_AS(bad("[]"), Contains("config must be a JSON object"), mq::error);
    CHECK_THROWS_WITH_AS(bad("{\"d_model\": 6"), Contains("m/config.json: invalid JSON"), mq::error);
    CHECK_THROWS_WITH_AS(bad(std::string(5000, '{')), Contains("nested deeper"), mq::error);
    CHECK_THROWS_WITH_AS(mq::load_mamba_config("/nonexistent/dir"), Contains("cannot open"), mq::error);
}

TEST_CASE("sizes whose products overflow are refused by name, before anything is allocated") {
    // expand × d_model overflows size_t (2⁴⁰ · 2⁴⁰ = 2⁸⁰).
    CHECK_THROWS_WITH_AS(mq::parse_mamba_config(R"({"d_model": 1099511627776, "n_layer": 1, "vocab_size": 8,
        "ssm_cfg": {"expand": 1099511627776}})"), Contains("d_inner (expand × d_model) = 1099511627776 × 1099511627776 overflows"), mq::error);
    CHECK_THROWS_WITH_AS(mq::parse_mamba_config(R"({"hidden_size": 1099511627776, "num_hidden_layers": 1, "vocab_size": 8,
        "expand": 1099511627776})"), Contains("intermediate_size (expand × hidden_size) = 1099511627776 × 1099511627776 overflows"), mq::error);
    // Each size is fine alone, the embedding (vocab × d_model = 2⁴⁰ · 2⁴⁰) is not.
    CHECK_THROWS_WITH_AS(mq::parse_mamba_config(R"({"d_model": 1099511627776, "n_layer": 1, "vocab_size": 1099511627776})"),
                         Contains("a tensor of vocab (padded) 1099511627776 × d_model 1099511627776 elements exceeds the limit"), mq::error);
    // Huge but representable sizes parse: only the checkpoint's real tensor sizes can refute them
    // (io/mamba_tensors.hpp), so parsing must not allocate anything proportional to them.
    const auto c = mq::parse_mamba_config(R"({"d_model": 64, "n_layer": 1000000000, "vocab_size": 1099511627776})");
    CHECK(c.n_layer == 1000000000);
    CHECK(c.padded_vocab == 1099511627776);
    // intermediate_size alone decides d_inner; a huge unused expand default never multiplies.
    CHECK(mq::parse_mamba_config(R"({"hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 8, "intermediate_size": 96})").d_inner == 96);
}

TEST_CASE("config.json must be a regular file of bounded size") {
    namespace fs = std::filesystem;
    const auto dir = fs::temp_directory_path() / "mq_test_config_files";
    fs::remove_all(dir);
    fs::create_directories(dir);
    // A directory named config.json.
    fs::create_directories(dir / "d" / "config.json");
    CHECK_THROWS_WITH_AS(mq::load_mamba_config(dir / "d"), Contains("config.json: not a regular file"), mq::error);
    // /dev/zero never ends; reading it would grow memory without bound.
    if (fs::exists("/dev/zero"))
        CHECK_THROWS_WITH_AS(mq::load_mamba_config("/dev/zero"), Contains("/dev/zero: not a regular file"), mq::error);
#if defined(__unix__)
    // A FIFO with no writer: opening it must not block.
    REQUIRE(::mkfifo((dir / "fifo.json").c_str(), 0600) == 0);
    CHECK_THROWS_WITH_AS(mq::load_mamba_config(dir / "fifo.json"), Contains("fifo.json: not a regular file"), mq::error);
#endif
    // A symlink to a regular file is followed; one to a device is not read.
    {
        std::ofstream(dir / "real.json") << R"({"d_model": 64, "n_layer": 2, "vocab_size": 10})";
    }
    fs::create_symlink(dir / "real.json", dir / "link.json");
    CHECK(mq::load_mamba_config(dir / "link.json").n_layer == 2);
    fs::create_symlink("/dev/zero", dir / "zero.json");
    CHECK_THROWS_WITH_AS(mq::load_mamba_config(dir / "zero.json"), Contains("zero.json: not a regular file"), mq::error);
    // Larger than the limit: refused before reading (a sparse file: no disk used).
    {
        std::ofstream big(dir / "big.json");
        big.seekp(static_cast<std::streamoff>(mq::kJsonMaxFile));
        big.put('}');
    }
    CHECK_THROWS_WITH_AS(mq::load_mamba_config(dir / "big.json"),
                         Contains("big.json: file of 104857601 bytes exceeds the limit of 104857600 bytes"), mq::error);
    CHECK_THROWS_WITH_AS(mq::load_mamba_config(dir / "missing.json"), Contains("missing.json: cannot open file"), mq::error);
    fs::remove_all(dir);
}
