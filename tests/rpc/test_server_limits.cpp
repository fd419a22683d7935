// Limits and failures: message size, calls in flight, NVRTC errors, and the
// GPU precondition.
#include <gtest/gtest.h>

#include <future>
#include <string>
#include <thread>
#include <vector>

#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;
using namespace test_support;

class ServerLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override { write_attention_templates(templates_, kSmallAttentionTemplate); }

  DaemonConfig config() const {
    DaemonConfig config = loopback_config(cache_.path());
    config.templates_dir = templates_.path();
    return config;
  }

  ScratchDir templates_;
  ScratchDir cache_;
};

TEST_F(ServerLimitsTest, OversizedRequestIsResourceExhausted) {
  DaemonConfig small = config();
  small.max_message_bytes = size_t{1} << 20;
  auto daemon = start_daemon(small);
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));

  v1::KernelRequest request = quick_request();
  request.set_template_id(std::string(size_t{2} << 20, 'x'));
  v1::KernelHandle handle;
  const grpc::Status status = compile(*stub, request, &handle, 30);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();

  // The daemon is unharmed and still answers.
  v1::ServerInfo info;
  EXPECT_TRUE(server_info(*stub, &info).ok());
}

TEST_F(ServerLimitsTest, CallsPastTheConcurrencyLimitAreRefused) {
  // Each compile takes a good fraction of a second: the calls overlap
  // however the threads get scheduled.
  write_attention_templates(templates_, slow_attention_template(300));
  DaemonConfig one = config();
  one.max_concurrent_rpcs = 1;
  auto daemon = start_daemon(one);
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));

  // Distinct uncached kernels: each admitted call holds its slot for a whole
  // NVRTC compile, while the others arrive.
  std::vector<std::future<grpc::Status>> calls;
  for (int block_n : {16, 32, 48, 64, 80, 96}) {
    calls.push_back(std::async(std::launch::async, [&stub, block_n] {
      v1::KernelRequest request = quick_request();
      request.mutable_config()->set_block_n(block_n);
      v1::KernelHandle handle;
      return compile(*stub, request, &handle);
    }));
  }
  int ok = 0, busy = 0;
  for (auto& call : calls) {
    const grpc::Status status = call.get();
    if (status.ok()) {
      ++ok;
    } else {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
          << status.error_message();
      EXPECT_EQ(status.error_message(), "server busy: 1 calls in flight");
      ++busy;
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(busy, 1);

  // Slots come back once calls finish.
  v1::ServerInfo info;
  EXPECT_TRUE(server_info(*stub, &info).ok());
}

TEST_F(ServerLimitsTest, CompilesPastTheQueueLimitAreRefused) {
  write_attention_templates(templates_, slow_attention_template(300));
  DaemonConfig narrow = config();
  narrow.compile_threads = 1;
  narrow.max_queued_compiles = 1;
  auto daemon = start_daemon(narrow);
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));

  // One compiling, one waiting; the rest find the queue full.
  std::vector<std::future<grpc::Status>> calls;
  for (int block_n : {16, 32, 48, 64, 80}) {
    calls.push_back(std::async(std::launch::async, [&stub, block_n] {
      v1::KernelRequest request = quick_request();
      request.mutable_config()->set_block_n(block_n);
      v1::KernelHandle handle;
      return compile(*stub, request, &handle);
    }));
  }
  int ok = 0, refused = 0;
  for (auto& call : calls) {
    const grpc::Status status = call.get();
    if (status.ok()) {
      ++ok;
      continue;
    }
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
    EXPECT_NE(status.error_message().find("queue"), std::string::npos) << status.error_message();
    ++refused;
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(refused, 1);
}

TEST_F(ServerLimitsTest, NvrtcFailureIsInternalWithTheLog) {
  write_attention_templates(templates_, kSmallAttentionTemplate +
                                            "\nstatic_assert(flashcore_undeclared_thing_ > 0, \"\");\n");
  auto daemon = start_daemon(config());
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));

  v1::KernelHandle handle;
  const grpc::Status status = compile(*stub, quick_request(), &handle);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
  // The first line says what failed; the NVRTC log follows it.
  const std::string& message = status.error_message();
  const auto newline = message.find('\n');
  ASSERT_NE(newline, std::string::npos) << message;
  EXPECT_NE(message.substr(0, newline).find("attention_fwd"), std::string::npos) << message;
  EXPECT_NE(message.find("flashcore_undeclared_thing_", newline), std::string::npos) << message;
  EXPECT_NE(status.error_details().find("flashcore_undeclared_thing_"), std::string::npos);

  // A failure is not cached: nothing is listed.
  v1::ListKernelsResponse listed;
  ASSERT_TRUE(list_kernels(*stub, 0, "", &listed).ok());
  EXPECT_EQ(listed.kernels_size(), 0);
}

