#include "tuning/tuning_job.hpp"

#include "family/template_catalog.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "tuning/evolutionary_searcher.hpp"
#include "tuning/search_space.hpp"
#include "tuning/stop_condition.hpp"

namespace flashcore {

std::optional<std::string> resource_skip_reason(const CompiledCandidate& candidate) {
  if (candidate.spill_store_bytes > 0 || candidate.spill_load_bytes > 0)
    return "register spills (" + std::to_string(candidate.spill_store_bytes) + " B stores, " +
           std::to_string(candidate.spill_load_bytes) + " B loads): skipped before measurement";
  if (candidate.stack_frame_bytes > 0)
    return "stack frame of " + std::to_string(candidate.stack_frame_bytes) +
           " B (local memory): skipped before measurement";
  return std::nullopt;
}

size_t default_max_evaluations(size_t space_size) {
  // A fifth, rounded down so the default never measures more than 20% of
  // what an exhaustive search measures; tiny spaces still get 8 (or all).
  return std::max<size_t>(std::min<size_t>(8, space_size), space_size / 5);
}

namespace {

using Clock = std::chrono::steady_clock;

// Compiles in flight for one job, in proposal order. Shared with the
// compile callbacks, which may run after the job has stopped waiting.
struct CompileQueue {
  std::mutex mutex;
  std::condition_variable ready;
  struct Slot {
    TileConfig config;
    std::optional<Result<CompiledCandidate>> result;
  };
  std::map<uint64_t, Slot> slots;
  uint64_t next_id = 0;
  bool cancelled = false;
};

// What every measurement of a job shares: its problem, shape, layout, GPU,
// seed, timing options and cancel flag (no candidate, reference or deadline).
MeasureRequest measure_base(const TuneSettings& settings, int gpu,
                            const std::atomic<bool>* cancelled) {
  MeasureRequest base;
  base.problem = settings.problem;
  base.shape = settings.shape;
  base.layout = settings.layout;
  base.gpu = gpu;
  base.seed = settings.seed == 0 ? 1 : settings.seed;
  base.warmup = settings.warmup;
  base.repetitions = settings.repetitions;
  base.target_loop_ms = settings.target_loop_ms;
  base.cancelled = cancelled;
  return base;
}

// A candidate of a side-by-side re-timing.
struct RetimeEntrant {
  const CompiledCandidate* candidate;
  TileConfig config;
};

// Each entrant timed again, kRetimeRounds rounds interleaved, in one
// backend call (one worker call on the GPU). When that call fails (a kernel
// faulted, a timeout), one call per entrant per round instead: a fault then
// costs only its own kernel's times, and the others still race. Per
// entrant, the rounds that gave a time (none for fewer than two entrants).
std::vector<std::vector<Measurement>> retime_side_by_side(
    EvaluationBackend& backend, const std::vector<RetimeEntrant>& entrants,
    const MeasureRequest& base, const std::string& who, const std::function<bool()>& cancelled) {
  std::vector<std::vector<Measurement>> rounds(entrants.size());
  if (entrants.size() < 2) return rounds;
  MeasureManyRequest request;
  request.common = base;
  request.common.validate = false;
  request.common.deadline =
      Clock::now() + std::chrono::minutes(2) * static_cast<int>(entrants.size());
  for (const RetimeEntrant& entrant : entrants) request.candidates.push_back(entrant.candidate);
  request.rounds = kRetimeRounds;
  auto timed = backend.measure_many(request);
  if (timed && timed->size() != entrants.size())
    timed = make_error(ErrorCode::internal, "the backend answered " +
                                                std::to_string(timed->size()) + " of " +
                                                std::to_string(entrants.size()) + " finalists");
  if (!timed) {
    if (cancelled()) return rounds;
    spdlog::warn("{}: re-timing {} finalists in one call: {}; one call each instead", who,
                 entrants.size(), timed.error().message);
    timed = measure_round_robin(backend, request);
  }
  for (size_t i = 0; i < entrants.size(); ++i) {
    for (const Measurement& m : (*timed)[i])
      if (m.correct && m.median_us > 0.0) rounds[i].push_back(m);
    if (rounds[i].empty())
      spdlog::warn("{}: re-timing {}: no time", who, config_label(entrants[i].config));
  }
  return rounds;
}

// A finalist's times from its re-timing rounds (at least one): the median
// over rounds of each round's median, p10 and p90.
Finalist finalist_of(const TileConfig& config, const std::vector<Measurement>& rounds) {
  auto median_of = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::vector<double> med, p10, p90;
  for (const auto& m : rounds) {
    med.push_back(m.median_us);
    p10.push_back(m.p10_us);
    p90.push_back(m.p90_us);
  }
  Finalist f{config, median_of(med), 0.0, 0.0};
  f.p10_us = std::min(median_of(p10), f.median_us);
  f.p90_us = std::max(median_of(p90), f.median_us);
  return f;
}

// The space a job searches for its family: every valid config, less those
// the job's shape does not fit or that a search for it leaves out.
Result<SearchSpace> family_space(const TuneSettings& settings) {
  const auto arch = find_arch(settings.arch);
  if (!arch)
    return make_error(ErrorCode::invalid_argument,
                      "arch: '" + settings.arch + "' is not supported");
  auto space = SearchSpace::create(settings.problem, *arch, family_axes(settings.template_id),
                                   settings.template_id);
  if (!space) return space.error();
  // A family whose configs fit only some shapes (decode: packed rows) keeps
  // the ones this job's shape fits, and of those the ones worth searching
  // for it (decode: the smallest tile that holds the rows).
  const TemplateInfo& fits = template_info(settings.template_id);
  if (fits.shape_error == nullptr) return space;
  space->prune([&](const TileConfig& config, std::string* why) {
    auto error = fits.shape_error(config, settings.problem, settings.shape);
    if (!error && fits.search_skip != nullptr)
      error = fits.search_skip(config, settings.problem, settings.shape);
    if (error) *why = *error;
    return !error;
  });
  if (space->empty())
    return make_error(ErrorCode::invalid_argument,
                      "no config of " + settings.template_id + " fits the shape");
  return space;
}

}  // namespace

class TuningManager::Job {
 public:
  Job(TuningManager* manager, TuneSettings settings, TuneCallbacks callbacks)
      : manager_(manager),
        settings_(std::move(settings)),
        callbacks_(std::move(callbacks)),
        compiles_(std::make_shared<CompileQueue>()) {}

  void start() {
    thread_ = std::thread([this] {
      Result<TuneResult> result = run();
      if (callbacks_.on_done) callbacks_.on_done(std::move(result));
      // Only now: the next job's `started` follows this one's `done`.
      if (gpu_) manager_->release_gpu(*gpu_);
      finished_.store(true);
    });
  }

  void cancel() {
    cancelled_.store(true);
    {
      std::lock_guard lock(compiles_->mutex);
      compiles_->cancelled = true;
    }
    compiles_->ready.notify_all();
    {
      std::lock_guard lock(manager_->mutex_);
    }
    manager_->changed_.notify_all();
  }

  void join() {
    if (thread_.joinable()) thread_.join();
  }
  bool finished() const { return finished_.load(); }
  bool cancelled() const { return cancelled_.load(); }

  // Caller holds the manager's mutex.
  void set_position(int position) {
    if (position == position_) return;
    position_ = position;
    TuneEvent event;
    event.kind = TuneEvent::Kind::queued;
    event.position = position;
    emit(event);
  }

