// The real flashcored binary on a shared box: SIGHUP reloads the token file
// (a bad one keeps the running set), a listener beyond loopback is refused
// unprotected, and running out of file descriptors no longer ends accepting.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>
#include <vector>

#include "common/digest.hpp"
#include "daemon_process.hpp"
#include "flashcore/client.hpp"
#include "scratch_dir.hpp"

namespace flashcore {
namespace {

using namespace std::chrono_literals;
using rpc_testing::DaemonProcess;
using Clock = std::chrono::steady_clock;

Result<client::Client> connect_to(const std::string& address, const std::string& token,
                                  std::chrono::milliseconds timeout = 5000ms) {
  client::ConnectOptions options;
  options.address = address;
  options.token = token;
  options.connect_timeout = timeout;
  options.call_timeout = std::max<std::chrono::milliseconds>(timeout, 10000ms);
  return client::Client::connect(options);
}

TEST(SharedBoxProcessTest, SighupReloadsTheTokenFileAndKeepsTheOldSetOnABadOne) {
  test_support::ScratchDir dir;
  const auto tokens = dir / "tokens";
  std::ofstream(tokens) << "alice read " << sha256_hex("alice-token") << "\n";
  DaemonProcess daemon(dir.path(), {{"--auth-tokens", tokens.string(), "--log-level", "info"}});
  const std::string address = daemon.address();
  ASSERT_NE(address, "127.0.0.1:0") << daemon.log_text();

  auto alice = connect_to(address, "alice-token");
  ASSERT_TRUE(alice.ok());
  EXPECT_TRUE(alice->server_info().ok());

  std::ofstream(tokens, std::ios::trunc) << "# alice left\nbob compile " << sha256_hex("bob-token")
                                         << "\n";
  daemon.signal(SIGHUP);
  ASSERT_TRUE(daemon.wait_for_log("auth tokens reloaded: 1 client(s)")) << daemon.log_text();
  auto refused = alice->server_info();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::unauthenticated);
  auto bob = connect_to(address, "bob-token");
  ASSERT_TRUE(bob.ok());
  EXPECT_TRUE(bob->server_info().ok());

  std::ofstream(tokens, std::ios::trunc) << "bob compile not-a-hash\n";
  daemon.signal(SIGHUP);
  ASSERT_TRUE(daemon.wait_for_log("auth tokens not reloaded, keeping the running set"))
      << daemon.log_text();
  EXPECT_TRUE(daemon.wait_for_log("tokens:1: the hash must be 64 hex characters"));
  EXPECT_TRUE(bob->server_info().ok()) << "the running set was not kept";
  EXPECT_FALSE(daemon.exited()) << "flashcored exited on SIGHUP";

  daemon.signal(SIGTERM);
  auto status = daemon.wait_exit(60s);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0);
}

TEST(SharedBoxProcessTest, RefusesToListenBeyondLoopbackUnprotectedUnlessInsecure) {
  test_support::ScratchDir dir;
  {
    DaemonProcess daemon(dir.path(), {{"--listen", "0.0.0.0:0"}});
    auto status = daemon.wait_exit(60s);
    ASSERT_TRUE(status.has_value()) << "flashcored served 0.0.0.0 without auth and TLS";
    EXPECT_EQ(WEXITSTATUS(*status), 1);
    EXPECT_NE(daemon.log_text().find("refusing to listen on 0.0.0.0:0"), std::string::npos)
        << daemon.log_text();
  }
  DaemonProcess daemon(dir.path(), {{"--listen", "0.0.0.0:0", "--insecure"}});
  ASSERT_GT(daemon.wait_for_port(), 0) << daemon.log_text();
  EXPECT_NE(daemon.log_text().find("INSECURE: listening on 0.0.0.0:0"), std::string::npos)
      << daemon.log_text();
}

// Opens `count` TCP connections to the port without speaking HTTP/2 (each one
// takes a descriptor in the daemon until closed).
std::vector<int> hog_connections(int port, int count) {
  std::vector<int> fds;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; i < count; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) break;
    ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);  // EINPROGRESS is fine
    fds.push_back(fd);
  }
  return fds;
}

