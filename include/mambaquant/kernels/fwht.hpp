// Fast orthonormal Hadamard transform of a batch of rows, n = m·2^k, and its fusion with dynamic
// per-token int8 quantization (the online rotation at the out_proj input).
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tags.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/hadamard_block.hpp>
#include <mambaquant/kernels/quantize.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/range.hpp>

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

MQ_NAMESPACE_BEGIN

// What the kernels need for one size n, built once by setup code (make_fwht_plan) and shared
// read-only by every call and thread. Row transform (row vector x, element order of
// hadamard_matrix):   y = (x ⊙ s)·(H_m ⊗ H_{2^k}) / √n   (s = 1 unless randomized)
//  1. s:      x_i ← x_i·s_i                                        (exact: s_i = ±1)
//  2. FWHT:   radix-2 butterflies over each of the m contiguous chunks of 2^k
//  3. dense:  z_a = chunk a; y_j = Σ_a H_m[a][j]·z_a (vectorized along the chunk)
//  4. scale:  y ← y / √n (folded into the last pass)
// The dense stage groups the m inputs by four: each group's 8 signed sums z0 ± z1 ± z2 ± z3
// cost 12 adds, then every output is m/4 − 1 adds of those — 3m + m²/4 + m operations instead
// of m² (m = 20: 160 instead of 400). m = 12 runs from registers; m = 20, 28, 36 store the sums
// to a stack buffer first (held in registers, m = 20's accumulators spilled on every group), and
// when 2^k = 128 or 1024 they also take over the chunks' last butterfly stage, which would
// otherwise cost a pass over the row of its own (see fwht_split_last_stage).
struct FwhtPlan {
    std::size_t n = 0;
    HadamardFactors factors;
    float scale = 1.0f;        // 1/√n
    std::vector<int> block;    // m×m, block[a·m + j] = H_m[a][j] (the reference's dense stage)
    // Grouped dense stage, m > 1: combo[j·(m/4) + g] ∈ [0, 16) picks which of group g's 16
    // signed sums (8 patterns, then their negations) enters output j.
    std::vector<std::uint8_t> combo;
    aligned_vector<float> signs; // n random signs, or empty for the plain Hadamard
    // Inverse plan: y = x·Qᵀ = (x·Hᵀ) ⊙ s — the dense block transposed, the signs applied last.
    bool inverse = false;

    bool randomized() const noexcept { return !signs.empty(); }
};

enum class FwhtDirection { forward, inverse };

namespace detail {
// Pattern p = (s1, s2, s3) bits 0..2: u_p = z0 + (−1)^s1·z1 + (−1)^s2·z2 + (−1)^s3·z3.
template <class Tag = void>
std::uint8_t hadamard_combo_code(const dependent_t<Tag, Matrix<int>>& hm, std::size_t g, std::size_t j) {
    const auto col = static_cast<Eigen::Index>(j);
    const auto r = static_cast<Eigen::Index>(4 * g);
    const int lead = hm(r, col);
    unsigned p = 0;
    for (unsigned t = 1; t < 4; ++t)
        if (hm(r + t, col) != lead) p |= 1u << (t - 1);
    return static_cast<std::uint8_t>(p | (lead < 0 ? 8u : 0u));
}
} // namespace detail

// Setup: the plan for an exact Hadamard of size n = m·2^k (throws mq::error naming n otherwise),
// randomized by diag(s) when a seed is given (s = random_signs(n, seed)).
template <class Tag = void>
FwhtPlan make_fwht_plan(const dependent_t<Tag, HadamardFactors>& f, std::optional<std::uint64_t> seed = std::nullopt,
                        FwhtDirection direction = FwhtDirection::forward) {
    require(is_hadamard_block_size(f.m), "make_fwht_plan: block order ", f.m, " is not supported; ",
            supported_hadamard_factors_text());
    require(is_power_of_two(f.pow2) && (std::size_t{1} << f.log2_pow2) == f.pow2,
            "make_fwht_plan: pow2 = ", f.pow2, " must equal 2^", f.log2_pow2);
    FwhtPlan plan;
    plan.n = f.size();
    plan.factors = f;
    plan.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(plan.n)));
    plan.inverse = direction == FwhtDirection::inverse;
    using IntMatrix = dependent_t<Tag, Matrix<int>>;
    const IntMatrix hm = plan.inverse ? IntMatrix(hadamard_block<Tag>(f.m).transpose()) : hadamard_block<Tag>(f.m);
    plan.block.resize(f.m * f.m);
    for (std::size_t a = 0; a < f.m; ++a)
        for (std::size_t j = 0; j < f.m; ++j)
            plan.block[a * f.m + j] = hm(static_cast<Eigen::Index>(a), static_cast<Eigen::Index>(j));
    if (f.m > 1) {
        const std::size_t groups = f.m / 4;
        plan.combo.resize(f.m * groups);
        for (std::size_t j = 0; j < f.m; ++j)
            for (std::size_t g = 0; g < groups; ++g) plan.combo[j * groups + g] = detail::hadamard_combo_code(hm, g, j);
    }
    if (seed) {
        const std::vector<float> s = random_signs(plan.n, *seed);
        plan.signs.assign(s.begin(), s.end());
    }
    return plan;
}

template <class = void>
FwhtPlan make_fwht_plan(std::size_t n, std::optional<std::uint64_t> seed = std::nullopt,
                        FwhtDirection direction = FwhtDirection::forward) {
    return make_fwht_plan(decompose_hadamard_size(n), seed, direction);
}

// ---------------------------------------------------------------------------------------------
// Scalar references: the plain radix-2 loop and the plain dense m-block.
// ---------------------------------------------------------------------------------------------

// y = (x ⊙ s)·H for every row, in place. Butterfly: (a, b) ← (a + b, a − b) for stages
// h = 1, 2, 4, …; dense: y_j = (Σ_a H_m[a][j]·z_a)·(1/√n) summed in order a = 0..m−1.
// T = double gives the offline path (folding into weights) its full precision.
template <class T = float>
void fwht_ref(MatrixView<T> x, const FwhtPlan& plan) noexcept {
    MQ_ASSERT(x.cols == plan.n, "fwht_ref: row length must equal the plan size");
    const std::size_t n = plan.n, m = plan.factors.m, P = plan.factors.pow2;
    MQ_ASSERT(m <= kHadamardBlockSizes.back(), "fwht_ref: block order out of range");
    T z[kHadamardBlockSizes.back()];
    // 1/√n: the plan's float for T = float (the kernels' very value), full precision otherwise.
    T scale;
    if constexpr (std::is_same_v<T, float>) scale = plan.scale;
    else scale = T(1) / std::sqrt(static_cast<T>(n));
    for (std::size_t r = 0; r < x.rows; ++r) {
        T* row = x.row_ptr(r);
        if (plan.randomized() && !plan.inverse)
            for (std::size_t i = 0; i < n; ++i) row[i] *= static_cast<T>(plan.signs[i]);
        for (std::size_t a = 0; a < m; ++a) {
            T* c = row + a * P;
            for (std::size_t h = 1; h < P; h *= 2)
                for (std::size_t i = 0; i < P; i += 2 * h)
                    for (std::size_t j = i; j < i + h; ++j) {
                        const T u = c[j], v = c[j + h];
                        c[j] = u + v;
                        c[j + h] = u - v;
                    }
        }
        if (m == 1) {
            for (std::size_t i = 0; i < n; ++i) row[i] *= scale;
        } else {
            for (std::size_t b = 0; b < P; ++b) {
                for (std::size_t a = 0; a < m; ++a) z[a] = row[a * P + b];
                for (std::size_t j = 0; j < m; ++j) {
                    T acc = 0;
                    for (std::size_t a = 0; a < m; ++a) acc += static_cast<T>(plan.block[a * m + j]) * z[a];
                    row[j * P + b] = acc * scale;
                }
            }
        }
        if (plan.randomized() && plan.inverse)
            for (std::size_t i = 0; i < n; ++i) row[i] *= static_cast<T>(plan.signs[i]);
    }
}

// q = quantize_value(y, params_from_range<8, S>(min y, max y)) per row: codes uint8 for
// asymmetric (mq::A8PerToken), int8 for symmetric.
template <class S>
using int8_code_t = std::conditional_t<S::is_symmetric, std::int8_t, std::uint8_t>;

// Transform-then-quantize, the plain way: fwht_ref on x (in place), then per-row min/max,
// params and codes with the scalar quantize_value.
template <Symmetry S>
void fwht_quantize_ref(MatrixView<float> x, const FwhtPlan& plan, MatrixView<int8_code_t<S>> codes,
                       std::span<QuantParams> params) noexcept {
    MQ_ASSERT(codes.rows == x.rows && codes.cols == x.cols, "fwht_quantize_ref: code shape must match x");
    MQ_ASSERT(params.size() >= x.rows, "fwht_quantize_ref: one QuantParams per row");
    using R = BitRange<8, S>;
    fwht_ref(x, plan);
    for (std::size_t r = 0; r < x.rows; ++r) {
        const float* row = x.row_ptr(r);
        float lo = row[0], hi = row[0];
        for (std::size_t i = 1; i < x.cols; ++i) {
            lo = std::min(lo, row[i]);
            hi = std::max(hi, row[i]);
        }
        const QuantParams p = params_from_range<8, S>(lo, hi);
        params[r] = p;
        auto* q = codes.row_ptr(r);
        for (std::size_t i = 0; i < x.cols; ++i) q[i] = static_cast<int8_code_t<S>>(quantize_value<R>(row[i], p));
    }
}

