// The selective scan whose output matmul y_t = state_t·C_t runs on int8 codes (MambaQuant §2, R4).
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/exp.hpp>
#include <mambaquant/kernels/selective_scan.hpp>
#include <mambaquant/kernels/silu.hpp>
#include <mambaquant/kernels/softplus.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/quantizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

MQ_NAMESPACE_BEGIN

// The recurrence is the float scan of selective_scan.hpp; only the output changes. Per token t,
// both operands are quantized dynamically with one (scale, zero) each (per token, Q = ActQ):
//   S_t = state_t·H                 [E, N]  (H: an optional N×N orthogonal rotation, R4)
//   (s_S, z_S) = Q.params(min S_t, max S_t),   (s_C, z_C) = Q.params(min C_t, max C_t)
//   y_t[d] = s_S·s_C · Σ_n (q(S_t[d,n]) − z_S)·(q(C_t[n]) − z_C)  + D[d]·x_t[d],  then · SiLU(z_t[d]) (or the S-SiLU gate, see selective_scan.hpp)
// With a rotation, C must arrive rotated (C·H, folded into W_C's rows: W_C ← Hᵀ W_C), so that
// S_t·(C_t H)ᵀ = state_t·C_t in exact arithmetic. The integer sum is exact in float too: each
// product is ≤ 255² and N ≤ 256 terms stay below 2^24, so the SIMD kernel accumulates the code
// products in float and matches the reference's int32 sum exactly for equal codes.
// The per-token range of S_t spans all E channels, so the SIMD kernel runs in chunks of
// kQuantizedScanChunk tokens: pass 1 runs the recurrence of every channel block over the chunk,
// keeping S_t in the workspace and each token's range; pass 2 quantizes the kept S_t and forms y.
// (Recomputing the states in pass 2 instead, as an earlier version did, ran the exp-heavy
// recurrence twice: the quantized scan cost 2.8× the float scan, more than all four quantized
// GEMMs of a W4A8 prefill.)
struct QuantizedScanArgs {
    const float* rotation = nullptr; // [N, N] row-major (state·H), or null
    float* workspace = nullptr;      // quantized_scan_workspace_size(L, E, N) floats
    std::size_t workspace_size = 0;
};

inline constexpr std::size_t kQuantizedScanMaxLanes = 16;
// Tokens per chunk: the chunk's states [T, E, N] stay in L2 (8 × 1536 × 16 floats: 768 KiB), and
// each channel block reloads its state once per T tokens (two 8×8 transposes per 16 columns).
inline constexpr std::size_t kQuantizedScanChunk = 8;

// Floats of scratch for L tokens, E channels and state size N: C codes [L, N], C scales [L]; per
// chunk token: state scale, inverse scale, code bounds [4T], per-lane minima and maxima [2T × 16];
// the chunk's states [T, E, N] (64-byte aligned within the workspace: 16 floats of slack).
constexpr std::size_t quantized_scan_workspace_size(std::size_t L, std::size_t E, std::size_t N) noexcept {
    const std::size_t T = L < kQuantizedScanChunk ? L : kQuantizedScanChunk;
    return L * (N + 1) + T * (4 + 2 * kQuantizedScanMaxLanes + E * N) + 16;
}

namespace detail {
// Quantizes C_t of every token: ws_c[t·N + n] = q(C_t[n]) − z_C, ws_cs[t] = s_C.
template <QuantizerPolicy Q>
void quantize_scan_C(ConstMatrixView<float> C, float* ws_c, float* ws_cs) noexcept {
    const std::size_t L = C.rows, N = C.cols;
    for (std::size_t t = 0; t < L; ++t) {
        float lo = C(t, 0), hi = C(t, 0);
        for (std::size_t n = 1; n < N; ++n) {
            lo = std::min(lo, C(t, n));
            hi = std::max(hi, C(t, n));
        }
        const QuantParams p = Q::params(lo, hi);
        for (std::size_t n = 0; n < N; ++n)
            ws_c[t * N + n] = static_cast<float>(quantize_value<typename Q::range>(C(t, n), p) - p.zero);
        ws_cs[t] = p.scale;
    }
}
} // namespace detail

