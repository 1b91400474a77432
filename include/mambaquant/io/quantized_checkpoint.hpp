// Quantized tensors in safetensors: packed int8 / int4 weight codes with their scales and zero points, and static activation params.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/quant/params.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

MQ_NAMESPACE_BEGIN

// A weight W [rows × cols] quantized per row (group = cols) or per group, as stored:
//   <base>.qweight  I8 [rows, cols]                 8-bit codes q ∈ [−127, 127] (symmetric)
//                   U8 [rows, ceil(cols/2)]         4-bit codes, the library's standard nibble order
//                                                   (element 2i low nibble, 2i+1 high; symmetric
//                                                   codes in 4-bit two's complement)
//   <base>.scales   F32 [rows, groups]              ŵ = (q − zero)·scale, scale finite and > 0
//   <base>.zeros    U8 [rows, groups]               asymmetric only, in [0, 2^bits − 1]
// Nothing here knows a model: the model (nn/quantized_model.hpp) says which tensor is what.
struct StoredQuantWeight {
    int bits = 8;
    bool symmetric = true;
    std::size_t rows = 0, cols = 0, group = 0; // group = cols: per channel
    std::vector<std::uint8_t> codes;            // I8 bytes (8-bit) or nibble bytes (4-bit)
    std::vector<float> scale;                   // [rows × groups]
    std::vector<std::uint8_t> zero;             // [rows × groups], asymmetric only

    std::size_t groups() const noexcept { return group ? cols / group : 0; }
    std::size_t code_bytes() const noexcept { return bits == 8 ? rows * cols : rows * ((cols + 1) / 2); }
    // One QuantParams per (row, group), row-major.
    template <class = void>
    std::vector<QuantParams> params() const {
        std::vector<QuantParams> p(scale.size());
        for (std::size_t i = 0; i < p.size(); ++i) {
            p[i].scale = scale[i];
            p[i].inv_scale = 1.0f / scale[i];
            p[i].zero = symmetric ? 0 : static_cast<std::int32_t>(zero[i]);
        }
        return p;
    }
};

// Appends the tensors of `w` (borrowed until the write) under `base`.
template <class Tag = void>
void append_quant_weight(dependent_t<Tag, std::vector<TensorData>>& out, const dependent_t<Tag, std::string>& base,
                         const dependent_t<Tag, StoredQuantWeight>& w) {
    const DType code_type = w.bits == 8 ? DType::I8 : DType::U8;
    const std::size_t code_cols = w.bits == 8 ? w.cols : (w.cols + 1) / 2;
    out.push_back({base + ".qweight", code_type, {w.rows, code_cols}, std::as_bytes(std::span<const std::uint8_t>(w.codes))});
    out.push_back({base + ".scales", DType::F32, {w.rows, w.groups()}, std::as_bytes(std::span<const float>(w.scale))});
    if (!w.symmetric)
        out.push_back({base + ".zeros", DType::U8, {w.rows, w.groups()}, std::as_bytes(std::span<const std::uint8_t>(w.zero))});
}

namespace detail {
template <class Tag = void>
std::span<const std::byte> checked_tensor_bytes(const dependent_t<Tag, Checkpoint>& ck,
                                                const dependent_t<Tag, std::string>& name, DType dtype,
                                                const dependent_t<Tag, std::vector<std::size_t>>& shape, std::size_t elem_bytes) {
    require(ck.contains(name), ck.path().string(), ": quantized tensor \"", name, "\" not found");
    const TensorInfo& t = ck.info(name);
    require(t.dtype == dtype, ck.path().string(), ": tensor \"", name, "\" has dtype ", dtype_name(t.dtype), ", expected ",
            dtype_name(dtype));
    require(t.shape == shape, ck.path().string(), ": tensor \"", name, "\" has shape ", shape_string(t.shape),
            ", expected ", shape_string(shape));
    std::size_t n = elem_bytes;
    for (auto d : shape) n *= d;
    const auto bytes = ck.bytes(name);
    require(bytes.size() == n, ck.path().string(), ": tensor \"", name, "\" holds ", bytes.size(), " bytes, expected ", n);
    return bytes;
}
} // namespace detail

