#include "rpc/kernel_queues.hpp"

#include <grpcpp/server_context.h>
#include <grpcpp/support/async_unary_call.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <string_view>
#include <utility>

#include "rpc/handle_wire.hpp"
#include "rpc/translate.hpp"

namespace flashcore::rpc {

// One call of one method on one queue, from being asked for until gRPC has
// handed back both its Finish and its done notification (the order of the
// two is gRPC's). Only the queue's polling thread deletes it; the service's
// callback may finish it from another thread, and touches nothing of it
// after Finish.
class KernelQueues::Call {
 public:
  enum class Event { arrived, finished, done };
  // What a queue's Next returns: an event of a call.
  struct Tag {
    Call* call;
    Event event;
  };

  Call(KernelQueues& owner, grpc::ServerCompletionQueue& cq)
      : owner_(owner), service_(owner.rpc_.service()), cq_(cq) {
    context_.AsyncNotifyWhenDone(&done_);  // before the call is asked for
  }
  virtual ~Call() = default;

  // On the queue's polling thread.
  void on_event(Event event, bool ok) {
    switch (event) {
      case Event::arrived:
        if (!ok) return end();  // the server is shutting down: no call came
        ask_next();  // keep the queue's count of asked-for calls before answering
        answer();
        return;
      case Event::done:
        // IsCancelled is readable only once this has come.
        if (context_.IsCancelled()) cancelled();
        break;
      case Event::finished:
        break;
    }
    if (--events_left_ == 0) end();
  }

 protected:
  // The call has arrived: answer it, or hand it to the service.
  virtual void answer() = 0;
  virtual void ask_next() = 0;
  // The client has gone, the deadline passed or the drain cancelled it.
  virtual void cancelled() { finish(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled")); }

  // Once (later calls do nothing): gives the in-flight slot back if the
  // call holds one, then Finish; `this` may be deleted as soon as Finish
  // is queued, so nothing follows it.
  void finish(const grpc::Status& status) {
    {
      std::lock_guard lock(mutex_);
      if (finished_) return;
      finished_ = true;
    }
    if (admitted_) service_.release();
    if (status.ok()) responder_.Finish(response_, status, &finished_tag_);
    else responder_.FinishWithError(bounded_status(status), &finished_tag_);
  }

  // Takes an in-flight slot; finish() gives it back.
  Status admit() {
    Status admitted = service_.admit();
    admitted_ = admitted.ok();
    return admitted;
  }

  KernelQueues& owner_;
  service::Service& service_;
  grpc::ServerCompletionQueue& cq_;
  grpc::ServerContext context_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  grpc::ServerAsyncResponseWriter<grpc::ByteBuffer> responder_{&context_};
  Tag arrived_{this, Event::arrived};
  std::mutex mutex_;

 private:
  void end() {
    KernelQueues& owner = owner_;
    delete this;
    owner.call_ended();
  }

  Tag finished_tag_{this, Event::finished};
  Tag done_{this, Event::done};
  int events_left_ = 2;    // finished and done; the polling thread's alone
  bool finished_ = false;  // under mutex_
  bool admitted_ = false;  // set before anything can finish the call
};

// GetKernel: a lookup in the cache's tiers, answered on the polling thread.
class KernelQueues::GetKernelCall final : public Call {
 public:
  using Call::Call;

  void ask() {
    owner_.rpc_.RequestGetKernel(&context_, &request_, &responder_, &cq_, &cq_, &arrived_);
  }

 private:
  void ask_next() override { owner_.ask<GetKernelCall>(cq_); }

  void answer() override {
    const Status answered = respond();
    finish(answered ? grpc::Status::OK : to_grpc_status(answered.error()));
  }

  // As the callback method did: authorize, admit, parse, look up, write.
  Status respond() {
    auto who = owner_.rpc_.authorize(&context_, auth::Role::read, "GetKernel");
    if (!who) return who.error();
    if (Status admitted = admit(); !admitted) return admitted;
    v1::GetKernelRequest request;
    if (Status read = parse_request(request_, &request, "GetKernel"); !read) return read;
    auto answer = service_.get_kernel(request.key());
    if (!answer) return answer.error();
    const CachedKernel& kernel = *answer->lookup.kernel;
    RuntimeShape shape = kernel.first_shape;
    v1::Layout layout = v1::LAYOUT_UNSPECIFIED;
    if (request.has_problem()) {
      auto requested = parse_shape_for(request.problem(), kernel.spec);
      if (!requested) return requested.error();
      shape = *requested;
      layout = request.problem().layout();
    }
    write_handle(*answer, shape, layout,
                 request.omit_cubin() || request.cached_key() == kernel.key, &response_);
    return ok_status();
  }
};

// Compile: a hit is answered on the polling thread from inside
// service.compile(); a miss from the compile pool's thread when NVRTC is
// done. Either way the service's callback finishes the call, once.
class KernelQueues::CompileCall final : public Call {
 public:
  using Call::Call;

  void ask() {
    owner_.rpc_.RequestCompile(&context_, &request_, &responder_, &cq_, &cq_, &arrived_);
  }

 private:
  void ask_next() override { owner_.ask<CompileCall>(cq_); }

  // As the callback method did: authorize, read, admit, parse, compile.
  void answer() override {
    auto who = owner_.rpc_.authorize(&context_, auth::Role::compile, "Compile");
    if (!who) return finish(to_grpc_status(who.error()));
    v1::KernelRequest request;
    if (Status read = parse_request(request_, &request, "Compile"); !read)
      return finish(to_grpc_status(read.error()));
    if (Status admitted = admit(); !admitted) return finish(to_grpc_status(admitted.error()));
    const bool tuned = request.use_tuned_config();
    const std::string_view arch = service_.options().default_arch;
    auto parsed = tuned ? parse_tuning_target(request, arch) : parse_kernel_request(request, arch);
    if (!parsed) return finish(to_grpc_status(parsed.error()));
    // A client that holds this kernel gets everything but the cubin.
    auto done = [this, shape = parsed->shape, layout = parsed->layout,
                 omit = request.omit_cubin(),
                 cached = parsed->cached_key](Result<service::KernelAnswer> answer) {
      if (!answer) return finish(to_grpc_status(answer.error()));
      write_handle(*answer, shape, layout, omit || answer->lookup.kernel->key == cached,
                   &response_);
      finish(grpc::Status::OK);
    };
    auto pending = service_.compile(*who, std::move(parsed).value(), tuned, std::move(done));
    if (!pending) return finish(to_grpc_status(pending.error()));
    std::lock_guard lock(mutex_);
    pending_ = std::move(pending).value();
  }

  // The service's callback answers CANCELLED (unless its answer came first)
  // and finishes the call; outside the lock, since it may run inline.
  void cancelled() override {
    std::shared_ptr<service::PendingCall> pending;
    {
      std::lock_guard lock(mutex_);
      pending = pending_;
    }
    if (pending) pending->cancel();
    else Call::cancelled();
  }

  std::shared_ptr<service::PendingCall> pending_;  // under mutex_
};

KernelQueues::KernelQueues(FlashCoreService& rpc, grpc::ServerBuilder& builder, size_t queues)
    : rpc_(rpc) {
  queues_.resize(queues == 0 ? default_queues() : queues);
  for (auto& queue : queues_) queue.cq = builder.AddCompletionQueue();
}

KernelQueues::~KernelQueues() { stop(); }

size_t KernelQueues::default_queues() {
  return std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 4);
}

template <typename CallType>
void KernelQueues::ask(grpc::ServerCompletionQueue& cq) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    ++calls_;
  }
  (new CallType(*this, cq))->ask();
}

