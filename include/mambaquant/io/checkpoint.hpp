// A checkpoint: one safetensors file or shards listed by `model.safetensors.index.json`.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

MQ_NAMESPACE_BEGIN

inline constexpr const char* kSafetensorsIndexName = "model.safetensors.index.json";
inline constexpr const char* kSafetensorsSingleName = "model.safetensors";

// Tensors by name across one or several files. The index ({"metadata": {...}, "weight_map":
// {tensor: shard file}}) is authoritative: every tensor it lists must be in the shard it names.
template <class Defer = void>
class BasicCheckpoint {
    // The shards' type spelled dependent on Defer: its members are compiled only where a checkpoint
    // is opened (core/config.hpp).
    using File = dependent_t<Defer, SafetensorsFile>;

public:
    // `path` is a directory (index or model.safetensors inside), an index file, or one
    // .safetensors file.
    static BasicCheckpoint open(const std::filesystem::path& path) {
        namespace fs = std::filesystem;
        require(fs::exists(path), path.string(), ": no such file or directory");
        if (fs::is_directory(path)) {
            if (fs::exists(path / kSafetensorsIndexName)) return open_index(path / kSafetensorsIndexName);
            require(fs::exists(path / kSafetensorsSingleName), path.string(), ": neither ", kSafetensorsIndexName,
                    " nor ", kSafetensorsSingleName, " found");
            return open(path / kSafetensorsSingleName);
        }
        if (path.filename().string().ends_with(".index.json")) return open_index(path);
        BasicCheckpoint c;
        c.path_ = path;
        c.shards_.push_back(File::open(path));
        for (const auto& t : c.shards_[0].tensors()) c.where_.emplace(t.name, 0);
        c.metadata_ = c.shards_[0].metadata();
        return c;
    }

    // Parses index text (the fuzzer's entry point): weight_map entries name → shard file name.
    // (A template never spelled by callers, so its JSON work is instantiated only where it is
    // called; with MQ_COMPILED it is compiled once in the companion library.)
    template <class = void>
    static std::map<std::string, std::string, std::less<>> parse_index(std::string_view text, std::string_view source,
                                                                       Metadata* metadata = nullptr);

    const std::filesystem::path& path() const noexcept { return path_; }
    const Metadata& metadata() const noexcept { return metadata_; }
    std::size_t shard_count() const noexcept { return shards_.size(); }
    bool contains(std::string_view name) const { return where_.find(name) != where_.end(); }
    std::vector<std::string> names() const {
        std::vector<std::string> n;
        for (const auto& [k, v] : where_) n.push_back(k);
        return n;
    }
    const File& file_of(std::string_view name) const {
        auto it = where_.find(name);
        require(it != where_.end(), path_.string(), ": tensor \"", name, "\" not found in the checkpoint");
        return shards_[it->second];
    }
    const TensorInfo& info(std::string_view name) const { return file_of(name).info(name); }
    // Every tensor's entry, in name order.
    std::vector<const TensorInfo*> infos() const {
        std::vector<const TensorInfo*> v;
        v.reserve(where_.size());
        for (const auto& [name, shard] : where_) v.push_back(shards_[shard].header().find(name));
        return v;
    }
    // The file that holds `name` (messages name it), or the checkpoint's path.
    std::string source_of(std::string_view name) const {
        auto it = where_.find(name);
        return it == where_.end() ? path_.string() : shards_[it->second].source();
    }
    std::span<const std::byte> bytes(std::string_view name) const { return file_of(name).bytes(name); }
    FloatTensor load_float(std::string_view name) const { return file_of(name).load_float(name); }
    FloatTensor load_float(std::string_view name, const std::vector<std::size_t>& shape) const {
        return file_of(name).load_float(name, shape);
    }
    void load_float_into(std::string_view name, const std::vector<std::size_t>& shape, std::span<float> dst) const {
        file_of(name).load_float_into(name, shape, dst);
    }

private:
    static BasicCheckpoint open_index(const std::filesystem::path& index_path) {
        BasicCheckpoint c;
        c.path_ = index_path.parent_path();
        const auto map = parse_index(detail::read_text_file(index_path), index_path.string(), &c.metadata_);
        std::map<std::string, std::size_t> shard_ids;
        for (const auto& [name, file] : map) {
            auto [it, inserted] = shard_ids.emplace(file, c.shards_.size());
            if (inserted) c.shards_.push_back(File::open(c.path_ / file));
            require(c.shards_[it->second].contains(name), index_path.string(), ": tensor \"", name,
                    "\" is listed in shard ", file, " but missing from it");
            c.where_.emplace(name, it->second);
        }
        return c;
    }

    std::filesystem::path path_;
    std::vector<File> shards_;
    std::map<std::string, std::size_t, std::less<>> where_;
    Metadata metadata_;
};
using Checkpoint = BasicCheckpoint<>; // a template: compiled only where used (core/config.hpp)

