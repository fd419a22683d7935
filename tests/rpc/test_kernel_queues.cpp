// Compile and GetKernel on the completion queues (rpc/kernel_queues): hits
// from many clients over several queues, a client that gives up on a
// compile, and shutdown with misses and hits in flight, drained or cut at
// the deadline.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;
using namespace test_support;
using namespace std::chrono_literals;

class KernelQueuesTest : public TemplatesDaemonTest {};

// GetKernel until the first status that is not OK (or `stop`); the count of
// OK answers and that status.
std::pair<int, grpc::Status> get_until_refused(v1::FlashCore::Stub& stub, const std::string& key,
                                               const std::atomic<bool>& stop) {
  v1::GetKernelRequest request;
  request.set_key(key);
  int ok = 0;
  while (!stop) {
    v1::KernelHandle handle;
    grpc::Status status = get_kernel(stub, request, &handle);
    if (!status.ok()) return {ok, status};
    EXPECT_EQ(handle.key(), key);
    EXPECT_FALSE(handle.cubin().empty());
    ++ok;
  }
  return {ok, grpc::Status::OK};
}

TEST_F(KernelQueuesTest, HitsFromManyClientsOnSeveralQueuesAreAnswered) {
  DaemonConfig three = config(kSmallAttentionTemplate);
  three.rpc_queues = 3;
  auto daemon = start_daemon(three);
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));
  v1::KernelHandle compiled;
  ASSERT_TRUE(compile(*stub, quick_request(), &compiled).ok());
  ASSERT_EQ(compiled.tier(), v1::CACHE_TIER_COMPILED);

  // A channel each, so the connections spread over the queues.
  std::vector<std::future<int>> clients;
  for (int c = 0; c < 6; ++c)
    clients.push_back(std::async(std::launch::async, [&, c] {
      auto own = v1::FlashCore::NewStub(channel_to(*daemon));
      int answered = 0;
      for (int i = 0; i < 40; ++i) {
        v1::KernelHandle handle;
        grpc::Status status;
        if ((i + c) % 2 == 0) {
          status = compile(*own, quick_request(), &handle);
        } else {
          v1::GetKernelRequest request;
          request.set_key(compiled.key());
          status = get_kernel(*own, request, &handle);
        }
        EXPECT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
        EXPECT_EQ(handle.tier(), v1::CACHE_TIER_MEMORY);
        EXPECT_EQ(handle.cubin(), compiled.cubin());
        answered += status.ok();
      }
      return answered;
    }));
  for (auto& client : clients) EXPECT_EQ(client.get(), 40);
}

// The client's deadline cancels the call; the service's compile is
// abandoned and the call's in-flight slot comes back, so with one slot the
// next call is admitted.
TEST_F(KernelQueuesTest, AClientThatGivesUpOnACompileGetsItsSlotBack) {
  DaemonConfig one = config(slow_attention_template(500));
  one.max_concurrent_rpcs = 1;
  auto daemon = start_daemon(one);
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));
  v1::ServerInfo info;
  ASSERT_TRUE(server_info(*stub, &info).ok());  // connected

  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 200ms);
  v1::KernelHandle handle;
  const grpc::Status status = stub->Compile(&context, quick_request(), &handle);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();

  // The server hears of the deadline about when the client does.
  grpc::Status admitted;
  for (auto until = std::chrono::steady_clock::now() + 5s;
       std::chrono::steady_clock::now() < until; std::this_thread::sleep_for(20ms)) {
    admitted = server_info(*stub, &info);
    if (admitted.ok()) break;
    EXPECT_EQ(admitted.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  EXPECT_TRUE(admitted.ok()) << admitted.error_message();
}

// Shutdown with two Compile misses in flight and clients looping on
// GetKernel hits, over two queues: every call ends (nothing finishes on a
// queue already shut down, which would abort the process) and the daemon
// goes. `drain` decides whether the misses finish or are cancelled.
void shut_down_with_calls_in_flight(DaemonConfig config, std::chrono::milliseconds drain,
                                    bool misses_finish) {
  config.rpc_queues = 2;
  auto daemon = start_daemon(config);
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));
  v1::KernelHandle compiled;
  ASSERT_TRUE(compile(*stub, quick_request(), &compiled).ok());

  std::vector<std::future<grpc::Status>> misses;
  for (int block_n : {32, 16}) {
    misses.push_back(std::async(std::launch::async, [&stub, block_n] {
      v1::KernelRequest request = quick_request();
      request.mutable_config()->set_block_n(block_n);
      v1::KernelHandle handle;
      return compile(*stub, request, &handle);
    }));
  }
  std::atomic<bool> stop{false};
  std::vector<std::future<std::pair<int, grpc::Status>>> hits;
  for (int c = 0; c < 3; ++c)
    hits.push_back(std::async(std::launch::async, [&] {
      auto own = v1::FlashCore::NewStub(channel_to(*daemon));
      return get_until_refused(*own, compiled.key(), stop);
    }));
  std::this_thread::sleep_for(300ms);
  for (auto& miss : misses)
    EXPECT_EQ(miss.wait_for(0s), std::future_status::timeout) << "a compile finished too soon";

  daemon->shutdown(drain);
  daemon->wait();
  for (auto& miss : misses) {
    const grpc::Status status = miss.get();
    if (misses_finish) EXPECT_TRUE(status.ok()) << status.error_message();
    else EXPECT_TRUE(ended_by_shutdown(status)) << status.error_code() << ": " << status.error_message();
  }
  stop = true;
  for (auto& hit : hits) {
    const auto [answered, status] = hit.get();
    EXPECT_GT(answered, 0);
    EXPECT_TRUE(status.ok() || ended_by_shutdown(status))
        << status.error_code() << ": " << status.error_message();
  }
  daemon.reset();  // waits for the orphaned compiles
}

TEST_F(KernelQueuesTest, ShutdownCancelsCompileMissesAtTheDeadlineWhileHitsRun) {
  shut_down_with_calls_in_flight(config(slow_attention_template(500)), 10ms, false);
}

TEST_F(KernelQueuesTest, ShutdownLetsCompileMissesFinishWithinTheDrainWhileHitsRun) {
  shut_down_with_calls_in_flight(config(slow_attention_template(500)), 60s, true);
}

}  // namespace
}  // namespace flashcore
