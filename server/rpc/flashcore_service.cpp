#include "rpc/flashcore_service.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "cache/cache_key.hpp"
#include "family/attention_sm90.hpp"
#include "family/template_catalog.hpp"
#include "rpc/translate.hpp"
#include "tuning/shape_bucket.hpp"

#ifndef FLASHCORE_VERSION
#define FLASHCORE_VERSION "0.1.0"
#endif

namespace flashcore::rpc {

// A Compile in flight. The cache answers from its pool thread, possibly after
// the call was cancelled (client gone, or the drain deadline passed), so the
// answer and the cancellation race for one finish through shared state; the
// loser touches nothing the call owns. The winner gives the in-flight slot
// back before Finish, so a client that has its answer never finds the slot
// still taken.
class FlashCoreService::CompileReactor final : public grpc::ServerUnaryReactor {
 public:
  CompileReactor(FlashCoreService* service, v1::KernelHandle* response, CompileRequest request,
                 bool omit_cubin, std::string client)
      : state_(std::make_shared<State>()) {
    state_->service = service;
    state_->client = std::move(client);
    state_->reactor = this;
    state_->response = response;
    state_->request = std::move(request);
    state_->omit_cubin = omit_cubin;
  }

  // Asks the cache; the reply may come back before this returns (a hit).
  void start(KernelCache& cache) {
    const CompileRequest& request = state_->request;
    KernelCache::Ticket ticket = cache.get_or_compile(
        request.spec, request.shape,
        [state = state_](Result<CacheLookup> result) { answer(*state, std::move(result)); });
    std::lock_guard lock(state_->mutex);
    state_->cache = &cache;
    state_->ticket = std::move(ticket);
  }

  // The caller has gone: answer CANCELLED, and let the cache drop the compile
  // if nobody else waits for it (outside the lock: abandon() calls back).
  void OnCancel() override {
    KernelCache* cache = nullptr;
    KernelCache::Ticket ticket;
    {
      std::lock_guard lock(state_->mutex);
      finish(*state_, grpc::Status(grpc::StatusCode::CANCELLED, "compile cancelled"));
      cache = state_->cache;
      ticket = state_->ticket;
    }
    if (cache != nullptr) cache->abandon(ticket);
  }

  void OnDone() override { delete this; }

 private:
  struct State {
    std::mutex mutex;
    bool finished = false;
    // Valid until finished: the call (and so the server and the service)
    // lives at least that long.
    FlashCoreService* service = nullptr;
    CompileReactor* reactor = nullptr;
    v1::KernelHandle* response = nullptr;
    CompileRequest request;
    bool omit_cubin = false;
    std::string client;  // holds one of its compile slots until finished
    KernelCache* cache = nullptr;  // set once the cache was asked
    KernelCache::Ticket ticket;
  };

  // Caller holds state.mutex.
  static void finish(State& state, const grpc::Status& status) {
    if (state.finished) return;
    state.finished = true;
    state.service->release_compile_slot(state.client);
    state.service->release();
    state.reactor->Finish(bounded_status(status));
  }

  static void answer(State& state, Result<CacheLookup> result) {
    std::lock_guard lock(state.mutex);
    if (state.finished) return;
    if (!result.ok()) {
      const Error& error = result.error();
      spdlog::info("Compile {} for {} failed: {}", state.request.spec.template_id,
                   state.request.spec.arch, error.message);
      finish(state, to_grpc_status(error));
      return;
    }
    const CacheLookup& lookup = *result;
    spdlog::debug("Compile {} -> {} ({})", lookup.kernel->compiled.name_expression,
                  lookup.kernel->key, cache_tier_name(lookup.tier));
    // A client that holds this kernel gets everything but the cubin.
    const bool omit = state.omit_cubin || lookup.kernel->key == state.request.cached_key;
    fill_handle(*lookup.kernel, lookup.tier, state.request.shape, state.request.layout, omit,
                state.response);
    state.service->attach_validation(state.response);
    finish(state, grpc::Status::OK);
  }

  std::shared_ptr<State> state_;
};

// Threads for evaluations, which block on a worker for up to the
// evaluation timeout: neither a gRPC thread nor a compile thread may wait
// that long. One per Validate in flight (bounded by max_concurrent_rpcs; the
// worker pool queues them). The destructor waits for those still running.
class FlashCoreService::EvaluationThreads {
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

// A Validate in flight: compile or fetch through the cache (like Compile),
// then evaluate on an EvaluationThreads thread. Cancellation races the
// answer for one finish through shared state, as in CompileReactor; an
// evaluation whose call was cancelled still runs to its end (the worker
// cannot be interrupted mid-kernel) and still stores its record.
class FlashCoreService::ValidateReactor final : public grpc::ServerUnaryReactor {
 public:
  struct Plan {
    CompileRequest request;
    v1::ValidationOptions options;
    bool omit_cubin = false;
    std::vector<int> gpus;  // those whose arch runs the cubin
    eval::WorkerPool::Clock::time_point deadline;
    std::string client;  // holds one of its compile slots until finished
  };

