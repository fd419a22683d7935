// The drain (app/drain): a call that gRPC holds but the daemon does not
// serve ends once the daemon's own calls have, not at the drain's or the
// client's deadline; the daemon's own calls still finish first. The call
// here is a server-reflection stream its client keeps open: the call that
// motivated this (a GetKernel stranded in gRPC 1.51's pending list by a
// race with Shutdown, app/drain.hpp) cannot be made without reaching into
// gRPC, and it is the same to the drain.
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;
using namespace test_support;
using namespace std::chrono_literals;

// A reflection stream that sends nothing: gRPC serves it for the daemon,
// which never sees it.
class HeldStream {
 public:
  HeldStream(const std::shared_ptr<grpc::Channel>& channel, std::chrono::seconds deadline)
      : stub_(channel) {
    context_.set_deadline(std::chrono::system_clock::now() + deadline);
    call_ = stub_.PrepareCall(
        &context_, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq_);
    call_->StartCall(tag(1));
    started_ = next() == tag(1) && ok_;
  }
  ~HeldStream() {
    if (!finished_) {
      context_.TryCancel();
      finish();
    }
    cq_.Shutdown();
    void* ignored = nullptr;
    while (cq_.Next(&ignored, &ok_)) {
    }
  }
  bool started() const { return started_; }
  // Blocks until the stream has ended.
  grpc::Status finish() {
    grpc::Status status;
    call_->Finish(&status, tag(2));
    next();
    finished_ = true;
    return status;
  }

 private:
  static void* tag(intptr_t n) { return reinterpret_cast<void*>(n); }
  void* next() {
    void* got = nullptr;
    cq_.Next(&got, &ok_);
    return got;
  }

  grpc::GenericStub stub_;
  grpc::ClientContext context_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  bool ok_ = false;
  bool started_ = false;
  bool finished_ = false;
};

class DrainTest : public TemplatesDaemonTest {};

TEST_F(DrainTest, AStreamTheDaemonDoesNotServeEndsOnceTheDaemonHoldsNoCall) {
  auto daemon = start_daemon(config(kSmallAttentionTemplate));
  ASSERT_NE(daemon, nullptr);
  HeldStream stream(channel_to(*daemon), 120s);
  ASSERT_TRUE(stream.started());

  const auto start = std::chrono::steady_clock::now();
  daemon->shutdown(60s);
  daemon->wait();
  // It used to wait for the drain's deadline (60 s; the stream's is later).
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
  const grpc::Status status = stream.finish();
  EXPECT_TRUE(ended_by_shutdown(status)) << status.error_code() << ": " << status.error_message();
}

// The same stream beside a Compile miss in flight: the miss is answered
// (the drain waited for it), then the stream is refused.
TEST_F(DrainTest, TheDaemonsOwnCallsFinishBeforeTheRestIsCancelled) {
  auto daemon = start_daemon(config(slow_attention_template(500)));
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));
  v1::ServerInfo info;
  ASSERT_TRUE(server_info(*stub, &info).ok());  // connected
  HeldStream stream(channel_to(*daemon), 120s);
  ASSERT_TRUE(stream.started());
  auto miss = std::async(std::launch::async, [&stub] {
    v1::KernelHandle handle;
    return compile(*stub, quick_request(), &handle);
  });
  std::this_thread::sleep_for(100ms);
  ASSERT_EQ(miss.wait_for(0s), std::future_status::timeout) << "the compile finished too soon";

  const auto start = std::chrono::steady_clock::now();
  daemon->shutdown(60s);
  daemon->wait();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
  const grpc::Status answered = miss.get();
  EXPECT_TRUE(answered.ok()) << answered.error_code() << ": " << answered.error_message();
  const grpc::Status refused = stream.finish();
  EXPECT_TRUE(ended_by_shutdown(refused))
      << refused.error_code() << ": " << refused.error_message();
}

}  // namespace
}  // namespace flashcore
