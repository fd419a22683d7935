// A tuning job and the manager that queues them (DESIGN.md §3, tuning path):
// the searcher proposes configs, candidates compile ahead on CPU threads
// while earlier ones are measured, configs whose ptxas report spills are
// skipped before any GPU time, the rest are measured on one GPU, and every
// trial, the best and the job itself go into the tuning database.
//
// search/ knows neither the kernel cache nor the worker pool: compiling and
// measuring come in through two interfaces (CandidateCompiler,
// EvaluationBackend) whose production implementations live in rpc/
// (tuning_backends.hpp), so this layer stays below them.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/result.hpp"
#include "tuning/fleet_bests.hpp"
#include "tuning/searcher.hpp"
#include "tuning/shape_bucket.hpp"
#include "family/tile_config.hpp"
#include "tuning/tuning_db.hpp"

namespace flashcore {

struct CachedKernel;  // cache/cached_kernel.hpp; carried, never looked into, here

// A compiled candidate: its key, the ptxas report the resource filter reads,
// and the compiled kernel itself for the evaluation backend.
struct CompiledCandidate {
  TileConfig config;
  std::string key;
  int registers = 0;
  int spill_store_bytes = 0;
  int spill_load_bytes = 0;
  int stack_frame_bytes = 0;
  int smem_bytes = 0;
  std::shared_ptr<const CachedKernel> kernel;  // null where a backend needs none
};

// Why a compiled candidate is not worth GPU time, or nullopt. Spills and a
// stack frame mean local-memory traffic in the inner loop: such a config
// loses to a spill-free one of the same space, so it is skipped unmeasured.
std::optional<std::string> resource_skip_reason(const CompiledCandidate& candidate);

class CandidateCompiler {
 public:
  using Callback = std::function<void(Result<CompiledCandidate>)>;
  virtual ~CandidateCompiler() = default;
  // Compiles `config` for the job's problem class and arch; `done` runs
  // exactly once, possibly on another thread, possibly before this returns.
  virtual void compile(const std::string& template_id, const ProblemClass& problem,
                       const TileConfig& config, const std::string& arch,
                       const RuntimeShape& shape, Callback done) = 0;
  virtual ToolchainRecord toolchain() const = 0;
};

// How many of the fastest correct candidates are re-timed at the end, and
// how many interleaved rounds: the search's single measurements pick them,
// the re-timing decides between them (DESIGN.md §6).
inline constexpr size_t kFinalists = 3;
inline constexpr int kRetimeRounds = 3;

struct MeasureRequest {
  const CompiledCandidate* candidate = nullptr;
  // Null: validate against the fp64 reference (the job's first correct
  // candidate becomes the reference for the rest).
  const CompiledCandidate* reference = nullptr;
  ProblemClass problem;
  RuntimeShape shape;
  QkvLayout layout = QkvLayout::bshd;  // measured and checked in the request's layout
  int gpu = 0;
  uint64_t seed = 1;
  int warmup = 0;  // 0: the worker's defaults
  int repetitions = 0;
  double target_loop_ms = 0.0;
  std::chrono::steady_clock::time_point deadline;
  // True once the job is cancelled (client gone, deadline, drain): a backend
  // may give up a measurement in progress then; the job stops after it.
  const std::atomic<bool>* cancelled = nullptr;
  // False for the finalists' re-timing: they passed the gate already, only
  // their times are asked for (`correct` is then true whenever timed).
  bool validate = true;
};

// Several candidates timed side by side (the finalists' re-timing): one
// call, `rounds` rounds, each timing every candidate in turn on the same
// inputs. Times only: they passed the correctness gate already.
struct MeasureManyRequest {
  // Problem, shape, layout, GPU, seed, timing options, deadline and the
  // cancel flag; its candidate, reference and validate are not read.
  MeasureRequest common;
  std::vector<const CompiledCandidate*> candidates;
  int rounds = kRetimeRounds;
};

// The whole validation matrix on the tuned shape, run on the winner before
// it is stored as best (DESIGN.md §3: "winner validated"): every output row
// against fp64 (the ragged tail included), determinism over many launches,
// several stability trials.
struct FullValidation {
  bool passed = false;
  std::string detail;  // why it failed, or what ran
  double rel_error = 0.0;
  double max_abs_error = 0.0;
};

struct Measurement {
  bool correct = false;  // passed the correctness gate
  std::string validation_detail;
  double rel_error = 0.0;
  double max_abs_error = 0.0;
  double median_us = 0.0;
  double p10_us = 0.0;
  double p90_us = 0.0;
  int samples = 0;
  double tflops = 0.0;
  int gpu_index = 0;
  std::string device;
};

// Per candidate of a MeasureManyRequest (in its order), one Measurement per
// round: that round's median, p10 and p90. Empty for a candidate that gave
// no time.
using RoundTimes = std::vector<std::vector<Measurement>>;

// Measures compiled candidates on a GPU. An error is a failed trial (fault,
// timeout, worker down) with its message as the reason; the search goes on.
class EvaluationBackend {
 public:
  virtual ~EvaluationBackend() = default;
  virtual Result<Measurement> measure(const MeasureRequest& request) = 0;
  // Every candidate timed in interleaved rounds. A backend that can time
  // several kernels in one call does (the worker pool's); this default
  // makes one measure() per candidate per round, round-robin. An error
  // (one kernel faulted, a timeout) leaves every candidate without a time.
  virtual Result<RoundTimes> measure_many(const MeasureManyRequest& request);
  // Runs the full validation matrix on request.candidate (no reference
  // kernel: fp64 on every row). nullopt: this backend cannot, and the
  // winner is stored as not fully validated (validated = false).
  virtual Result<std::optional<FullValidation>> validate_fully(const MeasureRequest& request) {
    (void)request;
    return std::optional<FullValidation>{};
  }
  // GPUs this backend measures on, and each one's device name and NVRTC arch.
  virtual int gpu_count() const = 0;
  virtual std::string device_name(int gpu) const = 0;
  virtual std::string driver_version() const { return {}; }
};

// One measure() per candidate per round, round-robin: the default
// measure_many, and the tuning job's fallback when a one-call measure_many
// fails (a fault then fails only its own kernel's calls). A failed call
// leaves that round out for its candidate (logged).
RoundTimes measure_round_robin(EvaluationBackend& backend, const MeasureManyRequest& request);

struct TuneSettings {
  std::string template_id{kAttentionTemplateId};
  // Families searched in the same job beside template_id (same problem,
  // shape, layout and arch): each gets a share of the budget in proportion
  // to its space, then every family's stored best is re-timed side by side
  // and the one served is chosen (DESIGN.md §6). The service sets them on
  // sm_90a when the request names no family (prefill_families()).
  std::vector<std::string> rival_families;
  // False where the request named no family (the daemon picked template_id).
  bool family_named = true;
  ProblemClass problem;
  RuntimeShape shape;
  QkvLayout layout = QkvLayout::bshd;  // part of the key: each layout is tuned on its own
  std::string arch;  // resolved, never empty
  SearcherKind searcher = SearcherKind::evolutionary;
  int max_evaluations = 0;  // 0: 20% of the pruned space (rounded down), at least 8
  std::chrono::milliseconds time_budget{0};  // 0: 60 s
  int patience = 0;                          // 0: off
  bool force = false;
  uint64_t seed = 0;  // 0: 1
  int warmup = 0, repetitions = 0;
  double target_loop_ms = 0.0;
};

inline constexpr std::chrono::milliseconds kDefaultTuneTimeBudget{60000};
// max_evaluations when the request leaves it 0.
size_t default_max_evaluations(size_t space_size);


// A finalist's times from the interleaved re-timing: the median over rounds
// of each round's median, p10 and p90.
struct Finalist {
  TileConfig config;
  double median_us = 0.0;
  double p10_us = 0.0;
  double p90_us = 0.0;
  double spread_us() const { return p90_us - p10_us; }
};

// Whether `challenger` displaces `incumbent`: only when it is faster by more
// than the larger of the two spreads (a win inside the noise is not a win).
bool displaces(const Finalist& challenger, const Finalist& incumbent);
// Of `entrants`, the one chosen: `incumbent`, unless another displaces it;
// challengers are tried fastest first, each against the one chosen so far.
size_t chosen_entrant(const std::vector<Finalist>& entrants, size_t incumbent);

// One family's part of a job that searched several (TuneSettings::
// rival_families): its stored best as re-timed side by side with the
// others' at the end, or why it has none.
struct FamilyFinalist {
  std::string template_id;
  TileConfig config;
  double median_us = 0.0;
  double p10_us = 0.0;
  double p90_us = 0.0;
  bool tuned = false;  // searched by this job (false: its stored best was current)
  std::string error;   // why the family has no best (then no times)
};

struct TuneResult {
  TuningScope scope;
  RuntimeShape shape;  // the shape tuned on (all 0 for bests stored before schema 2)
  TileConfig config;
  std::string key;
  double median_us = 0.0;
  double tflops = 0.0;
  int64_t evaluations = 0;
  double wall_seconds = 0.0;
  std::string searcher;
  bool from_database = false;
  bool from_fleet = false;  // another daemon's best, from the fleet (also stored here)
  double p10_us = 0.0;  // the winner's spread when last timed
  double p90_us = 0.0;
  // The finalists as re-timed (the winner first), and what the winner's
  // full validation said; validated = false where the backend cannot run it.
  std::vector<Finalist> finalists;
  // finalists[1]'s median minus the winner's: how far ahead the winner is
  // (negative where a faster finalist stayed inside the spread and did not
  // displace it); 0 with fewer than two finalists.
  double runner_up_margin_us = 0.0;
  bool validated = false;
  std::string validation_detail;
  // A job that searched several families: each one's outcome, the chosen
  // (this result's family) first; empty otherwise.
  std::vector<FamilyFinalist> families;
};

// A stored best as a job's result (from_database = true).
TuneResult tune_result_from_best(const BestRecord& best);

struct TuneEvent {
  enum class Kind { queued, started, trial, best } kind = Kind::trial;
  int position = 0;  // queued
  // started, trial, best: the family searched (a job that searches several
  // starts once per family, each with its own space and budget).
  std::string template_id;
  // started
  int64_t job_id = 0;
  size_t space_size = 0;
  size_t max_evaluations = 0;
  int gpu = 0;
  // trial / best
  TileConfig config;
  TrialStatus status = TrialStatus::ok;
  double median_us = 0.0;
  double tflops = 0.0;
  std::string failure;
  size_t evaluations = 0;
  size_t generation = 0;
  int64_t eta_ms = 0;
};

struct TuneCallbacks {
  std::function<void(const TuneEvent&)> on_event;  // from the job's thread
  std::function<void(Result<TuneResult>)> on_done;  // exactly once, last
};

// Runs tuning jobs, one per GPU at a time, others queued in FIFO order.
// Each submitted job has a thread of its own (waiting in the queue, then
// running); the destructor cancels every job and joins them.
class TuningManager {
 public:
  struct Options {
    size_t compile_ahead = 0;  // 0: 2 x GPUs + 2
    // Bests shared by the fleet (null: none): asked before tuning a bucket
    // this box has no current best for, told of each best stored.
    std::shared_ptr<FleetBests> fleet;
  };

