#include <mambaquant/io/safetensors.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <new>
#include <string>
#include <vector>

#if defined(__unix__)
#include <sys/stat.h>
#endif

namespace {

std::vector<std::byte> file_with_header(const std::string& json, std::size_t data_bytes, std::int64_t declared = -1) {
    const std::uint64_t n = declared < 0 ? json.size() : static_cast<std::uint64_t>(declared);
    std::vector<std::byte> out(8 + json.size() + data_bytes, std::byte{0});
    for (int i = 0; i < 8; ++i) out[i] = static_cast<std::byte>((n >> (8 * i)) & 0xff);
    std::memcpy(out.data() + 8, json.data(), json.size());
    return out;
}

mq::SafetensorsHeader parse(const std::string& json, std::size_t data_bytes) {
    return mq::parse_safetensors_header(file_with_header(json, data_bytes), "t.safetensors");
}

} // namespace

TEST_CASE("write then read: F32, F16, BF16, I8, U8 and metadata") {
    const std::vector<float> a = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, -7.0f};
    std::vector<std::uint16_t> h, b;
    for (float v : a) {
        h.push_back(mq::float_to_half(v));
        b.push_back(mq::float_to_bf16(v));
    }
    const std::vector<std::int8_t> q = {-128, -1, 0, 1, 127};
    const std::vector<std::uint8_t> u = {0, 7, 255};
    std::vector<mq::TensorData> ts = {
        mq::tensor_data<float>("a", a, {2, 3}),
        {"h", mq::DType::F16, {6}, std::as_bytes(std::span(h))},
        {"b", mq::DType::BF16, {3, 2}, std::as_bytes(std::span(b))},
        mq::tensor_data<std::int8_t>("q", q, {5}),
        mq::tensor_data<std::uint8_t>("u", u, {1, 3}),
    };
    const mq::Metadata meta = {{"format", "pt"}, {"mambaquant.scales", "[0.5, 0.25]"}};
    auto bytes = mq::serialize_safetensors(ts, meta);
    std::uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    CHECK(n % 8 == 0); // header padded so the data section is 8-byte aligned

    const auto path = std::filesystem::temp_directory_path() / "mq_test_rw.safetensors";
    mq::save_safetensors(path, ts, meta);
    for (int pass = 0; pass < 2; ++pass) {
        const auto f = pass == 0 ? mq::SafetensorsFile::open(path) : mq::SafetensorsFile::from_bytes(bytes);
        CHECK(f.metadata() == meta);
        CHECK(f.tensors().size() == 5);
        const auto ta = f.load_float("a");
        CHECK(ta.shape == std::vector<std::size_t>{2, 3});
        CHECK(ta.rows() == 2);
        CHECK(ta.cols() == 3);
        for (std::size_t i = 0; i < a.size(); ++i) CHECK(ta.data[i] == a[i]);
        const auto th = f.load_float("h");
        const auto tb = f.load_float("b");
        for (std::size_t i = 0; i < a.size(); ++i) {
            CHECK(th.data[i] == doctest::Approx(a[i]).epsilon(1e-3));
            CHECK(tb.data[i] == doctest::Approx(a[i]).epsilon(1e-2));
            CHECK(th.data[i] == mq::half_to_float(h[i]));
        }
        const auto rq = f.bytes("q");
        REQUIRE(rq.size() == q.size());
        CHECK(std::memcmp(rq.data(), q.data(), q.size()) == 0);
        CHECK(f.info("u").dtype == mq::DType::U8);
        CHECK(static_cast<std::uint8_t>(f.bytes("u")[2]) == 255);
        CHECK_THROWS_WITH_AS(f.load_float("q"), doctest::Contains("\"q\": dtype I8 is not a float type"), mq::error);
        CHECK_THROWS_WITH_AS(f.info("missing"), doctest::Contains("tensor \"missing\" not found"), mq::error);
        CHECK_THROWS_WITH_AS(f.load_float("a", {3, 2}), doctest::Contains("expected shape [3, 2], got [2, 3]"), mq::error);
    }
    std::filesystem::remove(path);
}

TEST_CASE("writer rejects inconsistent tensors") {
    const std::vector<float> a = {1, 2, 3};
    std::vector<mq::TensorData> bad_size = {mq::tensor_data<float>("a", a, {2, 2})};
    CHECK_THROWS_WITH_AS(mq::serialize_safetensors(bad_size), doctest::Contains("needs 16 bytes, got 12"), mq::error);
    std::vector<mq::TensorData> dup = {mq::tensor_data<float>("a", a, {3}), mq::tensor_data<float>("a", a, {3})};
    CHECK_THROWS_WITH_AS(mq::serialize_safetensors(dup), doctest::Contains("duplicate tensor \"a\""), mq::error);
}

