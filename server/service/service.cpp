#include "service/service.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "cache/cache_key.hpp"
#include "family/template_catalog.hpp"
#include "service/kernel_handle.hpp"

#ifndef FLASHCORE_VERSION
#define FLASHCORE_VERSION "0.1.0"
#endif

namespace flashcore::service {

// Threads for evaluations, which block on a worker for up to the
// evaluation timeout: neither a transport thread nor a compile thread may
// wait that long. One per validation in flight (bounded by the in-flight
// limit; the worker pool queues them). The destructor waits for those still
// running.
class Service::EvaluationThreads {
 public:
  ~EvaluationThreads() {
    std::unique_lock lock(mutex_);
    closed_ = true;
    idle_.wait(lock, [this] { return running_ == 0; });
  }

  // False once closing: the task is not run.
  bool run(std::function<void()> task) {
    std::lock_guard lock(mutex_);
    if (closed_) return false;
    ++running_;
    std::thread([this, task = std::move(task)]() mutable {
      task();
      task = nullptr;  // its captures go before the count that lets ~EvaluationThreads return
      std::lock_guard lock(mutex_);
      --running_;
      idle_.notify_all();
    }).detach();
    return true;
  }

 private:
  std::mutex mutex_;
  std::condition_variable idle_;
  size_t running_ = 0;
  bool closed_ = false;
};

// A compile in flight. The cache answers from its pool thread, possibly
// after the caller cancelled, so the answer and the cancellation race for
// the one call of `done` under the lock; the loser touches nothing. The
// winner gives the compile slot back before `done`, so a client that has
// its answer never finds the slot still taken.
class Service::CompileCall final : public PendingCall {
 public:
  CompileCall(Service& service, std::string client, CompileRequest request, KernelDone done)
      : service_(service), client_(std::move(client)), request_(std::move(request)),
        done_(std::move(done)) {}

  // Asks the cache; the answer may come before this returns (a hit).
  static void start(const std::shared_ptr<CompileCall>& call) {
    KernelCache& cache = *call->service_.cache_;
    KernelCache::Ticket ticket = cache.get_or_compile(
        call->request_.spec, call->request_.shape,
        [call](Result<CacheLookup> result) { call->answer(std::move(result)); });
    std::lock_guard lock(call->mutex_);
    call->ticket_ = std::move(ticket);
    call->asked_ = true;
  }

  // Answers CANCELLED and lets the cache drop the compile if nobody else
  // waits for it (outside the lock: abandon() calls back).
  void cancel() override {
    KernelCache::Ticket ticket;
    bool asked = false;
    {
      std::lock_guard lock(mutex_);
      end(make_error(ErrorCode::cancelled, "compile cancelled"));
      ticket = ticket_;
      asked = asked_;
    }
    if (asked) service_.cache_->abandon(ticket);
  }

 private:
  void answer(Result<CacheLookup> result) {
    std::lock_guard lock(mutex_);
    if (done_ == nullptr) return;
    if (!result.ok()) {
      spdlog::info("Compile {} for {} failed: {}", request_.spec.template_id, request_.spec.arch,
                   result.error().message);
      end(result.error());
      return;
    }
    KernelAnswer answer{std::move(result).value(), std::nullopt};
    spdlog::debug("Compile {} -> {} ({})", answer.lookup.kernel->compiled.name_expression,
                  answer.lookup.kernel->key, cache_tier_name(answer.lookup.tier));
    answer.validation = service_.validations_.latest(answer.lookup.kernel->key);
    end(std::move(answer));
  }

  // Caller holds mutex_.
  void end(Result<KernelAnswer> answer) {
    if (done_ == nullptr) return;
    KernelDone done = std::move(done_);
    done_ = nullptr;
    service_.release_compile_slot(client_);
    done(std::move(answer));
  }

