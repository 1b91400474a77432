// Packed int8 / int4 weight formats laid out for the quantized GEMM/GEMV kernels, and packing.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tags.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/quantizer.hpp>
#include <mambaquant/quant/range.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>

MQ_NAMESPACE_BEGIN

// A weight W[n][k] has n output channels (rows) and k inputs. The kernels compute 8 output
// channels at once (one AVX2 register of 8 int32 / 8 float), so channels are tiled by 8 and the
// last tile is padded with zero-weight, zero-scale channels; k is padded with zeros to a multiple
// of kPackK (one W4 int16 superchunk) so the inner loops have no tail (pads contribute 0: the
// activation pad code is 0, and the sums used by the zero-point corrections cover real k only).
inline constexpr std::size_t kPackCols = 8;
inline constexpr std::size_t kPackK = 32;
// The W8 kernel keeps exact int32 sums: |Σ (a − z_a)·w| ≤ K·255·127 < 2^31 needs K ≤ 66311.
inline constexpr std::size_t kMaxPackedK = 65536;

namespace detail {
constexpr std::size_t pack_round_up(std::size_t n, std::size_t m) noexcept { return (n + m - 1) / m * m; }
} // namespace detail

// 8 output channels × 2 consecutive k, the pair vpmaddwd multiplies after sign extension:
// qs[2c + j] = q[n0 + c][k0 + j]. 16 weights in 16 bytes: 8 bits per weight.
struct BlockW8x2 {
    std::int8_t qs[16];
};
static_assert(sizeof(BlockW8x2) == 16, "BlockW8x2: 8 channels x 2 k x 8 bits");

// 8 output channels × 8 consecutive k as unsigned nibbles u ∈ [0, 15]: byte 4c + i holds
// u[n0 + c][k0 + i] in its low nibble and u[n0 + c][k0 + 4 + i] in its high nibble, so one
// 32-byte load split by mask/shift gives the two [8 channels][4 k] byte vectors vpmaddubsw
// wants against a broadcast of 4 activation bytes. 64 weights in 32 bytes: 4 bits per weight.
// This kernel-internal order differs from the library's standard nibble order (element 2i in
// the low nibble, 2i + 1 in the high one), which pack_w4_nibbles reads.
struct BlockW4x8 {
    std::uint8_t qs[32];
};
static_assert(sizeof(BlockW4x8) == 32, "BlockW4x8: 8 channels x 8 k x 4 bits");

// How the bytes of one 8-channel tile of a PackedW8 are ordered, chosen at packing for the arch
// that will run it (kernels/qgemm.hpp: w8_layout_for):
//  - pairs: [k/2][8 channels][2 k], 16-byte BlockW8x2s, for AVX2's vpmaddwd on sign-extended int16;
//  - quads: [k/4][8 channels][4 k], 32 bytes per 4 k, for VNNI's vpdpbusd (4 u8·s8 products per
//    int32 lane). Same bytes, same size, same padding; only the order within a tile differs.
enum class W8Layout : unsigned char { pairs, quads };

// int8 symmetric per-channel weights: ŵ[n][k] = q[n][k]·scale[n], q ∈ [-127, 127].
// Storage: 8 bits per weight + 8 bytes per channel (scale, Σ_k q for the activation zero point).
struct PackedW8 {
    std::size_t n = 0, k = 0, k_pad = 0, n_blocks = 0;
    W8Layout layout = W8Layout::pairs;
    aligned_vector<BlockW8x2> blocks;    // [n_blocks][k_pad / 2] (16 bytes each, ordered by layout)
    aligned_vector<float> scale;         // [n_blocks·8]; 0 on padded channels
    aligned_vector<std::int32_t> qsum;   // [n_blocks·8]: Σ_k q[n][k]

    std::size_t n_pad() const noexcept { return n_blocks * kPackCols; }
    std::size_t k_pairs() const noexcept { return k_pad / 2; }
    // Byte offset of q[r][c] from the start of blocks.
    std::size_t code_offset(std::size_t r, std::size_t c) const noexcept {
        const std::size_t tile = (r / kPackCols) * k_pad * kPackCols, ch = r % kPackCols;
        return layout == W8Layout::pairs ? tile + (c / 2) * 16 + 2 * ch + c % 2 : tile + (c / 4) * 32 + 4 * ch + c % 4;
    }
    // The code q[r][c] (padding included: 0).
    int code(std::size_t r, std::size_t c) const noexcept {
        return reinterpret_cast<const std::int8_t*>(blocks.data())[code_offset(r, c)];
    }
    std::size_t bytes() const noexcept {
        return blocks.size() * sizeof(BlockW8x2) + scale.size() * sizeof(float) + qsum.size() * sizeof(std::int32_t);
    }
};

