// Range observers for calibration: min/max, streaming percentile of |x|, and MSE-optimal clipping.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/quantize.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/quantizer.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

MQ_NAMESPACE_BEGIN

// A calibrated value range [lo, hi] (lo ≤ hi; finite).
struct ValueRange {
    float lo = 0.0f;
    float hi = 0.0f;
    friend bool operator==(const ValueRange&, const ValueRange&) = default;
};

// What every observer offers. Observers see the calibration data batch by batch (`observe`), never
// keep it, combine across shards (`merge`: observing A then B equals observing A, observing B in a
// second observer and merging — exactly, for all three observers here), and report one
// per-tensor range; `params<Q>()` turns it into Q's (scale, zero). Asking for a range before any
// sample throws mq::error.
// Open: any type with these members is an Observer (README "Policies").
namespace detail {
template <class O>
concept observer_has_observe = requires(O& o, ConstMatrixView<float> x) { o.observe(x); };
template <class O>
concept observer_has_merge = requires(O& o, const O& c) { o.merge(c); };
template <class O>
concept observer_has_count = requires(const O& c) { { c.count() } -> std::convertible_to<std::uint64_t>; };
template <class O>
concept observer_has_range = requires(const O& c) { { c.range() } -> std::same_as<ValueRange>; };
template <class O>
concept observer_has_params = requires(const O& c) { { c.template params<A8PerTensor>() } -> std::same_as<QuantParams>; };
} // namespace detail

template <class O>
concept Observer = detail::observer_has_observe<O> && detail::observer_has_merge<O> && detail::observer_has_count<O> &&
                   detail::observer_has_range<O> && detail::observer_has_params<O>;

// One static_assert naming the Observer concept and the member O lacks.
template <class O>
consteval bool check_observer() {
    if constexpr (!detail::observer_has_observe<O>) {
        static_assert(detail::observer_has_observe<O>, "Observer: missing member `void observe(ConstMatrixView<float>)`");
        return false;
    } else if constexpr (!detail::observer_has_merge<O>) {
        static_assert(detail::observer_has_merge<O>, "Observer: missing member `void merge(const O&)`");
        return false;
    } else if constexpr (!detail::observer_has_count<O>) {
        static_assert(detail::observer_has_count<O>, "Observer: missing member `std::uint64_t count() const`");
        return false;
    } else if constexpr (!detail::observer_has_range<O>) {
        static_assert(detail::observer_has_range<O>, "Observer: missing member `ValueRange range() const`");
        return false;
    } else if constexpr (!detail::observer_has_params<O>) {
        static_assert(detail::observer_has_params<O>,
                      "Observer: missing member `template <class Q> QuantParams params() const`");
        return false;
    } else {
        return true;
    }
}

namespace detail {

// Throws with the position of the first non-finite value of x (row r is known to hold one).
[[noreturn]] inline void fail_observer_non_finite(std::string_view observer, std::string_view name,
                                                  ConstMatrixView<float> x, std::size_t r) {
    for (std::size_t c = 0; c < x.cols; ++c)
        if (!std::isfinite(x(r, c)))
            fail(observer, "::observe: tensor '", name, "' has a non-finite value (", x(r, c), ") at [", r, ", ", c,
                 "]; expected finite values");
    fail(observer, "::observe: tensor '", name, "' has a non-finite value in row ", r);
}

template <class = void>
void require_samples(std::uint64_t n, std::string_view observer) {
    require(n > 0, observer, ": no samples observed (count = 0); call observe() with calibration data before asking for a range");
}

// A fixed log-scale histogram of |x| built from the float's own bits: the bin of |x| is its
// exponent and its top M mantissa bits (bits >> (23 − M)). Bin b covers [v_b, v_{b+1}) with
// v_{b+1}/v_b ≤ 1 + 2^−M for normal floats, so any order statistic located through the histogram
// is known to a relative error ≤ 2^−M (bin 0.. of subnormals: absolute error < 2^−126).
// Counts are integers: merging histograms is exact and order-independent.
template <int M>
class LogHistogram {
public:
    static_assert(M >= 1 && M <= 10, "LogHistogram: 1..10 mantissa bits");
    static constexpr int kShift = 23 - M;
    // Finite floats have |x| bits < 0x7F800000.
    static constexpr std::size_t kBins = std::size_t{0x7F800000u} >> kShift;

    LogHistogram() : counts_(kBins, 0) {}

    static std::size_t bin(float x) noexcept { return (std::bit_cast<std::uint32_t>(x) & 0x7FFFFFFFu) >> kShift; }
    // Lower and upper edge of bin b.
    static float edge(std::size_t b) noexcept {
        if (b >= kBins) return std::numeric_limits<float>::max();
        return std::bit_cast<float>(static_cast<std::uint32_t>(b << kShift));
    }

