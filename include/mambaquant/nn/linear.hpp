// A linear layer y = x·Wᵀ + b whose weight/activation numerics and input rotation are compile-time policies.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/packed_weights.hpp>
#include <mambaquant/kernels/parallel.hpp>
#include <mambaquant/kernels/qgemm.hpp>
#include <mambaquant/kernels/quantized_activations.hpp>
#include <mambaquant/kernels/quantized_tensor.hpp>
#include <mambaquant/quant/quantizer.hpp>
#include <mambaquant/transform/rotation.hpp>

#include <Eigen/Core>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>

MQ_NAMESPACE_BEGIN

// Scratch memory of one forward pass; one per thread that calls forward() concurrently.
template <class Code>
struct LinearWorkspace {
    ActBuffer<Code> act;
    MatrixXf rotated;              // the unfused path: x·Q before quantization
    aligned_vector<float> scratch; // the fused path: rotated rows in flight (FusedQuantRotation)
};
template <>
struct LinearWorkspace<float> {
    MatrixXf rotated;
};

// Linear<W, A, R>: W and A are quantizer policies (or both FloatPolicy for the float layer), R a
// Rotation (transform/rotation.hpp: NoRotation, HadamardOnline): y = (x·Q)(W·Q)ᵀ + b = x·Wᵀ + b
// with Q folded into the weight once, so the quantizer sees the rotated, flatter activations. Quantized: weights packed once (W8: Quantizer<8, per_channel, symmetric>; W4:
// Quantizer<4, per_channel | per_group<32/64/128>, symmetric | asymmetric>), activations
// quantized per call (A: Quantizer<8, per_token | per_tensor, symmetric | asymmetric>; per-token
// activations behind a FusedQuantRotation such as a full HadamardOnline are rotated and quantized
// in one pass while each row is in L1 — the out_proj input of a MambaQuant block), integer
// GEMM/GEMV with the fused epilogue. Float: Eigen's GEMM on the (rotated) float weight.
//   using L = mq::Linear<mq::W4PerGroup<128>, mq::A8PerToken, mq::NoRotation>;
//   L layer(weight /*[out x in]*/, bias);  layer.forward(x /*[M x in]*/, y /*[M x out]*/);
// SIMD arch: picked once, at construction (arch(): mq::active_arch(), the CPU's best capped by
// MQ_ARCH or mq::set_arch), and the weights packed for it.
// Threading: output channels are split over a ThreadPool (default: default_thread_pool());
// set_thread_pool(nullptr) runs on the calling thread, for engines with their own pool.
template <class WeightPolicy, class ActPolicy, class InputRotation = NoRotation>
class Linear {
    // First: a policy that does not model its concept stops here, naming the concept and member.
    static_assert(check_weight_policy<WeightPolicy>() && check_act_policy<ActPolicy>() && check_rotation<InputRotation>());
    static_assert(WeightPolicy::is_float == ActPolicy::is_float,
                  "Linear: weights and activations are both quantized or both float (FloatPolicy)");
    static constexpr bool kFloat = WeightPolicy::is_float;
    static constexpr bool kPerTensor = [] {
        if constexpr (kFloat) return false;
        else return std::same_as<typename ActPolicy::granularity, per_tensor>;
    }();

    template <class W, bool F = kFloat>
    struct Types {
        using packed = MatrixXf;
        using code = float;
    };
    template <class W>
    struct Types<W, false> {
        using packed = packed_weights_t<W>;
        using code = act_code_t<packed>;
    };

public:
    using weight_policy = WeightPolicy;
    using act_policy = ActPolicy;
    using rotation = InputRotation;
    using weights_type = typename Types<WeightPolicy>::packed; // PackedW8, PackedW4 or MatrixXf
    using workspace_type = LinearWorkspace<typename Types<WeightPolicy>::code>;

    // From the float weight [out x in] (fused with the rotation, then quantized by WeightPolicy)
    // and an optional bias [out].
    explicit Linear(ConstMatrixView<float> weight, std::span<const float> bias = {}, InputRotation rotation = {})
        : rotation_(std::move(rotation)) {
        require(weight.rows > 0 && weight.cols > 0, "Linear: weight must be non-empty, got [", weight.rows, " x ",
                weight.cols, "]");
        MatrixXf w = as_eigen(weight);
        rotation_.fold_into_weight(w);
        if constexpr (kFloat)
            weights_ = std::move(w);
        else
            weights_ = pack_weights<WeightPolicy>(view(std::as_const(w)), w8_layout_for(arch_));
        set_bias(bias);
    }
    // From weights already packed (and already fused with the rotation), e.g. loaded from a file.
    // A W8 weight is brought to the layout of this layer's arch (w8_layout_for): a pairs-packed
    // weight would otherwise run the AVX2 kernel on a VNNI core (at prefill, ~3× slower).
    explicit Linear(weights_type weights, std::span<const float> bias = {}, InputRotation rotation = {})
        : rotation_(std::move(rotation)), weights_(std::move(weights)) {
        if constexpr (std::is_same_v<weights_type, PackedW8>) weights_ = with_layout(std::move(weights_), w8_layout_for(arch_));
        set_bias(bias);
    }

