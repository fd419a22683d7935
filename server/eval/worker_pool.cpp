#include "eval/worker_pool.hpp"

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <thread>

#include "cuda/driver_api.hpp"
#include "eval/evaluator.hpp"
#include "eval/worker_process.hpp"

namespace flashcore::eval {
namespace {

namespace fs = std::filesystem;
using Clock = WorkerPool::Clock;
using std::chrono::milliseconds;

// How often the startup loop looks for the socket: a worker takes hundreds
// of milliseconds to create its CUDA context, so 5 ms costs nothing.
constexpr milliseconds kSocketPoll{5};
// How long to wait for a dead child's last output line after its exit.
constexpr milliseconds kLastWordsWait{500};

long long ms_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration_cast<milliseconds>(to - from).count();
}

// gRPC deadlines are system_clock; the far future stays far without overflowing.
std::chrono::system_clock::time_point to_system(Clock::time_point deadline) {
  const auto left = std::clamp<Clock::duration>(deadline - Clock::now(), Clock::duration::zero(),
                                                std::chrono::hours(24 * 365));
  return std::chrono::system_clock::now() + left;
}

ErrorCode from_grpc(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE: return ErrorCode::invalid_argument;
    case grpc::StatusCode::NOT_FOUND: return ErrorCode::not_found;
    case grpc::StatusCode::FAILED_PRECONDITION: return ErrorCode::failed_precondition;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return ErrorCode::resource_exhausted;
    case grpc::StatusCode::UNAVAILABLE: return ErrorCode::unavailable;
    case grpc::StatusCode::DEADLINE_EXCEEDED: return ErrorCode::deadline_exceeded;
    case grpc::StatusCode::CANCELLED: return ErrorCode::cancelled;
    default: return ErrorCode::internal;
  }
}

// Codes with which a call ends when the connection to the worker breaks
// rather than with the worker's own answer.
bool is_transport_failure(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::UNKNOWN ||
         code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::ABORTED;
}

bool is_unix_socket(const fs::path& path) {
  struct stat info {};
  return stat(path.c_str(), &info) == 0 && S_ISSOCK(info.st_mode);
}

std::string joined(const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& line : lines) text += line + "\n";
  return text;
}

struct ParsedArch {
  int major = 0;
  int minor = 0;
  bool specific = false;  // "sm_90a": runs on exactly that arch
};

std::optional<ParsedArch> parse_arch(std::string_view arch) {
  if (arch.substr(0, 3) != "sm_") return std::nullopt;
  arch.remove_prefix(3);
  ParsedArch parsed;
  if (!arch.empty() && arch.back() == 'a') {
    parsed.specific = true;
    arch.remove_suffix(1);
  }
  if (arch.size() < 2 || arch.size() > 3) return std::nullopt;
  int number = 0;
  for (char c : arch) {
    if (c < '0' || c > '9') return std::nullopt;
    number = number * 10 + (c - '0');
  }
  parsed.major = number / 10;
  parsed.minor = number % 10;
  return parsed;
}

Result<fs::path> make_runtime_dir(const fs::path& requested, bool& owned) {
  owned = false;
  std::error_code ec;
  if (!requested.empty()) {
    if (fs::is_directory(requested, ec)) return requested;
    if (!fs::create_directories(requested, ec) || ec)
      return make_error(ErrorCode::failed_precondition,
                        "cannot create runtime folder " + requested.string() + ": " + ec.message());
    // Sockets inside accept any local connection; only the daemon's user may
    // reach them.
    fs::permissions(requested, fs::perms::owner_all, fs::perm_options::replace, ec);
    owned = true;
    return requested;
  }
  fs::path base = "/tmp";
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0' &&
                                                        fs::is_directory(xdg, ec) &&
                                                        access(xdg, W_OK | X_OK) == 0)
    base = xdg;
  std::string pattern = (base / "flashcore-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr)  // creates it 0700
    return make_error(ErrorCode::failed_precondition,
                      "cannot create a runtime folder under " + base.string() + ": " +
                          std::strerror(errno));
  owned = true;
  return fs::path(pattern);
}

