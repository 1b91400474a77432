// Calibration statistics per layer and site (channel min/max, percentile sketch, covariance): collect, save, load, merge.
#pragma once

#include <mambaquant/calib/channel_stats.hpp>
#include <mambaquant/calib/covariance.hpp>
#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/calib/observer.hpp>
#include <mambaquant/io/atomic_file.hpp>

#include <Eigen/Core>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <istream>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

MQ_NAMESPACE_BEGIN

// What one site keeps. Every part is a bounded streaming summary (never the activations), and
// every part merges exactly, so calibrating shards separately and merging equals one run:
//   channels   per-channel min / max  → max|X_j| (smoothing), mid-range (dt shift), per-tensor min/max
//   percentile |x| histogram          → the per-tensor clipping percentile (Quamba, static scales)
//   covariance fp64 XᵀX, Σx, n         → KLT (R1, R5) and GPTQ's Hessian H = 2·XᵀX   (optional: d² doubles)
struct SiteOptions {
    double percentile = 0.999999;
    bool covariance = false;
};

template <class Tag = void>
class BasicSiteStats {
public:
    BasicSiteStats(std::size_t dim, SiteOptions options = {})
        : channels_(dim), percentile_(options.percentile), options_(options) {
        if (options.covariance) covariance_.emplace(dim);
    }

    std::size_t dim() const noexcept { return channels_.dim(); }
    std::uint64_t rows() const noexcept { return channels_.count(); }
    const SiteOptions& options() const noexcept { return options_; }

    // Adds activation rows [n, dim]. A non-finite value throws naming `name` (the site), row and
    // column, and leaves nothing half-added (the percentile sketch checks before it counts).
    void add(ConstMatrixView<float> rows, std::string_view name) {
        require(rows.cols == dim(), "calibration site '", name, "': rows have ", rows.cols, " columns, expected ", dim());
        percentile_.observe(rows, name); // checks every row for non-finite values first
        channels_.add(rows);
        if (covariance_) covariance_->add(rows);
    }

    void merge(const BasicSiteStats& o) {
        require(o.dim() == dim(), "SiteStats::merge: dimension ", o.dim(), " differs from ", dim());
        require(o.covariance_.has_value() == covariance_.has_value(),
                "SiteStats::merge: one shard has a covariance and the other has not");
        channels_.merge(o.channels_);
        percentile_.merge(o.percentile_);
        if (covariance_) covariance_->merge(*o.covariance_);
    }

    const ChannelStats& channels() const noexcept { return channels_; }
    const PercentileObserver& percentile() const noexcept { return percentile_; }
    bool has_covariance() const noexcept { return covariance_.has_value(); }
    const CovarianceAccumulator& covariance() const {
        require(covariance_.has_value(), "SiteStats: this site was calibrated without a covariance");
        return *covariance_;
    }

    // Per-tensor ranges the quantizers read: [min x, max x] and the percentile-clipped one.
    ValueRange minmax_range() const {
        return {static_cast<float>(channels_.min().minCoeff()), static_cast<float>(channels_.max().maxCoeff())};
    }
    ValueRange percentile_range() const { return percentile_.range(); }

    void serialize(std::ostream& out) const;
    static BasicSiteStats deserialize(std::istream& in);

private:
    BasicSiteStats(dependent_t<Tag, ChannelStats> c, dependent_t<Tag, PercentileObserver> p,
                   dependent_t<Tag, std::optional<CovarianceAccumulator>> cov, SiteOptions o)
        : channels_(std::move(c)), percentile_(std::move(p)), covariance_(std::move(cov)), options_(o) {}

    // Dependent types (core/config.hpp: dependent_t): the bodies are analysed only where used.
    dependent_t<Tag, ChannelStats> channels_;
    dependent_t<Tag, PercentileObserver> percentile_;
    std::optional<dependent_t<Tag, CovarianceAccumulator>> covariance_;
    SiteOptions options_;
};
using SiteStats = BasicSiteStats<>; // a template: compiled only where used (core/config.hpp)

// Key of a site: "layers.<i>.<site>" for a layer's site, the bare site name for model-level ones
// (e.g. "lm_head").
template <class = void>
std::string site_key(std::size_t layer, std::string_view site) {
    return "layers." + std::to_string(layer) + "." + std::string(site);
}

// All sites of a model, ordered by key (so files and merges are deterministic).
template <class Tag = void>
class BasicCalibrationStats {
public:
    static constexpr char kMagic[8] = {'M', 'Q', 'C', 'A', 'L', 'I', 'B', '\0'};
    static constexpr std::uint32_t kVersion = 1;

