// The daemon's side of evaluation (DESIGN.md §4): one `flashcore_worker`
// process per GPU, each serving flashcore.v1.EvalWorker on a Unix socket in
// a private runtime folder. The daemon itself never creates a CUDA context.
// A worker that exits (a kernel fault poisons its context, so it exits 3),
// stops answering or passes its deadline is killed, reaped and restarted;
// the evaluation that hit it fails with an error naming the GPU and the
// reason, and the pool keeps working.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "flashcore/v1/worker.grpc.pb.h"

namespace flashcore::eval {

class ChildProcess;
struct ExitStatus;

struct WorkerPoolOptions {
  // Empty: `flashcore_worker` in the folder of the running executable.
  std::filesystem::path worker_binary;
  // Where the sockets live. Empty: a fresh 0700 folder under
  // $XDG_RUNTIME_DIR (else /tmp), removed on shutdown. A given folder is
  // created 0700 if missing (and then removed on shutdown).
  std::filesystem::path runtime_dir;
  // Workers to start, one per GPU ordinal 0..n-1. Negative: one per device
  // cuda::probe_devices() reports.
  int gpu_count = -1;
  // Longest a single Evaluate may run before its worker is killed.
  std::chrono::milliseconds call_timeout{120000};
  // From spawn to the worker's socket answering Info.
  std::chrono::milliseconds startup_timeout{10000};
  // SIGTERM to SIGKILL when stopping a worker.
  std::chrono::milliseconds kill_grace{2000};
  // How long a worker that answered INTERNAL gets to exit (it does after a
  // CUDA fault) before it is taken to be alive and well.
  std::chrono::milliseconds fault_exit_grace{2000};
  // First wait before restarting a worker that failed to start; doubles
  // per failure up to 64x, back to this after a success.
  std::chrono::milliseconds restart_backoff{1000};
  // Passed as --log-level when not empty.
  std::string log_level;
};

// The default worker path: `flashcore_worker` beside /proc/self/exe.
std::filesystem::path default_worker_binary();

// Whether a cubin built for `cubin_arch` ("sm_80", "sm_90a") loads on a
// device whose NVRTC arch is `device_arch` (as cuda::DeviceInfo::arch and
// WorkerInfo.arch name it): same major, no newer minor, and an
// arch-specific ("a") target only on its own arch.
bool cubin_runs_on(std::string_view cubin_arch, std::string_view device_arch);

struct WorkerStats {
  int gpu = 0;
  int pid = 0;            // 0 while not running
  bool running = false;
  bool busy = false;
  std::string device;     // from Info
  std::string arch;
  size_t evaluations = 0;  // Evaluate calls answered OK
  size_t failures = 0;     // Evaluate calls that failed (any reason)
  size_t restarts = 0;     // processes started after the first
  std::string last_error;
};

struct PoolStats {
  std::vector<WorkerStats> workers;
  size_t queued = 0;  // evaluations waiting for a worker
  size_t restarts = 0;
};

// Optional parts of an evaluation.
struct EvaluateCall {
  std::vector<int> gpus;  // acceptable GPUs; empty = any
  // Called when the call has to wait, with the number of evaluations ahead
  // of it, and again whenever that number drops.
  std::function<void(size_t ahead)> on_queued;
  // Out: the GPU the evaluation went to (-1: none was free in time), and
  // whether the request reached its worker (a failure after that is the
  // kernel's or the worker's, not the queue's).
  int gpu = -1;
  bool dispatched = false;
};

class WorkerPool {
 public:
  using Clock = std::chrono::steady_clock;

