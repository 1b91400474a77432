// Bits per byte and perplexity of a model over a token stream: consecutive chunks, each from a zero state, spread over threads.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/nn/mamba_model.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

MQ_NAMESPACE_BEGIN

// The bundled models' protocol (models/*/metrics.json "heldout_eval"): the text is cut into
// consecutive chunks of `chunk` tokens (the last one shorter), each evaluated independently from a
// zero state; every token but the first of a chunk is predicted, and
//   bpb = Σ −log₂ p(tok_t | tok_<t in its chunk) / (number of predicted tokens)
// (for a byte-level model a token is a byte; perplexity = 2^(bits per token)).
struct EvalOptions {
    std::size_t chunk = 2048;
    std::size_t threads = 2;
};

struct EvalResult {
    double bits = 0.0;              // Σ −log₂ p over predicted tokens
    std::uint64_t predicted = 0;    // tokens predicted
    double bits_per_token() const { return predicted ? bits / static_cast<double>(predicted) : 0.0; }
    double perplexity() const { return std::exp2(bits_per_token()); }
};

// −log₂ softmax(logits_row)[target], computed stably in double.
template <class = void>
double neg_log2_prob(const float* logits, std::size_t vocab, std::uint32_t target) {
    double mx = logits[0];
    for (std::size_t v = 1; v < vocab; ++v) mx = std::max(mx, static_cast<double>(logits[v]));
    double sum = 0.0;
    for (std::size_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(logits[v]) - mx);
    return (std::log(sum) - (static_cast<double>(logits[target]) - mx)) / std::log(2.0);
}

// Scores one chunk from a zero state.
template <class Model>
EvalResult score_chunk(const Model& model, std::span<const std::uint32_t> chunk) {
    EvalResult r;
    if (chunk.size() < 2) return r;
    auto state = model.make_state();
    const MatrixXf logits = model.prefill(chunk.first(chunk.size() - 1), state, Logits::all);
    const auto vocab = static_cast<std::size_t>(logits.cols());
    for (std::size_t t = 1; t < chunk.size(); ++t) {
        require(chunk[t] < vocab, "evaluate: token ", chunk[t], " is outside the vocabulary of ", vocab);
        r.bits += neg_log2_prob(logits.row(static_cast<Eigen::Index>(t - 1)).data(), vocab, chunk[t]);
    }
    r.predicted = chunk.size() - 1;
    return r;
}

// Chunks are handed to `threads` workers (each with its own state); per-chunk sums are added in
// chunk order so the result does not depend on the thread count. `progress(done, total)` is
// called (serialized) after every chunk.
template <class Model>
EvalResult evaluate(const Model& model, std::span<const std::uint32_t> tokens, EvalOptions opt = {},
                    const std::function<void(std::size_t, std::size_t)>& progress = {}) {
    require(opt.chunk >= 2, "evaluate: chunk must be at least 2 tokens, got ", opt.chunk);
    require(tokens.size() >= 2, "evaluate: the evaluation text has ", tokens.size(),
            " tokens; at least 2 are needed to predict one");
    const std::size_t n_chunks = (tokens.size() + opt.chunk - 1) / opt.chunk;
    std::vector<EvalResult> per_chunk(n_chunks);
    std::atomic<std::size_t> next{0}, done{0};
    std::mutex progress_mutex;
    std::exception_ptr error;
    auto worker = [&] {
        try {
            for (std::size_t c; (c = next.fetch_add(1)) < n_chunks;) {
                const std::size_t first = c * opt.chunk;
                per_chunk[c] = score_chunk(model, tokens.subspan(first, std::min(opt.chunk, tokens.size() - first)));
                const std::size_t d = done.fetch_add(1) + 1;
                if (progress) {
                    std::lock_guard<std::mutex> lock(progress_mutex);
                    progress(d, n_chunks);
                }
            }
        } catch (...) {
            std::lock_guard<std::mutex> lock(progress_mutex);
            if (!error) error = std::current_exception();
            next.store(n_chunks);
        }
    };
    const std::size_t threads = std::max<std::size_t>(1, std::min(opt.threads, n_chunks));
    std::vector<std::thread> pool;
    for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(worker);
    worker();
    for (auto& t : pool) t.join();
    if (error) std::rethrow_exception(error);
    EvalResult total;
    for (const auto& r : per_chunk) {
        total.bits += r.bits;
        total.predicted += r.predicted;
    }
    return total;
}

MQ_NAMESPACE_END
