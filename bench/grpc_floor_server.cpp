// The floor under any gRPC daemon's cache hit: a minimal server whose
// GetKernel answers every request with the same KernelHandle (a cubin of
// --bytes bytes, nothing looked up), through gRPC's callback API, its
// completion-queue API with one polling thread per queue answering where the
// request was read (as flashcored serves Compile and GetKernel), or that with
// an unused callback service beside it (as flashcored's other methods are:
// async+callback). hit_latency_bench
// --floor NAME=ADDRESS times it beside the daemon and Redis
// (bench/RESULTS.md §4); run_hit_latency_bench.sh with FLOOR=1 starts them.
//
//   grpc_floor_server --api callback|async|async+callback --bytes 50184 --port-file FILE
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "flashcore/v1/flashcore.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace v1 = flashcore::v1;

namespace {

v1::KernelHandle handle_of(size_t bytes) {
  v1::KernelHandle handle;
  handle.set_key(std::string(64, 'f'));
  handle.set_lowered_name("_ZN9flashcore13attention_fwdINS_6fp16_tELi128ELb0EEEvNS_15AttentionParamsE");
  handle.set_cubin(std::string(bytes, '\x7f'));
  return handle;
}

class CallbackFloor final : public v1::FlashCore::CallbackService {
 public:
  explicit CallbackFloor(size_t bytes) : handle_(handle_of(bytes)) {}
  grpc::ServerUnaryReactor* GetKernel(grpc::CallbackServerContext* context,
                                      const v1::GetKernelRequest*,
                                      v1::KernelHandle* response) override {
    *response = handle_;
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const v1::KernelHandle handle_;
};

// One GetKernel in flight on a completion queue: asked for, then answered.
struct AsyncCall {
  AsyncCall(v1::FlashCore::AsyncService& service, grpc::ServerCompletionQueue& queue)
      : responder(&context) {
    service.RequestGetKernel(&context, &request, &responder, &queue, &queue, this);
  }
  grpc::ServerContext context;
  v1::GetKernelRequest request;
  v1::KernelHandle response;
  grpc::ServerAsyncResponseWriter<v1::KernelHandle> responder;
  bool answered = false;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"a minimal gRPC GetKernel server: the floor under a cache hit"};
  std::string api = "callback", port_file;
  size_t bytes = 50184;
  int queues = 1;
  app.add_option("--api", api, "gRPC server API")
      ->check(CLI::IsMember({"callback", "async", "async+callback"}))
      ->capture_default_str();
  app.add_option("--bytes", bytes, "cubin bytes in every answer")->capture_default_str();
  app.add_option("--queues", queues, "async: completion queues, one polling thread each")
      ->capture_default_str();
  app.add_option("--port-file", port_file, "write the bound port here")->required();
  CLI11_PARSE(app, argc, argv);

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  CallbackFloor callback(bytes);
  v1::FlashCore::AsyncService async;
  // async+callback: GetKernel as with async, plus a callback service that no
  // call uses (as flashcored's other methods are): registering any callback
  // method starts gRPC 1.51's callback threads, which poll the connections too.
  grpc::health::v1::Health::CallbackService unused_callback_service;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
  if (api == "callback") {
    builder.RegisterService(&callback);
  } else {
    if (api == "async+callback") builder.RegisterService(&unused_callback_service);
    builder.RegisterService(&async);
    for (int i = 0; i < queues; ++i) cqs.push_back(builder.AddCompletionQueue());
  }
  auto server = builder.BuildAndStart();
  if (!server) return 1;
  const v1::KernelHandle handle = handle_of(bytes);
  std::vector<std::thread> pollers;
  for (auto& cq : cqs)
    pollers.emplace_back([&async, &handle, queue = cq.get()] {
      for (int i = 0; i < 8; ++i) new AsyncCall(async, *queue);
      void* tag = nullptr;
      bool ok = false;
      while (queue->Next(&tag, &ok)) {
        auto* call = static_cast<AsyncCall*>(tag);
        if (!ok || call->answered) {
          delete call;
          continue;
        }
        new AsyncCall(async, *queue);  // the next request, before answering this one
        call->response = handle;
        call->answered = true;
        call->responder.Finish(call->response, grpc::Status::OK, call);
      }
    });
  std::ofstream(port_file) << port << "\n";
  int received = 0;
  sigwait(&signals, &received);
  server->Shutdown();
  for (auto& cq : cqs) cq->Shutdown();
  for (auto& poller : pollers) poller.join();
  return 0;
}
