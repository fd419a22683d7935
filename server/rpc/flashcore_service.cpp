#include "rpc/flashcore_service.hpp"

#include <spdlog/spdlog.h>

#include <deque>
#include <mutex>
#include <optional>

#include "rpc/call_reactor.hpp"
#include "rpc/translate.hpp"
#include "rpc/tune_messages.hpp"
#include "service/kernel_handle.hpp"

namespace flashcore::rpc {
namespace {

// The handle of a kernel answer as a message (Validate); the launch geometry
// is for `shape`. Compile and GetKernel (rpc/kernel_queues) write theirs with
// rpc::write_handle.
void fill_answer(const service::KernelAnswer& answer, const RuntimeShape& shape,
                  v1::Layout layout, bool omit_cubin, v1::KernelHandle* out) {
  service::fill_handle(*answer.lookup.kernel, answer.lookup.tier, shape, layout, omit_cubin, out);
  if (answer.validation) *out->mutable_validation() = *answer.validation;
}

Status page_size_in_range(int page_size, int max, std::string_view zero_means) {
  if (page_size >= 0 && page_size <= max) return ok_status();
  return make_error(ErrorCode::invalid_argument, "page_size: " + std::to_string(page_size) +
                                                     " must be in [0, " + std::to_string(max) +
                                                     "]" + std::string(zero_means));
}

void fill_tier(const TierRemoval& removal, v1::CacheTierChange* out) {
  out->set_entries_removed(removal.entries_removed);
  out->set_bytes_removed(removal.bytes_removed);
  out->set_entries_left(removal.entries_left);
  out->set_bytes_left(removal.bytes_left);
}

void fill_cache_change(const CacheRemoval& removal, v1::CacheChange* out) {
  fill_tier(removal.memory, out->mutable_memory());
  if (removal.disk) fill_tier(*removal.disk, out->mutable_disk());
  if (removal.shared) fill_tier(*removal.shared, out->mutable_shared());
  for (const auto& key : removal.keys_not_found) out->add_keys_not_found(key);
}

}  // namespace

Result<auth::Identity> FlashCoreService::authorize(const grpc::ServerContextBase* context,
                                                  auth::Role needed, std::string_view rpc) const {
  std::string_view header;
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end())
    header = std::string_view(it->second.data(), it->second.size());
  return service_.authenticate(header, needed, rpc, context->peer());
}

grpc::ServerUnaryReactor* FlashCoreService::finish_now(grpc::CallbackServerContext* context,
                                                       const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(bounded_status(status));
  return reactor;
}

template <typename Answer>
grpc::ServerUnaryReactor* FlashCoreService::answer_now(grpc::CallbackServerContext* context,
                                                       auth::Role needed, std::string_view rpc,
                                                       bool admit, Answer&& answer) {
  auto who = authorize(context, needed, rpc);
  if (!who) return finish_now(context, to_grpc_status(who.error()));
  if (admit)
    if (Status admitted = service_.admit(); !admitted)
      return finish_now(context, to_grpc_status(admitted.error()));
  const Status status = answer(*who);
  if (admit) service_.release();
  return finish_now(context, status ? grpc::Status::OK : to_grpc_status(status.error()));
}

// ---- Kernels ----

