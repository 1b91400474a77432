// Quantizing whole tensors under a Quantizer policy: the checked, tensor-level API over the row
// kernels (kernels/quantize.hpp). The policy types themselves are definitions, in quant/.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tags.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/quantize.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/quant_spec.hpp>
#include <mambaquant/quant/quantizer.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

MQ_NAMESPACE_BEGIN

// Layout of the parameters (see param_count): per_tensor → 1; per_channel/per_token → one per row,
// params[r]; per_group<G> → row-major [rows × cols/G], params[r·(cols/G) + g] covers
// x[r, g·G .. g·G+G). Every function here:
//   • checks its inputs and throws mq::error naming the tensor (`name`), the expected and the
//     actual value: empty tensor, shape mismatch, group size not dividing the row, params span of
//     the wrong size, invalid static params, NaN/Inf (with its [row, col] position);
//   • on error, leaves the outputs in an unspecified (but in-bounds written) state;
//   • documented behaviour for a zero range: an all-zero row/group/tensor gets scale 1, zero 0
//     (symmetric and asymmetric alike), quantizes to the code of 0 and dequantizes exactly to 0; a
//     constant row c ≠ 0 maps to one end of the code range and dequantizes to c within 1 ulp
//     (tests/quant/test_quantize.cpp checks both).

namespace detail {

template <class G>
std::string granularity_label() {
    if constexpr (is_per_group_v<G>)
        return concat("per_group<", G::group_size, ">");
    else
        return G::name;
}

template <class T>
void require_nonempty(const MatrixView<T>& x, std::string_view what, std::string_view name) {
    require(!x.empty() && x.data != nullptr, what, ": tensor '", name, "' is empty (shape [", x.rows, " x ", x.cols,
            "]); expected at least one element");
    require(x.stride >= x.cols, what, ": tensor '", name, "' has row stride ", x.stride, " < cols ", x.cols);
}

template <class A, class B>
void require_same_shape(const MatrixView<A>& ref, const MatrixView<B>& other, std::string_view what,
                        std::string_view ref_name, std::string_view other_name) {
    require(ref.rows == other.rows && ref.cols == other.cols, what, ": '", other_name, "' must have the shape of '",
            ref_name, "' [", ref.rows, " x ", ref.cols, "], got [", other.rows, " x ", other.cols, "]");
    require(other.data != nullptr && other.stride >= other.cols, what, ": '", other_name,
            "' has no data or a row stride ", other.stride, " < cols ", other.cols);
}

template <Granularity G>
void require_group_divides(std::size_t cols, std::string_view what, std::string_view name) {
    if constexpr (is_per_group_v<G>)
        require(cols % G::group_size == 0, what, ": group size ", G::group_size, " does not divide the row length ",
                cols, " of '", name, "' (", cols, " % ", G::group_size, " = ", cols % G::group_size, ")");
}

template <QuantizerPolicy Q>
void require_param_count(std::size_t got, std::size_t rows, std::size_t cols, std::string_view what,
                         std::string_view name) {
    const std::size_t want = param_count<typename Q::granularity>(rows, cols);
    require(got == want, what, ": params for '", name, "' must have ", want, " entries (",
            granularity_label<typename Q::granularity>(), " on [", rows, " x ", cols, "]), got ", got);
}

// Static params must be usable by the kernels: positive finite scale with its inverse, and a
// zero point inside the code range (0 for symmetric quantizers).
template <QuantizerPolicy Q>
void require_valid_params(std::span<const QuantParams> params, std::string_view what, std::string_view name) {
    using R = typename Q::range;
    for (std::size_t i = 0; i < params.size(); ++i) {
        const QuantParams& p = params[i];
        require(std::isfinite(p.scale) && p.scale > 0.0f && std::isfinite(p.inv_scale) && p.inv_scale > 0.0f, what,
                ": params[", i, "] for '", name, "' need a finite scale > 0 and inv_scale > 0, got scale ", p.scale,
                ", inv_scale ", p.inv_scale);
        if constexpr (Q::symmetry::is_symmetric)
            require(p.zero == 0, what, ": params[", i, "] for '", name, "' of a symmetric quantizer need zero 0, got ",
                    p.zero);
        else
            require(p.zero >= R::min && p.zero <= R::max, what, ": params[", i, "] for '", name,
                    "' need a zero point in [", R::min, ", ", R::max, "], got ", p.zero);
    }
}

// Throws with the position of the first NaN/Inf of row r in [c0, c1).
[[noreturn]] inline void fail_non_finite(ConstMatrixView<float> x, std::size_t r, std::size_t c0, std::size_t c1,
                                         std::string_view what, std::string_view name) {
    for (std::size_t c = c0; c < c1; ++c) {
        const float v = x(r, c);
        if (!std::isfinite(v)) fail(what, ": tensor '", name, "' has a non-finite value (", v, ") at [", r, ", ", c, "]; expected finite values");
    }
    fail(what, ": tensor '", name, "' has a non-finite value in row ", r);
}

// An asymmetric range wider than FLT_MAX (e.g. [−3e38, 3e38]) has no finite float scale.
inline void require_finite_scale(const QuantParams& p, const RowRange& r, std::size_t row, std::string_view what,
                                 std::string_view name) {
    require(std::isfinite(p.scale) && p.inv_scale > 0.0f, what, ": the range [", r.lo, ", ", r.hi, "] of '", name,
            "' (row ", row, ") is too wide for a finite float scale; expected max − min <= ", std::numeric_limits<float>::max());
}

// Software prefetch of a row a few rows ahead of the fused per-row kernels: the hardware
// prefetcher loses the stream when the kernel turns from pass 1 (memory) to pass 2 (L1), and the
// hint overlaps the next row's fetch with this row's quantize pass (≈ 1.2–1.4× on [4096 × 1536]).
inline void prefetch_bytes(const void* p, std::size_t bytes) noexcept {
#if defined(__GNUC__) || defined(__clang__)
    const char* c = static_cast<const char*>(p);
    for (std::size_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b);
#else
    (void)p, (void)bytes;
#endif
}

template <class Arch>
void require_finite(Arch arch, ConstMatrixView<float> x, std::string_view what, std::string_view name) {
    for (std::size_t r = 0; r < x.rows; ++r)
        if (!row_range(arch, x.row_ptr(r), x.cols).finite) fail_non_finite(x, r, 0, x.cols, what, name);
}

} // namespace detail