// ---------------------------------------------------------------------------------------------
// SIMD kernels.
// ---------------------------------------------------------------------------------------------
namespace detail {

template <std::size_t H>
struct FwhtXorIndex {
    static constexpr std::uint32_t get(std::size_t i, std::size_t) { return static_cast<std::uint32_t>(i ^ H); }
};

// x_{i^h} for every lane i. On AVX the swaps are immediate-operand shuffles (no index register
// to keep live next to the eight values of a pass); other archs use xsimd's swizzle.
template <class Arch, std::size_t H>
MQ_ALWAYS_INLINE xsimd::batch<float, Arch> fwht_lane_swap(const xsimd::batch<float, Arch>& v) noexcept {
#if XSIMD_WITH_AVX
    if constexpr (std::is_base_of_v<xsimd::avx, Arch> && xsimd::batch<float, Arch>::size == 8) {
        if constexpr (H == 1) return _mm256_permute_ps(v, 0xB1);
        else if constexpr (H == 2) return _mm256_permute_ps(v, 0x4E);
        else return _mm256_permute2f128_ps(v, v, 0x01);
    } else
#endif
    {
        using U = xsimd::batch<std::uint32_t, Arch>;
        return xsimd::swizzle(v, xsimd::make_batch_constant<U, FwhtXorIndex<H>>());
    }
}

template <class Arch, std::size_t H>
struct FwhtLaneSign {
    static constexpr std::size_t W = xsimd::batch<float, Arch>::size;
    alignas(64) static constexpr std::array<float, W> values = [] {
        std::array<float, W> a{};
        for (std::size_t i = 0; i < W; ++i) a[i] = (i & H) ? -1.0f : 1.0f;
        return a;
    }();
};

// In-register stage h < W: out_i = x_i + x_{i^h} for (i & h) = 0, x_{i^h} − x_i otherwise, as
// fma(x, ±1, swap(x)); x·(±1) is exact so this rounds exactly like the add/sub of the loop.
template <class Arch, std::size_t H>
MQ_ALWAYS_INLINE xsimd::batch<float, Arch> fwht_lane_stage(const xsimd::batch<float, Arch>& v) noexcept {
    using B = xsimd::batch<float, Arch>;
    return xsimd::fma(v, B::load_aligned(FwhtLaneSign<Arch, H>::values.data()), fwht_lane_swap<Arch, H>(v));
}

template <class Arch, std::size_t H = 1>
MQ_ALWAYS_INLINE xsimd::batch<float, Arch> fwht_lane_stages(xsimd::batch<float, Arch> v) noexcept {
    if constexpr (H < xsimd::batch<float, Arch>::size) {
        v = fwht_lane_stage<Arch, H>(v);
        return fwht_lane_stages<Arch, 2 * H>(v);
    } else {
        return v;
    }
}

// Butterflies across R registers: stages with strides 1, 2, …, R/2, unrolled at compile time so
// that the R values stay in registers.
template <std::size_t H, class B, std::size_t... P>
MQ_ALWAYS_INLINE void fwht_reg_stage(B* v, std::index_sequence<P...>) noexcept {
    (([&] {
         constexpr std::size_t i = (P / H) * 2 * H + P % H;
         const B a = v[i], b = v[i + H];
         v[i] = a + b;
         v[i + H] = a - b;
     }()),
     ...);
}
template <std::size_t R, class B, std::size_t H = 1>
MQ_ALWAYS_INLINE void fwht_reg_stages(B* v) noexcept {
    if constexpr (H < R) {
        fwht_reg_stage<H>(v, std::make_index_sequence<R / 2>{});
        fwht_reg_stages<R, B, 2 * H>(v);
    }
}

// Running min/max of the final values, gathered while they are stored by the last pass (the fused
// quantizer then needs no extra pass to find the row's range).
template <class B>
struct FwhtMinMax {
    B lo = B(std::numeric_limits<float>::infinity());
    B hi = B(-std::numeric_limits<float>::infinity());
};

// lo = min(lo, v_0 … v_{R−1}) as a tree: one dependent step per call instead of R (a chain of R
// dependent min/max would cost R·latency per group of stores).
template <std::size_t R, class B>
MQ_ALWAYS_INLINE void fwht_minmax_tree(const B* v, B& lo, B& hi) noexcept {
    if constexpr (R == 1) {
        lo = xsimd::min(lo, v[0]);
        hi = xsimd::max(hi, v[0]);
    } else {
        B l[R / 2], h[R / 2];
        for (std::size_t i = 0; i < R / 2; ++i) {
            l[i] = xsimd::min(v[2 * i], v[2 * i + 1]);
            h[i] = xsimd::max(v[2 * i], v[2 * i + 1]);
        }
        for (std::size_t w = R / 4; w >= 1; w /= 2)
            for (std::size_t i = 0; i < w; ++i) {
                l[i] = xsimd::min(l[i], l[i + w]);
                h[i] = xsimd::max(h[i], h[i + w]);
            }
        lo = xsimd::min(lo, l[0]);
        hi = xsimd::max(hi, h[0]);
    }
}

// The end of a pass over R registers: when it is the row's last pass (scale_out), scale and
// gather min/max (Track) as the values leave; then store v[t] at dst + t·stride.
template <std::size_t R, bool Track, class B>
MQ_ALWAYS_INLINE void fwht_store_registers(B* v, float* dst, std::size_t stride, bool scale_out, const B& sc, B& lo,
                                           B& hi) noexcept {
    if (scale_out) {
        for (std::size_t t = 0; t < R; ++t) v[t] = v[t] * sc;
        if constexpr (Track) fwht_minmax_tree<R>(v, lo, hi);
    }
    for (std::size_t t = 0; t < R; ++t) v[t].store_unaligned(dst + t * stride);
}

// First pass over a chunk of P ≥ W floats: load G = min(8, P/W) registers from src (times the
// signs), all in-register stages and log2(G) cross-register stages, store to dst (times scale
// when this pass is the last one).
template <class Arch, std::size_t G, bool Track>
MQ_ALWAYS_INLINE void fwht_first_pass(const float* MQ_RESTRICT src, float* dst, std::size_t P, const float* signs,
                                      bool scale_out, float scale, FwhtMinMax<xsimd::batch<float, Arch>>* mm) noexcept {
    using B = xsimd::batch<float, Arch>;
    constexpr std::size_t W = B::size;
    const B sc(scale);
    B lo, hi;
    if constexpr (Track) lo = mm->lo, hi = mm->hi;
    for (std::size_t base = 0; base < P; base += G * W) {
        B v[G];
        for (std::size_t t = 0; t < G; ++t) {
            v[t] = B::load_unaligned(src + base + t * W);
            if (signs) v[t] = v[t] * B::load_unaligned(signs + base + t * W);
            v[t] = fwht_lane_stages<Arch>(v[t]);
        }
        fwht_reg_stages<G>(v);
        fwht_store_registers<G, Track>(v, dst + base, W, scale_out, sc, lo, hi);
    }
    if constexpr (Track) mm->lo = lo, mm->hi = hi;
}

// Stages h, 2h, …, (R/2)·h in one pass over a chunk of P floats (R registers per column).
template <class Arch, std::size_t R, bool Track>
MQ_ALWAYS_INLINE void fwht_radix_pass(float* x, std::size_t P, std::size_t h, bool scale_out, float scale,
                                      FwhtMinMax<xsimd::batch<float, Arch>>* mm) noexcept {
    using B = xsimd::batch<float, Arch>;
    constexpr std::size_t W = B::size;
    const B sc(scale);
    B lo, hi;
    if constexpr (Track) lo = mm->lo, hi = mm->hi;
    for (std::size_t base = 0; base < P; base += R * h)
        for (std::size_t j = base; j < base + h; j += W) {
            B v[R];
            for (std::size_t t = 0; t < R; ++t) v[t] = B::load_unaligned(x + j + t * h);
            fwht_reg_stages<R>(v);
            fwht_store_registers<R, Track>(v, x + j, h, scale_out, sc, lo, hi);
        }
    if constexpr (Track) mm->lo = lo, mm->hi = hi;
}

// Scalar chunk transform for P < W (same butterflies as the reference).
inline void fwht_chunk_scalar(const float* src, float* dst, std::size_t P, const float* signs) noexcept {
    for (std::size_t i = 0; i < P; ++i) dst[i] = signs ? src[i] * signs[i] : src[i];
    for (std::size_t h = 1; h < P; h *= 2)
        for (std::size_t i = 0; i < P; i += 2 * h)
            for (std::size_t j = i; j < i + h; ++j) {
                const float u = dst[j], v = dst[j + h];
                dst[j] = u + v;
                dst[j + h] = u - v;
            }
}

// Passes fwht_chunk makes over a chunk of 2^log2P floats with 2^log2W lanes (mirrors its split).
constexpr unsigned fwht_pass_count(unsigned log2P, unsigned log2W) noexcept {
    if (log2P < log2W) return 1;
    const unsigned cross = log2P - log2W;
    unsigned rest = cross - (cross < 3 ? cross : 3), passes = 1;
    while (rest > 0) {
        const unsigned take = rest == 4 ? 2u : (rest < 3 ? rest : 3u);
        rest -= take;
        ++passes;
    }
    return passes;
}

// FWHT of one chunk of P floats from src to dst (dst may equal src), scale folded in if asked
// (and then, with Track, the min/max of the results gathered; P ≥ W only).
template <class Arch, bool Track = false>
inline void fwht_chunk(const float* src, float* dst, std::size_t P, unsigned log2P, const float* signs,
                       bool scale_out, float scale, FwhtMinMax<xsimd::batch<float, Arch>>* mm = nullptr) noexcept {
    constexpr std::size_t W = xsimd::batch<float, Arch>::size;
    if (P < W) {
        fwht_chunk_scalar(src, dst, P, signs);
        if (scale_out)
            for (std::size_t i = 0; i < P; ++i) dst[i] *= scale;
        return;
    }
    unsigned log2W = 0;
    while ((std::size_t{1} << log2W) < W) ++log2W;
    const unsigned cross = log2P - log2W; // stages across registers
    unsigned first = std::min(cross, 3u);
    unsigned rest = cross - first;
    const bool first_last = rest == 0;
    switch (first) {
    case 0: fwht_first_pass<Arch, 1, Track>(src, dst, P, signs, scale_out && first_last, scale, mm); break;
    case 1: fwht_first_pass<Arch, 2, Track>(src, dst, P, signs, scale_out && first_last, scale, mm); break;
    case 2: fwht_first_pass<Arch, 4, Track>(src, dst, P, signs, scale_out && first_last, scale, mm); break;
    default: fwht_first_pass<Arch, 8, Track>(src, dst, P, signs, scale_out && first_last, scale, mm); break;
    }
    std::size_t h = W << first;
    while (rest > 0) {
        // Radix-8 passes; a remainder of 4 stages goes as 2 + 2 rather than 3 + 1.
        const unsigned take = rest == 4 ? 2u : std::min(rest, 3u);
        rest -= take;
        const bool last = scale_out && rest == 0;
        if (take == 3) fwht_radix_pass<Arch, 8, Track>(dst, P, h, last, scale, mm);
        else if (take == 2) fwht_radix_pass<Arch, 4, Track>(dst, P, h, last, scale, mm);
        else fwht_radix_pass<Arch, 2, Track>(dst, P, h, last, scale, mm);
        h <<= take;
    }
}

// Dense m-block across chunks (row = m chunks of P), grouped by four (see FwhtPlan), for the
// lanes [b, b + V::size) of every chunk; V is a SIMD batch or float. `u` holds 16·m/4 lanes-wide
// values of scratch.
template <class V>
MQ_ALWAYS_INLINE V fwht_load(const float* p) noexcept {
    if constexpr (std::is_same_v<V, float>) return *p;
    else return V::load_unaligned(p);
}
template <class V>
MQ_ALWAYS_INLINE void fwht_store(float* p, const V& v) noexcept {
    if constexpr (std::is_same_v<V, float>) *p = v;
    else v.store_unaligned(p);
}

// Sees every final value of the dense stage before it is stored: nothing, or the running min/max.
struct FwhtNoTrack {
    static constexpr bool enabled = false;
    template <class V>
    MQ_ALWAYS_INLINE void merge(const V&, const V&) noexcept {}
    template <class V>
    MQ_ALWAYS_INLINE void operator()(const V&) noexcept {}
    template <std::size_t K, class V>
    MQ_ALWAYS_INLINE void group(const V*) noexcept {}
};
template <class B>
struct FwhtTrack {
    static constexpr bool enabled = true;
    FwhtMinMax<B>& mm;
    MQ_ALWAYS_INLINE void merge(const B& lo, const B& hi) noexcept {
        mm.lo = xsimd::min(mm.lo, lo);
        mm.hi = xsimd::max(mm.hi, hi);
    }
    MQ_ALWAYS_INLINE void operator()(const B& v) noexcept {
        mm.lo = xsimd::min(mm.lo, v);
        mm.hi = xsimd::max(mm.hi, v);
    }
    // K values: four independent partial chains, then one step on the running pair.
    template <std::size_t K>
    MQ_ALWAYS_INLINE void group(const B* v) noexcept {
        if constexpr (K < 4) {
            for (std::size_t i = 0; i < K; ++i) (*this)(v[i]);
        } else {
            B l[4] = {v[0], v[1], v[2], v[3]}, h[4] = {v[0], v[1], v[2], v[3]};
            for (std::size_t i = 4; i < K; ++i) {
                l[i % 4] = xsimd::min(l[i % 4], v[i]);
                h[i % 4] = xsimd::max(h[i % 4], v[i]);
            }
            mm.lo = xsimd::min(mm.lo, xsimd::min(xsimd::min(l[0], l[1]), xsimd::min(l[2], l[3])));
            mm.hi = xsimd::max(mm.hi, xsimd::max(xsimd::max(h[0], h[1]), xsimd::max(h[2], h[3])));
        }
    }
};

template <class V, class Tr>
MQ_ALWAYS_INLINE void fwht_dense_lanes(float* row, std::size_t m, std::size_t P, std::size_t b,
                                       const std::uint8_t* combo, float scale, V* u, Tr& track) noexcept {
    const std::size_t groups = m / 4;
    for (std::size_t g = 0; g < groups; ++g) {
        const V z0 = fwht_load<V>(row + (4 * g) * P + b), z1 = fwht_load<V>(row + (4 * g + 1) * P + b);
        const V z2 = fwht_load<V>(row + (4 * g + 2) * P + b), z3 = fwht_load<V>(row + (4 * g + 3) * P + b);
        const V a0 = z0 + z1, a1 = z0 - z1, c0 = z2 + z3, c1 = z2 - z3;
        V* s = u + 16 * g;
        // p = s1 | s2·2 | s3·4 (signs of z1, z2, z3): (s2, s3) = (0,0) +c0, (1,0) −c1, (0,1) +c1, (1,1) −c0
        s[0] = a0 + c0; s[1] = a1 + c0;
        s[2] = a0 - c1; s[3] = a1 - c1;
        s[4] = a0 + c1; s[5] = a1 + c1;
        s[6] = a0 - c0; s[7] = a1 - c0;
        for (std::size_t p = 0; p < 8; ++p) s[8 + p] = V(0) - s[p];
    }
    const V sc(scale);
    for (std::size_t j = 0; j < m; ++j) {
        const std::uint8_t* cj = combo + j * groups;
        V acc = u[cj[0]];
        for (std::size_t g = 1; g < groups; ++g) acc = acc + u[16 * g + cj[g]];
        acc = acc * sc;
        track(acc);
        fwht_store<V>(row + j * P + b, acc);
    }
}


// Compile-time copies of the small Paley blocks (prime q), so that the dense stage of the common
// Mamba factors m = 12, 20 (768, 1536, 2560, 5120, 48, 160, 192, 384) and 28, 36 is fully
// unrolled: no table lookups, no stored negations (a negative term is a subtraction). The tests
// check each equals hadamard_block(m).
template <std::size_t M>
using SignTable = std::array<std::array<signed char, M>, M>;

template <std::size_t M>
constexpr SignTable<M> paley_one_table() {
    constexpr std::int64_t q = static_cast<std::int64_t>(M) - 1;
    SignTable<M> h{};
    for (std::size_t i = 0; i < M; ++i)
        for (std::size_t j = 0; j < M; ++j) {
            int v;
            if (i == 0) v = 1;
            else if (j == 0) v = -1;
            else v = legendre(static_cast<std::int64_t>(i) - static_cast<std::int64_t>(j), q) + (i == j ? 1 : 0);
            h[i][j] = static_cast<signed char>(v);
        }
    return h;
}

template <std::size_t M>
constexpr SignTable<M> paley_two_table() {
    constexpr std::int64_t q = static_cast<std::int64_t>(M) / 2 - 1;
    constexpr std::size_t c = M / 2;
    SignTable<M> h{};
    for (std::size_t i = 0; i < c; ++i)
        for (std::size_t j = 0; j < c; ++j) {
            int v;
            if (i == 0 && j == 0) v = 0;
            else if (i == 0 || j == 0) v = 1;
            else v = legendre(static_cast<std::int64_t>(i) - static_cast<std::int64_t>(j), q);
            const int e[2][2] = {{v == 0 ? 1 : v, v == 0 ? -1 : v}, {v == 0 ? -1 : v, v == 0 ? -1 : -v}};
            for (int r = 0; r < 2; ++r)
                for (int t = 0; t < 2; ++t) h[2 * i + r][2 * j + t] = static_cast<signed char>(e[r][t]);
        }
    return h;
}

template <std::size_t M>
constexpr SignTable<M> fixed_hadamard_table() {
    if constexpr (M == 28 || M == 36) return paley_two_table<M>();
    else return paley_one_table<M>();
}

template <std::size_t M, bool Transposed>
struct FixedBlock {
    static constexpr SignTable<M> base = fixed_hadamard_table<M>();
    // H[a][j] of the applied block (Hᵀ for an inverse plan).
    static constexpr int at(std::size_t a, std::size_t j) { return Transposed ? base[j][a] : base[a][j]; }
    // Group g's pattern p for output j (see FwhtPlan) and the sign of its leading entry.
    static constexpr unsigned pattern(std::size_t g, std::size_t j) {
        unsigned p = 0;
        for (unsigned t = 1; t < 4; ++t)
            if (at(4 * g + t, j) != at(4 * g, j)) p |= 1u << (t - 1);
        return p;
    }
    static constexpr int lead(std::size_t g, std::size_t j) { return at(4 * g, j); }
};

template <std::size_t M, bool T, class V, std::size_t G, std::size_t J0, std::size_t... J>
MQ_ALWAYS_INLINE void fwht_fixed_group(const float* row, std::size_t P, std::size_t b, V* acc,
                                       std::index_sequence<J...>) noexcept {
    using F = FixedBlock<M, T>;
    const V z0 = fwht_load<V>(row + (4 * G) * P + b), z1 = fwht_load<V>(row + (4 * G + 1) * P + b);
    const V z2 = fwht_load<V>(row + (4 * G + 2) * P + b), z3 = fwht_load<V>(row + (4 * G + 3) * P + b);
    const V a0 = z0 + z1, a1 = z0 - z1, c0 = z2 + z3, c1 = z2 - z3;
    const V u[8] = {a0 + c0, a1 + c0, a0 - c1, a1 - c1, a0 + c1, a1 + c1, a0 - c0, a1 - c0};
    (([&] {
         constexpr unsigned p = F::pattern(G, J0 + J);
         if constexpr (G == 0) acc[J] = u[p];
         else if constexpr (F::lead(G, J0 + J) * F::lead(0, J0 + J) > 0) acc[J] = acc[J] + u[p];
         else acc[J] = acc[J] - u[p];
     }()),
     ...);
}

// Outputs J0 … J0 + K − 1 of lanes [b, b + V::size): y_j = lead(0, j)·(1/√n)·(u_{0,p} ± u_{1,p'} ± …),
// every index and sign a constant; y_j goes to dst + j·dst_stride.
template <std::size_t M, bool T, class V, std::size_t J0, std::size_t K, class Tr>
MQ_ALWAYS_INLINE void fwht_dense_fixed(const float* row, std::size_t P, std::size_t b, float scale, float* dst,
                                       std::size_t dst_stride, Tr& track) noexcept {
    V acc[K];
    [&]<std::size_t... G>(std::index_sequence<G...>) {
        (fwht_fixed_group<M, T, V, G, J0>(row, P, b, acc, std::make_index_sequence<K>{}), ...);
    }(std::make_index_sequence<M / 4>{});
    const V pos(scale), neg(-scale);
    [&]<std::size_t... J>(std::index_sequence<J...>) {
        ((acc[J] = acc[J] * (FixedBlock<M, T>::lead(0, J0 + J) > 0 ? pos : neg)), ...);
        ((fwht_store<V>(dst + (J0 + J) * dst_stride, acc[J])), ...);
    }(std::make_index_sequence<K>{});
    track.template group<K>(acc);
}

// The whole dense stage of a row from registers, all M outputs per lane vector at once (m = 12:
// measured faster than slicing the outputs to fit the registers, and than the buffered form
// below; for m = 20 the buffered form is ~1.5× faster).
template <std::size_t M, class V, class Tr>
inline void fwht_dense_fixed_row(float* row, std::size_t P, std::size_t step, bool transposed, float scale,
                                 Tr& track) noexcept {
    if (transposed)
        for (std::size_t b = 0; b < P; b += step) fwht_dense_fixed<M, true, V, 0, M>(row, P, b, scale, row + b, P, track);
    else
        for (std::size_t b = 0; b < P; b += step) fwht_dense_fixed<M, false, V, 0, M>(row, P, b, scale, row + b, P, track);
}

// Keeps the compiler from forwarding the buffered dense stage's pattern stores straight back into
// registers: it would then hold 8·m/4 patterns live at once and spill them in a worse order.
MQ_ALWAYS_INLINE void compiler_fence() noexcept {
#if defined(__GNUC__) || defined(__clang__)
    asm volatile("" ::: "memory");
#endif
}

// The 8 signed sums of one group (see FwhtPlan): p = s1 | s2·2 | s3·4 (signs of z1, z2, z3),
// (s2, s3) = (0,0) +c0, (1,0) −c1, (0,1) +c1, (1,1) −c0.
template <class V>
MQ_ALWAYS_INLINE void fwht_group_sums(const V& z0, const V& z1, const V& z2, const V& z3, V* s) noexcept {
    const V a0 = z0 + z1, a1 = z0 - z1, c0 = z2 + z3, c1 = z2 - z3;
    s[0] = a0 + c0; s[1] = a1 + c0;
    s[2] = a0 - c1; s[3] = a1 - c1;
    s[4] = a0 + c1; s[5] = a1 + c1;
    s[6] = a0 - c0; s[7] = a1 - c0;
}

// Phase 1 of the buffered dense stage for group G at lanes [b, b + V::size): the group's 8 sums into
// u[8G …]. With Split the chunks' last butterfly stage (h = P/2) is done here too, on the way:
// z = lo + hi feeds the sums for lanes b (u[8G …]), lo − hi those for lanes b + P/2 (u[2M + 8G …]);
// the same additions the butterfly pass would do, so the result is the same to the bit.
template <std::size_t M, class V, bool Split, std::size_t G>
MQ_ALWAYS_INLINE void fwht_buffered_group(const float* row, std::size_t P, std::size_t b, V* u) noexcept {
    const float* c = row + 4 * G * P + b;
    if constexpr (Split) {
        const std::size_t h = P / 2;
        V z[4], d[4];
        for (std::size_t t = 0; t < 4; ++t) {
            const V lo = fwht_load<V>(c + t * P), hi = fwht_load<V>(c + t * P + h);
            z[t] = lo + hi;
            d[t] = lo - hi;
        }
        fwht_group_sums(z[0], z[1], z[2], z[3], u + 8 * G);
        fwht_group_sums(d[0], d[1], d[2], d[3], u + 2 * M + 8 * G);
    } else {
        fwht_group_sums(fwht_load<V>(c), fwht_load<V>(c + P), fwht_load<V>(c + 2 * P), fwht_load<V>(c + 3 * P),
                        u + 8 * G);
    }
}

// Phase 2: y_j = lead(0, j)·(1/√n)·(u_{0,p} ± u_{1,p'} ± …), summed in group order (as the register
// form fwht_dense_fixed does), every index and sign a constant.
template <std::size_t M, bool T, class V, std::size_t J, std::size_t... G>
MQ_ALWAYS_INLINE V fwht_buffered_output(const V* u, std::index_sequence<G...>) noexcept {
    using F = FixedBlock<M, T>;
    V acc = u[F::pattern(0, J)];
    (([&] {
         constexpr std::size_t g = G + 1;
         if constexpr (F::lead(g, J) * F::lead(0, J) > 0) acc = acc + u[8 * g + F::pattern(g, J)];
         else acc = acc - u[8 * g + F::pattern(g, J)];
     }()),
     ...);
    return acc;
}

template <std::size_t M, bool T, class V, class Tr, std::size_t... J>
MQ_ALWAYS_INLINE void fwht_buffered_outputs(const V* u, float scale, float* dst, std::size_t P, Tr& track,
                                            std::index_sequence<J...>) noexcept {
    const V pos(scale), neg(-scale);
    // K independent min/max chains: one chain through m outputs would serialize them (1, 2 and 4
    // chains measured alike for m = 20; 4 leaves the most room to the scheduler).
    constexpr std::size_t K = 4;
    V lo[K], hi[K];
    (([&] {
         V y = fwht_buffered_output<M, T, V, J>(u, std::make_index_sequence<M / 4 - 1>{});
         y = y * (FixedBlock<M, T>::lead(0, J) > 0 ? pos : neg);
         if constexpr (Tr::enabled) {
             if constexpr (J < K) lo[J] = y, hi[J] = y;
             else lo[J % K] = xsimd::min(lo[J % K], y), hi[J % K] = xsimd::max(hi[J % K], y);
         }
         fwht_store<V>(dst + J * P, y);
     }()),
     ...);
    if constexpr (Tr::enabled) {
        for (std::size_t k = 1; k < K; ++k) lo[0] = xsimd::min(lo[0], lo[k]), hi[0] = xsimd::max(hi[0], hi[k]);
        track.merge(lo[0], hi[0]);
    }
}

// The dense stage of a row through a stack buffer u (2·M batches; 4·M with Split): all groups'
// sums stored first, then each output reads its M/4 terms back. Costs a store and a load per sum
// but keeps every value in a register while it is used (m = 20 held in registers spilled 20
// accumulators on every group: the buffered form measured ~1.5× faster).
template <std::size_t M, bool T, bool Split, class V, class Tr>
inline void fwht_dense_buffered_row(float* row, std::size_t P, float scale, V* u, Tr& track) noexcept {
    const std::size_t end = Split ? P / 2 : P;
    for (std::size_t b = 0; b < end; b += V::size) {
        [&]<std::size_t... G>(std::index_sequence<G...>) {
            (fwht_buffered_group<M, V, Split, G>(row, P, b, u), ...);
        }(std::make_index_sequence<M / 4>{});
        compiler_fence();
        fwht_buffered_outputs<M, T, V>(u, scale, row + b, P, track, std::make_index_sequence<M>{});
        if constexpr (Split)
            fwht_buffered_outputs<M, T, V>(u + 2 * M, scale, row + b + P / 2, P, track, std::make_index_sequence<M>{});
        compiler_fence();
    }
}

// Prefetch a row into L2 (a row of up to 8192 floats plus the current one would crowd L1).
inline void prefetch_row(const float* p, std::size_t n) noexcept {
#if defined(__GNUC__) || defined(__clang__)
    for (std::size_t i = 0; i < n; i += 64 / sizeof(float)) __builtin_prefetch(p + i, 1, 2);
#else
    (void)p;
    (void)n;
#endif
}

} // namespace detail

