// The EvalWorker gRPC service over an Evaluator, and the server a worker
// process runs on its Unix domain socket (DESIGN.md §4).
//
// A fault (CUDA error after a launch) is answered INTERNAL with the CUDA
// error's text; the service then sets the stop latch, and the process exits
// with code 3 once the reply is out, so the daemon starts a fresh worker.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>

#include "common/grpc_code.hpp"
#include "common/result.hpp"
#include "eval/evaluator.hpp"
#include "flashcore/v1/worker.grpc.pb.h"

namespace flashcore::eval {
enum class StopReason { requested, context_lost };

// Why and when a worker stops serving; the first reason set wins. Shared by
// the service (context lost), a signal-waiting thread and main.
class StopLatch {
 public:
  void set(StopReason reason);
  StopReason wait();
  std::optional<StopReason> reason() const;

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::optional<StopReason> reason_;
};

class WorkerService final : public v1::EvalWorker::Service {
 public:
  WorkerService(Evaluator& evaluator, std::shared_ptr<StopLatch> latch);

  grpc::Status Evaluate(grpc::ServerContext* context, const v1::EvaluateRequest* request,
                        v1::EvaluateResponse* response) override;
  grpc::Status Info(grpc::ServerContext* context, const v1::WorkerInfoRequest* request,
                    v1::WorkerInfo* response) override;

 private:
  Evaluator& evaluator_;
  std::shared_ptr<StopLatch> latch_;
};

class WorkerServer {
 public:
  // Serves `evaluator` on unix:`socket`, created with mode 0600 (a stale
  // socket file there is replaced). The path must fit a sockaddr_un (107 bytes).
  static Result<std::unique_ptr<WorkerServer>> start(const std::filesystem::path& socket,
                                                     Evaluator& evaluator,
                                                     std::shared_ptr<StopLatch> latch);
  ~WorkerServer();  // shutdown(0) if still serving
  WorkerServer(const WorkerServer&) = delete;
  WorkerServer& operator=(const WorkerServer&) = delete;

  // Stops accepting calls; calls in flight get until `drain` (their
  // evaluation sees the cancellation between phases), then the socket file
  // is removed. Idempotent.
  void shutdown(std::chrono::milliseconds drain);

 private:
  WorkerServer(std::filesystem::path socket, std::unique_ptr<WorkerService> service,
               std::unique_ptr<grpc::Server> server);
  std::filesystem::path socket_;
  std::unique_ptr<WorkerService> service_;
  std::unique_ptr<grpc::Server> server_;
  bool shut_down_ = false;
};

}  // namespace flashcore::eval
