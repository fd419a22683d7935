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
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

std::string errno_text(const char* call) { return std::string(call) + ": " + std::strerror(errno); }

constexpr int kExitOutOfMemory = 4;  // compile_worker_main.cpp
constexpr size_t kStderrBytes = 16384;

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
  // stdin: one end of a socket pair, so that writing to a worker that died
  // early is EPIPE without SIGPIPE (MSG_NOSIGNAL); stdout, stderr: pipes.
  int in_pair[2], out_pipe[2], err_pipe[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in_pair) != 0)
    return make_error(ErrorCode::internal, errno_text("socketpair"));
  Fd in_parent(in_pair[0]), in_child(in_pair[1]);
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return make_error(ErrorCode::internal, errno_text("pipe2"));
  Fd out_read(out_pipe[0]), out_child(out_pipe[1]);
  if (pipe2(err_pipe, O_CLOEXEC) != 0) return make_error(ErrorCode::internal, errno_text("pipe2"));
  Fd err_read(err_pipe[0]), err_child(err_pipe[1]);

  const std::string worker = worker_.string();
  const std::string cpu = std::to_string(limits_.cpu_seconds);
  const std::string memory = std::to_string(limits_.memory_mb);
  std::vector<char*> argv = {const_cast<char*>(worker.c_str()),
                             const_cast<char*>("--cpu-seconds"), const_cast<char*>(cpu.c_str()),
                             const_cast<char*>("--memory-mb"), const_cast<char*>(memory.c_str()),
                             nullptr};
  const pid_t pid = fork();
  if (pid < 0) return make_error(ErrorCode::resource_exhausted, errno_text("fork"));
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    if (dup2(in_child.get(), 0) < 0 || dup2(out_child.get(), 1) < 0 ||
        dup2(err_child.get(), 2) < 0)
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
    execve(argv[0], argv.data(), environ);
    _exit(127);
  }
  {
    std::lock_guard lock(mutex_);
    children_.insert(pid);
    if (stopped_) kill(pid, SIGKILL);
  }
  in_child.reset();
  out_child.reset();
  err_child.reset();

  const auto started = Clock::now();
  const auto deadline = started + limits_.wall;
  const std::string input = request.SerializeAsString();
  size_t sent = 0;
  std::string output, errors;
  bool timed_out = false, output_over = false;
  fcntl(in_parent.get(), F_SETFL, O_NONBLOCK);
  bool out_open = true, err_open = true;
  while (out_open || err_open) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    std::vector<pollfd> fds;
    if (in_parent.get() >= 0) fds.push_back({in_parent.get(), POLLOUT, 0});
    if (out_open) fds.push_back({out_read.get(), POLLIN, 0});
    if (err_open) fds.push_back({err_read.get(), POLLIN, 0});
    const int ready = poll(fds.data(), fds.size(), static_cast<int>(std::min<long long>(left, 1000)));
    if (ready < 0 && errno != EINTR) break;
    for (const pollfd& p : fds) {
      if (p.revents == 0) continue;
      if (p.fd == in_parent.get()) {
        const ssize_t n = send(p.fd, input.data() + sent, input.size() - sent, MSG_NOSIGNAL);
        if (n > 0) sent += static_cast<size_t>(n);
        if ((n < 0 && errno != EAGAIN && errno != EINTR) || sent == input.size()) in_parent.reset();
        continue;
      }
      char buffer[65536];
      const ssize_t n = read(p.fd, buffer, sizeof(buffer));
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) {
        (p.fd == out_read.get() ? out_open : err_open) = false;
        continue;
      }
      if (p.fd == out_read.get()) {
        output.append(buffer, static_cast<size_t>(n));
        if (output.size() > limits_.output_bytes) output_over = true;
      } else if (errors.size() < kStderrBytes) {
        errors.append(buffer, std::min(static_cast<size_t>(n), kStderrBytes - errors.size()));
      }
    }
    if (output_over) break;
  }
  if (timed_out || output_over) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  {
    std::lock_guard lock(mutex_);
    children_.erase(pid);
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  while (!errors.empty() && (errors.back() == '\n' || errors.back() == '\0')) errors.pop_back();
  const std::string said = errors.empty() ? "" : " (it said: " + errors.substr(0, 400) + ")";

  if (timed_out)
    return make_error(ErrorCode::deadline_exceeded,
                      "compile worker killed: still compiling after " +
                          std::to_string(limits_.wall.count()) +
                          " ms wall time (limit evolve.compile.wall)");
  if (output_over)
    return make_error(ErrorCode::resource_exhausted,
                      "compile worker killed: its answer passed " +
                          std::to_string(limits_.output_bytes) +
                          " bytes (limit evolve.compile.output_bytes)");
  if (WIFSIGNALED(status)) {
    const int signal = WTERMSIG(status);
    if (signal == SIGXCPU || (signal == SIGKILL && seconds >= limits_.cpu_seconds))
      return make_error(ErrorCode::resource_exhausted,
                        "compile worker killed: used its " + std::to_string(limits_.cpu_seconds) +
                            " s of CPU time (limit evolve.compile.cpu_seconds)" + said);
    if (signal == SIGABRT && (errors.find("bad_alloc") != std::string::npos ||
                              errors.find("out of memory") != std::string::npos))
      return make_error(ErrorCode::resource_exhausted,
                        "compile worker ran out of memory: " + std::to_string(limits_.memory_mb) +
                            " MiB address space (limit evolve.compile.memory_mb)" + said);
    return make_error(ErrorCode::internal, "compile worker was killed by signal " +
                                               std::to_string(signal) + " (" +
                                               strsignal(signal) + ")" + said);
  }
  const int code = WEXITSTATUS(status);
  if (code == kExitOutOfMemory || errors.find("out of memory") != std::string::npos ||
      errors.find("bad_alloc") != std::string::npos)
    return make_error(ErrorCode::resource_exhausted,
                      "compile worker ran out of memory: " + std::to_string(limits_.memory_mb) +
                          " MiB address space (limit evolve.compile.memory_mb)" + said);
  if (code != 0)
    return make_error(ErrorCode::internal,
                      "compile worker exited with code " + std::to_string(code) +
                          (code == 127 ? " (cannot run " + worker_.string() + ")" : "") + said);
  v1::SourceCompileResponse response;
  if (!response.ParseFromString(output))
    return make_error(ErrorCode::internal, "compile worker wrote an answer that does not parse" + said);
  return response;
}

}  // namespace flashcore::evolve
