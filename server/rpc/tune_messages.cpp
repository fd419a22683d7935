#include "rpc/tune_messages.hpp"

#include "family/template_catalog.hpp"
#include "rpc/translate.hpp"
#include "service/kernel_handle.hpp"

namespace flashcore::rpc {

using service::fill_config;
using service::fill_problem;

namespace {

Error invalid_field(std::string message) {
  return make_error(ErrorCode::invalid_argument, std::move(message));
}

// The search's knobs, each checked and named as the proto spells it.
Status parse_search_options(const v1::TuneRequest& request, TuneSettings& out) {
  const std::string searcher = request.searcher().empty() ? "evolutionary" : request.searcher();
  auto kind = parse_searcher_kind(searcher);
  if (!kind)
    return invalid_field("searcher: unknown searcher '" + searcher +
                         "' (evolutionary, random, exhaustive)");
  out.searcher = *kind;
  if (request.max_evaluations() < 0) return invalid_field("max_evaluations: must be >= 0");
  if (request.time_budget_ms() < 0) return invalid_field("time_budget_ms: must be >= 0");
  if (request.patience() < 0) return invalid_field("patience: must be >= 0");
  const auto& timing = request.timing();
  if (timing.warmup() < 0 || timing.repetitions() < 0 || timing.target_loop_ms() < 0)
    return invalid_field("timing: warmup, repetitions and target_loop_ms must be >= 0");
  out.max_evaluations = request.max_evaluations();
  out.time_budget = std::chrono::milliseconds(request.time_budget_ms());
  out.patience = request.patience();
  out.force = request.force();
  out.seed = request.seed();
  out.warmup = timing.warmup();
  out.repetitions = timing.repetitions();
  out.target_loop_ms = timing.target_loop_ms();
  return ok_status();
}

}  // namespace

v1::Layout layout_of(QkvLayout layout) {
  return layout == QkvLayout::bhsd ? v1::LAYOUT_BHSD : v1::LAYOUT_BSHD;
}

QkvLayout qkv_layout_of(v1::Layout layout) {
  return layout == v1::LAYOUT_BHSD ? QkvLayout::bhsd : QkvLayout::bshd;
}

Result<TuneSettings> parse_tune_request(const v1::TuneRequest& request,
                                        std::string_view default_arch) {
  auto parsed = parse_tuning_target(request.kernel(), default_arch);
  if (!parsed) {
    Error error = parsed.error();
    error.message = "kernel." + error.message;
    return error;
  }
  TuneSettings out;
  out.template_id = parsed->spec.template_id;
  out.family_named = parsed->family_named;
  out.problem = parsed->spec.problem;
  out.shape = parsed->shape;
  out.layout = qkv_layout_of(parsed->layout);
  out.arch = parsed->spec.arch;
  if (Status options = parse_search_options(request, out); !options) return options.error();
  return out;
}

void fill_result(const TuneResult& result, v1::TuningResult* out) {
  const TemplateInfo& family = template_info(result.scope.template_id);
  out->set_template_id(result.scope.template_id);
  // The layout the result was tuned in (bshd for rows from before schema 4).
  fill_problem(result.scope.problem, result.shape, layout_of(result.scope.bucket.layout),
               out->mutable_problem());
  out->set_bucket(canonical_bucket(result.scope.bucket));
  out->set_device(result.scope.device_name);
  out->set_arch(result.scope.arch);
  // Concrete values, as every answer: rows from before schema 2 hold automatic ones.
  fill_config(family.resolve(result.config, result.scope.problem), out->mutable_config());
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
  out->set_runner_up_margin_us(result.runner_up_margin_us);
  for (const Finalist& finalist : result.finalists) {
    v1::TuneFinalist* f = out->add_finalists();
    fill_config(family.resolve(finalist.config, result.scope.problem), f->mutable_config());
    f->set_median_us(finalist.median_us);
    f->set_p10_us(finalist.p10_us);
    f->set_p90_us(finalist.p90_us);
  }
  for (const FamilyFinalist& each : result.families) {
    v1::TuneFamily* f = out->add_families();
    f->set_template_id(each.template_id);
    if (each.error.empty() || each.median_us > 0.0)
      fill_config(template_info(each.template_id).resolve(each.config, result.scope.problem),
                  f->mutable_config());
    f->set_median_us(each.median_us);
    f->set_p10_us(each.p10_us);
    f->set_p90_us(each.p90_us);
    f->set_tuned(each.tuned);
    f->set_error(each.error);
  }
}

void fill_best(const BestRecord& best, v1::TuningResult* out) {
  fill_result(tune_result_from_best(best), out);
}

void fill_job(const JobRecord& job, v1::TuningJobRecord* out) {
  out->set_id(job.id);
  out->set_template_id(job.scope.template_id);
  fill_problem(job.scope.problem, RuntimeShape{}, layout_of(job.scope.bucket.layout),
               out->mutable_problem());
  out->set_bucket(canonical_bucket(job.scope.bucket));
  out->set_device(job.scope.device_name);
  out->set_arch(job.scope.arch);
  out->set_searcher(job.searcher);
  out->set_status(std::string(job_status_name(job.status)));
  out->set_started_unix_ms(job.started_unix_ms);
  out->set_finished_unix_ms(job.finished_unix_ms);
  out->set_evaluations(job.evaluations);
  out->set_best_trial_id(job.best_trial_id);
  out->set_nvrtc_version(job.toolchain.nvrtc_version);
}

void fill_trial(const TrialRecord& trial, const TuningScope& job_scope,
                v1::TuningTrialRecord* out) {
  const TemplateInfo& family = template_info(job_scope.template_id);
  out->set_id(trial.id);
  fill_config(family.resolve(trial.config, job_scope.problem), out->mutable_config());
  out->set_status(std::string(trial_status_name(trial.status)));
  out->set_failure(trial.failure_reason);
  out->set_median_us(trial.median_us);
  out->set_p10_us(trial.p10_us);
  out->set_p90_us(trial.p90_us);
  out->set_tflops(trial.tflops);
  fill_problem(trial.scope.problem, trial.shape, layout_of(trial.scope.bucket.layout),
               out->mutable_shape());
  out->set_key(trial.cache_key);
  out->set_created_unix_ms(trial.created_unix_ms);
  out->set_gpu_index(trial.gpu_index);
  out->set_registers(trial.registers);
  out->set_rel_error(trial.rel_error);
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
      started->set_template_id(event.template_id);
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
      trial->set_template_id(event.template_id);
      break;
    }
    case TuneEvent::Kind::best: {
      auto* best = progress.mutable_best();
      fill_config(event.config, best->mutable_config());
      best->set_median_us(event.median_us);
      best->set_tflops(event.tflops);
      best->set_template_id(event.template_id);
      break;
    }
  }
  progress.set_eta_ms(event.eta_ms);
  return progress;
}

}  // namespace flashcore::rpc