// int4 per-channel or per-group weights, symmetric or asymmetric, stored as unsigned nibbles u
// with a zero point per (channel, group): ŵ[n][k] = (u[n][k] − zero[n][g])·scale[n][g].
//   asymmetric codes q ∈ [0, 15]: u = q, zero = z;  symmetric codes q ∈ [-7, 7]: u = q + 8, zero = 8.
// The kernel recentres u to u − 8 ∈ [-8, 7] once per load (shared by several tokens) so that
// int16 partial sums last 32 k; the zero point becomes one correction per group (see qgemm.hpp).
// Storage: 4 bits per weight + 8 bytes per (channel, group) + 4 bytes per channel.
struct PackedW4 {
    std::size_t n = 0, k = 0, k_pad = 0, n_blocks = 0;
    std::size_t group = 0;   // k-elements per (scale, zero); per-channel: group = k_pad
    std::size_t groups = 0;  // k_pad / group
    bool symmetric = true;
    aligned_vector<BlockW4x8> blocks;   // [n_blocks][k_pad / 8]
    aligned_vector<float> scale;        // [n_blocks][groups][8]; 0 on padded channels
    aligned_vector<std::int32_t> zero;  // [n_blocks][groups][8], zero point of u
    aligned_vector<float> col_corr;     // [n_blocks·8]: Σ_g scale_g·(Σ_{k∈g} u − len_g·zero_g)

    std::size_t n_pad() const noexcept { return n_blocks * kPackCols; }
    std::size_t k_chunks() const noexcept { return k_pad / 8; }
    // Number of real (unpadded) k in group g.
    std::size_t group_len(std::size_t g) const noexcept { return std::min(group, k - g * group); }
    std::size_t param_index(std::size_t r, std::size_t g) const noexcept {
        return ((r / kPackCols) * groups + g) * kPackCols + r % kPackCols;
    }
    // The stored nibble u[r][c] (padding: 0).
    int nibble(std::size_t r, std::size_t c) const noexcept {
        const BlockW4x8& b = blocks[(r / kPackCols) * k_chunks() + c / 8];
        const std::size_t i = c % 8;
        const std::uint8_t byte = b.qs[4 * (r % kPackCols) + i % 4];
        return i < 4 ? (byte & 0x0F) : (byte >> 4);
    }
    // The policy's code q[r][c] (u − 8 for symmetric weights).
    int code(std::size_t r, std::size_t c) const noexcept { return nibble(r, c) - (symmetric ? 8 : 0); }
    std::size_t bytes() const noexcept {
        return blocks.size() * sizeof(BlockW4x8) + scale.size() * sizeof(float) +
               zero.size() * sizeof(std::int32_t) + col_corr.size() * sizeof(float);
    }
};

// Weight policies the packed formats implement (any QuantizerPolicy with these properties, the
// library's Quantizer or a user's): W8 = 8 bits, per_channel, symmetric, codes within [-127, 127];
// W4 = 4 bits, per_channel or per_group<G> with G % 32 == 0, codes within BitRange<4, symmetry>.
template <class Q>
concept W8Policy = QuantizerPolicy<Q> && Q::bits == 8 && std::same_as<typename Q::granularity, per_channel> &&
                   Q::symmetry::is_symmetric && Q::range::min >= -127;
// int4 groups must be whole 32-k superchunks of the kernel (32, 64, 128 are).
template <class G>
inline constexpr bool w4_granularity_ok_v = std::same_as<G, per_channel>;
template <std::size_t G>
inline constexpr bool w4_granularity_ok_v<per_group<G>> = G % kPackK == 0;
template <class Q>
inline constexpr bool w4_range_ok_v = Q::range::min >= BitRange<4, typename Q::symmetry>::min - (Q::symmetry::is_symmetric ? 1 : 0) &&
                                      Q::range::max <= BitRange<4, typename Q::symmetry>::max;
template <class Q>
concept W4Policy = QuantizerPolicy<Q> && Q::bits == 4 && w4_granularity_ok_v<typename Q::granularity> && w4_range_ok_v<Q>;

