// Quantize a realistic Mamba activation (and a weight) with every quantizer and print the error
// table: SQNR = 10·log10(Σx² / Σ(x − x̂)²) in dB, and max |x − x̂|.
//
// The activation is the in_proj input of mamba-130m (after RMSNorm): synthetic Gaussian values,
// channel j scaled by the real per-channel magnitude profile of the chosen layer
// (data/mamba130m_in_proj_input_channel_stats.csv in the repository, from the MambaQuant authors'
// code), which carries the model's channel outliers. Without the file a heavy-tailed synthetic
// profile is used. Usage: quantize_tensor [layer 0..23] [profile.csv] (default 12, the repository's).
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/calib/observer.hpp>
#include <mambaquant/kernels/quantized_tensor.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#ifndef MQ_SOURCE_DIR
#define MQ_SOURCE_DIR "."
#endif

namespace {

constexpr std::size_t kChannels = 768; // d_model of mamba-130m

// Row `layer` of the channel-statistics CSV, or an empty vector when unavailable.
std::vector<float> load_profile(const std::string& path, int layer) {
    std::ifstream in(path);
    std::string line;
    for (int i = 0; in && std::getline(in, line); ++i) {
        if (i != layer) continue;
        std::vector<float> v;
        std::stringstream ss(line);
        for (std::string cell; std::getline(ss, cell, ',');) v.push_back(std::strtof(cell.c_str(), nullptr));
        if (v.size() == kChannels) return v;
        return {};
    }
    return {};
}

std::vector<float> synthetic_profile(mq::Rng& rng) {
    std::vector<float> v(kChannels);
    for (auto& s : v) {
        s = static_cast<float>(0.5 + 0.1 * std::fabs(rng.normal()));
        if (rng.uniform() < 0.015) s *= static_cast<float>(3.0 + 4.0 * rng.uniform()); // outlier channels
    }
    return v;
}

// x[t, j] = profile[j] · token_scale[t] · z, z ~ N(0, 1), token_scale ~ lognormal(0, 0.3).
mq::MatrixXf activations(const std::vector<float>& profile, std::size_t tokens, mq::Rng& rng) {
    mq::MatrixXf x(static_cast<Eigen::Index>(tokens), static_cast<Eigen::Index>(kChannels));
    for (Eigen::Index t = 0; t < x.rows(); ++t) {
        const float ts = static_cast<float>(std::exp(0.3 * rng.normal()));
        for (Eigen::Index j = 0; j < x.cols(); ++j)
            x(t, j) = profile[static_cast<std::size_t>(j)] * ts * static_cast<float>(rng.normal());
    }
    return x;
}

// A weight [out × in] like in_proj's: N(0, 0.02²) with per-row scales (lognormal(0, 0.5)).
mq::MatrixXf weight(std::size_t out, std::size_t in, mq::Rng& rng) {
    mq::MatrixXf w(static_cast<Eigen::Index>(out), static_cast<Eigen::Index>(in));
    for (Eigen::Index r = 0; r < w.rows(); ++r) {
        const double s = 0.02 * std::exp(0.5 * rng.normal());
        for (Eigen::Index c = 0; c < w.cols(); ++c) w(r, c) = static_cast<float>(s * rng.normal());
    }
    return w;
}

struct Errors {
    double sqnr_db;
    double max_abs;
};

Errors errors(const mq::MatrixXf& x, const mq::MatrixXf& xh) {
    const double signal = x.cast<double>().squaredNorm();
    const double noise = (x - xh).cast<double>().squaredNorm();
    return {noise > 0.0 ? 10.0 * std::log10(signal / noise) : INFINITY, (x - xh).cwiseAbs().maxCoeff()};
}

const char* granularity_name(mq::GranularityKind g) {
    switch (g) {
    case mq::GranularityKind::per_tensor: return "per-tensor";
    case mq::GranularityKind::per_channel: return "per-channel";
    case mq::GranularityKind::per_token: return "per-token";
    case mq::GranularityKind::per_group: return "per-group128";
    }
    return "?";
}

void row(const char* tensor, int bits, const char* gran, bool sym, const char* range, Errors e) {
    std::printf("| %-10s | %4d | %-12s | %-4s | %-22s | %8.2f | %10.5f |\n", tensor, bits, gran, sym ? "sym" : "asym", range,
                e.sqnr_db, e.max_abs);
}

// Dynamic quantization with the quantizer a run-time spec names (recipes choose bits at run time).
Errors dynamic_errors(const mq::MatrixXf& x, const mq::QuantSpec& spec) {
    return mq::visit_quantizer(spec, [&]<class Q>(std::type_identity<Q>) {
        return errors(x, mq::quantize_tensor<Q>(mq::view(x)).dequantize());
    });
}

// Static per-tensor quantization with params calibrated by `obs` on other tokens.
template <int Bits, class S, class Obs>
Errors static_errors(const mq::MatrixXf& eval, const Obs& obs) {
    using Q = mq::Quantizer<Bits, mq::per_tensor, S>;
    const mq::QuantParams p = obs.template params<Q>();
    return errors(eval, mq::quantize_tensor<Q>(mq::view(eval), std::span<const mq::QuantParams>(&p, 1)).dequantize());
}

bool parse_layer(const char* text, int& layer) {
    const std::string_view s(text);
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), layer);
    return !s.empty() && ec == std::errc() && end == s.data() + s.size() && layer >= 0 && layer < 24;
}

} // namespace

