// The Mamba block's causal depthwise conv1d as the block calls it: validated sequence and step.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/conv1d.hpp>
#include <mambaquant/kernels/finite.hpp>
#include <mambaquant/kernels/quantized_conv1d.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/ssm/cache.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <utility>

MQ_NAMESPACE_BEGIN

// The integer conv's extras (kernels/quantized_conv1d.hpp): the input's static per-tensor params
// and, per channel, s_w·s_x (the weight scales are kept for saving).
struct ConvInputQuant {
    QuantParams input;               // static (scale, inv_scale, zero) of the conv input
    bool symmetric = false;          // codes in [−127, 127] (zero 0) or [0, 255]
    aligned_vector<float> w_scale;   // [E] s_w
    aligned_vector<float> out_scale; // [E] s_w·s_x
};

// Conv weights of one layer, from the checkpoint's weight [E, K] ([E, 1, K] with the 1 dropped)
// and bias [E] (may be empty); stored tap-major [K, E] for the kernel. With `quant` (quantized()),
// weight_t holds the int8 codes q_w (integers, exact in float) and the conv runs on integer codes.
struct ConvWeights {
    MatrixXf weight_t; // [K, E]: float taps, or the codes q_w when quantized
    aligned_vector<float> bias;
    std::optional<ConvInputQuant> quant;

    bool quantized() const noexcept { return quant.has_value(); }

    std::size_t channels() const noexcept { return static_cast<std::size_t>(weight_t.cols()); }
    std::size_t taps() const noexcept { return static_cast<std::size_t>(weight_t.rows()); }

    template <class Tag = void>
    static ConvWeights from(dependent_t<Tag, ConstMatrixView<float>> weight, std::span<const float> bias = {}) {
        require(weight.rows > 0 && weight.cols > 0, "ConvWeights: weight must be non-empty, got [", weight.rows,
                " x ", weight.cols, "]");
        require(weight.cols <= 64, "ConvWeights: at most 64 taps, got ", weight.cols);
        require(bias.empty() || bias.size() == weight.rows, "ConvWeights: bias: expected ", weight.rows,
                " values, got ", bias.size());
        for (std::size_t d = 0; d < weight.rows; ++d)
            for (std::size_t k = 0; k < weight.cols; ++k)
                require(std::isfinite(weight(d, k)), "ConvWeights: weight[", d, ", ", k, "] is not finite");
        for (std::size_t d = 0; d < bias.size(); ++d) require(std::isfinite(bias[d]), "ConvWeights: bias[", d, "] is not finite");
        ConvWeights w;
        w.weight_t = as_eigen(weight).transpose();
        w.bias.assign(bias.begin(), bias.end());
        return w;
    }

    // The integer conv: int8 codes [E, K] (in [−127, 127]), their per-channel scales s_w [E] and
    // the input's static per-tensor params (8 bits, symmetric or not). Throws mq::error naming the
    // bad value.
    template <class Tag = void>
    static ConvWeights quantized(ConstMatrixView<std::int8_t> codes, std::span<const float> w_scale,
                                 std::span<const float> bias, const dependent_t<Tag, QuantParams>& input, bool symmetric) {
        const std::size_t E = codes.rows, K = codes.cols;
        require(w_scale.size() == E, "ConvWeights: conv1d.scales: expected ", E, " values, got ", w_scale.size());
        for (std::size_t d = 0; d < E; ++d)
            require(std::isfinite(w_scale[d]) && w_scale[d] > 0.0f, "ConvWeights: conv1d.scales[", d, "] = ", w_scale[d],
                    " must be finite and > 0");
        require(std::isfinite(input.scale) && input.scale > 0.0f, "ConvWeights: conv1d input scale must be finite and > 0, got ",
                input.scale);
        require(symmetric ? input.zero == 0 : (input.zero >= 0 && input.zero <= 255), "ConvWeights: conv1d input zero point ",
                input.zero, " is outside ", symmetric ? "{0} (symmetric)" : "[0, 255]");
        MatrixXf q(static_cast<Eigen::Index>(E), static_cast<Eigen::Index>(K));
        for (std::size_t d = 0; d < E; ++d)
            for (std::size_t k = 0; k < K; ++k) {
                require(codes(d, k) >= -127, "ConvWeights: conv1d.qweight[", d, ", ", k, "] = −128 is outside [−127, 127]");
                q(static_cast<Eigen::Index>(d), static_cast<Eigen::Index>(k)) = codes(d, k);
            }
        ConvWeights w = from(view(std::as_const(q)), bias);
        ConvInputQuant c;
        c.input = input;
        c.input.inv_scale = 1.0f / input.scale; // as params_from_range sets it
        c.symmetric = symmetric;
        c.w_scale.assign(w_scale.begin(), w_scale.end());
        c.out_scale.resize(E);
        for (std::size_t d = 0; d < E; ++d) c.out_scale[d] = w_scale[d] * input.scale;
        w.quant = std::move(c);
        return w;
    }
};

// y = SiLU(causal_conv1d(x) + bias) (SiLU optional) over L tokens. With a cache, its window
// is the history before x and is updated to the last K−1 inputs; without one, the history is
// zero (a fresh sequence). y must not overlap x. Throws mq::error on mismatched shapes, L = 0 or
// non-finite input.
template <class Arch = default_arch>
void causal_conv1d(const ConvWeights& w, ConstMatrixView<float> x, ConvCache* cache, MatrixView<float> y,
                   bool apply_silu = true, Arch arch = {}) {
    const std::size_t E = w.channels(), K = w.taps(), L = x.rows;
    require(E > 0, "causal_conv1d: ConvWeights are empty");
    require(L > 0, "causal_conv1d: the sequence is empty (L = 0)");
    require(x.cols == E, "causal_conv1d: x: expected ", E, " columns, got ", x.cols);
    require(y.rows == L && y.cols == E, "causal_conv1d: y: expected shape [", L, " x ", E, "], got [", y.rows,
            " x ", y.cols, "]");
    if (cache)
        require(cache->channels() == E && cache->taps() == K, "causal_conv1d: cache: expected E = ", E, ", K = ",
                K, ", got E = ", cache->channels(), ", K = ", cache->taps());
    if (!all_finite(arch, x))
        for (std::size_t t = 0; t < L; ++t)
            for (std::size_t d = 0; d < E; ++d)
                require(std::isfinite(x(t, d)), "causal_conv1d: x[", t, ", ", d, "] is not finite (", x(t, d), ")");
    CausalConv1dArgs a;
    a.x = x;
    a.weight = view(w.weight_t);
    a.bias = w.bias.empty() ? nullptr : w.bias.data();
    if (cache && K > 1) a.window = view(cache->window);
    a.silu = apply_silu;
    a.y = y;
    if (w.quant) {
        QuantizedConv1dArgs q;
        q.conv = a;
        q.out_scale = w.quant->out_scale.data();
        q.input = w.quant->input;
        q.qmin = w.quant->symmetric ? -127 : 0;
        q.qmax = w.quant->symmetric ? 127 : 255;
        quantized_causal_conv1d(arch, q);
        return;
    }
    causal_conv1d(arch, a);
}

// One decode token: x, y [E] (distinct); the cache's window rolls by one.
template <class Arch = default_arch>
void causal_conv1d_step(const ConvWeights& w, std::span<const float> x, ConvCache& cache, std::span<float> y,
                        bool apply_silu = true, Arch arch = {}) {
    causal_conv1d(w, as_row(x), &cache, as_row(y), apply_silu, arch);
}

MQ_NAMESPACE_END