// The weight policy of a Linear: FloatPolicy, W8Policy or W4Policy. One static_assert naming the
// concept and the member that is missing or wrong (check_quantizer_policy first).
template <class Q>
consteval bool check_weight_policy() {
    if constexpr (std::same_as<Q, FloatPolicy>) {
        return true;
    } else if constexpr (!check_quantizer_policy<Q, false>()) {
        return false;
    } else if constexpr (Q::bits != 8 && Q::bits != 4) {
        static_assert(Q::bits == 8 || Q::bits == 4,
                      "weight policy (W8Policy | W4Policy): member `bits` must be 8 or 4 for the integer kernels");
        return false;
    } else if constexpr (Q::bits == 8 && !std::same_as<typename Q::granularity, per_channel>) {
        static_assert(Q::bits != 8, "W8Policy: member `granularity` must be per_channel");
        return false;
    } else if constexpr (Q::bits == 8 && !Q::symmetry::is_symmetric) {
        static_assert(Q::bits != 8, "W8Policy: member `symmetry` must be symmetric");
        return false;
    } else if constexpr (Q::bits == 8 && !W8Policy<Q>) {
        static_assert(W8Policy<Q>, "W8Policy: member `range` must lie within [-127, 127]");
        return false;
    } else if constexpr (Q::bits == 4 && !w4_granularity_ok_v<typename Q::granularity>) {
        static_assert(w4_granularity_ok_v<typename Q::granularity>,
                      "W4Policy: member `granularity` must be per_channel or per_group<G> with G % 32 == 0 "
                      "(bad group size: the int4 kernel works in 32-k superchunks)");
        return false;
    } else if constexpr (Q::bits == 4 && !W4Policy<Q>) {
        static_assert(W4Policy<Q>, "W4Policy: member `range` must lie within 4-bit codes ([-8, 7] signed, [0, 15] unsigned)");
        return false;
    } else {
        return true;
    }
}

namespace detail {

template <class = void>
void check_weight_shape(std::size_t rows, std::size_t cols, const char* who) {
    require(rows > 0 && cols > 0, who, ": weight must be non-empty, got [", rows, " x ", cols, "]");
    require(cols <= kMaxPackedK, who, ": in_features ", cols, " exceeds the exact-int32 limit ", kMaxPackedK);
}

template <class = void>
void check_params(std::span<const QuantParams> params, std::size_t expected, bool symmetric,
                  int zmin, int zmax, const char* who) {
    require(params.size() == expected, who, ": expected ", expected, " quantization params, got ", params.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
        const QuantParams& p = params[i];
        require(std::isfinite(p.scale) && p.scale > 0.0f, who, ": params[", i, "].scale must be finite and > 0, got ", p.scale);
        if (symmetric)
            require(p.zero == 0, who, ": params[", i, "].zero must be 0 for symmetric weights, got ", p.zero);
        else
            require(p.zero >= zmin && p.zero <= zmax, who, ": params[", i, "].zero must be in [", zmin, ", ", zmax, "], got ", p.zero);
    }
}

// Per-(row, group) parameters of a float weight by min/max (round to nearest).
template <class Q>
aligned_vector<QuantParams> weight_params(ConstMatrixView<float> w, std::size_t group, const char* who) {
    const std::size_t groups = w.cols / group;
    aligned_vector<QuantParams> params(w.rows * groups);
    for (std::size_t r = 0; r < w.rows; ++r) {
        for (std::size_t g = 0; g < groups; ++g) {
            float lo = 0.0f, hi = 0.0f;
            for (std::size_t c = g * group; c < (g + 1) * group; ++c) {
                const float x = w(r, c);
                require(std::isfinite(x), who, ": weight[", r, "][", c, "] is not finite (", x, ")");
                lo = std::min(lo, x);
                hi = std::max(hi, x);
            }
            const QuantParams qp = Q::params(lo, hi);
            // A user policy's params are checked here, once, by name (the kernels trust them).
            require(std::isfinite(qp.scale) && qp.scale > 0.0f && std::fabs(qp.inv_scale * qp.scale - 1.0f) <= 1e-5f, who,
                    ": the weight policy's params(", lo, ", ", hi, ") for row ", r, " gave scale ", qp.scale,
                    " and inv_scale ", qp.inv_scale, "; expected a finite scale > 0 and inv_scale = 1/scale");
            params[r * groups + g] = qp;
        }
    }
    return params;
}

// The codes of W on a grid: q[r][c] = clamp(round(w·inv_scale) + zero, range) with the params of
// row r's group c / group (params[r·groups + g]).
template <class Q, class Code>
aligned_vector<Code> weight_codes(ConstMatrixView<float> w, std::span<const QuantParams> params, std::size_t group) {
    const std::size_t groups = w.cols / group;
    aligned_vector<Code> codes(w.rows * w.cols);
    for (std::size_t r = 0; r < w.rows; ++r)
        for (std::size_t c = 0; c < w.cols; ++c)
            codes[r * w.cols + c] = static_cast<Code>(quantize_value<typename Q::range>(w(r, c), params[r * groups + c / group]));
    return codes;
}

} // namespace detail

