// Integer GEMM/GEMV: int8 activations × int8 or packed int4 weights, int32 sums, one fused epilogue.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/packed_weights.hpp>
#include <mambaquant/kernels/parallel.hpp>
#include <mambaquant/kernels/quantized_activations.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/range.hpp>

#include <xsimd/xsimd.hpp>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

MQ_NAMESPACE_BEGIN

// y[m][n] = Σ_k x̂[m][k]·ŵ[n][k] + bias[n], from x̂ = (a − z_a)·s_a and the packed ŵ:
//   W8:  y = (s_a·s_w[n])·(Σ_k a·q − z_a·Σ_k q) + bias                       (exact int32, then one rounding)
//   W4:  y = s_a·(Σ_g s_g·(Σ_{k∈g} a·u − z_g·Σ_{k∈g} a) − z_a·col_corr[n]) + bias
// and, for an integer OutT, requantized: q = clamp(round_half_even(y·inv_scale) + zero) (quantize_value).
// float: plain output; int8_t: symmetric [-127, 127]; uint8_t: asymmetric [0, 255].
template <class OutT = float>
struct Epilogue {
    static_assert(std::is_same_v<OutT, float> || std::is_same_v<OutT, std::int8_t> || std::is_same_v<OutT, std::uint8_t>,
                  "Epilogue: output is float or requantized int8_t / uint8_t");
    const float* bias = nullptr; // [n] or nullptr
    QuantParams out{};           // output quantization (integer OutT only)
};

namespace detail {

template <class OutT>
using out_range_t = std::conditional_t<std::is_same_v<OutT, std::int8_t>, Int8SymmetricRange, UInt8AsymmetricRange>;

// Writes `count` ≤ 8 outputs of one channel tile.
template <class OutT>
MQ_ALWAYS_INLINE void store_tile(OutT* dst, const float* y, std::size_t count, const Epilogue<OutT>& e) noexcept {
    if constexpr (std::is_same_v<OutT, float>) {
        std::memcpy(dst, y, count * sizeof(float));
    } else {
        for (std::size_t i = 0; i < count; ++i)
            dst[i] = static_cast<OutT>(quantize_value<out_range_t<OutT>>(y[i], e.out));
    }
}

inline float bias_at(const float* bias, std::size_t n, std::size_t col) noexcept {
    return bias && col < n ? bias[col] : 0.0f;
}

} // namespace detail

// ---------------------------------------------------------------------------------------------
// Scalar references: the same integer sums and the same float operations in the same order
// (explicit std::fma, never left to -ffp-contract), so the fast kernels match them bit for bit.
// They cover channel tiles [block_begin, block_end) like the kernels.

template <class OutT>
void qgemm_ref(const ActBuffer<std::int16_t>& a, const PackedW8& w, const Epilogue<OutT>& e, MatrixView<OutT> y,
               std::size_t block_begin, std::size_t block_end) noexcept {
    MQ_ASSERT(a.k == w.k && a.k_pad == w.k_pad && y.rows == a.rows && y.cols == w.n, "qgemm_ref: shapes");
    for (std::size_t m = 0; m < a.rows; ++m) {
        const std::int16_t* ar = a.row(m);
        for (std::size_t n = block_begin * kPackCols; n < std::min(block_end * kPackCols, w.n); ++n) {
            std::int64_t acc = 0;
            for (std::size_t k = 0; k < w.k_pad; ++k) acc += std::int64_t{ar[k]} * w.code(n, k);
            const auto t = static_cast<std::int32_t>(acc - std::int64_t{a.zero[m]} * w.qsum[n]);
            const float sc = a.scale[m] * w.scale[n];
            const float v = std::fma(static_cast<float>(t), sc, detail::bias_at(e.bias, w.n, n));
            detail::store_tile(&y(m, n), &v, 1, e);
        }
    }
}

template <class OutT>
void qgemm_ref(const ActBuffer<std::uint8_t>& a, const PackedW4& w, const Epilogue<OutT>& e, MatrixView<OutT> y,
               std::size_t block_begin, std::size_t block_end) noexcept {
    MQ_ASSERT(a.k == w.k && a.k_pad == w.k_pad && a.group == w.group && y.rows == a.rows && y.cols == w.n, "qgemm_ref: shapes");
    for (std::size_t m = 0; m < a.rows; ++m) {
        const std::uint8_t* ar = a.row(m);
        for (std::size_t n = block_begin * kPackCols; n < std::min(block_end * kPackCols, w.n); ++n) {
            float accf = 0.0f;
            for (std::size_t g = 0; g < w.groups; ++g) {
                std::int32_t acc = 0;
                for (std::size_t k = g * w.group; k < (g + 1) * w.group; ++k) acc += std::int32_t{ar[k]} * w.nibble(n, k);
                const std::size_t pi = w.param_index(n, g);
                const std::int32_t t = acc - w.zero[pi] * a.gsum[m * a.groups + g];
                accf = std::fma(static_cast<float>(t), w.scale[pi], accf);
            }
            const float tt = std::fma(-static_cast<float>(a.zero[m]), w.col_corr[n], accf);
            const float v = std::fma(a.scale[m], tt, detail::bias_at(e.bias, w.n, n));
            detail::store_tile(&y(m, n), &v, 1, e);
        }
    }
}