  ValidateReactor(FlashCoreService* service, v1::KernelHandle* response, Plan plan)
      : state_(std::make_shared<State>()) {
    state_->service = service;
    state_->reactor = this;
    state_->response = response;
    state_->plan = std::move(plan);
  }

  void start(KernelCache& cache) {
    const CompileRequest& request = state_->plan.request;
    cache.get_or_compile(request.spec, request.shape, [state = state_](Result<CacheLookup> result) {
      compiled(state, std::move(result));
    });
  }

  void OnCancel() override {
    std::lock_guard lock(state_->mutex);
    finish(*state_, grpc::Status(grpc::StatusCode::CANCELLED, "validate cancelled"));
  }

  void OnDone() override { delete this; }

 private:
  struct State {
    std::mutex mutex;
    bool finished = false;
    // Valid until finished (the call keeps the server, and so the service,
    // alive); after that only `service` is used, by the evaluation thread,
    // which the service outlives (EvaluationThreads).
    FlashCoreService* service = nullptr;
    ValidateReactor* reactor = nullptr;
    v1::KernelHandle* response = nullptr;
    Plan plan;
  };

  // Caller holds state.mutex.
  static void finish(State& state, const grpc::Status& status) {
    if (state.finished) return;
    state.finished = true;
    state.service->release_compile_slot(state.plan.client);
    state.service->release();
    state.reactor->Finish(bounded_status(status));
  }

  static void finish_locked(State& state, const grpc::Status& status) {
    std::lock_guard lock(state.mutex);
    finish(state, status);
  }