// Packs already-quantized int8 codes q[n][k] ∈ [-127, 127] with one symmetric QuantParams per row.
template <class = void>
PackedW8 pack_w8(ConstMatrixView<std::int8_t> codes, std::span<const QuantParams> params,
                 W8Layout layout = W8Layout::pairs) {
    detail::check_weight_shape(codes.rows, codes.cols, "pack_w8");
    detail::check_params(params, codes.rows, true, 0, 0, "pack_w8");
    PackedW8 p;
    p.n = codes.rows;
    p.k = codes.cols;
    p.k_pad = detail::pack_round_up(p.k, kPackK);
    p.n_blocks = detail::pack_round_up(p.n, kPackCols) / kPackCols;
    p.layout = layout;
    p.blocks.assign(p.n_blocks * p.k_pairs(), BlockW8x2{});
    auto* bytes = reinterpret_cast<std::int8_t*>(p.blocks.data());
    p.scale.assign(p.n_pad(), 0.0f);
    p.qsum.assign(p.n_pad(), 0);
    for (std::size_t r = 0; r < p.n; ++r) {
        std::int32_t sum = 0;
        for (std::size_t c = 0; c < p.k; ++c) {
            const int q = codes(r, c);
            require(q >= Int8SymmetricRange::min, "pack_w8: code[", r, "][", c, "] = ", q, " is outside [-127, 127]");
            bytes[p.code_offset(r, c)] = static_cast<std::int8_t>(q);
            sum += q;
        }
        p.scale[r] = params[r].scale;
        p.qsum[r] = sum;
    }
    return p;
}

// The same weight in another tile byte order: a permutation of the code bytes (codes, scales and
// sums unchanged), e.g. a weight packed or loaded as pairs, for the VNNI kernel that reads quads.
template <class = void>
PackedW8 with_layout(PackedW8 p, W8Layout layout) {
    if (p.layout == layout) return p;
    PackedW8 out;
    out.n = p.n;
    out.k = p.k;
    out.k_pad = p.k_pad;
    out.n_blocks = p.n_blocks;
    out.layout = layout;
    out.blocks.assign(p.blocks.size(), BlockW8x2{});
    const auto* src = reinterpret_cast<const std::int8_t*>(p.blocks.data());
    auto* dst = reinterpret_cast<std::int8_t*>(out.blocks.data());
    for (std::size_t r = 0; r < p.n_pad(); ++r)
        for (std::size_t c = 0; c < p.k_pad; ++c) dst[out.code_offset(r, c)] = src[p.code_offset(r, c)];
    out.scale = std::move(p.scale);
    out.qsum = std::move(p.qsum);
    return out;
}

// Quantizes a float weight W[n][k] per channel with policy Q (Q::params of each row's [min, max];
// the built-in W8PerChannel gives s = max|w_n|/127) and packs it: q = clamp(round(w·(1/s)), qmin, qmax).
template <W8Policy Q = W8PerChannel>
PackedW8 pack_w8(ConstMatrixView<float> w, W8Layout layout = W8Layout::pairs) {
    detail::check_weight_shape(w.rows, w.cols, "pack_w8");
    const auto params = detail::weight_params<Q>(w, w.cols, "pack_w8");
    const auto codes = detail::weight_codes<Q, std::int8_t>(w, params, w.cols);
    return pack_w8(ConstMatrixView<std::int8_t>(codes.data(), w.rows, w.cols), params, layout);
}

