// A tiny fixed thread pool that splits a kernel's output columns over cores (or runs serially).
#pragma once

#include <mambaquant/core/config.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

MQ_NAMESPACE_BEGIN

// Why not OpenMP: the library is header-only and must not push -fopenmp onto consumers; engines
// that bring their own pool call the kernels' column-range entry points directly and pass no pool.
// The caller thread takes part in every run, so a pool of T threads starts T − 1 workers.
class ThreadPool {
public:
    explicit ThreadPool(std::size_t threads = std::max(1u, std::thread::hardware_concurrency())) {
        const std::size_t n = std::max<std::size_t>(threads, 1);
        workers_.reserve(n - 1);
        for (std::size_t i = 0; i + 1 < n; ++i) workers_.emplace_back([this] { worker_loop(); });
    }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;
    ~ThreadPool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
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
            std::lock_guard<std::mutex> lock(mutex_);
            fn_ = [](void* ctx, std::size_t t) { (*static_cast<Fn*>(ctx))(t); };
            ctx_ = const_cast<void*>(static_cast<const void*>(&f));
            tasks_ = tasks;
            next_.store(0, std::memory_order_relaxed);
            pending_ = workers_.size();
            ++generation_;
        }
        wake_.notify_all();
        work();
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [this] { return pending_ == 0; });
    }

private:
    void work() {
        for (std::size_t t; (t = next_.fetch_add(1, std::memory_order_relaxed)) < tasks_;) fn_(ctx_, t);
    }
    void worker_loop() {
        std::size_t seen = 0;
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
            if (stop_) return;
            seen = generation_;
            lock.unlock();
            work();
            lock.lock();
            if (--pending_ == 0) done_.notify_one();
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
    std::size_t pending_ = 0;
    std::size_t generation_ = 0;
    bool stop_ = false;
};

// A process-wide pool with one thread per hardware thread, created on first use.
inline ThreadPool& default_thread_pool() {
    static ThreadPool pool;
    return pool;
}

// Splits [0, count) into contiguous ranges and calls f(begin, end) for each, on `pool` when given
// (nullptr: serially on the caller, for engines with their own threads). One range per thread by
// default; tasks_per_thread > 1 cuts finer ranges that threads claim as they finish, so a thread
// the OS delays (a busy machine) holds back less than its whole share.
template <class F>
void parallel_ranges(ThreadPool* pool, std::size_t count, F&& f, std::size_t tasks_per_thread = 1) {
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