  Service& service_;  // outlives the call: the front end drains calls before it goes
  const std::string client_;
  const CompileRequest request_;
  std::mutex mutex_;
  KernelDone done_;  // null once called
  KernelCache::Ticket ticket_;
  bool asked_ = false;
};

// A validation in flight: compile or fetch through the cache, then evaluate
// on an EvaluationThreads thread. Cancellation races the answer as in
// CompileCall; an evaluation whose caller cancelled still runs to its end
// (the worker cannot be interrupted mid-kernel) and still stores its record.
class Service::ValidateCall final : public PendingCall {
 public:
  ValidateCall(Service& service, std::string client, ValidateRequest request,
               std::vector<int> gpus, eval::WorkerPool::Clock::time_point deadline,
               KernelDone done)
      : service_(service), client_(std::move(client)), request_(std::move(request)),
        gpus_(std::move(gpus)), deadline_(deadline), done_(std::move(done)) {}

  static void start(const std::shared_ptr<ValidateCall>& call) {
    const CompileRequest& kernel = call->request_.kernel;
    call->service_.cache_->get_or_compile(
        kernel.spec, kernel.shape,
        [call](Result<CacheLookup> result) { compiled(call, std::move(result)); });
  }

  void cancel() override {
    std::lock_guard lock(mutex_);
    end(make_error(ErrorCode::cancelled, "validate cancelled"));
  }

 private:
  static void compiled(const std::shared_ptr<ValidateCall>& call, Result<CacheLookup> result) {
    {
      std::lock_guard lock(call->mutex_);
      if (call->done_ == nullptr) return;  // cancelled while compiling: nothing to evaluate
      if (!result.ok()) {
        call->end(result.error());
        return;
      }
    }
    const bool started = call->service_.evaluations_->run(
        [call, lookup = std::move(result).value()] { call->evaluate(lookup); });
    if (!started) {
      std::lock_guard lock(call->mutex_);
      call->end(make_error(ErrorCode::unavailable, "server shutting down"));
    }
  }

  void evaluate(const CacheLookup& lookup) {
    // The handle with its cubin: the worker needs it even when the caller does not.
    v1::KernelHandle handle;
    fill_handle(*lookup.kernel, lookup.tier, request_.kernel.shape, request_.kernel.layout,
                /*omit_cubin=*/false, &handle);
    v1::EvaluateRequest request;
    fill_eval_kernel(handle, request.mutable_kernel());
    *request.mutable_problem() = handle.problem();
    request.set_validate(true);
    *request.mutable_validation() = request_.options;

    eval::EvaluateCall call;
    call.gpus = gpus_;
    auto evaluated = service_.workers_->evaluate(request, deadline_, call);
    auto record = record_of(std::move(evaluated), call);
    if (!record) {
      std::lock_guard lock(mutex_);
      end(record.error());
      return;
    }
    service_.validations_.put(handle.key(), *record);
    spdlog::info("Validate {} on {}: {}{}", handle.key(), record->device(),
                 record->passed() ? "passed" : "failed",
                 record->detail().empty() ? "" : " (" + record->detail() + ")");
    std::lock_guard lock(mutex_);
    end(KernelAnswer{lookup, std::move(record).value()});
  }

  // The worker's record; a kernel that faulted or hung failed validation:
  // that is the answer, recorded like any other. Errors before the kernel
  // reached a worker (queue, shutdown) or refusals of the request are not.
  Result<v1::ValidationRecord> record_of(Result<v1::EvaluateResponse> evaluated,
                                         const eval::EvaluateCall& call) const {
    v1::ValidationRecord record;
    if (evaluated.ok()) {
      record = evaluated->validation();
      if (record.device().empty()) record.set_device(evaluated->device());
      return record;
    }
    const Error& error = evaluated.error();
    const bool kernel_failed = call.dispatched && (error.code == ErrorCode::internal ||
                                                   error.code == ErrorCode::deadline_exceeded);
    if (!kernel_failed) return error;
    record.set_evaluated(true);
    record.set_passed(false);
    const auto infos = service_.workers_->workers();
    if (call.gpu >= 0 && static_cast<size_t>(call.gpu) < infos.size())
      record.set_device(infos[call.gpu].device());
    record.set_detail(error.message);
    return record;
  }