// Scalar reference: token-major, std::exp, int32 accumulation of the code products. The rotation
// and the D skip use std::fma like the SIMD kernel, so for equal states the two agree bit for bit
// (tested with exp-free inputs: A = 0, Δ = 1) except for the SiLU gate's exp.
template <QuantizerPolicy Q, class State>
void quantized_selective_scan_ref(const SelectiveScanArgs<State>& a, const QuantizedScanArgs& q) noexcept {
    MQ_ASSERT(detail::scan_args_consistent(a), "quantized_selective_scan_ref: inconsistent shapes");
    const std::size_t L = a.length(), E = a.channels(), N = a.state_size();
    MQ_ASSERT(q.workspace && q.workspace_size >= quantized_scan_workspace_size(L, E, N),
              "quantized_selective_scan_ref: workspace too small");
    float* ws_c = q.workspace;
    float* ws_cs = ws_c + L * N;
    detail::quantize_scan_C<Q>(a.C, ws_c, ws_cs);
    // S_t[d, n] = Σ_m state_t[d, m]·H[m, n]
    auto rotated = [&](std::size_t d, std::size_t n) -> float {
        if (!q.rotation) return static_cast<float>(a.state(d, n));
        float r = 0.0f;
        for (std::size_t m = 0; m < N; ++m) r = std::fma(static_cast<float>(a.state(d, m)), q.rotation[m * N + n], r);
        return r;
    };
    for (std::size_t t = 0; t < L; ++t) {
        for (std::size_t d = 0; d < E; ++d) {
            const float xv = a.x(t, d);
            float dt = a.delta(t, d);
            if (a.delta_softplus) dt = softplus_ref(a.delta_bias ? dt + a.delta_bias[d] : dt);
            for (std::size_t n = 0; n < N; ++n) {
                float arg = dt * a.A(d, n);
                if (t == 0 && a.first_step_log_scale) arg += a.first_step_log_scale[n];
                State& s = a.state(d, n);
                // one rounding, as the SIMD kernel's FMA (and whatever the compiler contracts)
                s = std::fma(static_cast<State>(std::exp(arg)), s, static_cast<State>(dt * a.B(t, n) * xv));
            }
        }
        float lo = std::numeric_limits<float>::infinity(), hi = -lo;
        for (std::size_t d = 0; d < E; ++d)
            for (std::size_t n = 0; n < N; ++n) {
                const float r = rotated(d, n);
                lo = std::min(lo, r);
                hi = std::max(hi, r);
            }
        const QuantParams ps = Q::params(lo, hi);
        const float out_scale = ps.scale * ws_cs[t];
        for (std::size_t d = 0; d < E; ++d) {
            std::int32_t acc = 0;
            for (std::size_t n = 0; n < N; ++n)
                acc += (quantize_value<typename Q::range>(rotated(d, n), ps) - ps.zero) *
                       static_cast<std::int32_t>(ws_c[t * N + n]);
            float out = static_cast<float>(acc) * out_scale;
            if (a.D) out = std::fma(a.D[d], a.x(t, d), out);
            if (a.z.data) out *= detail::gate_ref(a.z(t, d), a.gate_scale ? a.gate_scale[d] : 1.0f);
            a.y(t, d) = out;
        }
    }
}

namespace detail {
// The workspace of quantized_scan_workspace_size, by part.
struct QuantizedScanScratch {
    float* c;      // [L, N] q(C_t) − z_C
    float* cs;     // [L] s_C
    float* ss;     // [T] s_S of each chunk token
    float* si;     // [T] 1/s_S
    float* qlo;    // [T] qmin − z_S
    float* qhi;    // [T] qmax − z_S
    float* lo;     // [T × 16] per-lane minima of S_t
    float* hi;     // [T × 16] per-lane maxima
    float* states; // [T][E/W][N][W] the chunk's S_t, channel block by block