// Reads and checks the tensors of a quantized weight whose layout the caller knows (from the
// quantization config): dtype, shape, byte size, every scale finite and > 0, every zero point and
// code in range; each error names the tensor.
template <class Tag = void>
StoredQuantWeight read_quant_weight(const dependent_t<Tag, Checkpoint>& ck, const dependent_t<Tag, std::string>& base,
                                    int bits, bool symmetric,
                                    std::size_t rows, std::size_t cols, std::size_t group) {
    require(bits == 8 || bits == 4, "read_quant_weight: \"", base, "\": bits must be 4 or 8, got ", bits);
    require(group > 0 && cols % group == 0, "read_quant_weight: \"", base, "\": group ", group, " does not divide ", cols);
    StoredQuantWeight w;
    w.bits = bits;
    w.symmetric = symmetric;
    w.rows = rows;
    w.cols = cols;
    w.group = group;
    const std::size_t code_cols = bits == 8 ? cols : (cols + 1) / 2;
    const auto cb = detail::checked_tensor_bytes(ck, base + ".qweight", bits == 8 ? DType::I8 : DType::U8, {rows, code_cols}, 1);
    w.codes.resize(cb.size());
    std::memcpy(w.codes.data(), cb.data(), cb.size());
    if (bits == 8)
        for (std::size_t i = 0; i < w.codes.size(); ++i)
            require(static_cast<std::int8_t>(w.codes[i]) != -128, ck.path().string(), ": tensor \"", base,
                    ".qweight\": code −128 at [", i / cols, ", ", i % cols, "] is outside the symmetric range [−127, 127]");
    const std::size_t g = cols / group;
    const auto sb = detail::checked_tensor_bytes(ck, base + ".scales", DType::F32, {rows, g}, sizeof(float));
    w.scale.resize(rows * g);
    std::memcpy(w.scale.data(), sb.data(), sb.size());
    for (std::size_t i = 0; i < w.scale.size(); ++i)
        require(std::isfinite(w.scale[i]) && w.scale[i] > 0.0f, ck.path().string(), ": tensor \"", base, ".scales\": scale[",
                i / g, ", ", i % g, "] = ", w.scale[i], " must be finite and > 0");
    if (!symmetric) {
        const auto zb = detail::checked_tensor_bytes(ck, base + ".zeros", DType::U8, {rows, g}, 1);
        w.zero.resize(rows * g);
        std::memcpy(w.zero.data(), zb.data(), zb.size());
        const int zmax = (1 << bits) - 1;
        for (std::size_t i = 0; i < w.zero.size(); ++i)
            require(w.zero[i] <= zmax, ck.path().string(), ": tensor \"", base, ".zeros\": zero[", i / g, ", ", i % g,
                    "] = ", int(w.zero[i]), " is outside [0, ", zmax, "]");
    } else {
        require(!ck.contains(base + ".zeros"), ck.path().string(), ": tensor \"", base,
                ".zeros\" present but the quantizer is symmetric");
    }
    return w;
}

// A static per-tensor activation quantizer as stored: F32 [2] = {scale, zero} (the zero point, an
// integer ≤ 255, is exact in float).
template <class Tag = void>
std::vector<float> act_params_tensor(const dependent_t<Tag, QuantParams>& p) { return {p.scale, static_cast<float>(p.zero)}; }

template <class Tag = void>
QuantParams read_act_params(const dependent_t<Tag, Checkpoint>& ck, const dependent_t<Tag, std::string>& name,
                            bool symmetric) {
    const auto b = detail::checked_tensor_bytes(ck, name, DType::F32, {2}, sizeof(float));
    float v[2];
    std::memcpy(v, b.data(), sizeof v);
    require(std::isfinite(v[0]) && v[0] > 0.0f, ck.path().string(), ": tensor \"", name, "\": activation scale ", v[0],
            " must be finite and > 0");
    const float zmax = symmetric ? 0.0f : 255.0f;
    require(std::isfinite(v[1]) && v[1] >= 0.0f && v[1] <= zmax && v[1] == std::nearbyint(v[1]), ck.path().string(),
            ": tensor \"", name, "\": activation zero point ", v[1], " must be an integer in [0, ", zmax, "]");
    QuantParams p;
    p.scale = v[0];
    p.inv_scale = 1.0f / v[0];
    p.zero = static_cast<std::int32_t>(v[1]);
    return p;
}

MQ_NAMESPACE_END
