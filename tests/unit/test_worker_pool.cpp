// WorkerPool's supervision with real processes: the real flashcore_worker
// (which cannot start here: no driver) and ordinary programs standing in
// for workers that exit, hang or never answer. A live worker needs a GPU;
// evaluate()'s restart path runs in the GPU tests of test_validate.cpp.
#include "eval/worker_pool.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "cuda/driver_api.hpp"
#include "scratch_dir.hpp"

namespace flashcore::eval {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using test_support::ScratchDir;

bool has_gpu() {
  auto devices = cuda::probe_devices();
  return devices.ok() && !devices->empty();
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// True once `pid` is neither running nor a zombie of ours.
bool gone(pid_t pid) {
  errno = 0;
  const bool not_our_child = waitpid(pid, nullptr, WNOHANG) == -1 && errno == ECHILD;
  return not_our_child && kill(pid, 0) == -1 && errno == ESRCH;
}

class WorkerPoolTest : public ::testing::Test {
 protected:
  // A stand-in worker: a shell script, given the worker's arguments
  // (--socket PATH --gpu N ...).
  fs::path script(const std::string& name, const std::string& body) {
    const fs::path path = dir_ / name;
    test_support::write_file(path, "#!/bin/sh\n" + body + "\n");
    fs::permissions(path, fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read);
    return path;
  }

  WorkerPoolOptions options_for(const fs::path& binary) {
    WorkerPoolOptions options;
    options.worker_binary = binary;
    options.gpu_count = 1;
    options.runtime_dir = dir_ / "run";
    options.startup_timeout = 2000ms;
    options.kill_grace = 300ms;
    return options;
  }

  pid_t read_pid(const std::string& name) {
    std::ifstream in(dir_ / name);
    pid_t pid = 0;
    in >> pid;
    return pid;
  }

  ScratchDir dir_;
};

TEST_F(WorkerPoolTest, RealWorkerWithoutADriverFailsNamingTheDriver) {
  if (has_gpu()) GTEST_SKIP() << "a GPU is present: the worker starts here";
  const auto began = Clock::now();
  auto pool = WorkerPool::start(options_for(FLASHCORE_WORKER_PATH));
  ASSERT_FALSE(pool.ok());
  EXPECT_LT(Clock::now() - began, 5s);
  const Error& error = pool.error();
  EXPECT_EQ(error.code, ErrorCode::failed_precondition);
  // The worker's exit code (2: no GPU) and its own one-line reason.
  EXPECT_TRUE(contains(error.message, "worker for GPU 0 exited with code 2 during startup"))
      << error.message;
  EXPECT_TRUE(contains(error.message, "libcuda.so.1")) << error.message;
  EXPECT_TRUE(contains(error.detail, "libcuda.so.1")) << error.detail;
  EXPECT_FALSE(fs::exists(dir_ / "run"));
}

TEST_F(WorkerPoolTest, WithoutAGpuCountTheProbeRefusesBeforeSpawning) {
  if (has_gpu()) GTEST_SKIP() << "a GPU is present";
  const fs::path marker = dir_ / "spawned";
  WorkerPoolOptions options = options_for(script("worker", "touch " + marker.string() + "; exit 2"));
  options.gpu_count = -1;
  auto pool = WorkerPool::start(options);
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.error().code, ErrorCode::failed_precondition);
  EXPECT_TRUE(contains(pool.error().message, "no GPU for evaluation workers: "))
      << pool.error().message;
  EXPECT_TRUE(contains(pool.error().message, cuda::probe_devices().error().message));
  EXPECT_FALSE(fs::exists(marker));
}

TEST_F(WorkerPoolTest, MissingOrNonExecutableWorkerBinaryIsNamed) {
  for (const fs::path& binary : {dir_ / "no_such_worker", [&] {
                                   test_support::write_file(dir_ / "not_executable", "x");
                                   return dir_ / "not_executable";
                                 }(), dir_.path()}) {
    auto pool = WorkerPool::start(options_for(binary));
    ASSERT_FALSE(pool.ok()) << binary;
    EXPECT_EQ(pool.error().code, ErrorCode::failed_precondition);
    EXPECT_TRUE(contains(pool.error().message, "no worker binary: " + binary.string()))
        << pool.error().message;
    EXPECT_FALSE(fs::exists(dir_ / "run"));
  }
}

TEST_F(WorkerPoolTest, DefaultWorkerBinaryIsBesideTheRunningExecutable) {
  const fs::path self = fs::read_symlink("/proc/self/exe");
  EXPECT_EQ(default_worker_binary(), self.parent_path() / "flashcore_worker");
}

TEST_F(WorkerPoolTest, WorkerThatExitsAtOnceIsNamedWithItsExitCode) {
  auto pool = WorkerPool::start(options_for("/bin/false"));
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.error().code, ErrorCode::failed_precondition);
  EXPECT_EQ(pool.error().message, "worker for GPU 0 exited with code 1 during startup");
}

