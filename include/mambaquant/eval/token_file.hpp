// Reading evaluation / calibration text: raw bytes for byte-level models, or a documented token-id file.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

MQ_NAMESPACE_BEGIN

// Token-id file format (little-endian):
//   bytes 0..7   magic "MQTOKENS"
//   bytes 8..11  u32 version = 1
//   bytes 12..15 u32 reserved = 0
//   bytes 16..23 u64 count
//   then count × u32 token ids
// Any other file is read as raw bytes, one token per byte (byte-level models, vocabulary 256).
inline constexpr char kTokenFileMagic[8] = {'M', 'Q', 'T', 'O', 'K', 'E', 'N', 'S'};

template <class Tag = void>
std::vector<std::uint32_t> read_tokens(const dependent_t<Tag, std::filesystem::path>& path) {
    std::error_code ec;
    // A directory or a FIFO would read as empty (or block): refuse anything but a regular file.
    require(std::filesystem::is_regular_file(path, ec), "read_tokens: cannot open '", path.string(),
            "': not a regular file", ec ? " (" + ec.message() + ")" : std::string());
    std::ifstream f(path, std::ios::binary);
    require(static_cast<bool>(f), "read_tokens: cannot open '", path.string(), "'");
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::uint32_t> out;
    if (bytes.size() >= 24 && std::memcmp(bytes.data(), kTokenFileMagic, 8) == 0) {
        std::uint32_t version = 0;
        std::uint64_t count = 0;
        std::memcpy(&version, bytes.data() + 8, 4);
        std::memcpy(&count, bytes.data() + 16, 8);
        require(version == 1, "read_tokens: '", path.string(), "': unsupported token file version ", version);
        // count is checked against the file size before count·4 is formed (no overflow).
        require(count <= (bytes.size() - 24) / 4 && bytes.size() == 24 + count * 4, "read_tokens: '", path.string(),
                "': header says ", count,
                " tokens, the file holds ", (bytes.size() - 24) / 4);
        out.resize(count);
        std::memcpy(out.data(), bytes.data() + 24, count * 4);
        return out;
    }
    out.reserve(bytes.size());
    for (char c : bytes) out.push_back(static_cast<unsigned char>(c));
    return out;
}

MQ_NAMESPACE_END
