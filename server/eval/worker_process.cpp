#include "eval/worker_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

extern char** environ;

namespace flashcore::eval {
namespace {

// Lines longer than this are cut, so a child writing without newlines
// cannot grow the daemon's memory.
constexpr size_t kMaxLineBytes = 4096;

ExitStatus from_wait_status(int status) {
  if (WIFSIGNALED(status)) return ExitStatus{true, WTERMSIG(status)};
  return ExitStatus{false, WEXITSTATUS(status)};
}

std::string errno_text(int error) { return std::strerror(error); }

// posix_spawn's C objects, destroyed however spawn() leaves.
struct SpawnSetup {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  SpawnSetup() {
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
  }
  ~SpawnSetup() {
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
};

}  // namespace

std::string ExitStatus::describe() const {
  if (signaled) {
    const char* name = sigabbrev_np(code);
    return std::string("was killed by ") +
           (name != nullptr ? "SIG" + std::string(name) : "signal " + std::to_string(code));
  }
  if (code < 0) return "ended (its exit status was lost)";
  return "exited with code " + std::to_string(code);
}

Result<std::unique_ptr<ChildProcess>> ChildProcess::spawn(const std::vector<std::string>& argv,
                                                          std::string log_prefix) {
  if (argv.empty()) return make_error(ErrorCode::invalid_argument, "spawn: no program given");
  int pipe_fds[2];
  // Close-on-exec, so children spawned at the same time by other threads
  // never inherit this child's output pipe (and keep it open past its end).
  if (pipe2(pipe_fds, O_CLOEXEC) != 0)
    return make_error(ErrorCode::internal, "pipe2: " + errno_text(errno));

  SpawnSetup setup;
  int error = posix_spawn_file_actions_addopen(&setup.actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  // dup2 clears close-on-exec on the copies at 1 and 2.
  if (error == 0) error = posix_spawn_file_actions_adddup2(&setup.actions, pipe_fds[1], STDOUT_FILENO);
  if (error == 0) error = posix_spawn_file_actions_adddup2(&setup.actions, pipe_fds[1], STDERR_FILENO);
  // Descriptors without close-on-exec (gRPC's, a test's) must not leak into
  // a long-lived child: a socket held open there outlives its owner.
  if (error == 0) error = posix_spawn_file_actions_addclosefrom_np(&setup.actions, 3);

  sigset_t none;
  sigemptyset(&none);
  sigset_t all;
  sigfillset(&all);
  sigdelset(&all, SIGKILL);
  sigdelset(&all, SIGSTOP);
  if (error == 0) error = posix_spawnattr_setsigmask(&setup.attr, &none);
  if (error == 0) error = posix_spawnattr_setsigdefault(&setup.attr, &all);
  if (error == 0) error = posix_spawnattr_setpgroup(&setup.attr, 0);
  if (error == 0)
    error = posix_spawnattr_setflags(
        &setup.attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

  std::vector<char*> args;
  for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  // glibc reports a failed exec (ENOENT, EACCES) here rather than through
  // an exit code of the child.
  if (error == 0) error = posix_spawn(&pid, argv[0].c_str(), &setup.actions, &setup.attr,
                                      args.data(), environ);
  close(pipe_fds[1]);
  if (error != 0) {
    close(pipe_fds[0]);
    return make_error(ErrorCode::failed_precondition,
                      "cannot start " + argv[0] + ": " + errno_text(error));
  }
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, pipe_fds[0], std::move(log_prefix)));
}

ChildProcess::ChildProcess(pid_t pid, int output_fd, std::string log_prefix)
    : pid_(pid), output_fd_(output_fd), log_prefix_(std::move(log_prefix)) {
  reader_ = std::thread([this] { read_output(); });
}

ChildProcess::~ChildProcess() {
  bool running;
  {
    std::lock_guard lock(mutex_);
    running = !exit_.has_value();
  }
  if (running) terminate(std::chrono::milliseconds(1000));
  wait_for_output(std::chrono::milliseconds(500));
  stop_reader_ = true;
  reader_.join();
  close(output_fd_);
}

std::optional<ExitStatus> ChildProcess::reap_if_exited(bool block) {
  {
    std::lock_guard lock(mutex_);
    if (exit_) return exit_;
  }
  // Looks without reaping: only the reap below, under the mutex, frees the
  // pid, so signal() can never hit a process that reused it.
  siginfo_t info{};
  int result;
  do {
    result = waitid(P_PID, static_cast<id_t>(pid_), &info,
                    WEXITED | WNOWAIT | (block ? 0 : WNOHANG));
  } while (result != 0 && errno == EINTR);
  std::lock_guard lock(mutex_);
  if (exit_) return exit_;
  if (result != 0) {
    // ECHILD: someone else reaped it (SIGCHLD ignored makes the kernel do so).
    exit_ = ExitStatus{false, -1};
    return exit_;
  }
  if (info.si_pid == 0) return std::nullopt;  // still running
  int status = 0;
  if (waitpid(pid_, &status, 0) == pid_) exit_ = from_wait_status(status);
  else exit_ = ExitStatus{false, -1};
  return exit_;
}

std::optional<ExitStatus> ChildProcess::poll() { return reap_if_exited(false); }

std::optional<ExitStatus> ChildProcess::wait_for(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  // Short sleeps first: a child that was just signalled is usually gone
  // within a millisecond or two.
  auto pause = std::chrono::microseconds(500);
  while (true) {
    if (auto status = poll()) return status;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(pause, deadline - now));
    pause = std::min(pause * 2, std::chrono::microseconds(20000));
  }
}

ExitStatus ChildProcess::terminate(std::chrono::milliseconds grace) {
  if (auto status = poll()) return *status;
  if (grace > std::chrono::milliseconds::zero()) {
    signal(SIGTERM);
    if (auto status = wait_for(grace)) return *status;
    spdlog::warn("{}still running {} ms after SIGTERM; sending SIGKILL", log_prefix_,
                 grace.count());
  }
  signal(SIGKILL);
  // SIGKILL cannot be ignored, but a process inside a driver call may take
  // a moment to die; past this bound it is left for the destructor.
  if (auto status = wait_for(std::chrono::milliseconds(10000))) return *status;
  spdlog::error("{}pid {} survived SIGKILL for 10 s", log_prefix_, pid_);
  return ExitStatus{true, SIGKILL};
}

void ChildProcess::signal(int signal) {
  std::lock_guard lock(mutex_);
  if (!exit_) ::kill(pid_, signal);
}

std::vector<std::string> ChildProcess::output_tail() const {
  std::lock_guard lock(mutex_);
  return {tail_.begin(), tail_.end()};
}

std::string ChildProcess::last_output_line() const {
  std::lock_guard lock(mutex_);
  return tail_.empty() ? std::string() : tail_.back();
}

void ChildProcess::wait_for_output(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  output_cv_.wait_for(lock, timeout, [this] { return output_closed_; });
}

void ChildProcess::read_output() {
  std::string partial;
  const auto take_line = [this](std::string line) {
    while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.pop_back();
    if (line.empty()) return;
    spdlog::info("{}{}", log_prefix_, line);
    std::lock_guard lock(mutex_);
    tail_.push_back(std::move(line));
    if (tail_.size() > kTailLines) tail_.pop_front();
  };
  char buffer[4096];
  // Polls with a timeout so the destructor can stop the reader even if a
  // grandchild kept the pipe open.
  while (!stop_reader_) {
    pollfd ready{output_fd_, POLLIN, 0};
    const int polled = ::poll(&ready, 1, 100);
    if (polled < 0 && errno != EINTR) break;
    if (polled <= 0) continue;
    const ssize_t n = read(output_fd_, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    partial.append(buffer, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t newline; (newline = partial.find('\n', start)) != std::string::npos;
         start = newline + 1)
      take_line(partial.substr(start, newline - start));
    partial.erase(0, start);
    if (partial.size() > kMaxLineBytes) {
      take_line(partial.substr(0, kMaxLineBytes));
      partial.clear();
    }
  }
  take_line(std::move(partial));
  std::lock_guard lock(mutex_);
  output_closed_ = true;
  output_cv_.notify_all();
}

}  // namespace flashcore::eval