// What happens to a daemon whose descriptors ran out and then freed up:
// true when a fresh client is served again afterwards.
struct ExhaustionOutcome {
  bool hit_limit = false;
  bool served_after = false;
  std::string log;
};

ExhaustionOutcome exhaust_descriptors(bool guard) {
  test_support::ScratchDir dir;
  constexpr int kLimit = 96;
  DaemonProcess::Options options;
  options.args = {"--log-level", "info"};
  options.nofile = kLimit;
  if (!guard) options.env.push_back("FLASHCORE_ACCEPT_GUARD=off");
  DaemonProcess daemon(dir.path(), options);
  ExhaustionOutcome outcome;
  const int port = daemon.wait_for_port();
  if (port == 0) {
    ADD_FAILURE() << "flashcored did not start under ulimit -n " << kLimit << ": "
                  << daemon.log_text();
    return outcome;
  }
  const std::string address = "127.0.0.1:" + std::to_string(port);
  {
    auto before = connect_to(address, "");
    EXPECT_TRUE(before.ok() && before->server_info().ok()) << "not serving before the test";
  }
  std::printf("descriptors before: %zu of %d\n", daemon.open_fds(), kLimit);
  std::vector<int> hogs = hog_connections(port, 3 * kLimit);
  const auto deadline = Clock::now() + 20s;
  while (Clock::now() < deadline && !outcome.hit_limit) {
    const std::string log = daemon.log_text();
    outcome.hit_limit = log.find("Failed accept4: Too many open files") != std::string::npos ||
                        log.find("out of file descriptors") != std::string::npos;
    std::this_thread::sleep_for(20ms);
  }
  std::printf("descriptors at the limit: %zu of %d\n", daemon.open_fds(), kLimit);
  if (guard && outcome.hit_limit) {
    // Meanwhile a caller hears at once that it cannot be served now.
    const auto asked = Clock::now();
    auto during = connect_to(address, "", 3000ms);
    const bool served = during.ok() && during->server_info().ok();
    std::printf("a call while out of descriptors: %s after %lld ms\n",
                served ? "served" : "refused",
                static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                           Clock::now() - asked)
                                           .count()));
  }
  for (int fd : hogs) ::close(fd);
  // Descriptors free up as the daemon sees the connections close.
  for (int i = 0; i < 200 && daemon.open_fds() > kLimit / 2; ++i)
    std::this_thread::sleep_for(20ms);
  std::printf("descriptors after closing: %zu of %d\n", daemon.open_fds(), kLimit);
  for (int attempt = 0; attempt < 3 && !outcome.served_after; ++attempt) {
    auto after = connect_to(address, "", 5000ms);
    outcome.served_after = after.ok() && after->server_info().ok();
  }
  outcome.log = daemon.log_text();
  return outcome;
}

// First the failure, as gRPC 1.51 has it: after one EMFILE its listener is
// gone for good. Then the same with the daemon's accept guard: it serves again.
TEST(SharedBoxProcessTest, KeepsAcceptingOnceDescriptorsFreeUp) {
  const ExhaustionOutcome bare = exhaust_descriptors(/*guard=*/false);
  ASSERT_TRUE(bare.hit_limit) << "the daemon never ran out of descriptors:\n" << bare.log;
  EXPECT_FALSE(bare.served_after)
      << "without the guard the listener survived EMFILE: this gRPC handles it itself, and the "
         "guard may no longer be needed";

  const ExhaustionOutcome guarded = exhaust_descriptors(/*guard=*/true);
  ASSERT_TRUE(guarded.hit_limit) << "the daemon never ran out of descriptors:\n" << guarded.log;
  EXPECT_TRUE(guarded.served_after) << "not serving after descriptors freed up:\n" << guarded.log;
  EXPECT_EQ(guarded.log.find("Failed accept4"), std::string::npos) << guarded.log;
}

}  // namespace
}  // namespace flashcore
