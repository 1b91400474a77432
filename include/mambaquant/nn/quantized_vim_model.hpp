// QuantizedVimModel: a Vim classifier whose every site is quantized (or float) as a QuantizationConfig says, built from VimWeights.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/io/vim_config.hpp>
#include <mambaquant/nn/quantization_config.hpp>
#include <mambaquant/nn/quantized_model.hpp>
#include <mambaquant/nn/site_linear.hpp>
#include <mambaquant/nn/vim_block.hpp>
#include <mambaquant/nn/vim_model.hpp>
#include <mambaquant/nn/vim_weights.hpp>

#include <Eigen/Core>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

MQ_NAMESPACE_BEGIN

// One run-time Vim layer: the bidirectional block on AnyLinear sites and the run-time scan of the
// language model (nn/quantized_model.hpp) — the same kernels, policies and checks.
using RuntimeVimBlock = BasicVimBlock<AnyLinear, AnyLinear, RuntimeScan>;
using QuantizedVimModel = BasicVimModel<RuntimeVimBlock, AnyLinear>;

namespace detail {
template <class Tag = void>
bool same_params(const dependent_t<Tag, std::optional<QuantParams>>& a,
                 const dependent_t<Tag, std::optional<QuantParams>>& b) {
    return a.has_value() == b.has_value() && (!a || (a->scale == b->scale && a->zero == b->zero));
}
} // namespace detail

// The quantized Vim (FakeQuant::no: integer kernels) or its fake-quant twin from (transformed)
// VimWeights and a config whose static params are per direction layer (2·n_layer entries, as the
// recipes calibrate them). The sites map as for the language model:
//   in_proj, out_proj        shared by the directions: built once from direction layer 2l, whose
//                            params must equal 2l+1's (the recipes compute both from one input);
//   conv1d, x_proj, dt_proj  per direction, from its own direction layer and params;
//   scan_output              per direction (its state_scale, R4 rotation);
//   lm_head                  the classification head [classes, D] (+ its bias), input the normed
//                            class token (params: head_act);
//   embedding                the patch embedding's weight [D, C·p·p], quantized per output channel
//                            as the embedding table's rows are, and run on its dequantized values
//                            (its input is pixels, not an activation site); b_pe, the class token
//                            and the position rows stay float, as biases do.
// Every run-time extra is applied or refused as in build_quantized_model. A float config gives
// the float model through the same classes. (A template never spelled by callers: instantiated only
// where called, and with MQ_COMPILED compiled once in the companion library, src/vim.cpp.)
template <class Tag = void>
dependent_t<Tag, QuantizedVimModel> build_quantized_vim_model(const dependent_t<Tag, VimWeights>& w,
                                            const dependent_t<Tag, VimConfig>& cfg,
                                            const dependent_t<Tag, QuantizationConfig>& qc,
                                            FakeQuant fake = FakeQuant::no) {
    validate(w, cfg);
    const std::size_t n_dir = 2 * cfg.n_layer;
    qc.validate(n_dir);
    const bool is_fake = fake == FakeQuant::yes;
    const MambaWeights& m = w.directions;
    const std::size_t D = cfg.d_model, E = cfg.d_inner, N = cfg.d_state, R = cfg.dt_rank, K = cfg.d_conv;
    VimEmbedding emb = vim_embedding(w, cfg);
    if (const SiteQuant& eq = qc[Site::embedding]; eq.weight)
        detail::visit_site_weight(*eq.weight, [&]<class W>(std::type_identity<W>) {
            emb.patch_w = dequantize(pack_weights<W>(view(std::as_const(emb.patch_w))));
        });
    const MatrixXf head_w = vim_head(w, cfg);
    using SiteLinear = dependent_t<Tag, AnyLinear>;
    using Block = dependent_t<Tag, RuntimeVimBlock>;
    SiteLinear head = SiteLinear::build(view(head_w), detail::span_of(w.head_bias), qc[Site::lm_head], std::nullopt,
                                        detail::normalized(qc.head_act), is_fake);
    std::vector<Block> layers;
    layers.reserve(cfg.n_layer);
    std::vector<std::uint8_t> codes; // conv int8 codes: not kept (a quantized Vim is not saved)
    std::vector<float> scales;
    for (std::size_t l = 0; l < cfg.n_layer; ++l) {
        const MambaLayerWeights& shared = m.layers[2 * l];
        detail::require_config_out_rotation(shared, qc, l, "build_quantized_vim_model");
        auto params = [&](std::size_t d, Site s) {
            return qc.layers.empty() ? std::optional<QuantParams>{} : qc.layers[2 * l + d][s];
        };
        for (Site s : {Site::in_proj, Site::out_proj})
            require(detail::same_params(params(0, s), params(1, s)), "build_quantized_vim_model: layer ", l, ": the static ",
                    site_name(s), " params differ between the direction layers ", 2 * l, " and ", 2 * l + 1,
                    " (one shared site has one quantizer)");
        auto site = [&](std::size_t d, Site s, const MatrixXf& weight, std::span<const float> bias = {},
                        const std::optional<RotationSpec>& rot = std::nullopt) {
            return detail::build_site_linear(view(weight), bias, qc[s], rot, detail::normalized(params(d, s)),
                                             qc.weight_grid(2 * l + d, s), is_fake);
        };
        auto branch = [&](std::size_t d) {
            const MambaLayerWeights& lw = m.layers[2 * l + d];
            const aligned_vector<float> xb = detail::dt_shift_bias(lw);
            MatrixXf conv_w = lw.conv_w;
            if (qc[Site::conv1d].weight) detail::quantize_conv_int8(conv_w, codes, scales);
            ScanWeights sw = ScanWeights::from_A_log(view(lw.A_log), detail::span_of(lw.D), detail::span_of(lw.dt_bias));
            if (!detail::neutral(lw.gate_scale, 1.0f)) sw.set_gate_scale(detail::span_of(lw.gate_scale));
            // The language model's conv: float taps, or the integer conv on the codes when its input
            // is static per tensor (ConvWeights copies the codes, so the buffers are reused).
            return typename Block::Branch{detail::conv_weights(conv_w, codes, scales, detail::span_of(lw.conv_b),
                                                                qc[Site::conv1d], detail::normalized(params(d, Site::conv1d))),
                                           site(d, Site::x_proj, lw.x_proj, std::span<const float>(xb.data(), xb.size())),
                                           site(d, Site::dt_proj, lw.dt_proj), std::move(sw),
                                           detail::make_runtime_scan(lw, qc, 2 * l + d)};
        };
        typename Block::Parts parts{shared.norm.transpose(), site(0, Site::in_proj, shared.in_proj),
                                     site(0, Site::out_proj, shared.out_proj, {}, qc.out_rotation), {branch(0), branch(1)}};
        layers.emplace_back(D, E, N, R, K, cfg.norm_eps, cfg.divide_out, std::move(parts));
    }
    return dependent_t<Tag, QuantizedVimModel>(cfg, std::move(emb), std::move(layers), m.norm_f.transpose(), std::move(head));
}
MQ_EXTERN_TEMPLATE(QuantizedVimModel build_quantized_vim_model<>(const VimWeights&, const VimConfig&,
                                                                 const QuantizationConfig&, FakeQuant))
MQ_EXTERN_TEMPLATE(MatrixXf QuantizedVimModel::logits(const ImageBatch&, ThreadPool*, std::vector<MatrixXf>*, std::size_t,
                                                      ActivationTap*) const)

MQ_NAMESPACE_END