// Packs already-quantized int4 codes, one code per byte (int8 in [-7, 7] for a symmetric policy,
// uint8 in [0, 15] for an asymmetric one), with params[row·groups + g] (groups = 1 per channel).
template <W4Policy Q>
PackedW4 pack_w4(ConstMatrixView<typename Q::code_type> codes, std::span<const QuantParams> params) {
    constexpr bool sym = Q::symmetry::is_symmetric;
    using R = typename Q::range;
    detail::check_weight_shape(codes.rows, codes.cols, "pack_w4");
    PackedW4 p;
    p.n = codes.rows;
    p.k = codes.cols;
    p.symmetric = sym;
    if constexpr (is_per_group_v<typename Q::granularity>) {
        constexpr std::size_t G = Q::granularity::group_size;
        require(p.k % G == 0, "pack_w4: group size ", G, " does not divide in_features ", p.k);
        p.k_pad = p.k; // G is a multiple of kPackK
        p.group = G;
    } else {
        p.k_pad = detail::pack_round_up(p.k, kPackK);
        p.group = p.k_pad;
    }
    p.groups = p.k_pad / p.group;
    detail::check_params(params, p.n * p.groups, sym, R::min, R::max, "pack_w4");
    p.n_blocks = detail::pack_round_up(p.n, kPackCols) / kPackCols;
    p.blocks.assign(p.n_blocks * p.k_chunks(), BlockW4x8{});
    p.scale.assign(p.n_blocks * p.groups * kPackCols, 0.0f);
    p.zero.assign(p.n_blocks * p.groups * kPackCols, 0);
    p.col_corr.assign(p.n_pad(), 0.0f);
    for (std::size_t r = 0; r < p.n; ++r) {
        float corr = 0.0f;
        for (std::size_t g = 0; g < p.groups; ++g) {
            std::int32_t usum = 0;
            for (std::size_t c = g * p.group; c < g * p.group + p.group_len(g); ++c) {
                const int q = codes(r, c);
                require(q >= R::min && q <= R::max, "pack_w4: code[", r, "][", c, "] = ", q, " is outside [", R::min, ", ", R::max, "]");
                const int u = sym ? q + 8 : q;
                const std::size_t i = c % 8;
                std::uint8_t& byte = p.blocks[(r / kPackCols) * p.k_chunks() + c / 8].qs[4 * (r % kPackCols) + i % 4];
                byte = static_cast<std::uint8_t>(i < 4 ? (byte & 0xF0) | u : (byte & 0x0F) | (u << 4));
                usum += u;
            }
            const QuantParams& qp = params[r * p.groups + g];
            const std::int32_t z = sym ? 8 : qp.zero;
            p.scale[p.param_index(r, g)] = qp.scale;
            p.zero[p.param_index(r, g)] = z;
            // Σ_{k∈g} (a − z_a)(u − z) = Σ a·u − z·Σ a − z_a·(Σ u − len·z): the last term is per
            // channel and summed here once, scaled, for the epilogue.
            corr = std::fma(qp.scale, static_cast<float>(usum - static_cast<std::int32_t>(p.group_len(g)) * z), corr);
        }
        p.col_corr[r] = corr;
    }
    return p;
}

// Packs int4 codes given in the library's standard nibble order: row r occupies (cols + 1) / 2
// bytes starting at a byte boundary; element 2i is the low nibble of byte i, 2i + 1 the high one.
// Symmetric codes are 4-bit two's complement (−7 = 0x9); asymmetric codes are plain [0, 15].
template <W4Policy Q>
PackedW4 pack_w4_nibbles(std::span<const std::uint8_t> packed, std::size_t rows, std::size_t cols,
                         std::span<const QuantParams> params) {
    detail::check_weight_shape(rows, cols, "pack_w4_nibbles");
    const std::size_t row_bytes = (cols + 1) / 2;
    require(packed.size() == rows * row_bytes, "pack_w4_nibbles: a [", rows, " x ", cols,
            "] int4 tensor with byte-aligned rows needs ", rows * row_bytes, " bytes, got ", packed.size());
    using Code = typename Q::code_type;
    aligned_vector<Code> codes(rows * cols);
    for (std::size_t r = 0; r < rows; ++r) {
        for (std::size_t c = 0; c < cols; ++c) {
            const std::uint8_t byte = packed[r * row_bytes + c / 2];
            const int nib = (c % 2 == 0) ? (byte & 0x0F) : (byte >> 4);
            codes[r * cols + c] = static_cast<Code>(Q::symmetry::is_symmetric ? (nib ^ 8) - 8 : nib);
        }
    }
    return pack_w4<Q>(ConstMatrixView<Code>(codes.data(), rows, cols), params);
}