grpc::ServerUnaryReactor* FlashCoreService::Validate(grpc::CallbackServerContext* context,
                                                     const v1::ValidateRequest* request,
                                                     v1::KernelHandle* response) {
  auto who = authorize(context, auth::Role::compile, "Validate");
  if (!who) return finish_now(context, to_grpc_status(who.error()));
  if (Status admitted = service_.admit(); !admitted)
    return finish_now(context, to_grpc_status(admitted.error()));
  // Bad input is refused first, exactly as Compile refuses it.
  auto parsed = parse_validate_request(*request, service_.options().default_arch);
  auto* call = new CallReactor(service_);
  if (!parsed) {
    call->finish(to_grpc_status(parsed.error()));
    return call;
  }
  service::ValidateRequest validate;
  validate.kernel = std::move(parsed).value();
  validate.options = request->options();
  validate.deadline = context->deadline();
  auto done = [call, response, shape = validate.kernel.shape, layout = validate.kernel.layout,
               omit = request->kernel().omit_cubin()](Result<service::KernelAnswer> answer) {
    if (!answer) return call->finish(to_grpc_status(answer.error()));
    fill_answer(*answer, shape, layout, /*omit_cubin=*/false, response);
    if (omit) response->clear_cubin();
    call->finish(grpc::Status::OK);
  };
  call->follow(service_.validate(*who, std::move(validate), std::move(done)));
  return call;
}

grpc::ServerUnaryReactor* FlashCoreService::ListKernels(grpc::CallbackServerContext* context,
                                                        const v1::ListKernelsRequest* request,
                                                        v1::ListKernelsResponse* response) {
  return answer_now(context, auth::Role::read, "ListKernels", true, [&](const auth::Identity&) {
    const int page_size = request->page_size();
    if (Status ok = page_size_in_range(page_size, kMaxPageSize,
                                       " (0 = " + std::to_string(kDefaultPageSize) + ")");
        !ok)
      return ok;
    auto page = service_.list_kernels(request->page_token(),
                                      static_cast<size_t>(page_size == 0 ? kDefaultPageSize
                                                                         : page_size));
    if (!page) return Status(page.error());
    for (const auto& entry : page->kernels) service::fill_summary(entry, response->add_kernels());
    if (!page->next_page_token.empty()) response->set_next_page_token(page->next_page_token);
    return ok_status();
  });
}

grpc::ServerUnaryReactor* FlashCoreService::GetServerInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetServerInfoRequest*,
                                                          v1::ServerInfo* response) {
  return answer_now(context, auth::Role::read, "GetServerInfo", true, [&](const auth::Identity&) {
    const service::ServerInfo info = service_.server_info();
    response->set_version(info.version);
    response->set_nvrtc_version(info.nvrtc_version);
    response->set_default_arch(info.default_arch);
    response->set_gpu_available(info.gpu.available);
    if (info.gpu.available) response->set_gpu_name(info.gpu.name);
    else response->set_gpu_unavailable_reason(info.gpu.unavailable_reason);
    for (const auto& arch : info.supported_archs) response->add_supported_archs(arch);
    for (const auto& id : info.templates) response->add_templates(id);
    return ok_status();
  });
}

// ---- Tuning ----

// A Tune in flight. The service runs the job and reports progress here;
// writes go out one at a time (the next from OnWriteDone), and Finish waits
// for the last write. Cancellation (client gone, deadline, server drain)
// cancels the job through the service, whose answer (CANCELLED) finishes the
// call; what comes after that is dropped. State is shared with the
// service's callbacks, which may outlive the reactor.
class FlashCoreService::TuneReactor final : public grpc::ServerWriteReactor<v1::TuneProgress> {
 public:
  TuneReactor(service::Service& service, std::string bucket) : state_(std::make_shared<State>()) {
    state_->service = &service;
    state_->reactor = this;
    state_->bucket = std::move(bucket);
  }

  void start(const auth::Identity& who, TuneSettings settings) {
    TuneCallbacks callbacks;
    callbacks.on_event = [state = state_](const TuneEvent& event) {
      v1::TuneProgress progress = to_progress(event);
      if (progress.has_started()) progress.mutable_started()->set_bucket(state->bucket);
      push(*state, std::move(progress));
    };
    callbacks.on_done = [state = state_](Result<TuneResult> result) {
      if (!result) return finish(*state, to_grpc_status(result.error()));
      v1::TuneProgress done;
      fill_result(*result, done.mutable_done());
      push(*state, std::move(done));
      finish(*state, grpc::Status::OK);
    };
    auto pending = state_->service->tune(who, std::move(settings), std::move(callbacks));
    if (!pending) return finish(*state_, to_grpc_status(pending.error()));
    std::lock_guard lock(state_->mutex);
    state_->pending = std::move(pending).value();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(state_->mutex);
    state_->writing = false;
    if (!ok) state_->queue.clear();  // the stream is broken: only Finish is left
    pump(*state_);
  }

