#include "service/tuning_backends.hpp"

#include "eval/evaluator.hpp"
#include "family/template_catalog.hpp"
#include "service/kernel_handle.hpp"

namespace flashcore::service {

CompiledCandidate to_candidate(const CachedKernel& kernel,
                               std::shared_ptr<const CachedKernel> owner) {
  CompiledCandidate candidate;
  candidate.config = kernel.spec.config;
  candidate.key = kernel.key;
  const ResourceReport& resources = kernel.compiled.resources;
  candidate.registers = resources.registers;
  candidate.spill_store_bytes = resources.spill_store_bytes;
  candidate.spill_load_bytes = resources.spill_load_bytes;
  candidate.stack_frame_bytes = resources.stack_frame_bytes;
  candidate.smem_bytes =
      template_info(kernel.spec.template_id).smem_bytes(kernel.spec.config, kernel.spec.problem);
  candidate.kernel = std::move(owner);
  return candidate;
}

void KernelCacheCompiler::compile(const std::string& template_id, const ProblemClass& problem,
                                  const TileConfig& config, const std::string& arch,
                                  const RuntimeShape& shape, Callback done) {
  KernelSpec spec;
  spec.template_id = template_id;
  spec.problem = problem;
  spec.config = config;
  spec.arch = arch;
  cache_->get_or_compile(spec, shape, [done = std::move(done)](Result<CacheLookup> result) {
    if (!result) {
      done(result.error());
      return;
    }
    done(to_candidate(*result->kernel, result->kernel));
  });
}

ToolchainRecord KernelCacheCompiler::toolchain() const {
  ToolchainRecord record;
  record.nvrtc_version = NvrtcCompiler::nvrtc_version();
  record.template_source_hash = compiler_->templates().source_hash();
  return record;
}

std::string WorkerPoolBackend::device_name(int gpu) const {
  const auto infos = pool_->workers();
  if (gpu < 0 || static_cast<size_t>(gpu) >= infos.size()) return {};
  return infos[static_cast<size_t>(gpu)].device();
}

std::string WorkerPoolBackend::driver_version() const {
  const auto infos = pool_->workers();
  return infos.empty() ? std::string() : infos.front().driver_version();
}

namespace {

v1::Layout to_v1(QkvLayout layout) {
  return layout == QkvLayout::bhsd ? v1::LAYOUT_BHSD : v1::LAYOUT_BSHD;
}

v1::EvalKernel eval_kernel_of(const CompiledCandidate& candidate, const RuntimeShape& shape,
                              QkvLayout layout) {
  v1::KernelHandle handle;
  fill_handle(*candidate.kernel, CacheTier::memory, shape, to_v1(layout),
              /*omit_cubin=*/false, &handle);
  v1::EvalKernel kernel;
  fill_eval_kernel(handle, &kernel);
  return kernel;
}

// A timing as a Measurement: correct when it has a time (the validation,
// where there is one, is judged by the caller).
Measurement measurement_of(const v1::TimingResult& timing, const v1::EvaluateResponse& response) {
  Measurement m;
  m.correct = timing.median_us() > 0.0;
  if (!m.correct) m.validation_detail = "no timing returned";
  m.median_us = timing.median_us();
  m.p10_us = timing.p10_us();
  m.p90_us = timing.p90_us();
  m.samples = timing.samples();
  m.tflops = timing.tflops();
  m.gpu_index = response.gpu_index();
  m.device = response.device();
  return m;
}

}  // namespace

Result<Measurement> WorkerPoolBackend::measure(const MeasureRequest& request) {
  if (!request.candidate || !request.candidate->kernel)
    return make_error(ErrorCode::internal, "candidate without a compiled kernel");
  v1::EvaluateRequest call;
  // The request's layout: its strides are what the candidate is timed and
  // checked with (the problem below carries it to the worker).
  *call.mutable_kernel() = eval_kernel_of(*request.candidate, request.shape, request.layout);
  v1::KernelHandle handle;
  fill_handle(*request.candidate->kernel, CacheTier::memory, request.shape,
              to_v1(request.layout), /*omit_cubin=*/true, &handle);
  *call.mutable_problem() = handle.problem();
  call.set_validate(request.validate);
  // One stability trial and a few determinism runs: the search needs
  // "correct"; the winner gets the full matrix (validate_fully).
  call.mutable_validation()->set_determinism_runs(2);
  call.mutable_validation()->set_stability_trials(1);
  if (!request.validate) {
    // Re-timing a finalist: it passed the gate already.
  } else if (request.reference) {
    *call.mutable_reference() =
        eval_kernel_of(*request.reference, request.shape, request.layout);
  } else if (request.shape.seq_q > kReferenceRows) {
    call.mutable_validation()->set_reference_rows(kReferenceRows);
  }
  call.set_time(true);
  call.mutable_timing()->set_warmup(request.warmup);
  call.mutable_timing()->set_repetitions(request.repetitions);
  call.mutable_timing()->set_target_loop_ms(request.target_loop_ms);
  call.set_seed(request.seed);

  auto response = pool_->evaluate_on(request.gpu, call, request.deadline);
  if (!response) return response.error();
  Measurement measured = measurement_of(response->timing(), *response);
  const v1::ValidationRecord& validation = response->validation();
  measured.rel_error = validation.rel_error();
  measured.max_abs_error = validation.max_abs_error();
  if (request.validate && !validation.passed()) {
    measured.correct = false;
    measured.validation_detail = validation.detail();
  } else if (measured.correct) {
    measured.validation_detail = validation.detail();
  }
  return measured;
}

namespace {

std::string problem_label(const ProblemClass& problem) {
  return std::string(dtype_name(problem.dtype)) + " head_dim " +
         std::to_string(problem.head_dim) + (problem.causal ? " causal" : " non-causal");
}

// Kernels timed together read one set of inputs: one template, one problem class.
std::optional<std::string> candidate_error(const MeasureManyRequest& request, size_t i) {
  const std::string field = "candidates[" + std::to_string(i) + "]";
  const CompiledCandidate* candidate = request.candidates[i];
  if (!candidate || !candidate->kernel) return field + ": without a compiled kernel";
  const KernelSpec& spec = candidate->kernel->spec;
  const ProblemClass& want = request.common.problem;
  if (spec.problem.dtype != want.dtype || spec.problem.head_dim != want.head_dim ||
      spec.problem.causal != want.causal)
    return field + ".problem: compiled for " + problem_label(spec.problem) +
           ", but the call times " + problem_label(want);
  const KernelSpec& first = request.candidates[0]->kernel->spec;
  if (spec.template_id != first.template_id)
    return field + ".template_id: " + spec.template_id + ", but candidates[0] is " +
           first.template_id + "; kernels timed together must be of one family";
  return std::nullopt;
}


}  // namespace

Result<v1::EvaluateRequest> timing_request(const MeasureManyRequest& request) {
  const size_t n = request.candidates.size();
  if (n == 0) return make_error(ErrorCode::invalid_argument, "candidates: none to time");
  if (n > static_cast<size_t>(eval::kMaxTimedKernels))
    return make_error(ErrorCode::invalid_argument,
                      "candidates: " + std::to_string(n) +
                          " given; one worker call times at most " +
                          std::to_string(eval::kMaxTimedKernels));
  if (request.rounds < 1 || request.rounds > eval::kMaxTimingRounds)
    return make_error(ErrorCode::invalid_argument,
                      "rounds: " + std::to_string(request.rounds) + " must be in [1, " +
                          std::to_string(eval::kMaxTimingRounds) + "]");
  const MeasureRequest& common = request.common;
  v1::EvaluateRequest call;
  for (size_t i = 0; i < n; ++i) {
    if (auto e = candidate_error(request, i))
      return make_error(request.candidates[i] && request.candidates[i]->kernel
                            ? ErrorCode::invalid_argument
                            : ErrorCode::internal,
                        *e);
    *call.add_kernels() = eval_kernel_of(*request.candidates[i], common.shape, common.layout);
  }
  v1::KernelHandle handle;
  fill_handle(*request.candidates[0]->kernel, CacheTier::memory, common.shape,
              to_v1(common.layout), /*omit_cubin=*/true, &handle);
  *call.mutable_problem() = handle.problem();
  call.set_time(true);
  call.set_rounds(request.rounds);
  call.mutable_timing()->set_warmup(common.warmup);
  call.mutable_timing()->set_repetitions(common.repetitions);
  call.mutable_timing()->set_target_loop_ms(common.target_loop_ms);
  call.set_seed(common.seed);
  return call;
}

std::vector<Measurement> round_measurements(const v1::KernelTiming& timing,
                                            const v1::EvaluateResponse& response) {
  std::vector<Measurement> rounds;
  for (const v1::TimingResult& round : timing.rounds())
    rounds.push_back(measurement_of(round, response));
  if (rounds.empty() && timing.has_timing())
    rounds.push_back(measurement_of(timing.timing(), response));
  return rounds;
}

Result<RoundTimes> WorkerPoolBackend::measure_many(const MeasureManyRequest& request) {
  auto call = timing_request(request);
  if (!call) return call.error();
  auto response = pool_->evaluate_on(request.common.gpu, *call, request.common.deadline);
  if (!response) return response.error();
  if (response->timings_size() != call->kernels_size())
    return make_error(ErrorCode::internal,
                      "the worker timed " + std::to_string(response->timings_size()) + " of " +
                          std::to_string(call->kernels_size()) + " kernels");
  RoundTimes times;
  for (const v1::KernelTiming& timing : response->timings())
    times.push_back(round_measurements(timing, *response));
  return times;
}

Result<std::optional<FullValidation>> WorkerPoolBackend::validate_fully(
    const MeasureRequest& request) {
  if (!request.candidate || !request.candidate->kernel)
    return make_error(ErrorCode::internal, "candidate without a compiled kernel");
  v1::EvaluateRequest call;
  *call.mutable_kernel() = eval_kernel_of(*request.candidate, request.shape, request.layout);
  v1::KernelHandle handle;
  fill_handle(*request.candidate->kernel, CacheTier::memory, request.shape,
              to_v1(request.layout), /*omit_cubin=*/true, &handle);
  *call.mutable_problem() = handle.problem();
  call.set_validate(true);
  // reference_rows 0: every row of every (batch, head), the ragged tail included.
  call.mutable_validation()->set_reference_rows(0);
  call.mutable_validation()->set_determinism_runs(kFullDeterminismRuns);
  call.mutable_validation()->set_stability_trials(kFullStabilityTrials);
  call.set_time(false);
  call.set_seed(request.seed);
  auto response = pool_->evaluate_on(request.gpu, call, request.deadline);
  if (!response) return response.error();
  const v1::ValidationRecord& validation = response->validation();
  FullValidation full;
  full.passed = validation.passed();
  full.rel_error = validation.rel_error();
  full.max_abs_error = validation.max_abs_error();
  full.detail = validation.detail();
  if (full.passed && full.detail.empty())
    full.detail = "every row against fp64, " + std::to_string(kFullDeterminismRuns) +
                  " determinism runs, " + std::to_string(kFullStabilityTrials) +
                  " stability trials";
  return std::optional<FullValidation>(std::move(full));
}

}  // namespace flashcore::service
