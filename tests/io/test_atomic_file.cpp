#include <mambaquant/io/atomic_file.hpp>

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <ostream>
#include <stdexcept>
#include <string>

namespace {
std::string slurp(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

struct TempDir {
    std::filesystem::path path = std::filesystem::temp_directory_path() / "mq_test_atomic_file";
    TempDir() {
        std::filesystem::remove_all(path);
        std::filesystem::create_directories(path);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};
} // namespace

TEST_CASE("write_file_atomically replaces the whole file and leaves no temporary") {
    TempDir dir;
    const auto file = dir.path / "out.txt";
    mq::write_file_atomically(file, std::string_view("first\n"));
    mq::write_file_atomically(file, std::string_view("second, longer\n"));
    CHECK(slurp(file) == "second, longer\n");
    CHECK_FALSE(std::filesystem::exists(dir.path / "out.txt.tmp"));
}

TEST_CASE("a writer that throws leaves the old file and no temporary") {
    TempDir dir;
    const auto file = dir.path / "out.txt";
    mq::write_file_atomically(file, std::string_view("kept\n"));
    CHECK_THROWS_AS(mq::write_atomically(file,
                                         [](std::ostream& out) {
                                             out << "half of it";
                                             throw std::runtime_error("disk on fire");
                                         }),
                    std::runtime_error);
    CHECK(slurp(file) == "kept\n");
    CHECK_FALSE(std::filesystem::exists(dir.path / "out.txt.tmp"));
}

TEST_CASE("an unwritable destination is a named error") {
    TempDir dir;
    const auto file = dir.path / "no_such_folder" / "out.txt";
    CHECK_THROWS_WITH_AS(mq::write_file_atomically(file, std::string_view("x")),
                         doctest::Contains("cannot open for writing"), mq::error);
    // A directory in the way of the rename: the temporary is removed again.
    std::filesystem::create_directories(dir.path / "taken" / "child");
    CHECK_THROWS_WITH_AS(mq::write_file_atomically(dir.path / "taken", std::string_view("x")),
                         doctest::Contains("cannot rename"), mq::error);
    CHECK_FALSE(std::filesystem::exists(dir.path / "taken.tmp"));
}