// How many workers to start: `requested`, or one per CUDA device when it is
// negative; none is an error.
Result<int> worker_count(int requested) {
  int count = requested;
  if (count < 0) {
    auto devices = cuda::probe_devices();
    if (!devices)
      return make_error(ErrorCode::failed_precondition,
                        "no GPU for evaluation workers: " + devices.error().message);
    count = static_cast<int>(devices->size());
  }
  if (count == 0)
    return make_error(ErrorCode::failed_precondition,
                      "no GPU for evaluation workers: no CUDA device found");
  return count;
}

// The worker binary (the default filled in) must be an executable file and
// the timeouts positive.
Status check_options(WorkerPoolOptions& options) {
  if (options.worker_binary.empty()) options.worker_binary = default_worker_binary();
  std::error_code ec;
  if (!fs::is_regular_file(options.worker_binary, ec) ||
      access(options.worker_binary.c_str(), X_OK) != 0)
    return make_error(ErrorCode::failed_precondition,
                      "no worker binary: " + options.worker_binary.string() +
                          " is missing or not executable");
  if (options.call_timeout <= milliseconds::zero() ||
      options.startup_timeout <= milliseconds::zero())
    return make_error(ErrorCode::invalid_argument, "worker pool timeouts must be positive");
  return ok_status();
}

// The channel to a worker's socket.
std::shared_ptr<grpc::Channel> worker_channel(const fs::path& socket) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // A fresh connection per process: never a subchannel left from the
  // previous process on the same path.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // The socket may exist a moment before the worker listens; retry soon.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 20);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 20);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 200);
  return grpc::CreateCustomChannel("unix:" + socket.string(), grpc::InsecureChannelCredentials(),
                                   args);
}

}  // namespace

std::filesystem::path default_worker_binary() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "flashcore_worker";
  return self.parent_path() / "flashcore_worker";
}

bool cubin_runs_on(std::string_view cubin_arch, std::string_view device_arch) {
  const auto cubin = parse_arch(cubin_arch);
  const auto device = parse_arch(device_arch);
  if (!cubin || !device) return cubin_arch == device_arch;
  if (cubin->major != device->major) return false;
  if (cubin->specific) return cubin->minor == device->minor;
  return cubin->minor <= device->minor;
}

struct WorkerPool::Worker {
  enum class State { idle, busy, down };

  int gpu = 0;
  fs::path socket;
  // The fields below are guarded by the pool's mutex. The process and stub
  // are used by the worker's owner (the thread that set it busy) outside
  // the lock; the owner replaces them only under the lock, so shutdown()
  // can always reach a live process to signal it. Down until start() has
  // started it (nobody else can reach it before).
  State state = State::down;
  std::unique_ptr<ChildProcess> process;
  std::unique_ptr<v1::EvalWorker::Stub> stub;
  v1::WorkerInfo info;
  Clock::time_point retry_at{};
  milliseconds backoff{0};
  std::string down_reason;
  size_t starts = 0;
  size_t evaluations = 0;
  size_t failures = 0;
  std::string last_error;
};

WorkerPool::WorkerPool(WorkerPoolOptions options) : options_(std::move(options)) {}

WorkerPool::~WorkerPool() { shutdown(); }

std::string WorkerPool::label(const Worker& worker) const {
  return "worker for GPU " + std::to_string(worker.gpu);
}

Result<std::unique_ptr<WorkerPool>> WorkerPool::start(WorkerPoolOptions options) {
  auto count = worker_count(options.gpu_count);
  if (!count) return count.error();
  if (auto s = check_options(options); !s) return s.error();

  std::unique_ptr<WorkerPool> pool(new WorkerPool(std::move(options)));
  auto dir = make_runtime_dir(pool->options_.runtime_dir, pool->owns_runtime_dir_);
  if (!dir) return dir.error();
  pool->runtime_dir_ = *dir;
  if (auto s = pool->add_workers(*count); !s) {
    pool->shutdown();
    return s.error();
  }
  if (auto s = pool->start_all(); !s) {
    pool->shutdown();
    return s.error();
  }
  for (const auto& worker : pool->workers_)
    if (worker->state == Worker::State::idle)
      spdlog::info("evaluation worker for GPU {}: {} ({}), pid {}", worker->gpu,
                   worker->info.device(), worker->info.arch(), worker->process->pid());
  return pool;
}

