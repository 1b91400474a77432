// Views over contiguous row-major memory, and the owning types they usually view.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>

#include <Eigen/Core>
#include <xsimd/memory/xsimd_aligned_allocator.hpp>

#include <cstddef>
#include <span>
#include <type_traits>
#include <vector>

MQ_NAMESPACE_BEGIN

// Owning row-major matrix (Eigen's default is column-major; every tensor here is row-major so
// that a row is a token or an output channel, contiguous in memory).
template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixXf = Matrix<float>;
using MatrixXd = Matrix<double>;

// 64-byte aligned storage for kernel inputs and outputs (one cache line, any SIMD width).
inline constexpr std::size_t kAlignment = 64;
template <class T>
using aligned_vector = std::vector<T, xsimd::aligned_allocator<T, kAlignment>>;

// A 2-D row-major view: `rows` rows of `cols` elements, consecutive rows `stride` elements
// apart (stride == cols for a contiguous tensor). Views never own and never allocate.
template <class T>
struct MatrixView {
    T* data = nullptr;
    std::size_t rows = 0;
    std::size_t cols = 0;
    std::size_t stride = 0;

    constexpr MatrixView() = default;
    constexpr MatrixView(T* d, std::size_t r, std::size_t c) noexcept : MatrixView(d, r, c, c) {}
    constexpr MatrixView(T* d, std::size_t r, std::size_t c, std::size_t s) noexcept
        : data(d), rows(r), cols(c), stride(s) {}

    // A view of mutable data converts to a view of const data.
    template <class U>
        requires std::is_same_v<const U, T>
    constexpr MatrixView(MatrixView<U> other) noexcept
        : data(other.data), rows(other.rows), cols(other.cols), stride(other.stride) {}

    constexpr std::size_t size() const noexcept { return rows * cols; }
    constexpr bool empty() const noexcept { return rows == 0 || cols == 0; }
    constexpr bool contiguous() const noexcept { return stride == cols; }

    constexpr T* row_ptr(std::size_t r) const noexcept {
        MQ_ASSERT(r < rows, "row index out of range");
        return data + r * stride;
    }
    constexpr std::span<T> row(std::size_t r) const noexcept { return {row_ptr(r), cols}; }
    constexpr T& operator()(std::size_t r, std::size_t c) const noexcept {
        MQ_ASSERT(r < rows && c < cols, "element index out of range");
        return data[r * stride + c];
    }
    // Rows [first, first + count).
    constexpr MatrixView row_block(std::size_t first, std::size_t count) const noexcept {
        MQ_ASSERT(first + count <= rows, "row block out of range");
        return {data + first * stride, count, cols, stride};
    }
};

template <class T>
using ConstMatrixView = MatrixView<const T>;

// A 1-D contiguous tensor seen as one row.
template <class T>
constexpr MatrixView<T> as_row(std::span<T> v) noexcept {
    return {v.data(), 1, v.size()};
}

template <class Derived>
auto view(Eigen::PlainObjectBase<Derived>& m) noexcept {
    static_assert(Derived::IsRowMajor || Derived::ColsAtCompileTime == 1,
                  "mq::view needs a row-major Eigen matrix");
    using T = typename Derived::Scalar;
    return MatrixView<T>(m.data(), static_cast<std::size_t>(m.rows()),
                         static_cast<std::size_t>(m.cols()));
}
template <class Derived>
auto view(const Eigen::PlainObjectBase<Derived>& m) noexcept {
    static_assert(Derived::IsRowMajor || Derived::ColsAtCompileTime == 1,
                  "mq::view needs a row-major Eigen matrix");
    using T = typename Derived::Scalar;
    return MatrixView<const T>(m.data(), static_cast<std::size_t>(m.rows()),
                               static_cast<std::size_t>(m.cols()));
}

// The Eigen expression over a view, for setup code that wants linear algebra on it.
template <class T>
auto as_eigen(MatrixView<T> v) noexcept {
    using Plain = Matrix<std::remove_const_t<T>>;
    using MapType = std::conditional_t<std::is_const_v<T>,
                                       Eigen::Map<const Plain, 0, Eigen::OuterStride<>>,
                                       Eigen::Map<Plain, 0, Eigen::OuterStride<>>>;
    return MapType(v.data, static_cast<Eigen::Index>(v.rows), static_cast<Eigen::Index>(v.cols),
                   Eigen::OuterStride<>(static_cast<Eigen::Index>(v.stride)));
}

// Setup-time shape check with a message naming the tensor and both shapes.
template <class T>
void require_shape(const MatrixView<T>& v, std::size_t rows, std::size_t cols, const char* name) {
    require(v.rows == rows && v.cols == cols, name, ": expected shape [", rows, " x ", cols,
            "], got [", v.rows, " x ", v.cols, "]");
}

MQ_NAMESPACE_END
