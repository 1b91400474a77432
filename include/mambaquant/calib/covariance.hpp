// Streaming fp64 covariance of activation rows: mergeable across shards, serializable to a stream.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <istream>
#include <ostream>
#include <type_traits>

MQ_NAMESPACE_BEGIN

// Accumulates, for rows x ∈ ℝ^d, the count n, Σ(x − c) and Σ(x − c)ᵀ(x − c) in double, where
// the shift c is the mean of the first batch ever added. Centred covariance:
//   Cov = (S − s·sᵀ/n) / (n − 1),   S = Σ(x − c)ᵀ(x − c),  s = Σ(x − c)
// which is shift-invariant; accumulating about c ≈ μ keeps S − s·sᵀ/n from cancelling
// catastrophically when |μ| ≫ σ (Mamba's residual stream has channels whose mean dwarfs their
// spread). The rank-k update S += Xcᵀ·Xc runs through Eigen's symmetric rank-k product (SYRK,
// lower triangle only: d(d+1)·k flops per k rows), at GEMM speed, not through a hand loop.
// Rows are converted to double in chunks of kChunkRows into a buffer the accumulator owns.
template <class Tag = void>
class BasicCovarianceAccumulator {
public:
    static constexpr std::size_t kChunkRows = 512;
    // Stream format: magic, version, then dim, count, shift[d], sum[d], lower(S) packed by
    // columns [d(d+1)/2], and an FNV-1a 64 checksum of everything after the magic.
    static constexpr char kMagic[8] = {'M', 'Q', 'C', 'O', 'V', 'A', 'R', '\0'};
    static constexpr std::uint32_t kVersion = 1;
    static constexpr std::uint64_t kMaxDim = std::uint64_t{1} << 16;

    explicit BasicCovarianceAccumulator(std::size_t dim) : dim_(dim) {
        require(dim > 0 && dim <= kMaxDim, "CovarianceAccumulator: dim must be in [1, ", kMaxDim, "], got ", dim);
        const auto d = static_cast<Eigen::Index>(dim);
        scatter_ = Eigen::MatrixXd::Zero(d, d);
        sum_ = Eigen::VectorXd::Zero(d);
        shift_ = Eigen::VectorXd::Zero(d);
    }

    std::size_t dim() const noexcept { return dim_; }
    std::uint64_t count() const noexcept { return count_; }

    // Adds every row of `rows` ([n, dim], float or double). All rows are checked first, so a
    // non-finite value leaves the accumulator untouched and names the row and column.
    template <class T>
        requires std::is_same_v<std::remove_const_t<T>, float> || std::is_same_v<std::remove_const_t<T>, double>
    void add(MatrixView<T> rows) {
        require(rows.cols == dim_, "CovarianceAccumulator::add: rows have ", rows.cols, " columns, expected ", dim_);
        for (std::size_t r = 0; r < rows.rows; ++r) {
            const auto* p = rows.row_ptr(r);
            for (std::size_t c = 0; c < rows.cols; ++c)
                if (!std::isfinite(static_cast<double>(p[c])))
                    fail("CovarianceAccumulator::add: non-finite value ", p[c], " at row ", r, ", column ", c);
        }
        if (rows.rows == 0) return;
        const auto d = static_cast<Eigen::Index>(dim_);
        if (count_ == 0) {
            // Shift = mean of this first batch (any value is exact; a close one avoids cancellation).
            shift_.setZero();
            for (std::size_t r = 0; r < rows.rows; ++r)
                for (std::size_t c = 0; c < dim_; ++c) shift_[static_cast<Eigen::Index>(c)] += static_cast<double>(rows(r, c));
            shift_ /= static_cast<double>(rows.rows);
        }
        if (chunk_.cols() == 0) chunk_.resize(d, static_cast<Eigen::Index>(kChunkRows));
        for (std::size_t first = 0; first < rows.rows; first += kChunkRows) {
            const std::size_t k = std::min(kChunkRows, rows.rows - first);
            // chunk_ holds Xcᵀ (column j = row first+j minus the shift), so S += chunk·chunkᵀ.
            for (std::size_t j = 0; j < k; ++j) {
                const auto* p = rows.row_ptr(first + j);
                double* col = chunk_.col(static_cast<Eigen::Index>(j)).data();
                for (std::size_t c = 0; c < dim_; ++c) col[c] = static_cast<double>(p[c]) - shift_[static_cast<Eigen::Index>(c)];
            }
            const auto block = chunk_.leftCols(static_cast<Eigen::Index>(k));
            scatter_.template selfadjointView<Eigen::Lower>().rankUpdate(block);
            sum_ += block.rowwise().sum();
        }
        count_ += rows.rows;
    }