namespace detail {

#if defined(__AVX2__)

// Loads the bias of one channel tile (zeros past n, or without bias).
MQ_ALWAYS_INLINE __m256 load_bias8(const float* bias, std::size_t n, std::size_t col) noexcept {
    if (!bias) return _mm256_setzero_ps();
    if (col + kPackCols <= n) return _mm256_loadu_ps(bias + col);
    alignas(32) float b[kPackCols];
    for (std::size_t i = 0; i < kPackCols; ++i) b[i] = bias_at(bias, n, col + i);
    return _mm256_load_ps(b);
}

template <class OutT>
MQ_ALWAYS_INLINE void store8(MatrixView<OutT> y, std::size_t m, std::size_t col, std::size_t n, __m256 v,
                             const Epilogue<OutT>& e) noexcept {
    OutT* dst = y.data + m * y.stride + col;
    if constexpr (std::is_same_v<OutT, float>) {
        if (col + kPackCols <= n) {
            _mm256_storeu_ps(dst, v);
            return;
        }
    }
    alignas(32) float t[kPackCols];
    _mm256_store_ps(t, v);
    store_tile(dst, t, std::min(kPackCols, n - col), e);
}

MQ_ALWAYS_INLINE __m256i broadcast32(const void* p) noexcept {
    std::int32_t v;
    std::memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

// W8 epilogue of MR tokens × NB tiles (the GEMV: MR = 1, m0 = 0), the reference's operations:
// t = Σ a·q − z·Σ q (wrapping int32 is exact: the true t fits), y = (s_a·s_w)·t + b. The kernels'
// sums may be of codes offset by zero_offset (VNNI reads signed codes + 128), z = zero + offset.
template <int MR, int NB, class Acc, class OutT>
MQ_ALWAYS_INLINE void w8_epilogue(const Acc& acc, std::int32_t zero_offset, const ActBuffer<std::int16_t>& a,
                                  std::size_t m0, const PackedW8& w, std::size_t nb0, const Epilogue<OutT>& e,
                                  MatrixView<OutT> y) noexcept {
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) {
        const std::size_t col = (nb0 + j) * kPackCols;
        const __m256i qs = _mm256_load_si256(reinterpret_cast<const __m256i*>(w.qsum.data() + col));
        const __m256 ws = _mm256_load_ps(w.scale.data() + col);
        const __m256 b = load_bias8(e.bias, w.n, col);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const __m256i z = _mm256_set1_epi32(a.zero[m0 + i] + zero_offset);
            const __m256i t = _mm256_sub_epi32(acc[i][j], _mm256_mullo_epi32(z, qs));
            const __m256 sc = _mm256_mul_ps(_mm256_set1_ps(a.scale[m0 + i]), ws);
            store8(y, m0 + i, col, w.n, _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), sc, b), e);
        }
    }
}

// W4 group end of MR tokens × NB tiles: t = Σ a·u' − (z_g + zero_offset)·Σ a (exact int32; the
// GEMM tile's u' = u − 8 has offset −8), accf += s_g·t.
template <int MR, int NB, class Acc, class AccF>
MQ_ALWAYS_INLINE void w4_group_end(const Acc& acc, AccF& accf, std::int32_t zero_offset, const ActBuffer<std::uint8_t>& a,
                                   std::size_t m0, const PackedW4& w, std::size_t nb0, std::size_t g) noexcept {
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) {
        const std::size_t pi = ((nb0 + j) * w.groups + g) * kPackCols;
        const __m256i zg = _mm256_add_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(w.zero.data() + pi)),
                                            _mm256_set1_epi32(zero_offset));
        const __m256 sg = _mm256_load_ps(w.scale.data() + pi);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const __m256i sa = _mm256_set1_epi32(a.gsum[(m0 + i) * a.groups + g]);
            const __m256i t = _mm256_sub_epi32(acc[i][j], _mm256_mullo_epi32(zg, sa));
            accf[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), sg, accf[i][j]);
        }
    }
}

// W4 final epilogue: y = s_a·(accf − z_a·col_corr) + b.
template <int MR, int NB, class AccF, class OutT>
MQ_ALWAYS_INLINE void w4_epilogue(const AccF& accf, const ActBuffer<std::uint8_t>& a, std::size_t m0, const PackedW4& w,
                                  std::size_t nb0, const Epilogue<OutT>& e, MatrixView<OutT> y) noexcept {
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) {
        const std::size_t col = (nb0 + j) * kPackCols;
        const __m256 cc = _mm256_load_ps(w.col_corr.data() + col);
        const __m256 b = load_bias8(e.bias, w.n, col);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const __m256 tt = _mm256_fnmadd_ps(_mm256_set1_ps(static_cast<float>(a.zero[m0 + i])), cc, accf[i][j]);
            store8(y, m0 + i, col, w.n, _mm256_fmadd_ps(_mm256_set1_ps(a.scale[m0 + i]), tt, b), e);
        }
    }
}

// W8 micro-kernel: MR tokens × NB channel tiles of 8, the whole K.
// vpmaddwd on int16: lane = a_k·q_k + a_{k+1}·q_{k+1}, |a| ≤ 255, |q| ≤ 127, so each product
// and the pair sum are exact in int32 (no int16 saturation anywhere: vpmaddubsw would saturate,
// 2·255·127 = 64770 > 32767). The int32 sum stays exact while K·255·127 < 2^31 (K ≤ kMaxPackedK).
// Weights are sign-extended once per load and reused for MR tokens; activations arrive as int16
// pairs broadcast straight from memory (a load-port op, no shuffle).
template <int MR, int NB, class OutT>
MQ_ALWAYS_INLINE void w8_tile_avx2(const ActBuffer<std::int16_t>& a, std::size_t m0, const PackedW8& w,
                                   std::size_t nb0, const Epilogue<OutT>& e, MatrixView<OutT> y) noexcept {
    __m256i acc[MR][NB];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_si256();
    const std::size_t kp = w.k_pairs();
    const BlockW8x2* wb = w.blocks.data() + nb0 * kp;
    const std::int16_t* ar = a.row(m0);
    const std::size_t as = a.k_pad;
    for (std::size_t p = 0; p < kp; ++p) {
        __m256i wv[NB];
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j)
            wv[j] = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(wb + j * kp + p)));
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const __m256i av = broadcast32(ar + i * as + 2 * p);
#pragma GCC unroll 8
            for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(av, wv[j]));
        }
    }
    w8_epilogue<MR, NB>(acc, 0, a, m0, w, nb0, e, y);
}