  static void compiled(const std::shared_ptr<State>& state, Result<CacheLookup> result) {
    {
      std::lock_guard lock(state->mutex);
      if (state->finished) return;  // cancelled while compiling: nothing to evaluate for
      if (!result.ok()) {
        finish(*state, to_grpc_status(result.error()));
        return;
      }
    }
    CacheLookup lookup = std::move(result).value();
    FlashCoreService* service = state->service;
    const bool started = service->evaluations_->run(
        [state, lookup = std::move(lookup)] { evaluate(*state, lookup); });
    if (!started)
      finish_locked(*state, grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down"));
  }

  static void evaluate(State& state, const CacheLookup& lookup) {
    const Plan& plan = state.plan;
    FlashCoreService& service = *state.service;
    // The handle with its cubin: the worker needs it even when the caller does not.
    v1::KernelHandle handle;
    fill_handle(*lookup.kernel, lookup.tier, plan.request.shape, plan.request.layout,
                /*omit_cubin=*/false, &handle);

    v1::EvaluateRequest request;
    fill_eval_kernel(handle, request.mutable_kernel());
    *request.mutable_problem() = handle.problem();
    request.set_validate(true);
    *request.mutable_validation() = plan.options;

    eval::EvaluateCall call;
    call.gpus = plan.gpus;
    auto evaluated = service.workers_->evaluate(request, plan.deadline, call);

    v1::ValidationRecord record;
    if (evaluated.ok()) {
      record = evaluated->validation();
      if (record.device().empty()) record.set_device(evaluated->device());
    } else {
      const Error& error = evaluated.error();
      // A kernel that faulted or hung failed validation: that is the
      // answer, recorded like any other. Errors before the kernel reached a
      // worker (queue, shutdown) or refusals of the request are not.
      const bool kernel_failed =
          call.dispatched &&
          (error.code == ErrorCode::internal || error.code == ErrorCode::deadline_exceeded);
      if (!kernel_failed) {
        finish_locked(state, to_grpc_status(error));
        return;
      }
      record.set_evaluated(true);
      record.set_passed(false);
      const auto infos = service.workers_->workers();
      if (call.gpu >= 0 && static_cast<size_t>(call.gpu) < infos.size())
        record.set_device(infos[call.gpu].device());
      record.set_detail(error.message);
    }
    service.validations_.put(handle.key(), record);
    spdlog::info("Validate {} on {}: {}{}", handle.key(), record.device(),
                 record.passed() ? "passed" : "failed",
                 record.detail().empty() ? "" : " (" + record.detail() + ")");

    std::lock_guard lock(state.mutex);
    if (state.finished) return;
    if (plan.omit_cubin) handle.clear_cubin();
    *handle.mutable_validation() = std::move(record);
    *state.response = std::move(handle);
    finish(state, grpc::Status::OK);
  }

  std::shared_ptr<State> state_;
};

FlashCoreService::FlashCoreService(std::shared_ptr<KernelCache> cache,
                                   std::shared_ptr<const NvrtcCompiler> compiler,
                                   ServiceOptions options,
                                   std::shared_ptr<eval::WorkerPool> workers,
                                   std::shared_ptr<TuningManager> tuning,
                                   std::shared_ptr<TuningDb> tuning_db)
    : cache_(std::move(cache)),
      compiler_(std::move(compiler)),
      options_(std::move(options)),
      workers_(std::move(workers)),
      evaluations_(std::make_unique<EvaluationThreads>()),
      tuning_db_(std::move(tuning_db)),
      tuning_(std::move(tuning)) {
  if (tuning_ && !tuning_db_) tuning_db_ = std::shared_ptr<TuningDb>(tuning_, &tuning_->db());
}

FlashCoreService::~FlashCoreService() {
  // Jobs still running end (cancelled) before the members their callbacks use.
  tuning_.reset();
}

void FlashCoreService::attach_validation(v1::KernelHandle* handle) const {
  if (auto record = validations_.latest(handle->key())) *handle->mutable_validation() = *record;
}

Status FlashCoreService::require_workers() const {
  if (workers_) return ok_status();
  return make_error(ErrorCode::failed_precondition,
                    "validation needs a GPU evaluation worker and the daemon has none: " +
                        options_.evaluation_unavailable_reason);
}

Status FlashCoreService::admit() {
  const size_t before = in_flight_.fetch_add(1);
  if (before >= options_.max_concurrent_rpcs) {
    in_flight_.fetch_sub(1);
    return make_error(ErrorCode::resource_exhausted,
                      "server busy: " + std::to_string(before) + " calls in flight");
  }
  return ok_status();
}

Result<auth::Identity> FlashCoreService::authorize(const grpc::CallbackServerContext* context,
                                                  auth::Role needed, std::string_view rpc) const {
  if (!options_.auth) return auth::Identity{std::string(auth::kAnonymous), auth::Role::admin};
  std::string_view header;
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end())
    header = std::string_view(it->second.data(), it->second.size());
  auto who = options_.auth->authenticate(header);
  if (!who) {
    spdlog::info("refused {} from {}: {}", rpc, context->peer(), who.error().message);
    return who.error();
  }
  if (!who->may(needed)) {
    spdlog::info("refused {} from client '{}' ({}): needs role {}", rpc, who->client,
                 auth::role_name(who->role), auth::role_name(needed));
    return make_error(ErrorCode::permission_denied,
                      "needs role " + std::string(auth::role_name(needed)) + "; client '" +
                          who->client + "' has role " + std::string(auth::role_name(who->role)));
  }
  return who;
}

Status FlashCoreService::take_compile_slot(const std::string& client) {
  if (!options_.quotas) return ok_status();
  return options_.quotas->acquire_compile(client);
}

void FlashCoreService::release_compile_slot(const std::string& client) {
  if (options_.quotas) options_.quotas->release_compile(client);
}

grpc::ServerUnaryReactor* FlashCoreService::finish_now(grpc::CallbackServerContext* context,
                                                       const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(bounded_status(status));
  return reactor;
}

Status FlashCoreService::require_gpu() const {
  if (options_.gpu.available) return ok_status();
  return make_error(
      ErrorCode::failed_precondition,
      "this request needs a GPU and the daemon has none: " + options_.gpu.unavailable_reason);
}

grpc::ServerUnaryReactor* FlashCoreService::Compile(grpc::CallbackServerContext* context,
                                                    const v1::KernelRequest* request,
                                                    v1::KernelHandle* response) {
  auto who = authorize(context, auth::Role::compile, "Compile");
  if (!who) return finish_now(context, to_grpc_status(who.error()));
  if (Status admitted = admit(); !admitted)
    return finish_now(context, to_grpc_status(admitted.error()));
  auto parsed = request->use_tuned_config()
                    ? parse_tuning_target(*request, options_.default_arch)
                    : parse_kernel_request(*request, options_.default_arch);
  if (parsed && request->use_tuned_config()) {
    if (Status tuned = apply_tuned_config(*parsed); !tuned) parsed = tuned.error();
  }
  if (!parsed) {
    release();
    return finish_now(context, to_grpc_status(parsed.error()));
  }
  if (Status slot = take_compile_slot(who->client); !slot) {
    release();
    return finish_now(context, to_grpc_status(slot.error()));
  }
  auto* reactor = new CompileReactor(this, response, std::move(parsed).value(),
                                     request->omit_cubin(), who->client);
  reactor->start(*cache_);
  return reactor;
}

grpc::ServerUnaryReactor* FlashCoreService::GetKernel(grpc::CallbackServerContext* context,
                                                      const v1::GetKernelRequest* request,
                                                      v1::KernelHandle* response) {
  if (auto who = authorize(context, auth::Role::read, "GetKernel"); !who)
    return finish_now(context, to_grpc_status(who.error()));
  if (Status admitted = admit(); !admitted)
    return finish_now(context, to_grpc_status(admitted.error()));
  const grpc::Status status = [&]() -> grpc::Status {
    if (request->key().empty())
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "key: must be set");
    if (!is_well_formed_key(request->key()))
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "key: '" + request->key() + "' is not 64 lowercase hex characters");
    auto lookup = cache_->get(request->key());
    if (!lookup) return to_grpc_status(lookup.error());
    const CachedKernel& kernel = *lookup->kernel;