    // The site's statistics, created with (dim, options) on first use.
    SiteStats& site(const std::string& key, std::size_t dim, SiteOptions options = {}) {
        auto it = sites_.find(key);
        if (it == sites_.end()) it = sites_.emplace(key, SiteStats(dim, options)).first;
        require(it->second.dim() == dim, "CalibrationStats: site '", key, "' has dimension ", it->second.dim(),
                ", asked for ", dim);
        return it->second;
    }
    const SiteStats& at(const std::string& key) const {
        auto it = sites_.find(key);
        require(it != sites_.end(), "CalibrationStats: no statistics for site '", key, "'");
        return it->second;
    }
    bool contains(const std::string& key) const { return sites_.count(key) != 0; }
    const std::map<std::string, SiteStats>& sites() const noexcept { return sites_; }
    std::size_t windows() const noexcept { return windows_; }
    void count_window() noexcept { ++windows_; }

    // Shards of one calibration (disjoint windows, same sites) reduce into one.
    void merge(const BasicCalibrationStats& o) {
        for (const auto& [key, s] : o.sites_) {
            auto it = sites_.find(key);
            if (it == sites_.end()) sites_.emplace(key, s);
            else it->second.merge(s);
        }
        windows_ += o.windows_;
    }

    void serialize(std::ostream& out) const;
    static BasicCalibrationStats deserialize(std::istream& in);

    // Writes to `path` through a temporary file renamed into place (no half-written file).
    void save(const std::filesystem::path& path) const {
        write_atomically(path, [&](std::ostream& f) { serialize(f); });
    }
    static BasicCalibrationStats load(const std::filesystem::path& path) {
        std::ifstream f(path, std::ios::binary);
        require(static_cast<bool>(f), "CalibrationStats::load: cannot open '", path.string(), "'");
        return deserialize(f);
    }

private:
    std::map<std::string, dependent_t<Tag, SiteStats>> sites_; // dependent: analysed only where used
    std::size_t windows_ = 0;
};
using CalibrationStats = BasicCalibrationStats<>; // a template: compiled only where used (core/config.hpp)

// ---- stream format ---------------------------------------------------------------------------
// Little-endian. CalibrationStats: magic, version, windows, site count, then per site: key
// (u32 length + bytes), dim, options (percentile f64, covariance u8), channel count, min[d],
// max[d], percentile state (p, lo, hi, count, bin count, (bin u32, count u64)…), and the
// covariance accumulator's own checksummed stream when present.
namespace detail {
template <class = void>
struct BasicCalibWriter {
    std::ostream& out;
    template <class V>
    void put(V v) {
        out.write(reinterpret_cast<const char*>(&v), sizeof(V));
    }
    void put_string(std::string_view s) {
        put(static_cast<std::uint32_t>(s.size()));
        out.write(s.data(), static_cast<std::streamsize>(s.size()));
    }
};
using CalibWriter = BasicCalibWriter<>; // a template: compiled only where used (core/config.hpp)
template <class = void>
struct BasicCalibReader {
    std::istream& in;
    template <class V>
    V get(const char* field) {
        V v;
        in.read(reinterpret_cast<char*>(&v), sizeof(V));
        require(static_cast<bool>(in), "calibration statistics: truncated stream at field '", field, "'");
        return v;
    }
    std::string get_string(const char* field, std::size_t max_len) {
        const auto n = get<std::uint32_t>(field);
        require(n <= max_len, "calibration statistics: field '", field, "' has length ", n, ", at most ", max_len);
        std::string s(n, '\0');
        in.read(s.data(), n);
        require(static_cast<bool>(in), "calibration statistics: truncated stream at field '", field, "'");
        return s;
    }
};
using CalibReader = BasicCalibReader<>; // a template: compiled only where used (core/config.hpp)
} // namespace detail

template <class Tag>
void BasicSiteStats<Tag>::serialize(std::ostream& out) const {
    static_assert(std::endian::native == std::endian::little, "calibration statistics are stored little-endian");
    detail::CalibWriter w{out};
    w.put(static_cast<std::uint64_t>(dim()));
    w.put(options_.percentile);
    w.put(static_cast<std::uint8_t>(covariance_ ? 1 : 0));
    w.put(static_cast<std::uint64_t>(channels_.count()));
    for (Eigen::Index j = 0; j < channels_.raw_min().size(); ++j) w.put(channels_.raw_min()[j]);
    for (Eigen::Index j = 0; j < channels_.raw_max().size(); ++j) w.put(channels_.raw_max()[j]);
    const auto ps = percentile_.saved_state();
    w.put(ps.percentile);
    w.put(ps.lo);
    w.put(ps.hi);
    w.put(ps.count);
    w.put(static_cast<std::uint64_t>(ps.bins.size()));
    for (const auto& [b, n] : ps.bins) {
        w.put(b);
        w.put(n);
    }
    if (covariance_) covariance_->serialize(out);
}