    // Adds the rows of a row-major Eigen matrix.
    template <class Derived>
    void add(const Eigen::PlainObjectBase<Derived>& rows) {
        add(view(rows));
    }

    // Folds another accumulator of the same dimension into this one (calibration shards). The
    // other's statistics are moved to this shift c: with δ = c_o − c,
    //   S += S_o + s_o·δᵀ + δ·s_oᵀ + n_o·δ·δᵀ,   s += s_o + n_o·δ.
    void merge(const BasicCovarianceAccumulator& other) {
        require(other.dim_ == dim_, "CovarianceAccumulator::merge: dimension ", other.dim_, " differs from ", dim_);
        if (other.count_ == 0) return;
        if (count_ == 0) {
            scatter_ = other.scatter_;
            sum_ = other.sum_;
            shift_ = other.shift_;
            count_ = other.count_;
            return;
        }
        const dependent_t<Tag, Eigen::VectorXd> delta = other.shift_ - shift_;
        const double n_o = static_cast<double>(other.count_);
        scatter_.template triangularView<Eigen::Lower>() += other.scatter_;
        if (!delta.isZero(0.0)) {
            scatter_.template triangularView<Eigen::Lower>() +=
                other.sum_ * delta.transpose() + delta * other.sum_.transpose() + n_o * delta * delta.transpose();
        }
        sum_ += other.sum_ + n_o * delta;
        count_ += other.count_;
    }

    // μ = c + s/n.
    Eigen::VectorXd mean() const {
        require(count_ >= 1, "CovarianceAccumulator::mean: no rows accumulated");
        return shift_ + sum_ / static_cast<double>(count_);
    }

    // Centred, unbiased covariance (S − s·sᵀ/n)/(n − 1), full symmetric [dim, dim].
    MatrixXd covariance() const {
        require(count_ >= 2, "CovarianceAccumulator::covariance: needs at least 2 rows, got ", count_);
        const double n = static_cast<double>(count_);
        dependent_t<Tag, Eigen::MatrixXd> lower = scatter_.template triangularView<Eigen::Lower>();
        lower.template triangularView<Eigen::Lower>() -= (sum_ * sum_.transpose()) / n;
        dependent_t<Tag, MatrixXd> cov = lower.template selfadjointView<Eigen::Lower>();
        cov /= (n - 1.0);
        return cov;
    }

    // Raw second moment XᵀX = S + s·cᵀ + c·sᵀ + n·c·cᵀ, full symmetric [dim, dim].
    MatrixXd second_moment() const {
        const double n = static_cast<double>(count_);
        dependent_t<Tag, Eigen::MatrixXd> full = scatter_.template selfadjointView<Eigen::Lower>();
        full += sum_ * shift_.transpose() + shift_ * sum_.transpose() + n * shift_ * shift_.transpose();
        return full;
    }

    // Bit-exact equality of the accumulated state (same rows in the same order → equal).
    friend bool operator==(const BasicCovarianceAccumulator& a, const BasicCovarianceAccumulator& b) {
        if (a.dim_ != b.dim_ || a.count_ != b.count_) return false;
        if (a.shift_ != b.shift_ || a.sum_ != b.sum_) return false;
        for (Eigen::Index j = 0; j < a.scatter_.cols(); ++j)
            for (Eigen::Index i = j; i < a.scatter_.rows(); ++i)
                if (a.scatter_(i, j) != b.scatter_(i, j)) return false;
        return true;
    }

    void serialize(std::ostream& out) const {
        static_assert(std::endian::native == std::endian::little, "CovarianceAccumulator: stream format is little-endian");
        out.write(kMagic, sizeof(kMagic));
        Writer w{out};
        w.put(kVersion);
        w.put(std::uint32_t{0}); // reserved
        w.put(static_cast<std::uint64_t>(dim_));
        w.put(static_cast<std::uint64_t>(count_));
        for (Eigen::Index i = 0; i < shift_.size(); ++i) w.put(shift_[i]);
        for (Eigen::Index i = 0; i < sum_.size(); ++i) w.put(sum_[i]);
        for (Eigen::Index j = 0; j < scatter_.cols(); ++j)
            for (Eigen::Index i = j; i < scatter_.rows(); ++i) w.put(scatter_(i, j));
        const std::uint64_t checksum = w.hash;
        out.write(reinterpret_cast<const char*>(&checksum), sizeof(checksum));
        require(static_cast<bool>(out), "CovarianceAccumulator::serialize: stream write failed");
    }

