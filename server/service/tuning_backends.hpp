// The production sides of tuning's two interfaces (search/tuning_job.hpp):
// candidates compile through the kernel cache (so a tuned kernel is already
// cached when a client asks for it) and are measured by the per-GPU
// evaluation workers.
#pragma once

#include <memory>
#include <string>

#include "cache/kernel_cache.hpp"
#include "eval/worker_pool.hpp"
#include "tuning/tuning_job.hpp"

namespace flashcore::service {

class KernelCacheCompiler final : public CandidateCompiler {
 public:
  KernelCacheCompiler(std::shared_ptr<KernelCache> cache,
                      std::shared_ptr<const NvrtcCompiler> compiler)
      : cache_(std::move(cache)), compiler_(std::move(compiler)) {}
  void compile(const std::string& template_id, const ProblemClass& problem,
               const TileConfig& config, const std::string& arch, const RuntimeShape& shape,
               Callback done) override;
  ToolchainRecord toolchain() const override;

 private:
  std::shared_ptr<KernelCache> cache_;
  std::shared_ptr<const NvrtcCompiler> compiler_;
};

// Validation (fp64 for the first candidate, then against the job's
// reference kernel on `reference_rows` sampled rows) and timing in one
// Evaluate call on the job's GPU.
class WorkerPoolBackend final : public EvaluationBackend {
 public:
  explicit WorkerPoolBackend(std::shared_ptr<eval::WorkerPool> pool) : pool_(std::move(pool)) {}
  Result<Measurement> measure(const MeasureRequest& request) override;
  // One Evaluate with request.candidates as EvaluateRequest.kernels: the
  // worker times them in request.rounds interleaved rounds on one set of
  // inputs (timing_request says what it refuses).
  Result<RoundTimes> measure_many(const MeasureManyRequest& request) override;
  // Every row against fp64, kFullDeterminismRuns launches hashed alike,
  // kFullStabilityTrials fresh inputs; no timing.
  Result<std::optional<FullValidation>> validate_fully(const MeasureRequest& request) override;
  int gpu_count() const override { return pool_->gpu_count(); }
  std::string device_name(int gpu) const override;
  std::string driver_version() const override;

  // Rows per (batch, head) checked against fp64 on big shapes: the CPU
  // reference is O(seq^2) per row, so full checks of long sequences take minutes.
  static constexpr int kReferenceRows = 64;
  // The winner's full validation: Validate's own matrix (DESIGN.md §6).
  static constexpr int kFullDeterminismRuns = 100;
  static constexpr int kFullStabilityTrials = 10;

 private:
  std::shared_ptr<eval::WorkerPool> pool_;
};

// The worker call measure_many makes: invalid_argument naming the field for
// no candidates, more than eval::kMaxTimedKernels, rounds out of [1,
// eval::kMaxTimingRounds], or a candidate compiled for another template or
// problem class than request.common's (they would not read the same
// inputs); internal for a candidate without a compiled kernel.
Result<v1::EvaluateRequest> timing_request(const MeasureManyRequest& request);

// What one KernelTiming of a response says: a Measurement per round (the
// pooled timing as the one round where the worker sent no rounds).
std::vector<Measurement> round_measurements(const v1::KernelTiming& timing,
                                            const v1::EvaluateResponse& response);

// CompiledCandidate from a cache answer.
CompiledCandidate to_candidate(const CachedKernel& kernel, std::shared_ptr<const CachedKernel> owner);

}  // namespace flashcore::service
