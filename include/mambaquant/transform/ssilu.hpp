// SiLU and the scaled S-SiLU gate of MambaQuant's smoothed out_proj input, scalar and SIMD forms.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/simd.hpp>

#include <xsimd/xsimd.hpp>

#include <cmath>
#include <cstddef>

MQ_NAMESPACE_BEGIN

// SiLU(z) = z·σ(z) = z / (1 + e^(−z))
struct SiLU {
    static constexpr const char* name = "silu";

    float operator()(float z) const noexcept { return z / (1.0f + std::exp(-z)); }
    template <class Arch>
    xsimd::batch<float, Arch> operator()(const xsimd::batch<float, Arch>& z) const noexcept {
        return z / (xsimd::batch<float, Arch>(1.0f) + xsimd::exp(-z));
    }
};

// S-SiLU_s(z') = z'·σ(s⊙z') = z' / (1 + e^(−s·z')).
// Why: smoothing the out_proj input a = y ⊙ SiLU(z) by 1/s cannot be folded into the non-linear
// gate directly, but with the gate rows of in_proj scaled by 1/s (z' = z/s),
//   S-SiLU_s(z') = (z/s)·σ(z) = SiLU(z)/s,
// so a' = y ⊙ S-SiLU_s(z') = a/s exactly and out_proj absorbs s (W_out ← W_out·diag(s)).
// With s = 1 it is SiLU bit for bit (s·z' = z' exactly).
struct SSiLU {
    static constexpr const char* name = "ssilu";

    float operator()(float z, float s) const noexcept { return z / (1.0f + std::exp(-(s * z))); }
    template <class Arch>
    xsimd::batch<float, Arch> operator()(const xsimd::batch<float, Arch>& z,
                                         const xsimd::batch<float, Arch>& s) const noexcept {
        return z / (xsimd::batch<float, Arch>(1.0f) + xsimd::exp(-(s * z)));
    }
};

// out_i = y_i · S-SiLU_{s_i}(z_i): the gated out_proj input of one token row (n = E).
// The reference twin uses std::exp; the SIMD form uses xsimd::exp, so the two agree to a few ulps
// rather than bit for bit (tests bound the difference).
template <class = void>
void ssilu_gate_ref(const float* MQ_RESTRICT y, const float* MQ_RESTRICT z, const float* MQ_RESTRICT s,
                    float* MQ_RESTRICT out, std::size_t n) noexcept {
    const SSiLU act;
    for (std::size_t i = 0; i < n; ++i) out[i] = y[i] * act(z[i], s[i]);
}

template <class Arch>
void ssilu_gate(Arch, const float* MQ_RESTRICT y, const float* MQ_RESTRICT z, const float* MQ_RESTRICT s,
                float* MQ_RESTRICT out, std::size_t n) noexcept {
    using batch = xsimd::batch<float, Arch>;
    const SSiLU act;
    const std::size_t vec_end = simd_floor<Arch>(n);
    std::size_t i = 0;
    for (; i < vec_end; i += batch::size) {
        const batch r = batch::load_unaligned(y + i) * act(batch::load_unaligned(z + i), batch::load_unaligned(s + i));
        r.store_unaligned(out + i);
    }
    ssilu_gate_ref(y + i, z + i, s + i, out + i, n - i);
}

MQ_NAMESPACE_END