namespace detail {
// Steps 3–4 of FwhtPlan on one row whose chunks are transformed: the dense block (m > 1) with the
// scale, and the signs of an inverse randomized plan.
// With Track, gathers the min/max of the final values into *mm and returns true when it could (the
// SIMD dense path; the scalar path for 2^k < W and an inverse randomized plan return false).
// Largest fixed block whose dense stage runs from registers (fwht_dense_fixed_row); larger ones go
// through the stack buffer (fwht_dense_buffered_row).
inline constexpr std::size_t kFwhtRegisterBlockMax = 12;

// Whether the dense stage takes over the chunks' last butterfly stage (h = P/2, see
// fwht_buffered_group): when that stage would cost a pass of its own over the row (P = 128, the
// chunk size of 1536 and 2560: one pass over halves of 64 instead of a pass plus a radix-2 pass).
// Needs a fixed block buffered (m ∈ {20, 28, 36}; m = 12 runs faster from registers unsplit).
template <class Arch>
inline bool fwht_split_last_stage(const FwhtPlan& plan) noexcept {
    constexpr std::size_t W = xsimd::batch<float, Arch>::size;
    unsigned log2W = 0;
    while ((std::size_t{1} << log2W) < W) ++log2W;
    const std::size_t m = plan.factors.m, P = plan.factors.pow2;
    const unsigned log2P = plan.factors.log2_pow2;
    const bool fixed = m == 12 || m == 20 || m == 28 || m == 36;
    return fixed && m > kFwhtRegisterBlockMax && P >= 2 * W && fwht_pass_count(log2P - 1, log2W) < fwht_pass_count(log2P, log2W);
}

// Step 2 of FwhtPlan on one row, src → dst (may be the same): the butterflies of each chunk,
// all but the last stage when `split` (the dense stage does it), scale folded in when m = 1.
template <class Arch, bool Track = false>
inline void fwht_chunk_stage(const float* src, float* dst, const FwhtPlan& plan, bool split,
                             FwhtMinMax<xsimd::batch<float, Arch>>* mm = nullptr) noexcept {
    const std::size_t m = plan.factors.m;
    // Stages h < P/2 act on each half of a chunk separately: 2m chunks of P/2.
    const std::size_t chunks = split ? 2 * m : m, C = split ? plan.factors.pow2 / 2 : plan.factors.pow2;
    const unsigned log2C = split ? plan.factors.log2_pow2 - 1 : plan.factors.log2_pow2;
    const float* signs = plan.randomized() && !plan.inverse ? plan.signs.data() : nullptr;
    for (std::size_t a = 0; a < chunks; ++a)
        fwht_chunk<Arch, Track>(src + a * C, dst + a * C, C, log2C, signs ? signs + a * C : nullptr, m == 1,
                                plan.scale, mm);
}

template <class Arch, bool Track = false>
inline bool fwht_dense_stage(float* row, const FwhtPlan& plan, bool split, xsimd::batch<float, Arch>* u_vec,
                             float* u_scalar, FwhtMinMax<xsimd::batch<float, Arch>>* mm = nullptr) noexcept {
    using B = xsimd::batch<float, Arch>;
    constexpr std::size_t W = B::size;
    const std::size_t m = plan.factors.m, P = plan.factors.pow2;
    bool tracked = false;
    if (m > 1 && P % W == 0) {
        FwhtMinMax<B> local;
        if constexpr (Track) local = *mm;
        FwhtTrack<B> track_on{local};
        FwhtNoTrack track_off;
        auto run = [&](auto& track) {
            auto fixed = [&]<std::size_t M>(std::integral_constant<std::size_t, M>) {
                auto buffered = [&]<bool T>(std::bool_constant<T>) {
                    if (split) fwht_dense_buffered_row<M, T, true>(row, P, plan.scale, u_vec, track);
                    else fwht_dense_buffered_row<M, T, false>(row, P, plan.scale, u_vec, track);
                };
                if (split || M > kFwhtRegisterBlockMax) {
                    if (plan.inverse) buffered(std::true_type{});
                    else buffered(std::false_type{});
                } else {
                    fwht_dense_fixed_row<M, B>(row, P, W, plan.inverse, plan.scale, track);
                }
            };
            switch (m) {
            case 12: fixed(std::integral_constant<std::size_t, 12>{}); break;
            case 20: fixed(std::integral_constant<std::size_t, 20>{}); break;
            case 28: fixed(std::integral_constant<std::size_t, 28>{}); break;
            case 36: fixed(std::integral_constant<std::size_t, 36>{}); break;
            default:
                for (std::size_t b = 0; b < P; b += W)
                    fwht_dense_lanes<B>(row, m, P, b, plan.combo.data(), plan.scale, u_vec, track);
            }
        };
        if constexpr (Track) {
            run(track_on);
            *mm = local;
            tracked = true;
        } else {
            run(track_off);
        }
    } else if (m > 1) {
        FwhtNoTrack track_off;
        for (std::size_t b = 0; b < P; ++b)
            fwht_dense_lanes<float>(row, m, P, b, plan.combo.data(), plan.scale, u_scalar, track_off);
    }
    if (plan.randomized() && plan.inverse) {
        const std::size_t n = plan.n, vec_end = simd_floor<Arch>(n);
        for (std::size_t i = 0; i < vec_end; i += W)
            (B::load_unaligned(row + i) * B::load_unaligned(plan.signs.data() + i)).store_unaligned(row + i);
        for (std::size_t i = vec_end; i < n; ++i) row[i] *= plan.signs[i];
        tracked = false;
    }
    return tracked;
}
} // namespace detail