Status WorkerPool::add_workers(int count) {
  for (int gpu = 0; gpu < count; ++gpu) {
    auto worker = std::make_unique<Worker>();
    worker->gpu = gpu;
    worker->socket = runtime_dir_ / ("worker-gpu" + std::to_string(gpu) + ".sock");
    worker->backoff = options_.restart_backoff;
    // sockaddr_un holds the path, terminator included.
    if (worker->socket.string().size() >= sizeof(sockaddr_un::sun_path))
      return make_error(ErrorCode::failed_precondition,
                        "socket path " + worker->socket.string() +
                            " is longer than a Unix socket allows (" +
                            std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes)");
    workers_.push_back(std::move(worker));
  }
  return ok_status();
}

Status WorkerPool::start_all() {
  const size_t count = workers_.size();
  // In parallel: each worker creates a CUDA context, which takes a while.
  std::vector<Status> started(count, ok_status());
  {
    std::vector<std::thread> threads;
    for (size_t gpu = 0; gpu < count; ++gpu)
      threads.emplace_back([&, gpu] { started[gpu] = start_worker(*workers_[gpu]); });
    for (auto& thread : threads) thread.join();
  }

  size_t failed = 0;
  {
    std::lock_guard lock(mutex_);
    for (size_t gpu = 0; gpu < count; ++gpu) {
      Worker& worker = *workers_[gpu];
      if (started[gpu]) {
        worker.state = Worker::State::idle;
        continue;
      }
      ++failed;
      worker.state = Worker::State::down;
      worker.down_reason = started[gpu].error().message;
      worker.last_error = worker.down_reason;
      worker.retry_at = Clock::now() + worker.backoff;
    }
  }
  if (failed == count) {
    Error first = started.front().error();
    std::string message = first.message;
    if (count > 1) message += " (and the other " + std::to_string(count - 1) + " workers failed too)";
    return make_error(ErrorCode::failed_precondition, std::move(message), std::move(first.detail));
  }
  for (size_t gpu = 0; gpu < count; ++gpu)
    if (!started[gpu])
      spdlog::warn("{}; retrying when an evaluation needs it", started[gpu].error().message);
  return ok_status();
}

Status WorkerPool::start_worker(Worker& worker) {
  auto spawned = spawn_worker(worker);
  if (!spawned) return spawned.error();
  ChildProcess& process = **spawned;
  const auto began = Clock::now();
  const auto deadline = began + options_.startup_timeout;
  if (auto s = await_socket(worker, process, deadline); !s) return s;
  return connect_worker(worker, process, began, deadline);
}

Result<ChildProcess*> WorkerPool::spawn_worker(Worker& worker) {
  std::error_code ec;
  fs::remove(worker.socket, ec);  // a dead worker's socket must not pass for the new one's

  std::vector<std::string> argv = {options_.worker_binary.string(), "--socket",
                                   worker.socket.string(), "--gpu", std::to_string(worker.gpu)};
  if (!options_.log_level.empty()) {
    argv.push_back("--log-level");
    argv.push_back(options_.log_level);
  }
  auto spawned = ChildProcess::spawn(argv, "worker gpu" + std::to_string(worker.gpu) + ": ");
  if (!spawned)
    return make_error(ErrorCode::failed_precondition, label(worker) + ": " + spawned.error().message);
  ChildProcess* process = spawned->get();
  std::lock_guard lock(mutex_);
  worker.process = std::move(spawned).value();
  worker.stub.reset();
  if (stopping_) process->signal(SIGTERM);
  return process;
}

