// AnyLinear: one quantization site's linear layer chosen at run time from a small set of compiled Linear instantiations, or its fake-quant twin.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/packed_weights.hpp>
#include <mambaquant/nn/linear.hpp>
#include <mambaquant/nn/quantization_config.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/quantizer.hpp>
#include <mambaquant/transform/rotation.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstddef>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <variant>

MQ_NAMESPACE_BEGIN

// The run-time set (what a QuantizationConfig can name), each a Linear<W, A, R> — the very
// kernels of the compile-time blocks, no second implementation:
//   W ∈ {W8 per channel sym, W4 per channel sym/asym, W4 per group 128 sym/asym}
//   A ∈ {A8 per token sym/asym (dynamic), A8 per tensor sym/asym (static, calibrated)}
//   R ∈ {NoRotation, HadamardOnline}   (HadamardOnline: out_proj's input, R2)
// plus the float layer (FloatLinear<R>) and FakeQuantLinear (the twin below): 44 alternatives.
// Each Linear instantiation costs compile time; the set is kept to what the recipes use.
namespace site_quantizers {
using W8 = W8PerChannel;
using W4C = Quantizer<4, per_channel, symmetric>;
using W4CA = Quantizer<4, per_channel, asymmetric>;
using W4G = Quantizer<4, per_group<128>, symmetric>;
using W4GA = Quantizer<4, per_group<128>, asymmetric>;
using ATok = Quantizer<8, per_token, symmetric>;
using ATokA = Quantizer<8, per_token, asymmetric>;
using ATen = Quantizer<8, per_tensor, symmetric>;
using ATenA = Quantizer<8, per_tensor, asymmetric>;
} // namespace site_quantizers

// The fake-quant twin of a quantized linear: the same dequantized weights ŵ = (q − z)·s (read
// back from the packed codes by kernels/packed_weights.hpp's dequantize, so they are exactly the integer path's), the same rotation, and the
// activations quantized then dequantized in float with the same params (per token from each row's
// range, or the static per-tensor params), then a float GEMM. Its codes equal the integer path's;
// only the accumulation differs (float sum of â·ŵ instead of the exact int32 sum then one scale).
class FakeQuantLinear {
public:
    template <class = void>
    FakeQuantLinear(MatrixXf dequantized_weight, std::span<const float> bias, ActQuant act,
                    std::optional<QuantParams> static_params, std::optional<HadamardOnline> rotation)
        : w_(std::move(dequantized_weight)), bias_(bias.begin(), bias.end()), act_(act), static_(static_params),
          rotation_(std::move(rotation)) {
        require(act_.quantized(), "FakeQuantLinear: activations must be quantized");
        require(act_.mode != ActMode::static_per_tensor || static_.has_value(),
                "FakeQuantLinear: static per-tensor activations need params");
    }
    std::size_t in_features() const noexcept { return static_cast<std::size_t>(w_.cols()); }
    std::size_t out_features() const noexcept { return static_cast<std::size_t>(w_.rows()); }
    const MatrixXf& weights() const noexcept { return w_; }
    const aligned_vector<float>& bias() const noexcept { return bias_; }

    // Instantiated only where called; the output's expressions are spelled dependent on Tag, so they
    // are built only there too (core/config.hpp).
    template <class Tag = void>
    void forward(ConstMatrixView<float> x, MatrixView<float> y, MatrixXf& scratch) const {
        const auto L = static_cast<Eigen::Index>(x.rows);
        if (scratch.rows() < L || scratch.cols() != w_.cols()) scratch.resize(L, w_.cols());
        MatrixView<float> xq(scratch.data(), x.rows, x.cols);
        as_eigen(xq) = as_eigen(x);
        if (rotation_) rotation_->apply(xq);
        QuantParams p{};
        if (act_.mode == ActMode::static_per_tensor) p = *static_;
        for (std::size_t r = 0; r < x.rows; ++r) {
            float* row = xq.row_ptr(r);
            if (act_.mode == ActMode::dynamic_per_token) {
                float lo = 0.0f, hi = 0.0f; // as quantize_activations: the range widened to contain 0
                for (std::size_t c = 0; c < x.cols; ++c) {
                    lo = std::min(lo, row[c]);
                    hi = std::max(hi, row[c]);
                }
                p = act_.symmetric ? params_from_range<8, symmetric>(lo, hi) : params_from_range<8, asymmetric>(lo, hi);
            }
            for (std::size_t c = 0; c < x.cols; ++c)
                row[c] = act_.symmetric ? dequantize_value(quantize_value<BitRange<8, symmetric>>(row[c], p), p)
                                        : dequantize_value(quantize_value<BitRange<8, asymmetric>>(row[c], p), p);
        }
        auto out = as_eigen(dependent_t<Tag, MatrixView<float>>(y));
        const dependent_t<Tag, MatrixXf>& w = w_;
        out.noalias() = as_eigen(ConstMatrixView<float>(xq)) * w.transpose();
        if (!bias_.empty())
            out.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(bias_.data(), static_cast<Eigen::Index>(bias_.size()));
    }

private:
    MatrixXf w_;
    aligned_vector<float> bias_;
    ActQuant act_;
    std::optional<QuantParams> static_;
    std::optional<HadamardOnline> rotation_;
};