    void add(float x) noexcept { ++counts_[bin(x)]; }
    // Adds n to bin b (restoring a saved histogram; b < kBins checked by the caller).
    void add_count(std::size_t b, std::uint64_t n) noexcept { counts_[b] += n; }
    void merge(const LogHistogram& o) noexcept {
        for (std::size_t b = 0; b < kBins; ++b) counts_[b] += o.counts_[b];
    }
    std::uint64_t operator[](std::size_t b) const noexcept { return counts_[b]; }
    const std::vector<std::uint64_t>& counts() const noexcept { return counts_; }

private:
    std::vector<std::uint64_t> counts_;
};

} // namespace detail

// ---------------------------------------------------------------------------------------------
// [lo, hi] = [min x, max x] over everything observed.
template <class = void>
class BasicMinMaxObserver {
public:
    void observe(ConstMatrixView<float> x, std::string_view name = "x") {
        for (std::size_t r = 0; r < x.rows; ++r) {
            const RowRange rr = row_range(default_arch{}, x.row_ptr(r), x.cols);
            if (!rr.finite) detail::fail_observer_non_finite("MinMaxObserver", name, x, r);
            range_ = range_.merged(rr);
        }
        count_ += x.rows * x.cols;
    }
    void observe(std::span<const float> x, std::string_view name = "x") { observe(as_row(x), name); }
    void merge(const BasicMinMaxObserver& o) noexcept {
        range_ = range_.merged(o.range_);
        count_ += o.count_;
    }

    std::uint64_t count() const noexcept { return count_; }
    ValueRange range() const {
        detail::require_samples(count_, "MinMaxObserver");
        return {range_.lo, range_.hi};
    }
    template <QuantizerPolicy Q>
    QuantParams params() const {
        const ValueRange r = range();
        return Q::params(r.lo, r.hi);
    }

private:
    RowRange range_;
    std::uint64_t count_ = 0;
};
using MinMaxObserver = BasicMinMaxObserver<>; // a template: compiled only where used (core/config.hpp)

// ---------------------------------------------------------------------------------------------
// Clip at the p-th percentile of |x| (default p = 0.999999, as in METHOD §2):
//   c = |x|_(k), k = ⌈p·n⌉ (nearest rank, 1-based), range = [max(min x, −c), min(max x, c)].
// Streaming: a log-scale histogram of |x| with 2^7 bins per octave (256 KiB), never the data.
// Error bound: the returned c satisfies |c − c_exact| ≤ 2^−7·c_exact (≈ 0.8 %) (+ 2^−126
// absolute for subnormal data), where c_exact is the exact nearest-rank percentile of all the data.
template <class = void>
class BasicPercentileObserver {
public:
    static constexpr int kMantissaBits = 7;
    static constexpr double kRelativeError = 1.0 / (1 << kMantissaBits);

    explicit BasicPercentileObserver(double percentile = 0.999999) : p_(percentile) {
        require(percentile > 0.0 && percentile <= 1.0, "PercentileObserver: percentile must be in (0, 1], got ",
                percentile);
    }

    void observe(ConstMatrixView<float> x, std::string_view name = "x") {
        for (std::size_t r = 0; r < x.rows; ++r) {
            const float* row = x.row_ptr(r);
            const RowRange rr = row_range(default_arch{}, row, x.cols);
            if (!rr.finite) detail::fail_observer_non_finite("PercentileObserver", name, x, r);
            range_ = range_.merged(rr);
            for (std::size_t c = 0; c < x.cols; ++c) hist_.add(row[c]);
        }
        count_ += x.rows * x.cols;
    }
    void observe(std::span<const float> x, std::string_view name = "x") { observe(as_row(x), name); }
    void merge(const BasicPercentileObserver& o) {
        require(o.p_ == p_, "PercentileObserver::merge: percentiles differ (", p_, " vs ", o.p_, ")");
        hist_.merge(o.hist_);
        range_ = range_.merged(o.range_);
        count_ += o.count_;
    }

    double percentile() const noexcept { return p_; }
    std::uint64_t count() const noexcept { return count_; }