Error WorkerPool::exited_during_startup(Worker& worker, ChildProcess& process,
                                        const ExitStatus& exit) {
  process.wait_for_output(kLastWordsWait);
  const std::string last = process.last_output_line();
  Error error = make_error(ErrorCode::failed_precondition,
                           label(worker) + " " + exit.describe() + " during startup" +
                               (last.empty() ? "" : ": " + last),
                           joined(process.output_tail()));
  stop_worker(worker, options_.kill_grace);
  return error;
}

Status WorkerPool::await_socket(Worker& worker, ChildProcess& process,
                                Clock::time_point deadline) {
  const auto stopping = [&] {
    std::lock_guard lock(mutex_);
    return stopping_;
  };
  while (!is_unix_socket(worker.socket)) {
    if (auto exit = process.poll()) return exited_during_startup(worker, process, *exit);
    if (stopping()) {
      stop_worker(worker, options_.kill_grace);
      return make_error(ErrorCode::unavailable, "evaluation pool is shutting down");
    }
    if (Clock::now() >= deadline) {
      Error error = make_error(ErrorCode::failed_precondition,
                               label(worker) + " did not create its socket " +
                                   worker.socket.string() + " within " +
                                   std::to_string(options_.startup_timeout.count()) +
                                   " ms; killed",
                               joined(process.output_tail()));
      stop_worker(worker, options_.kill_grace);
      return error;
    }
    std::this_thread::sleep_for(kSocketPoll);
  }
  return ok_status();
}

Status WorkerPool::connect_worker(Worker& worker, ChildProcess& process,
                                  Clock::time_point began, Clock::time_point deadline) {
  auto stub = v1::EvalWorker::NewStub(worker_channel(worker.socket));
  v1::WorkerInfo info;
  grpc::ClientContext context;
  context.set_deadline(to_system(deadline));
  context.set_wait_for_ready(true);
  const grpc::Status status = stub->Info(&context, v1::WorkerInfoRequest{}, &info);
  if (!status.ok()) {
    if (auto exit = process.wait_for(milliseconds(200)))
      return exited_during_startup(worker, process, *exit);
    Error error = make_error(ErrorCode::failed_precondition,
                             label(worker) + " did not answer Info within " +
                                 std::to_string(options_.startup_timeout.count()) +
                                 " ms: " + status.error_message() + "; killed",
                             joined(process.output_tail()));
    stop_worker(worker, options_.kill_grace);
    return error;
  }

  std::lock_guard lock(mutex_);
  worker.info = std::move(info);
  worker.stub = std::move(stub);
  ++worker.starts;
  spdlog::debug("{} ready in {} ms (pid {})", label(worker), ms_between(began, Clock::now()),
                process.pid());
  return ok_status();
}

void WorkerPool::stop_worker(Worker& worker, milliseconds grace) {
  std::unique_ptr<ChildProcess> process;
  {
    std::lock_guard lock(mutex_);
    process = std::move(worker.process);
    worker.stub.reset();
  }
  if (process) {
    const ExitStatus exit = process->terminate(grace);
    spdlog::debug("{} (pid {}) {}", label(worker), process->pid(), exit.describe());
  }
}