 private:
  void emit(const TuneEvent& event) {
    if (callbacks_.on_event) callbacks_.on_event(event);
  }

  // A family's stored best that a job need not tune again: its own, or the
  // fleet's (then kept here too). `replace`: the stored row does not read.
  struct Known {
    std::optional<BestRecord> best;
    bool from_fleet = false;
    bool replace = false;
  };
  // One family of a job that searches several.
  struct Member {
    TuningScope scope;
    Known known;
    size_t space_size = 0;
    std::optional<Result<TuneResult>> tuned;
  };

  Result<TuneResult> run();
  Known known_best(const TuningScope& scope, const ToolchainRecord& toolchain);
  Result<TuneResult> tune(const TuningScope& scope, const ToolchainRecord& toolchain, int gpu,
                          bool replace_stored);
  Result<TuneResult> tune_families(std::vector<Member>& members,
                                   const ToolchainRecord& toolchain, int gpu);
  // The families' bests as entrants of the final choice, with each one's outcome.
  struct FamilyEntrant {
    size_t member;  // index into the members
    BestRecord best;
    CompiledCandidate compiled;
  };
  struct FamilyField {
    std::vector<FamilyEntrant> entrants;
    std::vector<FamilyFinalist> outcomes;  // one per member, in member order
    std::optional<Error> named_error;      // the first family's search failed so
    int64_t evaluations = 0;               // measured by this job's searches
  };
  FamilyField family_field(std::vector<Member>& members);
  size_t retime_families(FamilyField& field, int gpu);
  Result<TuneResult> choose_family(std::vector<Member>& members, int gpu, double search_seconds);
  Result<CompiledCandidate> compile_now(const TuningScope& scope, const TileConfig& config);
  struct SpaceScan;
  class Run;  // the steps of tune()
  void scan_space(const TuneSettings& settings, const SearchSpace& space, SpaceScan& scan);

  TuningManager* manager_;
  TuneSettings settings_;
  TuneCallbacks callbacks_;
  std::shared_ptr<CompileQueue> compiles_;
  std::thread thread_;
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> finished_{false};
  int position_ = 0;
  std::optional<int> gpu_;  // held from acquire_gpu until after on_done
};

Result<TuneResult> TuningManager::Job::run() {
  TuningScope scope;
  scope.template_id = settings_.template_id;
  scope.problem = settings_.problem;
  scope.bucket = bucket_of(settings_.shape, settings_.layout);
  scope.device_name = manager_->backend_->device_name(0);
  scope.arch = settings_.arch;
  ToolchainRecord toolchain = manager_->compiler_->toolchain();
  toolchain.driver_version = manager_->backend_->driver_version();

  if (settings_.rival_families.empty()) {
    Known known = known_best(scope, toolchain);
    if (known.best) {
      TuneResult result = tune_result_from_best(*known.best);
      result.from_database = !known.from_fleet;
      result.from_fleet = known.from_fleet;
      return result;
    }
    gpu_ = manager_->acquire_gpu(*this);
    if (!gpu_) return make_error(ErrorCode::cancelled, "tuning job cancelled while queued");
    return tune(scope, toolchain, *gpu_, known.replace);
  }

  // Several families: those with a current stored best are not tuned again;
  // when all have one, the one served is chosen from the stored times.
  std::vector<Member> members;
  std::vector<std::string> families{settings_.template_id};
  for (const std::string& rival : settings_.rival_families)
    if (std::find(families.begin(), families.end(), rival) == families.end())
      families.push_back(rival);
  bool all_known = true;
  for (const std::string& family : families) {
    Member member;
    member.scope = scope;
    member.scope.template_id = family;
    member.known = known_best(member.scope, toolchain);
    all_known = all_known && member.known.best.has_value();
    members.push_back(std::move(member));
  }
  if (all_known) {
    std::vector<Finalist> stored;
    for (const Member& m : members)
      stored.push_back({m.known.best->config, m.known.best->median_us, m.known.best->p10_us,
                        m.known.best->p90_us});
    const Member& served = members[chosen_entrant(stored, 0)];
    TuneResult result = tune_result_from_best(*served.known.best);
    result.from_database = !served.known.from_fleet;
    result.from_fleet = served.known.from_fleet;
    for (const Member& m : members) {
      FamilyFinalist f{m.scope.template_id, m.known.best->config, m.known.best->median_us,
                       m.known.best->p10_us, m.known.best->p90_us, false, {}};
      if (&m == &served)
        result.families.insert(result.families.begin(), std::move(f));
      else
        result.families.push_back(std::move(f));
    }
    return result;
  }
  gpu_ = manager_->acquire_gpu(*this);
  if (!gpu_) return make_error(ErrorCode::cancelled, "tuning job cancelled while queued");
  return tune_families(members, toolchain, *gpu_);
}

TuningManager::Job::Known TuningManager::Job::known_best(const TuningScope& scope,
                                                         const ToolchainRecord& toolchain) {
  Known known;
  if (settings_.force) return known;
  auto stored = manager_->db_->best_for(scope);
  if (!stored) {
    // A stored row that does not read is no result: tune, and replace it.
    spdlog::warn("{}; tuning the bucket again to replace it", stored.error().message);
    known.replace = true;
    stored = std::optional<BestRecord>{};
  }
  // A best from another NVRTC or template source names a cubin no longer served.
  if (*stored && (*stored)->toolchain.nvrtc_version == toolchain.nvrtc_version &&
      (*stored)->toolchain.template_source_hash == toolchain.template_source_hash) {
    // One that cannot run this job's shape (decode: fewer packed rows than
    // it has) is not its answer: tune, and replace it with one that can.
    if (auto misfit = shape_misfit(scope.template_id, (*stored)->config, settings_.problem,
                                   settings_.shape)) {
      spdlog::info("tuning {} {}: the stored best {} does not fit the shape ({}); tuning again",
                   scope.template_id, canonical_bucket(scope.bucket),
                   config_label((*stored)->config), *misfit);
      known.replace = true;
      return known;
    }
    known.best = std::move(**stored);
    return known;
  }
  if (auto fleet = manager_->options_.fleet ? manager_->options_.fleet->lookup(scope, toolchain)
                                            : std::nullopt) {
    // Kept here too, so the next call (and use_tuned_config) needs no fleet.
    if (auto kept = manager_->db_->update_best_if_better(*fleet, BestUpdate::force); !kept)
      spdlog::warn("fleet tuning result not stored: {}", kept.error().message);
    spdlog::info("tuning {} {}: the fleet's best {} ({:.2f} us), no tuning here",
                 scope.template_id, canonical_bucket(scope.bucket), config_label(fleet->config),
                 fleet->median_us);
    known.best = std::move(*fleet);
    known.from_fleet = true;
  }
  return known;
}

// What the background pass over the search space has learned: per config,
// nothing yet, "" (measurable) or why it is pruned (compile error, spills,
// stack frame). Budgets are a fifth of the measurable configs, known exactly
// once the pass is over and bounded before.
struct TuningManager::Job::SpaceScan {
  explicit SpaceScan(size_t n) : reasons(n), compiled(n) {}
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::optional<std::string>> reasons;
  // Key and resources of each compiled config, for the record (no cubin:
  // the kernel cache holds those).
  std::vector<CompiledCandidate> compiled;
  size_t measurable = 0, pruned = 0;
  bool finished = false;
  std::atomic<bool> stop{false};  // the search is over: compile no further

