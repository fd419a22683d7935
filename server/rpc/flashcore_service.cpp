#include "rpc/flashcore_service.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "cache/cache_key.hpp"
#include "jit/template_catalog.hpp"
#include "rpc/translate.hpp"

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
                 bool omit_cubin)
      : state_(std::make_shared<State>()) {
    state_->service = service;
    state_->reactor = this;
    state_->response = response;
    state_->request = std::move(request);
    state_->omit_cubin = omit_cubin;
  }

  // Asks the cache; the reply may come back before this returns (a hit).
  void start(KernelCache& cache) {
    const CompileRequest& request = state_->request;
    cache.get_or_compile(request.spec, request.shape, [state = state_](Result<CacheLookup> result) {
      answer(*state, std::move(result));
    });
  }

  void OnCancel() override {
    std::lock_guard lock(state_->mutex);
    finish(*state_, grpc::Status(grpc::StatusCode::CANCELLED, "compile cancelled"));
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
  };

  // Caller holds state.mutex.
  static void finish(State& state, const grpc::Status& status) {
    if (state.finished) return;
    state.finished = true;
    state.service->release();
    state.reactor->Finish(status);
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
    fill_handle(*lookup.kernel, lookup.tier, state.request.shape, state.request.layout,
                state.omit_cubin, state.response);
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
    state.service->release();
    state.reactor->Finish(status);
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
                                   std::shared_ptr<eval::WorkerPool> workers)
    : cache_(std::move(cache)),
      compiler_(std::move(compiler)),
      options_(std::move(options)),
      workers_(std::move(workers)),
      evaluations_(std::make_unique<EvaluationThreads>()) {}

FlashCoreService::~FlashCoreService() = default;

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

grpc::ServerUnaryReactor* FlashCoreService::finish_now(grpc::CallbackServerContext* context,
                                                       const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
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
  if (Status admitted = admit(); !admitted)
    return finish_now(context, to_grpc_status(admitted.error()));
  auto parsed = parse_kernel_request(*request, options_.default_arch);
  if (!parsed) {
    release();
    return finish_now(context, to_grpc_status(parsed.error()));
  }
  auto* reactor =
      new CompileReactor(this, response, std::move(parsed).value(), request->omit_cubin());
  reactor->start(*cache_);
  return reactor;
}

grpc::ServerUnaryReactor* FlashCoreService::GetKernel(grpc::CallbackServerContext* context,
                                                      const v1::GetKernelRequest* request,
                                                      v1::KernelHandle* response) {
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
    fill_handle(kernel, lookup->tier, shape, layout, request->omit_cubin(), response);
    attach_validation(response);
    return grpc::Status::OK;
  }();
  release();
  return finish_now(context, status);
}

grpc::ServerUnaryReactor* FlashCoreService::ListKernels(grpc::CallbackServerContext* context,
                                                        const v1::ListKernelsRequest* request,
                                                        v1::ListKernelsResponse* response) {
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

  auto* reactor = new ValidateReactor(this, response, std::move(plan));
  reactor->start(*cache_);
  return reactor;
}

}  // namespace flashcore::rpc
