// Causal depthwise conv1d on integer codes: int8 per-channel weights × an 8-bit per-tensor input (METHOD.md §2).
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/conv1d.hpp>
#include <mambaquant/kernels/silu.hpp>
#include <mambaquant/quant/params.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

MQ_NAMESPACE_BEGIN

// Per channel d and token t, with x̃ the input preceded by the window (kernels/conv1d.hpp):
//   a_j[d]  = clamp(round(x̃_j[d]·(1/s_x)) + z_x, qmin, qmax) − z_x     input codes, static per tensor
//   acc_t[d] = Σ_{k<K} q_w[k,d]·a_{t−(K−1)+k}[d]                        exact: |acc| ≤ K·127·255 < 2^24
//   y_t[d]  = act(acc_t[d]·(s_w[d]·s_x) + bias[d])                      one fma, act = SiLU or identity
// which is Σ_k ŵ·x̂ + bias with ŵ = q_w·s_w, x̂ = a·s_x, summed exactly and scaled once.
// Why per tensor (METHOD.md §2: "weights per channel, input per tensor"): the K taps mix K tokens,
// and with a scale per token their codes would not add up to one integer sum times one scale.
// The window keeps the float inputs, re-quantized with the same static params (so the same codes):
// prefill, a prefill in chunks and decode steps agree bit for bit, and the cache is the float
// conv's. The codes and the integer sums are exact in float, so the SIMD kernel runs on floats
// holding integers (no widening shuffles for K = 4 taps) and equals the reference bit for bit.
struct QuantizedConv1dArgs {
    CausalConv1dArgs conv;             // x, bias, window, silu, y; weight: the codes q_w [K, E] (integers in [−127, 127])
    const float* out_scale = nullptr;  // [E]: s_w[d]·s_x
    QuantParams input{};               // the input's static (scale, inv_scale, zero)
    int qmin = 0, qmax = 255;          // the input's code range

    std::size_t channels() const noexcept { return conv.channels(); }
};

namespace detail {
inline bool quantized_conv_args_consistent(const QuantizedConv1dArgs& q) noexcept {
    return conv_args_consistent(q.conv) && q.out_scale != nullptr && q.conv.taps() <= 64 && q.qmin <= q.input.zero &&
           q.input.zero <= q.qmax;
}
} // namespace detail

// Scalar reference: int32 codes and sums, quantize_value's steps, the SIMD kernel's SiLU
// (silu_approx_ref), so the two agree bit for bit.
inline void quantized_causal_conv1d_ref(const QuantizedConv1dArgs& q) noexcept {
    MQ_ASSERT(detail::quantized_conv_args_consistent(q), "quantized_causal_conv1d_ref: inconsistent arguments");
    const CausalConv1dArgs& a = q.conv;
    const std::size_t L = a.length(), E = a.channels(), K = a.taps();
    auto code = [&](float x) {
        const float r = std::nearbyint(x * q.input.inv_scale) + static_cast<float>(q.input.zero);
        return static_cast<std::int32_t>(std::clamp(r, static_cast<float>(q.qmin), static_cast<float>(q.qmax))) - q.input.zero;
    };
    for (std::size_t t = 0; t < L; ++t) {
        float* out = a.y.data + t * a.y.stride;
        for (std::size_t d = 0; d < E; ++d) {
            std::int32_t acc = 0;
            for (std::size_t k = 0; k < K; ++k) {
                const float* row = detail::conv_history_row(a, t, k);
                if (row) acc += static_cast<std::int32_t>(a.weight(k, d)) * code(row[d]); // zero history: code 0
            }
            const float v = std::fma(static_cast<float>(acc), q.out_scale[d], a.bias ? a.bias[d] : 0.0f);
            out[d] = a.silu ? silu_approx_ref(v) : v;
        }
    }
    detail::conv_update_window(a);
}

