// The selective scan of a Mamba layer as its block calls it: validated prefill and decode step.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/finite.hpp>
#include <mambaquant/kernels/selective_scan.hpp>
#include <mambaquant/kernels/softplus.hpp>
#include <mambaquant/ssm/cache.hpp>
#include <mambaquant/ssm/scan_policy.hpp>

#include <cmath>
#include <cstddef>
#include <span>

MQ_NAMESPACE_BEGIN

// The SSM constants of one layer: A = −exp(A_log) [E, N] (precomputed once), the skip D [E]
// and the dt bias b_dt [E] (each may be empty: no skip, no bias), and the S-SiLU gate scale g [E]
// (empty: the plain SiLU gate; set_gate_scale checks it).
struct ScanWeights {
    MatrixXf A;
    aligned_vector<float> D;
    aligned_vector<float> dt_bias;
    aligned_vector<float> gate_scale;

    // g [E], finite and > 0 (S-SiLU: gate z·σ(g⊙z), fused into the scan's epilogue); empty: SiLU.
    template <class = void>
    void set_gate_scale(std::span<const float> g) {
        require(g.empty() || g.size() == channels(), "ScanWeights: gate_scale: expected ", channels(), " values, got ",
                g.size());
        for (std::size_t d = 0; d < g.size(); ++d)
            require(std::isfinite(g[d]) && g[d] > 0.0f, "ScanWeights: gate_scale[", d, "] must be finite and > 0, got ", g[d]);
        gate_scale.assign(g.begin(), g.end());
    }

    std::size_t channels() const noexcept { return static_cast<std::size_t>(A.rows()); }
    std::size_t state_size() const noexcept { return static_cast<std::size_t>(A.cols()); }

    // From the checkpoint's A_log (A = −exp(A_log)).
    template <class Tag = void>
    static ScanWeights from_A_log(dependent_t<Tag, ConstMatrixView<float>> A_log, std::span<const float> D = {},
                                  std::span<const float> dt_bias = {}) {
        dependent_t<Tag, ScanWeights> w = from_A<Tag>(A_log, D, dt_bias, "A_log");
        for (auto& v : w.A.reshaped()) v = -std::exp(v);
        return w;
    }
    // From A itself (already −exp(A_log)).
    template <class Tag = void>
    static ScanWeights from_A(dependent_t<Tag, ConstMatrixView<float>> A, std::span<const float> D = {},
                              std::span<const float> dt_bias = {}, const char* a_name = "A") {
        require(A.rows > 0 && A.cols > 0, "ScanWeights: ", a_name, " must be non-empty, got [", A.rows, " x ",
                A.cols, "]");
        const std::size_t E = A.rows;
        require(D.empty() || D.size() == E, "ScanWeights: D: expected ", E, " values, got ", D.size());
        require(dt_bias.empty() || dt_bias.size() == E, "ScanWeights: dt_bias: expected ", E, " values, got ",
                dt_bias.size());
        ScanWeights w;
        w.A = as_eigen(A);
        for (std::size_t d = 0; d < E; ++d)
            for (std::size_t n = 0; n < A.cols; ++n)
                require(std::isfinite(A(d, n)), "ScanWeights: ", a_name, "[", d, ", ", n, "] is not finite");
        for (std::size_t d = 0; d < D.size(); ++d) require(std::isfinite(D[d]), "ScanWeights: D[", d, "] is not finite");
        for (std::size_t d = 0; d < dt_bias.size(); ++d)
            require(std::isfinite(dt_bias[d]), "ScanWeights: dt_bias[", d, "] is not finite");
        w.D.assign(D.begin(), D.end());
        w.dt_bias.assign(dt_bias.begin(), dt_bias.end());
        return w;
    }
};

// One call's activations. delta is Δ itself, or with delta_softplus the raw projection
// dt·W_dtᵀ, to which the scan adds b_dt and applies softplus on the fly (as mamba's
// selective_scan_fn with delta_bias and delta_softplus=True). z empty: no gate.
// x, delta, z: [L, E]; B, C: [L, N] (the x_proj output's column blocks may be passed directly).
struct ScanInputs {
    ConstMatrixView<float> x;
    ConstMatrixView<float> delta;
    ConstMatrixView<float> B;
    ConstMatrixView<float> C;
    ConstMatrixView<float> z;
    bool delta_softplus = false;
};

