// The flashcore.v1.FlashCore service: translation only. Each method
// authorizes the caller, parses its message into the service's request
// type (naming the offending field on bad input), calls the service
// (service/) and writes the answer. Nothing waits on NVRTC or a worker on a
// gRPC thread: the service answers compiles, evaluations and tuning jobs
// through callbacks, from which the calls finish.
//
// Compile and GetKernel, the calls a client makes per kernel it launches,
// are served through gRPC's completion-queue API by rpc/kernel_queues: each
// queue's one polling thread reads a call and answers it where it read it
// (a memory hit never changes threads), which a callback method cannot do
// in gRPC 1.51 (its handler and its Finish each hop to other threads:
// bench/RESULTS.md section 4). The other methods are callback methods.
#pragma once

#include <memory>
#include <string_view>

#include "flashcore/v1/flashcore.grpc.pb.h"
#include "service/service.hpp"

namespace flashcore::rpc {

// Compile and GetKernel, whose answers carry a cubin, are raw async
// methods: rpc/kernel_queues asks for them on its completion queues, parses
// their requests itself and writes the handle with the cubin as a slice of
// the cache entry (rpc/handle_wire), not a copy. The rest are callback
// methods (gRPC serves both kinds in one service). Composed method by method
// rather than on top of CallbackService, whose callback Compile/GetKernel
// would otherwise stay registered; an RPC added to the proto but not here
// fails to compile at its `override` below.
namespace methods {
using S = v1::FlashCore;
using Callbacks = S::WithCallbackMethod_ListKernels<S::WithCallbackMethod_GetServerInfo<
    S::WithCallbackMethod_Validate<S::WithCallbackMethod_Tune<S::WithCallbackMethod_GetTuningResult<
        S::WithCallbackMethod_ListTuningResults<S::WithCallbackMethod_ListTuneJobs<
            S::WithCallbackMethod_CancelTuneJob<S::WithCallbackMethod_ListTuningJobs<
                S::WithCallbackMethod_GetTuningJob<S::WithCallbackMethod_ClearCache<
                    S::WithCallbackMethod_EvictCache<S::Service>>>>>>>>>>>>;
}  // namespace methods
using FlashCoreBase =
    v1::FlashCore::WithRawMethod_Compile<v1::FlashCore::WithRawMethod_GetKernel<methods::Callbacks>>;

class FlashCoreService final : public FlashCoreBase {
 public:
  // `service` outlives this (the server drains its calls first).
  explicit FlashCoreService(service::Service& service) : service_(service) {}

  // Compile (KernelRequest -> KernelHandle) and GetKernel (GetKernelRequest
  // -> KernelHandle) are answered by rpc::KernelQueues, through
  // RequestCompile and RequestGetKernel.
  grpc::ServerUnaryReactor* ListKernels(grpc::CallbackServerContext* context,
                                        const v1::ListKernelsRequest* request,
                                        v1::ListKernelsResponse* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::ServerInfo* response) override;
  grpc::ServerUnaryReactor* Validate(grpc::CallbackServerContext* context,
                                     const v1::ValidateRequest* request,
                                     v1::KernelHandle* response) override;

  grpc::ServerWriteReactor<v1::TuneProgress>* Tune(grpc::CallbackServerContext* context,
                                                   const v1::TuneRequest* request) override;
  grpc::ServerUnaryReactor* GetTuningResult(grpc::CallbackServerContext* context,
                                            const v1::GetTuningResultRequest* request,
                                            v1::TuningResult* response) override;
  grpc::ServerUnaryReactor* ListTuningResults(grpc::CallbackServerContext* context,
                                              const v1::ListTuningResultsRequest* request,
                                              v1::ListTuningResultsResponse* response) override;
  grpc::ServerUnaryReactor* ListTuningJobs(grpc::CallbackServerContext* context,
                                           const v1::ListTuningJobsRequest* request,
                                           v1::ListTuningJobsResponse* response) override;
  grpc::ServerUnaryReactor* GetTuningJob(grpc::CallbackServerContext* context,
                                         const v1::GetTuningJobRequest* request,
                                         v1::TuningJobTrials* response) override;
  grpc::ServerUnaryReactor* ListTuneJobs(grpc::CallbackServerContext* context,
                                         const v1::ListTuneJobsRequest* request,
                                         v1::ListTuneJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelTuneJob(grpc::CallbackServerContext* context,
                                          const v1::CancelTuneJobRequest* request,
                                          v1::CancelTuneJobResponse* response) override;
  grpc::ServerUnaryReactor* ClearCache(grpc::CallbackServerContext* context,
                                       const v1::ClearCacheRequest* request,
                                       v1::CacheChange* response) override;
  grpc::ServerUnaryReactor* EvictCache(grpc::CallbackServerContext* context,
                                       const v1::EvictCacheRequest* request,
                                       v1::CacheChange* response) override;

  static constexpr int kDefaultPageSize = 50;
  static constexpr int kMaxPageSize = 1000;

  // The caller from its "authorization" metadata (the service decides), for
  // callback and completion-queue calls alike.
  Result<auth::Identity> authorize(const grpc::ServerContextBase* context, auth::Role needed,
                                   std::string_view rpc) const;
  service::Service& service() const { return service_; }

 private:
  class TuneReactor;

  // Authorizes, takes an in-flight slot when `admit`, runs `answer` (which
  // fills the response) and finishes the call at once.
  template <typename Answer>
  grpc::ServerUnaryReactor* answer_now(grpc::CallbackServerContext* context, auth::Role needed,
                                       std::string_view rpc, bool admit, Answer&& answer);
  // Finishes a call answered on the spot.
  static grpc::ServerUnaryReactor* finish_now(grpc::CallbackServerContext* context,
                                              const grpc::Status& status);

  service::Service& service_;
};

}  // namespace flashcore::rpc
