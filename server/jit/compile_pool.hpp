// A bounded pool of compile threads. NVRTC is CPU-heavy (seconds per
// attention kernel), so the daemon caps how many run at once and how many
// wait; past the queue limit a submit is refused (RESOURCE_EXHAUSTED) rather
// than growing without bound.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "common/result.hpp"

namespace flashcore {

class CompilePool {
 public:
  CompilePool(size_t threads, size_t max_queued);
  ~CompilePool();  // finishes queued work, then joins
  CompilePool(const CompilePool&) = delete;
  CompilePool& operator=(const CompilePool&) = delete;

  // Runs `task` on a pool thread, or returns resource_exhausted when
  // max_queued tasks are already waiting.
  Status submit(std::function<void()> task);

  size_t queued() const;
  size_t threads() const { return workers_.size(); }

 private:
  void run();

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  size_t max_queued_;
  size_t busy_ = 0;  // workers running a task
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace flashcore