    RuntimeShape shape = kernel.first_shape;
    v1::Layout layout = v1::LAYOUT_UNSPECIFIED;
    if (request->has_problem()) {
      auto requested = parse_shape_for(request->problem(), kernel.spec);
      if (!requested) return to_grpc_status(requested.error());
      shape = *requested;
      layout = request->problem().layout();
    }
    fill_handle(kernel, lookup->tier, shape, layout,
                request->omit_cubin() || request->cached_key() == kernel.key, response);
    attach_validation(response);
    return grpc::Status::OK;
  }();
  release();
  return finish_now(context, status);
}

grpc::ServerUnaryReactor* FlashCoreService::ListKernels(grpc::CallbackServerContext* context,
                                                        const v1::ListKernelsRequest* request,
                                                        v1::ListKernelsResponse* response) {
  if (auto who = authorize(context, auth::Role::read, "ListKernels"); !who)
    return finish_now(context, to_grpc_status(who.error()));
  if (Status admitted = admit(); !admitted)
    return finish_now(context, to_grpc_status(admitted.error()));
  const grpc::Status status = [&]() -> grpc::Status {
    int page_size = request->page_size();
    if (page_size < 0 || page_size > kMaxPageSize)
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "page_size: " + std::to_string(page_size) + " must be in [0, " +
                              std::to_string(kMaxPageSize) +
                              "] (0 = " + std::to_string(kDefaultPageSize) + ")");
    if (page_size == 0) page_size = kDefaultPageSize;
    // The token is the last key of the previous page: listing resumes after it.
    const std::string& token = request->page_token();
    if (!token.empty() && !is_well_formed_key(token))
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "page_token: '" + token + "' is not a token from ListKernels");

    // One extra entry tells whether another page follows.
    std::vector<CachedKernel> entries = cache_->list(token, static_cast<size_t>(page_size) + 1);
    const bool more = entries.size() > static_cast<size_t>(page_size);
    if (more) entries.resize(static_cast<size_t>(page_size));
    for (const auto& entry : entries) fill_summary(entry, response->add_kernels());
    if (more) response->set_next_page_token(entries.back().key);
    return grpc::Status::OK;
  }();
  release();
  return finish_now(context, status);
}