#if MQ_HAS_AVX512VNNI_KERNELS
MQ_AVX512VNNI_BEGIN
namespace detail {
// One token's channels [0, 16·⌊E/16⌋) on 16 lanes (the avx512vnni tag), the AVX2 loop's
// operations per channel (vroundps → vrndscaleps to nearest: the same integer), so the same bits.
// Not VNNI: vpdpbusd sums 4 adjacent bytes of one dword, while a depthwise tap sum runs down a
// column (one channel, K tokens); interleaving K = 4 rows of codes per channel costs more
// shuffles than the 4 FMAs it would replace, and the float sums are already exact.
template <class Arch>
std::size_t quantized_causal_conv1d_row16(const QuantizedConv1dArgs& q, const float* const* rows, float* out, float lo_s,
                                          float hi_s) noexcept {
    constexpr __mmask16 all = 0xFFFF;
    const __m512 lo = _mm512_set1_ps(lo_s), hi = _mm512_set1_ps(hi_s);
    const CausalConv1dArgs& a = q.conv;
    const std::size_t E = a.channels(), K = a.taps(), end = E - E % 16;
    const __m512 inv = _mm512_set1_ps(q.input.inv_scale);
    for (std::size_t d = 0; d < end; d += 16) {
        __m512 acc = _mm512_setzero_ps();
        for (std::size_t k = 0; k < K; ++k)
            if (rows[k]) {
                const __m512 s = _mm512_mul_ps(_mm512_loadu_ps(rows[k] + d), inv);
                __m512 code = _mm512_mask_roundscale_ps(s, all, s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                code = _mm512_mask_min_ps(code, all, _mm512_mask_max_ps(code, all, code, lo), hi);
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(a.weight.data + k * a.weight.stride + d), code, acc);
            }
        __m512 v = _mm512_fmadd_ps(acc, _mm512_loadu_ps(q.out_scale + d), a.bias ? _mm512_loadu_ps(a.bias + d) : _mm512_setzero_ps());
        if (a.silu) v = silu16<Arch>(v);
        _mm512_storeu_ps(out + d, v);
    }
    return end;
}
} // namespace detail
MQ_AVX512VNNI_END
#endif

// SIMD form: token-major like causal_conv1d, channels in SIMD batches (16 lanes on avx512vnni,
// then one AVX2 batch). A code a = q − z is formed as clamp(round(x·(1/s)), qmin − z, qmax − z):
// the same integer as the reference's clamp(round(x/s) + z, qmin, qmax) − z (all values exact in
// float), two operations fewer. Channel tails run the reference's arithmetic.
template <class Arch>
void quantized_causal_conv1d(Arch, const QuantizedConv1dArgs& q) noexcept {
    MQ_ASSERT(detail::quantized_conv_args_consistent(q), "quantized_causal_conv1d: inconsistent arguments");
    using Bt = xsimd::batch<float, Arch>;
    constexpr std::size_t kMaxTaps = 64;
    const CausalConv1dArgs& a = q.conv;
    const std::size_t L = a.length(), E = a.channels(), K = a.taps();
    const std::size_t vec_end = simd_floor<Arch>(E);
    const float lo_s = static_cast<float>(q.qmin - q.input.zero), hi_s = static_cast<float>(q.qmax - q.input.zero);
    const Bt inv(q.input.inv_scale), lo(lo_s), hi(hi_s);
    for (std::size_t t = 0; t < L; ++t) {
        const float* rows[kMaxTaps];
        for (std::size_t k = 0; k < K; ++k) rows[k] = detail::conv_history_row(a, t, k);
        float* out = a.y.data + t * a.y.stride;
        std::size_t d = 0;
#if MQ_HAS_AVX512VNNI_KERNELS
        if constexpr (is_avx512vnni_v<Arch>)
            d = detail::quantized_causal_conv1d_row16<Arch>(q, rows, out, lo_s, hi_s);
#endif
        for (; d < vec_end; d += Bt::size) {
            Bt acc(0.0f);
            for (std::size_t k = 0; k < K; ++k)
                if (rows[k]) {
                    const Bt code = xsimd::min(xsimd::max(xsimd::nearbyint(Bt::load_unaligned(rows[k] + d) * inv), lo), hi);
                    acc = xsimd::fma(Bt::load_unaligned(a.weight.data + k * a.weight.stride + d), code, acc);
                }
            Bt v = xsimd::fma(acc, Bt::load_unaligned(q.out_scale + d), a.bias ? Bt::load_unaligned(a.bias + d) : Bt(0.0f));
            if (a.silu) v = silu<Arch>(v);
            v.store_unaligned(out + d);
        }
        for (; d < E; ++d) {
            float acc = 0.0f;
            for (std::size_t k = 0; k < K; ++k)
                if (rows[k]) acc = std::fma(a.weight(k, d), std::clamp(std::nearbyint(rows[k][d] * q.input.inv_scale), lo_s, hi_s), acc);
            const float v = std::fma(acc, q.out_scale[d], a.bias ? a.bias[d] : 0.0f);
            out[d] = a.silu ? silu_approx_ref(v) : v;
        }
    }
    detail::conv_update_window(a);
}

MQ_NAMESPACE_END
