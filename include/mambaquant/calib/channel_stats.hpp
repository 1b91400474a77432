// Per-channel running min / max of activation rows: the statistics smoothing and the dt shift use.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

MQ_NAMESPACE_BEGIN

// min_j, max_j over every row seen, per channel j; max|X_j| = max(−min_j, max_j) and the
// mid-range (min_j + max_j)/2 follow. Merging two shards is an element-wise min / max, so it is
// exact and order-independent.
template <class = void>
class BasicChannelStats {
public:
    explicit BasicChannelStats(std::size_t dim) : dim_(dim) {
        require(dim > 0, "ChannelStats: dim must be positive");
        const auto d = static_cast<Eigen::Index>(dim);
        min_ = Eigen::VectorXd::Constant(d, std::numeric_limits<double>::infinity());
        max_ = Eigen::VectorXd::Constant(d, -std::numeric_limits<double>::infinity());
    }

    std::size_t dim() const noexcept { return dim_; }
    std::uint64_t count() const noexcept { return count_; }

    template <class T>
        requires std::is_same_v<std::remove_const_t<T>, float> || std::is_same_v<std::remove_const_t<T>, double>
    void add(MatrixView<T> rows) {
        require(rows.cols == dim_, "ChannelStats::add: rows have ", rows.cols, " columns, expected ", dim_);
        for (std::size_t r = 0; r < rows.rows; ++r)
            for (std::size_t c = 0; c < dim_; ++c)
                if (!std::isfinite(static_cast<double>(rows(r, c))))
                    fail("ChannelStats::add: non-finite value ", rows(r, c), " at row ", r, ", column ", c);
        for (std::size_t r = 0; r < rows.rows; ++r)
            for (std::size_t c = 0; c < dim_; ++c) {
                const double v = static_cast<double>(rows(r, c));
                const auto j = static_cast<Eigen::Index>(c);
                min_[j] = std::min(min_[j], v);
                max_[j] = std::max(max_[j], v);
            }
        count_ += rows.rows;
    }
    template <class Derived>
    void add(const Eigen::PlainObjectBase<Derived>& rows) {
        add(view(rows));
    }

    void merge(const BasicChannelStats& other) {
        require(other.dim_ == dim_, "ChannelStats::merge: dimension ", other.dim_, " differs from ", dim_);
        min_ = min_.cwiseMin(other.min_);
        max_ = max_.cwiseMax(other.max_);
        count_ += other.count_;
    }

    // From saved min / max vectors and a row count (calib/statistics.hpp loads shards this way).
    static BasicChannelStats restore(const Eigen::VectorXd& min, const Eigen::VectorXd& max, std::uint64_t count) {
        require(min.size() == max.size() && min.size() > 0, "ChannelStats::restore: min has ", min.size(),
                " channels, max has ", max.size());
        BasicChannelStats s(static_cast<std::size_t>(min.size()));
        for (Eigen::Index j = 0; j < min.size() && count > 0; ++j)
            require(std::isfinite(min[j]) && std::isfinite(max[j]) && min[j] <= max[j], "ChannelStats::restore: channel ",
                    j, " has min ", min[j], ", max ", max[j]);
        if (count > 0) s.min_ = min, s.max_ = max;
        s.count_ = count;
        return s;
    }
    // The raw accumulators (±∞ before any row), for saving.
    const Eigen::VectorXd& raw_min() const noexcept { return min_; }
    const Eigen::VectorXd& raw_max() const noexcept { return max_; }

    const Eigen::VectorXd& min() const { return checked(min_); }
    const Eigen::VectorXd& max() const { return checked(max_); }
    // max|X_j| = max(|min_j|, |max_j|)
    Eigen::VectorXd absmax() const { return checked(min_).cwiseAbs().cwiseMax(max_.cwiseAbs()); }
    // (min_j + max_j) / 2: the dt shift's μ.
    Eigen::VectorXd midrange() const { return (checked(min_) + max_) * 0.5; }

private:
    const Eigen::VectorXd& checked(const Eigen::VectorXd& v) const {
        require(count_ > 0, "ChannelStats: no rows accumulated");
        return v;
    }

    std::size_t dim_;
    std::uint64_t count_ = 0;
    Eigen::VectorXd min_, max_;
};
using ChannelStats = BasicChannelStats<>; // a template: compiled only where used (core/config.hpp)

MQ_NAMESPACE_END