TEST_F(WorkerPoolTest, WorkerKilledBySignalIsNamedWithTheSignal) {
  auto pool = WorkerPool::start(options_for(script("worker", "echo dying; kill -USR1 $$")));
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.error().message, "worker for GPU 0 was killed by SIGUSR1 during startup: dying");
}

TEST_F(WorkerPoolTest, WorkerWithoutSocketTimesOutAndIsKilledAndReaped) {
  const fs::path binary = script("worker", "echo $$ > " + (dir_ / "pid").string() + "; exec sleep 30");
  WorkerPoolOptions options = options_for(binary);
  options.startup_timeout = 300ms;
  const auto began = Clock::now();
  auto pool = WorkerPool::start(options);
  const auto took = Clock::now() - began;
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.error().code, ErrorCode::failed_precondition);
  EXPECT_TRUE(contains(pool.error().message, "worker for GPU 0 did not create its socket " +
                                                 (dir_ / "run" / "worker-gpu0.sock").string() +
                                                 " within 300 ms; killed"))
      << pool.error().message;
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 5s);
  const pid_t pid = read_pid("pid");
  ASSERT_GT(pid, 0);
  EXPECT_TRUE(gone(pid)) << "worker pid " << pid << " still exists";
  EXPECT_FALSE(fs::exists(dir_ / "run"));
}

TEST_F(WorkerPoolTest, WorkerIgnoringSigtermIsKilledAfterTheGrace) {
  const fs::path binary =
      script("worker", "trap '' TERM; echo $$ > " + (dir_ / "pid").string() + "; exec sleep 30");
  WorkerPoolOptions options = options_for(binary);
  options.startup_timeout = 300ms;
  options.kill_grace = 300ms;
  const auto began = Clock::now();
  auto pool = WorkerPool::start(options);
  const auto took = Clock::now() - began;
  ASSERT_FALSE(pool.ok());
  EXPECT_GE(took, 600ms);
  EXPECT_LT(took, 5s);
  const pid_t pid = read_pid("pid");
  ASSERT_GT(pid, 0);
  EXPECT_TRUE(gone(pid)) << "worker pid " << pid << " still exists";
}

TEST_F(WorkerPoolTest, SocketThatNeverAnswersInfoTimesOut) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "needs /usr/bin/python3";
  // Listens on the socket and accepts, but never speaks gRPC.
  const fs::path binary = script("worker",
                                 "echo $$ > " + (dir_ / "pid").string() +
                                     "\nexec /usr/bin/python3 -c '\n"
                                     "import socket, sys, time\n"
                                     "s = socket.socket(socket.AF_UNIX)\n"
                                     "s.bind(sys.argv[1]); s.listen(8); held = []\n"
                                     "while True: held.append(s.accept())\n"
                                     "' \"$2\"");
  WorkerPoolOptions options = options_for(binary);
  options.startup_timeout = 1000ms;
  auto pool = WorkerPool::start(options);
  ASSERT_FALSE(pool.ok());
  EXPECT_TRUE(contains(pool.error().message, "worker for GPU 0 did not answer Info within 1000 ms"))
      << pool.error().message;
  const pid_t pid = read_pid("pid");
  ASSERT_GT(pid, 0);
  EXPECT_TRUE(gone(pid));
  EXPECT_FALSE(fs::exists(dir_ / "run"));
}

