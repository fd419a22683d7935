#include "jit/compile_pool.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <exception>

namespace flashcore {

CompilePool::CompilePool(size_t threads, size_t max_queued) : max_queued_(max_queued) {
  threads = std::max<size_t>(threads, 1);  // zero threads would accept work and never run it
  workers_.reserve(threads);
  for (size_t i = 0; i < threads; ++i) workers_.emplace_back([this] { run(); });
}

CompilePool::~CompilePool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
}

Status CompilePool::submit(std::function<void()> task) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return make_error(ErrorCode::unavailable, "compile pool is shutting down");
    // Tasks that idle workers are about to pick up are not waiting, so they
    // do not count against the queue limit. Counting busy rather than idle
    // workers keeps this right before the threads have first been scheduled.
    if (queue_.size() >= max_queued_ + (workers_.size() - busy_))
      return make_error(ErrorCode::resource_exhausted,
                        "compile queue is full (" + std::to_string(max_queued_) + " waiting)");
    queue_.push_back(std::move(task));
  }
  wake_.notify_one();
  return ok_status();
}

size_t CompilePool::queued() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

void CompilePool::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    // Drain before exiting: callers of queued tasks are waiting on their callbacks.
    if (queue_.empty()) return;
    auto task = std::move(queue_.front());
    queue_.pop_front();
    ++busy_;
    lock.unlock();
    try {
      task();
    } catch (const std::exception& e) {
      spdlog::error("compile task threw: {}", e.what());
    } catch (...) {
      spdlog::error("compile task threw a non-standard exception");
    }
    lock.lock();
    --busy_;
  }
}

}  // namespace flashcore
