// flashcore.v1.KernelEvolution (evolve.proto): the evaluator for
// kernel-evolution loops. EvaluateSource takes one generation of submitted
// CUDA sources, stores them (CandidateStore), compiles them in parallel in
// sandboxed compile-worker processes (CompileSandbox), then checks and times
// each compiled one on the daemon's GPU workers (eval::WorkerPool, one
// evaluation at a time per GPU), streaming each verdict as it is known.
// Roles and quotas are the shared box's: a generation is a tune job of its
// client (role tune, the tune-job and GPU-seconds quotas), candidates belong
// to their client. Kept apart from FlashCoreService: it shares the cache,
// the workers, the tuning database and the authenticator, nothing else.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>

#include "auth/authenticator.hpp"
#include "auth/quotas.hpp"
#include "cache/kernel_cache.hpp"
#include "common/result.hpp"
#include "eval/worker_pool.hpp"
#include "evolve/candidate_store.hpp"
#include "evolve/compile_sandbox.hpp"
#include "evolve/evolve_limits.hpp"
#include "flashcore/v1/evolve.grpc.pb.h"
#include "jit/template_registry.hpp"
#include "tuning/tuning_db.hpp"

namespace flashcore::evolve {


struct EvolutionServiceParts {
  std::shared_ptr<const TemplateRegistry> templates;
  std::shared_ptr<KernelCache> cache;          // the served kernels (timed as the bar to beat)
  std::shared_ptr<eval::WorkerPool> workers;   // null: compile verdicts only
  std::string workers_unavailable_reason;
  std::shared_ptr<TuningDb> tuning_db;         // null: the family default is "served"
  std::shared_ptr<const auth::Authenticator> auth;  // null: everyone is anonymous admin
  std::shared_ptr<auth::Quotas> quotas;        // null: no per-client limits
  std::string default_arch = "sm_90a";
  std::filesystem::path compile_worker;        // empty: beside the daemon
  std::filesystem::path store_path;            // the candidate store (SQLite)
  EvolveLimits limits;
};

class EvolutionService final : public v1::KernelEvolution::CallbackService {
 public:
  // Opens the candidate store (an error names the file and why).
  static Result<std::unique_ptr<EvolutionService>> create(EvolutionServiceParts parts);
  // Kills compile workers still running, then waits for the generations.
  ~EvolutionService() override;

  grpc::ServerWriteReactor<v1::EvaluateSourceEvent>* EvaluateSource(
      grpc::CallbackServerContext* context, const v1::EvaluateSourceRequest* request) override;
  grpc::ServerUnaryReactor* ListCandidates(grpc::CallbackServerContext* context,
                                           const v1::ListCandidatesRequest* request,
                                           v1::ListCandidatesResponse* response) override;
  grpc::ServerUnaryReactor* GetCandidate(grpc::CallbackServerContext* context,
                                         const v1::GetCandidateRequest* request,
                                         v1::StoredCandidate* response) override;
  grpc::ServerUnaryReactor* PromoteCandidate(grpc::CallbackServerContext* context,
                                             const v1::PromoteCandidateRequest* request,
                                             v1::PromoteCandidateResponse* response) override;

  // Stops new work: running compile workers are killed, generations end.
  void shutdown();
  // EvaluateSource calls not yet done, from the start of their handler to
  // the end of their stream: the daemon's drain waits for them.
  size_t streams() const { return streams_.load(); }

  const CandidateStore& store() const { return *store_; }
  const CompileSandbox& sandbox() const { return *sandbox_; }

  struct Generation;  // one EvaluateSource call (evolution_service.cpp)
  class GenerationReactor;

 private:
  explicit EvolutionService(EvolutionServiceParts parts);
  Result<auth::Identity> authorize(const grpc::CallbackServerContext* context, auth::Role needed,
                                   std::string_view rpc) const;
  // Runs `task` on a thread of its own, counted so the destructor waits.
  bool spawn(std::function<void()> task);

  friend struct Generation;
  EvolutionServiceParts parts_;
  std::unique_ptr<CandidateStore> store_;
  std::unique_ptr<CompileSandbox> sandbox_;
  std::atomic<size_t> pending_candidates_{0};
  std::atomic<size_t> streams_{0};  // EvaluateSource calls, counted by CountedCall
  std::mutex threads_mutex_;
  std::condition_variable threads_idle_;
  size_t threads_ = 0;
  bool stopping_ = false;
};

}  // namespace flashcore::evolve