    std::size_t in_features() const noexcept {
        if constexpr (kFloat) return static_cast<std::size_t>(weights_.cols());
        else return weights_.k;
    }
    std::size_t out_features() const noexcept {
        if constexpr (kFloat) return static_cast<std::size_t>(weights_.rows());
        else return weights_.n;
    }
    const weights_type& weights() const noexcept { return weights_; }
    const aligned_vector<float>& bias() const noexcept { return bias_; }
    const InputRotation& input_rotation() const noexcept { return rotation_; }
    // The SIMD arch the integer GEMM runs on: mq::active_arch() when the layer was built (the
    // weights are packed for it), fixed for the layer's life.
    arch_id arch() const noexcept { return arch_; }
    void set_thread_pool(ThreadPool* pool) noexcept {
        pool_ = pool;
        default_pool_ = false;
    }
    // std::addressof: the built-in & would complete ThreadPool here, in every includer.
    ThreadPool* thread_pool() const noexcept { return default_pool_ ? std::addressof(default_thread_pool()) : pool_; }

    // Whether forward() rotates and quantizes the activations in one pass (per-token activations
    // and a rotation with a fused kernel for its whole row, e.g. a full HadamardOnline).
    bool fused_input_quantization() const noexcept {
        if constexpr (kFusable) return rotation_.fuses_quantization();
        else return false;
    }

    // Static per-tensor activations (ActPolicy per_tensor only): every call quantizes with the
    // calibrated (scale, zero) instead of the input's own range. Checked: finite scale > 0 and a
    // zero point in the code range (0 when symmetric).
    void set_static_input_params(const QuantParams& p)
        requires(kPerTensor)
    {
        detail::require_valid_params<ActPolicy>(std::span<const QuantParams>(&p, 1), "Linear::set_static_input_params",
                                                "input");
        static_ = p;
        has_static_ = true;
    }
    const QuantParams* static_input_params() const noexcept { return has_static_ ? &static_ : nullptr; }

    // Sizes a workspace for up to max_tokens rows (setup: allocates).
    void reserve(workspace_type& ws, std::size_t max_tokens) const {
        if constexpr (kFusable)
            if (fused_input_quantization()) {
                if (ws.scratch.size() < rotation_.scratch_size()) ws.scratch.assign(rotation_.scratch_size(), 0.0f);
                ws.act.reserve_for(max_tokens, weights_);
                return;
            }
        if constexpr (!InputRotation::is_identity)
            if (static_cast<std::size_t>(ws.rotated.rows()) < max_tokens)
                ws.rotated.resize(static_cast<Eigen::Index>(max_tokens), static_cast<Eigen::Index>(in_features()));
        if constexpr (!kFloat) ws.act.reserve_for(max_tokens, weights_);
    }

    // y[M x out] = R(x)[M x in] · Ŵᵀ + b with an explicit workspace (thread-safe per workspace).
    void forward(ConstMatrixView<float> x, MatrixView<float> y, workspace_type& ws) const {
        require_shape(x, x.rows, in_features(), "Linear::forward input x");
        require_shape(y, x.rows, out_features(), "Linear::forward output y");
        reserve(ws, x.rows);
        if constexpr (kFusable)
            if (fused_input_quantization()) {
                rotation_.template apply_quantize<ActPolicy>(x, ws.act, ws.scratch);
                multiply(ws, y);
                return;
            }
        ConstMatrixView<float> src = x;
        if constexpr (!InputRotation::is_identity) {
            MatrixView<float> r(ws.rotated.data(), x.rows, in_features());
            as_eigen(r) = as_eigen(x);
            rotation_.apply(r);
            src = r;
        }
        if constexpr (kFloat) {
            // Spelled dependent: the row-wise bias expression is built only in float layers.
            auto out = as_eigen(dependent_t<WeightPolicy, MatrixView<float>>(y));
            out.noalias() = as_eigen(src) * weights_.transpose();
            if (!bias_.empty())
                out.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(bias_.data(), static_cast<Eigen::Index>(bias_.size()));
        } else {
            if constexpr (kPerTensor)
                if (has_static_) {
                    quantize_activations_static<ActPolicy>(default_arch{}, src, static_, ws.act);
                    multiply(ws, y);
                    return;
                }
            quantize_activations<ActPolicy>(default_arch{}, src, ws.act);
            multiply(ws, y);
        }
    }
    // Same, with the layer's own workspace (not re-entrant: one caller at a time).
    void forward(ConstMatrixView<float> x, MatrixView<float> y) { forward(x, y, ws_); }

private:
    static constexpr bool kFusable = [] {
        if constexpr (kFloat || !FusedQuantRotation<InputRotation>) return false;
        else return std::same_as<typename ActPolicy::granularity, per_token>;
    }();

    // y = codes · Ŵᵀ with scales, zero points and bias in the GEMM's epilogue.
    void multiply(workspace_type& ws, MatrixView<float> y) const {
        const Epilogue<float> e{bias_.empty() ? nullptr : bias_.data(), {}};
        dispatch(arch_, [&](auto arch) { qgemm(arch, ws.act, weights_, e, y, thread_pool()); });
    }

    void set_bias(std::span<const float> bias) {
        require(bias.empty() || bias.size() == out_features(), "Linear: bias must have out_features = ", out_features(),
                " elements, got ", bias.size());
        bias_.assign(bias.begin(), bias.end());
    }

    arch_id arch_ = runnable_arch(active_arch()); // first: the constructors pack for it
    InputRotation rotation_;
    weights_type weights_;
    aligned_vector<float> bias_;
    // default_thread_pool() until set_thread_pool: resolved per call, so an engine that sets its own
    // pool (or nullptr) before the first forward never starts the library's threads.
    ThreadPool* pool_ = nullptr;
    bool default_pool_ = true;
    QuantParams static_{};
    bool has_static_ = false;
    workspace_type ws_;
};

// The float layer: the same template with float policies.
template <Rotation InputRotation = NoRotation>
using FloatLinear = Linear<FloatPolicy, FloatPolicy, InputRotation>;

MQ_NAMESPACE_END