    // The whole state as data, for saving calibration shards (calib/statistics.hpp): the
    // non-empty histogram bins (index, count), the observed [min, max] and the count. restore()
    // of a saved state gives an observer equal in every answer and in merging.
    struct SavedState {
        double percentile = 0.999999;
        std::vector<std::pair<std::uint32_t, std::uint64_t>> bins;
        float lo = std::numeric_limits<float>::infinity(), hi = -std::numeric_limits<float>::infinity();
        std::uint64_t count = 0;
    };
    SavedState saved_state() const {
        SavedState s{p_, {}, range_.lo, range_.hi, count_};
        for (std::size_t b = 0; b < hist_.kBins; ++b)
            if (hist_[b] != 0) s.bins.emplace_back(static_cast<std::uint32_t>(b), hist_[b]);
        return s;
    }
    static BasicPercentileObserver restore(const SavedState& s) {
        BasicPercentileObserver o(s.percentile);
        std::uint64_t total = 0;
        for (const auto& [b, n] : s.bins) {
            require(b < hist_type::kBins, "PercentileObserver::restore: bin ", b, " out of range [0, ", hist_type::kBins, ")");
            o.hist_.add_count(b, n);
            total += n;
        }
        require(total == s.count, "PercentileObserver::restore: histogram holds ", total, " values, count says ", s.count);
        require(s.count == 0 || (std::isfinite(s.lo) && std::isfinite(s.hi) && s.lo <= s.hi),
                "PercentileObserver::restore: bad range [", s.lo, ", ", s.hi, "]");
        o.range_ = RowRange{s.lo, s.hi, true};
        o.count_ = s.count;
        return o;
    }

    // The p-th percentile of |x| (nearest rank), within the documented error bound.
    float abs_percentile() const {
        detail::require_samples(count_, "PercentileObserver");
        const float amax = std::max(std::fabs(range_.lo), std::fabs(range_.hi));
        // 0-based rank of the nearest-rank percentile.
        const double kd = std::ceil(p_ * static_cast<double>(count_)) - 1.0;
        const std::uint64_t k = kd <= 0.0 ? 0 : std::min<std::uint64_t>(static_cast<std::uint64_t>(kd), count_ - 1);
        std::uint64_t before = 0;
        for (std::size_t b = 0; b < hist_.kBins; ++b) {
            const std::uint64_t n = hist_[b];
            if (n == 0) continue;
            if (k < before + n) {
                // Spread the bin's n values evenly across it and take the (k − before)-th midpoint.
                const double lo = hist_.edge(b), hi = hist_.edge(b + 1);
                const double t = (static_cast<double>(k - before) + 0.5) / static_cast<double>(n);
                return std::min(static_cast<float>(lo + (hi - lo) * t), amax);
            }
            before += n;
        }
        return amax;
    }

    ValueRange range() const {
        const float c = abs_percentile();
        return {std::max(range_.lo, -c), std::min(range_.hi, c)};
    }
    template <QuantizerPolicy Q>
    QuantParams params() const {
        const ValueRange r = range();
        return Q::params(r.lo, r.hi);
    }

private:
    using hist_type = detail::LogHistogram<kMantissaBits>;
    double p_;
    hist_type hist_;
    RowRange range_;
    std::uint64_t count_ = 0;
};
using PercentileObserver = BasicPercentileObserver<>; // a template: compiled only where used (core/config.hpp)

// ---------------------------------------------------------------------------------------------
// MSE-optimal clipping: among the ranges α·[min(lo,0), max(hi,0)] (asymmetric) or α·[−m, m] with
// m = max|x| (symmetric), α on a grid from 1 down to `min_ratio`, pick the one minimizing the
// expected quantization error of the observed distribution
//   MSE(α) = Σ_{v clipped} (v − clip(v))²  +  Σ_{v inside} { v² if |v| < s/2 (rounds to 0, exact),
//                                                            s²/12 otherwise (uniform rounding) }
// with s the step of the b-bit quantizer over that range (the standard ACIQ-style model). The data
// are summarized by a signed log-scale histogram (64 bins per octave, each value represented by its
// bin's centre, ≤ 0.8 % off), so memory is bounded and merging is exact.
struct MseOptions {
    int bits = 8;            // quantizer the range is searched for (params<Q>() uses Q's own)
    bool symmetric = false;
    int grid = 200;          // number of clipping ratios
    double min_ratio = 0.05; // smallest α tried
};

template <class = void>
class BasicMseObserver {
public:
    static constexpr int kMantissaBits = 6;

    explicit BasicMseObserver(MseOptions options = {}) : opt_(options) {
        require(opt_.bits >= 2 && opt_.bits <= 8, "MseObserver: bits must be in [2, 8], got ", opt_.bits);
        require(opt_.grid >= 1, "MseObserver: grid must be >= 1, got ", opt_.grid);
        require(opt_.min_ratio > 0.0 && opt_.min_ratio <= 1.0, "MseObserver: min_ratio must be in (0, 1], got ",
                opt_.min_ratio);
    }