void KernelQueues::start() {
  for (auto& queue : queues_) {
    for (int i = 0; i < kRequestsPerMethod; ++i) {
      ask<CompileCall>(*queue.cq);
      ask<GetKernelCall>(*queue.cq);
    }
    queue.thread = std::thread([this, cq = queue.cq.get()] { poll(*cq); });
  }
  std::lock_guard lock(mutex_);
  started_ = true;  // after the asks: idle() is never true while serving
}

void KernelQueues::poll(grpc::ServerCompletionQueue& cq) {
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
    auto* event = static_cast<Call::Tag*>(tag);
    event->call->on_event(event->event, ok);
  }
}

void KernelQueues::call_ended() {
  std::lock_guard lock(mutex_);
  if (--calls_ == 0) idle_.notify_all();
}

bool KernelQueues::idle() {
  std::lock_guard lock(mutex_);
  return started_ && calls_ == 0;
}

void KernelQueues::stop() {
  {
    std::unique_lock lock(mutex_);
    if (stopped_) return;
    stopping_ = true;
    // Every call ends once the server has shut down; one that does not is a
    // bug, and waiting on it beats the abort a Finish on a shut-down queue is.
    while (!idle_.wait_for(lock, std::chrono::seconds(5), [this] { return calls_ == 0; }))
      spdlog::warn("shutdown: waiting for {} Compile/GetKernel call(s) to end", calls_);
    stopped_ = true;
  }
  for (auto& queue : queues_) queue.cq->Shutdown();
  void* tag = nullptr;
  bool ok = false;
  for (auto& queue : queues_) {
    if (queue.thread.joinable()) queue.thread.join();
    else
      while (queue.cq->Next(&tag, &ok)) {
      }  // never started: nothing was asked for, nothing comes
  }
}

}  // namespace flashcore::rpc