  // Starts every worker and waits (in parallel) until each answers Info.
  // failed_precondition with the reason when there is no GPU, the worker
  // binary is missing, or no worker starts; workers that fail while others
  // start are retried later.
  static Result<std::unique_ptr<WorkerPool>> start(WorkerPoolOptions options);
  // shutdown().
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Runs `request` on an idle worker, waiting in FIFO order while all are
  // busy. The call itself gets until min(deadline, start + call_timeout).
  // Errors name the GPU: deadline_exceeded for a timeout (worker killed and
  // restarted) or for no worker free before `deadline`; internal for a
  // worker that exited or stopped answering (restarted) or answered
  // INTERNAL; unavailable when the pool is shutting down or a worker is down
  // and cannot be restarted yet; the worker's own code otherwise.
  Result<v1::EvaluateResponse> evaluate(const v1::EvaluateRequest& request, Clock::time_point deadline);
  Result<v1::EvaluateResponse> evaluate_on(int gpu, const v1::EvaluateRequest& request,
                                           Clock::time_point deadline);
  Result<v1::EvaluateResponse> evaluate(const v1::EvaluateRequest& request, Clock::time_point deadline,
                                        EvaluateCall& call);

  // Refuses new evaluations, fails waiting ones, SIGTERMs every worker
  // (which also ends running calls), SIGKILLs those still alive after
  // kill_grace, reaps them and removes the sockets (and the runtime folder
  // when the pool made it). Idempotent.
  void shutdown();

  int gpu_count() const { return static_cast<int>(workers_.size()); }
  // What each worker reported at its last start (index = GPU).
  std::vector<v1::WorkerInfo> workers() const;
  PoolStats stats() const;
  size_t queued() const;
  const std::filesystem::path& runtime_dir() const { return runtime_dir_; }
  const WorkerPoolOptions& options() const { return options_; }

 private:
  struct Worker;
  struct Waiter {
    std::vector<int> gpus;
  };
  enum class Pick { none, wait, down };

  explicit WorkerPool(WorkerPoolOptions options);
  // start()'s steps: one worker record per GPU (down, not yet started), then
  // every worker started in parallel; an error when none started.
  Status add_workers(int count);
  Status start_all();
  // Spawns the worker's process and waits for it to answer Info. Called by
  // the worker's owner (start(), or the thread that holds it busy).
  Status start_worker(Worker& worker);
  // start_worker()'s steps: spawn (the process handed to the worker under
  // the lock), wait for the socket, connect and ask Info. A failing step
  // has stopped the worker.
  Result<ChildProcess*> spawn_worker(Worker& worker);
  Status await_socket(Worker& worker, ChildProcess& process, Clock::time_point deadline);
  Status connect_worker(Worker& worker, ChildProcess& process, Clock::time_point began,
                        Clock::time_point deadline);
  // The error for a worker that exited while starting, with its last words;
  // stops the worker.
  Error exited_during_startup(Worker& worker, ChildProcess& process, const ExitStatus& exit);
  // Kills and reaps the worker's process (if any), taking it out of the pool's reach.
  void stop_worker(Worker& worker, std::chrono::milliseconds grace);
  // Takes a worker for `gpus` (FIFO among waiters); caller holds mutex_.
  Pick pick(std::list<Waiter>::iterator me, Worker*& chosen, std::string& down_reason);
  Result<Worker*> acquire(EvaluateCall& call, Clock::time_point deadline);
  // Gives the worker back: idle when it runs, down otherwise.
  void release(Worker& worker, bool running);
  // A failed call: stops the worker (SIGTERM with `grace`, then SIGKILL)
  // and restarts it unless the pool is stopping.
  void recover(Worker& worker, std::chrono::milliseconds grace);
  Result<v1::EvaluateResponse> call_worker(Worker& worker, const v1::EvaluateRequest& request,
                                           Clock::time_point deadline);
  std::string label(const Worker& worker) const;

  WorkerPoolOptions options_;
  std::filesystem::path runtime_dir_;
  bool owns_runtime_dir_ = false;
  std::vector<std::unique_ptr<Worker>> workers_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::list<Waiter> waiting_;
  bool stopping_ = false;
  bool stopped_ = false;
};

}  // namespace flashcore::eval