TEST_F(WorkerPoolTest, DefaultRuntimeDirIsAFresh0700FolderUnderXdgRuntimeDirRemovedAfter) {
  const fs::path xdg = dir_ / "xdg";
  fs::create_directories(xdg);
  std::optional<std::string> saved;
  if (const char* value = std::getenv("XDG_RUNTIME_DIR")) saved = value;
  setenv("XDG_RUNTIME_DIR", xdg.c_str(), 1);
  // The stand-in reports its socket's folder and that folder's mode.
  WorkerPoolOptions options = options_for(
      script("worker", "d=$(dirname \"$2\"); echo \"$(stat -c %a \"$d\") $d\"; exit 2"));
  options.runtime_dir.clear();
  auto pool = WorkerPool::start(options);
  if (saved) setenv("XDG_RUNTIME_DIR", saved->c_str(), 1);
  else unsetenv("XDG_RUNTIME_DIR");

  ASSERT_FALSE(pool.ok());
  const std::string& message = pool.error().message;
  const std::string prefix = "worker for GPU 0 exited with code 2 during startup: ";
  ASSERT_EQ(message.rfind(prefix, 0), 0u) << message;
  const std::string report = message.substr(prefix.size());
  const auto space = report.find(' ');
  ASSERT_NE(space, std::string::npos) << report;
  EXPECT_EQ(report.substr(0, space), "700");
  const fs::path runtime = report.substr(space + 1);
  EXPECT_EQ(runtime.parent_path(), xdg);
  EXPECT_EQ(runtime.filename().string().rfind("flashcore-", 0), 0u) << runtime;
  EXPECT_FALSE(fs::exists(runtime));
  EXPECT_TRUE(fs::is_empty(xdg));
}

TEST_F(WorkerPoolTest, GivenRuntimeDirIsCreated0700AndRemovedAfter) {
  WorkerPoolOptions options = options_for(
      script("worker", "stat -c %a \"$(dirname \"$2\")\"; exit 2"));
  options.runtime_dir = dir_ / "run" / "nested";
  auto pool = WorkerPool::start(options);
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.error().message, "worker for GPU 0 exited with code 2 during startup: 700");
  EXPECT_FALSE(fs::exists(dir_ / "run" / "nested"));
}

TEST_F(WorkerPoolTest, OneWorkerPerGpuWithTheAgreedArguments) {
  const fs::path args = dir_ / "args";
  WorkerPoolOptions options =
      options_for(script("worker", "echo \"$*\" >> " + args.string() + "; exit 2"));
  options.gpu_count = 3;
  options.log_level = "debug";
  auto pool = WorkerPool::start(options);
  ASSERT_FALSE(pool.ok());
  EXPECT_TRUE(contains(pool.error().message, "(and the other 2 workers failed too)"))
      << pool.error().message;

  std::ifstream in(args);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::sort(lines.begin(), lines.end());
  std::vector<std::string> expected;
  for (int gpu = 0; gpu < 3; ++gpu)
    expected.push_back("--socket " + (options.runtime_dir / ("worker-gpu" + std::to_string(gpu) +
                                                             ".sock")).string() +
                       " --gpu " + std::to_string(gpu) + " --log-level debug");
  EXPECT_EQ(lines, expected);
}

TEST_F(WorkerPoolTest, SocketPathLongerThanAUnixSocketAllowsIsRefused) {
  WorkerPoolOptions options = options_for("/bin/false");
  options.runtime_dir = dir_ / std::string(120, 'r');
  auto pool = WorkerPool::start(options);
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.error().code, ErrorCode::failed_precondition);
  EXPECT_TRUE(contains(pool.error().message, "longer than a Unix socket allows"))
      << pool.error().message;
  EXPECT_FALSE(fs::exists(options.runtime_dir));
}

TEST(CubinRunsOnTest, SameMajorNoNewerMinorAndArchSpecificOnlyOnItsOwn) {
  EXPECT_TRUE(cubin_runs_on("sm_80", "sm_80"));
  EXPECT_TRUE(cubin_runs_on("sm_80", "sm_86"));
  EXPECT_TRUE(cubin_runs_on("sm_80", "sm_89"));
  EXPECT_FALSE(cubin_runs_on("sm_86", "sm_80"));
  EXPECT_FALSE(cubin_runs_on("sm_80", "sm_90a"));
  EXPECT_FALSE(cubin_runs_on("sm_89", "sm_90a"));
  // A 9.0 device reports sm_90a; plain sm_90 cubins run there too.
  EXPECT_TRUE(cubin_runs_on("sm_90", "sm_90a"));
  EXPECT_TRUE(cubin_runs_on("sm_90a", "sm_90a"));
  EXPECT_FALSE(cubin_runs_on("sm_90a", "sm_100"));
  EXPECT_FALSE(cubin_runs_on("sm_90", "sm_100"));
  EXPECT_FALSE(cubin_runs_on("compute_80", "sm_80"));
}

}  // namespace
}  // namespace flashcore::eval
