// The accuracy table's rows: bits per byte vs float, model size and speed; CSV output and a progress bar.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/eval/bits_per_byte.hpp>
#include <mambaquant/io/atomic_file.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

MQ_NAMESPACE_BEGIN

struct AccuracyRow {
    std::string model, method, bits;
    double bpb = 0.0;
    double delta_pct = 0.0;     // (bpb − bpb_float) / bpb_float · 100
    double size_mib = 0.0;      // bytes the model holds for inference / 2^20
    double prefill_tok_s = 0.0; // tokens/s of the evaluation's prefill (all threads)
    double decode_tok_s = 0.0;  // tokens/s of single-sequence decode
};

inline constexpr const char* kAccuracyCsvHeader = "model,method,bits,bpb,delta_pct,size_mib,prefill_tok_s,decode_tok_s";

// Writes rows to `path` through a temporary file renamed into place.
template <class Tag = void>
void write_accuracy_csv(const dependent_t<Tag, std::filesystem::path>& path,
                        const dependent_t<Tag, std::vector<AccuracyRow>>& rows) {
    write_atomically(path, [&](std::ostream& f) {
        f << kAccuracyCsvHeader << '\n' << std::setprecision(6);
        for (const auto& r : rows)
            f << r.model << ',' << r.method << ',' << r.bits << ',' << r.bpb << ',' << r.delta_pct << ',' << r.size_mib << ','
              << r.prefill_tok_s << ',' << r.decode_tok_s << '\n';
    });
}

template <class Tag = void>
void print_accuracy_header(dependent_t<Tag, std::ostream>& out) {
    out << std::left << std::setw(24) << "model" << std::setw(19) << "method" << std::setw(6) << "bits" << std::right
        << std::setw(9) << "bpb" << std::setw(9) << "delta%" << std::setw(9) << "MiB" << std::setw(11) << "prefill/s"
        << std::setw(10) << "decode/s" << '\n';
}
template <class Tag = void>
void print_accuracy_row(dependent_t<Tag, std::ostream>& out, const dependent_t<Tag, AccuracyRow>& r) {
    out << std::left << std::setw(24) << r.model << std::setw(19) << r.method << std::setw(6) << r.bits << std::right
        << std::fixed << std::setprecision(4) << std::setw(9) << r.bpb << std::setprecision(2) << std::setw(9)
        << r.delta_pct << std::setprecision(3) << std::setw(9) << r.size_mib << std::setprecision(0) << std::setw(11)
        << r.prefill_tok_s << std::setw(10) << r.decode_tok_s << '\n'
        << std::defaultfloat << std::setprecision(6);
}

// A one-line progress bar on stderr: "  what [#######.............]  7/20".
template <class = void>
void progress_bar(std::string_view what, std::size_t done, std::size_t total) {
    constexpr std::size_t kWidth = 24;
    const std::size_t filled = total ? done * kWidth / total : kWidth;
    std::string bar(filled, '#');
    bar.append(kWidth - filled, '.');
    std::fprintf(stderr, "\r  %-26.*s [%s] %zu/%zu%s", static_cast<int>(what.size()), what.data(), bar.c_str(), done, total,
                 done == total ? "\n" : "");
    std::fflush(stderr);
}

// Single-sequence decode speed: `prompt` prefilled, then `steps` greedy-free decode steps fed
// with the prompt's own tokens (the work per step does not depend on which token).
template <class Model>
double decode_tokens_per_second(const Model& model, std::span<const std::uint32_t> prompt, std::size_t steps) {
    require(prompt.size() > steps, "decode_tokens_per_second: need more prompt tokens than steps");
    auto state = model.make_state();
    std::vector<float> logits(static_cast<std::size_t>(model.config().padded_vocab));
    model.decode(prompt[0], state, logits); // warm
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t i = 1; i <= steps; ++i) model.decode(prompt[i], state, logits);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return static_cast<double>(steps) / s;
}

MQ_NAMESPACE_END
