// safetensors files: a bounds-checked reader (memory-mapped, or streamed where mmap is missing)
// and a writer; nothing read from the file is trusted before it has been checked.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/io/atomic_file.hpp>
#include <mambaquant/io/dtype.hpp>
#include <mambaquant/kernels/finite.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <new>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <cerrno>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define MQ_HAS_MMAP 1
#else
#define MQ_HAS_MMAP 0
#endif

MQ_NAMESPACE_BEGIN

// File layout: [u64 little-endian n][n bytes of JSON header][data]. The header maps each tensor
// name to {"dtype", "shape", "data_offsets": [begin, end]} (byte offsets into data), plus an
// optional "__metadata__" object of string → string.
inline constexpr std::uint64_t kSafetensorsMaxHeader = 100u << 20; // as the reference reader
inline constexpr int kJsonMaxDepth = 64; // a header is 3 deep; anything far deeper is hostile

using Metadata = std::map<std::string, std::string>;

struct TensorInfo {
    std::string name;
    DType dtype = DType::F32;
    std::vector<std::size_t> shape;
    std::size_t begin = 0; // byte offsets into the data section
    std::size_t end = 0;

    std::size_t numel() const noexcept {
        std::size_t n = 1;
        for (auto d : shape) n *= d;
        return n;
    }
    std::size_t nbytes() const noexcept { return end - begin; }
};

struct SafetensorsHeader {
    std::vector<TensorInfo> tensors; // sorted by name
    Metadata metadata;
    std::size_t data_offset = 0; // 8 + header length: where the data section starts in the file
    std::size_t data_size = 0;

    const TensorInfo* find(std::string_view name) const noexcept {
        auto it = std::lower_bound(tensors.begin(), tensors.end(), name,
                                   [](const TensorInfo& t, std::string_view n) { return t.name < n; });
        return it != tensors.end() && it->name == name ? &*it : nullptr;
    }
};

// A float tensor loaded from a checkpoint (any float dtype converted), row-major.
struct FloatTensor {
    std::vector<std::size_t> shape;
    aligned_vector<float> data;

    // All leading dimensions fold into rows; a 1-D tensor is one row.
    std::size_t cols() const noexcept { return shape.empty() ? 1 : shape.back(); }
    std::size_t rows() const noexcept { return cols() == 0 ? 0 : data.size() / cols(); }
    MatrixView<const float> view() const noexcept { return {data.data(), rows(), cols()}; }
    template <class = void> // a template: compiled only where used (core/config.hpp)
    MatrixXf matrix() const {
        return as_eigen(view());
    }
};