// W4 micro-kernel: MR tokens × NB channel tiles of 8, group by group.
// The nibbles u ∈ [0, 15] are recentred to s = u − 8 ∈ [-8, 7] after unpacking (one vpsubb,
// shared by MR tokens), and vpmaddubsw(u8 activation a ∈ [0, 255], s8 weight s) gives lanes
// a·s + a'·s' with |·| ≤ 2·255·8 = 4080: never saturating. Eight such lanes (32 k: four 8-k
// blocks, low and high nibbles) sum to at most 8·4080 = 32640 ≤ 32767, so they accumulate in
// int16 and one vpmaddwd(·, 1) per 32 k widens them to int32: 1.125 multiplier instructions
// per 32 multiply-adds instead of 2 on the exact-int32 W8 path. Σ a·s = Σ a·u − 8·Σ a, so the
// group correction uses zero − 8: t = Σ a·s − (z − 8)·Σ a = Σ a·u − z·Σ a, the reference's t.
template <int MR, int NB, class OutT>
MQ_ALWAYS_INLINE void w4_tile_avx2(const ActBuffer<std::uint8_t>& a, std::size_t m0, const PackedW4& w,
                                   std::size_t nb0, const Epilogue<OutT>& e, MatrixView<OutT> y) noexcept {
    const __m256i mask = _mm256_set1_epi8(0x0F);
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i eight8 = _mm256_set1_epi8(8);
    __m256 accf[MR][NB];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) accf[i][j] = _mm256_setzero_ps();
    const std::size_t kc = w.k_chunks();
    const BlockW4x8* wb = w.blocks.data() + nb0 * kc;
    const std::uint8_t* ar = a.row(m0);
    const std::size_t as = a.k_pad;
    const std::size_t supers = w.group / 32;
    for (std::size_t g = 0; g < w.groups; ++g) {
        __m256i acc32[MR][NB];
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
            for (int j = 0; j < NB; ++j) acc32[i][j] = _mm256_setzero_si256();
        for (std::size_t s = 0; s < supers; ++s) {
            const std::size_t c0 = g * (w.group / 8) + 4 * s;
            __m256i acc16[MR][NB];
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
                for (int j = 0; j < NB; ++j) acc16[i][j] = _mm256_setzero_si256();
#pragma GCC unroll 2
            for (std::size_t h = 0; h < 4; ++h) {
                const std::size_t c = c0 + h;
                __m256i lo[NB], hi[NB];
#pragma GCC unroll 8
                for (int j = 0; j < NB; ++j) {
                    const __m256i raw = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + j * kc + c));
                    lo[j] = _mm256_sub_epi8(_mm256_and_si256(raw, mask), eight8);
                    hi[j] = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(raw, 4), mask), eight8);
                }
#pragma GCC unroll 8
                for (int i = 0; i < MR; ++i) {
                    const __m256i alo = broadcast32(ar + i * as + 8 * c);
                    const __m256i ahi = broadcast32(ar + i * as + 8 * c + 4);
#pragma GCC unroll 8
                    for (int j = 0; j < NB; ++j) {
                        acc16[i][j] = _mm256_add_epi16(acc16[i][j], _mm256_maddubs_epi16(alo, lo[j]));
                        acc16[i][j] = _mm256_add_epi16(acc16[i][j], _mm256_maddubs_epi16(ahi, hi[j]));
                    }
                }
            }
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
                for (int j = 0; j < NB; ++j) acc32[i][j] = _mm256_add_epi32(acc32[i][j], _mm256_madd_epi16(acc16[i][j], ones));
        }
        // Group end: t = Σ a·s − (z_g − 8)·Σ a (exact int32), accf += s_g·t
        w4_group_end<MR, NB>(acc32, accf, -8, a, m0, w, nb0, g);
    }
    w4_epilogue<MR, NB>(accf, a, m0, w, nb0, e, y);
}

// GEMV (one token) kernels. Decode reads every weight byte once and does ~1 multiply-add per
// weight, so it is bound by memory, not arithmetic, and the kernels are shaped for the memory
// system: they take kGemvTiles channel tiles at once, which reads the packed weight as
// kGemvTiles concurrent sequential streams (a tile's k-blocks are contiguous; the next group of
// tiles follows the last one), one cache line of each per step. One core reads DRAM faster
// from several streams than from one (each 4 KiB page stream gets its own hardware prefetcher,
// so more misses are in flight): measured on the 2-core Xeon VM, 1 GiB read, 1 stream
// 12.3 GB/s, 4 streams 15.8. The tiles also share each activation broadcast. Channels already
// sit in the register lanes, so no horizontal reduction is needed.
inline constexpr int kGemvTiles = 4;

