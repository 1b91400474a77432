// Causal depthwise conv1d over time (the Mamba block's short conv), with bias and SiLU.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/silu.hpp>

#include <cstddef>

MQ_NAMESPACE_BEGIN

// Per channel d and token t, with K taps and x̃ the input preceded by the window (the K−1
// inputs before x_0, oldest first; zeros when there is no window):
//   y_t[d] = act(bias[d] + Σ_{k<K} w[d,k]·x̃_{t−(K−1)+k}[d]),  act = SiLU or identity
// This is PyTorch's Conv1d(groups=E, padding=K−1) cut to the first L outputs. On return the
// window holds the last K−1 inputs of x̃, so a sequence split in chunks (or fed one token at a
// time: decode) gives the same output as one call. y may alias x (in place): each input is read
// before the output of its row is written, and the history lives in registers.
// Shapes: x, y [L, E]; weight [E, K]; bias [E]; window [K−1, E] (or empty: zero history, and
// then nothing is written back).
struct CausalConv1dArgs {
    ConstMatrixView<float> x;
    ConstMatrixView<float> weight;
    const float* bias = nullptr;
    MatrixView<float> window;
    bool silu = true;
    MatrixView<float> y;

    std::size_t length() const noexcept { return x.rows; }
    std::size_t channels() const noexcept { return x.cols; }
    std::size_t taps() const noexcept { return weight.cols; }
};

namespace detail {
inline bool conv_args_consistent(const CausalConv1dArgs& a) noexcept {
    const std::size_t K = a.weight.cols, E = a.x.cols;
    return a.x.rows > 0 && E > 0 && K >= 1 && a.weight.rows == E && a.y.rows == a.x.rows &&
           a.y.cols == E && (a.window.data == nullptr || (a.window.rows == K - 1 && a.window.cols == E));
}

// Channels [d_begin, d_end), scalar; the history of each channel in a small local array.
inline void causal_conv1d_ref_range(const CausalConv1dArgs& a, std::size_t d_begin, std::size_t d_end) noexcept {
    constexpr std::size_t kMaxTaps = 64;
    const std::size_t L = a.length(), K = a.taps();
    for (std::size_t d = d_begin; d < d_end; ++d) {
        float hist[kMaxTaps]; // hist[K−1] is the current input, hist[0] the oldest
        for (std::size_t k = 0; k + 1 < K; ++k) hist[k] = a.window.data ? a.window(k, d) : 0.0f;
        for (std::size_t t = 0; t < L; ++t) {
            hist[K - 1] = a.x(t, d);
            float acc = a.bias ? a.bias[d] : 0.0f;
            for (std::size_t k = 0; k < K; ++k) acc += a.weight(d, k) * hist[k];
            a.y(t, d) = a.silu ? silu_ref(acc) : acc;
            for (std::size_t k = 0; k + 1 < K; ++k) hist[k] = hist[k + 1];
        }
        if (a.window.data)
            for (std::size_t k = 0; k + 1 < K; ++k) a.window(k, d) = hist[k];
    }
}

template <class Arch, std::size_t K>
void causal_conv1d_block(const CausalConv1dArgs& a, std::size_t d0) noexcept {
    using Bt = xsimd::batch<float, Arch>;
    constexpr std::size_t W = Bt::size;
    const std::size_t L = a.length();
    alignas(64) float w_tile[K * W];
    for (std::size_t j = 0; j < W; ++j)
        for (std::size_t k = 0; k < K; ++k) w_tile[k * W + j] = a.weight(d0 + j, k);
    Bt w[K], hist[K];
#pragma GCC unroll 8
    for (std::size_t k = 0; k < K; ++k) w[k] = Bt::load_aligned(w_tile + k * W);
#pragma GCC unroll 8
    for (std::size_t k = 0; k + 1 < K; ++k)
        hist[k] = a.window.data ? Bt::load_unaligned(a.window.data + k * a.window.stride + d0) : Bt(0.0f);
    const Bt bias = a.bias ? Bt::load_unaligned(a.bias + d0) : Bt(0.0f);
    for (std::size_t t = 0; t < L; ++t) {
        hist[K - 1] = Bt::load_unaligned(a.x.data + t * a.x.stride + d0);
        Bt acc = bias;
#pragma GCC unroll 8
        for (std::size_t k = 0; k < K; ++k) acc = xsimd::fma(w[k], hist[k], acc);
        if (a.silu) acc = silu<Arch>(acc);
        acc.store_unaligned(a.y.data + t * a.y.stride + d0);
#pragma GCC unroll 8
        for (std::size_t k = 0; k + 1 < K; ++k) hist[k] = hist[k + 1];
    }
    if (a.window.data)
#pragma GCC unroll 8
        for (std::size_t k = 0; k + 1 < K; ++k) hist[k].store_unaligned(a.window.data + k * a.window.stride + d0);
}

template <class Arch, std::size_t K>
void causal_conv1d_blocks(const CausalConv1dArgs& a) noexcept {
    constexpr std::size_t W = simd_width_v<Arch>;
    const std::size_t E = a.channels();
    const std::size_t vec_end = E - E % W;
    for (std::size_t d0 = 0; d0 < vec_end; d0 += W) causal_conv1d_block<Arch, K>(a, d0);
    if (vec_end < E) causal_conv1d_ref_range(a, vec_end, E);
}
} // namespace detail

// Scalar reference (std::exp SiLU, plain multiply-add), K ≤ 64.
inline void causal_conv1d_ref(const CausalConv1dArgs& a) noexcept {
    MQ_ASSERT(detail::conv_args_consistent(a), "causal_conv1d_ref: inconsistent shapes");
    MQ_ASSERT(a.taps() <= 64, "causal_conv1d_ref: at most 64 taps");
    detail::causal_conv1d_ref_range(a, 0, a.channels());
}

// SIMD conv: channel blocks of the SIMD width over the whole sequence, taps and history in
// registers. Specialized for K ∈ {2, 3, 4}; other K run the reference. Differs from the
// reference by FMA contraction and the SiLU's exp_approx (relative error ≤ 3.9e-7).
template <class Arch>
void causal_conv1d(Arch, const CausalConv1dArgs& a) noexcept {
    MQ_ASSERT(detail::conv_args_consistent(a), "causal_conv1d: inconsistent shapes");
    switch (a.taps()) {
    case 2: return detail::causal_conv1d_blocks<Arch, 2>(a);
    case 3: return detail::causal_conv1d_blocks<Arch, 3>(a);
    case 4: return detail::causal_conv1d_blocks<Arch, 4>(a);
    default: break;
    }
    MQ_ASSERT(a.taps() <= 64, "causal_conv1d: at most 64 taps");
    detail::causal_conv1d_ref_range(a, 0, a.channels());
}

MQ_NAMESPACE_END
