#include <mambaquant/io/checkpoint.hpp>

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using doctest::Contains;

namespace {
std::filesystem::path fresh_dir(const char* name) {
    auto d = std::filesystem::temp_directory_path() / name;
    std::filesystem::remove_all(d);
    std::filesystem::create_directories(d);
    return d;
}
void write_text(const std::filesystem::path& p, const std::string& s) { std::ofstream(p) << s; }
// "t" + std::to_string(i) would be the natural spelling, but g++ 12 at -O3 warns falsely
// (-Wrestrict inside operator+(const char*, string&&), GCC bug 105651); appending avoids it.
std::string tensor_name(int i) {
    std::string s = "t";
    s += std::to_string(i);
    return s;
}
} // namespace

TEST_CASE("sharded checkpoint: written, indexed and read back") {
    const auto dir = fresh_dir("mq_test_sharded");
    std::vector<std::vector<float>> values;
    std::vector<mq::TensorData> ts;
    for (int i = 0; i < 5; ++i) values.push_back(std::vector<float>(100, static_cast<float>(i)));
    for (int i = 0; i < 5; ++i) ts.push_back(mq::tensor_data<float>(tensor_name(i), values[i], {10, 10}));
    mq::save_sharded_safetensors(dir, ts, 900, {{"format", "pt"}}); // 400 B per tensor: 2 per shard
    CHECK(std::filesystem::exists(dir / "model-00003-of-00003.safetensors"));
    const auto ck = mq::Checkpoint::open(dir);
    CHECK(ck.shard_count() == 3);
    CHECK(ck.names().size() == 5);
    CHECK(ck.metadata().at("total_size") == "2000");
    for (int i = 0; i < 5; ++i) CHECK(ck.load_float(tensor_name(i)).data[42] == static_cast<float>(i));
    CHECK_THROWS_WITH_AS(ck.load_float("t9"), Contains("tensor \"t9\" not found in the checkpoint"), mq::error);

    // Single shard: model.safetensors, no index.
    const auto one = fresh_dir("mq_test_single");
    mq::save_sharded_safetensors(one, ts, 1 << 20);
    CHECK(std::filesystem::exists(one / "model.safetensors"));
    CHECK_FALSE(std::filesystem::exists(one / "model.safetensors.index.json"));
    CHECK(mq::Checkpoint::open(one).shard_count() == 1);
    CHECK(mq::Checkpoint::open(one / "model.safetensors").contains("t4"));

    // Bad indexes.
    write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"t0": "model-00001-of-00003.safetensors", "t4": "model-00001-of-00003.safetensors"}})");
    CHECK_THROWS_WITH_AS(mq::Checkpoint::open(dir), Contains("tensor \"t4\" is listed in shard model-00001-of-00003.safetensors but missing from it"), mq::error);
    write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"t0": "../etc/passwd"}})");
    CHECK_THROWS_WITH_AS(mq::Checkpoint::open(dir), Contains("shard \"../etc/passwd\" is not a plain file name"), mq::error);
    write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"t0": "nope.safetensors"}})");
    CHECK_THROWS_WITH_AS(mq::Checkpoint::open(dir), Contains("nope.safetensors: cannot open"), mq::error);
    write_text(dir / "model.safetensors.index.json", R"({"metadata": {}})");
    CHECK_THROWS_WITH_AS(mq::Checkpoint::open(dir), Contains("field \"weight_map\" missing"), mq::error);
    write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"t0": "a", "t0": "b"}})");
    CHECK_THROWS_WITH_AS(mq::Checkpoint::open(dir), Contains("duplicate key \"t0\""), mq::error);
    write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"t0": 3}})");
    CHECK_THROWS_WITH_AS(mq::Checkpoint::open(dir), Contains("weight_map[\"t0\"] must be a file name string"), mq::error);

    const auto empty = fresh_dir("mq_test_empty");
    CHECK_THROWS_WITH_AS(mq::Checkpoint::open(empty), Contains("neither model.safetensors.index.json nor model.safetensors found"), mq::error);
    CHECK_THROWS_WITH_AS(mq::Checkpoint::open(empty / "missing"), Contains("no such file or directory"), mq::error);
    for (const auto& d : {dir, one, empty}) std::filesystem::remove_all(d);
}