// Each line of the weight is prefetched into L1 kGemvPrefetchBytes before its use, and the
// per-channel parameters (scales, sums, zero points: separate small arrays that would otherwise
// miss at every tile or group end and stall retirement for a whole DRAM latency) one tile group
// ahead. Measured here, 10240 x 2560 from DRAM, fraction of BM_memory_read: W8 80% without
// software prefetch, 87–89% with; W4 per group 72% → 82% (most of it from the parameter
// prefetch). 4 KiB ahead or L2-only (T1) hints did about as well or slightly worse, NTA much
// worse (~55%).
inline constexpr std::size_t kGemvPrefetchBytes = 2048;

// Addresses are formed as integers: they may lie past the end of the array (no pointer
// arithmetic out of bounds), and a prefetch of any address is harmless.
MQ_ALWAYS_INLINE void prefetch_at(const void* base, std::size_t byte_offset) noexcept {
    _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(base) + byte_offset), _MM_HINT_T0);
}
MQ_ALWAYS_INLINE void prefetch_ahead(const void* p) noexcept { prefetch_at(p, kGemvPrefetchBytes); }

// The next tile group's per-channel parameters, one group of NB tiles ahead: W8 Σ q and scales
// (4 x 32 bytes each), W4 col_corr; and, at every other group end, W4 (zero, scale) of groups
// g, g + 1 (one line each).
template <int NB>
MQ_ALWAYS_INLINE void prefetch_next_params(const PackedW8& w, std::size_t nb0) noexcept {
    for (std::size_t i = 0; i < 2; ++i) {
        prefetch_at(w.qsum.data(), ((nb0 + NB) * kPackCols + 16 * i) * sizeof(std::int32_t));
        prefetch_at(w.scale.data(), ((nb0 + NB) * kPackCols + 16 * i) * sizeof(float));
    }
}
template <int NB>
MQ_ALWAYS_INLINE void prefetch_next_params(const PackedW4& w, std::size_t nb0) noexcept {
    for (std::size_t i = 0; i < 2; ++i)
        prefetch_at(w.col_corr.data(), ((nb0 + NB) * kPackCols + 16 * i) * sizeof(float));
}
template <int NB>
MQ_ALWAYS_INLINE void prefetch_next_group_params(const PackedW4& w, std::size_t nb0, std::size_t g) noexcept {
    if (g % 2 != 0) return;
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) {
        const std::size_t pn = ((nb0 + NB + j) * w.groups + g) * kPackCols;
        prefetch_at(w.zero.data(), pn * sizeof(std::int32_t));
        prefetch_at(w.scale.data(), pn * sizeof(float));
    }
}

// Runs tile(NB, nb) over [b0, b1) in groups of kGemvTiles tiles, the tail by a smaller instance.
template <class Tile>
MQ_ALWAYS_INLINE void drive_gemv(std::size_t b0, std::size_t b1, Tile&& tile) noexcept {
    std::size_t nb = b0;
    for (; nb + kGemvTiles <= b1; nb += kGemvTiles) tile(std::integral_constant<int, kGemvTiles>{}, nb);
    const std::size_t rest = b1 - nb;
    [&]<int... R>(std::integer_sequence<int, R...>) {
        ((rest == static_cast<std::size_t>(R + 1) ? (tile(std::integral_constant<int, R + 1>{}, nb), 0) : 0), ...);
    }(std::make_integer_sequence<int, kGemvTiles - 1>{});
}

// W8 GEMV over tiles [nb0, nb0 + NB): the arithmetic of w8_tile_avx2 (exact int32 vpmaddwd
// sums) on one token; one cache line (4 k-pairs) of each tile per step.
template <int NB, class OutT>
MQ_ALWAYS_INLINE void w8_gemv_tiles(const ActBuffer<std::int16_t>& a, const PackedW8& w, std::size_t nb0,
                                    const Epilogue<OutT>& e, MatrixView<OutT> y) noexcept {
    const std::size_t kp = w.k_pairs(); // a multiple of kPackK / 2 = 16
    const std::int16_t* ar = a.row(0);
    const BlockW8x2* wb = w.blocks.data() + nb0 * kp;
    prefetch_next_params<NB>(w, nb0);
    __m256i acc[1][NB];
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) acc[0][j] = _mm256_setzero_si256();
    for (std::size_t p = 0; p < kp; p += 4) {
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) prefetch_ahead(wb + j * kp + p); // in bounds: p < kp
#pragma GCC unroll 4
        for (std::size_t i = 0; i < 4; ++i) {
            const __m256i av = broadcast32(ar + 2 * (p + i));
#pragma GCC unroll 8
            for (int j = 0; j < NB; ++j) {
                const __m256i wv = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(wb + j * kp + p + i)));
                acc[0][j] = _mm256_add_epi32(acc[0][j], _mm256_madd_epi16(av, wv));
            }
        }
    }
    w8_epilogue<1, NB>(acc, 0, a, 0, w, nb0, e, y);
}

