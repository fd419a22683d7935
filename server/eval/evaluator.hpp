// The evaluation logic of a worker process (DESIGN.md §4, §6): one GPU's
// primary context, the validation matrix of a kernel (fp64 reference or a
// reference kernel, poisoned outputs, determinism, stability, resources) and
// its timing. Usable in-process (GPU tests); the worker serves it over gRPC
// (worker_service.hpp).
//
// A CUDA error from a launch, a synchronize or a copy after a launch leaves
// the context unusable: evaluate() then returns internal and context_lost()
// turns true for good; the process must exit and be restarted.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "flashcore/v1/worker.pb.h"
#include "family/tile_config.hpp"

namespace flashcore::eval {

// Defaults for request fields left 0 (worker.proto).
inline constexpr int kDefaultDeterminismRuns = 100;
inline constexpr int kDefaultStabilityTrials = 10;
inline constexpr double kFp16Tolerance = 2e-3;
inline constexpr double kBf16Tolerance = 1e-2;
// The one-element gate: max |out - ref| <= this x max(1, max |ref|). Caught
// what the norm hides (one wrong row among millions). The H200's correct
// kernels reach 1.1e-3 (fp16) and 8.3e-3 (bf16) unscaled on the GPU tests.
inline constexpr double kFp16MaxAbsTolerance = 4e-3;
inline constexpr double kBf16MaxAbsTolerance = 2.5e-2;
// LSE is fp32 in the kernel for both dtypes; the GPU tests hold it to this too.
inline constexpr double kLseTolerance = 1e-2;
inline constexpr int kDefaultWarmup = 3;
inline constexpr int kDefaultRepetitions = 15;
inline constexpr double kDefaultTargetLoopMs = 2.0;
// EvaluateRequest.kernels (several kernels timed interleaved in one call):
// the tuning job sends its finalists (kFinalists + the family default), so 8
// leaves room without letting one call hold the GPU for long.
inline constexpr int kMaxTimedKernels = 8;
inline constexpr int kDefaultTimingRounds = 3;
inline constexpr int kMaxTimingRounds = 100;

// ---- Pure CPU parts (no device needed) ----

double default_tolerance(DType dtype);
double default_max_abs_tolerance(DType dtype);

// Query rows of one (batch, head) to check against fp64: every row when
// `count` is 0 or covers seq_q; else `count` distinct rows (at least three)
// that always include row 0, row seq_q - 1 and the first row of the last
// (possibly partial) block_m tile, the rest drawn from `rng`. Sorted.
std::vector<int> sample_rows(int seq_q, int count, int block_m, std::mt19937_64& rng);

// The seed of validation trial `trial` (0-based) of an evaluation seeded
// `seed`: that trial's random inputs and sampled rows derive from it.
uint64_t validation_trial_seed(uint64_t seed, int trial);
// The rows a trial seeded `trial_seed` checks against the CPU's fp64 (when
// `count` rows per (batch, head) are sampled): sample_rows for each
// (batch, head), batch-major, from one generator.
std::vector<std::vector<int>> reference_rows(int batch, int heads, int seq_q, int count,
                                             int block_m, uint64_t trial_seed);

// 4 * batch * heads * seq_q * seq_k * head_dim (two matmuls, 2 flops per
// multiply-add), halved when causal.
double attention_flops(const v1::Problem& problem);

// Linear interpolation between closest ranks; `sorted` ascending and not
// empty, `fraction` in [0, 1] (0.5 = median).
double percentile(const std::vector<double>& sorted, double fraction);

// The kernel timed at place `step` of round `round` when n kernels are timed
// in interleaved rounds: the order rotates by one each round, so no kernel is
// always first, and over n rounds each takes every place once.
size_t interleaved_kernel(int round, size_t step, size_t n);

// median/min/max/p10/p90 of per-launch times in microseconds, plus tflops
// for `problem` at the median. `samples_us` need not be sorted.
v1::TimingResult summarize_timing(std::vector<double> samples_us, const v1::Problem& problem);

// Bytes of one input set as the timing loop rotates it: Q, K, V and O in the
// dtype plus the fp32 LSE.
int64_t input_set_bytes(const v1::Problem& problem);

// How many input sets the timing loop rotates so that together they exceed
// twice the L2 (each launch then reads cold inputs): at least 2, and no more
// than fit in `memory_budget_bytes` (a set larger than the budget still gets 1).
int input_sets_for(int64_t set_bytes, int64_t l2_bytes, int64_t memory_budget_bytes);

// Hex SHA-256 of an output (the determinism hash).
std::string output_digest(std::string_view bytes);

// INVALID_ARGUMENT reasons, naming the proto field, for a request the worker
// cannot evaluate: no cubin or name, a shape the templates do not take, an
// ABI version other than this build's, negative options, nothing asked; with
// `kernels`: more than kMaxTimedKernels, kernels of different ABIs, `kernel`
// set too, anything asked besides timing, rounds out of [0, kMaxTimingRounds].
std::optional<std::string> request_error(const v1::EvaluateRequest& request);

// For logs: the request's kernel key (16 hex digits), or "3 kernels (k0, k1, k2)".
std::string request_kernels_label(const v1::EvaluateRequest& request);

// The part of a KernelHandle the worker needs (the handle must carry its cubin).
v1::EvalKernel eval_kernel_from_handle(const v1::KernelHandle& handle);

// ---- The device side ----

class Evaluator {
 public:
  // Probes GPU `gpu_index` and retains its primary context. failed_precondition
  // (no driver, no device, index out of range) where there is no such GPU.
  static Result<std::unique_ptr<Evaluator>> create(int gpu_index);
  ~Evaluator();
  Evaluator(const Evaluator&) = delete;
  Evaluator& operator=(const Evaluator&) = delete;

  const v1::WorkerInfo& info() const;

  // Validates and/or times request.kernel on request.problem. One evaluation
  // at a time (callers queue): they share the GPU and timing needs it alone.
  // A validation failure is a response with validation.passed false; timing
  // is skipped when validation ran and failed (a candidate is correct before
  // it is timed). Errors: invalid_argument (request), failed_precondition
  // (cubin does not load or cannot launch here), resource_exhausted (device
  // memory), cancelled (`cancelled` returned true between phases),
  // unavailable (context lost earlier), internal with context_lost() (a CUDA
  // error after a launch: this process must exit).
  // With request.kernels: every kernel timed, rounds interleaved, on the
  // same inputs (response.timings); an error names the kernel (kernels[i]).
  Result<v1::EvaluateResponse> evaluate(const v1::EvaluateRequest& request,
                                        const std::function<bool()>& cancelled = {});

  bool context_lost() const;

  struct State;

 private:
  explicit Evaluator(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace flashcore::eval