namespace detail {

template <class Arch>
inline void reduce_min_max(const FwhtMinMax<xsimd::batch<float, Arch>>& mm, float& lo, float& hi) noexcept {
    constexpr std::size_t W = xsimd::batch<float, Arch>::size;
#if XSIMD_WITH_AVX
    // A shuffle tree: the row's parameters wait on this, so its latency is what counts.
    if constexpr (std::is_base_of_v<xsimd::avx, Arch> && W == 8) {
        __m256 l = mm.lo, h = mm.hi;
        l = _mm256_min_ps(l, _mm256_permute2f128_ps(l, l, 0x01));
        h = _mm256_max_ps(h, _mm256_permute2f128_ps(h, h, 0x01));
        l = _mm256_min_ps(l, _mm256_permute_ps(l, 0x4E));
        h = _mm256_max_ps(h, _mm256_permute_ps(h, 0x4E));
        l = _mm256_min_ps(l, _mm256_permute_ps(l, 0xB1));
        h = _mm256_max_ps(h, _mm256_permute_ps(h, 0xB1));
        lo = _mm256_cvtss_f32(l);
        hi = _mm256_cvtss_f32(h);
        return;
    }
#endif
    alignas(64) float ls[W], hs[W];
    mm.lo.store_aligned(ls);
    mm.hi.store_aligned(hs);
    lo = ls[0];
    hi = hs[0];
    for (std::size_t k = 1; k < W; ++k) {
        lo = std::min(lo, ls[k]);
        hi = std::max(hi, hs[k]);
    }
}

} // namespace detail
// ---------------------------------------------------------------------------------------------
// AVX-512 (the avx512vnni tag): the chunks' butterflies on 16-lane registers, 32 of them.
// ---------------------------------------------------------------------------------------------
// Intrinsics in a `#pragma GCC target` region rather than xsimd: xsimd 8.1 declares its AVX-512
// batches only in a TU built with -mavx512f, and a generic template defined outside the region
// cannot be instantiated with AVX-512 code (GCC refuses to inline target code into it), so the
// header stays one TU-independent file with the AVX-512 part written out here. Every function is
// a template on the arch tag (see MQ_AVX512VNNI_BEGIN). The butterflies are the reference's
// additions (each output the same tree of ±, however the stages are grouped into passes) and the
// scale the same multiply, so the results equal the AVX2 path's and fwht_ref's bit for bit; the
// dense m-block runs the AVX2 code, called (AVX2 code may run inside AVX-512 code, not the
// reverse) for the blocks without a 16-lane form. 16 lanes halve the shuffles and adds per
// element and 16-register passes need fewer trips over the row (n = 1024: 2 instead of 3).
#if MQ_HAS_AVX512VNNI_KERNELS
MQ_AVX512VNNI_BEGIN
namespace detail {

// x_{i^h} for every lane i (h = 1, 2: within 128-bit lanes; 4, 8: across them). The masked forms
// with all lanes set: the plain ones pass _mm512_undefined_ps(), on which g++ 12 -O2 warns
// -Wmaybe-uninitialized (GCC bug 105593).
template <class Arch, unsigned H>
MQ_ALWAYS_INLINE __m512 fwht16_swap(__m512 v) noexcept {
    constexpr __mmask16 all = 0xFFFF;
    if constexpr (H == 1) return _mm512_mask_permute_ps(v, all, v, 0xB1);
    else if constexpr (H == 2) return _mm512_mask_permute_ps(v, all, v, 0x4E);
    else if constexpr (H == 4) return _mm512_mask_shuffle_f32x4(v, all, v, v, 0xB1);
    else return _mm512_mask_shuffle_f32x4(v, all, v, v, 0x4E);
}

template <class Arch>
MQ_ALWAYS_INLINE __m512 fwht16_min(__m512 a, __m512 b) noexcept {
    return _mm512_mask_min_ps(a, 0xFFFF, a, b);
}
template <class Arch>
MQ_ALWAYS_INLINE __m512 fwht16_max(__m512 a, __m512 b) noexcept {
    return _mm512_mask_max_ps(a, 0xFFFF, a, b);
}
// min (Max = false) or max over the 16 lanes, as a shuffle tree.
template <class Arch, bool Max>
MQ_ALWAYS_INLINE float fwht16_reduce(__m512 v) noexcept {
    // (No lambda: g++ 12 compiles a lambda's body without the enclosing target.)
    if constexpr (Max) {
        v = fwht16_max<Arch>(v, fwht16_swap<Arch, 8>(v));
        v = fwht16_max<Arch>(v, fwht16_swap<Arch, 4>(v));
        v = fwht16_max<Arch>(v, fwht16_swap<Arch, 2>(v));
        v = fwht16_max<Arch>(v, fwht16_swap<Arch, 1>(v));
    } else {
        v = fwht16_min<Arch>(v, fwht16_swap<Arch, 8>(v));
        v = fwht16_min<Arch>(v, fwht16_swap<Arch, 4>(v));
        v = fwht16_min<Arch>(v, fwht16_swap<Arch, 2>(v));
        v = fwht16_min<Arch>(v, fwht16_swap<Arch, 1>(v));
    }
    return _mm512_cvtss_f32(v);
}

// The ±1 of each in-register stage (−1 where lane bit h is set), kept in registers by the passes.
template <class Arch>
struct Fwht16Signs {
    __m512 s[4];
    MQ_ALWAYS_INLINE Fwht16Signs() noexcept {
        const __m512 one = _mm512_set1_ps(1.0f), neg = _mm512_set1_ps(-1.0f);
        for (unsigned b = 0; b < 4; ++b) {
            const auto mask = static_cast<__mmask16>(b == 0 ? 0xAAAA : b == 1 ? 0xCCCC : b == 2 ? 0xF0F0 : 0xFF00);
            s[b] = _mm512_mask_blend_ps(mask, one, neg);
        }
    }
};

// Stages h = 1, 2, 4, 8 in one register: fma(x, ±1, swap(x)), exactly the add or subtract.
template <class Arch>
MQ_ALWAYS_INLINE __m512 fwht16_lane_stages(__m512 v, const Fwht16Signs<Arch>& sg) noexcept {
    v = _mm512_fmadd_ps(v, sg.s[0], fwht16_swap<Arch, 1>(v));
    v = _mm512_fmadd_ps(v, sg.s[1], fwht16_swap<Arch, 2>(v));
    v = _mm512_fmadd_ps(v, sg.s[2], fwht16_swap<Arch, 4>(v));
    return _mm512_fmadd_ps(v, sg.s[3], fwht16_swap<Arch, 8>(v));
}

// Butterflies across R registers (strides 1 … R/2), unrolled so the values stay in registers.
template <class Arch, std::size_t H, std::size_t... P>
MQ_ALWAYS_INLINE void fwht16_reg_stage(__m512* v, std::index_sequence<P...>) noexcept {
    (([&] {
         constexpr std::size_t i = (P / H) * 2 * H + P % H;
         const __m512 a = v[i], b = v[i + H];
         v[i] = _mm512_add_ps(a, b);
         v[i + H] = _mm512_sub_ps(a, b);
     }()),
     ...);
}
template <class Arch, std::size_t R, std::size_t H = 1>
MQ_ALWAYS_INLINE void fwht16_reg_stages(__m512* v) noexcept {
    if constexpr (H < R) {
        fwht16_reg_stage<Arch, H>(v, std::make_index_sequence<R / 2>{});
        fwht16_reg_stages<Arch, R, 2 * H>(v);
    }
}

// Running min/max of a row's final values (as FwhtMinMax, 16 lanes).
template <class Arch>
struct Fwht16MinMax {
    __m512 lo, hi;
    // Written out: an implicit constructor would be compiled outside the AVX-512 region.
    MQ_ALWAYS_INLINE Fwht16MinMax() noexcept
        : lo(_mm512_set1_ps(std::numeric_limits<float>::infinity())),
          hi(_mm512_set1_ps(-std::numeric_limits<float>::infinity())) {}
};

// min (Max = false) or max of v[0 … N−1] as a tree, v[i] with v[i + N/2] first: written as a
// compile-time recursion so that it stays in registers (a loop nest over a local array was
// neither unrolled nor kept in registers by g++ 12 for N = 16: ~100 stack accesses per step).
template <class Arch, bool Max, std::size_t... I>
MQ_ALWAYS_INLINE void fwht16_fold_level(const __m512* v, __m512* u, std::index_sequence<I...>) noexcept {
    constexpr std::size_t half = sizeof...(I);
    if constexpr (Max) ((u[I] = fwht16_max<Arch>(v[I], v[I + half])), ...);
    else ((u[I] = fwht16_min<Arch>(v[I], v[I + half])), ...);
}
template <class Arch, bool Max, std::size_t N>
MQ_ALWAYS_INLINE __m512 fwht16_fold(const __m512* v) noexcept {
    if constexpr (N == 1) {
        return v[0];
    } else {
        __m512 u[N / 2];
        fwht16_fold_level<Arch, Max>(v, u, std::make_index_sequence<N / 2>{});
        return fwht16_fold<Arch, Max, N / 2>(u);
    }
}

// The end of a pass: on the row's last pass scale (and with Track gather min/max as a tree), then
// store v[t] at dst + t·stride.
template <class Arch, std::size_t R, bool Track>
MQ_ALWAYS_INLINE void fwht16_store(__m512* v, float* dst, std::size_t stride, bool scale_out, __m512 sc,
                                   Fwht16MinMax<Arch>& mm) noexcept {
    if (scale_out) {
        for (std::size_t t = 0; t < R; ++t) v[t] = _mm512_mul_ps(v[t], sc);
        if constexpr (Track) {
            mm.lo = fwht16_min<Arch>(mm.lo, fwht16_fold<Arch, false, R>(v));
            mm.hi = fwht16_max<Arch>(mm.hi, fwht16_fold<Arch, true, R>(v));
        }
    }
    for (std::size_t t = 0; t < R; ++t) _mm512_storeu_ps(dst + t * stride, v[t]);
}

// First pass over a chunk of P ≥ 16 floats: G = min(16, P/16) registers from src (times the
// signs), the four in-register stages and log2(G) cross-register stages, stored to dst; next
// (or null): the next row's chunk, prefetched into L1 line by line as this one is loaded.
template <class Arch, std::size_t G, bool Track>
inline void fwht16_first_pass(const float* src, float* dst, std::size_t P, const float* signs, bool scale_out,
                              float scale, Fwht16MinMax<Arch>& mm, const float* next) noexcept {
    const Fwht16Signs<Arch> sg;
    const __m512 sc = _mm512_set1_ps(scale);
    for (std::size_t base = 0; base < P; base += G * 16) {
        __m512 v[G];
        for (std::size_t t = 0; t < G; ++t) {
            v[t] = _mm512_loadu_ps(src + base + t * 16);
            if (next) _mm_prefetch(reinterpret_cast<const char*>(next + base + t * 16), _MM_HINT_T0);
            if (signs) v[t] = _mm512_mul_ps(v[t], _mm512_loadu_ps(signs + base + t * 16));
            v[t] = fwht16_lane_stages<Arch>(v[t], sg);
        }
        fwht16_reg_stages<Arch, G>(v);
        fwht16_store<Arch, G, Track>(v, dst + base, 16, scale_out, sc, mm);
    }
}

// Stages h, 2h, …, (R/2)·h in one pass over a chunk of P floats; next (or null): the next row's
// chunk, prefetched into L2 at the offsets this pass loads (a pass touches every line once).
template <class Arch, std::size_t R, bool Track>
inline void fwht16_radix_pass(float* x, std::size_t P, std::size_t h, bool scale_out, float scale,
                              Fwht16MinMax<Arch>& mm, const float* next = nullptr) noexcept {
    const __m512 sc = _mm512_set1_ps(scale);
    for (std::size_t base = 0; base < P; base += R * h)
        for (std::size_t j = base; j < base + h; j += 16) {
            __m512 v[R];
            for (std::size_t t = 0; t < R; ++t) {
                v[t] = _mm512_loadu_ps(x + j + t * h);
                if (next) _mm_prefetch(reinterpret_cast<const char*>(next + j + t * h), _MM_HINT_T1);
            }
            fwht16_reg_stages<Arch, R>(v);
            fwht16_store<Arch, R, Track>(v, x + j, h, scale_out, sc, mm);
        }
}

// Passes fwht16_chunk makes over 2^log2P floats: one for up to 2^8 = 16 registers of 16, then
// radix-16 at most, the remaining stages spread evenly.
constexpr unsigned fwht16_pass_count(unsigned log2P) noexcept {
    if (log2P <= 8) return 1;
    return 1 + (log2P - 8 + 3) / 4;
}

// Rows of at least this many floats ask for the next row while this one is transformed (a batch
// of 1024 such rows is beyond L2). One prefetch per line, spread over a pass rather than issued
// as a burst at the start of the row (prefetch_row, the AVX2 path's way): a burst of 128–512
// prefetches fills the line-fill queue and stalls the row's own loads. Where: `next_late` = false puts them
// in the first pass, into L1 (in-place fwht: measured best), true in the last pass, into L2 (the
// fused kernel, whose first pass already streams its source row in: measured best there).
// Measured (Xeon, AVX-512 path, 1024 rows, load 2–5, medians of 4, ns/element) burst / none /
// spread as chosen: fwht 4096 0.377 / 0.305 / 0.275, 8192 0.463 / 0.596 / 0.362; fused 4096
// 0.517 / 0.416–0.466 / 0.414, 8192 0.906 / 0.956–1.14 / 0.535. Below 2048, none / spread:
// fwht 768 0.284 / 0.258, 1024 0.224 / 0.207, 1536 0.317 / 0.255; fused 768 0.399 / 0.364,
// 1024 0.302 / 0.301, 1536 0.410 / 0.355.
inline constexpr std::size_t kFwht16PrefetchMin = 512;

// FWHT of one chunk of P ≥ 16 floats from src to dst (may be equal), the scale folded into the
// last pass when asked (and then, with Track, the min/max gathered). next: the same chunk of the
// next row to prefetch (or null), in the first pass or, with next_late, the last.
template <class Arch, bool Track>
inline void fwht16_chunk(const float* src, float* dst, std::size_t P, unsigned log2P, const float* signs,
                         bool scale_out, float scale, Fwht16MinMax<Arch>& mm, const float* next,
                         bool next_late) noexcept {
    const unsigned cross = log2P - 4;
    const unsigned first = std::min(cross, 4u);
    unsigned rest = cross - first;
    const bool first_last = scale_out && rest == 0;
    const float* next_first = next_late && rest > 0 ? nullptr : next;
    switch (first) {
    case 0: fwht16_first_pass<Arch, 1, Track>(src, dst, P, signs, first_last, scale, mm, next_first); break;
    case 1: fwht16_first_pass<Arch, 2, Track>(src, dst, P, signs, first_last, scale, mm, next_first); break;
    case 2: fwht16_first_pass<Arch, 4, Track>(src, dst, P, signs, first_last, scale, mm, next_first); break;
    case 3: fwht16_first_pass<Arch, 8, Track>(src, dst, P, signs, first_last, scale, mm, next_first); break;
    default: fwht16_first_pass<Arch, 16, Track>(src, dst, P, signs, first_last, scale, mm, next_first); break;
    }
    std::size_t h = std::size_t{16} << first;
    unsigned passes = (rest + 3) / 4;
    while (rest > 0) {
        const unsigned take = (rest + passes - 1) / passes;
        rest -= take;
        --passes;
        const bool last = scale_out && rest == 0;
        const float* nx = next_late && rest == 0 ? next : nullptr;
        switch (take) {
        case 1: fwht16_radix_pass<Arch, 2, Track>(dst, P, h, last, scale, mm, nx); break;
        case 2: fwht16_radix_pass<Arch, 4, Track>(dst, P, h, last, scale, mm, nx); break;
        case 3: fwht16_radix_pass<Arch, 8, Track>(dst, P, h, last, scale, mm, nx); break;
        default: fwht16_radix_pass<Arch, 16, Track>(dst, P, h, last, scale, mm, nx); break;
        }
        h <<= take;
    }
}

// The dense m-block at 16 lanes for the compile-time blocks m = 12, 20, 28, 36 (the Mamba sizes'
// factors), the AVX2 code's arithmetic in its order: each group's 8 signed sums, then every output
// the sum of its groups' terms in group order, times ±1/√n. m = 12 from registers, the others
// through the stack buffer u (with the chunks' last stage folded in when split); see
// fwht_dense_fixed_row and fwht_dense_buffered_row for why each form.
template <class Arch>
MQ_ALWAYS_INLINE void fwht16_group_sums(__m512 z0, __m512 z1, __m512 z2, __m512 z3, __m512* s) noexcept {
    const __m512 a0 = _mm512_add_ps(z0, z1), a1 = _mm512_sub_ps(z0, z1);
    const __m512 c0 = _mm512_add_ps(z2, z3), c1 = _mm512_sub_ps(z2, z3);
    s[0] = _mm512_add_ps(a0, c0), s[1] = _mm512_add_ps(a1, c0);
    s[2] = _mm512_sub_ps(a0, c1), s[3] = _mm512_sub_ps(a1, c1);
    s[4] = _mm512_add_ps(a0, c1), s[5] = _mm512_add_ps(a1, c1);
    s[6] = _mm512_sub_ps(a0, c0), s[7] = _mm512_sub_ps(a1, c0);
}

template <class Arch>
MQ_ALWAYS_INLINE void fwht16_group_sums_at(const float* c, std::size_t P, __m512* s) noexcept {
    fwht16_group_sums<Arch>(_mm512_loadu_ps(c), _mm512_loadu_ps(c + P), _mm512_loadu_ps(c + 2 * P),
                            _mm512_loadu_ps(c + 3 * P), s);
}

// acc (+|−)= group G's term of output J (the first group sets it); ug: group G's 8 sums.
template <class Arch, std::size_t M, bool T, std::size_t G, std::size_t J>
MQ_ALWAYS_INLINE void fwht16_term(__m512& acc, const __m512* ug) noexcept {
    using F = FixedBlock<M, T>;
    constexpr unsigned p = F::pattern(G, J);
    if constexpr (G == 0) acc = ug[p];
    else if constexpr (F::lead(G, J) * F::lead(0, J) > 0) acc = _mm512_add_ps(acc, ug[p]);
    else acc = _mm512_sub_ps(acc, ug[p]);
}
template <class Arch, std::size_t M, bool T, std::size_t G, std::size_t... J>
MQ_ALWAYS_INLINE void fwht16_group_terms(const __m512* ug, __m512* acc, std::index_sequence<J...>) noexcept {
    (fwht16_term<Arch, M, T, G, J>(acc[J], ug), ...);
}
// Output J from the buffer: its terms in group order.
template <class Arch, std::size_t M, bool T, std::size_t J, std::size_t... G>
MQ_ALWAYS_INLINE void fwht16_output_terms(const __m512* u, __m512& acc, std::index_sequence<G...>) noexcept {
    (fwht16_term<Arch, M, T, G, J>(acc, u + 8 * G), ...);
}

// Final value of output J: times lead(0, J)/√n, min/max gathered in four chains, stored.
template <class Arch, std::size_t M, bool T, bool Track, std::size_t J>
MQ_ALWAYS_INLINE void fwht16_emit(__m512 y, __m512 pos, __m512 neg, float* dst, std::size_t P, __m512* lo,
                                  __m512* hi) noexcept {
    y = _mm512_mul_ps(y, FixedBlock<M, T>::lead(0, J) > 0 ? pos : neg);
    if constexpr (Track) {
        if constexpr (J < 4) lo[J] = y, hi[J] = y;
        else lo[J % 4] = fwht16_min<Arch>(lo[J % 4], y), hi[J % 4] = fwht16_max<Arch>(hi[J % 4], y);
    }
    _mm512_storeu_ps(dst + J * P, y);
}
template <class Arch, bool Track>
MQ_ALWAYS_INLINE void fwht16_merge(const __m512* lo, const __m512* hi, Fwht16MinMax<Arch>& mm) noexcept {
    if constexpr (Track) {
        mm.lo = fwht16_min<Arch>(mm.lo, fwht16_min<Arch>(fwht16_min<Arch>(lo[0], lo[1]), fwht16_min<Arch>(lo[2], lo[3])));
        mm.hi = fwht16_max<Arch>(mm.hi, fwht16_max<Arch>(fwht16_max<Arch>(hi[0], hi[1]), fwht16_max<Arch>(hi[2], hi[3])));
    }
}

// Register form, lanes [b, b + 16) of every chunk: all M outputs accumulate while the groups pass.
template <class Arch, std::size_t M, bool T, bool Track, std::size_t... G, std::size_t... J>
MQ_ALWAYS_INLINE void fwht16_fixed_lanes(float* row, std::size_t P, std::size_t b, __m512 pos, __m512 neg,
                                         Fwht16MinMax<Arch>& mm, std::index_sequence<G...>,
                                         std::index_sequence<J...> js) noexcept {
    __m512 acc[M], u[8 * sizeof...(G)];
    ((fwht16_group_sums_at<Arch>(row + 4 * G * P + b, P, u + 8 * G),
      fwht16_group_terms<Arch, M, T, G>(u + 8 * G, acc, js)),
     ...);
    __m512 lo[4], hi[4];
    (fwht16_emit<Arch, M, T, Track, J>(acc[J], pos, neg, row + b, P, lo, hi), ...);
    fwht16_merge<Arch, Track>(lo, hi, mm);
}

// Buffered form: all groups' sums stored to u first (the fence keeps them there, as in
// fwht_dense_buffered_row), then each output reads its M/4 terms back. Split: the chunks' last
// butterfly stage on the way (z = lo + hi for lanes b, lo − hi for lanes b + P/2 into u + 2M).
template <class Arch, std::size_t M, bool Split, std::size_t G>
MQ_ALWAYS_INLINE void fwht16_buffered_group(const float* row, std::size_t P, std::size_t b, __m512* u) noexcept {
    const float* c = row + 4 * G * P + b;
    if constexpr (Split) {
        const std::size_t h = P / 2;
        __m512 z[4], d[4];
        for (std::size_t t = 0; t < 4; ++t) {
            const __m512 lo = _mm512_loadu_ps(c + t * P), hi = _mm512_loadu_ps(c + t * P + h);
            z[t] = _mm512_add_ps(lo, hi);
            d[t] = _mm512_sub_ps(lo, hi);
        }
        fwht16_group_sums<Arch>(z[0], z[1], z[2], z[3], u + 8 * G);
        fwht16_group_sums<Arch>(d[0], d[1], d[2], d[3], u + 2 * M + 8 * G);
    } else {
        fwht16_group_sums_at<Arch>(c, P, u + 8 * G);
    }
}
template <class Arch, std::size_t M, bool T, bool Track, std::size_t... J>
MQ_ALWAYS_INLINE void fwht16_buffered_outputs(const __m512* u, __m512 pos, __m512 neg, float* dst, std::size_t P,
                                              Fwht16MinMax<Arch>& mm, std::index_sequence<J...>) noexcept {
    __m512 lo[4], hi[4];
    (([&] {
         __m512 acc;
         fwht16_output_terms<Arch, M, T, J>(u, acc, std::make_index_sequence<M / 4>{});
         fwht16_emit<Arch, M, T, Track, J>(acc, pos, neg, dst, P, lo, hi);
     }()),
     ...);
    fwht16_merge<Arch, Track>(lo, hi, mm);
}
template <class Arch, std::size_t M, bool T, bool Split, bool Track, std::size_t... G>
inline void fwht16_dense_buffered_row(float* row, std::size_t P, float scale, Fwht16MinMax<Arch>& mm,
                                      std::index_sequence<G...>) noexcept {
    alignas(64) __m512 u[4 * M];
    const __m512 pos = _mm512_set1_ps(scale), neg = _mm512_set1_ps(-scale);
    const std::size_t end = Split ? P / 2 : P;
    for (std::size_t b = 0; b < end; b += 16) {
        (fwht16_buffered_group<Arch, M, Split, G>(row, P, b, u), ...);
        compiler_fence();
        fwht16_buffered_outputs<Arch, M, T, Track>(u, pos, neg, row + b, P, mm, std::make_index_sequence<M>{});
        if constexpr (Split)
            fwht16_buffered_outputs<Arch, M, T, Track>(u + 2 * M, pos, neg, row + b + P / 2, P, mm,
                                                       std::make_index_sequence<M>{});
        compiler_fence();
    }
}

// The dense stage of a row at 16 lanes, when m is a compile-time block and 16 divides 2^k (false:
// not done, the caller runs the AVX2 code).
template <class Arch, bool Track>
inline bool fwht16_dense_stage(float* row, const FwhtPlan& plan, bool split, Fwht16MinMax<Arch>& mm) noexcept {
    const std::size_t m = plan.factors.m, P = plan.factors.pow2;
    if (P % 16 != 0 || !(m == 12 || m == 20 || m == 28 || m == 36)) return false;
    auto fixed = [&]<std::size_t M, bool T>(std::integral_constant<std::size_t, M>, std::bool_constant<T>) {
        if constexpr (M <= kFwhtRegisterBlockMax) {
            const __m512 pos = _mm512_set1_ps(plan.scale), neg = _mm512_set1_ps(-plan.scale);
            for (std::size_t b = 0; b < P; b += 16)
                fwht16_fixed_lanes<Arch, M, T, Track>(row, P, b, pos, neg, mm, std::make_index_sequence<M / 4>{},
                                                      std::make_index_sequence<M>{});
        } else if (split) {
            fwht16_dense_buffered_row<Arch, M, T, true, Track>(row, P, plan.scale, mm, std::make_index_sequence<M / 4>{});
        } else {
            fwht16_dense_buffered_row<Arch, M, T, false, Track>(row, P, plan.scale, mm, std::make_index_sequence<M / 4>{});
        }
    };
    auto block = [&]<std::size_t M>(std::integral_constant<std::size_t, M> mc) {
        if (plan.inverse) fixed(mc, std::true_type{});
        else fixed(mc, std::false_type{});
    };
    switch (m) {
    case 12: block(std::integral_constant<std::size_t, 12>{}); break;
    case 20: block(std::integral_constant<std::size_t, 20>{}); break;
    case 28: block(std::integral_constant<std::size_t, 28>{}); break;
    default: block(std::integral_constant<std::size_t, 36>{}); break;
    }
    return true;
}

// Whether the dense stage takes over the chunks' last butterfly stage (fwht_split_last_stage's
// rule with 16-lane passes): only when that saves a pass over the row.
template <class Arch>
inline bool fwht16_split_last_stage(const FwhtPlan& plan) noexcept {
    const std::size_t m = plan.factors.m, P = plan.factors.pow2;
    const bool fixed = m == 20 || m == 28 || m == 36;
    return fixed && P >= 32 && fwht16_pass_count(plan.factors.log2_pow2 - 1) < fwht16_pass_count(plan.factors.log2_pow2);
}

// One row, src → dst (may be equal): chunks at 16 lanes, then the dense stage and the inverse
// signs (the AVX2 code); next/next_late: the next row to prefetch (see kFwht16PrefetchMin). With
// Track, returns true and the row's min/max in lo, hi when the last pass could gather them (else
// the caller finds them).
template <class Arch, bool Track>
inline bool fwht16_row(const float* src, float* dst, const FwhtPlan& plan, bool split,
                       xsimd::batch<float, avx2>* u_vec, float* u_scalar, float& lo, float& hi, const float* next,
                       bool next_late) noexcept {
    const std::size_t m = plan.factors.m;
    const std::size_t chunks = split ? 2 * m : m, C = split ? plan.factors.pow2 / 2 : plan.factors.pow2;
    const unsigned log2C = split ? plan.factors.log2_pow2 - 1 : plan.factors.log2_pow2;
    const float* signs = plan.randomized() && !plan.inverse ? plan.signs.data() : nullptr;
    Fwht16MinMax<Arch> mm;
    if (C >= 16) {
        for (std::size_t a = 0; a < chunks; ++a)
            fwht16_chunk<Arch, Track>(src + a * C, dst + a * C, C, log2C, signs ? signs + a * C : nullptr, m == 1,
                                      plan.scale, mm, next ? next + a * C : nullptr, next_late);
    } else {
        // Chunks shorter than a register (n < 16, or m·2^k with 2^k < 16): the AVX2 code.
        fwht_chunk_stage<avx2>(src, dst, plan, split);
    }
    if (m == 1) {
        if (plan.randomized() && plan.inverse) {
            fwht_dense_stage<avx2>(dst, plan, split, u_vec, u_scalar); // the signs, applied last
            return false;
        }
        if (!Track || C < 16) return false;
        lo = fwht16_reduce<Arch, false>(mm.lo);
        hi = fwht16_reduce<Arch, true>(mm.hi);
        return true;
    }
    if (fwht16_dense_stage<Arch, Track>(dst, plan, split, mm)) {
        if (plan.randomized() && plan.inverse) {
            const std::size_t n = plan.n, vec_end = n - n % 16;
            for (std::size_t i = 0; i < vec_end; i += 16)
                _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_loadu_ps(dst + i), _mm512_loadu_ps(plan.signs.data() + i)));
            for (std::size_t i = vec_end; i < n; ++i) dst[i] *= plan.signs[i];
            return false;
        }
        if (!Track) return false;
        lo = fwht16_reduce<Arch, false>(mm.lo);
        hi = fwht16_reduce<Arch, true>(mm.hi);
        return true;
    }
    // Other blocks, or 2^k not a multiple of 16: the AVX2 code.
    FwhtMinMax<xsimd::batch<float, avx2>> mm8;
    const bool tracked = fwht_dense_stage<avx2, Track>(dst, plan, split, u_vec, u_scalar, &mm8);
    if (tracked) reduce_min_max<avx2>(mm8, lo, hi);
    return tracked;
}

