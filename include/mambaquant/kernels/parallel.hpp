// A tiny fixed thread pool that splits a kernel's output columns over cores (or runs serially).
#pragma once

#include <mambaquant/core/config.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__SSE2__) || defined(_M_X64)
#include <immintrin.h>
#endif

MQ_NAMESPACE_BEGIN

// Why not OpenMP: the library is header-only and must not push -fopenmp onto consumers; engines
// that bring their own pool call the kernels' column-range entry points directly and pass no pool.
// The caller thread takes part in every run, so a pool of T threads starts T − 1 workers.
//
// Waiting spins before it sleeps: a worker that finished a run polls for the next one, and the
// caller polls for the workers' end, each for up to kSpinMicros before blocking on a condition
// variable. Decode calls one short kernel after another (a 10240 x 2560 int4 GEMV takes ~0.6 ms
// on 2 threads), and a futex wake-up on this VM costs 20–50 µs at each end of a run, ~8% of such a
// call; the spin costs at most kSpinMicros of one core after the last run of a burst.
template <class = void>
class BasicThreadPool {
public:
    static constexpr long kSpinMicros = 200;

    explicit BasicThreadPool(std::size_t threads = std::max(1u, std::thread::hardware_concurrency())) {
        const std::size_t n = std::max<std::size_t>(threads, 1);
        workers_.reserve(n - 1);
        for (std::size_t i = 0; i + 1 < n; ++i) workers_.emplace_back([this] { worker_loop(); });
    }
    BasicThreadPool(const BasicThreadPool&) = delete;
    BasicThreadPool& operator=(const BasicThreadPool&) = delete;
    ~BasicThreadPool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_.store(true, std::memory_order_release);
        }
        wake_.notify_all();
        for (auto& t : workers_) t.join();
    }

    // Threads that run tasks, the caller included.
    std::size_t size() const noexcept { return workers_.size() + 1; }

    // Calls f(task) for every task in [0, tasks) on the pool and the caller; returns when all
    // are done. Runs from different threads are serialized (one job in flight at a time).
    template <class F>
    void run(std::size_t tasks, F&& f) {
        if (tasks == 0) return;
        if (workers_.empty() || tasks == 1) {
            for (std::size_t t = 0; t < tasks; ++t) f(t);
            return;
        }
        std::lock_guard<std::mutex> serial(run_mutex_);
        using Fn = std::remove_reference_t<F>;
        {
            // Every worker has left the previous run (pending_ reached 0), so the job fields are
            // free; the release increment of generation_ publishes them to spinning workers.
            std::lock_guard<std::mutex> lock(mutex_);
            fn_ = [](void* ctx, std::size_t t) { (*static_cast<Fn*>(ctx))(t); };
            ctx_ = const_cast<void*>(static_cast<const void*>(&f));
            tasks_ = tasks;
            next_.store(0, std::memory_order_relaxed);
            pending_.store(workers_.size(), std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_release);
        }
        wake_.notify_all();
        work();
        if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
            std::unique_lock<std::mutex> lock(mutex_);
            done_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
        }
    }

private:
    // Polls pred for up to kSpinMicros; true if it held.
    template <class Pred>
    static bool spin_until(Pred pred) {
        const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
        for (;;) {
            for (int i = 0; i < 64; ++i) {
                if (pred()) return true;
#if defined(__SSE2__) || defined(_M_X64)
                _mm_pause();
#endif
            }
            if (std::chrono::steady_clock::now() >= end) return pred();
        }
    }
    void work() {
        for (std::size_t t; (t = next_.fetch_add(1, std::memory_order_relaxed)) < tasks_;) fn_(ctx_, t);
    }
    void worker_loop() {
        std::size_t seen = 0;
        auto has_job = [&] {
            return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
        };
        for (;;) {
            if (!spin_until(has_job)) {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, has_job);
            }
            if (stop_.load(std::memory_order_acquire)) return;
            seen = generation_.load(std::memory_order_acquire);
            work();
            // The last worker out wakes a caller that gave up spinning; notifying under the mutex
            // means the caller cannot miss it between checking pending_ and sleeping.
            if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> lock(mutex_);
                done_.notify_one();
            }
        }
    }

    std::vector<std::thread> workers_;
    std::mutex run_mutex_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::condition_variable done_;
    void (*fn_)(void*, std::size_t) = nullptr;
    void* ctx_ = nullptr;
    std::size_t tasks_ = 0;
    std::atomic<std::size_t> next_{0};
    std::atomic<std::size_t> pending_{0};
    std::atomic<std::size_t> generation_{0};
    std::atomic<bool> stop_{false};
};
using ThreadPool = BasicThreadPool<>; // a template: compiled only where used (core/config.hpp)

// A process-wide pool with one thread per hardware thread, created on first use.
template <class Tag = void>
ThreadPool& default_thread_pool() {
    static dependent_t<Tag, ThreadPool> pool;
    return pool;
}

// Splits [0, count) into contiguous ranges and calls f(begin, end) for each, on `pool` when given
// (nullptr: serially on the caller, for engines with their own threads). One range per thread by
// default; tasks_per_thread > 1 cuts finer ranges that threads claim as they finish, so a thread
// the OS delays (a busy machine) holds back less than its whole share.
template <class F>
void parallel_ranges(dependent_t<F, ThreadPool>* pool, std::size_t count, F&& f, std::size_t tasks_per_thread = 1) {
    const std::size_t threads = pool ? pool->size() : 1;
    const std::size_t parts = threads > 1 ? std::min(threads * std::max<std::size_t>(tasks_per_thread, 1), count) : 1;
    if (parts <= 1) {
        if (count > 0) f(std::size_t{0}, count);
        return;
    }
    auto task = [&](std::size_t t) { f(t * count / parts, (t + 1) * count / parts); };
    pool->run(parts, task);
}

MQ_NAMESPACE_END
