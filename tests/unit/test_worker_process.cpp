// ChildProcess with ordinary programs: exit codes, last words, a clean
// start (signals, descriptors), SIGTERM then SIGKILL, and no zombies.
#include "eval/worker_process.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace flashcore::eval {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::unique_ptr<ChildProcess> spawn_or_fail(const std::vector<std::string>& argv) {
  auto child = ChildProcess::spawn(argv, "test child: ");
  if (!child) {
    ADD_FAILURE() << child.error().message;
    return nullptr;
  }
  return std::move(child).value();
}

// True once `pid` is no child of ours any more: reaped, so no zombie.
bool reaped(pid_t pid) {
  errno = 0;
  return waitpid(pid, nullptr, WNOHANG) == -1 && errno == ECHILD;
}

// Waits until the child has printed `line` (its signal set-up is then done).
bool wait_for_line(ChildProcess& child, const std::string& line) {
  const auto deadline = Clock::now() + 5s;
  while (Clock::now() < deadline) {
    const auto tail = child.output_tail();
    if (std::find(tail.begin(), tail.end(), line) != tail.end()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

TEST(ExitStatusTest, DescribesCodesAndSignals) {
  EXPECT_EQ((ExitStatus{false, 3}).describe(), "exited with code 3");
  EXPECT_EQ((ExitStatus{true, SIGKILL}).describe(), "was killed by SIGKILL");
  EXPECT_EQ((ExitStatus{true, SIGSEGV}).describe(), "was killed by SIGSEGV");
}

TEST(ChildProcessTest, ReportsTheExitCodeAndTheLastLines) {
  auto child = spawn_or_fail(
      {"/bin/sh", "-c", "echo starting; echo 'no CUDA driver: libcuda.so.1 not found' >&2; exit 2"});
  ASSERT_NE(child, nullptr);
  const pid_t pid = child->pid();
  const auto status = child->wait_for(5s);
  ASSERT_TRUE(status.has_value());
  EXPECT_FALSE(status->signaled);
  EXPECT_EQ(status->code, 2);
  EXPECT_TRUE(reaped(pid));
  child->wait_for_output(2s);
  // stdout and stderr both arrive, in order.
  EXPECT_EQ(child->output_tail(),
            (std::vector<std::string>{"starting", "no CUDA driver: libcuda.so.1 not found"}));
  EXPECT_EQ(child->last_output_line(), "no CUDA driver: libcuda.so.1 not found");
}

TEST(ChildProcessTest, KeepsOnlyTheLastLinesAndAnUnterminatedOne) {
  auto child = spawn_or_fail(
      {"/bin/sh", "-c", "i=1; while [ $i -le 50 ]; do echo line$i; i=$((i+1)); done; printf tail"});
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(child->wait_for(5s).has_value());
  child->wait_for_output(2s);
  const auto tail = child->output_tail();
  ASSERT_EQ(tail.size(), ChildProcess::kTailLines);
  EXPECT_EQ(tail.front(), "line" + std::to_string(51 - ChildProcess::kTailLines + 1));
  EXPECT_EQ(tail.back(), "tail");
}

TEST(ChildProcessTest, AProgramThatCannotStartIsAnErrorNamingIt) {
  auto child = ChildProcess::spawn({"/nonexistent/flashcore_worker", "--gpu", "0"}, "");
  ASSERT_FALSE(child.ok());
  EXPECT_EQ(child.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(child.error().message.find("/nonexistent/flashcore_worker"), std::string::npos);
  EXPECT_NE(child.error().message.find("No such file"), std::string::npos) << child.error().message;
}

TEST(ChildProcessTest, PollDoesNotBlockAndTerminateUsesSigtermFirst) {
  auto child = spawn_or_fail({"/bin/sh", "-c", "exec sleep 30"});
  ASSERT_NE(child, nullptr);
  EXPECT_FALSE(child->poll().has_value());
  const pid_t pid = child->pid();
  const auto began = Clock::now();
  const ExitStatus status = child->terminate(5s);
  EXPECT_LT(Clock::now() - began, 3s);
  EXPECT_TRUE(status.signaled);
  EXPECT_EQ(status.code, SIGTERM);
  EXPECT_TRUE(reaped(pid));
  // Signalling a reaped child is a no-op, never a signal to a reused pid.
  child->signal(SIGKILL);
}

TEST(ChildProcessTest, AChildThatIgnoresSigtermIsKilledAfterTheGrace) {
  auto child = spawn_or_fail({"/bin/sh", "-c", "trap '' TERM; echo ready; exec sleep 30"});
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(wait_for_line(*child, "ready"));
  const pid_t pid = child->pid();
  const auto began = Clock::now();
  const ExitStatus status = child->terminate(300ms);
  const auto took = Clock::now() - began;
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 5s);
  EXPECT_TRUE(status.signaled);
  EXPECT_EQ(status.code, SIGKILL);
  EXPECT_TRUE(reaped(pid));
}

TEST(ChildProcessTest, ZeroGraceKillsAtOnce) {
  auto child = spawn_or_fail({"/bin/sh", "-c", "trap '' TERM; echo ready; exec sleep 30"});
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(wait_for_line(*child, "ready"));
  const auto began = Clock::now();
  const ExitStatus status = child->terminate(0ms);
  EXPECT_LT(Clock::now() - began, 1s);
  EXPECT_TRUE(status.signaled);
  EXPECT_EQ(status.code, SIGKILL);
}

TEST(ChildProcessTest, DestructorStopsAndReapsARunningChild) {
  pid_t pid = 0;
  {
    auto child = spawn_or_fail({"/bin/sh", "-c", "exec sleep 30"});
    ASSERT_NE(child, nullptr);
    pid = child->pid();
  }
  EXPECT_TRUE(reaped(pid));
  EXPECT_EQ(kill(pid, 0), -1);
}

// The daemon blocks SIGTERM/SIGINT in every thread and gRPC ignores SIGPIPE;
// a child must start with neither, or SIGTERM would never stop it.
TEST(ChildProcessTest, ChildStartsWithNoBlockedOrIgnoredSignals) {
  sigset_t shutdown_signals, previous_mask;
  sigemptyset(&shutdown_signals);
  sigaddset(&shutdown_signals, SIGTERM);
  sigaddset(&shutdown_signals, SIGINT);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &shutdown_signals, &previous_mask), 0);
  struct sigaction ignore {}, previous_pipe {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGPIPE, &ignore, &previous_pipe), 0);

  auto child = spawn_or_fail({"/bin/grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"});

  pthread_sigmask(SIG_SETMASK, &previous_mask, nullptr);
  sigaction(SIGPIPE, &previous_pipe, nullptr);
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(child->wait_for(5s).has_value());
  child->wait_for_output(2s);
  const auto lines = child->output_tail();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "SigBlk:\t0000000000000000");
  // glibc's own internal signals (32, 33) start ignored in every child;
  // only the standard ones matter here.
  ASSERT_EQ(lines[1].rfind("SigIgn:\t", 0), 0u) << lines[1];
  const unsigned long long ignored = std::stoull(lines[1].substr(8), nullptr, 16);
  EXPECT_EQ(ignored & ((1ull << 31) - 1), 0u) << lines[1];
}

TEST(ChildProcessTest, DescriptorsOfTheParentAreNotInherited) {
  // Without close-on-exec, as a library's socket might be.
  const int opened = open("/dev/null", O_RDONLY);
  const int leaked = fcntl(opened, F_DUPFD, 100);
  close(opened);
  ASSERT_GE(leaked, 100);
  auto child = spawn_or_fail({"/bin/ls", "/proc/self/fd"});
  close(leaked);
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(child->wait_for(5s).has_value());
  child->wait_for_output(2s);
  const auto fds = child->output_tail();
  // 0, 1, 2 and the folder ls itself reads.
  EXPECT_LE(fds.size(), 4u);
  EXPECT_EQ(std::find(fds.begin(), fds.end(), std::to_string(leaked)), fds.end());
  for (const char* fd : {"0", "1", "2"})
    EXPECT_NE(std::find(fds.begin(), fds.end(), fd), fds.end()) << fd;
}

}  // namespace
}  // namespace flashcore::eval