TEST_CASE("empty and zero-size tensors are fine") {
    auto h = parse(R"({"e":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})", 4);
    CHECK(h.tensors.size() == 2);
    CHECK(h.find("s")->numel() == 1);
    CHECK(parse("{}", 0).tensors.empty());
}

TEST_CASE("malformed files: each a clear error naming file, tensor and field") {
    using doctest::Contains;
    const std::string ok_entry = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
    // Truncated before the length.
    std::vector<std::byte> tiny(5);
    CHECK_THROWS_WITH_AS(mq::parse_safetensors_header(tiny, "t.safetensors"),
                         Contains("t.safetensors: truncated file: 5 bytes"), mq::error);
    // Header length past the end.
    CHECK_THROWS_WITH_AS(mq::parse_safetensors_header(file_with_header("{}", 0, 1000), "t.safetensors"),
                         Contains("header length 1000 runs past the end of the file (10 bytes)"), mq::error);
    CHECK_THROWS_WITH_AS(mq::parse_safetensors_header(file_with_header("{}", 0, std::int64_t{1} << 40), "t.safetensors"),
                         Contains("exceeds the limit"), mq::error);
    // Offsets outside the data, reversed, overlapping.
    CHECK_THROWS_WITH_AS(parse("{" + ok_entry + "}", 4), Contains("tensor \"w\": field \"data_offsets\" [0, 8] lies outside the data section of 4 bytes"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8), Contains("\"data_offsets\" [8, 0]"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
                         Contains("tensors \"a\" [0, 8) and \"b\" [4, 12) overlap"), mq::error);
    // dtype / shape / byte count disagreement.
    CHECK_THROWS_WITH_AS(parse(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
                         Contains("tensor \"w\": dtype F32 and shape [3] need 12 bytes, but data_offsets span 8"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8), Contains("tensor \"w\": unsupported dtype \"Q4\""), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), Contains("field \"shape\" has a dimension that is not a non-negative integer: -2"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8), Contains("field \"shape\""), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", 8), Contains("overflows"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8), Contains("tensor \"w\": field \"dtype\" missing"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", 8), Contains("tensor \"w\": field \"shape\" missing"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), Contains("tensor \"w\": field \"data_offsets\" missing or not [begin, end]"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", 8), Contains("tensor \"w\": unknown field \"extra\""), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"({"w":[1,2]})", 8), Contains("tensor \"w\": entry must be an object"), mq::error);
    // Duplicate names (nlohmann alone would silently keep the last).
    CHECK_THROWS_WITH_AS(parse("{" + ok_entry + "," + ok_entry + "}", 8), Contains("t.safetensors: duplicate key \"w\""), mq::error);
    // Metadata must be string → string.
    CHECK_THROWS_WITH_AS(parse(R"({"__metadata__":{"k":1}})", 0), Contains("__metadata__ field \"k\" must be a string"), mq::error);
    CHECK_THROWS_WITH_AS(parse(R"({"__metadata__":[]})", 0), Contains("__metadata__ must be an object"), mq::error);
    // Not JSON, not an object, ill-formed UTF-8, hostile nesting.
    CHECK_THROWS_WITH_AS(parse("{\"w\":", 0), Contains("t.safetensors: invalid JSON"), mq::error);
    CHECK_THROWS_WITH_AS(parse("[1,2]", 0), Contains("header must be a JSON object, got array"), mq::error);
    CHECK_THROWS_WITH_AS(parse("{\"\xff\xfe\":{}}", 0), Contains("invalid JSON"), mq::error);
    CHECK_THROWS_WITH_AS(parse(std::string(100000, '[') + std::string(100000, ']'), 0), Contains("nested deeper than 64"), mq::error);
}

TEST_CASE("a truncated real file is rejected, never read past its end") {
    const std::vector<float> a(64, 1.5f);
    std::vector<mq::TensorData> ts = {mq::tensor_data<float>("a", a, {8, 8})};
    const auto bytes = mq::serialize_safetensors(ts);
    for (std::size_t cut : {std::size_t{0}, std::size_t{7}, std::size_t{8}, std::size_t{20}, bytes.size() - 1}) {
        std::vector<std::byte> part(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(cut));
        CHECK_THROWS_AS(mq::SafetensorsFile::from_bytes(part, "cut.safetensors"), mq::error);
    }
    CHECK_THROWS_WITH_AS(mq::SafetensorsFile::open("/nonexistent/x.safetensors"), doctest::Contains("cannot open"), mq::error);
    CHECK_THROWS_WITH_AS(mq::SafetensorsFile::open("/dev/zero"), doctest::Contains("not a regular file"), mq::error);
    CHECK_THROWS_WITH_AS(mq::SafetensorsFile::open(std::filesystem::temp_directory_path()), doctest::Contains("cannot open"), mq::error);
}