  // Caller holds mutex_.
  void end(Result<KernelAnswer> answer) {
    if (done_ == nullptr) return;
    KernelDone done = std::move(done_);
    done_ = nullptr;
    service_.release_compile_slot(client_);
    done(std::move(answer));
  }

  Service& service_;  // outlives the call (EvaluationThreads)
  const std::string client_;
  const ValidateRequest request_;
  const std::vector<int> gpus_;  // those whose arch runs the cubin
  const eval::WorkerPool::Clock::time_point deadline_;
  std::mutex mutex_;
  KernelDone done_;  // null once called
};

// A tuning job in flight. The job runs on a thread of the tuning manager
// and reports through the callbacks; the first end (the job's result, or a
// cancel) wins and is reported once, and events after it are dropped. The
// job is listed from admission until it ends, and its GPU time is charged
// to its owner then.
class Service::TuneCall final : public PendingCall,
                                public std::enable_shared_from_this<TuneCall> {
 public:
  TuneCall(Service& service, std::string owner, TuneCallbacks callbacks)
      : service_(service), owner_(std::move(owner)), callbacks_(std::move(callbacks)) {}

  void start(TuneSettings settings, const std::string& bucket) {
    // Listed (and cancellable by cancel_tune_job) from now until the job ends.
    registry_id_ = service_.tune_jobs_.add(
        owner_, settings.template_id, bucket,
        [weak = weak_from_this()](const std::string& by) {
          if (auto call = weak.lock())
            call->stop(make_error(ErrorCode::cancelled,
                                  "tune job cancelled by client '" + by + "'"));
        });
    TuneCallbacks callbacks;
    callbacks.on_event = [call = shared_from_this()](const TuneEvent& event) {
      call->event(event);
    };
    callbacks.on_done = [call = shared_from_this()](Result<TuneResult> result) {
      std::lock_guard lock(call->mutex_);
      call->end(std::move(result));
    };
    bool submitting;
    {
      std::lock_guard lock(mutex_);
      // Cancelled (cancel_tune_job) before the job exists: it never starts.
      submitting = !ended_;
    }
    TuningManager::JobHandle job;
    if (submitting) job = service_.tuning_->submit(std::move(settings), std::move(callbacks));
    bool ended;
    {
      std::lock_guard lock(mutex_);
      job_ = job;
      ended = ended_;
    }
    if (ended) TuningManager::cancel(job);
  }

  void cancel() override { stop(make_error(ErrorCode::cancelled, "tune cancelled")); }

 private:
  // The answer first, then the job: the job's own end (cancelled while
  // queued, say) must not win the race and hide who cancelled it. Outside
  // the lock: cancelling takes the manager's lock, under which queued
  // events are reported here.
  void stop(Error why) {
    TuningManager::JobHandle job;
    {
      std::lock_guard lock(mutex_);
      end(std::move(why));
      job = job_;
    }
    TuningManager::cancel(job);
  }

  void event(const TuneEvent& event) {
    std::lock_guard lock(mutex_);
    if (ended_) return;
    if (event.kind == TuneEvent::Kind::started)
      service_.tune_jobs_.started(registry_id_, event.job_id, event.template_id);
    callbacks_.on_event(event);
  }

  // Caller holds mutex_.
  void end(Result<TuneResult> result) {
    if (ended_) return;
    ended_ = true;
    // The job leaves the list and its GPU time is charged to its owner.
    if (auto gpu_seconds = service_.tune_jobs_.finish(registry_id_);
        gpu_seconds && service_.options_.quotas)
      service_.options_.quotas->end_tune_job(owner_, *gpu_seconds);
    auto on_done = std::move(callbacks_.on_done);
    callbacks_ = TuneCallbacks{};
    on_done(std::move(result));
  }

  Service& service_;  // outlives the job: ~Service cancels and joins the jobs first
  const std::string owner_;
  std::mutex mutex_;
  TuneCallbacks callbacks_;  // cleared once ended
  bool ended_ = false;
  TuningManager::JobHandle job_;
  int64_t registry_id_ = 0;
};

Service::Service(std::shared_ptr<KernelCache> cache, std::shared_ptr<const NvrtcCompiler> compiler,
                 ServiceOptions options, std::shared_ptr<eval::WorkerPool> workers,
                 std::shared_ptr<TuningManager> tuning, std::shared_ptr<TuningDb> tuning_db)
    : cache_(std::move(cache)),
      compiler_(std::move(compiler)),
      options_(std::move(options)),
      workers_(std::move(workers)),
      evaluations_(std::make_unique<EvaluationThreads>()),
      tuning_db_(std::move(tuning_db)),
      tuning_(std::move(tuning)) {
  if (tuning_ && !tuning_db_) tuning_db_ = std::shared_ptr<TuningDb>(tuning_, &tuning_->db());
}

Service::~Service() {
  // Jobs still running end (cancelled) before the members their callbacks use.
  tuning_.reset();
}

// ---- Admission ----

Result<auth::Identity> Service::authenticate(std::string_view authorization, auth::Role needed,
                                             std::string_view operation, std::string_view peer) const {
  if (!options_.auth) return auth::Identity{std::string(auth::kAnonymous), auth::Role::admin};
  auto who = options_.auth->authenticate(authorization);
  if (!who) {
    spdlog::info("refused {} from {}: {}", operation, peer, who.error().message);
    return who.error();
  }
  if (!who->may(needed)) {
    spdlog::info("refused {} from client '{}' ({}): needs role {}", operation, who->client,
                 auth::role_name(who->role), auth::role_name(needed));
    return make_error(ErrorCode::permission_denied,
                      "needs role " + std::string(auth::role_name(needed)) + "; client '" +
                          who->client + "' has role " + std::string(auth::role_name(who->role)));
  }
  return who;
}

Status Service::admit() {
  const size_t before = in_flight_.fetch_add(1);
  if (before >= options_.max_concurrent_rpcs) {
    in_flight_.fetch_sub(1);
    return make_error(ErrorCode::resource_exhausted,
                      "server busy: " + std::to_string(before) + " calls in flight");
  }
  return ok_status();
}

Status Service::take_compile_slot(const std::string& client) {
  if (!options_.quotas) return ok_status();
  return options_.quotas->acquire_compile(client);
}

void Service::release_compile_slot(const std::string& client) {
  if (options_.quotas) options_.quotas->release_compile(client);
}

Status Service::require_gpu() const {
  if (options_.gpu.available) return ok_status();
  return make_error(
      ErrorCode::failed_precondition,
      "this request needs a GPU and the daemon has none: " + options_.gpu.unavailable_reason);
}

Status Service::require_workers() const {
  if (workers_) return ok_status();
  return make_error(ErrorCode::failed_precondition,
                    "validation needs a GPU evaluation worker and the daemon has none: " +
                        options_.evaluation_unavailable_reason);
}

// ---- Kernels ----

Result<std::shared_ptr<PendingCall>> Service::compile(const auth::Identity& who,
                                                      CompileRequest request,
                                                      bool use_tuned_config, KernelDone done) {
  if (use_tuned_config)
    if (Status tuned = apply_tuned_config(request); !tuned) return tuned.error();
  if (Status slot = take_compile_slot(who.client); !slot) return slot.error();
  auto call = std::make_shared<CompileCall>(*this, who.client, std::move(request), std::move(done));
  CompileCall::start(call);
  return std::shared_ptr<PendingCall>(std::move(call));
}

Result<KernelAnswer> Service::get_kernel(const std::string& key) const {
  if (key.empty()) return make_error(ErrorCode::invalid_argument, "key: must be set");
  if (!is_well_formed_key(key))
    return make_error(ErrorCode::invalid_argument,
                      "key: '" + key + "' is not 64 lowercase hex characters");
  auto lookup = cache_->get(key);
  if (!lookup) return lookup.error();
  KernelAnswer answer{std::move(lookup).value(), std::nullopt};
  answer.validation = validations_.latest(answer.lookup.kernel->key);
  return answer;
}

// ---- Cache administration ----

namespace {

std::string removal_summary(const CacheRemoval& removal) {
  auto tier = [](std::string_view name, const TierRemoval& t) {
    return std::string(name) + " " + std::to_string(t.entries_removed) + " entries (" +
           std::to_string(t.bytes_removed) + " bytes)";
  };
  std::string text = tier("memory", removal.memory);
  if (removal.disk) text += ", " + tier("disk", *removal.disk);
  if (removal.shared) text += ", shared " + std::to_string(removal.shared->entries_removed) + " entries";
  return text;
}

}  // namespace

Result<CacheRemoval> Service::clear_cache(const auth::Identity& who, bool include_shared) {
  auto removal = cache_->clear(include_shared);
  if (!removal) return removal.error();
  spdlog::info("cache cleared by client '{}': {}", who.client, removal_summary(*removal));
  return removal;
}

Result<CacheRemoval> Service::evict_cache(const auth::Identity& who, const EvictRequest& request) {
  if (request.keys.empty() == !request.down_to_bytes.has_value())
    return make_error(ErrorCode::invalid_argument,
                      request.keys.empty()
                          ? "keys, down_to_bytes: give the keys to evict or the size to evict down to"
                          : "keys, down_to_bytes: give either keys or down_to_bytes, not both");
  if (request.down_to_bytes && request.include_shared)
    return make_error(ErrorCode::invalid_argument,
                      "include_shared: only with keys; the shared tier bounds its own size "
                      "(Redis maxmemory-policy)");
  for (size_t i = 0; i < request.keys.size(); ++i)
    if (!is_well_formed_key(request.keys[i]))
      return make_error(ErrorCode::invalid_argument,
                        "keys[" + std::to_string(i) + "]: '" + request.keys[i] +
                            "' is not 64 lowercase hex characters");
  CacheRemoval removal;
  if (request.down_to_bytes) {
    removal = cache_->trim_to(*request.down_to_bytes);
  } else {
    auto evicted = cache_->evict(request.keys, request.include_shared);
    if (!evicted) return evicted.error();
    removal = std::move(evicted).value();
  }
  spdlog::info("cache evicted by client '{}' ({}): {}", who.client,
               request.down_to_bytes ? "down to " + std::to_string(*request.down_to_bytes) + " bytes"
                                     : std::to_string(request.keys.size()) + " keys",
               removal_summary(removal));
  return removal;
}

Result<KernelPage> Service::list_kernels(const std::string& page_token, size_t page_size) const {
  // The token is the last key of the previous page: listing resumes after it.
  if (!page_token.empty() && !is_well_formed_key(page_token))
    return make_error(ErrorCode::invalid_argument,
                      "page_token: '" + page_token + "' is not a token from ListKernels");
  KernelPage page;
  // One extra entry tells whether another page follows.
  page.kernels = cache_->list(page_token, page_size + 1);
  if (page.kernels.size() > page_size) {
    page.kernels.resize(page_size);
    page.next_page_token = page.kernels.back().key;
  }
  return page;
}

ServerInfo Service::server_info() const {
  ServerInfo info;
  info.version = FLASHCORE_VERSION;
  info.nvrtc_version = NvrtcCompiler::nvrtc_version();
  info.default_arch = options_.default_arch;
  info.gpu = options_.gpu;
  for (const auto& arch : supported_archs()) info.supported_archs.emplace_back(arch.name);
  // Only templates this daemon's sources can build (a templates_dir may lack some).
  for (const auto& entry : template_catalog())
    if (compiler_->templates().entry_header(std::string(entry.id)).ok())
      info.templates.emplace_back(entry.id);
  return info;
}

Result<std::vector<int>> Service::gpus_for(const std::string& arch) const {
  // Only GPUs that can load the cubin: an sm_80 cubin does not run on sm_90.
  std::vector<int> gpus;
  std::string seen;
  const auto infos = workers_->workers();
  for (size_t gpu = 0; gpu < infos.size(); ++gpu) {
    if (eval::cubin_runs_on(arch, infos[gpu].arch())) gpus.push_back(static_cast<int>(gpu));
    seen += (seen.empty() ? "" : ", ") + std::string("GPU ") + std::to_string(gpu) + " " +
            infos[gpu].device() + " (" + infos[gpu].arch() + ")";
  }
  if (gpus.empty())
    return make_error(ErrorCode::failed_precondition,
                      "kernel.arch: " + arch + " cubins do not run on this daemon's GPUs: " + seen);
  return gpus;
}

Result<std::shared_ptr<PendingCall>> Service::validate(const auth::Identity& who,
                                                       ValidateRequest request, KernelDone done) {
  if (Status ready = require_workers(); !ready) return ready.error();
  auto gpus = gpus_for(request.kernel.spec.arch);
  if (!gpus) return gpus.error();
  // The caller's deadline bounds the wait for a worker as well; without
  // one, an hour (each call on a worker is bounded by the evaluation timeout).
  const auto now = std::chrono::system_clock::now();
  const auto left = request.deadline <= now
                        ? std::chrono::system_clock::duration::zero()
                        : std::min<std::chrono::system_clock::duration>(request.deadline - now,
                                                                        std::chrono::hours(1));
  const auto deadline = eval::WorkerPool::Clock::now() + left;
  if (Status slot = take_compile_slot(who.client); !slot) return slot.error();
  auto call = std::make_shared<ValidateCall>(*this, who.client, std::move(request),
                                             std::move(gpus).value(), deadline, std::move(done));
  ValidateCall::start(call);
  return std::shared_ptr<PendingCall>(std::move(call));
}

// ---- Tuning ----

std::string Service::tuning_device() const {
  if (tuning_) return tuning_->device_name();
  return options_.gpu.available ? options_.gpu.name : std::string();
}

TuningScope Service::tuning_scope(const CompileRequest& request, const std::string& device) const {
  TuningScope scope;
  scope.template_id = request.spec.template_id;
  scope.problem = request.spec.problem;
  scope.bucket = bucket_of(request.shape, request.layout == v1::LAYOUT_BHSD ? QkvLayout::bhsd
                                                                             : QkvLayout::bshd);
  scope.device_name = device;
  scope.arch = request.spec.arch;
  return scope;
}

std::optional<BestRecord> Service::fleet_best(const TuningScope& scope) const {
  ToolchainRecord toolchain;
  toolchain.nvrtc_version = NvrtcCompiler::nvrtc_version();
  toolchain.template_source_hash = compiler_->templates().source_hash();
  auto best = options_.fleet_bests->lookup(scope, toolchain);
  // Kept here too: the next call needs no fleet.
  if (best)
    if (auto kept = tuning_db_->update_best_if_better(*best, BestUpdate::force); !kept)
      spdlog::warn("fleet tuning result not stored: {}", kept.error().message);
  return best;
}

namespace {

// Why a stored best cannot serve the request's shape (shape_misfit: a decode
// best of fewer packed rows than the shape has), naming the result; nullopt
// where it can.
std::optional<std::string> best_misfit(const BestRecord& best, const CompileRequest& request) {
  auto misfit =
      shape_misfit(best.scope.template_id, best.config, request.spec.problem, request.shape);
  if (!misfit) return std::nullopt;
  return "the tuning result for " + canonical_problem_class(best.scope.problem) + " bucket " +
         canonical_bucket(best.scope.bucket) + " on " + best.scope.device_name + " (" +
         config_label(best.config) + ") does not fit this shape (" + *misfit + ")";
}

}  // namespace

Result<std::optional<BestRecord>> Service::served_best(const TuningScope& scope) const {
  auto stored_or_fleet = [&](const TuningScope& s) -> Result<std::optional<BestRecord>> {
    auto best = tuning_db_->best_for(s);
    if (!best) return best.error();
    if (!*best && options_.fleet_bests) *best = fleet_best(s);
    return best;
  };
  const auto families = prefill_families(scope.problem, scope.arch);
  if (families.size() < 2 ||
      std::find(families.begin(), families.end(), scope.template_id) == families.end())
    return stored_or_fleet(scope);
  std::vector<BestRecord> bests;
  for (std::string_view family : families) {
    TuningScope each = scope;
    each.template_id = std::string(family);
    auto best = stored_or_fleet(each);
    if (!best) return best.error();
    if (*best) bests.push_back(std::move(**best));
  }
  if (bests.empty()) return std::optional<BestRecord>{};
  std::vector<Finalist> entrants;
  for (const BestRecord& b : bests) entrants.push_back({b.config, b.median_us, b.p10_us, b.p90_us});
  return std::optional<BestRecord>{std::move(bests[chosen_entrant(entrants, 0)])};
}

Status Service::apply_tuned_config(CompileRequest& request) const {
  if (!tuning_db_)
    return make_error(ErrorCode::failed_precondition,
                      "use_tuned_config: the daemon has no tuning database");
  const std::string device = tuning_device();
  if (device.empty())
    return make_error(ErrorCode::failed_precondition,
                      "use_tuned_config: tuning results are per device and the daemon has no GPU");
  const TuningScope scope = tuning_scope(request, device);
  // On sm_90a both attention families solve the same problem: the one their
  // stored bests choose is served, and the handle's template_id says which.
  auto best = served_best(scope);
  if (!best) return best.error();
  if (!*best)
    return make_error(ErrorCode::not_found,
                      "use_tuned_config: no tuning result for " +
                          canonical_problem_class(scope.problem) + " bucket " +
                          canonical_bucket(scope.bucket) + " on " + device + " (" + scope.arch +
                          "); run Tune first");
  if (auto misfit = best_misfit(**best, request))
    return make_error(ErrorCode::not_found, "use_tuned_config: " + *misfit + "; run Tune for it");
  request.spec.template_id = (*best)->scope.template_id;
  const auto arch = find_arch(request.spec.arch);
  if (auto error = template_info(request.spec.template_id)
                       .config_error((*best)->config, request.spec.problem, *arch))
    return make_error(ErrorCode::internal, "stored tuned config is invalid: " + *error);
  // Rows from before schema 2 hold automatic fields: compile, cache and
  // answer the concrete kernel they stand for.
  request.spec.config =
      template_info(request.spec.template_id).resolve((*best)->config, request.spec.problem);
  return ok_status();
}

Status Service::check_tune_admission(const auth::Identity& who, TuneSettings& settings) {
  if (!tuning_)
    return make_error(ErrorCode::failed_precondition,
                      "tuning needs a GPU evaluation worker and the daemon has none: " +
                          options_.evaluation_unavailable_reason);
  if (workers_) {
    // Jobs measure on any GPU: every worker's device must load the cubins.
    for (const auto& info : workers_->workers())
      if (!eval::cubin_runs_on(settings.arch, info.arch()))
        return make_error(ErrorCode::failed_precondition,
                          "kernel.arch: " + settings.arch + " cubins do not run on GPU " +
                              std::to_string(info.gpu_index()) + " " + info.device() + " (" +
                              info.arch() + ")");
  }
  if (!options_.quotas) return ok_status();
  std::optional<double> gpu_seconds_left;
  if (Status quota = options_.quotas->admit_tune_job(who.client, gpu_seconds_left); !quota)
    return quota;
  // A job may not run past what its client has left of the hour's GPU time.
  if (gpu_seconds_left) {
    const auto left = std::chrono::milliseconds(
        std::max<int64_t>(1, static_cast<int64_t>(*gpu_seconds_left * 1000.0)));
    const auto asked =
        settings.time_budget.count() > 0 ? settings.time_budget : kDefaultTuneTimeBudget;
    settings.time_budget = std::min(asked, left);
  }
  return ok_status();
}

Result<std::shared_ptr<PendingCall>> Service::tune(const auth::Identity& who,
                                                   TuneSettings settings,
                                                   TuneCallbacks callbacks) {
  if (Status admitted = check_tune_admission(who, settings); !admitted) return admitted.error();
  // A request that names no family on sm_90a: both attention families are
  // searched, and the one served is chosen among them.
  if (!settings.family_named) {
    const auto families = prefill_families(settings.problem, settings.arch);
    if (families.size() > 1 && families.front() == settings.template_id)
      for (size_t i = 1; i < families.size(); ++i)
        settings.rival_families.emplace_back(families[i]);
  }
  const std::string bucket = canonical_bucket(bucket_of(settings.shape, settings.layout));
  auto call = std::make_shared<TuneCall>(*this, who.client, std::move(callbacks));
  call->start(std::move(settings), bucket);
  return std::shared_ptr<PendingCall>(std::move(call));
}

std::vector<v1::TuneJob> Service::list_tune_jobs(const auth::Identity& who) const {
  return tune_jobs_.list(who);
}

Result<v1::TuneJob> Service::cancel_tune_job(int64_t id, const auth::Identity& who) {
  auto cancelled = tune_jobs_.cancel(id, who);
  if (cancelled)
    spdlog::info("tune job {} of client '{}' cancelled by client '{}'", id, cancelled->owner(),
                 who.client);
  return cancelled;
}

Result<BestRecord> Service::tuning_result(const CompileRequest& target,
                                          const std::string& device) const {
  if (!tuning_db_)
    return make_error(ErrorCode::failed_precondition, "the daemon has no tuning database");
  const std::string on = device.empty() ? tuning_device() : device;
  if (on.empty())
    return make_error(ErrorCode::invalid_argument,
                      "device: must be set (the daemon has no GPU to default to)");
  const TuningScope scope = tuning_scope(target, on);
  auto best = target.family_named ? tuning_db_->best_for(scope) : served_best(scope);
  if (!best) return best.error();
  if (!*best)
    return make_error(ErrorCode::not_found, "no tuning result for " +
                                                canonical_problem_class(scope.problem) +
                                                " bucket " + canonical_bucket(scope.bucket) +
                                                " on " + on + " (" + scope.arch + ")");
  // The bucket's best serves the request only where it can run its shape.
  if (auto misfit = best_misfit(**best, target)) return make_error(ErrorCode::not_found, *misfit);
  return std::move(**best);
}

Result<BestPage> Service::list_tuning_results(int page_size, const std::string& page_token) const {
  if (!tuning_db_)
    return make_error(ErrorCode::failed_precondition, "the daemon has no tuning database");
  auto page = tuning_db_->list_best(page_size, page_token);
  if (!page) {
    Error error = page.error();
    // The database's message already names page_token.
    if (error.code == ErrorCode::invalid_argument && error.message.rfind("page_token:", 0) != 0)
      error.message = "page_token: " + error.message;
    return error;
  }
  return page;
}

Result<JobPage> Service::list_tuning_jobs(int page_size, const std::string& page_token) const {
  if (!tuning_db_)
    return make_error(ErrorCode::failed_precondition, "the daemon has no tuning database");
  return tuning_db_->list_jobs(page_size, page_token);
}

Result<Service::JobTrials> Service::tuning_job(int64_t job_id) const {
  if (!tuning_db_)
    return make_error(ErrorCode::failed_precondition, "the daemon has no tuning database");
  if (job_id <= 0) return make_error(ErrorCode::invalid_argument, "job_id: must be > 0");
  auto job = tuning_db_->job(job_id);
  if (!job) return job.error();
  if (!*job)
    return make_error(ErrorCode::not_found,
                      "job_id: no tuning job " + std::to_string(job_id) + " in the database");
  auto trials = tuning_db_->trials_for_job(job_id);
  if (!trials) return trials.error();
  return JobTrials{std::move(**job), std::move(trials).value()};
}

}  // namespace flashcore::service
