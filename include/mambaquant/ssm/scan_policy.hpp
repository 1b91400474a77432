// Scan policies: the block picks the plain, smoothed (S4) or quantized scan at compile time.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/quantized_scan.hpp>
#include <mambaquant/kernels/selective_scan.hpp>
#include <mambaquant/quant/quantizer.hpp>
#include <mambaquant/ssm/cache.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>

MQ_NAMESPACE_BEGIN

// A scan policy says *which* scan a layer runs. `check(E, N)` validates the policy's own data
// against the layer (throws mq::error); `run(arch, args, cache)` runs the scan on a call whose
// shapes were validated, with args.state viewing cache.state.
// Open: any type with these members is a scan policy (README "Policies").
namespace detail {
template <class P>
concept scan_has_name = requires { { P::name } -> std::convertible_to<const char*>; };
template <class P>
concept scan_has_is_quantized = requires { { P::is_quantized } -> std::convertible_to<bool>; };
template <class P>
concept scan_has_check = requires(const P& p, std::size_t n) { p.check(n, n); };
template <class P>
concept scan_has_run = requires(const P& p, const SelectiveScanArgs<float>& a, ScanCache<float>& c) {
    p.run(default_arch{}, a, c);
};
} // namespace detail

template <class P>
concept ScanPolicy = detail::scan_has_name<P> && detail::scan_has_is_quantized<P> && detail::scan_has_check<P> &&
                     detail::scan_has_run<P>;

// One static_assert naming the ScanPolicy concept and the member P lacks.
template <class P>
consteval bool check_scan_policy() {
    if constexpr (!detail::scan_has_name<P>) {
        static_assert(detail::scan_has_name<P>, "ScanPolicy: missing member `static constexpr const char* name`");
        return false;
    } else if constexpr (!detail::scan_has_is_quantized<P>) {
        static_assert(detail::scan_has_is_quantized<P>, "ScanPolicy: missing member `static constexpr bool is_quantized`");
        return false;
    } else if constexpr (!detail::scan_has_check<P>) {
        static_assert(detail::scan_has_check<P>,
                      "ScanPolicy: missing member `void check(std::size_t d_inner, std::size_t d_state) const`");
        return false;
    } else if constexpr (!detail::scan_has_run<P>) {
        static_assert(detail::scan_has_run<P>, "ScanPolicy: missing member `template <class Arch, class State> void "
                                               "run(Arch, const SelectiveScanArgs<State>&, ScanCache<State>&) const`");
        return false;
    } else {
        return true;
    }
}

// state_t = exp(Δ·A)·state_{t−1} + Δ·B_t·x_t,  y_t = state_t·C_t + D·x_t (float throughout).
struct PlainScan {
    static constexpr const char* name = "plain";
    static constexpr bool is_quantized = false;

    void check(std::size_t, std::size_t) const noexcept {}
    template <class Arch, class State>
    void run(Arch arch, const SelectiveScanArgs<State>& a, ScanCache<State>& cache) const {
        require(cache.domain == StateDomain::plain,
                "PlainScan: the cached state is in the smoothed domain; convert it with ScanCache::plain_state");
        selective_scan(arch, a);
    }
};

namespace detail {
// Smoothing scales s [N] (S4) and their log(1/s), the first-step absorption term.
struct StateSmoothing {
    aligned_vector<float> scale;
    aligned_vector<float> log_inv_scale;

    StateSmoothing() = default;
    template <class = void>
    explicit StateSmoothing(std::span<const float> s, const char* who) {
        for (std::size_t n = 0; n < s.size(); ++n)
            require(std::isfinite(s[n]) && s[n] > 0.0f, who, ": smoothing scale s[", n,
                    "] must be finite and positive, got ", s[n]);
        scale.assign(s.begin(), s.end());
        log_inv_scale.resize(s.size());
        for (std::size_t n = 0; n < s.size(); ++n) log_inv_scale[n] = -std::log(s[n]);
    }
    bool enabled() const noexcept { return !scale.empty(); }
    void check(std::size_t state_size, const char* who) const {
        require(!enabled() || scale.size() == state_size, who, ": expected ", state_size,
                " smoothing scales (one per state index), got ", scale.size());
    }
    // The first-step term for this call: log(1/s) when a non-zero plain state enters the
    // smoothed recurrence (METHOD §4: log dA'_0 = Δ_0·A + log(1/s)), else none. A zero state
    // needs no absorption (0·anything = 0), a smoothed one has it already.
    template <class State>
    const float* first_step(const ScanCache<State>& cache) const noexcept {
        if (!enabled() || cache.domain == StateDomain::smoothed || cache.state_is_zero()) return nullptr;
        return log_inv_scale.data();
    }
    // B ← B·diag(1/s), C ← C·diag(s): for callers that did not fold s into x_proj's B/C rows.
    void apply(MatrixView<float> B, MatrixView<float> C) const {
        require(B.cols == scale.size() && C.cols == scale.size(), "smooth B/C: expected ", scale.size(),
                " columns, got B ", B.cols, " and C ", C.cols);
        for (std::size_t t = 0; t < B.rows; ++t)
            for (std::size_t n = 0; n < B.cols; ++n) B(t, n) /= scale[n];
        for (std::size_t t = 0; t < C.rows; ++t)
            for (std::size_t n = 0; n < C.cols; ++n) C(t, n) *= scale[n];
    }
};
} // namespace detail