  void OnCancel() override {
    std::shared_ptr<service::PendingCall> pending;
    {
      std::lock_guard lock(state_->mutex);
      pending = state_->pending;
    }
    // Outside the lock: the service's answer (CANCELLED) comes back through on_done.
    if (pending) pending->cancel();
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
    service::Service* service = nullptr;
    TuneReactor* reactor = nullptr;  // null after OnDone
    std::string bucket;
    std::deque<v1::TuneProgress> queue;
    v1::TuneProgress current;  // the message being written
    bool writing = false;
    std::optional<grpc::Status> status;  // set once: Finish follows the queued writes
    bool finish_called = false;
    std::shared_ptr<service::PendingCall> pending;
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

grpc::ServerWriteReactor<v1::TuneProgress>* FlashCoreService::Tune(
    grpc::CallbackServerContext* context, const v1::TuneRequest* request) {
  auto refuse = [](const grpc::Status& status) {
    class Refused final : public grpc::ServerWriteReactor<v1::TuneProgress> {
     public:
      explicit Refused(const grpc::Status& status) { Finish(bounded_status(status)); }
      void OnDone() override { delete this; }
    };
    return new Refused(status);
  };
  auto who = authorize(context, auth::Role::tune, "Tune");
  if (!who) return refuse(to_grpc_status(who.error()));
  if (Status admitted = service_.admit(); !admitted) return refuse(to_grpc_status(admitted.error()));
  auto settings = parse_tune_request(*request, service_.options().default_arch);
  if (!settings) {
    service_.release();
    return refuse(to_grpc_status(settings.error()));
  }
  auto* reactor =
      new TuneReactor(service_, canonical_bucket(bucket_of(settings->shape, settings->layout)));
  reactor->start(*who, std::move(settings).value());
  return reactor;
}

grpc::ServerUnaryReactor* FlashCoreService::ListTuneJobs(grpc::CallbackServerContext* context,
                                                         const v1::ListTuneJobsRequest*,
                                                         v1::ListTuneJobsResponse* response) {
  return answer_now(context, auth::Role::read, "ListTuneJobs", false,
                    [&](const auth::Identity& who) {
                      for (auto& job : service_.list_tune_jobs(who))
                        *response->add_jobs() = std::move(job);
                      return ok_status();
                    });
}

grpc::ServerUnaryReactor* FlashCoreService::CancelTuneJob(grpc::CallbackServerContext* context,
                                                          const v1::CancelTuneJobRequest* request,
                                                          v1::CancelTuneJobResponse* response) {
  return answer_now(context, auth::Role::tune, "CancelTuneJob", false,
                    [&](const auth::Identity& who) {
                      auto cancelled = service_.cancel_tune_job(request->id(), who);
                      if (!cancelled) return Status(cancelled.error());
                      *response->mutable_job() = std::move(cancelled).value();
                      return ok_status();
                    });
}

grpc::ServerUnaryReactor* FlashCoreService::GetTuningResult(
    grpc::CallbackServerContext* context, const v1::GetTuningResultRequest* request,
    v1::TuningResult* response) {
  return answer_now(context, auth::Role::read, "GetTuningResult", true,
                    [&](const auth::Identity&) {
                      auto parsed =
                          parse_tuning_target(request->kernel(), service_.options().default_arch);
                      if (!parsed) {
                        Error error = parsed.error();
                        error.message = "kernel." + error.message;
                        return Status(error);
                      }
                      auto best = service_.tuning_result(*parsed, request->device());
                      if (!best) return Status(best.error());
                      fill_best(*best, response);
                      return ok_status();
                    });
}

grpc::ServerUnaryReactor* FlashCoreService::ListTuningResults(
    grpc::CallbackServerContext* context, const v1::ListTuningResultsRequest* request,
    v1::ListTuningResultsResponse* response) {
  return answer_now(context, auth::Role::read, "ListTuningResults", true,
                    [&](const auth::Identity&) {
                      if (Status ok = page_size_in_range(request->page_size(), kMaxPageSize, "");
                          !ok)
                        return ok;
                      auto page = service_.list_tuning_results(request->page_size(),
                                                               request->page_token());
                      if (!page) return Status(page.error());
                      for (const auto& best : page->items) fill_best(best, response->add_results());
                      response->set_next_page_token(page->next_page_token);
                      response->set_skipped_rows(page->skipped);
                      for (const auto& reason : page->skipped_reasons)
                        response->add_skipped_reasons(reason);
                      return ok_status();
                    });
}

grpc::ServerUnaryReactor* FlashCoreService::ListTuningJobs(
    grpc::CallbackServerContext* context, const v1::ListTuningJobsRequest* request,
    v1::ListTuningJobsResponse* response) {
  return answer_now(context, auth::Role::read, "ListTuningJobs", true,
                    [&](const auth::Identity&) {
                      if (Status ok = page_size_in_range(request->page_size(), kMaxPageSize, "");
                          !ok)
                        return ok;
                      auto page = service_.list_tuning_jobs(request->page_size(),
                                                            request->page_token());
                      if (!page) return Status(page.error());
                      for (const auto& job : page->items) fill_job(job, response->add_jobs());
                      response->set_next_page_token(page->next_page_token);
                      response->set_skipped_rows(page->skipped);
                      for (const auto& reason : page->skipped_reasons)
                        response->add_skipped_reasons(reason);
                      return ok_status();
                    });
}

grpc::ServerUnaryReactor* FlashCoreService::GetTuningJob(grpc::CallbackServerContext* context,
                                                         const v1::GetTuningJobRequest* request,
                                                         v1::TuningJobTrials* response) {
  return answer_now(context, auth::Role::read, "GetTuningJob", true,
                    [&](const auth::Identity&) {
                      auto job = service_.tuning_job(request->job_id());
                      if (!job) return Status(job.error());
                      fill_job(job->job, response->mutable_job());
                      for (const auto& trial : job->trials)
                        fill_trial(trial, job->job.scope, response->add_trials());
                      return ok_status();
                    });
}

// ---- Cache administration ----

grpc::ServerUnaryReactor* FlashCoreService::ClearCache(grpc::CallbackServerContext* context,
                                                       const v1::ClearCacheRequest* request,
                                                       v1::CacheChange* response) {
  return answer_now(context, auth::Role::admin, "ClearCache", true,
                    [&](const auth::Identity& who) {
                      auto removal = service_.clear_cache(who, request->include_shared());
                      if (!removal) return Status(removal.error());
                      fill_cache_change(*removal, response);
                      return ok_status();
                    });
}

grpc::ServerUnaryReactor* FlashCoreService::EvictCache(grpc::CallbackServerContext* context,
                                                       const v1::EvictCacheRequest* request,
                                                       v1::CacheChange* response) {
  return answer_now(context, auth::Role::admin, "EvictCache", true,
                    [&](const auth::Identity& who) {
                      service::EvictRequest evict;
                      evict.keys.assign(request->keys().begin(), request->keys().end());
                      if (request->has_down_to_bytes()) evict.down_to_bytes = request->down_to_bytes();
                      evict.include_shared = request->include_shared();
                      auto removal = service_.evict_cache(who, evict);
                      if (!removal) return Status(removal.error());
                      fill_cache_change(*removal, response);
                      return ok_status();
                    });
}

}  // namespace flashcore::rpc