// W4 GEMV over tiles [nb0, nb0 + NB), with fewer instructions per weight than w4_tile_avx2,
// whose recentring (u − 8) pays off only when MR tokens share the unpacked weights. Here the
// nibbles u ∈ [0, 15] go to vpmaddubsw as they are: lanes a·u + a'·u' ∈ [0, 2·255·15 = 7650],
// so four of them (16 k: low and high nibbles of two 8-k blocks, one cache line of a tile) sum
// to at most 30600 ≤ 32767 in int16, and one vpmaddwd(·, 1) per 16 k widens to int32. Per 64
// weights: and, shift, and, 2 vpmaddubsw, 1.5 int16 adds, 0.5 vpmaddwd, 0.5 int32 add (7.5
// ops, against 9.5 with recentring), and t = Σ a·u − z_g·Σ a is the reference's t directly.
template <int NB, class OutT>
MQ_ALWAYS_INLINE void w4_gemv_tiles(const ActBuffer<std::uint8_t>& a, const PackedW4& w, std::size_t nb0,
                                    const Epilogue<OutT>& e, MatrixView<OutT> y) noexcept {
    const __m256i mask = _mm256_set1_epi8(0x0F);
    const __m256i ones = _mm256_set1_epi16(1);
    const std::size_t kc = w.k_chunks();
    const std::size_t gc = w.group / 8; // 8-k blocks per group, a multiple of 4
    const std::uint8_t* ar = a.row(0);
    const BlockW4x8* wb = w.blocks.data() + nb0 * kc;
    prefetch_next_params<NB>(w, nb0);
    __m256 accf[1][NB];
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) accf[0][j] = _mm256_setzero_ps();
    for (std::size_t g = 0; g < w.groups; ++g) {
        __m256i acc[1][NB];
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) acc[0][j] = _mm256_setzero_si256();
        for (std::size_t c = g * gc; c < (g + 1) * gc; c += 2) {
            const std::uint8_t* ac = ar + 8 * c;
            const __m256i a0 = broadcast32(ac), a1 = broadcast32(ac + 4), a2 = broadcast32(ac + 8), a3 = broadcast32(ac + 12);
#pragma GCC unroll 8
            for (int j = 0; j < NB; ++j) {
                prefetch_ahead(wb + j * kc + c);
                const __m256i r0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + j * kc + c));
                const __m256i r1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + j * kc + c + 1));
                const __m256i l0 = _mm256_and_si256(r0, mask), h0 = _mm256_and_si256(_mm256_srli_epi16(r0, 4), mask);
                const __m256i l1 = _mm256_and_si256(r1, mask), h1 = _mm256_and_si256(_mm256_srli_epi16(r1, 4), mask);
                const __m256i s0 = _mm256_add_epi16(_mm256_maddubs_epi16(a0, l0), _mm256_maddubs_epi16(a1, h0));
                const __m256i s1 = _mm256_add_epi16(_mm256_maddubs_epi16(a2, l1), _mm256_maddubs_epi16(a3, h1));
                acc[0][j] = _mm256_add_epi32(acc[0][j], _mm256_madd_epi16(_mm256_add_epi16(s0, s1), ones));
            }
        }
        // t = Σ a·u − z_g·Σ a (exact int32), accf += s_g·t
        prefetch_next_group_params<NB>(w, nb0, g);
        w4_group_end<1, NB>(acc, accf, 0, a, 0, w, nb0, g);
    }
    w4_epilogue<1, NB>(accf, a, 0, w, nb0, e, y);
}

// Runs a micro-kernel over tokens [0, rows) × tiles [b0, b1): channel panels outside (they stay
// in L1/L2 while every token streams past), MR-token tiles inside, tails by smaller instances.
template <int MR, int NB, class Tile>
MQ_ALWAYS_INLINE void drive_tiles(std::size_t rows, std::size_t b0, std::size_t b1, Tile&& tile) noexcept {
    for (std::size_t nb = b0; nb < b1; nb += NB) {
        const std::size_t nbw = std::min<std::size_t>(NB, b1 - nb);
        auto run_rows = [&](auto nb_c) {
            constexpr int NBc = decltype(nb_c)::value;
            std::size_t m = 0;
            for (; m + MR <= rows; m += MR) tile(std::integral_constant<int, MR>{}, nb_c, m, nb);
            const std::size_t rest = rows - m;
            [&]<int... R>(std::integer_sequence<int, R...>) {
                ((rest == static_cast<std::size_t>(R + 1) ? (tile(std::integral_constant<int, R + 1>{}, nb_c, m, nb), 0) : 0), ...);
            }(std::make_integer_sequence<int, MR - 1>{});
            static_cast<void>(NBc);
        };
        [&]<int... J>(std::integer_sequence<int, J...>) {
            ((nbw == static_cast<std::size_t>(J + 1) ? (run_rows(std::integral_constant<int, J + 1>{}), 0) : 0), ...);
        }(std::make_integer_sequence<int, NB>{});
    }
}

#endif // __AVX2__

#if MQ_HAS_AVX512VNNI_KERNELS
MQ_AVX512VNNI_BEGIN

// AVX-512 VNNI kernels. vpdpbusd adds four u8·s8 products to each int32 lane in one instruction
// (against vpmaddwd + vpaddd for two on AVX2), and with AVX-512VL it runs on 256-bit registers,
// which on these cores issue on two ports (a 512-bit one issues on one: the same multiply-adds per
// cycle), while EVEX encoding gives 32 registers for a larger tile of accumulators. Products and
// sums are exact: |a·q| ≤ 255·127, four of them ≤ 129540, and the int32 total stays exact while
// K·255·127 < 2^31 (K ≤ kMaxPackedK), so every integer equals the reference's. These functions are
// called, not inlined, from the AVX2-compiled drivers (their target is wider).

// acc + Σ_4 u8(a)·s8(b) per int32 lane. Inline asm rather than _mm256_dpbusd_epi32: GCC 12 does
// not tie the intrinsic's accumulator to its output register and copies every accumulator each
// step (a 4 x 4 tile ran at ~60% of this speed, with spills).
template <class Arch>
MQ_ALWAYS_INLINE void dpbusd(__m256i& acc, __m256i a, __m256i b) noexcept {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "vm"(b));
}

