// Embedding mambaquant in an engine that owns its threads and its memory:
//   • no library thread pool: every block runs on the calling thread (set_thread_pool(nullptr)
//     before the first call, so the library's default pool is never started);
//   • caller-owned state: each engine thread keeps its own per-layer caches, block workspace and
//     buffers, sized once; the model (weights) is shared read-only between threads;
//   • token-by-token decode that allocates nothing: the engine drives the blocks itself and writes
//     logits into its own buffer; a counting operator new proves zero allocations per step.
//   ./embed_in_engine [MODEL_DIR] [STEPS]
#include <mambaquant/nn/mamba_model.hpp>
#include <mambaquant/nn/rms_norm.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cerrno>
#include <string>
#include <thread>
#include <vector>

#ifndef MQ_SOURCE_DIR
#define MQ_SOURCE_DIR "."
#endif

// The engine's allocation counter, per thread. On glibc every heap allocation — operator new,
// Eigen's and xsimd's aligned buffers — ends in one of these, so interposing them counts them all
// (a real engine would route them to its own arena instead).
thread_local std::size_t t_allocations = 0;
#if defined(__GLIBC__)
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void* malloc(std::size_t n) noexcept { return ++t_allocations, __libc_malloc(n); }
void* calloc(std::size_t k, std::size_t n) noexcept { return ++t_allocations, __libc_calloc(k, n); }
void* realloc(void* p, std::size_t n) noexcept { return ++t_allocations, __libc_realloc(p, n); }
void* aligned_alloc(std::size_t a, std::size_t n) noexcept { return ++t_allocations, __libc_memalign(a, n); }
int posix_memalign(void** out, std::size_t a, std::size_t n) noexcept {
    ++t_allocations;
    *out = __libc_memalign(a, n);
    return *out ? 0 : ENOMEM;
}
}
constexpr bool kCounting = true;
#else
constexpr bool kCounting = false; // elsewhere: run without the check
#endif

using Model = mq::BasicMambaModel<mq::MambaBlock<mq::W8PerChannel, mq::A8PerToken, mq::HadamardOnline>>;
using Block = Model::block_type;

// One engine sequence: everything a decode step touches, owned here and sized once.
struct Sequence {
    std::vector<mq::MambaCache> caches;
    Block::Workspace ws;
    mq::MatrixXf h, normed, logits; // [1, D], [1, D], [1, V]

    explicit Sequence(const Model& m)
        : h(1, Eigen::Index(m.config().d_model)), normed(1, Eigen::Index(m.config().d_model)),
          logits(1, m.lm_head().rows()) {
        for (const auto& b : m.layers()) caches.push_back(b.make_cache());
    }
    // One token in, logits out, in the engine's buffers; returns the greedy next token.
    std::uint32_t step(const Model& m, std::uint32_t token) {
        h = m.embedding().row(token); // same size: no allocation
        for (std::size_t i = 0; i < m.layers().size(); ++i) m.layers()[i].forward(h, caches[i], ws);
        mq::rms_norm(mq::view(std::as_const(h)), m.norm_f(), m.config().norm_eps, mq::view(normed));
        logits.noalias() = normed * m.lm_head().transpose();
        Eigen::Index best = 0;
        logits.row(0).head(Eigen::Index(m.config().vocab_size)).maxCoeff(&best);
        return static_cast<std::uint32_t>(best);
    }
};

int main(int argc, char** argv) {
    const std::string dir = argc > 1 ? argv[1] : std::string(MQ_SOURCE_DIR) + "/models/kjv-mamba-192";
    const std::size_t steps = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 32;
    try {
        Model model = Model::load(dir);
        model.set_thread_pool(nullptr); // the engine owns the threads
        const std::string prompts[2] = {"In the beginning", "And the LORD said"};
        std::string out[2];
        std::size_t steady_allocations[2] = {0, 0}, warm_allocations[2] = {0, 0};
        // Two engine threads, one sequence each, sharing the read-only model.
        for (auto& o : out) o.reserve(steps);
        std::vector<std::thread> threads;
        for (int s = 0; s < 2; ++s)
            threads.emplace_back([&, s] {
                const std::size_t start = t_allocations;
                Sequence seq(model);
                std::uint32_t next = 0;
                for (unsigned char c : prompts[s]) next = seq.step(model, c); // warm: buffers reach their size
                const std::size_t before = t_allocations;
                warm_allocations[s] = before - start; // the counter sees the setup's allocations
                for (std::size_t i = 0; i < steps; ++i) {
                    out[s].push_back(static_cast<char>(next)); // reserved above
                    next = seq.step(model, next);
                }
                steady_allocations[s] = t_allocations - before;
            });
        for (auto& t : threads) t.join();
        for (int s = 0; s < 2; ++s)
            std::printf("thread %d: \"%s%s\"\n", s, prompts[s].c_str(), out[s].c_str());
        std::printf("allocations while setting up and reading the prompt: %zu and %zu\n", warm_allocations[0],
                    warm_allocations[1]);
        std::printf("allocations during %zu decode steps per thread: %zu and %zu\n", steps, steady_allocations[0],
                    steady_allocations[1]);
        if (!kCounting) std::printf("(allocations are counted on glibc only)\n");
        return steady_allocations[0] == 0 && steady_allocations[1] == 0 ? 0 : 1;
    } catch (const mq::error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