// All rows of x in place (fwht's AVX-512 path).
template <class Arch>
inline void fwht16_rows(MatrixView<float> x, const FwhtPlan& plan) noexcept {
    const bool split = fwht16_split_last_stage<Arch>(plan);
    alignas(64) xsimd::batch<float, avx2> u_vec[16 * (kHadamardBlockSizes.back() / 4)];
    alignas(64) float u_scalar[16 * (kHadamardBlockSizes.back() / 4)];
    float lo, hi;
    for (std::size_t r = 0; r < x.rows; ++r) {
        float* row = x.row_ptr(r);
        const float* next = plan.n >= kFwht16PrefetchMin && r + 1 < x.rows ? x.row_ptr(r + 1) : nullptr;
        fwht16_row<Arch, false>(row, row, plan, split, u_vec, u_scalar, lo, hi, next, false);
    }
}

} // namespace detail
MQ_AVX512VNNI_END
#endif // MQ_HAS_AVX512VNNI_KERNELS

// Transform rows of x in place: x_row ← (x_row ⊙ s)·H (see FwhtPlan). Any stride and alignment;
// 64-byte aligned rows (aligned_vector, stride a multiple of 16) are fastest.
template <class Arch>
void fwht(Arch, MatrixView<float> x, const FwhtPlan& plan) noexcept {
    using B = xsimd::batch<float, Arch>;
    MQ_ASSERT(x.cols == plan.n, "fwht: row length must equal the plan size");
#if MQ_HAS_AVX512VNNI_KERNELS
    if constexpr (is_avx512vnni_v<Arch>) {
        detail::fwht16_rows<Arch>(x, plan);
        return;
    }
#endif
    const bool split = detail::fwht_split_last_stage<Arch>(plan);
    alignas(64) B u_vec[16 * (kHadamardBlockSizes.back() / 4)];
    alignas(64) float u_scalar[16 * (kHadamardBlockSizes.back() / 4)];
    for (std::size_t r = 0; r < x.rows; ++r) {
        float* row = x.row_ptr(r);
        // The passes over a row run from L1; for long rows (a batch of them is far beyond L2)
        // ask for the next row now, so that its trip from memory overlaps this row's arithmetic
        // (measured: helps n = 8192, costs a little on rows that stay in L2).
        if (plan.n >= 4096 && r + 1 < x.rows) detail::prefetch_row(x.row_ptr(r + 1), plan.n);
        detail::fwht_chunk_stage<Arch>(row, row, plan, split);
        detail::fwht_dense_stage<Arch>(row, plan, split, u_vec, u_scalar);
    }
}

