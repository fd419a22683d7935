// The steps every unary call that waits on the service shares: the call was
// admitted (it holds one of the service's in-flight slots); the service's
// pending operation answers through a callback, which fills the response
// and finishes; a cancelled call (client gone, deadline, drain) cancels the
// operation, whose callback then finishes it with CANCELLED. Whichever
// comes first finishes the call, once: the slot goes back before Finish, so
// a client that has its answer never finds the slot still taken.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>

#include "common/result.hpp"
#include "rpc/translate.hpp"
#include "service/service.hpp"

namespace flashcore::rpc {

class CallReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit CallReactor(service::Service& service) : service_(service) {}

  // The service's answer to the call: a refusal finishes it now; an
  // operation in flight is cancelled with the call.
  void follow(Result<std::shared_ptr<service::PendingCall>> pending) {
    if (!pending) {
      finish(to_grpc_status(pending.error()));
      return;
    }
    std::lock_guard lock(mutex_);
    pending_ = std::move(pending).value();
  }

  // Once; after it, OnDone may delete this.
  void finish(const grpc::Status& status) {
    {
      std::lock_guard lock(mutex_);
      if (finished_) return;
      finished_ = true;
    }
    service_.release();
    Finish(bounded_status(status));
  }

  void OnCancel() override {
    std::shared_ptr<service::PendingCall> pending;
    {
      std::lock_guard lock(mutex_);
      pending = pending_;
    }
    // Outside the lock: the operation's callback finishes the call.
    if (pending) pending->cancel();
    else finish(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled"));
  }

  void OnDone() override { delete this; }

 private:
  service::Service& service_;  // outlives the call: the server drains before it goes
  std::mutex mutex_;
  bool finished_ = false;
  std::shared_ptr<service::PendingCall> pending_;
};

}  // namespace flashcore::rpc
