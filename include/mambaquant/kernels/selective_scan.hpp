// The Mamba-1 selective scan over a sequence (prefill) or one token (decode), SIMD and scalar.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/exp.hpp>
#include <mambaquant/kernels/silu.hpp>
#include <mambaquant/kernels/softplus.hpp>

#include <cmath>
#include <cstddef>
#include <type_traits>

#if defined(__AVX__)
#include <immintrin.h>
#endif

MQ_NAMESPACE_BEGIN

// Per channel d, state index n, token t (state_{-1} = the incoming state):
//   Δ_t[d]        = softplus(delta_t[d] + bias[d])   if delta_softplus, else delta_t[d]
//   state_t[d,n]  = exp(Δ_t[d]·A[d,n] + λ_t[n]) · state_{t−1}[d,n] + Δ_t[d]·B_t[n]·x_t[d]
//   y_t[d]        = (Σ_n state_t[d,n]·C_t[n] + D[d]·x_t[d]) · SiLU(z_t[d])
// or, with gate_scale g [E] (S-SiLU, MambaQuant S2), · z_t[d]·σ(g[d]·z_t[d]) in the same epilogue
// (g = 1 is SiLU bit for bit: g·z = z exactly);
// with λ_0 = first_step_log_scale (S4 absorption, METHOD §4: log dA'_0 = Δ_0·A + log(1/s)) and
// λ_t = 0 otherwise; D and z are optional. The state is updated in place and holds state_{L−1}
// on return, so decoding continues from a prefill and a prefill may be split into chunks.
// Shapes: x, delta, z, y [L, E]; A, state [E, N]; B, C [L, N]; D, delta_bias [E];
// first_step_log_scale [N]. Rows may be strided (x, z may be column blocks of a larger tensor).
template <class State = float>
struct SelectiveScanArgs {
    ConstMatrixView<float> x;
    ConstMatrixView<float> delta;
    const float* delta_bias = nullptr;
    bool delta_softplus = false;
    ConstMatrixView<float> A;
    ConstMatrixView<float> B;
    ConstMatrixView<float> C;
    const float* D = nullptr;
    ConstMatrixView<float> z;                       // data == nullptr: no gate
    const float* gate_scale = nullptr;              // [E] S-SiLU scale; null: SiLU
    const float* first_step_log_scale = nullptr;    // null: no absorption
    MatrixView<State> state;
    MatrixView<float> y;

    std::size_t length() const noexcept { return x.rows; }
    std::size_t channels() const noexcept { return x.cols; }
    std::size_t state_size() const noexcept { return A.cols; }
};