// Peers take at most 8 KiB of trailers by default; a long log must still
// arrive as INTERNAL (cut short), not as a transport error.
TEST_F(ServerLimitsTest, LongNvrtcLogIsCutToFitTheTrailers) {
  std::string broken = kSmallAttentionTemplate;
  for (int i = 0; i < 300; ++i)
    broken += "static_assert(undeclared_name_number_" + std::to_string(i) + " > 0, \"\");\n";
  write_attention_templates(templates_, broken);
  auto daemon = start_daemon(config());
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));

  v1::KernelHandle handle;
  const grpc::Status status = compile(*stub, quick_request(), &handle);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL) << status.error_message();
  EXPECT_NE(status.error_message().find("undeclared_name_number_0"), std::string::npos);
  EXPECT_NE(status.error_message().find("more bytes"), std::string::npos);
}

TEST_F(ServerLimitsTest, TemplatesDirWithoutTheTemplateIsAPreconditionFailure) {
  ScratchDir only_params;
  only_params.write("common/attention_params.cuh", "#pragma once\n");
  DaemonConfig bare = config();
  bare.templates_dir = only_params.path();
  auto daemon = start_daemon(bare);
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));

  v1::ServerInfo info;
  ASSERT_TRUE(server_info(*stub, &info).ok());
  EXPECT_EQ(info.templates_size(), 0);
  v1::KernelHandle handle;
  const grpc::Status status = compile(*stub, quick_request(), &handle);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status.error_message();
}

// A compile still running when the drain deadline passes is cancelled: the
// client hears back at once, and the compile finishing later (its callback
// outliving the call) touches nothing of the call's.
TEST_F(ServerLimitsTest, DrainDeadlineCancelsACompileStillRunning) {
  write_attention_templates(templates_, slow_attention_template(500));
  auto daemon = start_daemon(config());
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));
  v1::ServerInfo info;
  ASSERT_TRUE(server_info(*stub, &info).ok());  // connected

  auto call = std::async(std::launch::async, [&stub] {
    v1::KernelHandle handle;
    return compile(*stub, quick_request(), &handle);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_EQ(call.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  daemon->shutdown(std::chrono::milliseconds(10));
  daemon->wait();
  const grpc::Status status = call.get();
  EXPECT_FALSE(status.ok());
  EXPECT_TRUE(status.error_code() == grpc::StatusCode::CANCELLED ||
              status.error_code() == grpc::StatusCode::UNAVAILABLE)
      << status.error_code() << ": " << status.error_message();
  daemon.reset();  // waits for the orphaned compile
}

TEST(DaemonStartTest, ListenFailureNamesTheAddress) {
  ScratchDir cache;
  DaemonConfig first = loopback_config(cache.path());
  auto holder = start_daemon(first);
  ASSERT_NE(holder, nullptr);
  DaemonConfig clash = first;
  clash.listen_address = "127.0.0.1:" + std::to_string(holder->port());
  auto second = Daemon::start(clash);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, ErrorCode::unavailable);
  EXPECT_NE(second.error().message.find(clash.listen_address), std::string::npos);
}

TEST(DaemonStartTest, WritesThePortFile) {
  ScratchDir dir;
  DaemonConfig config = loopback_config(dir / "cache");
  config.port_file = dir / "port";
  auto daemon = start_daemon(config);
  ASSERT_NE(daemon, nullptr);
  std::ifstream in(config.port_file);
  int port = 0;
  in >> port;
  EXPECT_EQ(port, daemon->port());
  EXPECT_GT(port, 0);
  EXPECT_EQ(daemon->address(), "127.0.0.1:" + std::to_string(port));
}

}  // namespace
}  // namespace flashcore