WorkerPool::Pick WorkerPool::pick(std::list<Waiter>::iterator me, Worker*& chosen,
                                  std::string& down_reason) {
  chosen = nullptr;
  const auto wants = [](const Waiter& waiter, const Worker& worker) {
    return waiter.gpus.empty() ||
           std::find(waiter.gpus.begin(), waiter.gpus.end(), worker.gpu) != waiter.gpus.end();
  };
  // A worker an earlier waiter can take is that waiter's: FIFO.
  const auto reserved = [&](const Worker& worker) {
    for (auto it = waiting_.begin(); it != me; ++it)
      if (wants(*it, worker)) return true;
    return false;
  };
  const auto now = Clock::now();
  bool worth_waiting = false;
  Worker* restartable = nullptr;
  for (const auto& worker : workers_) {
    if (!wants(*me, *worker)) continue;
    const bool idle = worker->state == Worker::State::idle;
    const bool retry = worker->state == Worker::State::down && now >= worker->retry_at;
    if (worker->state == Worker::State::busy || ((idle || retry) && reserved(*worker))) {
      worth_waiting = true;
      continue;
    }
    if (idle) {
      chosen = worker.get();
      break;
    }
    if (retry && restartable == nullptr) restartable = worker.get();
    if (worker->state == Worker::State::down && down_reason.empty())
      down_reason = label(*worker) + " is down (next restart in " +
                    std::to_string(std::max<long long>(0, ms_between(now, worker->retry_at))) +
                    " ms): " + worker->down_reason;
  }
  // An idle worker beats one that first has to start.
  if (chosen == nullptr) chosen = restartable;
  if (chosen != nullptr) {
    chosen->state = Worker::State::busy;
    return Pick::none;
  }
  return worth_waiting ? Pick::wait : Pick::down;
}

Result<WorkerPool::Worker*> WorkerPool::acquire(EvaluateCall& call, Clock::time_point deadline) {
  std::unique_lock lock(mutex_);
  if (stopping_) return make_error(ErrorCode::unavailable, "evaluation pool is shutting down");
  for (int gpu : call.gpus)
    if (gpu < 0 || gpu >= gpu_count())
      return make_error(ErrorCode::invalid_argument,
                        "gpu " + std::to_string(gpu) + ": the pool has GPUs 0 to " +
                            std::to_string(gpu_count() - 1));

  const auto began = Clock::now();
  const auto me = waiting_.insert(waiting_.end(), Waiter{call.gpus});
  const auto leave = [&] {
    waiting_.erase(me);
    changed_.notify_all();  // those behind moved up, and shutdown() waits for an empty queue
  };
  size_t reported_ahead = SIZE_MAX;
  while (true) {
    if (stopping_) {
      leave();
      return make_error(ErrorCode::unavailable, "evaluation pool is shutting down");
    }
    Worker* chosen = nullptr;
    std::string down_reason;
    const Pick picked = pick(me, chosen, down_reason);
    if (chosen != nullptr) {
      leave();
      return chosen;
    }
    if (picked == Pick::down) {
      leave();
      return make_error(ErrorCode::unavailable, down_reason);
    }
    const auto now = Clock::now();
    if (now >= deadline) {
      const size_t ahead = static_cast<size_t>(std::distance(waiting_.begin(), me));
      leave();
      return make_error(ErrorCode::deadline_exceeded,
                        "no evaluation worker was free within " +
                            std::to_string(ms_between(began, now)) + " ms (" +
                            std::to_string(ahead) + " evaluations queued ahead)");
    }
    const size_t ahead = static_cast<size_t>(std::distance(waiting_.begin(), me));
    if (call.on_queued && ahead != reported_ahead) {
      reported_ahead = ahead;
      lock.unlock();
      call.on_queued(ahead);
      lock.lock();
      continue;
    }
    // Wake for a worker given back, the deadline, or a down worker's retry time.
    Clock::time_point wake = deadline;
    for (const auto& worker : workers_)
      if (worker->state == Worker::State::down && worker->retry_at > now)
        wake = std::min(wake, worker->retry_at);
    changed_.wait_until(lock, wake);
  }
}

void WorkerPool::release(Worker& worker, bool running) {
  std::lock_guard lock(mutex_);
  worker.state = running ? Worker::State::idle : Worker::State::down;
  changed_.notify_all();
}

void WorkerPool::recover(Worker& worker, milliseconds grace) {
  stop_worker(worker, grace);
  {
    std::lock_guard lock(mutex_);
    if (stopping_) {
      worker.down_reason = "evaluation pool is shutting down";
      worker.state = Worker::State::down;
      changed_.notify_all();
      return;
    }
  }
  Status started = start_worker(worker);
  std::lock_guard lock(mutex_);
  if (started) {
    worker.backoff = options_.restart_backoff;
    worker.state = Worker::State::idle;
    spdlog::info("{} restarted (pid {})", label(worker), worker.process->pid());
  } else {
    worker.state = Worker::State::down;
    worker.down_reason = started.error().message;
    worker.retry_at = Clock::now() + worker.backoff;
    worker.backoff = std::min(worker.backoff * 2, options_.restart_backoff * 64);
    spdlog::error("restarting {} failed: {}", label(worker), worker.down_reason);
  }
  changed_.notify_all();
}