    void observe(ConstMatrixView<float> x, std::string_view name = "x") {
        for (std::size_t r = 0; r < x.rows; ++r) {
            const float* row = x.row_ptr(r);
            const RowRange rr = row_range(default_arch{}, row, x.cols);
            if (!rr.finite) detail::fail_observer_non_finite("MseObserver", name, x, r);
            range_ = range_.merged(rr);
            for (std::size_t c = 0; c < x.cols; ++c) (std::signbit(row[c]) ? neg_ : pos_).add(row[c]);
        }
        count_ += x.rows * x.cols;
    }
    void observe(std::span<const float> x, std::string_view name = "x") { observe(as_row(x), name); }
    void merge(const BasicMseObserver& o) {
        require(o.opt_.grid == opt_.grid && o.opt_.min_ratio == opt_.min_ratio && o.opt_.bits == opt_.bits &&
                    o.opt_.symmetric == opt_.symmetric,
                "MseObserver::merge: options differ (bits ", opt_.bits, " vs ", o.opt_.bits, ", grid ", opt_.grid,
                " vs ", o.opt_.grid, ")");
        pos_.merge(o.pos_);
        neg_.merge(o.neg_);
        range_ = range_.merged(o.range_);
        count_ += o.count_;
    }

    std::uint64_t count() const noexcept { return count_; }
    const MseOptions& options() const noexcept { return opt_; }

    // The best range for the configured bits/symmetry.
    ValueRange range() const { return search(opt_.bits, opt_.symmetric); }
    template <QuantizerPolicy Q>
    QuantParams params() const {
        const ValueRange r = search(Q::bits, Q::symmetry::is_symmetric);
        return Q::params(r.lo, r.hi);
    }

    // The modelled MSE (per element) of quantizing the observed data over [lo, hi] with `bits`.
    double modelled_mse(ValueRange r, int bits, bool symmetric) const {
        detail::require_samples(count_, "MseObserver");
        return modelled_mse(summary(), r, bits, symmetric);
    }

private:
    // The non-empty bins: centre v, upper edge |e1| and count (signed centre for negatives).
    struct Bin {
        double v;
        double edge;
        double n;
    };
    std::vector<Bin> summary() const {
        std::vector<Bin> bins;
        for (const auto* h : {&neg_, &pos_}) {
            const double sign = h == &neg_ ? -1.0 : 1.0;
            for (std::size_t b = 0; b < h->kBins; ++b) {
                const std::uint64_t n = (*h)[b];
                if (n == 0) continue;
                const double e0 = h->edge(b), e1 = h->edge(b + 1);
                bins.push_back({sign * 0.5 * (e0 + e1), e1, static_cast<double>(n)});
            }
        }
        return bins;
    }
    double modelled_mse(const std::vector<Bin>& bins, ValueRange r, int bits, bool symmetric) const {
        const double levels = symmetric ? static_cast<double>((1 << (bits - 1)) - 1) * 2.0
                                        : static_cast<double>((1 << bits) - 1);
        const double lo = r.lo, hi = r.hi;
        const double s = (hi - lo) / levels;
        double err = 0.0;
        for (const Bin& b : bins) {
            double e;
            if (b.v > hi)
                e = (b.v - hi) * (b.v - hi);
            else if (b.v < lo)
                e = (b.v - lo) * (b.v - lo);
            else if (b.edge < 0.5 * s)
                e = b.v * b.v; // rounds to the exact zero code
            else
                e = s * s / 12.0;
            err += b.n * e;
        }
        return err / static_cast<double>(count_);
    }

    ValueRange search(int bits, bool symmetric) const {
        detail::require_samples(count_, "MseObserver");
        const float mn = std::min(range_.lo, 0.0f), mx = std::max(range_.hi, 0.0f);
        const float m = std::max(-mn, mx);
        auto candidate = [&](double a) -> ValueRange {
            if (symmetric) return {static_cast<float>(-a * m), static_cast<float>(a * m)};
            return {static_cast<float>(a * mn), static_cast<float>(a * mx)};
        };
        ValueRange best = candidate(1.0);
        if (m == 0.0f) return best;
        const std::vector<Bin> bins = summary();
        double best_err = modelled_mse(bins, best, bits, symmetric);
        for (int i = 1; i < opt_.grid; ++i) {
            const double a = 1.0 - (1.0 - opt_.min_ratio) * static_cast<double>(i) / static_cast<double>(opt_.grid - 1);
            const ValueRange c = candidate(a);
            const double e = modelled_mse(bins, c, bits, symmetric);
            if (e < best_err) best_err = e, best = c;
        }
        return best;
    }

    MseOptions opt_;
    detail::LogHistogram<kMantissaBits> pos_, neg_;
    RowRange range_;
    std::uint64_t count_ = 0;
};
using MseObserver = BasicMseObserver<>; // a template: compiled only where used (core/config.hpp)

MQ_NAMESPACE_END