// Dynamic quantization: params from the live tensor, then codes.
//   codes = clamp(round_half_even(x · inv_scale) + zero, qmin, qmax), params per Q's granularity.
// Per-token/per-channel and per-group run the fused two-pass row kernel (range, then quantize);
// per-tensor reads the tensor twice (global range, then quantize).
template <QuantizerPolicy Q, class Arch = default_arch>
void quantize(ConstMatrixView<float> x, MatrixView<typename Q::code_type> codes, std::span<QuantParams> params,
              std::string_view name = "x") {
    using G = typename Q::granularity;
    using S = typename Q::symmetry;
    constexpr const char* what = "quantize";
    detail::require_nonempty(x, what, name);
    detail::require_same_shape(x, codes, what, name, "codes");
    detail::require_group_divides<G>(x.cols, what, name);
    detail::require_param_count<Q>(params.size(), x.rows, x.cols, what, name);
    const Arch arch{};
    if constexpr (std::same_as<G, per_tensor>) {
        RowRange all;
        for (std::size_t r = 0; r < x.rows; ++r) {
            const RowRange rr = row_range(arch, x.row_ptr(r), x.cols);
            if (!rr.finite) detail::fail_non_finite(x, r, 0, x.cols, what, name);
            all = all.merged(rr);
        }
        params[0] = Q::params(all.lo, all.hi);
        detail::require_finite_scale(params[0], all, 0, what, name);
        for (std::size_t r = 0; r < x.rows; ++r)
            quantize_row<typename Q::range>(arch, x.row_ptr(r), x.cols, params[0], codes.row_ptr(r));
    } else {
        const std::size_t g = is_per_group_v<G> ? param_count<G>(1, x.cols) : 1;
        const std::size_t len = x.cols / g;
        const std::size_t row_bytes = x.cols * sizeof(float);
        const std::size_t ahead = row_bytes >= 8192 ? 1 : 2; // stay well inside L1/L2
        for (std::size_t r = 0; r < x.rows; ++r) {
            if (r + ahead < x.rows) detail::prefetch_bytes(x.row_ptr(r + ahead), row_bytes);
            for (std::size_t k = 0; k < g; ++k) {
                const float* xk = x.row_ptr(r) + k * len;
                typename Q::code_type* qk = codes.row_ptr(r) + k * len;
                if constexpr (detail::is_builtin_quantizer_v<Q>) {
                    // The built-in params (params_from_range) are computed inside the fused kernel.
                    const DynamicQuantResult res = quantize_row_dynamic<Q::bits, S>(arch, xk, len, qk);
                    if (!res.range.finite) detail::fail_non_finite(x, r, k * len, (k + 1) * len, what, name);
                    detail::require_finite_scale(res.params, res.range, r, what, name);
                    params[r * g + k] = res.params;
                } else {
                    // A user policy: its own Q::params of the row's (group's) range, then the codes.
                    const RowRange rr = row_range(arch, xk, len);
                    if (!rr.finite) detail::fail_non_finite(x, r, k * len, (k + 1) * len, what, name);
                    params[r * g + k] = Q::params(rr.lo, rr.hi);
                    detail::require_finite_scale(params[r * g + k], rr, r, what, name);
                    quantize_row<typename Q::range>(arch, xk, len, params[r * g + k], qk);
                }
            }
        }
    }
}