namespace detail {
template <class... T>
struct type_list {};
template <class W, class... A>
using linear_row = type_list<Linear<W, A, NoRotation>..., Linear<W, A, HadamardOnline>...>;
template <class... Lists>
struct concat_lists;
template <class... A>
struct concat_lists<type_list<A...>> {
    using type = type_list<A...>;
};
template <class... A, class... B, class... Rest>
struct concat_lists<type_list<A...>, type_list<B...>, Rest...> {
    using type = typename concat_lists<type_list<A..., B...>, Rest...>::type;
};
template <class L>
struct variant_of;
template <class... T>
struct variant_of<type_list<T...>> {
    using type = std::variant<T...>;
};
namespace sq = site_quantizers;
template <class W>
using linear_acts = linear_row<W, sq::ATok, sq::ATokA, sq::ATen, sq::ATenA>;
using any_linear_list =
    typename concat_lists<type_list<std::monostate, FloatLinear<NoRotation>, FloatLinear<HadamardOnline>, FakeQuantLinear>,
                          linear_acts<sq::W8>, linear_acts<sq::W4C>, linear_acts<sq::W4CA>, linear_acts<sq::W4G>,
                          linear_acts<sq::W4GA>>::type;

// Calls f(type_identity<W>) for the weight quantizer the spec names (run-time set only).
template <class F>
decltype(auto) visit_site_weight(const QuantSpec& w, F&& f) {
    namespace sq = site_quantizers;
    if (w.bits == 8) return f(std::type_identity<sq::W8>{});
    if (w.granularity == GranularityKind::per_channel)
        return w.symmetric ? f(std::type_identity<sq::W4C>{}) : f(std::type_identity<sq::W4CA>{});
    return w.symmetric ? f(std::type_identity<sq::W4G>{}) : f(std::type_identity<sq::W4GA>{});
}
template <class F>
decltype(auto) visit_site_act(const ActQuant& a, F&& f) {
    namespace sq = site_quantizers;
    if (a.mode == ActMode::dynamic_per_token)
        return a.symmetric ? f(std::type_identity<sq::ATok>{}) : f(std::type_identity<sq::ATokA>{});
    return a.symmetric ? f(std::type_identity<sq::ATen>{}) : f(std::type_identity<sq::ATenA>{});
}

// One row of a packed weight, dequantized (the embedding lookup of a quantized table).
template <class Tag = void>
void dequantize_packed_row(const dependent_t<Tag, PackedW8>& p, std::size_t r, float* out) noexcept {
    for (std::size_t c = 0; c < p.k; ++c) out[c] = static_cast<float>(p.code(r, c)) * p.scale[r];
}
template <class Tag = void>
void dequantize_packed_row(const dependent_t<Tag, PackedW4>& p, std::size_t r, float* out) noexcept {
    for (std::size_t c = 0; c < p.k; ++c) {
        const std::size_t i = p.param_index(r, c / p.group);
        out[c] = static_cast<float>(p.nibble(r, c) - p.zero[i]) * p.scale[i];
    }
}
} // namespace detail

// Scratch of whichever alternative runs (each Linear keeps its own typed workspace).
struct AnyLinearWorkspace {
    LinearWorkspace<float> f;
    LinearWorkspace<std::int16_t> w8;
    LinearWorkspace<std::uint8_t> w4;
    MatrixXf fake;
};

// A site's linear layer: float, quantized (integer kernels) or fake-quant, decided at run time.
// A class template used as AnyLinear = BasicAnyLinear<>, its variant a dependent member: a
// translation unit that includes this header but runs no such layer does not build the variant's
// 44 alternatives (core/config.hpp, dependent_t).
template <class Defer = void>
class BasicAnyLinear {
public:
    using variant_type = dependent_t<Defer, typename detail::variant_of<detail::any_linear_list>::type>;
    using workspace_type = AnyLinearWorkspace;

    BasicAnyLinear() = default;
    template <class L>
        requires(!std::same_as<std::remove_cvref_t<L>, BasicAnyLinear>)
    explicit BasicAnyLinear(L&& l) : v_(std::forward<L>(l)) {}