// S4: B' = B·diag(1/s), C' = C·diag(s) (normally folded into x_proj: W_B ← diag(1/s) W_B,
// W_C ← diag(s) W_C), so the state runs as state/s and Σ_n (state_n/s_n)(C_n s_n) = y exactly
// in exact arithmetic. The scan takes B', C' as its B and C inputs. A plain non-zero incoming
// state is absorbed in the first step: log dA'_0 = Δ_0·A + log(1/s), one FMA per element on the
// first step only. The cache's state is left in the smoothed domain (ScanCache::plain_state
// undoes it).
struct SmoothedScan {
    static constexpr const char* name = "smoothed";
    static constexpr bool is_quantized = false;

    template <class = void>
    explicit SmoothedScan(std::span<const float> s) : smoothing_(s, "SmoothedScan") {
        require(!s.empty(), "SmoothedScan: needs one smoothing scale per state index, got none");
    }

    std::span<const float> scale() const noexcept { return smoothing_.scale; }
    void smooth_bc(MatrixView<float> B, MatrixView<float> C) const { smoothing_.apply(B, C); }
    void check(std::size_t, std::size_t state_size) const { smoothing_.check(state_size, "SmoothedScan"); }

    template <class Arch, class State>
    void run(Arch arch, SelectiveScanArgs<State> a, ScanCache<State>& cache) const {
        a.first_step_log_scale = smoothing_.first_step(cache);
        selective_scan(arch, a);
        cache.domain = StateDomain::smoothed;
    }

private:
    detail::StateSmoothing smoothing_;
};

// The scan with a quantized output matmul y_t = Q(state_t·H)·Q(C_t)ᵀ, both operands dynamic per
// token under ActQ (kernels/quantized_scan.hpp), with an optional N×N orthogonal rotation H of
// the state dimension (R4; C must then arrive as C·H) and optional S4 smoothing scales (as
// SmoothedScan; C arrives as C·diag(s)·H when both are used).
template <QuantizerPolicy ActQ>
struct QuantizedScan {
    static_assert(std::same_as<typename ActQ::granularity, per_token>,
                  "QuantizedScan: the state·C operands are quantized dynamically per token");
    static constexpr const char* name = "quantized";
    static constexpr bool is_quantized = true;
    using quantizer = ActQ;

    QuantizedScan() = default;
    // rotation: N×N orthogonal (checked to 1e-4: H·Hᵀ = I), or empty; smoothing: [N] or empty.
    explicit QuantizedScan(ConstMatrixView<float> rotation, std::span<const float> smoothing = {})
        : smoothing_(smoothing, "QuantizedScan") {
        if (rotation.data == nullptr || rotation.empty()) return;
        require(rotation.rows == rotation.cols, "QuantizedScan: rotation must be square, got [", rotation.rows,
                " x ", rotation.cols, "]");
        const std::size_t N = rotation.rows;
        rotation_.resize(N * N);
        for (std::size_t i = 0; i < N; ++i)
            for (std::size_t j = 0; j < N; ++j) {
                require(std::isfinite(rotation(i, j)), "QuantizedScan: rotation[", i, ", ", j, "] is not finite");
                rotation_[i * N + j] = rotation(i, j);
            }
        for (std::size_t i = 0; i < N; ++i)
            for (std::size_t j = 0; j < N; ++j) {
                double dot = 0.0;
                for (std::size_t k = 0; k < N; ++k) dot += double(rotation_[i * N + k]) * rotation_[j * N + k];
                require(std::fabs(dot - (i == j ? 1.0 : 0.0)) <= 1e-4, "QuantizedScan: rotation is not orthogonal: (H·Hᵀ)[",
                        i, ", ", j, "] = ", dot);
            }
        rotation_size_ = N;
    }

    bool rotated() const noexcept { return rotation_size_ != 0; }
    // H row-major [N·N] (empty: no rotation).
    std::span<const float> rotation() const noexcept { return {rotation_.data(), rotation_.size()}; }
    std::span<const float> scale() const noexcept { return smoothing_.scale; }
    void check(std::size_t, std::size_t state_size) const {
        require(!rotated() || rotation_size_ == state_size, "QuantizedScan: rotation is ", rotation_size_, " x ",
                rotation_size_, " but the state size is ", state_size);
        smoothing_.check(state_size, "QuantizedScan");
    }

    template <class Arch, class State>
    void run(Arch arch, SelectiveScanArgs<State> a, ScanCache<State>& cache) const {
        require(smoothing_.enabled() || cache.domain == StateDomain::plain,
                "QuantizedScan: the cached state is in the smoothed domain but this scan has no smoothing");
        a.first_step_log_scale = smoothing_.first_step(cache);
        const std::size_t need = quantized_scan_workspace_size(a.length(), a.channels(), a.state_size());
        if (cache.workspace.size() < need) cache.workspace.resize(need);
        QuantizedScanArgs q;
        q.rotation = rotated() ? rotation_.data() : nullptr;
        q.workspace = cache.workspace.data();
        q.workspace_size = cache.workspace.size();
        quantized_selective_scan<Arch, ActQ>(arch, a, q);
        if (smoothing_.enabled()) cache.domain = StateDomain::smoothed;
    }

private:
    aligned_vector<float> rotation_;
    std::size_t rotation_size_ = 0;
    detail::StateSmoothing smoothing_;
};

static_assert(ScanPolicy<PlainScan>);
static_assert(ScanPolicy<SmoothedScan>);
static_assert(ScanPolicy<QuantizedScan<A8PerToken>>);

MQ_NAMESPACE_END