// Params only (e.g. for a weight quantized once at load time), the same values quantize() picks.
template <QuantizerPolicy Q, class Arch = default_arch>
void compute_params(ConstMatrixView<float> x, std::span<QuantParams> params, std::string_view name = "x") {
    using G = typename Q::granularity;
    constexpr const char* what = "compute_params";
    detail::require_nonempty(x, what, name);
    detail::require_group_divides<G>(x.cols, what, name);
    detail::require_param_count<Q>(params.size(), x.rows, x.cols, what, name);
    const Arch arch{};
    RowRange all;
    const std::size_t g = is_per_group_v<G> ? param_count<G>(1, x.cols) : 1;
    const std::size_t len = x.cols / g;
    for (std::size_t r = 0; r < x.rows; ++r) {
        for (std::size_t k = 0; k < g; ++k) {
            const RowRange rr = row_range(arch, x.row_ptr(r) + k * len, len);
            if (!rr.finite) detail::fail_non_finite(x, r, k * len, (k + 1) * len, what, name);
            if constexpr (std::same_as<G, per_tensor>) {
                all = all.merged(rr);
            } else {
                params[r * g + k] = Q::params(rr.lo, rr.hi);
                detail::require_finite_scale(params[r * g + k], rr, r, what, name);
            }
        }
    }
    if constexpr (std::same_as<G, per_tensor>) {
        params[0] = Q::params(all.lo, all.hi);
        detail::require_finite_scale(params[0], all, 0, what, name);
    }
}

// Static quantization with given (calibrated) params; values outside the calibrated range
// saturate to qmin/qmax.
template <QuantizerPolicy Q, class Arch = default_arch>
void quantize_static(ConstMatrixView<float> x, std::span<const QuantParams> params,
                     MatrixView<typename Q::code_type> codes, std::string_view name = "x") {
    using G = typename Q::granularity;
    using R = typename Q::range;
    constexpr const char* what = "quantize_static";
    detail::require_nonempty(x, what, name);
    detail::require_same_shape(x, codes, what, name, "codes");
    detail::require_group_divides<G>(x.cols, what, name);
    detail::require_param_count<Q>(params.size(), x.rows, x.cols, what, name);
    detail::require_valid_params<Q>(params, what, name);
    const Arch arch{};
    detail::require_finite(arch, x, what, name);
    if constexpr (std::same_as<G, per_tensor>) {
        for (std::size_t r = 0; r < x.rows; ++r) quantize_row<R>(arch, x.row_ptr(r), x.cols, params[0], codes.row_ptr(r));
    } else {
        const std::size_t g = is_per_group_v<G> ? param_count<G>(1, x.cols) : 1;
        const std::size_t len = x.cols / g;
        for (std::size_t r = 0; r < x.rows; ++r)
            for (std::size_t k = 0; k < g; ++k)
                quantize_row<R>(arch, x.row_ptr(r) + k * len, len, params[r * g + k], codes.row_ptr(r) + k * len);
    }
}