    static BasicCovarianceAccumulator deserialize(std::istream& in) {
        char magic[sizeof(kMagic)] = {};
        in.read(magic, sizeof(magic));
        require(static_cast<bool>(in), "CovarianceAccumulator::deserialize: truncated stream (no header)");
        require(std::memcmp(magic, kMagic, sizeof(kMagic)) == 0,
                "CovarianceAccumulator::deserialize: bad magic (not a covariance accumulator stream)");
        Reader r{in};
        const auto version = r.template get<std::uint32_t>("version");
        require(version == kVersion, "CovarianceAccumulator::deserialize: unsupported version ", version, ", expected ", kVersion);
        (void)r.template get<std::uint32_t>("reserved");
        const auto dim = r.template get<std::uint64_t>("dim");
        require(dim >= 1 && dim <= kMaxDim, "CovarianceAccumulator::deserialize: dim must be in [1, ", kMaxDim, "], got ", dim);
        const auto count = r.template get<std::uint64_t>("count");
        BasicCovarianceAccumulator acc(static_cast<std::size_t>(dim));
        for (Eigen::Index i = 0; i < acc.shift_.size(); ++i) acc.shift_[i] = r.template get<double>("shift");
        for (Eigen::Index i = 0; i < acc.sum_.size(); ++i) acc.sum_[i] = r.template get<double>("sum");
        for (Eigen::Index j = 0; j < acc.scatter_.cols(); ++j)
            for (Eigen::Index i = j; i < acc.scatter_.rows(); ++i) acc.scatter_(i, j) = r.template get<double>("scatter");
        const std::uint64_t expected = r.hash;
        std::uint64_t checksum = 0;
        in.read(reinterpret_cast<char*>(&checksum), sizeof(checksum));
        require(static_cast<bool>(in), "CovarianceAccumulator::deserialize: truncated stream (no checksum)");
        require(checksum == expected, "CovarianceAccumulator::deserialize: checksum mismatch (corrupted stream)");
        require(acc.shift_.allFinite() && acc.sum_.allFinite() && acc.scatter_.allFinite(),
                "CovarianceAccumulator::deserialize: non-finite statistics");
        acc.count_ = count;
        return acc;
    }

private:
    // FNV-1a 64 over the bytes written/read after the magic.
    static constexpr std::uint64_t kFnvBasis = 14695981039346656037ull;
    static constexpr std::uint64_t kFnvPrime = 1099511628211ull;
    static std::uint64_t fnv(std::uint64_t h, const unsigned char* p, std::size_t n) noexcept {
        for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * kFnvPrime;
        return h;
    }
    struct Writer {
        std::ostream& out;
        std::uint64_t hash = kFnvBasis;
        template <class V>
        void put(V v) {
            unsigned char bytes[sizeof(V)];
            std::memcpy(bytes, &v, sizeof(V));
            hash = fnv(hash, bytes, sizeof(V));
            out.write(reinterpret_cast<const char*>(bytes), sizeof(V));
        }
    };
    struct Reader {
        std::istream& in;
        std::uint64_t hash = kFnvBasis;
        template <class V>
        V get(const char* field) {
            unsigned char bytes[sizeof(V)];
            in.read(reinterpret_cast<char*>(bytes), sizeof(V));
            require(static_cast<bool>(in), "CovarianceAccumulator::deserialize: truncated stream at field '", field, "'");
            hash = fnv(hash, bytes, sizeof(V));
            V v;
            std::memcpy(&v, bytes, sizeof(V));
            return v;
        }
    };

    std::size_t dim_;
    std::uint64_t count_ = 0;
    // Dependent types (core/config.hpp: dependent_t): the bodies are analysed only where used.
    dependent_t<Tag, Eigen::MatrixXd> scatter_; // lower triangle of S (column-major: SYRK's native layout)
    dependent_t<Tag, Eigen::VectorXd> sum_;
    dependent_t<Tag, Eigen::VectorXd> shift_;
    dependent_t<Tag, Eigen::MatrixXd> chunk_; // [dim, kChunkRows] conversion buffer, reused across add() calls
};
using CovarianceAccumulator = BasicCovarianceAccumulator<>; // a template: compiled only where used (core/config.hpp)

MQ_NAMESPACE_END