// Quantizes a float weight W[n][k] with policy Q (min/max per channel or group) and packs it.
template <W4Policy Q>
PackedW4 pack_w4(ConstMatrixView<float> w) {
    detail::check_weight_shape(w.rows, w.cols, "pack_w4");
    std::size_t group = w.cols;
    if constexpr (is_per_group_v<typename Q::granularity>) {
        group = Q::granularity::group_size;
        require(w.cols % group == 0, "pack_w4: group size ", group, " does not divide in_features ", w.cols);
    }
    const auto params = detail::weight_params<Q>(w, group, "pack_w4");
    using Code = typename Q::code_type;
    const auto codes = detail::weight_codes<Q, Code>(w, params, group);
    return pack_w4<Q>(ConstMatrixView<Code>(codes.data(), w.rows, w.cols), params);
}

// ŵ = q·s as a float matrix [n x k] (tests, and the float check of a quantized layer).
inline MatrixXf dequantize(const PackedW8& p) {
    MatrixXf w(static_cast<Eigen::Index>(p.n), static_cast<Eigen::Index>(p.k));
    for (std::size_t r = 0; r < p.n; ++r)
        for (std::size_t c = 0; c < p.k; ++c)
            w(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(c)) = static_cast<float>(p.code(r, c)) * p.scale[r];
    return w;
}
// ŵ = (u − zero)·scale
inline MatrixXf dequantize(const PackedW4& p) {
    MatrixXf w(static_cast<Eigen::Index>(p.n), static_cast<Eigen::Index>(p.k));
    for (std::size_t r = 0; r < p.n; ++r)
        for (std::size_t c = 0; c < p.k; ++c) {
            const std::size_t i = p.param_index(r, c / p.group);
            w(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(c)) =
                static_cast<float>(p.nibble(r, c) - p.zero[i]) * p.scale[i];
        }
    return w;
}

// The packed type for a weight policy, and packing from float by policy.
template <class Q>
using packed_weights_t = std::conditional_t<Q::bits == 8, PackedW8, PackedW4>;

template <class Q>
    requires W8Policy<Q> || W4Policy<Q>
packed_weights_t<Q> pack_weights(ConstMatrixView<float> w, W8Layout w8_layout = W8Layout::pairs) {
    if constexpr (Q::bits == 8)
        return pack_w8<Q>(w, w8_layout);
    else
        return pack_w4<Q>(w);
}

// Quantizes W on a grid the caller gives — params per row (per channel) or per row and group
// (row-major, params[r·groups + g]) — and packs it. For a quantizer that chose its codes on its
// own grid (GPTQ: quant/gptq.hpp's GptqResult::params): re-deriving the scales from the
// dequantized ŵ by min/max would move the grid wherever the error feedback moved a row's or
// group's extreme value, and re-round every code there. With ŵ = (q − z)·s on this grid the
// codes come back exactly: ŵ·(1/s) = (q − z)(1 + δ), |δ| ≤ 3·2⁻²⁴, so for |q − z| ≤ 255 it
// rounds to q − z.
template <class Q>
    requires W8Policy<Q> || W4Policy<Q>
packed_weights_t<Q> pack_weights(ConstMatrixView<float> w, std::span<const QuantParams> params,
                                 W8Layout w8_layout = W8Layout::pairs) {
    detail::check_weight_shape(w.rows, w.cols, "pack_weights");
    std::size_t group = w.cols;
    if constexpr (is_per_group_v<typename Q::granularity>) {
        group = Q::granularity::group_size;
        require(w.cols % group == 0, "pack_weights: group size ", group, " does not divide in_features ", w.cols);
    }
    using R = typename Q::range;
    detail::check_params(params, w.rows * (w.cols / group), Q::symmetry::is_symmetric, R::min, R::max, "pack_weights");
    for (std::size_t i = 0; i < params.size(); ++i)
        require(std::fabs(params[i].inv_scale * params[i].scale - 1.0f) <= 1e-5f, "pack_weights: params[", i,
                "].inv_scale ", params[i].inv_scale, " is not 1/scale (scale ", params[i].scale, ")");
    for (std::size_t r = 0; r < w.rows; ++r)
        for (std::size_t c = 0; c < w.cols; ++c)
            require(std::isfinite(w(r, c)), "pack_weights: weight[", r, "][", c, "] is not finite (", w(r, c), ")");
    using Code = std::conditional_t<Q::bits == 8, std::int8_t, typename Q::code_type>;
    const auto codes = detail::weight_codes<Q, Code>(w, params, group);
    const ConstMatrixView<Code> cv(codes.data(), w.rows, w.cols);
    if constexpr (Q::bits == 8)
        return pack_w8(cv, params, w8_layout);
    else
        return pack_w4<Q>(cv, params);
}

MQ_NAMESPACE_END