    // The site's layer from a float weight [out × in] that already holds the online rotation, if
    // any (the transforms fold it: rotate_out_proj_input), so it is packed as it is. `fake`: the
    // fake-quant twin of the same quantized layer.
    template <class = void>
    static BasicAnyLinear build(ConstMatrixView<float> weight, std::span<const float> bias, const SiteQuant& q,
                                const std::optional<RotationSpec>& rotation, std::optional<QuantParams> static_params,
                                bool fake);

    // From packed weights (loaded from a file, or just packed); the weight type must be the spec's.
    template <class Packed>
    static BasicAnyLinear from_packed(Packed packed, std::span<const float> bias, const SiteQuant& q,
                                      std::optional<HadamardOnline> rot, std::optional<QuantParams> static_params,
                                      bool fake);

    // The members below that visit every alternative are templates never spelled by callers, as
    // build and forward: a non-template member would instantiate them for all 44 alternatives in
    // every translation unit that includes this header (core/config.hpp).
    bool empty() const noexcept { return std::holds_alternative<std::monostate>(v_); }
    const variant_type& variant() const noexcept { return v_; }

    template <class = void>
    std::size_t in_features() const {
        return std::visit([](const auto& l) -> std::size_t {
            if constexpr (std::is_same_v<std::decay_t<decltype(l)>, std::monostate>) return 0;
            else return l.in_features();
        }, v_);
    }
    template <class = void>
    std::size_t out_features() const {
        return std::visit([](const auto& l) -> std::size_t {
            if constexpr (std::is_same_v<std::decay_t<decltype(l)>, std::monostate>) return 0;
            else return l.out_features();
        }, v_);
    }
    template <class = void>
    const aligned_vector<float>& bias() const {
        return std::visit([](const auto& l) -> const aligned_vector<float>& {
            if constexpr (std::is_same_v<std::decay_t<decltype(l)>, std::monostate>) fail("AnyLinear: empty");
            else return l.bias();
        }, v_);
    }
    // Bytes of the weights as held in memory (packed codes + params, or floats) and the bias.
    template <class = void>
    std::size_t bytes() const {
        return std::visit([](const auto& l) -> std::size_t {
            using L = std::decay_t<decltype(l)>;
            if constexpr (std::is_same_v<L, std::monostate>) return 0;
            else if constexpr (std::is_same_v<L, FakeQuantLinear>)
                return static_cast<std::size_t>(l.weights().size()) * sizeof(float) + l.bias().size() * sizeof(float);
            else if constexpr (std::is_same_v<typename L::weights_type, MatrixXf>)
                return static_cast<std::size_t>(l.weights().size()) * sizeof(float) + l.bias().size() * sizeof(float);
            else return l.weights().bytes() + l.bias().size() * sizeof(float);
        }, v_);
    }
    template <class = void>
    void set_thread_pool(ThreadPool* pool) {
        std::visit([&](auto& l) {
            using L = std::decay_t<decltype(l)>;
            if constexpr (!std::is_same_v<L, std::monostate> && !std::is_same_v<L, FakeQuantLinear>) l.set_thread_pool(pool);
        }, v_);
    }

    template <class = void>
    void forward(ConstMatrixView<float> x, MatrixView<float> y, workspace_type& ws) const;

    // Calls f(packed) with the PackedW8 / PackedW4 of a quantized layer (not for float or fake).
    template <class F>
    decltype(auto) visit_packed(F&& f) const {
        return std::visit([&](const auto& l) -> decltype(auto) {
            using L = std::decay_t<decltype(l)>;
            if constexpr (std::is_same_v<L, std::monostate> || std::is_same_v<L, FakeQuantLinear>) {
                fail("AnyLinear: not a packed (integer) layer");
                return f(static_cast<const PackedW8*>(nullptr));
            } else if constexpr (std::is_same_v<typename L::weights_type, MatrixXf>) {
                fail("AnyLinear: not a packed (integer) layer");
                return f(static_cast<const PackedW8*>(nullptr));
            } else {
                return f(&l.weights());
            }
        }, v_);
    }
    template <class = void>
    bool is_packed() const noexcept {
        return std::visit([](const auto& l) {
            using L = std::decay_t<decltype(l)>;
            if constexpr (std::is_same_v<L, std::monostate> || std::is_same_v<L, FakeQuantLinear>) return false;
            else return !std::is_same_v<typename L::weights_type, MatrixXf>;
        }, v_);
    }

private:
    variant_type v_;
};
using AnyLinear = BasicAnyLinear<>;