Result<v1::EvaluateResponse> WorkerPool::evaluate(const v1::EvaluateRequest& request,
                                                  Clock::time_point deadline) {
  EvaluateCall call;
  return evaluate(request, deadline, call);
}

Result<v1::EvaluateResponse> WorkerPool::evaluate_on(int gpu, const v1::EvaluateRequest& request,
                                                     Clock::time_point deadline) {
  EvaluateCall call;
  call.gpus = {gpu};
  return evaluate(request, deadline, call);
}

Result<v1::EvaluateResponse> WorkerPool::evaluate(const v1::EvaluateRequest& request,
                                                  Clock::time_point deadline, EvaluateCall& call) {
  call.gpu = -1;
  call.dispatched = false;
  auto acquired = acquire(call, deadline);
  if (!acquired) return acquired.error();
  Worker& worker = **acquired;
  call.gpu = worker.gpu;

  // The owner may read these without the lock: only the owner changes them.
  std::optional<ExitStatus> died_idle;
  if (worker.process) died_idle = worker.process->poll();
  if (!worker.process || died_idle) {
    if (died_idle) {
      worker.process->wait_for_output(kLastWordsWait);
      spdlog::warn("{} {} while idle: {}", label(worker), died_idle->describe(),
                   worker.process->last_output_line());
      stop_worker(worker, options_.kill_grace);
    }
    Status started = start_worker(worker);
    std::lock_guard lock(mutex_);
    if (!started) {
      worker.state = Worker::State::down;
      worker.down_reason = started.error().message;
      worker.last_error = worker.down_reason;
      worker.retry_at = Clock::now() + worker.backoff;
      worker.backoff = std::min(worker.backoff * 2, options_.restart_backoff * 64);
      changed_.notify_all();
      return make_error(ErrorCode::unavailable,
                        label(worker) + " could not be started: " + started.error().message,
                        started.error().detail);
    }
    worker.backoff = options_.restart_backoff;
  }
  call.dispatched = true;
  return call_worker(worker, request, deadline);
}

