// Per-layer decode caches: the conv window and the scan state, carried from prefill to decode.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>

#include <algorithm>
#include <cstddef>
#include <span>

MQ_NAMESPACE_BEGIN

// The domain the scan state is stored in. The smoothed scan (S4) carries state/s; a state
// handed over from a plain scan (or set by the user) is plain, and the smoothed scan absorbs
// the 1/s into its first step (METHOD §4) before carrying it on in the smoothed domain.
enum class StateDomain { plain, smoothed };

// The scan state [E, N] of one layer (State = float by default, METHOD §1 [choice]) and the
// scratch the quantized scan needs; everything is sized once by the constructor or resize(),
// then reused by every call.
template <class State = float>
struct ScanCache {
    Matrix<State> state;                 // [E, N]
    StateDomain domain = StateDomain::plain;
    aligned_vector<float> workspace;     // scratch of the quantized scan, grown on demand

    ScanCache() = default;
    ScanCache(std::size_t channels, std::size_t state_size) { resize(channels, state_size); }

    void resize(std::size_t channels, std::size_t state_size) {
        require(channels > 0 && state_size > 0, "ScanCache: channels and state size must be positive, got [",
                channels, " x ", state_size, "]");
        state.resize(static_cast<Eigen::Index>(channels), static_cast<Eigen::Index>(state_size));
        reset();
    }
    // A fresh sequence: state_{-1} = 0.
    void reset() noexcept {
        state.setZero();
        domain = StateDomain::plain;
    }
    std::size_t channels() const noexcept { return static_cast<std::size_t>(state.rows()); }
    std::size_t state_size() const noexcept { return static_cast<std::size_t>(state.cols()); }
    bool state_is_zero() const noexcept {
        for (const State& v : state.reshaped())
            if (v != State(0)) return false;
        return true;
    }
    // The state in the plain domain: state = state_smoothed · diag(s) (s = the smoothing scales).
    Matrix<State> plain_state(std::span<const float> s) const {
        if (domain == StateDomain::plain) return state;
        require(s.size() == state_size(), "ScanCache::plain_state: expected ", state_size(),
                " smoothing scales, got ", s.size());
        Matrix<State> out = state;
        for (Eigen::Index d = 0; d < out.rows(); ++d)
            for (Eigen::Index n = 0; n < out.cols(); ++n) out(d, n) *= static_cast<State>(s[static_cast<std::size_t>(n)]);
        return out;
    }
};

// The causal conv's history of one layer: the last K−1 inputs, oldest first, [K−1, E].
struct ConvCache {
    MatrixXf window;

    ConvCache() = default;
    ConvCache(std::size_t channels, std::size_t taps) { resize(channels, taps); }

    void resize(std::size_t channels, std::size_t taps) {
        require(channels > 0 && taps >= 1, "ConvCache: channels must be positive and taps >= 1, got E = ",
                channels, ", K = ", taps);
        window.resize(static_cast<Eigen::Index>(taps - 1), static_cast<Eigen::Index>(channels));
        reset();
    }
    // std::fill, not setZero: a non-template member's Eigen expression is built in every includer.
    void reset() noexcept { std::fill(window.data(), window.data() + window.size(), 0.0f); }
    std::size_t channels() const noexcept { return static_cast<std::size_t>(window.cols()); }
    std::size_t taps() const noexcept { return static_cast<std::size_t>(window.rows()) + 1; }
};

// Both caches of one Mamba layer, as the block keeps them for decoding.
template <class State = float>
struct LayerCache {
    ConvCache conv;
    ScanCache<State> scan;

    LayerCache() = default;
    LayerCache(std::size_t channels, std::size_t state_size, std::size_t taps)
        : conv(channels, taps), scan(channels, state_size) {}
    void reset() noexcept {
        conv.reset();
        scan.reset();
    }
};

MQ_NAMESPACE_END