// x̂ = (q − zero)·scale with the params of each row/group.
template <QuantizerPolicy Q, class Arch = default_arch>
void dequantize(ConstMatrixView<typename Q::code_type> codes, std::span<const QuantParams> params, MatrixView<float> out,
                std::string_view name = "codes") {
    using G = typename Q::granularity;
    constexpr const char* what = "dequantize";
    detail::require_nonempty(codes, what, name);
    detail::require_same_shape(codes, out, what, name, "out");
    detail::require_group_divides<G>(codes.cols, what, name);
    detail::require_param_count<Q>(params.size(), codes.rows, codes.cols, what, name);
    detail::require_valid_params<Q>(params, what, name);
    const Arch arch{};
    const std::size_t g = std::same_as<G, per_tensor> ? 1 : (is_per_group_v<G> ? param_count<G>(1, codes.cols) : 1);
    const std::size_t len = codes.cols / g;
    for (std::size_t r = 0; r < codes.rows; ++r) {
        for (std::size_t k = 0; k < g; ++k) {
            const QuantParams& p = std::same_as<G, per_tensor> ? params[0] : params[r * g + k];
            dequantize_row(arch, codes.row_ptr(r) + k * len, len, p, out.row_ptr(r) + k * len);
        }
    }
}

// An owning quantized tensor: codes (one per byte, row-major, contiguous), params (layout above)
// and shape. 4-bit codes can be packed two per byte with pack_int4 (quant/int4.hpp).
template <QuantizerPolicy Q>
struct QuantizedTensor {
    using policy = Q;
    using code_type = typename Q::code_type;

    std::size_t rows = 0;
    std::size_t cols = 0;
    aligned_vector<code_type> codes;
    std::vector<QuantParams> params;

    QuantizedTensor() = default;
    QuantizedTensor(std::size_t r, std::size_t c)
        : rows(r), cols(c), codes(r * c), params(param_count<typename Q::granularity>(r, c)) {}

    MatrixView<code_type> code_view() noexcept { return {codes.data(), rows, cols}; }
    ConstMatrixView<code_type> code_view() const noexcept { return {codes.data(), rows, cols}; }

    // out[r, c] = (codes[r, c] − zero)·scale
    void dequantize(MatrixView<float> out) const { mq::dequantize<Q>(code_view(), params, out, "QuantizedTensor"); }
    MatrixXf dequantize() const {
        MatrixXf out(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
        dequantize(view(out));
        return out;
    }
};

// Dynamic: params from x itself.
template <QuantizerPolicy Q, class Arch = default_arch>
QuantizedTensor<Q> quantize_tensor(ConstMatrixView<float> x, std::string_view name = "x") {
    detail::require_nonempty(x, "quantize_tensor", name);
    detail::require_group_divides<typename Q::granularity>(x.cols, "quantize_tensor", name);
    QuantizedTensor<Q> t(x.rows, x.cols);
    quantize<Q, Arch>(x, t.code_view(), t.params, name);
    return t;
}

// Static: with given params.
template <QuantizerPolicy Q, class Arch = default_arch>
QuantizedTensor<Q> quantize_tensor(ConstMatrixView<float> x, std::span<const QuantParams> params,
                                   std::string_view name = "x") {
    detail::require_nonempty(x, "quantize_tensor", name);
    detail::require_group_divides<typename Q::granularity>(x.cols, "quantize_tensor", name);
    QuantizedTensor<Q> t(x.rows, x.cols);
    quantize_static<Q, Arch>(x, params, t.code_view(), name);
    t.params.assign(params.begin(), params.end()); // sizes checked by quantize_static
    return t;
}

MQ_NAMESPACE_END