namespace detail {

template <class Tag = void>
std::string shape_string(const dependent_t<Tag, std::vector<std::size_t>>& shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// Deepest [ / { nesting outside strings. Checked before nlohmann parses so that a hostile header
// ("[[[[...") is rejected in linear time with bounded memory.
template <class = void>
int json_nesting_depth(std::string_view s) noexcept {
    int depth = 0, deepest = 0;
    bool in_string = false, escaped = false;
    for (char c : s) {
        if (in_string) {
            if (escaped) escaped = false;
            else if (c == '\\') escaped = true;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            deepest = std::max(deepest, ++depth);
        } else if (c == ']' || c == '}') {
            --depth;
        }
    }
    return deepest;
}

// Parses JSON text from an untrusted file: depth-limited, duplicate keys at `unique_depth`
// rejected (nlohmann keeps the last one silently, which would hide a conflicting tensor), and
// every nlohmann error (bad syntax, ill-formed UTF-8) turned into an mq::error naming `source`.
// (This and the other JSON functions below are templates never spelled by callers: the JSON work
// is instantiated only where they are called, and with MQ_COMPILED once in the companion library.)
template <class Tag = void>
nlohmann::json parse_untrusted_json(std::string_view text, std::string_view source, int unique_depth) {
    if (json_nesting_depth(text) > kJsonMaxDepth)
        fail(source, ": JSON nested deeper than ", kJsonMaxDepth, " levels");
    std::set<std::string> keys;
    using Json = dependent_t<Tag, nlohmann::json>;
    auto callback = [&](int depth, typename Json::parse_event_t event, Json& parsed) {
        if (event == Json::parse_event_t::key && depth == unique_depth) {
            const auto& key = parsed.template get_ref<const std::string&>();
            if (!keys.insert(key).second) fail(source, ": duplicate key \"", key, "\" in JSON");
        }
        return true;
    };
    try {
        return Json::parse(text.begin(), text.end(), callback);
    } catch (const nlohmann::json::exception& e) {
        fail(source, ": invalid JSON: ", e.what());
    }
}
MQ_EXTERN_TEMPLATE(nlohmann::json parse_untrusted_json<>(std::string_view, std::string_view, int))

template <class Tag = void>
bool json_to_size(const dependent_t<Tag, nlohmann::json>& j, dependent_t<Tag, std::size_t>& out) noexcept {
    if (j.is_number_unsigned()) {
        const auto v = j.template get<std::uint64_t>();
        if (v > static_cast<std::uint64_t>(SIZE_MAX)) return false;
        out = static_cast<std::size_t>(v);
        return true;
    }
    if (j.is_number_integer()) {
        const auto v = j.template get<std::int64_t>();
        if (v < 0) return false;
        out = static_cast<std::size_t>(v);
        return true;
    }
    return false;
}

inline std::uint64_t read_u64_le(const std::byte* p) noexcept {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint8_t>(p[i]);
    return v;
}

} // namespace detail

// Validates a header's JSON against a data section of `data_size` bytes: every entry an object
// with a known dtype, non-negative integer shape, offsets inside the data, byte count equal to
// numel·sizeof(dtype), no two tensors overlapping, no duplicate names, metadata string → string.
template <class Tag = void>
SafetensorsHeader parse_safetensors_header_json(std::string_view json_text, std::size_t data_size, std::string_view source) {
    const dependent_t<Tag, nlohmann::json> root = detail::parse_untrusted_json(json_text, source, 1);
    require(root.is_object(), source, ": safetensors header must be a JSON object, got ", root.type_name());
    SafetensorsHeader h;
    h.data_size = data_size;
    for (const auto& [name, entry] : root.items()) {
        if (name == "__metadata__") {
            require(entry.is_object(), source, ": __metadata__ must be an object, got ", entry.type_name());
            for (const auto& [k, v] : entry.items()) {
                require(v.is_string(), source, ": __metadata__ field \"", k, "\" must be a string, got ", v.type_name());
                h.metadata.emplace(k, v.template get<std::string>());
            }
            continue;
        }
        const std::string where = detail::concat(source, ": tensor \"", name, "\"");
        require(entry.is_object(), where, ": entry must be an object, got ", entry.type_name());
        for (const auto& [k, v] : entry.items()) {
            (void)v;
            require(k == "dtype" || k == "shape" || k == "data_offsets", where, ": unknown field \"", k, "\"");
        }
        TensorInfo t;
        t.name = name;
        require(entry.contains("dtype") && entry["dtype"].is_string(), where, ": field \"dtype\" missing or not a string");
        const auto& dtype = entry["dtype"].template get_ref<const std::string&>();
        require(parse_dtype(dtype, t.dtype), where, ": unsupported dtype \"", dtype, "\"");
        require(entry.contains("shape") && entry["shape"].is_array(), where, ": field \"shape\" missing or not an array");
        std::size_t numel = 1;
        for (const auto& d : entry["shape"]) {
            std::size_t dim = 0;
            require(detail::json_to_size(d, dim), where, ": field \"shape\" has a dimension that is not a non-negative integer: ", d.dump());
            require(!__builtin_mul_overflow(numel, dim, &numel), where, ": field \"shape\" element count overflows");
            t.shape.push_back(dim);
        }
        require(entry.contains("data_offsets") && entry["data_offsets"].is_array() && entry["data_offsets"].size() == 2,
                where, ": field \"data_offsets\" missing or not [begin, end]");
        require(detail::json_to_size(entry["data_offsets"][0], t.begin) &&
                    detail::json_to_size(entry["data_offsets"][1], t.end),
                where, ": field \"data_offsets\" must hold non-negative integers, got ", entry["data_offsets"].dump());
        require(t.begin <= t.end && t.end <= data_size, where, ": field \"data_offsets\" [", t.begin, ", ", t.end,
                "] lies outside the data section of ", data_size, " bytes");
        std::size_t nbytes = 0;
        require(!__builtin_mul_overflow(numel, dtype_size(t.dtype), &nbytes), where, ": byte count overflows");
        require(nbytes == t.end - t.begin, where, ": dtype ", dtype, " and shape ", detail::shape_string(t.shape),
                " need ", nbytes, " bytes, but data_offsets span ", t.end - t.begin);
        h.tensors.push_back(std::move(t));
    }
    // nlohmann's object is a sorted map, so tensors are already sorted by name.
    std::vector<const TensorInfo*> by_offset;
    for (const auto& t : h.tensors)
        if (t.nbytes() > 0) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
    for (std::size_t i = 1; i < by_offset.size(); ++i)
        require(by_offset[i]->begin >= by_offset[i - 1]->end, source, ": tensors \"", by_offset[i - 1]->name,
                "\" [", by_offset[i - 1]->begin, ", ", by_offset[i - 1]->end, ") and \"", by_offset[i]->name,
                "\" [", by_offset[i]->begin, ", ", by_offset[i]->end, ") overlap");
    return h;
}
MQ_EXTERN_TEMPLATE(SafetensorsHeader parse_safetensors_header_json<>(std::string_view, std::size_t, std::string_view))

// Reads the 8-byte header length and checks it against the file size; returns the length.
template <class = void>
std::size_t safetensors_header_length(std::span<const std::byte> first_bytes, std::uint64_t file_size,
                                      std::string_view source) {
    require(file_size >= 8 && first_bytes.size() >= 8, source, ": truncated file: ", file_size,
            " bytes, a safetensors file needs at least 8 (the header length)");
    const std::uint64_t n = detail::read_u64_le(first_bytes.data());
    require(n <= kSafetensorsMaxHeader, source, ": header length ", n, " exceeds the limit of ", kSafetensorsMaxHeader, " bytes");
    require(n <= file_size - 8, source, ": header length ", n, " runs past the end of the file (", file_size, " bytes)");
    return static_cast<std::size_t>(n);
}

// Parses the header of a whole file held in memory (the fuzzer's entry point).
template <class = void>
SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file, std::string_view source) {
    const std::size_t n = safetensors_header_length(file, file.size(), source);
    const std::string_view json(reinterpret_cast<const char*>(file.data() + 8), n);
    SafetensorsHeader h = parse_safetensors_header_json(json, file.size() - 8 - n, source);
    h.data_offset = 8 + n;
    return h;
}
MQ_EXTERN_TEMPLATE(SafetensorsHeader parse_safetensors_header<>(std::span<const std::byte>, std::string_view))