  // Lower and upper bounds of the measurable count (equal once finished).
  std::pair<size_t, size_t> measurable_bounds() {
    std::lock_guard lock(mutex);
    return {measurable, reasons.size() - pruned};
  }
  void wait_finished(const std::function<bool()>& cancelled) {
    std::unique_lock lock(mutex);
    while (!finished && !cancelled()) changed.wait_for(lock, std::chrono::milliseconds(100));
  }
};

void TuningManager::Job::scan_space(const TuneSettings& settings, const SearchSpace& space,
                                    SpaceScan& scan) {
  // Below the daemon's compile-queue bound, so other clients keep room.
  constexpr size_t kInFlight = 16;
  constexpr int kBusyRetries = 50;
  const std::vector<TileConfig>& configs = space.configs();
  std::vector<int> busy_retries(configs.size(), 0);
  std::deque<size_t> queue;
  for (size_t i = 0; i < configs.size(); ++i) queue.push_back(i);
  size_t in_flight = 0;
  std::unique_lock lock(scan.mutex);
  for (;;) {
    if (cancelled() || scan.stop.load()) {
      // Submitted compiles still call back into this frame: wait for them.
      while (in_flight > 0) scan.changed.wait(lock);
      break;
    }
    if (queue.empty() && in_flight == 0) break;
    if (queue.empty() || in_flight >= kInFlight) {
      scan.changed.wait_for(lock, std::chrono::milliseconds(100));
      continue;
    }
    const size_t i = queue.front();
    queue.pop_front();
    ++in_flight;
    const bool retry = busy_retries[i] > 0;
    lock.unlock();
    if (retry) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    manager_->compiler_->compile(
        settings.template_id, settings.problem, configs[i], settings.arch, settings.shape,
        [&, i](Result<CompiledCandidate> result) {
          std::lock_guard guard(scan.mutex);
          --in_flight;
          // A full compile queue (other clients' work) is not the config's fault.
          if (!result && result.error().code == ErrorCode::resource_exhausted &&
              busy_retries[i] < kBusyRetries) {
            ++busy_retries[i];
            queue.push_back(i);
          } else {
            std::string reason;
            if (!result) {
              reason = "compile: " + result.error().message;
            } else {
              if (auto skip = resource_skip_reason(*result)) reason = *skip;
              scan.compiled[i] = std::move(*result);
              scan.compiled[i].kernel.reset();
            }
            (reason.empty() ? scan.measurable : scan.pruned) += 1;
            scan.reasons[i] = std::move(reason);
          }
          scan.changed.notify_all();
        });
    lock.lock();
  }
  scan.finished = true;
  scan.changed.notify_all();
}

// One tuning job on its GPU, in named steps: prepare (space, job row,
// background pass, stop rule, seeds, searcher), then per trial propose
// (compile ahead), take the next compiled proposal, measure it and record
// it; then record what the pass pruned, choose among the finalists
// (re-timed interleaved, the winner validated in full) and finish (job
// row, stored best, result).
class TuningManager::Job::Run {
 public:
  // `settings` is the job's, or one family's part of it (its template, its
  // share of the budget).
  Run(Job& job, TuneSettings settings, const TuningScope& scope, const ToolchainRecord& toolchain,
      int gpu, bool replace_stored)
      : job_(job), settings_(std::move(settings)), db_(*job.manager_->db_), scope_(scope),
        toolchain_(toolchain), gpu_(gpu), replace_stored_(replace_stored),
        searcher_name_(searcher_kind_name(settings_.searcher)) {}

  // The background pass stops where it is and is joined.
  ~Run() { stop_scan(); }

  Result<TuneResult> execute() {
    if (Status prepared = prepare(); !prepared) return prepared.error();
    announce();
    search();
    was_cancelled_ = job_.cancelled();
    {
      // Compiles still running finish into a queue nobody reads.
      std::lock_guard lock(job_.compiles_->mutex);
      job_.compiles_->slots.clear();
    }
    record_pruned();
    if (best_ && !was_cancelled_) choose();
    return finish();
  }

 private:
  // The fastest correct candidates so far (kFinalists), and the family
  // default if it was correct: the finalists, with their compiled kernels.
  struct Kept {
    TileConfig config;
    CompiledCandidate candidate;
    int64_t trial_id = 0;
    double median_us = 0.0, p10_us = 0.0, p90_us = 0.0, tflops = 0.0;
  };
  struct Proposal {
    TileConfig config;
    Result<CompiledCandidate> compiled;
  };

  Status prepare();
  Status build_space();
  void plan_budget();
  void plan_seeds();
  void announce();
  void search();
  void propose();
  bool next_compiled(std::optional<Proposal>& next);
  TrialRecord measure(const TileConfig& config, const Result<CompiledCandidate>& compiled,
                      bool& took_gpu_time);
  void record(const TileConfig& config, const TrialRecord& trial,
              const Result<CompiledCandidate>& compiled, bool took_gpu_time);
  TuneEvent trial_event(const TileConfig& config, const TrialRecord& trial,
                        Clock::duration elapsed) const;
  void keep(const TileConfig& config, const TrialRecord& trial, int64_t trial_id,
            const CompiledCandidate& candidate);
  void record_pruned();
  void choose();
  MeasureRequest base_request() const;
  std::vector<std::vector<Measurement>> retime(const std::vector<Kept>& entrants,
                                               const MeasureRequest& base);
  std::vector<size_t> validation_order(const std::vector<size_t>& by_time) const;
  bool validate_winner(const Kept& entrant, size_t f, const std::vector<size_t>& by_time,
                       const MeasureRequest& base);
  Result<TuneResult> finish();
  void store_best(double wall);
  Result<TuneResult> result_or_error(double wall) const;

  std::pair<size_t, size_t> budget_bounds() const;
  bool budget_reached(size_t count);
  TrialRecord new_trial(const TileConfig& config) const;
  static void set_resources(TrialRecord& trial, const CompiledCandidate& candidate);
  void compile_into(uint64_t id, const TileConfig& config);
  void submit(const TileConfig& config);
  void stop_scan();

  Job& job_;
  const TuneSettings settings_;
  TuningDb& db_;
  const TuningScope scope_;
  const ToolchainRecord toolchain_;
  const int gpu_;
  const bool replace_stored_;  // the stored best does not read or fit the shape: overwrite it
  const std::string searcher_name_;

  std::optional<ArchInfo> arch_;
  std::optional<SearchSpace> space_;
  int64_t job_id_ = 0;
  std::unique_ptr<SpaceScan> scan_;
  std::thread scanner_;
  bool fixed_budget_ = false;
  std::chrono::milliseconds time_limit_{0};
  StopConditionPtr stop_;
  std::vector<TileConfig> seeds_;
  std::unique_ptr<Searcher> searcher_;
  EvolutionarySearcher* evolutionary_ = nullptr;
  size_t ahead_ = 0;
  Clock::time_point begin_;

  std::optional<CompiledCandidate> reference_;
  std::optional<Trial> best_;
  double best_tflops_ = 0.0;
  std::string best_key_;
  int64_t best_trial_id_ = 0;
  bool stopping_ = false;
  size_t measured_ = 0;  // candidates that took GPU time (ok, wrong, or failed while measured)
  std::vector<bool> recorded_;
  std::vector<Kept> top_;
  std::optional<Kept> default_kept_;
  // A full compile queue (other clients' work) is not the config's fault:
  // the proposal is compiled again, in its place, rather than recorded as a
  // compile failure that would keep it out of this and later searches.
  static constexpr int kBusyRetries = 50;
  std::map<uint64_t, int> busy_retries_;

