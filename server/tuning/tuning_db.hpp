// The tuning database (DESIGN.md §5): one SQLite file holding one row per
// measured candidate (`trials`), one row per tuned key (`best`: problem
// class, shape bucket with its GQA ratio and layout, device name, arch) and
// one row per tuning job (`jobs`).
//
// It never loses results silently: a file that is empty, not SQLite, of
// another application, damaged, of a newer schema or not writable is
// refused at open with an error naming it and how to move it aside, and is
// left exactly as it was. A stored row that does not read is an error for
// its own key and is left out (counted) of lists.
// Every row names the toolchain that produced it, so a result measured with
// another NVRTC or another template source can be told apart.
//
// One connection, guarded by a mutex, in WAL mode with a busy timeout, so
// several TuningDb objects (threads or processes) may share one file: writes
// that read-then-write run in BEGIN IMMEDIATE transactions.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "tuning/shape_bucket.hpp"
#include "family/tile_config.hpp"

struct sqlite3;

namespace flashcore {

// Outcome of one candidate. `wrong`: it ran but failed the correctness gate;
// `failed`: it did not compile or did not run (fault, deadline); `skipped`:
// not measured (e.g. already tried), recorded so a job's log is complete.
enum class TrialStatus { ok, failed, wrong, skipped };
std::string_view trial_status_name(TrialStatus status);
std::optional<TrialStatus> parse_trial_status(std::string_view name);

enum class JobStatus { running, succeeded, failed, cancelled };
std::string_view job_status_name(JobStatus status);
std::optional<JobStatus> parse_job_status(std::string_view name);

// The key a tuning result applies to: template and problem class (compile
// time), shape bucket (run time), and the device it was measured on.
struct TuningScope {
  std::string template_id{kAttentionTemplateId};
  ProblemClass problem;
  ShapeBucket bucket;
  std::string device_name;  // as the driver reports it: "NVIDIA H100 80GB HBM3"
  std::string arch;         // "sm_90a"
};

// What produced a record. nvrtc_version and template_source_hash decide
// whether a cubin (and so a stored best) is current; the driver is recorded
// because it can change timings, not validity.
struct ToolchainRecord {
  std::string nvrtc_version;         // "13.0"
  std::string template_source_hash;  // hex SHA-256 over all template sources
  std::string driver_version;        // "580.65.06"; empty where unknown
};

struct TrialRecord {
  int64_t id = 0;      // assigned by record_trial
  int64_t job_id = 0;  // 0: not part of a job
  TuningScope scope;
  RuntimeShape shape;  // the exact shape measured (bucket_of(shape) == scope.bucket normally)
  TileConfig config;
  std::string cache_key;
  TrialStatus status = TrialStatus::ok;
  std::string failure_reason;  // empty for ok
  // Timing (DESIGN.md §6): median of `samples` launches and its spread.
  // Zero where the candidate was not timed (failed, wrong, skipped).
  double median_us = 0.0;
  double p10_us = 0.0;
  double p90_us = 0.0;
  int samples = 0;
  double tflops = 0.0;
  // Correctness against the reference.
  double rel_error = 0.0;
  double max_abs_error = 0.0;
  // ptxas resources and the config's dynamic shared memory.
  int registers = 0;
  int spill_store_bytes = 0;
  int spill_load_bytes = 0;
  int smem_bytes = 0;
  int gpu_index = 0;  // which GPU of the host measured it
  ToolchainRecord toolchain;
  int64_t created_unix_ms = 0;  // 0: now
};

struct BestRecord {
  TuningScope scope;
  RuntimeShape shape;  // the exact shape it was tuned on; all 0 on rows from before schema 2
  TileConfig config;
  std::string cache_key;
  double median_us = 0.0;
  double tflops = 0.0;
  int64_t trial_id = 0;     // the trial that measured it; 0: none recorded
  int64_t evaluations = 0;  // candidates measured by the search that found it
  double wall_seconds = 0.0;
  std::string searcher;  // "exhaustive", "evolutionary", ...
  ToolchainRecord toolchain;
  int64_t updated_unix_ms = 0;  // 0: now
  // The spread of median_us (the finalists' interleaved re-timing); 0 on
  // rows from before schema 5.
  double p10_us = 0.0;
  double p90_us = 0.0;
  // Whether the whole validation matrix passed on the tuned shape before
  // the row was stored, and what it said (false before schema 5, or where
  // the evaluation backend cannot run it).
  bool validated = false;
  std::string validation_detail;
};

struct JobRecord {
  int64_t id = 0;
  TuningScope scope;
  std::string searcher;
  JobStatus status = JobStatus::running;
  int64_t started_unix_ms = 0;
  int64_t finished_unix_ms = 0;  // 0 while running
  int64_t evaluations = 0;       // trials recorded for the job, skipped ones excepted
  int64_t best_trial_id = 0;     // fastest ok trial, set by finish_job; 0: none
  ToolchainRecord toolchain;
};

struct BestPage {
  std::vector<BestRecord> items;
  std::string next_page_token;  // empty on the last page
  // Rows of this page's range that did not read (an unknown enum name, a
  // bucket text that disagrees with its fields, a time that was never
  // measured): left out, each logged with its reason.
  int64_t skipped = 0;
  std::vector<std::string> skipped_reasons;
};

struct JobPage {
  std::vector<JobRecord> items;
  std::string next_page_token;  // empty on the last page
  // Rows that did not read, left out and counted as in BestPage.
  int64_t skipped = 0;
  std::vector<std::string> skipped_reasons;
};

struct NearBest {
  BestRecord best;
  int distance = 0;  // bucket_distance to the requested bucket
};

// Selects trials; unset members match everything.
struct TrialFilter {
  std::optional<int64_t> job_id;
  std::optional<TuningScope> scope;
  std::optional<TrialStatus> status;
};

enum class BestUpdate {
  if_faster,  // store only if faster than the current best by more than the larger of
              // their p10-p90 spreads (or there is none, or it is stale)
  force,      // store regardless (e.g. an operator pins a config)
};

class TuningDb {
 public:
  // Schema version this build writes; a file with a higher PRAGMA
  // user_version is refused (failed_precondition), never rewritten.
  static int schema_version();