// The largest JSON text file (config.json, a sharded index) read whole: as the safetensors header
// limit, far above real ones (kilobytes), far below what would exhaust memory.
inline constexpr std::uintmax_t kJsonMaxFile = 100u << 20;

// Runs f(); a std::bad_alloc it throws becomes an mq::error naming `source` and `what` was being
// allocated (setup code promises mq::error for every bad input, an impossibly large one included).
template <class F>
decltype(auto) allocating(std::string_view source, std::string_view what, F&& f) {
#if MQ_EXCEPTIONS
    try {
        return f();
    } catch (const std::bad_alloc&) {
        fail(source, ": out of memory allocating ", what);
    }
#else
    (void)source, (void)what;
    return f();
#endif
}

namespace detail {

// The whole text of a small file (config.json, an index). Only a regular file of at most
// `max_bytes` is read: a FIFO or a device (/dev/zero) would block or never end, growing memory.
template <class Tag = void>
std::string read_text_file(const dependent_t<Tag, std::filesystem::path>& path,
                           std::uintmax_t max_bytes = kJsonMaxFile) {
#if MQ_HAS_MMAP
    // One descriptor for the check and the read, so the file cannot be swapped in between.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    require(fd >= 0, path.string(), ": cannot open file");
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat st {};
    require(::fstat(fd, &st) == 0, path.string(), ": cannot open file");
    require(S_ISREG(st.st_mode), path.string(), ": not a regular file (a directory, FIFO or device is never read as JSON)");
    const auto size = static_cast<std::uintmax_t>(st.st_size);
    require(size <= max_bytes, path.string(), ": file of ", size, " bytes exceeds the limit of ", max_bytes, " bytes");
    std::string text(static_cast<std::size_t>(size), '\0');
    std::size_t got = 0;
    while (got < text.size()) {
        const auto n = ::read(fd, text.data() + got, text.size() - got);
        if (n < 0 && errno == EINTR) continue;
        require(n > 0, path.string(), ": read failed after ", got, " of ", size, " bytes");
        got += static_cast<std::size_t>(n);
    }
    return text;
#else
    std::error_code ec;
    require(std::filesystem::is_regular_file(path, ec), path.string(),
            ": not a regular file (a directory, FIFO or device is never read as JSON)");
    const auto size = std::filesystem::file_size(path, ec);
    require(!ec && size <= max_bytes, path.string(), ": file of ", size, " bytes exceeds the limit of ", max_bytes, " bytes");
    std::ifstream in(path, std::ios::binary);
    require(in.good(), path.string(), ": cannot open file");
    std::string text(static_cast<std::size_t>(size), '\0');
    in.read(text.data(), static_cast<std::streamsize>(size));
    require(in.gcount() == static_cast<std::streamsize>(size), path.string(), ": read failed");
    return text;
#endif
}

// The bytes of one file: an mmap'ed region or a heap buffer, released on destruction.
template <class = void>
class BasicFileBytes {
public:
    BasicFileBytes() = default;
    explicit BasicFileBytes(std::vector<std::byte> buffer) : buffer_(std::move(buffer)) {
        data_ = buffer_.data();
        size_ = buffer_.size();
    }
    BasicFileBytes(const BasicFileBytes&) = delete;
    BasicFileBytes& operator=(const BasicFileBytes&) = delete;
    ~BasicFileBytes() {
#if MQ_HAS_MMAP
        if (mapped_) ::munmap(const_cast<std::byte*>(data_), size_);
#endif
    }