// The members that visit every alternative, defined out of the class as templates never spelled by
// callers: instantiated only where called, and with MQ_COMPILED compiled once in the companion
// library (src/quantized_model*.cpp; core/config.hpp).
template <class Defer>
template <class>
BasicAnyLinear<Defer> BasicAnyLinear<Defer>::build(ConstMatrixView<float> weight, std::span<const float> bias,
                                                   const SiteQuant& q, const std::optional<RotationSpec>& rotation,
                                                   std::optional<QuantParams> static_params, bool fake) {
    std::optional<HadamardOnline> rot;
    if (rotation) {
        require(rotation->n == weight.cols, "AnyLinear: online rotation of size ", rotation->n,
                " does not match the layer's in_features ", weight.cols);
        rot = HadamardOnline::from_spec(*rotation);
    }
    if (!q.weight) {
        require(!q.act.quantized(), "AnyLinear: float weights with quantized activations are not in the run-time set");
        if (rot) return BasicAnyLinear(FloatLinear<HadamardOnline>(MatrixXf(as_eigen(weight)), bias, std::move(*rot)));
        return BasicAnyLinear(FloatLinear<NoRotation>(MatrixXf(as_eigen(weight)), bias));
    }
    return detail::visit_site_weight(*q.weight, [&]<class W>(std::type_identity<W>) {
        // Packed once, in the W8 layout of the arch the layer will run on (Linear's choice).
        return from_packed(pack_weights<W>(weight, w8_layout_for(runnable_arch(active_arch()))), bias, q,
                           std::move(rot), static_params, fake);
    });
}
MQ_EXTERN_TEMPLATE(AnyLinear AnyLinear::build<>(ConstMatrixView<float>, std::span<const float>, const SiteQuant&,
                                                const std::optional<RotationSpec>&, std::optional<QuantParams>, bool))

template <class Defer>
template <class Packed>
BasicAnyLinear<Defer> BasicAnyLinear<Defer>::from_packed(Packed packed, std::span<const float> bias, const SiteQuant& q,
                                                         std::optional<HadamardOnline> rot,
                                                         std::optional<QuantParams> static_params, bool fake) {
    require(q.weight.has_value() && q.act.quantized(), "AnyLinear: a packed weight needs quantized weights and activations");
    require(q.act.mode != ActMode::static_per_tensor || static_params.has_value(),
            "AnyLinear: static per-tensor activations need calibrated params");
    if (fake)
        return BasicAnyLinear(FakeQuantLinear(dequantize(packed), bias, q.act, static_params, std::move(rot)));
    return detail::visit_site_weight(*q.weight, [&]<class W>(std::type_identity<W>) {
        return detail::visit_site_act(q.act, [&]<class A>(std::type_identity<A>) -> BasicAnyLinear {
            if constexpr (!std::is_same_v<packed_weights_t<W>, Packed>) {
                fail("AnyLinear: packed weight type does not match the weight quantizer");
            } else {
                auto make = [&](auto l) {
                    if constexpr (std::same_as<typename A::granularity, per_tensor>) l.set_static_input_params(*static_params);
                    return BasicAnyLinear(std::move(l));
                };
                if (rot) return make(Linear<W, A, HadamardOnline>(std::move(packed), bias, std::move(*rot)));
                return make(Linear<W, A, NoRotation>(std::move(packed), bias));
            }
        });
    });
}
MQ_EXTERN_TEMPLATE(AnyLinear AnyLinear::from_packed<PackedW8>(PackedW8, std::span<const float>, const SiteQuant&,
                                                              std::optional<HadamardOnline>, std::optional<QuantParams>, bool))
MQ_EXTERN_TEMPLATE(AnyLinear AnyLinear::from_packed<PackedW4>(PackedW4, std::span<const float>, const SiteQuant&,
                                                              std::optional<HadamardOnline>, std::optional<QuantParams>, bool))

template <class Defer>
template <class>
void BasicAnyLinear<Defer>::forward(ConstMatrixView<float> x, MatrixView<float> y, workspace_type& ws) const {
    std::visit([&](const auto& l) {
        using L = std::decay_t<decltype(l)>;
        if constexpr (std::is_same_v<L, std::monostate>) fail("AnyLinear::forward: empty layer");
        else if constexpr (std::is_same_v<L, FakeQuantLinear>) l.forward(x, y, ws.fake);
        else if constexpr (std::is_same_v<typename L::workspace_type, LinearWorkspace<float>>) l.forward(x, y, ws.f);
        else if constexpr (std::is_same_v<typename L::workspace_type, LinearWorkspace<std::int16_t>>) l.forward(x, y, ws.w8);
        else l.forward(x, y, ws.w4);
    }, v_);
}
MQ_EXTERN_TEMPLATE(void AnyLinear::forward<>(ConstMatrixView<float>, MatrixView<float>, workspace_type&) const)

MQ_NAMESPACE_END