  // Opens or creates the database at `path` (":memory:" for a private one)
  // and applies pending migrations in one transaction. Refused
  // (failed_precondition, the path and a way out in the message, the file
  // untouched): an empty file, one that is not SQLite or fails quick_check,
  // another application's (application_id, or tables without our schema
  // version), one whose schema version lacks its tables, a newer schema, a
  // file SQLite can only open read-only.
  static Result<std::unique_ptr<TuningDb>> open(const std::string& path);

  ~TuningDb();
  TuningDb(const TuningDb&) = delete;
  TuningDb& operator=(const TuningDb&) = delete;

  const std::string& path() const { return path_; }

  Result<int64_t> begin_job(const TuningScope& scope, std::string_view searcher,
                            const ToolchainRecord& toolchain);
  // Sets the final status and the job's fastest ok trial. Unknown job:
  // not_found; already finished: failed_precondition.
  // `best_trial_id`: the trial the job chose (after re-timing and full
  // validation); nullopt: the fastest ok trial.
  Status finish_job(int64_t job_id, JobStatus status,
                    std::optional<int64_t> best_trial_id = std::nullopt);
  // Re-marks a trial of a running job (a winner that failed the full
  // validation becomes `wrong` with the reason). Unknown trial: not_found;
  // its job finished: failed_precondition.
  Status set_trial_status(int64_t trial_id, TrialStatus status, std::string_view reason);
  Result<std::optional<JobRecord>> job(int64_t job_id);
  // Every recorded job (any status), in id order, paged as list_best.
  Result<JobPage> list_jobs(int page_size, std::string_view page_token = {});

  // Inserts the trial (and counts it toward its job's evaluations); returns its id.
  Result<int64_t> record_trial(const TrialRecord& trial);
  Result<std::vector<TrialRecord>> trials_for_job(int64_t job_id);
  // Jobs per status name ("running", "succeeded", ...), for the metrics.
  Result<std::map<std::string, int64_t>> count_jobs_by_status();
  // Trials per GPU index among those the filter selects.
  Result<std::map<int, int64_t>> count_trials_by_gpu(const TrialFilter& filter);
  // Distinct configs already recorded for the scope (any status), so a
  // search can skip them. With `toolchain`, only those measured with the same
  // NVRTC version and template source hash count.
  Result<std::vector<TileConfig>> tried_configs(
      const TuningScope& scope, const std::optional<ToolchainRecord>& toolchain = std::nullopt);

  // Atomically replaces the best for candidate.scope when there is none, when
  // `mode` is force, when the stored one was made by another NVRTC version or
  // template source (its cubin is no longer served), or when the candidate is
  // faster by more than the larger p10-p90 spread of the two (a win inside
  // the measured noise is not a win). Returns whether the candidate was stored.
  Result<bool> update_best_if_better(const BestRecord& candidate,
                                     BestUpdate mode = BestUpdate::if_faster);
  Result<std::optional<BestRecord>> best_for(const TuningScope& scope);
  // Pages in insertion order; the token is opaque to callers. page_size <= 0
  // means a default of 100; larger than 1000 is capped.
  Result<BestPage> list_best(int page_size, std::string_view page_token = {});
  // Best rows of the same template, problem class, device name and arch,
  // nearest bucket first (ties by seq_q, seq_k, batch_heads), at most `limit`.
  // The scope's own bucket, if tuned, comes first at distance 0.
  Result<std::vector<NearBest>> nearest_best(const TuningScope& scope, int limit);

 private:
  TuningDb(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}

  std::string path_;
  sqlite3* db_;
  std::mutex mutex_;
};

}  // namespace flashcore