// Four int16 activation codes (8 bytes) as four unsigned bytes in every int32 lane: the low byte
// of each code (vpshufb of a 64-bit broadcast), XOR 0x80 for signed codes (q + 128 ∈ [1, 255]).
template <class Arch>
MQ_ALWAYS_INLINE __m256i codes4_u8(const std::int16_t* p, __m256i flip) noexcept {
    std::int64_t v;
    std::memcpy(&v, p, sizeof v);
    const __m256i pick = _mm256_setr_epi8(0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2,
                                          4, 6, 0, 2, 4, 6);
    return _mm256_xor_si256(_mm256_shuffle_epi8(_mm256_set1_epi64x(v), pick), flip);
}

// The zero-point offset of the u8 sums: 128 for signed codes (Σ (q + 128)·w − (z + 128)·Σ w =
// Σ q·w − z·Σ w, the reference's t, exactly).
template <class Arch>
MQ_ALWAYS_INLINE std::int32_t vnni_zero_offset(const ActBuffer<std::int16_t>& a) noexcept {
    return a.signed_codes ? 128 : 0;
}

// W8 micro-kernel, quads layout: MR tokens × NB channel tiles of 8, the whole K, 4 k per step.
template <class Arch, int MR, int NB, class OutT>
void w8_tile_vnni(const ActBuffer<std::int16_t>& a, std::size_t m0, const PackedW8& w, std::size_t nb0,
                  const Epilogue<OutT>& e, MatrixView<OutT> y) noexcept {
    __m256i acc[MR][NB];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_si256();
    const __m256i flip = _mm256_set1_epi8(a.signed_codes ? static_cast<char>(0x80) : 0);
    const std::size_t ts = kPackCols * w.k_pad; // bytes per tile
    const std::int8_t* wb = reinterpret_cast<const std::int8_t*>(w.blocks.data()) + nb0 * ts;
    const std::int16_t* ar = a.row(m0);
    const std::size_t as = a.k_pad;
    for (std::size_t k = 0; k < w.k_pad; k += 4) {
        __m256i wv[NB];
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) wv[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + j * ts + 8 * k));
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const __m256i av = codes4_u8<Arch>(ar + i * as + k, flip);
#pragma GCC unroll 8
            for (int j = 0; j < NB; ++j) dpbusd<Arch>(acc[i][j], av, wv[j]);
        }
    }
    w8_epilogue<MR, NB>(acc, vnni_zero_offset<Arch>(a), a, m0, w, nb0, e, y);
}

// W8 GEMV, quads layout: one cache line (8 k) of each of NB tiles per step, prefetched as in
// w8_gemv_tiles.
template <class Arch, int NB, class OutT>
void w8_gemv_vnni(const ActBuffer<std::int16_t>& a, const PackedW8& w, std::size_t nb0, const Epilogue<OutT>& e,
                  MatrixView<OutT> y) noexcept {
    const std::size_t ts = kPackCols * w.k_pad;
    const std::int8_t* wb = reinterpret_cast<const std::int8_t*>(w.blocks.data()) + nb0 * ts;
    const std::int16_t* ar = a.row(0);
    prefetch_next_params<NB>(w, nb0);
    const __m256i flip = _mm256_set1_epi8(a.signed_codes ? static_cast<char>(0x80) : 0);
    __m256i acc[1][NB];
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) acc[0][j] = _mm256_setzero_si256();
    for (std::size_t k = 0; k < w.k_pad; k += 8) {
        const __m256i a0 = codes4_u8<Arch>(ar + k, flip), a1 = codes4_u8<Arch>(ar + k + 4, flip);
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) {
            const std::int8_t* p = wb + j * ts + 8 * k;
            prefetch_ahead(p);
            dpbusd<Arch>(acc[0][j], a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
            dpbusd<Arch>(acc[0][j], a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 32)));
        }
    }
    w8_epilogue<1, NB>(acc, vnni_zero_offset<Arch>(a), a, 0, w, nb0, e, y);
}

// W4 micro-kernel: the nibbles u ∈ [0, 15] go to vpdpbusd as they are (valid s8), against the u8
// activations: lanes gain a·u + … exactly in int32, so neither the recentring nor the int16
// partial sums of w4_tile_avx2 are needed: per 64 weights and, shift, and, two vpdpbusd.
// t = Σ a·u − z_g·Σ a is the reference's t.
template <class Arch, int MR, int NB, class OutT>
void w4_tile_vnni(const ActBuffer<std::uint8_t>& a, std::size_t m0, const PackedW4& w, std::size_t nb0,
                  const Epilogue<OutT>& e, MatrixView<OutT> y) noexcept {
    const __m256i mask = _mm256_set1_epi8(0x0F);
    __m256 accf[MR][NB];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) accf[i][j] = _mm256_setzero_ps();
    const std::size_t kc = w.k_chunks();
    const std::size_t gc = w.group / 8;
    const BlockW4x8* wb = w.blocks.data() + nb0 * kc;
    const std::uint8_t* ar = a.row(m0);
    const std::size_t as = a.k_pad;
    for (std::size_t g = 0; g < w.groups; ++g) {
        __m256i acc[MR][NB];
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
            for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_si256();
        for (std::size_t c = g * gc; c < (g + 1) * gc; ++c) {
            __m256i lo[NB], hi[NB];
#pragma GCC unroll 8
            for (int j = 0; j < NB; ++j) {
                const __m256i raw = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + j * kc + c));
                lo[j] = _mm256_and_si256(raw, mask);
                hi[j] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            }
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) {
                const __m256i alo = broadcast32(ar + i * as + 8 * c);
                const __m256i ahi = broadcast32(ar + i * as + 8 * c + 4);
#pragma GCC unroll 8
                for (int j = 0; j < NB; ++j) {
                    dpbusd<Arch>(acc[i][j], alo, lo[j]);
                    dpbusd<Arch>(acc[i][j], ahi, hi[j]);
                }
            }
        }
        w4_group_end<MR, NB>(acc, accf, 0, a, m0, w, nb0, g);
    }
    w4_epilogue<MR, NB>(accf, a, m0, w, nb0, e, y);
}