    static std::shared_ptr<BasicFileBytes> open(const std::filesystem::path& path) {
        auto fb = std::make_shared<BasicFileBytes>();
#if MQ_HAS_MMAP
        // O_NONBLOCK: opening a FIFO without a writer would otherwise block forever; a regular
        // file ignores the flag.
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd >= 0) {
            struct stat st {};
            if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
                void* p = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
                if (p != MAP_FAILED) {
                    fb->data_ = static_cast<const std::byte*>(p);
                    fb->size_ = static_cast<std::size_t>(st.st_size);
                    fb->mapped_ = true;
                }
            }
            ::close(fd);
            if (fb->mapped_) return fb;
        }
#endif
        // Streamed fallback (no mmap, or an empty file): read it all. Only regular files: a FIFO
        // or a device (/dev/zero) would never end.
        std::error_code ec;
        require(std::filesystem::is_regular_file(path, ec), path.string(), ": cannot open file (not a regular file)");
        std::ifstream in(path, std::ios::binary);
        require(in.good(), path.string(), ": cannot open file");
        std::vector<std::byte> bytes;
        allocating(path.string(), "the file's bytes", [&] {
            std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
            bytes.resize(chars.size());
            if (!chars.empty()) std::memcpy(bytes.data(), chars.data(), chars.size());
        });
        return std::make_shared<BasicFileBytes>(std::move(bytes));
    }

    std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }

private:
    std::vector<std::byte> buffer_;
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
    bool mapped_ = false;
};
using FileBytes = BasicFileBytes<>; // a template: compiled only where used (core/config.hpp)
} // namespace detail

// A checked, read-only safetensors file. Copies share the mapping.
template <class Defer = void>
class BasicSafetensorsFile {
    // The mapped file's type spelled dependent on Defer: its members are compiled only where a file
    // is opened (core/config.hpp).
    using Bytes = dependent_t<Defer, detail::FileBytes>;

public:
    static BasicSafetensorsFile open(const std::filesystem::path& path) {
        return BasicSafetensorsFile(Bytes::open(path), path.string());
    }
    static BasicSafetensorsFile from_bytes(std::vector<std::byte> bytes, std::string source = "<memory>") {
        return BasicSafetensorsFile(std::make_shared<Bytes>(std::move(bytes)), std::move(source));
    }