// ---------------------------------------------------------------------------------------------
// Fused online rotation + dynamic per-token int8 quantization (the out_proj input).
// ---------------------------------------------------------------------------------------------

// Rotation fused with whatever consumes the rotated rows (quantization, here or in
// kernels/quantized_activations.hpp), one pass over the data: each row y = (x_r ⊙ s)·H is written
// into `scratch` (it stays in L1) and handed to a sink while it is still there:
//   sink.range(r, lo, hi)   right after row r is transformed: lo/hi = min/max of y (the last pass
//                           gathers them as it stores; the few layouts it cannot track take one
//                           more pass) — compute the row's quantization parameters here;
//   sink.row(r, y)          consume the row (y: n floats, valid until the next call).
// scratch: at least n floats; with 2·n (fwht_quantize_scratch_size) the rows are software-
// pipelined (n ≤ 4096) — row r is transformed before row r − 1 is consumed, so the latency of
// finding a row's range and parameters hides behind independent work (measured up to ~15%
// faster on short rows; neutral to slower once two rows crowd L1). x is left untouched.
inline constexpr std::size_t fwht_quantize_scratch_size(std::size_t n) noexcept { return 2 * n; }

template <class Arch, class Sink>
void fwht_rows(Arch, ConstMatrixView<float> x, const FwhtPlan& plan, std::span<float> scratch, Sink& sink) noexcept {
    using B = xsimd::batch<float, Arch>;
    constexpr std::size_t W = B::size;
    MQ_ASSERT(x.cols == plan.n, "fwht_rows: row length must equal the plan size");
    MQ_ASSERT(scratch.size() >= plan.n, "fwht_rows: scratch needs at least n floats");
    const std::size_t n = plan.n, m = plan.factors.m, P = plan.factors.pow2;
    constexpr bool wide = is_avx512vnni_v<Arch> && MQ_HAS_AVX512VNNI_KERNELS;
    bool split;
#if MQ_HAS_AVX512VNNI_KERNELS
    if constexpr (wide) split = detail::fwht16_split_last_stage<Arch>(plan);
    else
#endif
        split = detail::fwht_split_last_stage<Arch>(plan);
    // Two rows of scratch must stay in L1 with the data in flight: pipeline up to n = 4096.
    const bool pipelined = scratch.size() >= 2 * n && n <= 4096;
    const bool chunk_tracks = m == 1 && P >= W && !(plan.randomized() && plan.inverse);
    // The dense stage's buffer (on AVX-512 the dense stage runs the AVX2 code).
    using UB = xsimd::batch<float, std::conditional_t<wide, avx2, Arch>>;
    alignas(64) UB u_vec[16 * (kHadamardBlockSizes.back() / 4)];
    alignas(64) float u_scalar[16 * (kHadamardBlockSizes.back() / 4)];
    auto transform = [&](std::size_t r, float* y) {
        const float* row = x.row_ptr(r);
        if (!wide && n >= 4096 && r + 1 < x.rows) detail::prefetch_row(x.row_ptr(r + 1), n);
        float lo = 0, hi = 0;
        bool tracked;
#if MQ_HAS_AVX512VNNI_KERNELS
        if constexpr (wide) {
            const float* next = n >= detail::kFwht16PrefetchMin && r + 1 < x.rows ? x.row_ptr(r + 1) : nullptr;
            tracked = detail::fwht16_row<Arch, true>(row, y, plan, split, u_vec, u_scalar, lo, hi, next, true);
        } else
#endif
        {
            detail::FwhtMinMax<B> mm;
            detail::fwht_chunk_stage<Arch, true>(row, y, plan, split, &mm);
            const bool dense_tracks = detail::fwht_dense_stage<Arch, true>(y, plan, split, u_vec, u_scalar, &mm);
            tracked = chunk_tracks || dense_tracks;
            if (tracked) detail::reduce_min_max<Arch>(mm, lo, hi);
        }
        if (!tracked) {
            const RowRange rr = row_range(Arch{}, y, n);
            lo = rr.lo;
            hi = rr.hi;
        }
        sink.range(r, lo, hi);
    };
    if (!pipelined) {
        for (std::size_t r = 0; r < x.rows; ++r) {
            transform(r, scratch.data());
            sink.row(r, static_cast<const float*>(scratch.data()));
        }
        return;
    }
    for (std::size_t r = 0; r < x.rows; ++r) {
        transform(r, scratch.data() + (r % 2) * n);
        if (r > 0) sink.row(r - 1, static_cast<const float*>(scratch.data() + ((r - 1) % 2) * n));
    }
    if (x.rows > 0) sink.row(x.rows - 1, static_cast<const float*>(scratch.data() + ((x.rows - 1) % 2) * n));
}