namespace detail {
// A software prefetch (GCC/Clang builtin); a no-op elsewhere.
MQ_ALWAYS_INLINE void prefetch_read(const void* p) noexcept {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(p);
#else
    (void)p;
#endif
}

#if defined(__AVX__)
// In-register 8×8 transpose (unpack, shuffle, lane permute: 24 shuffles for 64 floats).
MQ_ALWAYS_INLINE void transpose8x8(__m256* r) noexcept {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

template <class Arch, std::size_t N>
inline constexpr bool use_avx_transpose_v =
#if defined(__AVX__)
    std::is_base_of_v<xsimd::avx, Arch> && xsimd::batch<float, Arch>::size == 8 && N % 8 == 0;
#else
    false;
#endif

// out[n] lane j = src[j·stride + n] for W channels j and N state indices n: a [W, N] block of a
// row-major [E, N] tensor seen column by column (exact moves, so the layout never changes a bit).
template <class Arch, std::size_t N>
MQ_ALWAYS_INLINE void load_columns(const float* src, std::size_t stride, xsimd::batch<float, Arch>* out) noexcept {
    using Bt = xsimd::batch<float, Arch>;
    constexpr std::size_t W = Bt::size;
    if constexpr (use_avx_transpose_v<Arch, N>) {
#if defined(__AVX__)
        for (std::size_t c = 0; c < N; c += 8) {
            __m256 r[8];
            for (std::size_t j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(src + j * stride + c);
            transpose8x8(r);
            for (std::size_t i = 0; i < 8; ++i) out[c + i] = Bt(r[i]);
        }
#endif
    } else {
        alignas(64) float tile[N * W];
        for (std::size_t j = 0; j < W; ++j)
            for (std::size_t n = 0; n < N; ++n) tile[n * W + j] = src[j * stride + n];
        for (std::size_t n = 0; n < N; ++n) out[n] = Bt::load_aligned(tile + n * W);
    }
}

// The inverse: dst[j·stride + n] = in[n] lane j.
template <class Arch, std::size_t N>
MQ_ALWAYS_INLINE void store_columns(const xsimd::batch<float, Arch>* in, float* dst, std::size_t stride) noexcept {
    using Bt = xsimd::batch<float, Arch>;
    constexpr std::size_t W = Bt::size;
    if constexpr (use_avx_transpose_v<Arch, N>) {
#if defined(__AVX__)
        for (std::size_t c = 0; c < N; c += 8) {
            __m256 r[8];
            for (std::size_t i = 0; i < 8; ++i) r[i] = in[c + i];
            transpose8x8(r);
            for (std::size_t j = 0; j < 8; ++j) _mm256_storeu_ps(dst + j * stride + c, r[j]);
        }
#endif
    } else {
        alignas(64) float tile[N * W];
        for (std::size_t n = 0; n < N; ++n) in[n].store_aligned(tile + n * W);
        for (std::size_t j = 0; j < W; ++j)
            for (std::size_t n = 0; n < N; ++n) dst[j * stride + n] = tile[n * W + j];
    }
}

// The gate z·σ(g·z) (g = 1: SiLU(z) bit for bit), scalar (std::exp) and SIMD (exp_approx) forms.
inline float gate_ref(float z, float g) noexcept { return z / (1.0f + std::exp(-(g * z))); }
template <class Arch>
MQ_ALWAYS_INLINE xsimd::batch<float, Arch> gate(xsimd::batch<float, Arch> z, const float* g) noexcept {
    using Bt = xsimd::batch<float, Arch>;
    if (!g) return silu<Arch>(z);
    return z / (Bt(1.0f) + exp_approx<Arch>(-(Bt::load_unaligned(g) * z)));
}

template <class State>
bool scan_args_consistent(const SelectiveScanArgs<State>& a) noexcept {
    const std::size_t L = a.x.rows, E = a.x.cols, N = a.A.cols;
    return L > 0 && E > 0 && N > 0 && a.delta.rows == L && a.delta.cols == E && a.A.rows == E &&
           a.B.rows == L && a.B.cols == N && a.C.rows == L && a.C.cols == N &&
           (a.z.data == nullptr || (a.z.rows == L && a.z.cols == E)) && a.state.rows == E &&
           a.state.cols == N && a.y.rows == L && a.y.cols == E;
}

// The straightforward scan for channels [d_begin, d_end): token-major like PyTorch's
// selective_scan_ref, std::exp, float arithmetic (State precision for the state).
template <class State>
void selective_scan_ref_range(const SelectiveScanArgs<State>& a, std::size_t d_begin,
                              std::size_t d_end) noexcept {
    const std::size_t L = a.length(), N = a.state_size();
    for (std::size_t t = 0; t < L; ++t) {
        for (std::size_t d = d_begin; d < d_end; ++d) {
            const float xv = a.x(t, d);
            float dt = a.delta(t, d);
            if (a.delta_softplus) dt = softplus_ref(a.delta_bias ? dt + a.delta_bias[d] : dt);
            State acc = 0;
            for (std::size_t n = 0; n < N; ++n) {
                float arg = dt * a.A(d, n);
                if (t == 0 && a.first_step_log_scale) arg += a.first_step_log_scale[n];
                const State dA = static_cast<State>(std::exp(arg));
                const State dBu = static_cast<State>(dt * a.B(t, n) * xv);
                State& s = a.state(d, n);
                s = std::fma(dA, s, dBu); // one rounding, as the SIMD kernel's FMA
                acc += s * static_cast<State>(a.C(t, n));
            }
            float out = static_cast<float>(acc);
            if (a.D) out += a.D[d] * xv;
            if (a.z.data) out *= detail::gate_ref(a.z(t, d), a.gate_scale ? a.gate_scale[d] : 1.0f);
            a.y(t, d) = out;
        }
    }
}

// Token t + kAhead's rows of the W-channel block at d0: consecutive tokens of one block are a row
// stride apart (6 KiB for E = 1536), beyond what the hardware prefetchers follow across pages.
// Both ends of each row piece: a 16-float piece of a row that is not 64-byte aligned spans two
// cache lines, and the second one, not prefetched, was a demand miss on every token: with x
// aligned but Δ and z 32 bytes off (as heap-placed Eigen matrices come), the 16-lane scan at
// E = 1536, L = 1024 took 15.6 ms against 12.5 with both ends prefetched (AVX2 unchanged).
// When the piece lies in one line the second prefetch finds it in flight and costs an issue slot.
// (Written out, not a lambda: a call that is not inlined here would spill the N state registers.)
template <std::size_t W>
MQ_ALWAYS_INLINE void prefetch_scan_rows(const SelectiveScanArgs<float>& a, std::size_t t, std::size_t d0) noexcept {
    constexpr std::size_t kAhead = 8;
    if (t + kAhead >= a.length()) return;
    const std::size_t r = t + kAhead;
    const float* x = a.x.data + r * a.x.stride + d0;
    const float* delta = a.delta.data + r * a.delta.stride + d0;
    const float* y = a.y.data + r * a.y.stride + d0;
    prefetch_read(x), prefetch_read(x + W - 1);
    prefetch_read(delta), prefetch_read(delta + W - 1);
    if (a.z.data) {
        const float* z = a.z.data + r * a.z.stride + d0;
        prefetch_read(z), prefetch_read(z + W - 1);
    }
    prefetch_read(y), prefetch_read(y + W - 1);
}

// A's columns of the W-channel block at d0, pre-multiplied by log2(e) so that the decay
// exp(Δ·A) = 2^(Δ·A·log2 e), written to a stack tile of N·W floats (16 more registers would
// spill; the tile stays in L1). Shared by the float and the quantized scan kernels.
template <class Arch, std::size_t N>
MQ_ALWAYS_INLINE void load_scan_block_A(const SelectiveScanArgs<float>& a, std::size_t d0, float* a_tile) noexcept {
    using Bt = xsimd::batch<float, Arch>;
    constexpr std::size_t W = Bt::size;
    Bt a_cols[N];
    load_columns<Arch, N>(a.A.data + d0 * a.A.stride, a.A.stride, a_cols);
    for (std::size_t n = 0; n < N; ++n) (a_cols[n] * Bt(kLog2e)).store_aligned(a_tile + n * W);
}

// Compile-time N: the W-channel block keeps its N state vectors in registers (N = 16: 16 ymm
// registers of 8 channels) for the whole sequence, so the state never leaves the core; A is
// transposed once per block into a small stack tile that stays in L1.
template <class Arch, std::size_t N>
void selective_scan_block(const SelectiveScanArgs<float>& a, std::size_t d0) noexcept {
    using Bt = xsimd::batch<float, Arch>;
    constexpr std::size_t W = Bt::size;
    const std::size_t L = a.length();
    alignas(64) float a_tile[N * W];
    load_scan_block_A<Arch, N>(a, d0, a_tile);
    Bt s[N];
    load_columns<Arch, N>(a.state.data + d0 * a.state.stride, a.state.stride, s);
    const Bt bias = a.delta_bias ? Bt::load_unaligned(a.delta_bias + d0) : Bt(0.0f);
    const Bt dskip = a.D ? Bt::load_unaligned(a.D + d0) : Bt(0.0f);
    for (std::size_t t = 0; t < L; ++t) {
        const float* xr = a.x.data + t * a.x.stride + d0;
        const float* dr = a.delta.data + t * a.delta.stride + d0;
        prefetch_scan_rows<W>(a, t, d0);
        const Bt xv = Bt::load_unaligned(xr);
        Bt dt = Bt::load_unaligned(dr);
        if (a.delta_softplus) dt = softplus<Arch>(dt + bias);
        const Bt dx = dt * xv; // Δ·x once per token, reused by all N
        const float* brow = a.B.data + t * a.B.stride;
        const float* crow = a.C.data + t * a.C.stride;
        // Two partial sums (even and odd n) halve the FMA latency chain of y_t = Σ_n state_n·C_n.
        Bt acc(0.0f), acc_odd(0.0f);
        if (t == 0 && a.first_step_log_scale) {
#pragma GCC unroll 32
            for (std::size_t n = 0; n < N; ++n) {
                const Bt dA = exp2_approx<Arch>(xsimd::fma(dt, Bt::load_aligned(a_tile + n * W),
                                                           Bt(a.first_step_log_scale[n] * kLog2e)));
                s[n] = xsimd::fma(dA, s[n], dx * Bt(brow[n]));
                if (n % 2 == 0) acc = xsimd::fma(s[n], Bt(crow[n]), acc);
                else acc_odd = xsimd::fma(s[n], Bt(crow[n]), acc_odd);
            }
        } else {
#pragma GCC unroll 32
            for (std::size_t n = 0; n < N; ++n) {
                const Bt dA = exp2_approx<Arch>(dt * Bt::load_aligned(a_tile + n * W));
                s[n] = xsimd::fma(dA, s[n], dx * Bt(brow[n]));
                if (n % 2 == 0) acc = xsimd::fma(s[n], Bt(crow[n]), acc);
                else acc_odd = xsimd::fma(s[n], Bt(crow[n]), acc_odd);
            }
        }
        Bt out = xsimd::fma(dskip, xv, acc + acc_odd);
        if (a.z.data)
            out *= gate<Arch>(Bt::load_unaligned(a.z.data + t * a.z.stride + d0), a.gate_scale ? a.gate_scale + d0 : nullptr);
        out.store_unaligned(a.y.data + t * a.y.stride + d0);
    }
    store_columns<Arch, N>(s, a.state.data + d0 * a.state.stride, a.state.stride);
}

// The scan at 16 lanes (the avx512vnni tag): 16 channels per block, the N = 16 state vectors in
// 16 of the 32 zmm registers. Intrinsics in a target region (xsimd 8.1 has no AVX-512 batch in
// an AVX2 TU); the per-channel arithmetic is the AVX2 block's, operation for operation (exp2 on
// 16 lanes is exp2_approx's sequence; softplus and the gate, once per token, run the AVX2 code
// on each half), so every output and state equals the AVX2 path's bit for bit.
#if MQ_HAS_AVX512VNNI_KERNELS
MQ_AVX512VNNI_BEGIN
// The halves through extractf32x8 (_mm512_castps512_ps256 passes an undefined vector on which
// g++ 12 warns -Wmaybe-uninitialized, GCC bug 105593).
template <class Arch>
MQ_ALWAYS_INLINE __m512 join_halves(__m256 lo, __m256 hi) noexcept {
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}
// softplus: e^x on 16 lanes (exp_approx16), xsimd's log1p on each AVX2 half (no 16-lane twin of
// it here), then softplus's select (x > 20 ordered, as xsimd's AVX compare).
template <class Arch>
MQ_ALWAYS_INLINE __m512 softplus16(__m512 v) noexcept {
    using B8 = xsimd::batch<float, avx2>;
    const __m512 e = exp_approx16<Arch>(v);
    const __m512 soft = join_halves<Arch>(xsimd::log1p(B8(_mm512_extractf32x8_ps(e, 0))),
                                          xsimd::log1p(B8(_mm512_extractf32x8_ps(e, 1))));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, _mm512_set1_ps(kSoftplusThreshold), _CMP_GT_OQ), soft, v);
}
// gate's operations on 16 lanes: SiLU (silu16) or z / (1 + e^{−(g·z)}).
template <class Arch>
MQ_ALWAYS_INLINE __m512 gate16(__m512 z, const float* g) noexcept {
    if (!g) return silu16<Arch>(z);
    const __m512 gz = _mm512_mul_ps(_mm512_loadu_ps(g), z);
    const __m512 e = exp_approx16<Arch>(_mm512_xor_ps(gz, _mm512_set1_ps(-0.0f)));
    return _mm512_div_ps(z, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

// A 16-channel block's A·log2 e (into an L1 tile of N·16 floats, as the AVX2 block's) and its
// state, column by column: two AVX2 8-channel transposes each, joined into 16 lanes (decode runs
// this for every token). Shared by the float and the quantized scan's 16-lane blocks.
template <class Arch, std::size_t N>
MQ_ALWAYS_INLINE void load_block16(const SelectiveScanArgs<float>& a, std::size_t d0, float* a_tile, __m512* s) noexcept {
    using B8 = xsimd::batch<float, avx2>;
    B8 lo8[N], hi8[N];
    load_columns<avx2, N>(a.A.data + d0 * a.A.stride, a.A.stride, lo8);
    load_columns<avx2, N>(a.A.data + (d0 + 8) * a.A.stride, a.A.stride, hi8);
    for (std::size_t n = 0; n < N; ++n) {
        (lo8[n] * B8(kLog2e)).store_aligned(a_tile + n * 16);
        (hi8[n] * B8(kLog2e)).store_aligned(a_tile + n * 16 + 8);
    }
    load_columns<avx2, N>(a.state.data + d0 * a.state.stride, a.state.stride, lo8);
    load_columns<avx2, N>(a.state.data + (d0 + 8) * a.state.stride, a.state.stride, hi8);
#pragma GCC unroll 32
    for (std::size_t n = 0; n < N; ++n) s[n] = join_halves<Arch>(lo8[n], hi8[n]);
}
// The inverse for the state: back into the row-major [E, N] tensor.
template <class Arch, std::size_t N>
MQ_ALWAYS_INLINE void store_block16_state(const __m512* s, const SelectiveScanArgs<float>& a, std::size_t d0) noexcept {
    using B8 = xsimd::batch<float, avx2>;
    B8 lo8[N], hi8[N];
#pragma GCC unroll 32
    for (std::size_t n = 0; n < N; ++n) {
        lo8[n] = B8(_mm512_extractf32x8_ps(s[n], 0));
        hi8[n] = B8(_mm512_extractf32x8_ps(s[n], 1));
    }
    store_columns<avx2, N>(lo8, a.state.data + d0 * a.state.stride, a.state.stride);
    store_columns<avx2, N>(hi8, a.state.data + (d0 + 8) * a.state.stride, a.state.stride);
}

template <class Arch, std::size_t N>
void selective_scan_block16(const SelectiveScanArgs<float>& a, std::size_t d0) noexcept {
    constexpr std::size_t W = 16;
    const std::size_t L = a.length();
    alignas(64) float a_tile[N * W];
    // Unrolled helpers, so that s[] is only ever indexed by constants and lives in registers.
    __m512 s[N];
    load_block16<Arch, N>(a, d0, a_tile, s);
    const __m512 bias = a.delta_bias ? _mm512_loadu_ps(a.delta_bias + d0) : _mm512_setzero_ps();
    const __m512 dskip = a.D ? _mm512_loadu_ps(a.D + d0) : _mm512_setzero_ps();
    for (std::size_t t = 0; t < L; ++t) {
        const float* xr = a.x.data + t * a.x.stride + d0;
        const float* dr = a.delta.data + t * a.delta.stride + d0;
        prefetch_scan_rows<W>(a, t, d0);
        const __m512 xv = _mm512_loadu_ps(xr);
        __m512 dt = _mm512_loadu_ps(dr);
        if (a.delta_softplus) dt = softplus16<Arch>(_mm512_add_ps(dt, bias));
        const __m512 dx = _mm512_mul_ps(dt, xv);
        const float* brow = a.B.data + t * a.B.stride;
        const float* crow = a.C.data + t * a.C.stride;
        __m512 acc = _mm512_setzero_ps(), acc_odd = _mm512_setzero_ps();
        if (t == 0 && a.first_step_log_scale) {
#pragma GCC unroll 32
            for (std::size_t n = 0; n < N; ++n) {
                const __m512 dA = exp2_approx16<Arch>(_mm512_fmadd_ps(
                    dt, _mm512_load_ps(a_tile + n * W), _mm512_set1_ps(a.first_step_log_scale[n] * kLog2e)));
                s[n] = _mm512_fmadd_ps(dA, s[n], _mm512_mul_ps(dx, _mm512_set1_ps(brow[n])));
                if (n % 2 == 0) acc = _mm512_fmadd_ps(s[n], _mm512_set1_ps(crow[n]), acc);
                else acc_odd = _mm512_fmadd_ps(s[n], _mm512_set1_ps(crow[n]), acc_odd);
            }
        } else {
#pragma GCC unroll 32
            for (std::size_t n = 0; n < N; ++n) {
                const __m512 dA = exp2_approx16<Arch>(_mm512_mul_ps(dt, _mm512_load_ps(a_tile + n * W)));
                s[n] = _mm512_fmadd_ps(dA, s[n], _mm512_mul_ps(dx, _mm512_set1_ps(brow[n])));
                if (n % 2 == 0) acc = _mm512_fmadd_ps(s[n], _mm512_set1_ps(crow[n]), acc);
                else acc_odd = _mm512_fmadd_ps(s[n], _mm512_set1_ps(crow[n]), acc_odd);
            }
        }
        __m512 out = _mm512_fmadd_ps(dskip, xv, _mm512_add_ps(acc, acc_odd));
        if (a.z.data)
            out = _mm512_mul_ps(out, gate16<Arch>(_mm512_loadu_ps(a.z.data + t * a.z.stride + d0),
                                                  a.gate_scale ? a.gate_scale + d0 : nullptr));
        _mm512_storeu_ps(a.y.data + t * a.y.stride + d0, out);
    }
    store_block16_state<Arch, N>(s, a, d0);
}

// Blocks of 16, then one AVX2 block of 8 if 8 channels remain, then the reference's tail: every
// channel runs the arithmetic it runs on AVX2, so the 16-lane path gives the AVX2 path's bits.
// Rows that are not 64-byte aligned (a large Eigen MatrixXf starts 32 bytes past a cache line)
// make every 16-float piece span two lines; prefetching both ends (prefetch_scan_rows) is what
// matters there. Starting the blocks on a line instead (the first 8 channels as an AVX2 block)
// measured within 2 % of this once both ends were prefetched, so the blocks start at channel 0.
template <class Arch, std::size_t N>
void selective_scan_blocks16(const SelectiveScanArgs<float>& a) noexcept {
    const std::size_t E = a.channels();
    const std::size_t end16 = E / 16 * 16, end8 = E - E % 8;
    for (std::size_t d0 = 0; d0 < end16; d0 += 16) selective_scan_block16<Arch, N>(a, d0);
    if (end8 > end16) selective_scan_block<avx2, N>(a, end16);
    if (end8 < E) selective_scan_ref_range(a, end8, E);
}
MQ_AVX512VNNI_END
#endif // MQ_HAS_AVX512VNNI_KERNELS

template <class Arch, std::size_t N>
void selective_scan_blocks(const SelectiveScanArgs<float>& a) noexcept {
#if MQ_HAS_AVX512VNNI_KERNELS
    if constexpr (is_avx512vnni_v<Arch>) {
        selective_scan_blocks16<Arch, N>(a);
        return;
    }
#endif
    constexpr std::size_t W = simd_width_v<Arch>;
    const std::size_t E = a.channels();
    const std::size_t vec_end = E - E % W;
    for (std::size_t d0 = 0; d0 < vec_end; d0 += W) selective_scan_block<Arch, N>(a, d0);
    if (vec_end < E) selective_scan_ref_range(a, vec_end, E); // channel tail
}
} // namespace detail

// Scalar reference (the straightforward loop, std::exp): the twin the SIMD scan is tested against.
template <class State>
void selective_scan_ref(const SelectiveScanArgs<State>& a) noexcept {
    MQ_ASSERT(detail::scan_args_consistent(a), "selective_scan_ref: inconsistent shapes");
    detail::selective_scan_ref_range(a, 0, a.channels());
}

// SIMD scan: channel blocks of the SIMD width, each over the whole sequence with its state in
// registers. Specialized for N ∈ {4, 8, 16, 32} with a float state; other N or state types
// run the reference. It differs from the reference by the decay 2^(Δ·(A·log2 e)) through
// exp2_approx (≤ kExp2MaxRelError, plus one more rounding of the product), softplus/SiLU on
// exp_approx, Δ·x formed once (Δ·x·B instead of Δ·B·x) and y summed as two partial sums (even
// and odd n). Measured against float64 the outputs stay within 1e-6 of the magnitude of their
// terms on Mamba shapes up to L = 2048 (test_selective_scan.cpp checks ≤ 1e-5). Channel tails
// (E not a multiple of the width) run the reference arithmetic. Prefill, decode steps and
// chunked prefill run the same per-channel arithmetic, so they agree bit for bit.
template <class Arch, class State>
void selective_scan(Arch, const SelectiveScanArgs<State>& a) noexcept {
    MQ_ASSERT(detail::scan_args_consistent(a), "selective_scan: inconsistent shapes");
    if constexpr (std::is_same_v<State, float>) {
        switch (a.state_size()) {
        case 4: return detail::selective_scan_blocks<Arch, 4>(a);
        case 8: return detail::selective_scan_blocks<Arch, 8>(a);
        case 16: return detail::selective_scan_blocks<Arch, 16>(a);
        case 32: return detail::selective_scan_blocks<Arch, 32>(a);
        default: break;
        }
    }
    detail::selective_scan_ref_range(a, 0, a.channels());
}

MQ_NAMESPACE_END
