#include "evolve/compile_sandbox.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <vector>

extern char** environ;

namespace flashcore::evolve {
namespace {

using Clock = std::chrono::steady_clock;

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes the descriptor held, if any, and holds `fd`.
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

std::string errno_text(const char* call) { return std::string(call) + ": " + std::strerror(errno); }

constexpr int kExitOutOfMemory = 4;  // compile_worker_main.cpp
constexpr size_t kStderrBytes = 16384;

// The worker's stdin (one end of a socket pair, so that writing to a worker
// that died early is EPIPE without SIGPIPE: MSG_NOSIGNAL) and its stdout and
// stderr (pipes): the daemon's ends and the child's.
struct WorkerPipes {
  Fd in_parent, in_child, out_read, out_child, err_read, err_child;
};

Status open_pipes(WorkerPipes& pipes) {
  int in_pair[2], out_pipe[2], err_pipe[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in_pair) != 0)
    return make_error(ErrorCode::internal, errno_text("socketpair"));
  pipes.in_parent.reset(in_pair[0]);
  pipes.in_child.reset(in_pair[1]);
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return make_error(ErrorCode::internal, errno_text("pipe2"));
  pipes.out_read.reset(out_pipe[0]);
  pipes.out_child.reset(out_pipe[1]);
  if (pipe2(err_pipe, O_CLOEXEC) != 0) return make_error(ErrorCode::internal, errno_text("pipe2"));
  pipes.err_read.reset(err_pipe[0]);
  pipes.err_child.reset(err_pipe[1]);
  return ok_status();
}

// In the forked child: the child's ends become stdin, stdout and stderr,
// every other descriptor is closed, the signals reset, and the worker
// executed. Only async-signal-safe calls between fork and exec.
[[noreturn]] void exec_worker(const WorkerPipes& pipes, char* const* argv) {
  if (dup2(pipes.in_child.get(), 0) < 0 || dup2(pipes.out_child.get(), 1) < 0 ||
      dup2(pipes.err_child.get(), 2) < 0)
    _exit(127);
  if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
    for (int fd = 3; fd < 1024; ++fd) close(fd);
  // The daemon blocks SIGTERM/SIGINT in every thread and a mask survives
  // exec; the worker must die of the signals it is sent.
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl{};
  dfl.sa_handler = SIG_DFL;
  for (int s : {SIGPIPE, SIGXCPU, SIGTERM, SIGINT, SIGHUP}) sigaction(s, &dfl, nullptr);
  setpgid(0, 0);
  execve(argv[0], argv, environ);
  _exit(127);
}

// What the worker wrote, and why the exchange stopped early if it did.
struct Exchange {
  std::string output, errors;
  bool timed_out = false, output_over = false;
};

// Sends `input` to the worker's stdin while reading its stdout (past
// `output_bytes` it stops) and the first kStderrBytes of its stderr, until
// both are closed or the deadline passes.
Exchange exchange(WorkerPipes& pipes, const std::string& input, Clock::time_point deadline,
                  size_t output_bytes) {
  Exchange x;
  size_t sent = 0;
  fcntl(pipes.in_parent.get(), F_SETFL, O_NONBLOCK);
  bool out_open = true, err_open = true;
  while (out_open || err_open) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      x.timed_out = true;
      break;
    }
    std::vector<pollfd> fds;
    if (pipes.in_parent.get() >= 0) fds.push_back({pipes.in_parent.get(), POLLOUT, 0});
    if (out_open) fds.push_back({pipes.out_read.get(), POLLIN, 0});
    if (err_open) fds.push_back({pipes.err_read.get(), POLLIN, 0});
    const int ready = poll(fds.data(), fds.size(), static_cast<int>(std::min<long long>(left, 1000)));
    if (ready < 0 && errno != EINTR) break;
    for (const pollfd& p : fds) {
      if (p.revents == 0) continue;
      if (p.fd == pipes.in_parent.get()) {
        const ssize_t n = send(p.fd, input.data() + sent, input.size() - sent, MSG_NOSIGNAL);
        if (n > 0) sent += static_cast<size_t>(n);
        if ((n < 0 && errno != EAGAIN && errno != EINTR) || sent == input.size())
          pipes.in_parent.reset();
        continue;
      }
      char buffer[65536];
      const ssize_t n = read(p.fd, buffer, sizeof(buffer));
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) {
        (p.fd == pipes.out_read.get() ? out_open : err_open) = false;
        continue;
      }
      if (p.fd == pipes.out_read.get()) {
        x.output.append(buffer, static_cast<size_t>(n));
        if (x.output.size() > output_bytes) x.output_over = true;
      } else if (x.errors.size() < kStderrBytes) {
        x.errors.append(buffer, std::min(static_cast<size_t>(n), kStderrBytes - x.errors.size()));
      }
    }
    if (x.output_over) break;
  }
  return x;
}

Error out_of_memory(const SandboxLimits& limits, const std::string& said) {
  return make_error(ErrorCode::resource_exhausted,
                    "compile worker ran out of memory: " + std::to_string(limits.memory_mb) +
                        " MiB address space (limit evolve.compile.memory_mb)" + said);
}

