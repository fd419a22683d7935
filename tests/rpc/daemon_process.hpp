// The real flashcored as a child process for the shared-box tests: its log
// (stdout and stderr) in a file, an environment without FLASHCORE_* (plus
// what the test adds), optionally under `prlimit --nofile`, its port read
// from --port-file. The destructor kills what is still running.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace flashcore::rpc_testing {

class DaemonProcess {
 public:
  using Clock = std::chrono::steady_clock;

  struct Options {
    std::vector<std::string> args;             // after the binary
    std::vector<std::string> env;              // NAME=VALUE added to the cleaned environment
    int nofile = 0;                            // > 0: run under prlimit --nofile=N:N
  };

  // Starts flashcored with `--port-file <dir>/port`, `--cache-dir
  // <dir>/cache` unless the args name their own, and XDG_STATE_HOME=<dir>/state
  // unless the env names its own.
  DaemonProcess(const std::filesystem::path& dir, Options options) : dir_(dir) {
    log_ = dir / ("daemon-" + std::to_string(counter()++) + ".log");
    port_file_ = dir / "port";
    std::filesystem::remove(port_file_);
    std::vector<std::string> argv;
    if (options.nofile > 0) {
      argv = {"/usr/bin/prlimit", "--nofile=" + std::to_string(options.nofile) + ":" +
                                      std::to_string(options.nofile),
              "--"};
    }
    argv.push_back(FLASHCORE_DAEMON_PATH);
    bool has_listen = false, has_cache = false;
    for (const auto& a : options.args) {
      has_listen |= a == "--listen";
      has_cache |= a == "--cache-dir";
    }
    if (!has_listen) argv.insert(argv.end(), {"--listen", "127.0.0.1:0"});
    if (!has_cache) argv.insert(argv.end(), {"--cache-dir", (dir / "cache").string()});
    argv.insert(argv.end(), {"--port-file", port_file_.string()});
    argv.insert(argv.end(), options.args.begin(), options.args.end());

    // The daemon's state (tuning and candidate databases) goes under <dir>
    // too, never the user's ~/.local/state: a database there from another
    // build (a newer schema) would stop every test daemon from starting.
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry(*e);
      if (entry.rfind("FLASHCORE_", 0) != 0 && entry.rfind("XDG_STATE_HOME=", 0) != 0)
        env_strings.push_back(entry);
    }
    bool has_state = false;
    for (const auto& e : options.env) has_state |= e.rfind("XDG_STATE_HOME=", 0) == 0;
    if (!has_state) env_strings.push_back("XDG_STATE_HOME=" + (dir / "state").string());
    env_strings.insert(env_strings.end(), options.env.begin(), options.env.end());
    std::vector<char*> envp;
    for (auto& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    posix_spawnattr_t attributes;
    posix_spawnattr_init(&attributes);
    // The test runner may have signals blocked; the daemon blocks its own.
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attributes, &none);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK);
    if (posix_spawn(&pid_, args[0], &actions, &attributes, args.data(), envp.data()) != 0)
      pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
  }

  ~DaemonProcess() { kill_now(); }
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  pid_t pid() const { return pid_; }

  // The bound port once the port file is written, 0 if the daemon exits or
  // `timeout` passes first.
  int wait_for_port(std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      std::ifstream in(port_file_);
      int port = 0;
      if (in >> port && port > 0) return port;
      if (exited()) return 0;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return 0;
  }

  std::string address() {
    const int port = wait_for_port();
    return "127.0.0.1:" + std::to_string(port);
  }

  // The exit status once it has exited (reaped), else nullopt.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    do {
      if (exited()) return status_;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    } while (Clock::now() < deadline);
    return std::nullopt;
  }

  bool exited() {
    if (pid_ <= 0) return true;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      status_ = status;
      pid_ = -1;
      return true;
    }
    return false;
  }

  void signal(int number) {
    if (pid_ > 0) ::kill(pid_, number);
  }

  void kill_now() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    status_ = status;
    pid_ = -1;
  }

  std::string log_text() const {
    std::ifstream in(log_);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  bool wait_for_log(const std::string& needle,
                    std::chrono::milliseconds timeout = std::chrono::seconds(30)) const {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      if (log_text().find(needle) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  // Resident set of the process in KiB (0 when gone).
  long rss_kib() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return 0;
  }

  // Open descriptors of the process.
  size_t open_fds() const {
    std::error_code error;
    size_t n = 0;
    for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid_) + "/fd",
                                                       error);
         !error && it != std::filesystem::directory_iterator(); it.increment(error))
      ++n;
    return n;
  }

 private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  std::filesystem::path dir_, log_, port_file_;
  pid_t pid_ = -1;
  int status_ = 0;
};

}  // namespace flashcore::rpc_testing
