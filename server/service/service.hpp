// The daemon's operations as plain C++: compile, get, list, validate, tune,
// tuning results and server info, with the policies that go with them
// (admission: authentication, calls in flight and per-client quotas; the use
// of tuned configs; validation records; which GPU) and the wiring of the
// cache, the compiler, the evaluation workers and tuning. It knows no
// transport: rpc/ parses a message into a request here, calls, and writes
// the answer; the service's own tests call it directly.
//
// Operations that wait (a compile, an evaluation, a tuning job) answer
// through a callback and return a PendingCall: its callback runs exactly
// once, with the answer or, when cancel() comes first, with CANCELLED.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "auth/authenticator.hpp"
#include "auth/quotas.hpp"
#include "cache/kernel_cache.hpp"
#include "common/result.hpp"
#include "eval/worker_pool.hpp"
#include "jit/nvrtc_compiler.hpp"
#include "service/requests.hpp"
#include "service/tune_jobs.hpp"
#include "service/validation_store.hpp"
#include "tuning/shape_bucket.hpp"
#include "tuning/tuning_db.hpp"
#include "tuning/tuning_job.hpp"

namespace flashcore::service {

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

// A kernel answer: the cache's entry and tier, and the kernel's latest
// validation record (Validate: the one it just made).
struct KernelAnswer {
  CacheLookup lookup;
  std::optional<v1::ValidationRecord> validation;
};

struct ValidateRequest {
  CompileRequest kernel;
  v1::ValidationOptions options;
  // The caller's deadline: it bounds the wait for a worker too (capped at an hour).
  std::chrono::system_clock::time_point deadline = std::chrono::system_clock::time_point::max();
};

struct KernelPage {
  std::vector<CachedKernel> kernels;
  std::string next_page_token;  // empty: the last page
};

struct ServerInfo {
  std::string version;
  std::string nvrtc_version;
  std::string default_arch;
  GpuStatus gpu;
  std::vector<std::string> supported_archs;
  std::vector<std::string> templates;  // those this daemon's sources can build
};

class PendingCall {
 public:
  virtual ~PendingCall() = default;
  // The caller has gone: its callback runs now with CANCELLED unless the
  // answer came first. Idempotent.
  virtual void cancel() = 0;
};

class Service {
 public:
  using KernelDone = std::function<void(Result<KernelAnswer>)>;

  // `workers` may be null (no GPU, no worker binary): validate then answers
  // FAILED_PRECONDITION with options.evaluation_unavailable_reason.
  // `tuning` may be null (no evaluation backend): tune then answers
  // FAILED_PRECONDITION like validate. `tuning_db` (null: none) serves the
  // tuning results and use_tuned_config; it is the manager's database when
  // there is a manager.
  Service(std::shared_ptr<KernelCache> cache, std::shared_ptr<const NvrtcCompiler> compiler,
          ServiceOptions options, std::shared_ptr<eval::WorkerPool> workers = nullptr,
          std::shared_ptr<TuningManager> tuning = nullptr,
          std::shared_ptr<TuningDb> tuning_db = nullptr);
  // Cancels tuning jobs and waits for running evaluations (shut the worker
  // pool down first to end them).
  ~Service();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // ---- Admission ----
  // The caller from an "authorization" value (empty: none), or
  // UNAUTHENTICATED / PERMISSION_DENIED (a role below `needed`). Every
  // operation but health checking starts here; `operation` and `peer` are for the log.
  Result<auth::Identity> authenticate(std::string_view authorization, auth::Role needed,
                                      std::string_view operation, std::string_view peer) const;
  // Takes an in-flight slot, or RESOURCE_EXHAUSTED when all are taken.
  Status admit();
  void release() { in_flight_.fetch_sub(1); }
  size_t in_flight() const { return in_flight_.load(); }

  // ---- Kernels ----
  // Compiles or fetches through the cache. With `use_tuned_config` the
  // request's config (and, on sm_90a, its family) comes from the tuning
  // database first. Holds one of `who`'s compile slots until `done` runs.
  Result<std::shared_ptr<PendingCall>> compile(const auth::Identity& who, CompileRequest request,
                                               bool use_tuned_config, KernelDone done);
  // From memory, disk or the shared tier only; INVALID_ARGUMENT naming
  // `key` when it is not a key, NOT_FOUND when no tier has it.
  Result<KernelAnswer> get_kernel(const std::string& key) const;
  // `page_size` entries (1..) after `page_token` (a key; empty: the first),
  // merged from disk and memory in key order.
  Result<KernelPage> list_kernels(const std::string& page_token, size_t page_size) const;
  ServerInfo server_info() const;

