// The real flashcored binary: SIGTERM while a compile is in flight lets the
// call finish, then the process exits 0 within the drain deadline.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>
#include <future>
#include <thread>

#include "rpc_test_support.hpp"

extern char** environ;

namespace flashcore {
namespace {

using namespace rpc_testing;
using namespace test_support;
using Clock = std::chrono::steady_clock;

// Kills the child if a failed assertion leaves it running.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv) {
    std::vector<char*> args;
    for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], nullptr, nullptr, args.data(), environ) != 0) pid_ = -1;
  }
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }

  // The exit status, or nullopt if the child is still running at `deadline`.
  std::optional<int> wait_until(Clock::time_point deadline) {
    while (Clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return std::nullopt;
  }

 private:
  pid_t pid_ = -1;
};

int wait_for_port(const std::filesystem::path& file, Clock::time_point deadline) {
  while (Clock::now() < deadline) {
    std::ifstream in(file);
    int port = 0;
    if (in >> port && port > 0) return port;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return 0;
}

TEST(SigtermDrainTest, InFlightCompileCompletesAndTheDaemonExitsZero) {
  ScratchDir dir, templates;
  // A compile that takes a second or two, so SIGTERM surely lands mid-way.
  write_attention_templates(templates, slow_attention_template(500));
  constexpr int kDrainMs = 60000;
  Child daemon({FLASHCORE_DAEMON_PATH, "--listen", "127.0.0.1:0", "--port-file",
                (dir / "port").string(), "--cache-dir", (dir / "cache").string(), "--tuning-db",
                (dir / "tuning.db").string(), "--templates-dir",
                templates.path().string(), "--drain-timeout-ms", std::to_string(kDrainMs),
                "--log-level", "warn"});
  ASSERT_GT(daemon.pid(), 0) << "cannot start " << FLASHCORE_DAEMON_PATH;
  const int port = wait_for_port(dir / "port", Clock::now() + std::chrono::seconds(20));
  ASSERT_GT(port, 0) << "no port file from flashcored";
  const std::string address = "127.0.0.1:" + std::to_string(port);

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  auto stub = v1::FlashCore::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  v1::ServerInfo info;
  ASSERT_TRUE(server_info(*stub, &info).ok());  // connected: the Compile goes out at once

  auto call = std::async(std::launch::async, [&stub] {
    v1::KernelHandle handle;
    grpc::Status status = compile(*stub, quick_request(), &handle);
    return std::make_pair(status, handle);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  ASSERT_EQ(call.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
      << "the compile finished before SIGTERM; nothing was in flight";

  const auto sent = Clock::now();
  ASSERT_EQ(kill(daemon.pid(), SIGTERM), 0);

  // New calls are refused while the old one drains.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  {
    auto late =
        v1::FlashCore::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::ServerInfo info;
    EXPECT_FALSE(late->GetServerInfo(&context, v1::GetServerInfoRequest{}, &info).ok());
  }

  const auto [status, handle] = call.get();
  EXPECT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
  EXPECT_EQ(handle.tier(), v1::CACHE_TIER_COMPILED);
  EXPECT_FALSE(handle.cubin().empty());

  const auto exit_status = daemon.wait_until(sent + std::chrono::milliseconds(kDrainMs));
  ASSERT_TRUE(exit_status.has_value()) << "flashcored still running past the drain deadline";
  ASSERT_TRUE(WIFEXITED(*exit_status)) << "flashcored died of signal " << WTERMSIG(*exit_status);
  EXPECT_EQ(WEXITSTATUS(*exit_status), 0);
}

// SIGHUP never stops the daemon: it re-reads the config and applies the log
// level; a config that no longer loads is reported and the running one kept.
TEST(SighupTest, ReloadsTheLogLevelAndKeepsServing) {
  ScratchDir dir;
  const auto config = dir / "flashcored.toml";
  const auto log = dir / "daemon.log";
  auto write_config = [&](const std::string& text) { std::ofstream(config) << text; };
  write_config("log_level = \"warn\"\n");

  // The log (stdout and stderr) to a file, and an environment without FLASHCORE_* (which would
  // override the file's log level).
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e)
    if (std::string(*e).rfind("FLASHCORE_", 0) != 0) env_strings.emplace_back(*e);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv = {FLASHCORE_DAEMON_PATH, "--config", config.string(), "--listen",
                                   "127.0.0.1:0", "--port-file", (dir / "port").string(),
                                   "--cache-dir", (dir / "cache").string(),
                                   "--tuning-db", (dir / "tuning.db").string()};
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  ASSERT_EQ(posix_spawn(&pid, args[0], &actions, nullptr, args.data(), envp.data()), 0);
  posix_spawn_file_actions_destroy(&actions);
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      if (pid > 0 && waitpid(pid, nullptr, WNOHANG) == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
      }
    }
  } reaper{pid};

  const int port = wait_for_port(dir / "port", Clock::now() + std::chrono::seconds(20));
  ASSERT_GT(port, 0) << "no port file from flashcored";
  auto stub = v1::FlashCore::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  auto log_text = [&] {
    std::ifstream in(log);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  auto wait_for_log = [&](const std::string& needle) {
    for (int i = 0; i < 250; ++i) {
      if (log_text().find(needle) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  };

  write_config("log_level = \"info\"\n");
  ASSERT_EQ(kill(pid, SIGHUP), 0);
  EXPECT_TRUE(wait_for_log("log level now info")) << log_text();
  v1::ServerInfo info;
  EXPECT_TRUE(server_info(*stub, &info).ok()) << "not serving after SIGHUP";

  write_config("no_such_setting = 1\n");
  ASSERT_EQ(kill(pid, SIGHUP), 0);
  EXPECT_TRUE(wait_for_log("config not reloaded")) << log_text();
  EXPECT_TRUE(wait_for_log("no_such_setting")) << log_text();
  EXPECT_TRUE(server_info(*stub, &info).ok()) << "not serving after a bad reload";
  EXPECT_EQ(waitpid(pid, nullptr, WNOHANG), 0) << "flashcored exited on SIGHUP";

  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  reaper.pid = -1;
  ASSERT_TRUE(WIFEXITED(status)) << "died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// A tuning database the daemon cannot trust stops the start (exit 1) with a
// message naming the file and how to move it aside; the file is left as it
// was (a 0-byte file stays 0 bytes, a foreign one keeps its bytes).
TEST(StartTest, AnUntrustedTuningDatabaseStopsTheDaemonAndIsLeftAlone) {
  for (const std::string contents : {std::string(), std::string("not sqlite at all\n")}) {
    ScratchDir dir;
    const auto db = dir / "tuning.db";
    const auto log = dir / "daemon.log";
    std::ofstream(db, std::ios::binary) << contents;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::vector<std::string> argv = {FLASHCORE_DAEMON_PATH, "--listen", "127.0.0.1:0",
                                     "--cache-dir", (dir / "cache").string(), "--tuning-db",
                                     db.string()};
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    pid_t pid = -1;
    ASSERT_EQ(posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    int status = 0;
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (waitpid(pid, &status, WNOHANG) != pid) {
      if (Clock::now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        FAIL() << "flashcored kept running on an untrusted tuning database";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 1);
    std::ifstream in(log);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(text.find(db.string()), std::string::npos) << text;
    EXPECT_NE(text.find("move it aside"), std::string::npos) << text;
    std::ifstream again(db, std::ios::binary);
    const std::string after((std::istreambuf_iterator<char>(again)), std::istreambuf_iterator<char>());
    EXPECT_EQ(after, contents) << "the refused file was changed";
  }
}

}  // namespace
}  // namespace flashcore