  std::vector<Finalist> finalists_;
  bool validated_ = false;
  std::string validation_detail_;
  bool was_cancelled_ = false;
};

Status TuningManager::Job::Run::build_space() {
  arch_ = find_arch(settings_.arch);
  auto space = family_space(settings_);
  if (!space) return space.error();
  space_ = std::move(space).value();
  return ok_status();
}

Status TuningManager::Job::Run::prepare() {
  if (Status built = build_space(); !built) return built;
  auto job_id = db_.begin_job(scope_, searcher_name_, toolchain_);
  if (!job_id) return job_id.error();
  job_id_ = *job_id;

  // Resource pruning before GPU time, overlapped with the search: a
  // background pass compiles every config of the space (through the kernel
  // cache, so the search's own compiles of them are shared) and learns which
  // fail, spill or need a stack frame. Such a config is never measured: when
  // the search proposes one it is reported as failed without GPU time, and it
  // does not count against the budget, which counts GPU measurements. The
  // default budget is a fifth of the measurable configs; until the pass is
  // over it is bracketed, and the search waits for the pass only if it
  // reaches the lower bracket first.
  scan_ = std::make_unique<SpaceScan>(space_->size());
  scanner_ = std::thread([this] { job_.scan_space(settings_, *space_, *scan_); });
  recorded_.assign(space_->size(), false);
  plan_budget();
  plan_seeds();
  const size_t configured = job_.manager_->options_.compile_ahead;
  ahead_ = configured > 0 ? configured
                          : static_cast<size_t>(2 * job_.manager_->backend_->gpu_count() + 2);
  return ok_status();
}

void TuningManager::Job::Run::plan_budget() {
  fixed_budget_ = settings_.max_evaluations > 0;
  time_limit_ = settings_.time_budget.count() > 0 ? settings_.time_budget : kDefaultTuneTimeBudget;
  std::vector<StopConditionPtr> rules{time_budget(time_limit_)};
  if (settings_.patience > 0) rules.push_back(patience(static_cast<size_t>(settings_.patience)));
  stop_ = any_of(std::move(rules));
}

void TuningManager::Job::Run::plan_seeds() {
  // The family's default (what the daemon serves an untuned bucket) is tried
  // first, so a tuned result is never slower than not tuning; then the
  // family's seeds for the shape, then the bests of the nearest tuned
  // buckets (transfer).
  const TemplateInfo& family = template_info(settings_.template_id);
  const TileConfig family_default =
      family.default_config_for != nullptr
          ? family.default_config_for(settings_.problem, settings_.shape, *arch_)
          : family.default_config(settings_.problem);
  seeds_ = {family.resolve(family_default, settings_.problem)};
  if (family.search_seeds != nullptr)
    for (const TileConfig& seed : family.search_seeds(settings_.problem, settings_.shape, *arch_))
      seeds_.push_back(family.resolve(seed, settings_.problem));
  if (auto near = db_.nearest_best(scope_, 4); near)
    for (const auto& entry : *near) seeds_.push_back(entry.best.config);

  searcher_ = make_searcher(settings_.searcher);
  searcher_->initialize(*space_, settings_.seed == 0 ? 1 : settings_.seed, seeds_);
  evolutionary_ = dynamic_cast<EvolutionarySearcher*>(searcher_.get());
}

void TuningManager::Job::Run::announce() {
  TuneEvent started;
  started.kind = TuneEvent::Kind::started;
  started.template_id = settings_.template_id;
  started.job_id = job_id_;
  started.space_size = space_->size();
  started.max_evaluations = budget_bounds().second;  // at most; final once the scan is over
  started.gpu = gpu_;
  job_.emit(started);
  spdlog::info("tuning job {}: {} {} on GPU {} ({}), {} configs, {}{}", job_id_,
               canonical_problem_class(settings_.problem), canonical_bucket(scope_.bucket), gpu_,
               scope_.device_name, space_->size(), stop_->describe(),
               fixed_budget_ ? ", at most " + std::to_string(settings_.max_evaluations) +
                                   " measurements"
                             : ", a fifth of the measurable configs");
  begin_ = Clock::now();
}

// {lower, upper} bounds of the budget; equal once the scan is over.
std::pair<size_t, size_t> TuningManager::Job::Run::budget_bounds() const {
  if (fixed_budget_) {
    const auto n = static_cast<size_t>(settings_.max_evaluations);
    return {n, n};
  }
  const auto [low, high] = scan_->measurable_bounds();
  // The final budget is at least 8 unless fewer than 8 configs are
  // measurable, and then no count can pass it anyway: 8 is a lower bound
  // worth waiting at, where the measurable count so far gives less.
  return {std::max(default_max_evaluations(low), std::min<size_t>(8, high)),
          default_max_evaluations(high)};
}

// True once `count` reaches the budget, waiting for the scan if only its
// end can tell.
bool TuningManager::Job::Run::budget_reached(size_t count) {
  auto [low, high] = budget_bounds();
  if (count < low) return false;
  if (low != high) {
    scan_->wait_finished([&] { return job_.cancelled(); });
    std::tie(low, high) = budget_bounds();
  }
  return count >= high;
}

// A trial of this job with what every trial carries; the caller sets the rest.
TrialRecord TuningManager::Job::Run::new_trial(const TileConfig& config) const {
  TrialRecord trial;
  trial.job_id = job_id_;
  trial.scope = scope_;
  trial.shape = settings_.shape;
  trial.config = config;
  trial.smem_bytes = template_info(settings_.template_id).smem_bytes(config, settings_.problem);
  trial.gpu_index = gpu_;
  trial.toolchain = toolchain_;
  return trial;
}

void TuningManager::Job::Run::set_resources(TrialRecord& trial,
                                            const CompiledCandidate& candidate) {
  trial.cache_key = candidate.key;
  trial.registers = candidate.registers;
  trial.spill_store_bytes = candidate.spill_store_bytes;
  trial.spill_load_bytes = candidate.spill_load_bytes;
}

// `id` keeps the proposal's place in the queue; a resubmission reuses it.
void TuningManager::Job::Run::compile_into(uint64_t id, const TileConfig& config) {
  job_.manager_->compiler_->compile(
      settings_.template_id, settings_.problem, config, settings_.arch, settings_.shape,
      [queue = job_.compiles_, id](Result<CompiledCandidate> result) {
        {
          std::lock_guard lock(queue->mutex);
          auto slot = queue->slots.find(id);
          if (slot != queue->slots.end()) slot->second.result.emplace(std::move(result));
        }
        queue->ready.notify_all();
      });
}

void TuningManager::Job::Run::submit(const TileConfig& config) {
  uint64_t id;
  {
    std::lock_guard lock(job_.compiles_->mutex);
    id = job_.compiles_->next_id++;
    job_.compiles_->slots[id].config = config;
  }
  compile_into(id, config);
}

void TuningManager::Job::Run::search() {
  while (!job_.cancelled()) {
    propose();
    std::optional<Proposal> next;
    if (!next_compiled(next)) break;
    if (!next) continue;  // resubmitted after a full compile queue
    bool took_gpu_time = false;
    const TrialRecord trial = measure(next->config, next->compiled, took_gpu_time);
    record(next->config, trial, next->compiled, took_gpu_time);
    if (stopping_) break;
  }
}

// Keeps the compile pipeline full while the GPU measures.
void TuningManager::Job::Run::propose() {
  while (!stopping_) {
    size_t in_flight;
    {
      std::lock_guard lock(job_.compiles_->mutex);
      in_flight = job_.compiles_->slots.size();
    }
    if (in_flight >= ahead_ || budget_reached(measured_ + in_flight)) break;
    auto config = searcher_->next();
    if (!config) break;
    submit(*config);
  }
}

// The oldest proposal once it has compiled, so results reach the searcher
// in order. False when none is left or the job was cancelled; true with
// `next` empty when the proposal was resubmitted after a full compile queue.
bool TuningManager::Job::Run::next_compiled(std::optional<Proposal>& next) {
  CompileQueue& compiles = *job_.compiles_;
  std::unique_lock lock(compiles.mutex);
  if (compiles.slots.empty()) return false;
  auto front = compiles.slots.begin();
  compiles.ready.wait(lock, [&] { return compiles.cancelled || front->second.result; });
  if (compiles.cancelled) return false;
  const TileConfig config = front->second.config;
  const uint64_t id = front->first;
  const Result<CompiledCandidate>& result = *front->second.result;
  if (!result && result.error().code == ErrorCode::resource_exhausted &&
      busy_retries_[id] < kBusyRetries) {
    ++busy_retries_[id];
    front->second.result.reset();
    lock.unlock();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    compile_into(id, config);
    return true;
  }
  busy_retries_.erase(id);
  next.emplace(Proposal{config, std::move(*front->second.result)});
  compiles.slots.erase(front);
  return true;
}

// The trial of a compiled proposal: skipped without GPU time when it did
// not compile or spills, else measured (the correctness gate and the time).
TrialRecord TuningManager::Job::Run::measure(const TileConfig& config,
                                             const Result<CompiledCandidate>& compiled,
                                             bool& took_gpu_time) {
  TrialRecord trial = new_trial(config);
  if (auto index = space_->index_of(config)) recorded_[*index] = true;
  if (!compiled) {
    trial.status = TrialStatus::skipped;  // pruned: never measurable
    trial.failure_reason = "compile: " + compiled.error().message;
    return trial;
  }
  const CompiledCandidate& candidate = *compiled;
  set_resources(trial, candidate);
  if (auto skip = resource_skip_reason(candidate)) {
    trial.status = TrialStatus::skipped;
    trial.failure_reason = *skip;
    return trial;
  }
  MeasureRequest request = base_request();
  request.candidate = &candidate;
  request.reference = reference_ ? &*reference_ : nullptr;
  request.deadline = begin_ + time_limit_ + std::chrono::minutes(2);
  took_gpu_time = true;
  auto measured = job_.manager_->backend_->measure(request);
  if (!measured) {
    trial.status = TrialStatus::failed;
    trial.failure_reason = measured.error().message;
    return trial;
  }
  trial.gpu_index = measured->gpu_index;
  trial.rel_error = measured->rel_error;
  trial.max_abs_error = measured->max_abs_error;
  if (!measured->correct) {
    trial.status = TrialStatus::wrong;
    trial.failure_reason = measured->validation_detail.empty() ? std::string("wrong result")
                                                               : measured->validation_detail;
    return trial;
  }
  trial.status = TrialStatus::ok;
  trial.median_us = measured->median_us;
  trial.p10_us = measured->p10_us;
  trial.p90_us = measured->p90_us;
  trial.samples = measured->samples;
  trial.tflops = measured->tflops;
  if (!reference_) reference_ = candidate;  // later candidates compare against it
  return trial;
}

// The trial into the database, its outcome to the searcher, its event to
// the caller; a correct one may join the finalists and become the best.
void TuningManager::Job::Run::record(const TileConfig& config, const TrialRecord& trial,
                                     const Result<CompiledCandidate>& compiled,
                                     bool took_gpu_time) {
  auto trial_id = db_.record_trial(trial);
  if (!trial_id) spdlog::warn("tuning job {}: {}", job_id_, trial_id.error().message);
  if (took_gpu_time) ++measured_;

  TrialOutcome outcome;
  outcome.ok = trial.status == TrialStatus::ok;
  outcome.time_us = trial.median_us;
  outcome.failure = trial.failure_reason;
  (void)searcher_->report(config, outcome);

  const auto elapsed = Clock::now() - begin_;
  const SearchProgress progress = searcher_->progress(elapsed);
  const TuneEvent event = trial_event(config, trial, elapsed);
  job_.emit(event);
  if (trial.status == TrialStatus::ok) {
    keep(config, trial, trial_id ? *trial_id : 0, *compiled);
    if (!best_ || trial.median_us < best_->outcome.time_us) {
      best_ = Trial{config, outcome};
      best_tflops_ = trial.tflops;
      best_key_ = trial.cache_key;
      best_trial_id_ = trial_id ? *trial_id : 0;
      TuneEvent improved = event;
      improved.kind = TuneEvent::Kind::best;
      job_.emit(improved);
    }
  }
  if (stop_->done(progress) || budget_reached(measured_)) stopping_ = true;
}

TuneEvent TuningManager::Job::Run::trial_event(const TileConfig& config,
                                               const TrialRecord& trial,
                                               Clock::duration elapsed) const {
  const size_t done_count = measured_;
  const size_t budget_now = budget_bounds().second;
  int64_t eta_ms = 0;
  if (done_count > 0 && done_count < budget_now) {
    const double per = std::chrono::duration<double, std::milli>(elapsed).count() / done_count;
    const double by_count = per * static_cast<double>(budget_now - done_count);
    const double by_time =
        std::chrono::duration<double, std::milli>(time_limit_ - elapsed).count();
    eta_ms = static_cast<int64_t>(std::max(0.0, std::min(by_count, by_time)));
  }
  TuneEvent event;
  event.kind = TuneEvent::Kind::trial;
  event.template_id = settings_.template_id;
  event.config = config;
  event.status = trial.status;
  event.median_us = trial.median_us;
  event.tflops = trial.tflops;
  event.failure = trial.failure_reason;
  event.evaluations = done_count;
  event.generation = evolutionary_ ? evolutionary_->generation() : 0;
  event.eta_ms = eta_ms;
  return event;
}

void TuningManager::Job::Run::keep(const TileConfig& config, const TrialRecord& trial,
                                   int64_t trial_id, const CompiledCandidate& candidate) {
  Kept kept{config, candidate, trial_id, trial.median_us, trial.p10_us, trial.p90_us,
            trial.tflops};
  if (config == seeds_.front()) default_kept_ = kept;
  top_.push_back(std::move(kept));
  std::stable_sort(top_.begin(), top_.end(),
                   [](const Kept& a, const Kept& b) { return a.median_us < b.median_us; });
  if (top_.size() > kFinalists) top_.pop_back();
}

void TuningManager::Job::Run::stop_scan() {
  if (!scan_) return;
  scan_->stop.store(true);
  scan_->changed.notify_all();
  if (scanner_.joinable()) scanner_.join();
}

// The pass stops where it is; the configs it pruned that the search never
// proposed go on the job's record too (skipped), so a report shows why
// each one was left out.
void TuningManager::Job::Run::record_pruned() {
  stop_scan();
  for (size_t i = 0; i < space_->size(); ++i) {
    if (recorded_[i] || !scan_->reasons[i] || scan_->reasons[i]->empty()) continue;
    TrialRecord trial = new_trial(space_->at(i));
    set_resources(trial, scan_->compiled[i]);
    trial.status = TrialStatus::skipped;
    trial.failure_reason = *scan_->reasons[i];
    if (auto stored = db_.record_trial(trial); !stored)
      spdlog::warn("tuning job {}: {}", job_id_, stored.error().message);
  }
  spdlog::info("tuning job {}: {} of {} configs scanned, {} pruned before measurement", job_id_,
               scan_->measurable + scan_->pruned, space_->size(), scan_->pruned);
}

MeasureRequest TuningManager::Job::Run::base_request() const {
  return measure_base(settings_, gpu_, &job_.cancelled_);
}

std::vector<std::vector<Measurement>> TuningManager::Job::Run::retime(
    const std::vector<Kept>& entrants, const MeasureRequest& base) {
  std::vector<RetimeEntrant> timed;
  for (const Kept& entrant : entrants) timed.push_back({&entrant.candidate, entrant.config});
  return retime_side_by_side(*job_.manager_->backend_, timed, base,
                             "tuning job " + std::to_string(job_id_),
                             [this] { return job_.cancelled(); });
}

// Validation order: the chosen one first (a challenger displaces the
// incumbent, the family default where it is a finalist, only by more than
// the spread), then the rest by time.
std::vector<size_t> TuningManager::Job::Run::validation_order(
    const std::vector<size_t>& by_time) const {
  std::vector<size_t> order;
  if (by_time.empty()) return order;
  size_t incumbent = by_time.front();
  for (size_t i = 0; i < finalists_.size(); ++i)
    if (default_kept_ && finalists_[i].config == default_kept_->config) incumbent = i;
  incumbent = chosen_entrant(finalists_, incumbent);
  order.push_back(incumbent);
  for (size_t i : by_time)
    if (i != incumbent) order.push_back(i);
  return order;
}

// The choice (DESIGN.md §6): the finalists re-timed interleaved, then the
// whole validation matrix on the chosen one, the next in line where it fails.
void TuningManager::Job::Run::choose() {
  std::vector<Kept> entrants = top_;
  if (default_kept_ &&
      std::none_of(entrants.begin(), entrants.end(),
                   [&](const Kept& k) { return k.config == default_kept_->config; }))
    entrants.push_back(*default_kept_);
  const MeasureRequest base = base_request();
  const auto rounds = retime(entrants, base);
  std::vector<size_t> order;  // entrants that have times, in entrant order
  for (size_t i = 0; i < entrants.size(); ++i) {
    Finalist f{entrants[i].config, entrants[i].median_us, entrants[i].p10_us,
               entrants[i].p90_us};
    if (entrants.size() >= 2) {
      if (rounds[i].empty()) continue;  // it did not time again: not a finalist
      f = finalist_of(entrants[i].config, rounds[i]);
    }
    finalists_.push_back(f);
    order.push_back(i);
  }
  std::vector<size_t> by_time(finalists_.size());
  for (size_t i = 0; i < by_time.size(); ++i) by_time[i] = i;
  std::stable_sort(by_time.begin(), by_time.end(), [&](size_t a, size_t b) {
    return finalists_[a].median_us < finalists_[b].median_us;
  });
  best_.reset();
  for (size_t f : validation_order(by_time)) {
    if (job_.cancelled()) break;
    if (validate_winner(entrants[order[f]], f, by_time, base)) break;
  }
  if (!best_) finalists_.clear();
  was_cancelled_ = job_.cancelled();
}

// The full validation of finalist `f`; true (and it is the best) when it passes.
bool TuningManager::Job::Run::validate_winner(const Kept& entrant, size_t f,
                                              const std::vector<size_t>& by_time,
                                              const MeasureRequest& base) {
  MeasureRequest request = base;
  request.validate = true;
  request.candidate = &entrant.candidate;
  request.deadline = Clock::now() + std::chrono::minutes(30);
  auto full = job_.manager_->backend_->validate_fully(request);
  std::string failure;
  if (!full) {
    failure = "winner validation: " + full.error().message;
  } else if (*full && !(*full)->passed) {
    failure = "winner validation: " +
              ((*full)->detail.empty() ? std::string("wrong result") : (*full)->detail);
  }
  if (!failure.empty()) {
    spdlog::warn("tuning job {}: {} {}; the next finalist is validated", job_id_,
                 config_label(entrant.config), failure);
    if (entrant.trial_id != 0)
      if (Status marked = db_.set_trial_status(entrant.trial_id, TrialStatus::wrong, failure);
          !marked)
        spdlog::warn("tuning job {}: {}", job_id_, marked.error().message);
    return false;
  }
  validated_ = full->has_value();
  validation_detail_ = validated_ ? (*full)->detail
                                  : std::string("not run: the evaluation backend has no full "
                                                "validation");
  TrialOutcome outcome;
  outcome.ok = true;
  outcome.time_us = finalists_[f].median_us;
  best_ = Trial{entrant.config, outcome};
  best_tflops_ = entrant.tflops * entrant.median_us / finalists_[f].median_us;
  best_key_ = entrant.candidate.key;
  best_trial_id_ = entrant.trial_id;
  // The winner first in the answer, the rest by time.
  std::vector<Finalist> ordered{finalists_[f]};
  for (size_t i : by_time)
    if (i != f) ordered.push_back(finalists_[i]);
  finalists_ = std::move(ordered);
  return true;
}

Result<TuneResult> TuningManager::Job::Run::finish() {
  const double wall = std::chrono::duration<double>(Clock::now() - begin_).count();
  const JobStatus status =
      was_cancelled_ ? JobStatus::cancelled : (best_ ? JobStatus::succeeded : JobStatus::failed);
  if (Status finished = db_.finish_job(
          job_id_, status, best_ ? std::optional<int64_t>(best_trial_id_) : std::nullopt);
      !finished)
    spdlog::warn("tuning job {}: {}", job_id_, finished.error().message);
  spdlog::info("tuning job {} {} after {} measurements in {:.1f} s", job_id_,
               job_status_name(status), measured_, wall);
  // Only a chosen and validated winner is stored: a cancelled job leaves the
  // stored best as it was.
  if (best_ && !was_cancelled_) store_best(wall);
  return result_or_error(wall);
}

void TuningManager::Job::Run::store_best(double wall) {
  BestRecord record;
  record.scope = scope_;
  record.shape = settings_.shape;
  record.config = best_->config;
  record.cache_key = best_key_;
  record.median_us = best_->outcome.time_us;
  record.tflops = best_tflops_;
  record.trial_id = best_trial_id_;
  record.evaluations = static_cast<int64_t>(measured_);
  record.wall_seconds = wall;
  record.searcher = searcher_name_;
  record.toolchain = toolchain_;
  record.p10_us = finalists_.empty() ? 0.0 : finalists_.front().p10_us;
  record.p90_us = finalists_.empty() ? 0.0 : finalists_.front().p90_us;
  record.validated = validated_;
  record.validation_detail = validation_detail_;
  if (auto stored = db_.update_best_if_better(
          record, replace_stored_ ? BestUpdate::force : BestUpdate::if_faster);
      !stored)
    spdlog::warn("tuning job {}: {}", job_id_, stored.error().message);
  else if (*stored && job_.manager_->options_.fleet)
    job_.manager_->options_.fleet->publish(record);
}

Result<TuneResult> TuningManager::Job::Run::result_or_error(double wall) const {
  const std::string job = "tuning job " + std::to_string(job_id_);
  if (was_cancelled_)
    return make_error(ErrorCode::cancelled, job + " cancelled after " +
                                                std::to_string(measured_) + " measurements");
  if (!best_ && !top_.empty())
    return make_error(ErrorCode::failed_precondition,
                      job + ": none of the " +
                          std::to_string(std::max(top_.size(), finalists_.size())) +
                          " finalists passed the full validation (see the job's trials)");
  if (!best_)
    return make_error(ErrorCode::failed_precondition,
                      job + ": none of " + std::to_string(searcher_->evaluations()) +
                          " candidates compiled without spills, passed the correctness gate and "
                          "was timed");
  TuneResult result;
  result.scope = scope_;
  result.shape = settings_.shape;
  result.config = best_->config;
  result.key = best_key_;
  result.median_us = best_->outcome.time_us;
  result.tflops = best_tflops_;
  result.evaluations = static_cast<int64_t>(measured_);
  result.wall_seconds = wall;
  result.searcher = searcher_name_;
  result.finalists = finalists_;
  result.runner_up_margin_us =
      finalists_.size() >= 2 ? finalists_[1].median_us - finalists_[0].median_us : 0.0;
  result.p10_us = finalists_.empty() ? result.median_us : finalists_.front().p10_us;
  result.p90_us = finalists_.empty() ? result.median_us : finalists_.front().p90_us;
  result.validated = validated_;
  result.validation_detail = validation_detail_;
  return result;
}

Result<TuneResult> TuningManager::Job::tune(const TuningScope& scope,
                                            const ToolchainRecord& toolchain, int gpu,
                                            bool replace_stored) {
  Run run(*this, settings_, scope, toolchain, gpu, replace_stored);
  return run.execute();
}

// Several families in one job, on one GPU: each family without a current
// stored best is searched in turn with a share of the budget in proportion
// to its space (time, and measurements where the request fixed them), then
// every family's stored best is re-timed side by side and one is chosen.
Result<TuneResult> TuningManager::Job::tune_families(std::vector<Member>& members,
                                                     const ToolchainRecord& toolchain, int gpu) {
  const auto begin = Clock::now();
  size_t total_space = 0;
  for (Member& m : members) {
    if (m.known.best) continue;
    TuneSettings settings = settings_;
    settings.template_id = m.scope.template_id;
    if (auto space = family_space(settings)) m.space_size = space->size();
    total_space += m.space_size;
  }
  const auto time_budget =
      settings_.time_budget.count() > 0 ? settings_.time_budget : kDefaultTuneTimeBudget;
  for (Member& m : members) {
    if (m.known.best || cancelled()) continue;
    TuneSettings settings = settings_;
    settings.template_id = m.scope.template_id;
    settings.rival_families.clear();
    const double share = total_space > 0 ? static_cast<double>(m.space_size) / total_space : 1.0;
    settings.time_budget = std::max(std::chrono::milliseconds(1000),
                                    std::chrono::milliseconds(static_cast<int64_t>(
                                        static_cast<double>(time_budget.count()) * share)));
    if (settings.max_evaluations > 0)
      settings.max_evaluations = std::max(
          1, static_cast<int>(std::lround(static_cast<double>(settings.max_evaluations) * share)));
    spdlog::info("tuning {} {}: {} of {} configs of the families searched together, {} ms",
                 m.scope.template_id, canonical_bucket(m.scope.bucket), m.space_size, total_space,
                 settings.time_budget.count());
    Run run(*this, std::move(settings), m.scope, toolchain, gpu, m.known.replace);
    m.tuned = run.execute();
  }
  if (cancelled()) return make_error(ErrorCode::cancelled, "tuning job cancelled");
  return choose_family(members, gpu, std::chrono::duration<double>(Clock::now() - begin).count());
}

// Each family's stored best (this job's search may have replaced it) with
// its compiled kernel, or why it has none: the entrants of choose_family.
TuningManager::Job::FamilyField TuningManager::Job::family_field(std::vector<Member>& members) {
  FamilyField field;
  for (size_t i = 0; i < members.size(); ++i) {
    Member& m = members[i];
    FamilyFinalist outcome;
    outcome.template_id = m.scope.template_id;
    outcome.tuned = m.tuned.has_value();
    if (m.tuned && *m.tuned) field.evaluations += (*m.tuned)->evaluations;
    if (m.tuned && !*m.tuned) {
      outcome.error = m.tuned->error().message;
      if (i == 0) field.named_error = m.tuned->error();
    }
    std::optional<BestRecord> best = m.known.best;
    if (m.tuned) {
      auto stored = manager_->db_->best_for(m.scope);
      if (stored && *stored) best = std::move(**stored);
    }
    if (!best) {
      if (outcome.error.empty()) outcome.error = "no best stored";
    } else {
      outcome.config = best->config;
      outcome.median_us = best->median_us;
      outcome.p10_us = best->p10_us;
      outcome.p90_us = best->p90_us;
      auto compiled = compile_now(m.scope, best->config);
      if (compiled)
        field.entrants.push_back({i, std::move(*best), std::move(*compiled)});
      else
        outcome.error = "compile: " + compiled.error().message;
    }
    field.outcomes.push_back(std::move(outcome));
  }
  return field;
}

// The entrants re-timed side by side in one worker call (those without a
// fresh time keep their stored one); each re-timed best is stored with its
// new times. Returns the index of the entrant chosen: the first family's
// unless another is faster by more than the spread.
size_t TuningManager::Job::retime_families(FamilyField& field, int gpu) {
  const MeasureRequest base = measure_base(settings_, gpu, &cancelled_);
  std::vector<RetimeEntrant> timed;
  for (const FamilyEntrant& e : field.entrants) timed.push_back({&e.compiled, e.best.config});
  const auto rounds = retime_side_by_side(*manager_->backend_, timed, base, "choosing the family",
                                          [this] { return cancelled(); });
  std::vector<Finalist> finalists;
  for (size_t i = 0; i < field.entrants.size(); ++i) {
    const BestRecord& b = field.entrants[i].best;
    finalists.push_back(rounds[i].empty() ? Finalist{b.config, b.median_us, b.p10_us, b.p90_us}
                                          : finalist_of(b.config, rounds[i]));
    FamilyFinalist& outcome = field.outcomes[field.entrants[i].member];
    outcome.median_us = finalists[i].median_us;
    outcome.p10_us = finalists[i].p10_us;
    outcome.p90_us = finalists[i].p90_us;
    if (rounds[i].empty() || cancelled()) continue;
    BestRecord updated = field.entrants[i].best;
    updated.tflops = updated.tflops * updated.median_us / finalists[i].median_us;
    updated.median_us = finalists[i].median_us;
    updated.p10_us = finalists[i].p10_us;
    updated.p90_us = finalists[i].p90_us;
    updated.updated_unix_ms = 0;
    if (auto stored = manager_->db_->update_best_if_better(updated, BestUpdate::force); !stored)
      spdlog::warn("tuning {}: the re-timed best not stored: {}", updated.scope.template_id,
                   stored.error().message);
    field.entrants[i].best = std::move(updated);
  }
  return chosen_entrant(finalists, 0);
}

// The families' stored bests (each family's best for the bucket, whether
// this job found it or an earlier one did) re-timed side by side in one
// worker call; the first family (the one served by default) stays chosen
// unless another is faster by more than the spread. The re-timed times go
// into the stored bests, so use_tuned_config, comparing them by the same
// rule, serves what this job chose.
Result<TuneResult> TuningManager::Job::choose_family(std::vector<Member>& members, int gpu,
                                                     double search_seconds) {
  const auto begin = Clock::now();
  FamilyField field = family_field(members);
  if (field.entrants.empty()) {
    if (field.named_error) return *field.named_error;
    return make_error(ErrorCode::failed_precondition,
                      "no family found a correct kernel: " + field.outcomes.front().template_id +
                          ": " + field.outcomes.front().error);
  }
  const size_t chosen = retime_families(field, gpu);
  if (cancelled()) return make_error(ErrorCode::cancelled, "tuning job cancelled");
  const FamilyEntrant& winner = field.entrants[chosen];
  const Member& served = members[winner.member];
  // This job's search found the stored best (else an earlier job did, and
  // this search's finalists and validation are not that best's).
  const bool found_now =
      served.tuned && *served.tuned && (**served.tuned).config == winner.best.config;
  TuneResult result = found_now ? **served.tuned : tune_result_from_best(winner.best);
  result.from_database = false;
  result.from_fleet = false;
  result.median_us = winner.best.median_us;
  result.p10_us = winner.best.p10_us;
  result.p90_us = winner.best.p90_us;
  result.tflops = winner.best.tflops;
  result.config = winner.best.config;
  result.key = winner.best.cache_key;
  result.evaluations = field.evaluations;
  result.wall_seconds =
      search_seconds + std::chrono::duration<double>(Clock::now() - begin).count();
  result.families.push_back(field.outcomes[winner.member]);
  for (size_t i = 0; i < field.outcomes.size(); ++i)
    if (i != winner.member) result.families.push_back(field.outcomes[i]);
  spdlog::info("tuning {}: {} chosen ({:.2f} us) of {} families",
               canonical_bucket(served.scope.bucket), served.scope.template_id, result.median_us,
               members.size());
  return result;
}

// A config of the job's shape compiled now (through the kernel cache, so a
// config the search compiled is a hit); a full compile queue is waited out.
Result<CompiledCandidate> TuningManager::Job::compile_now(const TuningScope& scope,
                                                         const TileConfig& config) {
  for (int attempt = 0;; ++attempt) {
    auto done = std::make_shared<std::promise<Result<CompiledCandidate>>>();
    auto answer = done->get_future();
    manager_->compiler_->compile(scope.template_id, settings_.problem, config, settings_.arch,
                                 settings_.shape, [done](Result<CompiledCandidate> result) {
                                   done->set_value(std::move(result));
                                 });
    Result<CompiledCandidate> result = answer.get();
    if (result || result.error().code != ErrorCode::resource_exhausted || attempt >= 50 ||
        cancelled())
      return result;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

Result<RoundTimes> EvaluationBackend::measure_many(const MeasureManyRequest& request) {
  return measure_round_robin(*this, request);
}

RoundTimes measure_round_robin(EvaluationBackend& backend, const MeasureManyRequest& request) {
  RoundTimes times(request.candidates.size());
  auto cancelled = [&] { return request.common.cancelled && request.common.cancelled->load(); };
  for (int round = 0; round < request.rounds && !cancelled(); ++round)
    for (size_t i = 0; i < request.candidates.size() && !cancelled(); ++i) {
      MeasureRequest one = request.common;
      one.validate = false;
      one.candidate = request.candidates[i];
      one.deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
      auto timed = backend.measure(one);
      if (timed && timed->correct && timed->median_us > 0.0)
        times[i].push_back(*timed);
      else
        spdlog::warn("timing {} (round {}): {}", config_label(request.candidates[i]->config),
                     round + 1, timed ? std::string("no time") : timed.error().message);
    }
  return times;
}

bool displaces(const Finalist& challenger, const Finalist& incumbent) {
  const double spread = std::max(challenger.spread_us(), incumbent.spread_us());
  return incumbent.median_us - challenger.median_us > spread;
}

size_t chosen_entrant(const std::vector<Finalist>& entrants, size_t incumbent) {
  std::vector<size_t> by_time(entrants.size());
  for (size_t i = 0; i < by_time.size(); ++i) by_time[i] = i;
  std::stable_sort(by_time.begin(), by_time.end(), [&](size_t a, size_t b) {
    return entrants[a].median_us < entrants[b].median_us;
  });
  for (size_t i : by_time)
    if (i != incumbent && displaces(entrants[i], entrants[incumbent])) incumbent = i;
  return incumbent;
}

TuningManager::TuningManager(std::shared_ptr<CandidateCompiler> compiler,
                             std::shared_ptr<EvaluationBackend> backend,
                             std::shared_ptr<TuningDb> db, Options options)
    : compiler_(std::move(compiler)),
      backend_(std::move(backend)),
      db_(std::move(db)),
      options_(options),
      gpu_busy_(static_cast<size_t>(std::max(1, backend_->gpu_count())), false) {}

TuningManager::~TuningManager() {
  std::vector<JobHandle> jobs;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    jobs = jobs_;
  }
  for (auto& job : jobs) job->cancel();
  for (auto& job : jobs) job->join();
}

TuningManager::JobHandle TuningManager::submit(TuneSettings settings, TuneCallbacks callbacks) {
  auto job = std::make_shared<Job>(this, std::move(settings), std::move(callbacks));
  std::vector<JobHandle> finished;
  {
    std::lock_guard lock(mutex_);
    // Reap threads of jobs that are over.
    auto over = std::stable_partition(jobs_.begin(), jobs_.end(),
                                      [](const JobHandle& j) { return !j->finished(); });
    finished.assign(over, jobs_.end());
    jobs_.erase(over, jobs_.end());
    jobs_.push_back(job);
  }
  for (auto& done : finished) done->join();
  job->start();
  return job;
}

void TuningManager::cancel(const JobHandle& job) {
  if (job) job->cancel();
}

size_t TuningManager::queued() const {
  std::lock_guard lock(mutex_);
  return waiting_.size();
}

void TuningManager::notify_positions() {
  int position = 1;
  for (Job* job : waiting_) job->set_position(position++);
}

std::optional<int> TuningManager::acquire_gpu(Job& job) {
  std::unique_lock lock(mutex_);
  auto me = waiting_.insert(waiting_.end(), &job);
  auto free_gpu = [&]() -> std::optional<int> {
    for (size_t gpu = 0; gpu < gpu_busy_.size(); ++gpu)
      if (!gpu_busy_[gpu]) return static_cast<int>(gpu);
    return std::nullopt;
  };
  while (true) {
    if (job.cancelled() || stopping_) {
      waiting_.erase(me);
      notify_positions();
      changed_.notify_all();
      return std::nullopt;
    }
    if (me == waiting_.begin()) {
      if (auto gpu = free_gpu()) {
        gpu_busy_[static_cast<size_t>(*gpu)] = true;
        waiting_.erase(me);
        notify_positions();
        changed_.notify_all();  // the next in line may find another free GPU
        return gpu;
      }
    }
    notify_positions();  // reports this job's place the first time it has to wait
    changed_.wait(lock);
  }
}

void TuningManager::release_gpu(int gpu) {
  {
    std::lock_guard lock(mutex_);
    gpu_busy_[static_cast<size_t>(gpu)] = false;
  }
  changed_.notify_all();
}

TuneResult tune_result_from_best(const BestRecord& best) {
  TuneResult result;
  result.scope = best.scope;
  result.shape = best.shape;
  result.config = best.config;
  result.key = best.cache_key;
  result.median_us = best.median_us;
  result.tflops = best.tflops;
  result.evaluations = best.evaluations;
  result.wall_seconds = best.wall_seconds;
  result.searcher = best.searcher;
  result.from_database = true;
  result.p10_us = best.p10_us;
  result.p90_us = best.p90_us;
  result.validated = best.validated;
  result.validation_detail = best.validation_detail;
  return result;
}

}  // namespace flashcore
