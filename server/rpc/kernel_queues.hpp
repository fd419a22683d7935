// Compile and GetKernel through gRPC's completion-queue API (issue 17): the
// calls a client makes for every kernel it launches, whose common answer is
// a memory hit. N completion queues, one polling thread each; every queue
// keeps kRequestsPerMethod calls of each method asked for, and its thread
// answers a call where it read it: authorization, admission, parsing and a
// hit all run on that thread, and the answer's Finish is queued from it, so
// a hit changes threads nowhere in the daemon. (gRPC 1.51's callback API
// runs a handler and completes its Finish on other threads: on the GPU box's
// 16 cores a server that does nothing answered a 50 KB GetKernel in 137-185
// us through it and in 84-101 us through one polling thread per queue;
// bench/RESULTS.md section 4.) A Compile that misses memory goes on as
// before: the service's callback answers from the compile pool's thread.
//
// Each call does exactly what the callback methods did (same roles, same
// admission slot, same statuses through bounded_status, released before
// Finish), and a call that ends early (client gone, deadline, drain)
// cancels the service's PendingCall, as CallReactor does.
//
// Lifecycle: construct before the builder's BuildAndStart (it adds the
// queues), start() after it, stop() only after the server's Shutdown has
// returned. A Finish on a queue that was shut down aborts the process, so
// stop() first waits until no call object is left (asked-for calls come
// back failed once the server shuts down, cancelled ones once the service
// has answered them), and only then shuts the queues down and joins the
// threads.
#pragma once

#include <grpcpp/completion_queue.h>
#include <grpcpp/server_builder.h>

#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "rpc/flashcore_service.hpp"

namespace flashcore::rpc {

class KernelQueues {
 public:
  // Adds `queues` completion queues to `builder` (0: default_queues()).
  // `rpc` is registered on the same builder and outlives this.
  KernelQueues(FlashCoreService& rpc, grpc::ServerBuilder& builder, size_t queues);
  ~KernelQueues();  // stop()
  KernelQueues(const KernelQueues&) = delete;
  KernelQueues& operator=(const KernelQueues&) = delete;

  // Once the server has started: asks for the first calls on every queue and
  // starts its polling thread.
  void start();
  // Once the server's Shutdown has returned (it fails the calls asked for and
  // cancels those still running at its deadline): waits for every call
  // object to end, then shuts the queues down, drains them and joins their
  // threads. Idempotent.
  void stop();
  // Whether every call object has ended. Never while the server serves:
  // from start() on, every queue keeps calls of each method asked for until
  // the server's Shutdown fails them. So true means that Shutdown has begun
  // and that no Compile or GetKernel call is left here (arrived, answering
  // or finishing).
  bool idle();

  size_t queues() const { return queues_.size(); }
  // min(4, hardware threads), at least 1: a hit takes one polling thread
  // for its whole answer, so a few queues serve concurrent clients without
  // taking every core from the compile pool.
  static size_t default_queues();
  // Calls of each method each queue keeps asked for. A call is asked for
  // again as soon as one arrives, so this only covers arrivals on one queue
  // faster than its thread gets back to Next.
  static constexpr int kRequestsPerMethod = 8;

 private:
  class Call;
  class CompileCall;
  class GetKernelCall;

  struct Queue {
    std::unique_ptr<grpc::ServerCompletionQueue> cq;
    std::thread thread;
  };

  // The next call of `CallType`'s method on `cq`; nothing once stopping.
  template <typename CallType>
  void ask(grpc::ServerCompletionQueue& cq);
  void poll(grpc::ServerCompletionQueue& cq);
  void call_ended();

  FlashCoreService& rpc_;
  std::vector<Queue> queues_;
  std::mutex mutex_;
  std::condition_variable idle_;
  size_t calls_ = 0;  // call objects alive: asked for, answering, or finishing
  bool started_ = false;
  bool stopping_ = false;
  bool stopped_ = false;
};

}  // namespace flashcore::rpc
