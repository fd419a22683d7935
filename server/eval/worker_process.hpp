// One child process of the daemon (an evaluation worker): spawned clean,
// watched, stopped and reaped. Kept apart from the pool so the supervision
// can be exercised with ordinary programs on a machine without a GPU.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/result.hpp"

namespace flashcore::eval {

// How a child ended.
struct ExitStatus {
  bool signaled = false;  // killed by a signal rather than exiting
  int code = 0;           // the exit code, or the signal number when signaled

  // "exited with code 3", "was killed by SIGKILL".
  std::string describe() const;
};

class ChildProcess {
 public:
  // Lines of output kept for error messages.
  static constexpr size_t kTailLines = 20;

  // Starts argv[0] (a path, not searched in PATH) with stdin on /dev/null,
  // stdout and stderr into a pipe this object reads (each line is logged
  // with `log_prefix` and the last kTailLines are kept), every other
  // descriptor closed, SIGTERM/SIGINT unblocked (the daemon blocks them in
  // every thread, and a mask survives exec) with every signal the daemon
  // ignores back at its default, in a process group of its own so a
  // terminal's Ctrl-C reaches only the daemon, which then stops its children.
  static Result<std::unique_ptr<ChildProcess>> spawn(const std::vector<std::string>& argv,
                                                     std::string log_prefix);

  // Stops the child (terminate with a short grace) if it still runs; reaps it.
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }

  // How the child ended, once it has; it is reaped then. Never blocks.
  std::optional<ExitStatus> poll();
  // Waits up to `timeout` for the child to end (and reaps it).
  std::optional<ExitStatus> wait_for(std::chrono::milliseconds timeout);
  // SIGTERM, up to `grace` to exit, then SIGKILL (at once for a zero
  // grace); always reaps.
  ExitStatus terminate(std::chrono::milliseconds grace);
  // Sends `signal` unless the child has been reaped (its pid may then belong
  // to another process). Safe from any thread.
  void signal(int signal);

  // The last lines the child wrote, oldest first. After the child ended,
  // call wait_for_output() first to be sure its last words are in.
  std::vector<std::string> output_tail() const;
  std::string last_output_line() const;
  // Waits (bounded) until the reader saw the end of the child's output.
  void wait_for_output(std::chrono::milliseconds timeout);

 private:
  ChildProcess(pid_t pid, int output_fd, std::string log_prefix);
  std::optional<ExitStatus> reap_if_exited(bool block);
  void read_output();

  const pid_t pid_;
  const int output_fd_;
  const std::string log_prefix_;

  mutable std::mutex mutex_;
  std::optional<ExitStatus> exit_;  // set once reaped
  std::deque<std::string> tail_;
  bool output_closed_ = false;
  std::condition_variable output_cv_;
  std::atomic<bool> stop_reader_{false};
  std::thread reader_;
};

}  // namespace flashcore::eval