grpc::ServerUnaryReactor* FlashCoreService::GetServerInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetServerInfoRequest*,
                                                          v1::ServerInfo* response) {
  if (auto who = authorize(context, auth::Role::read, "GetServerInfo"); !who)
    return finish_now(context, to_grpc_status(who.error()));
  if (Status admitted = admit(); !admitted)
    return finish_now(context, to_grpc_status(admitted.error()));
  response->set_version(FLASHCORE_VERSION);
  response->set_nvrtc_version(NvrtcCompiler::nvrtc_version());
  response->set_default_arch(options_.default_arch);
  response->set_gpu_available(options_.gpu.available);
  if (options_.gpu.available) response->set_gpu_name(options_.gpu.name);
  else response->set_gpu_unavailable_reason(options_.gpu.unavailable_reason);
  for (const auto& arch : supported_archs()) response->add_supported_archs(std::string(arch.name));
  // Only templates this daemon's sources can build (a templates_dir may lack some).
  for (const auto& info : template_catalog())
    if (compiler_->templates().entry_header(std::string(info.id)).ok())
      response->add_templates(std::string(info.id));
  release();
  return finish_now(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* FlashCoreService::Validate(grpc::CallbackServerContext* context,
                                                     const v1::ValidateRequest* request,
                                                     v1::KernelHandle* response) {
  auto who = authorize(context, auth::Role::compile, "Validate");
  if (!who) return finish_now(context, to_grpc_status(who.error()));
  if (Status admitted = admit(); !admitted)
    return finish_now(context, to_grpc_status(admitted.error()));
  // Bad input is refused first, exactly as Compile refuses it.
  auto parsed = parse_validate_request(*request, options_.default_arch);
  if (!parsed) {
    release();
    return finish_now(context, to_grpc_status(parsed.error()));
  }
  if (Status ready = require_workers(); !ready) {
    release();
    return finish_now(context, to_grpc_status(ready.error()));
  }

  ValidateReactor::Plan plan;
  plan.request = std::move(parsed).value();
  plan.options = request->options();
  plan.omit_cubin = request->kernel().omit_cubin();
  // Only GPUs that can load the cubin: an sm_80 cubin does not run on sm_90.
  std::string gpus_seen;
  const auto infos = workers_->workers();
  for (size_t gpu = 0; gpu < infos.size(); ++gpu) {
    if (eval::cubin_runs_on(plan.request.spec.arch, infos[gpu].arch()))
      plan.gpus.push_back(static_cast<int>(gpu));
    gpus_seen += (gpus_seen.empty() ? "" : ", ") + std::string("GPU ") + std::to_string(gpu) +
                 " " + infos[gpu].device() + " (" + infos[gpu].arch() + ")";
  }
  if (plan.gpus.empty()) {
    release();
    return finish_now(context, grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                            "kernel.arch: " + plan.request.spec.arch +
                                                " cubins do not run on this daemon's GPUs: " +
                                                gpus_seen));
  }
  // The client's deadline bounds the wait for a worker as well; without one,
  // an hour (each call on a worker is bounded by the evaluation timeout).
  const auto left = std::clamp<std::chrono::system_clock::duration>(
      context->deadline() - std::chrono::system_clock::now(),
      std::chrono::system_clock::duration::zero(), std::chrono::hours(1));
  plan.deadline = eval::WorkerPool::Clock::now() + left;
  if (Status slot = take_compile_slot(who->client); !slot) {
    release();
    return finish_now(context, to_grpc_status(slot.error()));
  }
  plan.client = who->client;

  auto* reactor = new ValidateReactor(this, response, std::move(plan));
  reactor->start(*cache_);
  return reactor;
}

// ---- Tuning ----

namespace {

v1::Layout layout_of(QkvLayout layout) {
  return layout == QkvLayout::bhsd ? v1::LAYOUT_BHSD : v1::LAYOUT_BSHD;
}

QkvLayout qkv_layout_of(v1::Layout layout) {
  return layout == v1::LAYOUT_BHSD ? QkvLayout::bhsd : QkvLayout::bshd;
}

void fill_result(const TuneResult& result, v1::TuningResult* out) {
  out->set_template_id(result.scope.template_id);
  // The layout the result was tuned in (bshd for rows from before schema 4).
  fill_problem(result.scope.problem, result.shape, layout_of(result.scope.bucket.layout),
               out->mutable_problem());
  out->set_bucket(canonical_bucket(result.scope.bucket));
  out->set_device(result.scope.device_name);
  out->set_arch(result.scope.arch);
  // Concrete values, as every answer: rows from before schema 2 hold automatic ones.
  fill_config(template_info(result.scope.template_id).resolve(result.config, result.scope.problem),
              out->mutable_config());
  out->set_key(result.key);
  out->set_median_us(result.median_us);
  out->set_tflops(result.tflops);
  out->set_evaluations(result.evaluations);
  out->set_wall_seconds(result.wall_seconds);
  out->set_searcher(result.searcher);
  out->set_from_database(result.from_database);
  out->set_from_fleet(result.from_fleet);
  out->set_p10_us(result.p10_us);
  out->set_p90_us(result.p90_us);
  out->set_validated(result.validated);
  out->set_validation_detail(result.validation_detail);
  for (const Finalist& finalist : result.finalists) {
    v1::TuneFinalist* f = out->add_finalists();
    fill_config(template_info(result.scope.template_id).resolve(finalist.config,
                                                                result.scope.problem),
                f->mutable_config());
    f->set_median_us(finalist.median_us);
    f->set_p10_us(finalist.p10_us);
    f->set_p90_us(finalist.p90_us);
  }
}

void fill_best(const BestRecord& best, v1::TuningResult* out) {
  fill_result(tune_result_from_best(best), out);
}

v1::TuneProgress to_progress(const TuneEvent& event) {
  v1::TuneProgress progress;
  switch (event.kind) {
    case TuneEvent::Kind::queued:
      progress.mutable_queued()->set_position(event.position);
      break;
    case TuneEvent::Kind::started: {
      auto* started = progress.mutable_started();
      started->set_job_id(event.job_id);
      started->set_space_size(static_cast<int32_t>(event.space_size));
      started->set_max_evaluations(static_cast<int32_t>(event.max_evaluations));
      started->set_gpu_index(event.gpu);
      break;
    }
    case TuneEvent::Kind::trial: {
      auto* trial = progress.mutable_trial();
      fill_config(event.config, trial->mutable_config());
      trial->set_status(std::string(trial_status_name(event.status)));
      trial->set_median_us(event.median_us);
      trial->set_tflops(event.tflops);
      trial->set_failure(event.failure);
      trial->set_evaluations(static_cast<int32_t>(event.evaluations));
      trial->set_generation(static_cast<int32_t>(event.generation));
      break;
    }
    case TuneEvent::Kind::best: {
      auto* best = progress.mutable_best();
      fill_config(event.config, best->mutable_config());
      best->set_median_us(event.median_us);
      best->set_tflops(event.tflops);
      break;
    }
  }
  progress.set_eta_ms(event.eta_ms);
  return progress;
}

Error invalid_field(std::string message) {
  return make_error(ErrorCode::invalid_argument, std::move(message));
}

}  // namespace

// A Tune in flight. The job runs on a thread of the tuning manager and
// pushes progress here; writes go out one at a time (the next from
// OnWriteDone), and Finish waits for the last write. Cancellation (client
// gone, deadline, server drain) cancels the job and finishes the call; what
// the job pushes after that is dropped. State is shared with the job's
// callbacks, which may outlive the reactor.
class FlashCoreService::TuneReactor final : public grpc::ServerWriteReactor<v1::TuneProgress> {
 public:
  // `owner` was admitted one tune job by the quotas; the job counts against
  // them until the call ends.
  TuneReactor(FlashCoreService* service, const std::string& bucket, std::string owner)
      : state_(std::make_shared<State>()) {
    state_->service = service;
    state_->reactor = this;
    state_->bucket = bucket;
    state_->owner = std::move(owner);
  }

  void start(TuningManager& manager, TuneSettings settings) {
    // Listed (and cancellable by CancelTuneJob) from now until the call ends.
    state_->registry_id = state_->service->tune_jobs_.add(
        state_->owner, settings.template_id, state_->bucket,
        [weak = std::weak_ptr<State>(state_)](const std::string& by) {
          auto state = weak.lock();
          if (!state) return;
          TuningManager::JobHandle job;
          {
            std::lock_guard lock(state->mutex);
            state->cancelled = true;
            job = state->job;
          }
          // The answer first: the job's own end (cancelled while queued, say)
          // must not win the race and hide who cancelled it.
          finish(*state, grpc::Status(grpc::StatusCode::CANCELLED,
                                      "tune job cancelled by client '" + by + "'"));
          TuningManager::cancel(job);
        });
    TuneCallbacks callbacks;
    callbacks.on_event = [state = state_](const TuneEvent& event) {
      v1::TuneProgress progress = to_progress(event);
      if (progress.has_started()) {
        progress.mutable_started()->set_bucket(state->bucket);
        state->service->tune_jobs_.started(state->registry_id, event.job_id);
      }
      push(*state, std::move(progress));
    };
    callbacks.on_done = [state = state_](Result<TuneResult> result) {
      if (!result) {
        finish(*state, to_grpc_status(result.error()));
        return;
      }
      v1::TuneProgress done;
      fill_result(*result, done.mutable_done());
      push(*state, std::move(done));
      finish(*state, grpc::Status::OK);
    };
    TuningManager::JobHandle job;
    {
      std::lock_guard lock(state_->mutex);
      // Cancelled (CancelTuneJob) before the job exists: it never starts.
      if (!state_->cancelled) state_->submitting = true;
    }
    if (state_->submitting) job = manager.submit(std::move(settings), std::move(callbacks));
    bool cancelled;
    {
      std::lock_guard lock(state_->mutex);
      state_->job = job;
      cancelled = state_->cancelled;
    }
    if (cancelled) TuningManager::cancel(job);
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(state_->mutex);
    state_->writing = false;
    if (!ok) state_->queue.clear();  // the stream is broken: only Finish is left
    pump(*state_);
  }

  void OnCancel() override {
    TuningManager::JobHandle job;
    {
      std::lock_guard lock(state_->mutex);
      state_->cancelled = true;
      job = state_->job;
    }
    // Outside the lock: cancelling takes the manager's lock, under which
    // queued events are pushed here.
    TuningManager::cancel(job);
    // The call ends now; the job stops at its next step (a measurement in
    // progress runs out) and records itself cancelled.
    finish(*state_, grpc::Status(grpc::StatusCode::CANCELLED, "tune cancelled"));
  }

  void OnDone() override {
    {
      std::lock_guard lock(state_->mutex);
      state_->reactor = nullptr;
    }
    delete this;
  }

 private:
  struct State {
    std::mutex mutex;
    FlashCoreService* service = nullptr;
    TuneReactor* reactor = nullptr;  // null after OnDone
    std::string bucket;
    std::deque<v1::TuneProgress> queue;
    v1::TuneProgress current;  // the message being written
    bool writing = false;
    std::optional<grpc::Status> status;  // set once: Finish follows the queued writes
    bool finish_called = false;
    bool cancelled = false;
    bool submitting = false;
    TuningManager::JobHandle job;
    std::string owner;
    int64_t registry_id = 0;
  };

  static void push(State& state, v1::TuneProgress progress) {
    std::lock_guard lock(state.mutex);
    if (state.status || state.finish_called || !state.reactor) return;
    state.queue.push_back(std::move(progress));
    pump(state);
  }

  static void finish(State& state, grpc::Status status) {
    std::lock_guard lock(state.mutex);
    if (state.status) return;
    state.status = bounded_status(status);
    // The job leaves the list and its GPU time is charged to its owner.
    if (auto gpu_seconds = state.service->tune_jobs_.finish(state.registry_id);
        gpu_seconds && state.service->options_.quotas)
      state.service->options_.quotas->end_tune_job(state.owner, *gpu_seconds);
    pump(state);
  }

  // Caller holds state.mutex.
  static void pump(State& state) {
    if (state.writing || state.finish_called || !state.reactor) return;
    if (!state.queue.empty()) {
      state.current = std::move(state.queue.front());
      state.queue.pop_front();
      state.writing = true;
      state.reactor->StartWrite(&state.current);
      return;
    }
    if (state.status) {
      state.finish_called = true;
      state.service->release();
      state.reactor->Finish(*state.status);
    }
  }

  std::shared_ptr<State> state_;
};

std::string FlashCoreService::tuning_device() const {
  if (tuning_) return tuning_->device_name();
  return options_.gpu.available ? options_.gpu.name : std::string();
}

TuningScope FlashCoreService::tuning_scope(const CompileRequest& request,
                                           const std::string& device) const {
  TuningScope scope;
  scope.template_id = request.spec.template_id;
  scope.problem = request.spec.problem;
  scope.bucket = bucket_of(request.shape, qkv_layout_of(request.layout));
  scope.device_name = device;
  scope.arch = request.spec.arch;
  return scope;
}

std::optional<BestRecord> FlashCoreService::fleet_best(const TuningScope& scope) const {
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

Status FlashCoreService::apply_tuned_config(CompileRequest& request) const {
  if (!tuning_db_)
    return make_error(ErrorCode::failed_precondition,
                      "use_tuned_config: the daemon has no tuning database");
  const std::string device = tuning_device();
  if (device.empty())
    return make_error(ErrorCode::failed_precondition,
                      "use_tuned_config: tuning results are per device and the daemon has no GPU");
  const TuningScope scope = tuning_scope(request, device);
  auto best = tuning_db_->best_for(scope);
  if (!best) return best.error();
  if (!*best && options_.fleet_bests) *best = fleet_best(scope);
  // On sm_90a both attention families solve the same problem: the faster of
  // their stored bests (same device, bucket and arch) is what is served, and
  // the handle's template_id says which family that is.
  if (request.spec.arch == "sm_90a") {
    for (std::string_view other : {kAttentionTemplateId, sm90_family::kTemplateId}) {
      if (other == scope.template_id) continue;
      TuningScope other_scope = scope;
      other_scope.template_id = std::string(other);
      auto rival = tuning_db_->best_for(other_scope);
      if (!rival) return rival.error();
      if (*rival && (!*best || (*rival)->median_us < (*best)->median_us)) {
        best = std::move(rival);
        request.spec.template_id = std::string(other);
      }
    }
  }
  if (!*best)
    return make_error(ErrorCode::not_found,
                      "use_tuned_config: no tuning result for " +
                          canonical_problem_class(scope.problem) + " bucket " +
                          canonical_bucket(scope.bucket) + " on " + device + " (" + scope.arch +
                          "); run Tune first");
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

grpc::ServerWriteReactor<v1::TuneProgress>* FlashCoreService::Tune(
    grpc::CallbackServerContext* context, const v1::TuneRequest* request) {
  auto refuse = [&](const grpc::Status& status) {
    class Refused final : public grpc::ServerWriteReactor<v1::TuneProgress> {
     public:
      explicit Refused(const grpc::Status& status) { Finish(bounded_status(status)); }
      void OnDone() override { delete this; }
    };
    return new Refused(status);
  };
  auto who = authorize(context, auth::Role::tune, "Tune");
  if (!who) return refuse(to_grpc_status(who.error()));
  if (Status admitted = admit(); !admitted) return refuse(to_grpc_status(admitted.error()));
  auto settings = [&]() -> Result<TuneSettings> {
    auto parsed = parse_tuning_target(request->kernel(), options_.default_arch);
    if (!parsed) {
      Error error = parsed.error();
      error.message = "kernel." + error.message;
      return error;
    }
    TuneSettings out;
    out.template_id = parsed->spec.template_id;
    out.problem = parsed->spec.problem;
    out.shape = parsed->shape;
    out.layout = qkv_layout_of(parsed->layout);
    out.arch = parsed->spec.arch;
    const std::string searcher = request->searcher().empty() ? "evolutionary" : request->searcher();
    auto kind = parse_searcher_kind(searcher);
    if (!kind)
      return invalid_field("searcher: unknown searcher '" + searcher +
                           "' (evolutionary, random, exhaustive)");
    out.searcher = *kind;
    if (request->max_evaluations() < 0) return invalid_field("max_evaluations: must be >= 0");
    if (request->time_budget_ms() < 0) return invalid_field("time_budget_ms: must be >= 0");
    if (request->patience() < 0) return invalid_field("patience: must be >= 0");
    const auto& timing = request->timing();
    if (timing.warmup() < 0 || timing.repetitions() < 0 || timing.target_loop_ms() < 0)
      return invalid_field("timing: warmup, repetitions and target_loop_ms must be >= 0");
    out.max_evaluations = request->max_evaluations();
    out.time_budget = std::chrono::milliseconds(request->time_budget_ms());
    out.patience = request->patience();
    out.force = request->force();
    out.seed = request->seed();
    out.warmup = timing.warmup();
    out.repetitions = timing.repetitions();
    out.target_loop_ms = timing.target_loop_ms();
    return out;
  }();
  if (!settings) {
    release();
    return refuse(to_grpc_status(settings.error()));
  }
  if (!tuning_) {
    release();
    return refuse(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                               "tuning needs a GPU evaluation worker and the daemon has none: " +
                                   options_.evaluation_unavailable_reason));
  }
  if (workers_) {
    // Jobs measure on any GPU: every worker's device must load the cubins.
    for (const auto& info : workers_->workers()) {
      if (!eval::cubin_runs_on(settings->arch, info.arch())) {
        release();
        return refuse(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                   "kernel.arch: " + settings->arch + " cubins do not run on GPU " +
                                       std::to_string(info.gpu_index()) + " " + info.device() +
                                       " (" + info.arch() + ")"));
      }
    }
  }
  if (options_.quotas) {
    std::optional<double> gpu_seconds_left;
    if (Status quota = options_.quotas->admit_tune_job(who->client, gpu_seconds_left); !quota) {
      release();
      return refuse(to_grpc_status(quota.error()));
    }
    // A job may not run past what its client has left of the hour's GPU time.
    if (gpu_seconds_left) {
      const auto left = std::chrono::milliseconds(
          std::max<int64_t>(1, static_cast<int64_t>(*gpu_seconds_left * 1000.0)));
      const auto asked =
          settings->time_budget.count() > 0 ? settings->time_budget : kDefaultTuneTimeBudget;
      settings->time_budget = std::min(asked, left);
    }
  }
  auto* reactor = new TuneReactor(
      this, canonical_bucket(bucket_of(settings->shape, settings->layout)), who->client);
  reactor->start(*tuning_, std::move(settings).value());
  return reactor;
}

grpc::ServerUnaryReactor* FlashCoreService::ListTuneJobs(grpc::CallbackServerContext* context,
                                                         const v1::ListTuneJobsRequest*,
                                                         v1::ListTuneJobsResponse* response) {
  auto who = authorize(context, auth::Role::read, "ListTuneJobs");
  if (!who) return finish_now(context, to_grpc_status(who.error()));
  for (auto& job : tune_jobs_.list(*who)) *response->add_jobs() = std::move(job);
  return finish_now(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* FlashCoreService::CancelTuneJob(grpc::CallbackServerContext* context,
                                                          const v1::CancelTuneJobRequest* request,
                                                          v1::CancelTuneJobResponse* response) {
  auto who = authorize(context, auth::Role::tune, "CancelTuneJob");
  if (!who) return finish_now(context, to_grpc_status(who.error()));
  auto cancelled = tune_jobs_.cancel(request->id(), *who);
  if (!cancelled) return finish_now(context, to_grpc_status(cancelled.error()));
  spdlog::info("tune job {} of client '{}' cancelled by client '{}'", request->id(),
               cancelled->owner(), who->client);
  *response->mutable_job() = std::move(cancelled).value();
  return finish_now(context, grpc::Status::OK);
}

grpc::ServerUnaryReactor* FlashCoreService::GetTuningResult(
    grpc::CallbackServerContext* context, const v1::GetTuningResultRequest* request,
    v1::TuningResult* response) {
  if (auto who = authorize(context, auth::Role::read, "GetTuningResult"); !who)
    return finish_now(context, to_grpc_status(who.error()));
  if (Status admitted = admit(); !admitted)
    return finish_now(context, to_grpc_status(admitted.error()));
  const grpc::Status status = [&]() -> grpc::Status {
    auto parsed = parse_tuning_target(request->kernel(), options_.default_arch);
    if (!parsed) {
      Error error = parsed.error();
      error.message = "kernel." + error.message;
      return to_grpc_status(error);
    }
    if (!tuning_db_)
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "the daemon has no tuning database");
    const std::string device = request->device().empty() ? tuning_device() : request->device();
    if (device.empty())
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "device: must be set (the daemon has no GPU to default to)");
    const TuningScope scope = tuning_scope(*parsed, device);
    auto best = tuning_db_->best_for(scope);
    if (!best) return to_grpc_status(best.error());
    if (!*best)
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "no tuning result for " + canonical_problem_class(scope.problem) +
                              " bucket " + canonical_bucket(scope.bucket) + " on " + device +
                              " (" + scope.arch + ")");
    fill_best(**best, response);
    return grpc::Status::OK;
  }();
  release();
  return finish_now(context, status);
}