    QuantizedScanScratch(float* ws, std::size_t L, std::size_t N) noexcept {
        const std::size_t T = std::min(L, kQuantizedScanChunk);
        c = ws;
        cs = c + L * N;
        ss = cs + L;
        si = ss + T;
        qlo = si + T;
        qhi = qlo + T;
        lo = qhi + T;
        hi = lo + T * kQuantizedScanMaxLanes;
        const auto end = reinterpret_cast<std::uintptr_t>(hi + T * kQuantizedScanMaxLanes);
        states = reinterpret_cast<float*>((end + 63) / 64 * 64); // within the 16 floats of slack
    }
};

// Pass 1, one channel block over chunk tokens [t0, t0 + T): the recurrence from the block's
// state, S_t = state_t·H into the chunk buffer, each token's per-lane min/max; the state is
// stored back for the next chunk (exact moves: chunking never changes a bit).
template <class Arch, std::size_t N>
void quantized_scan_states(const SelectiveScanArgs<float>& a, const QuantizedScanArgs& q, const QuantizedScanScratch& w,
                           std::size_t d0, std::size_t t0, std::size_t T) noexcept {
    using Bt = xsimd::batch<float, Arch>;
    constexpr std::size_t W = Bt::size;
    const std::size_t E = a.channels();
    // The next block's rows of A and of the state: a decode step does little work per block,
    // and these rows come from outside L2 (24 layers' A and states do not fit).
    if (d0 + W < E)
        for (std::size_t j = d0 + W; j < d0 + 2 * W; ++j)
            for (std::size_t n = 0; n < N; n += 64 / sizeof(float)) {
                prefetch_read(a.A.data + j * a.A.stride + n);
                prefetch_read(a.state.data + j * a.state.stride + n);
            }
    alignas(64) float a_tile[N * W];
    load_scan_block_A<Arch, N>(a, d0, a_tile);
    Bt s[N];
    load_columns<Arch, N>(a.state.data + d0 * a.state.stride, a.state.stride, s);
    const Bt bias = a.delta_bias ? Bt::load_unaligned(a.delta_bias + d0) : Bt(0.0f);
    for (std::size_t i = 0; i < T; ++i) {
        const std::size_t t = t0 + i;
        const Bt xv = Bt::load_unaligned(a.x.data + t * a.x.stride + d0);
        Bt dt = Bt::load_unaligned(a.delta.data + t * a.delta.stride + d0);
        if (a.delta_softplus) dt = softplus<Arch>(dt + bias);
        const Bt dx = dt * xv;
        const float* brow = a.B.data + t * a.B.stride;
        const bool first = t == 0 && a.first_step_log_scale;
#pragma GCC unroll 32
        for (std::size_t n = 0; n < N; ++n) {
            const Bt arg = first ? xsimd::fma(dt, Bt::load_aligned(a_tile + n * W),
                                              Bt(a.first_step_log_scale[n] * kLog2e))
                                 : dt * Bt::load_aligned(a_tile + n * W);
            s[n] = xsimd::fma(exp2_approx<Arch>(arg), s[n], dx * Bt(brow[n]));
        }
        Bt r[N];
        if (q.rotation) {
            for (std::size_t n = 0; n < N; ++n) r[n] = Bt(0.0f);
            for (std::size_t m = 0; m < N; ++m) {
                const float* hrow = q.rotation + m * N;
#pragma GCC unroll 32
                for (std::size_t n = 0; n < N; ++n) r[n] = xsimd::fma(s[m], Bt(hrow[n]), r[n]);
            }
        } else {
            for (std::size_t n = 0; n < N; ++n) r[n] = s[n];
        }
        Bt lo = r[0], hi = r[0];
        float* dst = w.states + (i * E + d0) * N;
#pragma GCC unroll 32
        for (std::size_t n = 0; n < N; ++n) {
            lo = xsimd::min(lo, r[n]);
            hi = xsimd::max(hi, r[n]);
            r[n].store_aligned(dst + n * W);
        }
        float* lo_t = w.lo + i * kQuantizedScanMaxLanes;
        float* hi_t = w.hi + i * kQuantizedScanMaxLanes;
        xsimd::min(lo, Bt::load_unaligned(lo_t)).store_unaligned(lo_t);
        xsimd::max(hi, Bt::load_unaligned(hi_t)).store_unaligned(hi_t);
    }
    store_columns<Arch, N>(s, a.state.data + d0 * a.state.stride, a.state.stride);
}

// Pass 2, one channel block over the chunk: y_t = s_S·s_C·Σ_n (q(S_t) − z_S)·(q(C_t) − z_C)
// + D·x_t, gated. q − z = clamp(round(S·inv) + z, qmin, qmax) − z = clamp(round(S·inv), qmin − z,
// qmax − z): the same integers as quantize_value's steps (all exact in float), two operations fewer.
template <class Arch, std::size_t N>
void quantized_scan_outputs(const SelectiveScanArgs<float>& a, const QuantizedScanScratch& w, std::size_t d0,
                            std::size_t t0, std::size_t T) noexcept {
    using Bt = xsimd::batch<float, Arch>;
    constexpr std::size_t W = Bt::size;
    const std::size_t E = a.channels();
    const Bt dskip = a.D ? Bt::load_unaligned(a.D + d0) : Bt(0.0f);
    for (std::size_t i = 0; i < T; ++i) {
        const std::size_t t = t0 + i;
        const Bt inv(w.si[i]), qlo(w.qlo[i]), qhi(w.qhi[i]);
        const float* src = w.states + (i * E + d0) * N;
        const float* crow = w.c + t * N;
        Bt acc(0.0f);
#pragma GCC unroll 32
        for (std::size_t n = 0; n < N; ++n) {
            const Bt code = xsimd::min(xsimd::max(xsimd::nearbyint(Bt::load_aligned(src + n * W) * inv), qlo), qhi);
            acc = xsimd::fma(code, Bt(crow[n]), acc);
        }
        Bt out = acc * Bt(w.ss[i] * w.cs[t]);
        out = xsimd::fma(dskip, Bt::load_unaligned(a.x.data + t * a.x.stride + d0), out);
        if (a.z.data)
            out *= gate<Arch>(Bt::load_unaligned(a.z.data + t * a.z.stride + d0), a.gate_scale ? a.gate_scale + d0 : nullptr);
        out.store_unaligned(a.y.data + t * a.y.stride + d0);
    }
}

// Both passes at 16 lanes (the avx512vnni tag, E a multiple of 16): the AVX2 block's operations
// per channel in its order (exp2_approx16, softplus16 and gate16 from selective_scan.hpp; min/max
// exact; vroundps → vrndscaleps to nearest, the same integer), so the states, the per-token
// ranges, the codes and the outputs equal the AVX2 path's bit for bit. The chunk's states are
// laid out [T][E/16][N][16] instead of [T][E/8][N][8]: scratch only.
#if MQ_HAS_AVX512VNNI_KERNELS
MQ_AVX512VNNI_BEGIN
template <class Arch, std::size_t N>
void quantized_scan_states16(const SelectiveScanArgs<float>& a, const QuantizedScanArgs& q, const QuantizedScanScratch& w,
                             std::size_t d0, std::size_t t0, std::size_t T) noexcept {
    constexpr std::size_t W = 16;
    constexpr __mmask16 all = 0xFFFF;
    const std::size_t E = a.channels();
    if (d0 + W < E) // the next block's rows of A and of the state, as quantized_scan_states
        for (std::size_t j = d0 + W; j < d0 + 2 * W; ++j)
            for (std::size_t n = 0; n < N; n += 64 / sizeof(float)) {
                prefetch_read(a.A.data + j * a.A.stride + n);
                prefetch_read(a.state.data + j * a.state.stride + n);
            }
    alignas(64) float a_tile[N * W];
    __m512 s[N];
    load_block16<Arch, N>(a, d0, a_tile, s);
    const __m512 bias = a.delta_bias ? _mm512_loadu_ps(a.delta_bias + d0) : _mm512_setzero_ps();
    for (std::size_t i = 0; i < T; ++i) {
        const std::size_t t = t0 + i;
        const __m512 xv = _mm512_loadu_ps(a.x.data + t * a.x.stride + d0);
        __m512 dt = _mm512_loadu_ps(a.delta.data + t * a.delta.stride + d0);
        if (a.delta_softplus) dt = softplus16<Arch>(_mm512_add_ps(dt, bias));
        const __m512 dx = _mm512_mul_ps(dt, xv);
        const float* brow = a.B.data + t * a.B.stride;
        const bool first = t == 0 && a.first_step_log_scale;
#pragma GCC unroll 32
        for (std::size_t n = 0; n < N; ++n) {
            const __m512 at = _mm512_load_ps(a_tile + n * W);
            const __m512 arg = first ? _mm512_fmadd_ps(dt, at, _mm512_set1_ps(a.first_step_log_scale[n] * kLog2e))
                                     : _mm512_mul_ps(dt, at);
            s[n] = _mm512_fmadd_ps(exp2_approx16<Arch>(arg), s[n], _mm512_mul_ps(dx, _mm512_set1_ps(brow[n])));
        }
        __m512 r[N];
        if (q.rotation) {
#pragma GCC unroll 32
            for (std::size_t n = 0; n < N; ++n) r[n] = _mm512_setzero_ps();
            for (std::size_t m = 0; m < N; ++m) {
                const float* hrow = q.rotation + m * N;
#pragma GCC unroll 32
                for (std::size_t n = 0; n < N; ++n) r[n] = _mm512_fmadd_ps(s[m], _mm512_set1_ps(hrow[n]), r[n]);
            }
        } else {
#pragma GCC unroll 32
            for (std::size_t n = 0; n < N; ++n) r[n] = s[n];
        }
        __m512 lo = r[0], hi = r[0];
        float* dst = w.states + (i * E + d0) * N;
#pragma GCC unroll 32
        for (std::size_t n = 0; n < N; ++n) {
            lo = _mm512_mask_min_ps(lo, all, lo, r[n]);
            hi = _mm512_mask_max_ps(hi, all, hi, r[n]);
            _mm512_store_ps(dst + n * W, r[n]);
        }
        float* lo_t = w.lo + i * kQuantizedScanMaxLanes;
        float* hi_t = w.hi + i * kQuantizedScanMaxLanes;
        _mm512_storeu_ps(lo_t, _mm512_mask_min_ps(lo, all, lo, _mm512_loadu_ps(lo_t)));
        _mm512_storeu_ps(hi_t, _mm512_mask_max_ps(hi, all, hi, _mm512_loadu_ps(hi_t)));
    }
    store_block16_state<Arch, N>(s, a, d0);
}

template <class Arch, std::size_t N>
void quantized_scan_outputs16(const SelectiveScanArgs<float>& a, const QuantizedScanScratch& w, std::size_t d0,
                              std::size_t t0, std::size_t T) noexcept {
    constexpr std::size_t W = 16;
    constexpr __mmask16 all = 0xFFFF;
    const std::size_t E = a.channels();
    const __m512 dskip = a.D ? _mm512_loadu_ps(a.D + d0) : _mm512_setzero_ps();
    for (std::size_t i = 0; i < T; ++i) {
        const std::size_t t = t0 + i;
        const __m512 inv = _mm512_set1_ps(w.si[i]), qlo = _mm512_set1_ps(w.qlo[i]), qhi = _mm512_set1_ps(w.qhi[i]);
        const float* src = w.states + (i * E + d0) * N;
        const float* crow = w.c + t * N;
        __m512 acc = _mm512_setzero_ps();
#pragma GCC unroll 32
        for (std::size_t n = 0; n < N; ++n) {
            const __m512 v = _mm512_mul_ps(_mm512_load_ps(src + n * W), inv);
            __m512 code = _mm512_mask_roundscale_ps(v, all, v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            code = _mm512_mask_min_ps(code, all, _mm512_mask_max_ps(code, all, code, qlo), qhi);
            acc = _mm512_fmadd_ps(code, _mm512_set1_ps(crow[n]), acc);
        }
        __m512 out = _mm512_mul_ps(acc, _mm512_set1_ps(w.ss[i] * w.cs[t]));
        out = _mm512_fmadd_ps(dskip, _mm512_loadu_ps(a.x.data + t * a.x.stride + d0), out);
        if (a.z.data)
            out = _mm512_mul_ps(out, gate16<Arch>(_mm512_loadu_ps(a.z.data + t * a.z.stride + d0),
                                                  a.gate_scale ? a.gate_scale + d0 : nullptr));
        _mm512_storeu_ps(a.y.data + t * a.y.stride + d0, out);
    }
}
MQ_AVX512VNNI_END
#endif // MQ_HAS_AVX512VNNI_KERNELS

template <class Arch, std::size_t N, QuantizerPolicy Q>
void quantized_scan_blocks(const SelectiveScanArgs<float>& a, const QuantizedScanArgs& q) noexcept {
    static_assert(simd_width_v<Arch> <= kQuantizedScanMaxLanes, "quantized scan: SIMD width above the workspace's lanes");
    constexpr float kQmin = static_cast<float>(Q::range::min), kQmax = static_cast<float>(Q::range::max);
    const std::size_t L = a.length(), E = a.channels();
    // Channel blocks of 16 on avx512vnni where E allows, else of the xsimd batch width.
    bool wide = false;
#if MQ_HAS_AVX512VNNI_KERNELS
    if constexpr (is_avx512vnni_v<Arch>) wide = E % 16 == 0;
#endif
    const std::size_t W = wide ? 16 : simd_width_v<Arch>;
    const QuantizedScanScratch w(q.workspace, L, N);
    quantize_scan_C<Q>(a.C, w.c, w.cs);
    for (std::size_t t0 = 0; t0 < L; t0 += kQuantizedScanChunk) {
        const std::size_t T = std::min(kQuantizedScanChunk, L - t0);
        std::fill(w.lo, w.lo + T * kQuantizedScanMaxLanes, std::numeric_limits<float>::infinity());
        std::fill(w.hi, w.hi + T * kQuantizedScanMaxLanes, -std::numeric_limits<float>::infinity());
#if MQ_HAS_AVX512VNNI_KERNELS
        if constexpr (is_avx512vnni_v<Arch>)
            if (wide)
                for (std::size_t d0 = 0; d0 < E; d0 += W) quantized_scan_states16<Arch, N>(a, q, w, d0, t0, T);
#endif
        if (!wide)
            for (std::size_t d0 = 0; d0 < E; d0 += W) quantized_scan_states<Arch, N>(a, q, w, d0, t0, T);
        for (std::size_t i = 0; i < T; ++i) {
            const float* lo_t = w.lo + i * kQuantizedScanMaxLanes;
            const float* hi_t = w.hi + i * kQuantizedScanMaxLanes;
            const QuantParams p = Q::params(*std::min_element(lo_t, lo_t + W), *std::max_element(hi_t, hi_t + W));
            w.ss[i] = p.scale;
            w.si[i] = p.inv_scale;
            w.qlo[i] = kQmin - static_cast<float>(p.zero);
            w.qhi[i] = kQmax - static_cast<float>(p.zero);
        }
#if MQ_HAS_AVX512VNNI_KERNELS
        if constexpr (is_avx512vnni_v<Arch>)
            if (wide)
                for (std::size_t d0 = 0; d0 < E; d0 += W) quantized_scan_outputs16<Arch, N>(a, w, d0, t0, T);
#endif
        if (!wide)
            for (std::size_t d0 = 0; d0 < E; d0 += W) quantized_scan_outputs<Arch, N>(a, w, d0, t0, T);
    }
}
} // namespace detail

// SIMD form: E a multiple of the SIMD width and N ∈ {4, 8, 16, 32} with a float state; otherwise
// the reference runs. The states differ from the reference's by exp2_approx (as in the float
// scan), so a code may differ where a value sits on a rounding boundary: the tests hold both
// to the quantization error bound of the float scan and find them apart (beyond 1e-5 of the
// output magnitude) on ≤ 2% of outputs (measured: 17 of 196,608); with equal states they agree
// bit for bit.
template <class Arch, QuantizerPolicy Q, class State>
void quantized_selective_scan(Arch, const SelectiveScanArgs<State>& a, const QuantizedScanArgs& q) noexcept {
    MQ_ASSERT(detail::scan_args_consistent(a), "quantized_selective_scan: inconsistent shapes");
    MQ_ASSERT(q.workspace && q.workspace_size >= quantized_scan_workspace_size(a.length(), a.channels(), a.state_size()),
              "quantized_selective_scan: workspace too small");
    if constexpr (std::is_same_v<State, float>) {
        if (a.channels() % simd_width_v<Arch> == 0) {
            switch (a.state_size()) {
            case 4: return detail::quantized_scan_blocks<Arch, 4, Q>(a, q);
            case 8: return detail::quantized_scan_blocks<Arch, 8, Q>(a, q);
            case 16: return detail::quantized_scan_blocks<Arch, 16, Q>(a, q);
            case 32: return detail::quantized_scan_blocks<Arch, 32, Q>(a, q);
            default: break;
            }
        }
    }
    quantized_selective_scan_ref<Q>(a, q);
}

MQ_NAMESPACE_END
