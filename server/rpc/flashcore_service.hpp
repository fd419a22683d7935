// The flashcore.v1.FlashCore service: validates requests, hands them to the
// kernel cache and turns its answers into messages. Nothing else lives here.
// Compiles never block a gRPC thread: the cache calls back from its pool and
// the reactor finishes from there. Validate runs its evaluation (which waits
// on a GPU worker process) on a thread of its own.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>

#include "auth/authenticator.hpp"
#include "auth/quotas.hpp"
#include "cache/kernel_cache.hpp"
#include "common/result.hpp"
#include "eval/worker_pool.hpp"
#include "flashcore/v1/flashcore.grpc.pb.h"
#include "jit/nvrtc_compiler.hpp"
#include "rpc/translate.hpp"
#include "service/tune_jobs.hpp"
#include "service/validation_store.hpp"
#include "tuning/tuning_db.hpp"
#include "tuning/tuning_job.hpp"

namespace flashcore::rpc {

// What the daemon learnt about the GPU at startup (cuda::probe_devices()).
struct GpuStatus {
  bool available = false;
  std::string name;                // device 0's name
  std::string arch;                // device 0's NVRTC target
  std::string unavailable_reason;  // why not, when !available
};

struct ServiceOptions {
  // The fleet's tuned bests (null: no --redis): use_tuned_config asks it
  // when the tuning database has none for the bucket.
  std::shared_ptr<FleetBests> fleet_bests;
  std::string default_arch = "sm_90a";  // for requests that leave arch empty
  size_t max_concurrent_rpcs = 256;     // beyond: RESOURCE_EXHAUSTED
  GpuStatus gpu;
  // Why Validate is refused when the service has no worker pool.
  std::string evaluation_unavailable_reason = "the daemon has no evaluation workers";
  // Null: authentication off, every caller is "anonymous" with the admin role.
  std::shared_ptr<const auth::Authenticator> auth;
  // Null: no per-client limits.
  std::shared_ptr<auth::Quotas> quotas;
};

class FlashCoreService final : public v1::FlashCore::CallbackService {
 public:
  // `workers` may be null (no GPU, no worker binary): Validate then answers
  // FAILED_PRECONDITION with options.evaluation_unavailable_reason.
  // `tuning` may be null (no evaluation backend): Tune then answers
  // FAILED_PRECONDITION like Validate. `tuning_db` (null: none) serves
  // GetTuningResult, ListTuningResults and Compile's use_tuned_config; it
  // is the manager's database when there is a manager.
  FlashCoreService(std::shared_ptr<KernelCache> cache,
                   std::shared_ptr<const NvrtcCompiler> compiler, ServiceOptions options,
                   std::shared_ptr<eval::WorkerPool> workers = nullptr,
                   std::shared_ptr<TuningManager> tuning = nullptr,
                   std::shared_ptr<TuningDb> tuning_db = nullptr);
  // Waits for running evaluations (shut the worker pool down first to end them).
  ~FlashCoreService() override;

  grpc::ServerUnaryReactor* Compile(grpc::CallbackServerContext* context,
                                    const v1::KernelRequest* request,
                                    v1::KernelHandle* response) override;
  grpc::ServerUnaryReactor* GetKernel(grpc::CallbackServerContext* context,
                                      const v1::GetKernelRequest* request,
                                      v1::KernelHandle* response) override;
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
  grpc::ServerUnaryReactor* ListTuneJobs(grpc::CallbackServerContext* context,
                                         const v1::ListTuneJobsRequest* request,
                                         v1::ListTuneJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelTuneJob(grpc::CallbackServerContext* context,
                                          const v1::CancelTuneJobRequest* request,
                                          v1::CancelTuneJobResponse* response) override;

  // The caller of `rpc` from its "authorization" metadata, or UNAUTHENTICATED
  // (no or an unknown token) / PERMISSION_DENIED (a role below `needed`).
  // Every method of the service starts here; health checking does not.
  Result<auth::Identity> authorize(const grpc::CallbackServerContext* context,
                                   auth::Role needed, std::string_view rpc) const;

  // For requests that need a device (validation, tuning): FAILED_PRECONDITION
  // with the probe's reason when the daemon has none.
  Status require_gpu() const;

  // FAILED_PRECONDITION with the reason when there is no worker pool.
  Status require_workers() const;

  // Replaces the request's config with the tuning database's best for its
  // scope; NOT_FOUND naming the bucket when none is stored.
  Status apply_tuned_config(CompileRequest& request) const;

  size_t in_flight() const { return in_flight_.load(); }
  const ServiceOptions& options() const { return options_; }
  const ValidationStore& validations() const { return validations_; }

  static constexpr int kDefaultPageSize = 50;
  static constexpr int kMaxPageSize = 1000;

 private:
  class CompileReactor;
  class ValidateReactor;
  class EvaluationThreads;
  class TuneReactor;

  // The device name tuning results are looked up under: the tuning
  // backend's GPU 0, else the probed GPU's name (empty: none).
  std::string tuning_device() const;
  // The scope a kernel request names (bucket of its shape) on `device`.
  TuningScope tuning_scope(const CompileRequest& request, const std::string& device) const;
  // The fleet's best for the scope (stored in the local database too).
  std::optional<BestRecord> fleet_best(const TuningScope& scope) const;

  // Takes an in-flight slot, or returns RESOURCE_EXHAUSTED when all are taken.
  Status admit();
  void release() { in_flight_.fetch_sub(1); }
  // Per-client compile slots (Compile, Validate); no-ops without quotas.
  Status take_compile_slot(const std::string& client);
  void release_compile_slot(const std::string& client);
  // The latest validation record of the handle's kernel, if any.
  void attach_validation(v1::KernelHandle* handle) const;
  // Finishes a call answered on the spot.
  grpc::ServerUnaryReactor* finish_now(grpc::CallbackServerContext* context,
                                       const grpc::Status& status);

  std::shared_ptr<KernelCache> cache_;
  std::shared_ptr<const NvrtcCompiler> compiler_;
  ServiceOptions options_;
  std::shared_ptr<eval::WorkerPool> workers_;
  ValidationStore validations_;
  std::atomic<size_t> in_flight_{0};
  TuneJobRegistry tune_jobs_;
  // Last: destroyed first, so evaluations still running finish while the
  // members above they use are alive.
  std::unique_ptr<EvaluationThreads> evaluations_;
  std::shared_ptr<TuningDb> tuning_db_;
  // Last: its destructor cancels and joins the jobs, whose callbacks use the above.
  std::shared_ptr<TuningManager> tuning_;
};

}  // namespace flashcore::rpc