int main(int argc, char** argv) {
    const auto start = std::chrono::steady_clock::now();
    // LAYER: a whole number 0..23 (mamba-130m's layers); atoi would read "-1" or "x" silently.
    int layer = 12;
    if (argc > 2 || (argc == 2 && !parse_layer(argv[1], layer))) {
        std::fprintf(stderr, "usage: %s [LAYER=12]   (LAYER: 0 to 23, got \"%s\")\n", argv[0], argc > 1 ? argv[1] : "");
        return 2;
    }
    mq::Rng rng(2025);
    const std::string path =
        argc > 2 ? std::string(argv[2]) : std::string(MQ_SOURCE_DIR) + "/data/mamba130m_in_proj_input_channel_stats.csv";
    std::vector<float> profile = load_profile(path, layer);
    if (profile.empty()) {
        std::printf("channel profile: synthetic heavy-tailed (%s not found or layer %d absent)\n", path.c_str(), layer);
        profile = synthetic_profile(rng);
    } else {
        const float mx = *std::max_element(profile.begin(), profile.end());
        std::vector<float> sorted = profile;
        std::nth_element(sorted.begin(), sorted.begin() + kChannels / 2, sorted.end());
        std::printf("channel profile: mamba-130m layer %d in_proj input (max/median channel = %.1f)\n", layer,
                    double(mx / sorted[kChannels / 2]));
    }

    const std::size_t tokens = 2048;
    const mq::MatrixXf calib = activations(profile, tokens, rng);
    const mq::MatrixXf act = activations(profile, tokens, rng);
    const mq::MatrixXf w = weight(1536, kChannels, rng);
    std::printf("activation [%zu x %zu] (calibration: another %zu tokens), weight [1536 x %zu]\n\n", tokens, kChannels,
                tokens, kChannels);

    std::printf("| %-10s | %4s | %-12s | %-4s | %-22s | %8s | %10s |\n", "tensor", "bits", "granularity", "sym", "range",
                "SQNR dB", "max |err|");
    std::printf("|------------|------|--------------|------|------------------------|----------|------------|\n");
    for (int bits : {8, 4}) {
        for (bool sym : {true, false}) {
            for (auto g : {mq::GranularityKind::per_tensor, mq::GranularityKind::per_token, mq::GranularityKind::per_group}) {
                mq::QuantSpec spec;
                spec.bits = bits, spec.granularity = g, spec.symmetric = sym, spec.group = 128;
                row("activation", bits, granularity_name(g), sym, "dynamic min/max", dynamic_errors(act, spec));
            }
        }
    }
    // Static per-tensor activation quantization, calibrated on separate tokens.
    mq::MinMaxObserver minmax;
    mq::PercentileObserver percentile; // 0.999999 of |x|
    mq::PercentileObserver percentile9995(0.9995);
    mq::MseObserver mse;
    minmax.observe(mq::view(calib));
    percentile.observe(mq::view(calib));
    percentile9995.observe(mq::view(calib));
    mse.observe(mq::view(calib));
    auto statics = [&]<int Bits, class S>() {
        const bool sym = S::is_symmetric;
        row("activation", Bits, "per-tensor", sym, "static min/max", static_errors<Bits, S>(act, minmax));
        row("activation", Bits, "per-tensor", sym, "static pct 0.999999", static_errors<Bits, S>(act, percentile));
        row("activation", Bits, "per-tensor", sym, "static pct 0.9995", static_errors<Bits, S>(act, percentile9995));
        row("activation", Bits, "per-tensor", sym, "static MSE", static_errors<Bits, S>(act, mse));
    };
    statics.operator()<8, mq::symmetric>();
    statics.operator()<8, mq::asymmetric>();
    statics.operator()<4, mq::symmetric>();
    statics.operator()<4, mq::asymmetric>();
    for (int bits : {8, 4}) {
        for (bool sym : {true, false}) {
            for (auto g : {mq::GranularityKind::per_tensor, mq::GranularityKind::per_channel, mq::GranularityKind::per_group}) {
                mq::QuantSpec spec;
                spec.bits = bits, spec.granularity = g, spec.symmetric = sym, spec.group = 128;
                row("weight", bits, granularity_name(g), sym, "min/max", dynamic_errors(w, spec));
            }
        }
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("\nSQNR = 10·log10(Σx²/Σ(x−x̂)²); x̂ = (q − zero)·scale, q = clamp(round_half_even(x/scale) + zero).\n");
    std::printf("done in %.2f s\n", secs);
}
