// The daemon's side of compiling submitted sources: each compile runs
// `flashcore_compile_worker` in a process of its own under CPU-time and
// address-space limits (the worker sets them on itself before it reads the
// source), killed at a wall-clock deadline, its answer read back up to a
// size cap. A source that makes NVRTC hang, recurse without end or exhaust
// memory costs one killed process, never the daemon. At most `concurrency`
// compile at once; callers beyond wait their turn.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <filesystem>
#include <mutex>
#include <set>
#include <string>
#include <sys/types.h>

#include "common/result.hpp"
#include "evolve/evolve_limits.hpp"
#include "flashcore/v1/evolve.pb.h"

namespace flashcore::evolve {


// The default worker path: `flashcore_compile_worker` beside /proc/self/exe.
std::filesystem::path default_compile_worker();

class CompileSandbox {
 public:
  CompileSandbox(std::filesystem::path worker, SandboxLimits limits, size_t concurrency);

  // Runs one compile in a fresh worker. The response when the worker
  // answered (compiled or not); else an error naming the limit it hit:
  // deadline_exceeded (wall time), resource_exhausted (CPU time, memory,
  // output size), internal (any other end), each message saying which limit.
  Result<v1::SourceCompileResponse> compile(const v1::SourceCompileRequest& request);

  const SandboxLimits& limits() const { return limits_; }
  const std::filesystem::path& worker() const { return worker_; }
  size_t running() const;
  size_t waiting() const;
  // Kills the compile workers running now; later compiles fail unavailable.
  void shutdown();

 private:
  Result<v1::SourceCompileResponse> run(const v1::SourceCompileRequest& request);

  std::filesystem::path worker_;
  SandboxLimits limits_;
  size_t concurrency_;
  mutable std::mutex mutex_;
  std::condition_variable free_;
  size_t running_ = 0;
  size_t waiting_ = 0;
  bool stopped_ = false;
  std::set<pid_t> children_;
};

}  // namespace flashcore::evolve