    const std::string& source() const noexcept { return source_; }
    const SafetensorsHeader& header() const noexcept { return header_; }
    const std::vector<TensorInfo>& tensors() const noexcept { return header_.tensors; }
    const Metadata& metadata() const noexcept { return header_.metadata; }
    bool contains(std::string_view name) const noexcept { return header_.find(name) != nullptr; }

    const TensorInfo& info(std::string_view name) const {
        const TensorInfo* t = header_.find(name);
        require(t != nullptr, source_, ": tensor \"", name, "\" not found");
        return *t;
    }
    // The tensor's raw little-endian bytes, inside the file (I8/U8 codes are read this way).
    std::span<const std::byte> bytes(std::string_view name) const {
        const TensorInfo& t = info(name);
        return file_->bytes().subspan(header_.data_offset + t.begin, t.nbytes());
    }
    std::span<const std::byte> bytes(const TensorInfo& t) const {
        return file_->bytes().subspan(header_.data_offset + t.begin, t.nbytes());
    }

    // F32/F16/BF16/F64 converted to float; integer dtypes are refused (they are codes, not values).
    // Every value must be finite after conversion (see load_float_into).
    FloatTensor load_float(std::string_view name) const {
        const TensorInfo& t = info(name);
        require(dtype_is_float(t.dtype), source_, ": tensor \"", name, "\": dtype ", dtype_name(t.dtype),
                " is not a float type");
        FloatTensor out;
        out.shape = t.shape;
        allocating(source_, detail::concat("tensor \"", name, "\" (", t.numel() * sizeof(float), " bytes)"),
                   [&] { out.data.resize(t.numel()); });
        convert_checked(t, out.data.data());
        return out;
    }
    // Converts straight into caller memory of exactly numel floats (no intermediate copy). A NaN or
    // ±inf (also one made by narrowing F64) fails naming the tensor and the element: a non-finite
    // weight would otherwise surface as garbage output, or as an error at the first forward that
    // names neither layer nor tensor.
    void load_float_into(std::string_view name, const std::vector<std::size_t>& expected_shape, std::span<float> dst) const {
        const TensorInfo& t = info(name);
        require(t.shape == expected_shape, source_, ": tensor \"", name, "\": expected shape ",
                detail::shape_string(expected_shape), ", got ", detail::shape_string(t.shape));
        require(dtype_is_float(t.dtype), source_, ": tensor \"", name, "\": dtype ", dtype_name(t.dtype),
                " is not a float type");
        require(dst.size() == t.numel(), source_, ": tensor \"", name, "\": destination holds ", dst.size(),
                " floats, tensor has ", t.numel());
        convert_checked(t, dst.data());
    }
    FloatTensor load_float(std::string_view name, const std::vector<std::size_t>& expected_shape) const {
        const TensorInfo& t = info(name);
        require(t.shape == expected_shape, source_, ": tensor \"", name, "\": expected shape ",
                detail::shape_string(expected_shape), ", got ", detail::shape_string(t.shape));
        return load_float(name);
    }

private:
    // Converts in L1-sized chunks and checks each while it is still in cache: one pass over the
    // tensor's memory instead of two.
    void convert_checked(const TensorInfo& t, float* dst) const {
        constexpr std::size_t kChunk = 4096; // floats: 16 KB of the destination
        const std::byte* src = bytes(t).data();
        const std::size_t n = t.numel(), width = dtype_size(t.dtype);
        for (std::size_t i = 0; i < n; i += kChunk) {
            const std::size_t m = std::min(kChunk, n - i);
            convert_to_float(t.dtype, src + i * width, dst + i, m);
            if (!all_finite(default_arch{}, ConstMatrixView<float>(dst + i, 1, m))) {
                std::size_t j = i;
                while (std::isfinite(dst[j])) ++j;
                fail(source_, ": tensor \"", t.name, "\": element ", j, " of ", n, " is ", dst[j],
                     t.dtype == DType::F64 ? " (after conversion to float)" : "", "; every weight must be finite");
            }
        }
    }