// W4 GEMV: w4_gemv_tiles with vpdpbusd (one cache line, 16 k, of each tile per step).
template <class Arch, int NB, class OutT>
void w4_gemv_vnni(const ActBuffer<std::uint8_t>& a, const PackedW4& w, std::size_t nb0, const Epilogue<OutT>& e,
                  MatrixView<OutT> y) noexcept {
    const __m256i mask = _mm256_set1_epi8(0x0F);
    const std::size_t kc = w.k_chunks();
    const std::size_t gc = w.group / 8;
    const std::uint8_t* ar = a.row(0);
    const BlockW4x8* wb = w.blocks.data() + nb0 * kc;
    prefetch_next_params<NB>(w, nb0);
    __m256 accf[1][NB];
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) accf[0][j] = _mm256_setzero_ps();
    for (std::size_t g = 0; g < w.groups; ++g) {
        __m256i acc[1][NB];
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) acc[0][j] = _mm256_setzero_si256();
        for (std::size_t c = g * gc; c < (g + 1) * gc; c += 2) {
            const std::uint8_t* ac = ar + 8 * c;
            const __m256i a0 = broadcast32(ac), a1 = broadcast32(ac + 4), a2 = broadcast32(ac + 8), a3 = broadcast32(ac + 12);
#pragma GCC unroll 8
            for (int j = 0; j < NB; ++j) {
                prefetch_ahead(wb + j * kc + c);
                const __m256i r0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + j * kc + c));
                const __m256i r1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + j * kc + c + 1));
                dpbusd<Arch>(acc[0][j], a0, _mm256_and_si256(r0, mask));
                dpbusd<Arch>(acc[0][j], a1, _mm256_and_si256(_mm256_srli_epi16(r0, 4), mask));
                dpbusd<Arch>(acc[0][j], a2, _mm256_and_si256(r1, mask));
                dpbusd<Arch>(acc[0][j], a3, _mm256_and_si256(_mm256_srli_epi16(r1, 4), mask));
            }
        }
        prefetch_next_group_params<NB>(w, nb0, g);
        w4_group_end<1, NB>(acc, accf, 0, a, 0, w, nb0, g);
    }
    w4_epilogue<1, NB>(accf, a, 0, w, nb0, e, y);
}

MQ_AVX512VNNI_END
#endif // MQ_HAS_AVX512VNNI_KERNELS

} // namespace detail

// Which kernel qgemm(Arch, a, w, ...) runs: the arch's widest that fits the weight's layout
// (a W8 weight packed as pairs runs the AVX2 kernel on avx512vnni too; quads need VNNI and run
// the scalar reference elsewhere). Tests assert it, so a fast path cannot silently fall back.
enum class QgemmKernel { reference, avx2, avx512vnni };

constexpr const char* kernel_name(QgemmKernel k) noexcept {
    return k == QgemmKernel::avx512vnni ? "avx512vnni" : k == QgemmKernel::avx2 ? "avx2" : "reference";
}

template <class Arch>
constexpr QgemmKernel qgemm_kernel(Arch, const PackedW8& w) noexcept {
    if constexpr (is_avx512vnni_v<Arch> && MQ_HAS_AVX512VNNI_KERNELS)
        if (w.layout == W8Layout::quads) return QgemmKernel::avx512vnni;
    if constexpr (std::is_base_of_v<xsimd::avx2, Arch> && MQ_HAS_AVX2_KERNELS)
        if (w.layout == W8Layout::pairs) return QgemmKernel::avx2;
    return QgemmKernel::reference;
}
template <class Arch>
constexpr QgemmKernel qgemm_kernel(Arch, const PackedW4&) noexcept {
    if constexpr (is_avx512vnni_v<Arch> && MQ_HAS_AVX512VNNI_KERNELS) return QgemmKernel::avx512vnni;
    if constexpr (std::is_base_of_v<xsimd::avx2, Arch> && MQ_HAS_AVX2_KERNELS) return QgemmKernel::avx2;
    return QgemmKernel::reference;
}

// The W8 layout whose fast kernel arch a runs (Linear packs with it).
constexpr W8Layout w8_layout_for(arch_id a) noexcept {
    return runnable_arch(a) == arch_id::avx512vnni ? W8Layout::quads : W8Layout::pairs;
}

// VNNI register blocking (tokens × 8-channel tiles): the accumulators, weights and broadcasts
// fit the 32 EVEX registers.
inline constexpr int kW8VnniTokens = 4, kW8VnniTiles = 4;
inline constexpr int kW4VnniTokens = 4, kW4VnniTiles = 2;