template <class Tag>
template <class>
std::map<std::string, std::string, std::less<>> BasicCheckpoint<Tag>::parse_index(std::string_view text,
                                                                                  std::string_view source,
                                                                                  Metadata* metadata) {
    const dependent_t<Tag, nlohmann::json> root = detail::parse_untrusted_json(text, source, 2);
    require(root.is_object(), source, ": index must be a JSON object");
    require(root.contains("weight_map") && root["weight_map"].is_object(), source,
            ": field \"weight_map\" missing or not an object");
    std::map<std::string, std::string, std::less<>> map;
    for (const auto& [name, file] : root["weight_map"].items()) {
        require(file.is_string(), source, ": weight_map[\"", name, "\"] must be a file name string");
        const auto& f = file.template get_ref<const std::string&>();
        // Shards live beside the index: a path would let a checkpoint read arbitrary files.
        require(!f.empty() && f.find('/') == std::string::npos && f.find('\\') == std::string::npos &&
                    f != "." && f != "..",
                source, ": weight_map[\"", name, "\"]: shard \"", f, "\" is not a plain file name");
        map.emplace(name, f);
    }
    if (metadata && root.contains("metadata") && root["metadata"].is_object())
        for (const auto& [k, v] : root["metadata"].items()) (*metadata)[k] = v.is_string() ? v.template get<std::string>() : v.dump();
    return map;
}
MQ_EXTERN_TEMPLATE(std::map<std::string, std::string, std::less<>> Checkpoint::parse_index<>(std::string_view, std::string_view, Metadata*))

// A loader's ledger over a checkpoint's tensors, checked before anything is allocated: each
// claim checks that the tensor is present with the shape the loader will allocate (so a config
// that inflates a dimension fails on the file's real size, not on an allocation), and at the end
// every tensor must have been claimed (a config with fewer layers than its checkpoint would
// otherwise load, run and compute the wrong function without a word).
template <class Defer = void>
class BasicTensorClaims {
public:
    // `tensors`: every tensor of the checkpoint; they must outlive the claims. `source` names the
    // checkpoint in messages; built from a Checkpoint, each tensor's own shard file is named.
    BasicTensorClaims(std::vector<const TensorInfo*> tensors, std::string source) : source_(std::move(source)) {
        for (const TensorInfo* t : tensors) entries_.emplace(std::string_view(t->name), Entry{t, false, {}});
    }
    explicit BasicTensorClaims(const dependent_t<Defer, Checkpoint>& ck) : BasicTensorClaims(ck.infos(), ck.path().string()) {
        for (auto& [name, e] : entries_) e.file = ck.source_of(name);
    }
    BasicTensorClaims(const SafetensorsHeader& h, std::string source) : source_(std::move(source)) {
        for (const auto& t : h.tensors) entries_.emplace(std::string_view(t.name), Entry{&t, false, {}});
    }

    const std::string& source() const noexcept { return source_; }
    bool contains(std::string_view name) const { return entries_.find(name) != entries_.end(); }

    // Marks `name` used after checking it exists, has `shape` and (with `float_values`) a float
    // dtype. Messages: "<file>: tensor "<name>": expected shape [..], got [..]".
    const TensorInfo& claim(std::string_view name, const std::vector<std::size_t>& shape, bool float_values = true) {
        auto it = entries_.find(name);
        require(it != entries_.end(), source_, ": tensor \"", name, "\" not found in the checkpoint");
        Entry& e = it->second;
        const std::string& where = e.file.empty() ? source_ : e.file;
        require(e.info->shape == shape, where, ": tensor \"", name, "\": expected shape ", detail::shape_string(shape),
                ", got ", detail::shape_string(e.info->shape));
        require(!float_values || dtype_is_float(e.info->dtype), where, ": tensor \"", name, "\": dtype ",
                dtype_name(e.info->dtype), " is not a float type");
        e.used = true;
        return *e.info;
    }

    // Fails naming the first (in name order) tensor nobody claimed; `context` says what the
    // claims were made for (e.g. the config's sizes).
    void require_all_claimed(std::string_view context) const {
        for (const auto& [name, e] : entries_)
            require(e.used, e.file.empty() ? source_ : e.file, ": tensor \"", name, "\" is not used by ", context,
                    "; a checkpoint with tensors its config does not read is refused rather than half-loaded");
    }

private:
    struct Entry {
        const TensorInfo* info;
        bool used;
        std::string file;
    };
    std::string source_;
    std::map<std::string_view, Entry, std::less<>> entries_;
};
using TensorClaims = BasicTensorClaims<>; // a template: compiled only where used (core/config.hpp)

// Writes `tensors` as model-0000k-of-0000n.safetensors shards of at most `max_shard_bytes` of data
// each (a tensor never splits) plus the index; one shard is written as model.safetensors alone.
template <class Tag = void>
void save_sharded_safetensors(const dependent_t<Tag, std::filesystem::path>& dir, std::span<const TensorData> tensors,
                              std::size_t max_shard_bytes, const dependent_t<Tag, Metadata>& metadata = {}) {
    std::filesystem::create_directories(dir);
    std::vector<std::vector<TensorData>> shards(1);
    std::size_t used = 0, total = 0;
    for (const auto& t : tensors) {
        if (used > 0 && used + t.bytes.size() > max_shard_bytes) {
            shards.emplace_back();
            used = 0;
        }
        shards.back().push_back(t);
        used += t.bytes.size();
        total += t.bytes.size();
    }
    if (shards.size() == 1) {
        save_safetensors(dir / kSafetensorsSingleName, shards[0], metadata);
        return;
    }
    dependent_t<Tag, nlohmann::json> index = {{"metadata", {{"total_size", total}}}, {"weight_map", dependent_t<Tag, nlohmann::json>::object()}};
    for (std::size_t s = 0; s < shards.size(); ++s) {
        char name[64];
        std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
        save_safetensors(dir / name, shards[s], metadata);
        for (const auto& t : shards[s]) index["weight_map"][t.name] = name;
    }
    const std::string text = index.dump(2) + '\n';
    write_file_atomically(dir / kSafetensorsIndexName, text);
}

MQ_NAMESPACE_END