TEST_CASE("bad input: a write that cannot happen is an error naming the file") {
    const std::vector<float> v = {1.0f, 2.0f};
    const std::vector<mq::TensorData> ts = {{"w", mq::DType::F32, {2}, std::as_bytes(std::span(v))}};
    const auto dir = std::filesystem::temp_directory_path() / "mq_test_st_write";
    std::filesystem::remove_all(dir);
    // A folder that does not exist.
    CHECK_THROWS_WITH_AS(mq::save_safetensors(dir / "missing" / "x.safetensors", ts), doctest::Contains("x.safetensors"), mq::error);
    CHECK_FALSE(std::filesystem::exists(dir / "missing"));
    // A path that is a folder.
    std::filesystem::create_directories(dir / "x.safetensors");
    CHECK_THROWS_WITH_AS(mq::save_safetensors(dir / "x.safetensors", ts), doctest::Contains("x.safetensors"), mq::error);
    CHECK(std::filesystem::is_directory(dir / "x.safetensors"));
    std::filesystem::remove_all(dir);
}

TEST_CASE("every float loaded must be finite: NaN or inf fails naming the tensor and the element") {
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    std::vector<float> ok(10000, 0.5f), has_nan = ok, has_inf = ok, late = ok;
    has_nan[0] = nan;
    has_inf[17] = -inf;
    late[9999] = nan; // in the last chunk of the check
    const std::vector<std::uint16_t> half_inf = {mq::float_to_half(1.0f), 0x7c00};
    const std::vector<double> too_big = {1.0, 1e300}; // finite as F64, inf as float
    const std::vector<mq::TensorData> ts = {
        mq::tensor_data<float>("ok", ok, {100, 100}),
        mq::tensor_data<float>("layers.0.nan", has_nan, {100, 100}),
        mq::tensor_data<float>("layers.0.inf", has_inf, {10000}),
        mq::tensor_data<float>("late", late, {10000}),
        {"half", mq::DType::F16, {2}, std::as_bytes(std::span(half_inf))},
        mq::tensor_data<double>("wide", too_big, {2}),
    };
    const auto f = mq::SafetensorsFile::from_bytes(mq::serialize_safetensors(ts), "w.safetensors");
    CHECK(f.load_float("ok").data[9999] == 0.5f);
    CHECK_THROWS_WITH_AS(f.load_float("layers.0.nan"),
                         doctest::Contains("w.safetensors: tensor \"layers.0.nan\": element 0 of 10000 is nan; every weight must be finite"), mq::error);
    std::vector<float> dst(10000);
    CHECK_THROWS_WITH_AS(f.load_float_into("layers.0.inf", {10000}, dst), doctest::Contains("tensor \"layers.0.inf\": element 17 of 10000 is -inf"), mq::error);
    CHECK_THROWS_WITH_AS(f.load_float("late"), doctest::Contains("tensor \"late\": element 9999 of 10000 is nan"), mq::error);
    CHECK_THROWS_WITH_AS(f.load_float("half"), doctest::Contains("tensor \"half\": element 1 of 2 is inf"), mq::error);
    CHECK_THROWS_WITH_AS(f.load_float("wide"), doctest::Contains("tensor \"wide\": element 1 of 2 is inf (after conversion to float)"), mq::error);
}

TEST_CASE("a FIFO or a device is never read as a safetensors file") {
    namespace fs = std::filesystem;
    if (fs::exists("/dev/zero"))
        CHECK_THROWS_WITH_AS(mq::SafetensorsFile::open("/dev/zero"), doctest::Contains("/dev/zero: cannot open file (not a regular file)"), mq::error);
#if defined(__unix__)
    const auto fifo = fs::temp_directory_path() / "mq_test_fifo.safetensors";
    fs::remove(fifo);
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    CHECK_THROWS_WITH_AS(mq::SafetensorsFile::open(fifo), doctest::Contains("not a regular file"), mq::error);
    fs::remove(fifo);
#endif
}

TEST_CASE("allocating: std::bad_alloc becomes an mq::error naming what was being allocated") {
    CHECK(mq::allocating("m.safetensors", "tensor \"t\"", [] { return 7; }) == 7);
    CHECK_THROWS_WITH_AS(mq::allocating("m.safetensors", "tensor \"t\" (4398046511104 bytes)", []() -> int { throw std::bad_alloc(); }),
                         "m.safetensors: out of memory allocating tensor \"t\" (4398046511104 bytes)", mq::error);
}