// Fast kernels over channel tiles [block_begin, block_end) (8 channels each; pass 0 and
// w.n_blocks for all). One token (decode) takes the GEMV register blocking, more take the GEMM one.
// qgemm_kernel(arch, w) says which kernel runs; without one (other arches, or a W8 layout the arch
// has no kernel for) they fall back to the scalar reference arithmetic.
template <class Arch, class OutT>
void qgemm(Arch, const ActBuffer<std::int16_t>& a, const PackedW8& w, const Epilogue<OutT>& e, MatrixView<OutT> y,
           std::size_t block_begin, std::size_t block_end) noexcept {
    MQ_ASSERT(a.k == w.k && a.k_pad == w.k_pad && y.rows == a.rows && y.cols == w.n, "qgemm: shapes");
    MQ_ASSERT(block_begin <= block_end && block_end <= w.n_blocks, "qgemm: tile range");
#if MQ_HAS_AVX512VNNI_KERNELS
    if constexpr (is_avx512vnni_v<Arch>) {
        if (qgemm_kernel(Arch{}, w) == QgemmKernel::avx512vnni) {
            if (a.rows == 1)
                detail::drive_gemv(block_begin, block_end, [&](auto nb, std::size_t b) {
                    detail::w8_gemv_vnni<Arch, decltype(nb)::value>(a, w, b, e, y);
                });
            else
                detail::drive_tiles<kW8VnniTokens, kW8VnniTiles>(a.rows, block_begin, block_end,
                                                                 [&](auto mr, auto nb, std::size_t m, std::size_t b) {
                    detail::w8_tile_vnni<Arch, decltype(mr)::value, decltype(nb)::value>(a, m, w, b, e, y);
                });
            return;
        }
    }
#endif
#if defined(__AVX2__)
    if constexpr (std::is_base_of_v<xsimd::avx2, Arch>) if (w.layout == W8Layout::pairs) {
        auto tile = [&](auto mr, auto nb, std::size_t m, std::size_t b) {
            detail::w8_tile_avx2<decltype(mr)::value, decltype(nb)::value>(a, m, w, b, e, y);
        };
        if (a.rows == 1)
            detail::drive_gemv(block_begin, block_end, [&](auto nb, std::size_t b) {
                detail::w8_gemv_tiles<decltype(nb)::value>(a, w, b, e, y);
            });
        else
            detail::drive_tiles<4, 2>(a.rows, block_begin, block_end, tile);
        return;
    }
#endif
    qgemm_ref(a, w, e, y, block_begin, block_end);
}

template <class Arch, class OutT>
void qgemm(Arch, const ActBuffer<std::uint8_t>& a, const PackedW4& w, const Epilogue<OutT>& e, MatrixView<OutT> y,
           std::size_t block_begin, std::size_t block_end) noexcept {
    MQ_ASSERT(a.k == w.k && a.k_pad == w.k_pad && a.group == w.group && y.rows == a.rows && y.cols == w.n, "qgemm: shapes");
    MQ_ASSERT(block_begin <= block_end && block_end <= w.n_blocks, "qgemm: tile range");
#if MQ_HAS_AVX512VNNI_KERNELS
    if constexpr (is_avx512vnni_v<Arch>) {
        if (a.rows == 1)
            detail::drive_gemv(block_begin, block_end, [&](auto nb, std::size_t b) {
                detail::w4_gemv_vnni<Arch, decltype(nb)::value>(a, w, b, e, y);
            });
        else
            detail::drive_tiles<kW4VnniTokens, kW4VnniTiles>(a.rows, block_begin, block_end,
                                                             [&](auto mr, auto nb, std::size_t m, std::size_t b) {
                detail::w4_tile_vnni<Arch, decltype(mr)::value, decltype(nb)::value>(a, m, w, b, e, y);
            });
        return;
    }
#endif
#if defined(__AVX2__)
    if constexpr (std::is_base_of_v<xsimd::avx2, Arch>) {
        auto tile = [&](auto mr, auto nb, std::size_t m, std::size_t b) {
            detail::w4_tile_avx2<decltype(mr)::value, decltype(nb)::value>(a, m, w, b, e, y);
        };
        if (a.rows == 1)
            detail::drive_gemv(block_begin, block_end, [&](auto nb, std::size_t b) {
                detail::w4_gemv_tiles<decltype(nb)::value>(a, w, b, e, y);
            });
        else
            detail::drive_tiles<3, 1>(a.rows, block_begin, block_end, tile);
        return;
    }
#endif
    qgemm_ref(a, w, e, y, block_begin, block_end);
}

// GEMV work is cut into this many contiguous tile ranges per pool thread: each range is still a
// long sequential stream (10240 x 2560 W8 on 2 threads: 8 ranges of 3.3 MB), and a thread the
// OS delays no longer holds back half the weight (decode is one short call, often on a busy box).
inline constexpr std::size_t kGemvTasksPerThread = 4;

// All channels, split over `pool` by channel tiles (nullptr: on the calling thread only).
template <class Arch, class Code, class W, class OutT>
void qgemm(Arch arch, const ActBuffer<Code>& a, const W& w, const Epilogue<OutT>& e, MatrixView<OutT> y,
           ThreadPool* pool = nullptr) noexcept {
    parallel_ranges(pool, w.n_blocks, [&](std::size_t b0, std::size_t b1) { qgemm(arch, a, w, e, y, b0, b1); },
                    a.rows == 1 ? kGemvTasksPerThread : 1);
}

// Decode (one token): the same kernels, named for the caller's intent.
template <class Arch, class Code, class W, class OutT>
void qgemv(Arch arch, const ActBuffer<Code>& a, const W& w, const Epilogue<OutT>& e, MatrixView<OutT> y,
           ThreadPool* pool = nullptr) noexcept {
    MQ_ASSERT(a.rows == 1, "qgemv: one token");
    qgemm(arch, a, w, e, y, pool);
}

template <class Code, class W, class OutT>
void qgemm_ref(const ActBuffer<Code>& a, const W& w, const Epilogue<OutT>& e, MatrixView<OutT> y) noexcept {
    qgemm_ref(a, w, e, y, 0, w.n_blocks);
}

MQ_NAMESPACE_END