// The worker's answer once it has been reaped (`status` from waitpid, after
// `seconds`), or an error naming the limit it hit.
Result<v1::SourceCompileResponse> verdict(const Exchange& x, int status, double seconds,
                                          const SandboxLimits& limits,
                                          const std::filesystem::path& worker) {
  std::string errors = x.errors;
  while (!errors.empty() && (errors.back() == '\n' || errors.back() == '\0')) errors.pop_back();
  const std::string said = errors.empty() ? "" : " (it said: " + errors.substr(0, 400) + ")";
  if (x.timed_out)
    return make_error(ErrorCode::deadline_exceeded,
                      "compile worker killed: still compiling after " +
                          std::to_string(limits.wall.count()) +
                          " ms wall time (limit evolve.compile.wall)");
  if (x.output_over)
    return make_error(ErrorCode::resource_exhausted,
                      "compile worker killed: its answer passed " +
                          std::to_string(limits.output_bytes) +
                          " bytes (limit evolve.compile.output_bytes)");
  if (WIFSIGNALED(status)) {
    const int signal = WTERMSIG(status);
    if (signal == SIGXCPU || (signal == SIGKILL && seconds >= limits.cpu_seconds))
      return make_error(ErrorCode::resource_exhausted,
                        "compile worker killed: used its " + std::to_string(limits.cpu_seconds) +
                            " s of CPU time (limit evolve.compile.cpu_seconds)" + said);
    if (signal == SIGABRT && (errors.find("bad_alloc") != std::string::npos ||
                              errors.find("out of memory") != std::string::npos))
      return out_of_memory(limits, said);
    return make_error(ErrorCode::internal, "compile worker was killed by signal " +
                                               std::to_string(signal) + " (" +
                                               strsignal(signal) + ")" + said);
  }
  const int code = WEXITSTATUS(status);
  if (code == kExitOutOfMemory || errors.find("out of memory") != std::string::npos ||
      errors.find("bad_alloc") != std::string::npos)
    return out_of_memory(limits, said);
  if (code != 0)
    return make_error(ErrorCode::internal,
                      "compile worker exited with code " + std::to_string(code) +
                          (code == 127 ? " (cannot run " + worker.string() + ")" : "") + said);
  v1::SourceCompileResponse response;
  if (!response.ParseFromString(x.output))
    return make_error(ErrorCode::internal, "compile worker wrote an answer that does not parse" + said);
  return response;
}

}  // namespace

std::filesystem::path default_compile_worker() {
  std::error_code error;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return "flashcore_compile_worker";
  return self.parent_path() / "flashcore_compile_worker";
}

CompileSandbox::CompileSandbox(std::filesystem::path worker, SandboxLimits limits,
                               size_t concurrency)
    : worker_(std::move(worker)), limits_(limits), concurrency_(std::max<size_t>(1, concurrency)) {}

size_t CompileSandbox::running() const {
  std::lock_guard lock(mutex_);
  return running_;
}

void CompileSandbox::shutdown() {
  std::lock_guard lock(mutex_);
  stopped_ = true;
  for (pid_t child : children_) kill(child, SIGKILL);
  free_.notify_all();
}

size_t CompileSandbox::waiting() const {
  std::lock_guard lock(mutex_);
  return waiting_;
}

Result<v1::SourceCompileResponse> CompileSandbox::compile(const v1::SourceCompileRequest& request) {
  {
    std::unique_lock lock(mutex_);
    ++waiting_;
    free_.wait(lock, [this] { return stopped_ || running_ < concurrency_; });
    --waiting_;
    if (stopped_) return make_error(ErrorCode::unavailable, "the daemon is shutting down");
    ++running_;
  }
  auto result = run(request);
  {
    std::lock_guard lock(mutex_);
    --running_;
  }
  free_.notify_one();
  return result;
}

Result<v1::SourceCompileResponse> CompileSandbox::run(const v1::SourceCompileRequest& request) {
  WorkerPipes pipes;
  if (auto s = open_pipes(pipes); !s) return s.error();
  const std::string worker = worker_.string();
  const std::string cpu = std::to_string(limits_.cpu_seconds);
  const std::string memory = std::to_string(limits_.memory_mb);
  std::vector<char*> argv = {const_cast<char*>(worker.c_str()),
                             const_cast<char*>("--cpu-seconds"), const_cast<char*>(cpu.c_str()),
                             const_cast<char*>("--memory-mb"), const_cast<char*>(memory.c_str()),
                             nullptr};
  const pid_t pid = fork();
  if (pid < 0) return make_error(ErrorCode::resource_exhausted, errno_text("fork"));
  if (pid == 0) exec_worker(pipes, argv.data());
  {
    std::lock_guard lock(mutex_);
    children_.insert(pid);
    if (stopped_) kill(pid, SIGKILL);
  }
  pipes.in_child.reset();
  pipes.out_child.reset();
  pipes.err_child.reset();

  const auto started = Clock::now();
  const Exchange x =
      exchange(pipes, request.SerializeAsString(), started + limits_.wall, limits_.output_bytes);
  if (x.timed_out || x.output_over) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  {
    std::lock_guard lock(mutex_);
    children_.erase(pid);
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  return verdict(x, status, seconds, limits_, worker_);
}

}  // namespace flashcore::evolve