Result<v1::EvaluateResponse> WorkerPool::call_worker(Worker& worker,
                                                     const v1::EvaluateRequest& request,
                                                     Clock::time_point deadline) {
  const auto began = Clock::now();
  const auto call_deadline = std::min(deadline, began + options_.call_timeout);
  v1::EvaluateResponse response;
  grpc::ClientContext context;
  context.set_deadline(to_system(call_deadline));
  const grpc::Status status = worker.stub->Evaluate(&context, request, &response);
  const long long elapsed = ms_between(began, Clock::now());

  if (status.ok()) {
    std::lock_guard lock(mutex_);
    ++worker.evaluations;
    worker.state = Worker::State::idle;
    changed_.notify_all();
    return response;
  }

  ChildProcess& process = *worker.process;
  bool restart = true;
  milliseconds grace = options_.kill_grace;
  Error error;
  const auto exited = [&](const ExitStatus& exit) {
    process.wait_for_output(kLastWordsWait);
    // The worker's answer names the CUDA error; without one, its last words.
    std::string reason = status.error_code() == grpc::StatusCode::INTERNAL
                             ? status.error_message()
                             : process.last_output_line();
    return make_error(ErrorCode::internal,
                      label(worker) + " " + exit.describe() + (reason.empty() ? "" : ": " + reason),
                      joined(process.output_tail()));
  };

  bool stopping;
  {
    std::lock_guard lock(mutex_);
    stopping = stopping_;
  }
  if (stopping) {
    error = make_error(ErrorCode::unavailable, "evaluation pool is shutting down (" +
                                                   label(worker) + " stopped mid-evaluation)");
  } else if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    // A kernel that never returns holds the worker: only killing it frees
    // the GPU, and SIGTERM would wait on the kernel too (measured on an H100:
    // still running 2 s after SIGTERM), so SIGKILL at once.
    grace = milliseconds::zero();
    error = make_error(ErrorCode::deadline_exceeded,
                       label(worker) + " timed out after " + std::to_string(elapsed) +
                           " ms; killed and restarted",
                       joined(process.output_tail()));
  } else if (status.error_code() == grpc::StatusCode::INTERNAL ||
             is_transport_failure(status.error_code())) {
    if (auto exit = process.wait_for(options_.fault_exit_grace)) {
      error = exited(*exit);
    } else if (status.error_code() == grpc::StatusCode::INTERNAL) {
      // An error the worker survived; its context is fine.
      restart = false;
      error = make_error(ErrorCode::internal, label(worker) + ": " + status.error_message(),
                         status.error_details());
    } else {
      error = make_error(ErrorCode::internal,
                         label(worker) + " stopped answering (" + status.error_message() +
                             "); killed and restarted",
                         joined(process.output_tail()));
    }
  } else {
    restart = false;
    error = make_error(from_grpc(status.error_code()), label(worker) + ": " + status.error_message(),
                       status.error_details());
  }

  {
    std::lock_guard lock(mutex_);
    ++worker.failures;
    worker.last_error = error.message;
  }
  spdlog::warn("evaluation of {} failed: {}", request_kernels_label(request), error.message);
  if (restart) recover(worker, grace);
  else release(worker, true);
  return error;
}

void WorkerPool::shutdown() {
  std::unique_lock lock(mutex_);
  if (stopped_) return;
  stopping_ = true;
  changed_.notify_all();
  // Ends running calls too: their connections break and their owners give
  // the workers back without restarting them.
  for (const auto& worker : workers_)
    if (worker->process) worker->process->signal(SIGTERM);
  const auto settled = [&] {
    if (!waiting_.empty()) return false;
    for (const auto& worker : workers_)
      if (worker->state == Worker::State::busy) return false;
    return true;
  };
  if (!changed_.wait_for(lock, options_.kill_grace, settled)) {
    for (const auto& worker : workers_)
      if (worker->process) worker->process->signal(SIGKILL);
    changed_.wait(lock, settled);
  }
  lock.unlock();

  for (const auto& worker : workers_) stop_worker(*worker, options_.kill_grace);
  std::error_code ec;
  for (const auto& worker : workers_) fs::remove(worker->socket, ec);
  if (owns_runtime_dir_ && !runtime_dir_.empty()) fs::remove_all(runtime_dir_, ec);

  lock.lock();
  stopped_ = true;
}

std::vector<v1::WorkerInfo> WorkerPool::workers() const {
  std::lock_guard lock(mutex_);
  std::vector<v1::WorkerInfo> infos;
  for (const auto& worker : workers_) infos.push_back(worker->info);
  return infos;
}

PoolStats WorkerPool::stats() const {
  std::lock_guard lock(mutex_);
  PoolStats stats;
  stats.queued = waiting_.size();
  for (const auto& worker : workers_) {
    WorkerStats w;
    w.gpu = worker->gpu;
    w.running = worker->process != nullptr && worker->stub != nullptr;
    w.pid = worker->process ? worker->process->pid() : 0;
    w.busy = worker->state == Worker::State::busy;
    w.device = worker->info.device();
    w.arch = worker->info.arch();
    w.evaluations = worker->evaluations;
    w.failures = worker->failures;
    w.restarts = worker->starts > 0 ? worker->starts - 1 : 0;
    w.last_error = worker->last_error;
    stats.restarts += w.restarts;
    stats.workers.push_back(std::move(w));
  }
  return stats;
}

size_t WorkerPool::queued() const {
  std::lock_guard lock(mutex_);
  return waiting_.size();
}

}  // namespace flashcore::eval
