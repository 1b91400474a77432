// Writing a file so that no reader ever sees it half-written: everything goes to `<path>.tmp`
// beside it, which is renamed over `path` only once the whole text is on disk; a failed write
// removes the temporary and leaves the old file (if any) in place.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <span>
#include <string_view>
#include <system_error>
#include <utility>

MQ_NAMESPACE_BEGIN

// `write(std::ostream&)` produces the content; the stream is binary (no newline translation).
template <class Write>
void write_atomically(const std::filesystem::path& path, Write&& write) {
    std::filesystem::path tmp = path;
    tmp += ".tmp";
    const auto discard = [&] {
        std::error_code ignored;
        std::filesystem::remove(tmp, ignored);
    };
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        require(out.good(), tmp.string(), ": cannot open for writing");
        try {
            std::forward<Write>(write)(static_cast<std::ostream&>(out));
        } catch (...) {
            out.close();
            discard();
            throw;
        }
        out.flush();
        if (!out.good()) {
            out.close();
            discard();
            fail(tmp.string(), ": write failed");
        }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) discard();
    require(!ec, path.string(), ": cannot rename ", tmp.string(), " into place: ", ec.message());
}

template <class Tag = void>
void write_file_atomically(const dependent_t<Tag, std::filesystem::path>& path, std::span<const std::byte> bytes) {
    write_atomically(path, [&](std::ostream& out) {
        out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    });
}

template <class Tag = void>
void write_file_atomically(const dependent_t<Tag, std::filesystem::path>& path, std::string_view text) {
    write_file_atomically(path, std::as_bytes(std::span(text.data(), text.size())));
}

MQ_NAMESPACE_END