  TuningManager(std::shared_ptr<CandidateCompiler> compiler,
                std::shared_ptr<EvaluationBackend> backend, std::shared_ptr<TuningDb> db,
                Options options);
  TuningManager(std::shared_ptr<CandidateCompiler> compiler,
                std::shared_ptr<EvaluationBackend> backend, std::shared_ptr<TuningDb> db)
      : TuningManager(std::move(compiler), std::move(backend), std::move(db), Options{}) {}
  ~TuningManager();
  TuningManager(const TuningManager&) = delete;
  TuningManager& operator=(const TuningManager&) = delete;

  class Job;
  using JobHandle = std::shared_ptr<Job>;

  // Starts the job (or returns the stored result through on_done when one
  // is current and !settings.force). The handle cancels it.
  JobHandle submit(TuneSettings settings, TuneCallbacks callbacks);
  static void cancel(const JobHandle& job);

  // The device name tuning results are keyed on: GPU 0's.
  std::string device_name() const { return backend_->device_name(0); }
  TuningDb& db() { return *db_; }
  size_t queued() const;

 private:
  friend class Job;
  // Blocks until `job` may run on a GPU; nullopt when cancelled first.
  std::optional<int> acquire_gpu(Job& job);
  void release_gpu(int gpu);
  void notify_positions();  // caller holds mutex_

  std::shared_ptr<CandidateCompiler> compiler_;
  std::shared_ptr<EvaluationBackend> backend_;
  std::shared_ptr<TuningDb> db_;
  Options options_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<bool> gpu_busy_;
  std::list<Job*> waiting_;
  std::vector<JobHandle> jobs_;  // threads to join
  bool stopping_ = false;
};

}  // namespace flashcore