template <class Tag>
BasicSiteStats<Tag> BasicSiteStats<Tag>::deserialize(std::istream& in) {
    using Cov = dependent_t<Tag, CovarianceAccumulator>; // completed only where statistics are read
    using Percentile = dependent_t<Tag, PercentileObserver>;
    detail::CalibReader r{in};
    const auto dim = r.get<std::uint64_t>("dim");
    require(dim >= 1 && dim <= Cov::kMaxDim, "calibration statistics: site dimension ", dim,
            " outside [1, ", Cov::kMaxDim, "]");
    SiteOptions o;
    o.percentile = r.get<double>("percentile");
    o.covariance = r.get<std::uint8_t>("covariance") != 0;
    const auto count = r.get<std::uint64_t>("channel count");
    Eigen::VectorXd mn(static_cast<Eigen::Index>(dim)), mx(static_cast<Eigen::Index>(dim));
    for (Eigen::Index j = 0; j < mn.size(); ++j) mn[j] = r.get<double>("channel min");
    for (Eigen::Index j = 0; j < mx.size(); ++j) mx[j] = r.get<double>("channel max");
    typename Percentile::SavedState ps;
    ps.percentile = r.get<double>("percentile state");
    require(ps.percentile == o.percentile, "calibration statistics: percentile ", ps.percentile, " differs from the site's ",
            o.percentile);
    ps.lo = r.get<float>("percentile lo");
    ps.hi = r.get<float>("percentile hi");
    ps.count = r.get<std::uint64_t>("percentile count");
    const auto nbins = r.get<std::uint64_t>("bin count");
    require(nbins <= (std::uint64_t{1} << 24), "calibration statistics: bin count ", nbins, " is implausible");
    ps.bins.reserve(static_cast<std::size_t>(nbins));
    for (std::uint64_t i = 0; i < nbins; ++i) {
        const auto b = r.get<std::uint32_t>("bin");
        const auto n = r.get<std::uint64_t>("bin count");
        ps.bins.emplace_back(b, n);
    }
    std::optional<Cov> cov;
    if (o.covariance) {
        cov.emplace(Cov::deserialize(in));
        require(cov->dim() == dim, "calibration statistics: covariance dimension ", cov->dim(), " differs from ", dim);
    }
    return BasicSiteStats(dependent_t<Tag, ChannelStats>::restore(mn, mx, count), Percentile::restore(ps), std::move(cov), o);
}

template <class Tag>
void BasicCalibrationStats<Tag>::serialize(std::ostream& out) const {
    out.write(kMagic, sizeof(kMagic));
    detail::CalibWriter w{out};
    w.put(kVersion);
    w.put(static_cast<std::uint64_t>(windows_));
    w.put(static_cast<std::uint64_t>(sites_.size()));
    for (const auto& [key, s] : sites_) {
        w.put_string(key);
        s.serialize(out);
    }
    require(static_cast<bool>(out), "CalibrationStats::serialize: stream write failed");
}

template <class Tag>
BasicCalibrationStats<Tag> BasicCalibrationStats<Tag>::deserialize(std::istream& in) {
    char magic[sizeof(kMagic)] = {};
    in.read(magic, sizeof(magic));
    require(static_cast<bool>(in) && std::memcmp(magic, kMagic, sizeof(kMagic)) == 0,
            "CalibrationStats: not a calibration statistics stream (bad magic)");
    detail::CalibReader r{in};
    const auto version = r.get<std::uint32_t>("version");
    require(version == kVersion, "CalibrationStats: unsupported version ", version, ", expected ", kVersion);
    BasicCalibrationStats c;
    c.windows_ = static_cast<std::size_t>(r.get<std::uint64_t>("windows"));
    const auto n = r.get<std::uint64_t>("site count");
    require(n <= (std::uint64_t{1} << 20), "CalibrationStats: site count ", n, " is implausible");
    for (std::uint64_t i = 0; i < n; ++i) {
        std::string key = r.get_string("site key", 256);
        c.sites_.emplace(std::move(key), dependent_t<Tag, SiteStats>::deserialize(in));
    }
    return c;
}

MQ_NAMESPACE_END