namespace detail {
// Finite (and non-negative) or an error naming the first bad element; the fast check first.
template <class Arch>
void require_finite(Arch arch, ConstMatrixView<float> v, const char* name, bool nonnegative = false) {
    if (all_finite(arch, v, nonnegative)) return;
    for (std::size_t r = 0; r < v.rows; ++r)
        for (std::size_t c = 0; c < v.cols; ++c) {
            require(std::isfinite(v(r, c)), "selective_scan: ", name, "[", r, ", ", c, "] is not finite (",
                    v(r, c), ")");
            require(!nonnegative || v(r, c) >= 0.0f, "selective_scan: ", name, "[", r, ", ", c, "] = ", v(r, c),
                    " is negative (pass the raw projection with delta_softplus = true)");
        }
}
template <class = void>
void require_view(ConstMatrixView<float> v, std::size_t rows, std::size_t cols, const char* name) {
    require(v.data != nullptr || v.size() == 0, "selective_scan: ", name, " has no data");
    require(v.rows == rows && v.cols == cols, "selective_scan: ", name, ": expected shape [", rows, " x ", cols,
            "], got [", v.rows, " x ", v.cols, "]");
    require(v.stride >= v.cols, "selective_scan: ", name, ": row stride ", v.stride, " is below the row length ",
            v.cols);
}

template <class Arch, class P, class State>
SelectiveScanArgs<State> checked_scan_args(Arch arch, const P& policy, const ScanWeights& w, const ScanInputs& in,
                                           ScanCache<State>& cache, MatrixView<float> y) {
    const std::size_t E = w.channels(), N = w.state_size(), L = in.x.rows;
    require(E > 0 && N > 0, "selective_scan: ScanWeights are empty");
    require(L > 0, "selective_scan: the sequence is empty (L = 0)");
    require_view(in.x, L, E, "x");
    require_view(in.delta, L, E, "delta");
    require_view(in.B, L, N, "B");
    require_view(in.C, L, N, "C");
    if (in.z.data != nullptr) require_view(in.z, L, E, "z");
    require_view(y, L, E, "y");
    require(cache.channels() == E && cache.state_size() == N, "selective_scan: cache state: expected [", E, " x ",
            N, "], got [", cache.channels(), " x ", cache.state_size(), "]");
    require_finite(arch, in.x, "x");
    require_finite(arch, in.delta, "delta", !in.delta_softplus); // Δ itself must be ≥ 0
    require_finite(arch, in.B, "B");
    require_finite(arch, in.C, "C");
    if (in.z.data != nullptr) require_finite(arch, in.z, "z");
    policy.check(E, N);
    SelectiveScanArgs<State> a;
    a.x = in.x;
    a.delta = in.delta;
    a.delta_softplus = in.delta_softplus;
    a.delta_bias = in.delta_softplus && !w.dt_bias.empty() ? w.dt_bias.data() : nullptr;
    a.A = view(w.A);
    a.B = in.B;
    a.C = in.C;
    a.D = w.D.empty() ? nullptr : w.D.data();
    a.z = in.z;
    a.gate_scale = in.z.data != nullptr && !w.gate_scale.empty() ? w.gate_scale.data() : nullptr;
    a.state = view(cache.state);
    a.y = y;
    return a;
}
} // namespace detail

// Prefill: runs the policy's scan over L tokens from cache.state and leaves state_{L−1} there.
// Throws mq::error on mismatched shapes, L = 0, non-finite inputs or a negative Δ.
template <ScanPolicy P, class State, class Arch = default_arch>
void selective_scan(const P& policy, const ScanWeights& w, const ScanInputs& in, ScanCache<State>& cache,
                    MatrixView<float> y, Arch arch = {}) {
    const SelectiveScanArgs<State> a = detail::checked_scan_args(arch, policy, w, in, cache, y);
    policy.run(arch, a, cache);
}

// One decode token: the inputs are rows (x, delta, z [E]; B, C [N]); z may be empty.
struct ScanStepInputs {
    std::span<const float> x;
    std::span<const float> delta;
    std::span<const float> B;
    std::span<const float> C;
    std::span<const float> z;
    bool delta_softplus = false;
};

template <ScanPolicy P, class State, class Arch = default_arch>
void selective_scan_step(const P& policy, const ScanWeights& w, const ScanStepInputs& in, ScanCache<State>& cache,
                         std::span<float> y, Arch arch = {}) {
    ScanInputs seq;
    seq.x = as_row(in.x);
    seq.delta = as_row(in.delta);
    seq.B = as_row(in.B);
    seq.C = as_row(in.C);
    if (!in.z.empty()) seq.z = as_row(in.z);
    seq.delta_softplus = in.delta_softplus;
    selective_scan(policy, w, seq, cache, as_row(y), arch);
}

// Δ = softplus(dt·W_dtᵀ + b_dt) from the low-rank dt [L, R], for callers that want Δ itself
// (the scan can instead take dt·W_dtᵀ with delta_softplus). W_dt [E, R], b_dt [E] or empty.
template <class Arch = default_arch>
void compute_delta(dependent_t<Arch, ConstMatrixView<float>> dt, ConstMatrixView<float> W_dt, std::span<const float> b_dt,
                   MatrixView<float> delta, Arch arch = {}) {
    const std::size_t L = dt.rows, R = dt.cols, E = W_dt.rows;
    require(L > 0, "compute_delta: dt is empty (L = 0)");
    require(W_dt.cols == R, "compute_delta: W_dt: expected ", R, " columns (dt rank), got ", W_dt.cols);
    require(b_dt.empty() || b_dt.size() == E, "compute_delta: b_dt: expected ", E, " values, got ", b_dt.size());
    require(delta.rows == L && delta.cols == E, "compute_delta: delta: expected shape [", L, " x ", E, "], got [",
            delta.rows, " x ", delta.cols, "]");
    as_eigen(delta).noalias() = as_eigen(dt) * as_eigen(W_dt).transpose();
    for (std::size_t t = 0; t < L; ++t)
        softplus(arch, delta.row_ptr(t), b_dt.empty() ? nullptr : b_dt.data(), delta.row_ptr(t), E);
}

MQ_NAMESPACE_END
