// Causal depthwise conv1d over time (the Mamba block's short conv), with bias and SiLU.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/silu.hpp>

#include <cmath>
#include <cstddef>

MQ_NAMESPACE_BEGIN

// Per channel d and token t, with K taps and x̃ the input preceded by the window (the K−1
// inputs before x_0, oldest first; zeros when there is no window):
//   y_t[d] = act(bias[d] + Σ_{k<K} w[k,d]·x̃_{t−(K−1)+k}[d]),  act = SiLU or identity
// This is PyTorch's Conv1d(groups=E, padding=K−1) cut to the first L outputs (its weight
// [E, 1, K] transposed to tap-major [K, E], which ConvWeights does once at load, so that a tap
// is a contiguous row and the kernel streams whole token rows). On return the window holds the
// last K−1 inputs of x̃, so a sequence split in chunks (or fed one token at a time: decode)
// gives the same output as one call. y must not overlap x (earlier rows of x are re-read).
// Shapes: x, y [L, E]; weight [K, E]; bias [E]; window [K−1, E] (or empty: zero history, and
// then nothing is written back).
struct CausalConv1dArgs {
    ConstMatrixView<float> x;
    ConstMatrixView<float> weight; // [K, E], tap-major
    const float* bias = nullptr;
    MatrixView<float> window;
    bool silu = true;
    MatrixView<float> y;

    std::size_t length() const noexcept { return x.rows; }
    std::size_t channels() const noexcept { return x.cols; }
    std::size_t taps() const noexcept { return weight.rows; }
};

namespace detail {
inline bool conv_args_consistent(const CausalConv1dArgs& a) noexcept {
    const std::size_t K = a.weight.rows, E = a.x.cols;
    return a.x.rows > 0 && E > 0 && K >= 1 && a.weight.cols == E && a.y.rows == a.x.rows &&
           a.y.cols == E && (a.window.data == nullptr || (a.window.rows == K - 1 && a.window.cols == E));
}

// Row t + k − (K−1) of x̃: a window row before x_0, or null for the zero history.
inline const float* conv_history_row(const CausalConv1dArgs& a, std::size_t t, std::size_t k) noexcept {
    const std::size_t K = a.taps();
    if (t + k >= K - 1) return a.x.data + (t + k - (K - 1)) * a.x.stride;
    return a.window.data ? a.window.data + (t + k) * a.window.stride : nullptr;
}

// window ← the last K−1 rows of [window; x] (rows move up when L < K−1).
inline void conv_update_window(const CausalConv1dArgs& a) noexcept {
    if (!a.window.data) return;
    const std::size_t K = a.taps(), L = a.length(), E = a.channels();
    for (std::size_t k = 0; k + 1 < K; ++k) {
        const std::size_t src = L + k; // x̃ index: window rows first, then x (as conv_history_row)
        const float* from = src >= K - 1 ? a.x.data + (src - (K - 1)) * a.x.stride : a.window.data + src * a.window.stride;
        float* to = a.window.data + k * a.window.stride;
        if (from != to)
            for (std::size_t d = 0; d < E; ++d) to[d] = from[d];
    }
}
} // namespace detail

// Scalar reference (std::exp SiLU, multiply-adds in tap order).
inline void causal_conv1d_ref(const CausalConv1dArgs& a) noexcept {
    MQ_ASSERT(detail::conv_args_consistent(a), "causal_conv1d_ref: inconsistent shapes");
    const std::size_t L = a.length(), E = a.channels(), K = a.taps();
    for (std::size_t t = 0; t < L; ++t) {
        float* out = a.y.data + t * a.y.stride;
        for (std::size_t d = 0; d < E; ++d) {
            float acc = a.bias ? a.bias[d] : 0.0f;
            for (std::size_t k = 0; k < K; ++k) {
                const float* row = detail::conv_history_row(a, t, k);
                if (row) acc = std::fma(a.weight(k, d), row[d], acc);
            }
            out[d] = a.silu ? silu_ref(acc) : acc;
        }
    }
    detail::conv_update_window(a);
}

#if MQ_HAS_AVX512VNNI_KERNELS
MQ_AVX512VNNI_BEGIN
namespace detail {
// One token's channels [0, 16·⌊E/16⌋) on 16 lanes (the avx512vnni tag): the AVX2 loop's
// operations per channel (bias, then one FMA per tap in tap order, then silu16), so the same bits.
template <class Arch>
std::size_t causal_conv1d_row16(const CausalConv1dArgs& a, const float* const* rows, float* out) noexcept {
    const std::size_t E = a.channels(), K = a.taps(), end = E - E % 16;
    for (std::size_t d = 0; d < end; d += 16) {
        __m512 acc = a.bias ? _mm512_loadu_ps(a.bias + d) : _mm512_setzero_ps();
        for (std::size_t k = 0; k < K; ++k)
            if (rows[k])
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(a.weight.data + k * a.weight.stride + d), _mm512_loadu_ps(rows[k] + d), acc);
        if (a.silu) acc = silu16<Arch>(acc);
        _mm512_storeu_ps(out + d, acc);
    }
    return end;
}
} // namespace detail
MQ_AVX512VNNI_END
#endif

// SIMD conv: token-major, each output row from K contiguous input rows (the rows of one token
// and its K−1 predecessors stay in L1), channels in SIMD batches (16 lanes on avx512vnni, then
// one AVX2 batch, then scalar). Differs from the reference only by the SiLU's exp_approx
// (relative error ≤ 3.9e-7); the taps are the same FMAs in the same order, and every arch gives
// the same bits (each channel's arithmetic is the same on 16, 8 and 1 lanes).
template <class Arch>
void causal_conv1d(Arch, const CausalConv1dArgs& a) noexcept {
    MQ_ASSERT(detail::conv_args_consistent(a), "causal_conv1d: inconsistent shapes");
    using Bt = xsimd::batch<float, Arch>;
    constexpr std::size_t kMaxTaps = 64;
    MQ_ASSERT(a.taps() <= kMaxTaps, "causal_conv1d: at most 64 taps");
    const std::size_t L = a.length(), E = a.channels(), K = a.taps();
    const std::size_t vec_end = simd_floor<Arch>(E);
    for (std::size_t t = 0; t < L; ++t) {
        const float* rows[kMaxTaps];
        for (std::size_t k = 0; k < K; ++k) rows[k] = detail::conv_history_row(a, t, k);
        float* out = a.y.data + t * a.y.stride;
        std::size_t d = 0;
#if MQ_HAS_AVX512VNNI_KERNELS
        if constexpr (is_avx512vnni_v<Arch>) d = detail::causal_conv1d_row16<Arch>(a, rows, out);
#endif
        for (; d < vec_end; d += Bt::size) {
            Bt acc = a.bias ? Bt::load_unaligned(a.bias + d) : Bt(0.0f);
            for (std::size_t k = 0; k < K; ++k)
                if (rows[k])
                    acc = xsimd::fma(Bt::load_unaligned(a.weight.data + k * a.weight.stride + d),
                                     Bt::load_unaligned(rows[k] + d), acc);
            if (a.silu) acc = silu<Arch>(acc);
            acc.store_unaligned(out + d);
        }
        for (; d < E; ++d) {
            float acc = a.bias ? a.bias[d] : 0.0f;
            for (std::size_t k = 0; k < K; ++k)
                if (rows[k]) acc = std::fma(a.weight(k, d), rows[k][d], acc);
            out[d] = a.silu ? silu_approx_ref(acc) : acc;
        }
    }
    detail::conv_update_window(a);
}

MQ_NAMESPACE_END