grpc::ServerUnaryReactor* FlashCoreService::ListTuningResults(
    grpc::CallbackServerContext* context, const v1::ListTuningResultsRequest* request,
    v1::ListTuningResultsResponse* response) {
  if (auto who = authorize(context, auth::Role::read, "ListTuningResults"); !who)
    return finish_now(context, to_grpc_status(who.error()));
  if (Status admitted = admit(); !admitted)
    return finish_now(context, to_grpc_status(admitted.error()));
  const grpc::Status status = [&]() -> grpc::Status {
    if (request->page_size() < 0 || request->page_size() > kMaxPageSize)
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "page_size: " + std::to_string(request->page_size()) +
                              " must be in [0, " + std::to_string(kMaxPageSize) + "]");
    if (!tuning_db_)
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "the daemon has no tuning database");
    auto page = tuning_db_->list_best(request->page_size(), request->page_token());
    if (!page) {
      Error error = page.error();
      // The database's message already names page_token.
      if (error.code == ErrorCode::invalid_argument && error.message.rfind("page_token:", 0) != 0)
        error.message = "page_token: " + error.message;
      return to_grpc_status(error);
    }
    for (const auto& best : page->items) fill_best(best, response->add_results());
    response->set_next_page_token(page->next_page_token);
    return grpc::Status::OK;
  }();
  release();
  return finish_now(context, status);
}

}  // namespace flashcore::rpc