    BasicSafetensorsFile(std::shared_ptr<Bytes> file, std::string source)
        : file_(std::move(file)), source_(std::move(source)) {
        header_ = parse_safetensors_header(file_->bytes(), source_);
    }
    std::shared_ptr<Bytes> file_;
    std::string source_;
    SafetensorsHeader header_;
};
using SafetensorsFile = BasicSafetensorsFile<>; // a template: compiled only where used (core/config.hpp)

// ---- writer ----

// One tensor to write: its bytes are borrowed until the write returns.
struct TensorData {
    std::string name;
    DType dtype = DType::F32;
    std::vector<std::size_t> shape;
    std::span<const std::byte> bytes;
};

template <class T>
constexpr DType dtype_of() noexcept {
    if constexpr (std::is_same_v<T, float>) return DType::F32;
    else if constexpr (std::is_same_v<T, double>) return DType::F64;
    else if constexpr (std::is_same_v<T, std::int8_t>) return DType::I8;
    else if constexpr (std::is_same_v<T, std::uint8_t>) return DType::U8;
    else if constexpr (std::is_same_v<T, std::int16_t>) return DType::I16;
    else if constexpr (std::is_same_v<T, std::int32_t>) return DType::I32;
    else if constexpr (std::is_same_v<T, std::int64_t>) return DType::I64;
    else static_assert(sizeof(T) == 0, "dtype_of: no safetensors dtype for this type");
}

template <class T>
TensorData tensor_data(std::string name, std::span<const T> values, std::vector<std::size_t> shape) {
    return {std::move(name), dtype_of<T>(), std::move(shape), std::as_bytes(values)};
}

// The whole file in memory. The header is padded with spaces to a multiple of 8 so that the data
// section (and every tensor, written in order at 8-byte-aligned offsets) is aligned in a mapping.
template <class Tag = void>
std::vector<std::byte> serialize_safetensors(std::span<const TensorData> tensors,
                                             const dependent_t<Tag, Metadata>& metadata = {}) {
    dependent_t<Tag, nlohmann::json> header = dependent_t<Tag, nlohmann::json>::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::size_t offset = 0;
    std::vector<std::size_t> begins;
    for (const auto& t : tensors) {
        require(!t.name.empty() && t.name != "__metadata__", "save_safetensors: invalid tensor name \"", t.name, "\"");
        require(!header.contains(t.name), "save_safetensors: duplicate tensor \"", t.name, "\"");
        std::size_t numel = 1;
        for (auto d : t.shape) numel *= d;
        require(numel * dtype_size(t.dtype) == t.bytes.size(), "save_safetensors: tensor \"", t.name, "\": shape ",
                detail::shape_string(t.shape), " of ", dtype_name(t.dtype), " needs ", numel * dtype_size(t.dtype),
                " bytes, got ", t.bytes.size());
        offset = (offset + 7) & ~std::size_t{7};
        begins.push_back(offset);
        header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                          {"shape", t.shape},
                          {"data_offsets", {offset, offset + t.bytes.size()}}};
        offset += t.bytes.size();
    }
    std::string json = header.dump();
    json.resize((json.size() + 7) & ~std::size_t{7}, ' ');
    std::vector<std::byte> out(8 + json.size() + offset, std::byte{0});
    for (int i = 0; i < 8; ++i) out[i] = static_cast<std::byte>((json.size() >> (8 * i)) & 0xff);
    std::memcpy(out.data() + 8, json.data(), json.size());
    for (std::size_t i = 0; i < tensors.size(); ++i)
        if (!tensors[i].bytes.empty())
            std::memcpy(out.data() + 8 + json.size() + begins[i], tensors[i].bytes.data(), tensors[i].bytes.size());
    return out;
}
MQ_EXTERN_TEMPLATE(std::vector<std::byte> serialize_safetensors<>(std::span<const TensorData>, const Metadata&))

template <class Tag = void>
void save_safetensors(const dependent_t<Tag, std::filesystem::path>& path, std::span<const TensorData> tensors,
                      const dependent_t<Tag, Metadata>& metadata = {}) {
    write_file_atomically(path, serialize_safetensors(tensors, metadata));
}
MQ_EXTERN_TEMPLATE(void save_safetensors<>(const std::filesystem::path&, std::span<const TensorData>, const Metadata&))

MQ_NAMESPACE_END