  // ---- Cache administration (the rpc layer asks for the admin role) ----
  // Empties the memory and disk tiers (and the shared tier with
  // include_shared: FAILED_PRECONDITION naming include_shared without one,
  // UNAVAILABLE when Redis is out of reach, the local tiers then untouched).
  Result<CacheRemoval> clear_cache(const auth::Identity& who, bool include_shared);
  // INVALID_ARGUMENT naming the field: a key that is not one (keys[i]),
  // neither or both of keys and down_to_bytes, include_shared with
  // down_to_bytes; then as clear_cache.
  Result<CacheRemoval> evict_cache(const auth::Identity& who, const EvictRequest& request);

  // Compile or fetch like compile(), then run the validation matrix on a
  // worker whose GPU runs the cubin; the record is kept for later answers.
  // A kernel that faults or hangs comes back as a failed record.
  Result<std::shared_ptr<PendingCall>> validate(const auth::Identity& who, ValidateRequest request,
                                                KernelDone done);

  // ---- Tuning ----
  // Admits a job for `who` (a GPU that runs the arch, the quotas; the time
  // budget cut to the client's GPU time left), lists it under `bucket` for
  // list_tune_jobs and runs it. on_done runs exactly once; a cancel (the
  // caller's or cancel_tune_job's) answers CANCELLED before the job stops.
  Result<std::shared_ptr<PendingCall>> tune(const auth::Identity& who, TuneSettings settings,
                                            TuneCallbacks callbacks);
  std::vector<v1::TuneJob> list_tune_jobs(const auth::Identity& who) const;
  Result<v1::TuneJob> cancel_tune_job(int64_t id, const auth::Identity& who);
  // The stored best for the request's bucket on `device` (empty: the
  // tuning GPU's): the named family's, or where the request names none the
  // one served (served_best); NOT_FOUND naming the bucket, also when the
  // best cannot run the request's shape (shape_misfit: a decode best of
  // fewer packed rows than the shape has).
  Result<BestRecord> tuning_result(const CompileRequest& target, const std::string& device) const;
  Result<BestPage> list_tuning_results(int page_size, const std::string& page_token) const;
  // The tuning database's jobs (any status) and one job with its trials in
  // measurement order: what a report draws. NOT_FOUND for an unknown job.
  struct JobTrials {
    JobRecord job;
    std::vector<TrialRecord> trials;
  };
  Result<JobPage> list_tuning_jobs(int page_size, const std::string& page_token) const;
  Result<JobTrials> tuning_job(int64_t job_id) const;

  // ---- Policies, public for their tests ----
  // FAILED_PRECONDITION with the probe's reason when the daemon has no GPU.
  Status require_gpu() const;
  // FAILED_PRECONDITION with the reason when there is no worker pool.
  Status require_workers() const;
  // Replaces the request's config with the tuning database's best for its
  // scope; NOT_FOUND naming the bucket when none is stored or the stored
  // one cannot run the request's shape.
  Status apply_tuned_config(CompileRequest& request) const;

  const ServiceOptions& options() const { return options_; }
  const ValidationStore& validations() const { return validations_; }

 private:
  class CompileCall;
  class ValidateCall;
  class TuneCall;
  class EvaluationThreads;

  // The device name tuning results are looked up under: the tuning
  // backend's GPU 0, else the probed GPU's name (empty: none).
  std::string tuning_device() const;
  // The scope a kernel request names (bucket of its shape) on `device`.
  TuningScope tuning_scope(const CompileRequest& request, const std::string& device) const;
  // The fleet's best for the scope (stored in the local database too).
  std::optional<BestRecord> fleet_best(const TuningScope& scope) const;
  // The stored (else the fleet's) best of the scope; where its family is one
  // of the arch's prefill_families(), the best of the family those serve:
  // the first one's unless another's is faster by more than the spread
  // (chosen_entrant, the rule a Tune of several families chooses by).
  Result<std::optional<BestRecord>> served_best(const TuningScope& scope) const;
  // Per-client compile slots (compile, validate); no-ops without quotas.
  Status take_compile_slot(const std::string& client);
  void release_compile_slot(const std::string& client);
  // The GPUs whose arch runs `arch` cubins, or FAILED_PRECONDITION naming them all.
  Result<std::vector<int>> gpus_for(const std::string& arch) const;
  Status check_tune_admission(const auth::Identity& who, TuneSettings& settings);

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

}  // namespace flashcore::service
