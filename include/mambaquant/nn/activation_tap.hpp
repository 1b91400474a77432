// ActivationTap: an observer the model forward calls with the input of every quantization site.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/tensor.hpp>

#include <cstddef>
#include <cstdint>

MQ_NAMESPACE_BEGIN

// What a tap sees, per layer (rows = the tokens of the call, in order):
//   in_proj_input   hn = RMSNorm(h)                         [L, D]
//   conv_input      x, the first half of in_proj's output   [L, E]
//   x_proj_input    x = SiLU(conv1d(x) + b)                 [L, E]  (also the scan's x)
//   dt_proj_input   dt, x_proj's first R columns            [L, R]  (after the folded dt shift)
//   scan_delta      dt·W_dtᵀ (raw: the scan adds b_dt and applies softplus)   [L, E]
//   scan_B, scan_C  x_proj's B and C columns                [L, N]  (as the scan takes them:
//                   smoothed / rotated when the transforms folded s or R4 into x_proj)
//   scan_z          the gate input z                        [L, E]
//   out_proj_input  a = y ⊙ gate(z), before any online rotation   [L, E]
//   layer_output    h after the residual add                [L, D]
// and once per call, with layer = n_layer:
//   lm_head_input   RMSNorm_f(h) for the rows that get logits   [rows, D]
// The scan state itself is not materialised per token; calibration recomputes it from
// x, Δ = softplus(scan_delta + b_dt), B (and A) when it needs the state's statistics.
enum class TapPoint : std::uint8_t {
    in_proj_input,
    conv_input,
    x_proj_input,
    dt_proj_input,
    scan_delta,
    scan_B,
    scan_C,
    scan_z,
    out_proj_input,
    layer_output,
    lm_head_input,
};
inline constexpr std::size_t kTapPointCount = 11;

template <class = void>
const char* tap_point_name(TapPoint p) noexcept {
    switch (p) {
    case TapPoint::in_proj_input: return "in_proj_input";
    case TapPoint::conv_input: return "conv_input";
    case TapPoint::x_proj_input: return "x_proj_input";
    case TapPoint::dt_proj_input: return "dt_proj_input";
    case TapPoint::scan_delta: return "scan_delta";
    case TapPoint::scan_B: return "scan_B";
    case TapPoint::scan_C: return "scan_C";
    case TapPoint::scan_z: return "scan_z";
    case TapPoint::out_proj_input: return "out_proj_input";
    case TapPoint::layer_output: return "layer_output";
    case TapPoint::lm_head_input: return "lm_head_input";
    }
    return "unknown";
}

// Subclass and pass a pointer to prefill(); nullptr costs one branch per site per layer. The
// views are valid only during the call (copy what you keep). Called on the prefill's thread.
struct ActivationTap {
    virtual ~ActivationTap() = default;
    virtual void on_activation(std::size_t layer, TapPoint point, ConstMatrixView<float> value) = 0;
};

namespace detail {
template <class = void>
void tap(ActivationTap* t, std::size_t layer, TapPoint p, ConstMatrixView<float> v) {
    if (t) t->on_activation(layer, p, v);
}
} // namespace detail

MQ_NAMESPACE_END