// Fused online rotation + dynamic per-token int8 quantization (the out_proj input): p_r =
// params_from_range<8, S>(min y, max y), q = quantize_value(y, p_r). Equals fwht followed by
// per-row quantization bit for bit. S = asymmetric gives uint8 codes (mq::A8PerToken),
// S = symmetric int8 codes in [−127, 127]. The integer GEMM's activation layout comes from
// fwht_quantize_activations (kernels/quantized_activations.hpp) instead.
template <Symmetry S, class Arch>
void fwht_quantize(Arch, ConstMatrixView<float> x, const FwhtPlan& plan, MatrixView<int8_code_t<S>> codes,
                   std::span<QuantParams> params, std::span<float> scratch) noexcept {
    MQ_ASSERT(codes.rows == x.rows && codes.cols == x.cols, "fwht_quantize: code shape must match x");
    MQ_ASSERT(params.size() >= x.rows, "fwht_quantize: one QuantParams per row");
    struct Sink {
        MatrixView<int8_code_t<S>> codes;
        std::span<QuantParams> params;
        void range(std::size_t r, float lo, float hi) noexcept { params[r] = params_from_range<8, S>(lo, hi); }
        void row(std::size_t r, const float* y) noexcept {
            quantize_row_in_range<BitRange<8, S>>(Arch{}, y, codes.cols, params[r], codes.row_ptr(r));
        }
    } sink{codes, params};
    fwht_rows(Arch{}, x, plan, scratch, sink);
}

MQ_NAMESPACE_END
