#include "tuning/tuning_job.hpp"

#include "family/template_catalog.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <cmath>
#include <condition_variable>
#include <deque>
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

  Result<TuneResult> run();
  Result<TuneResult> tune(const TuningScope& scope, const ToolchainRecord& toolchain, int gpu);
  struct SpaceScan;
  void scan_space(const SearchSpace& space, SpaceScan& scan);

  TuningManager* manager_;
  TuneSettings settings_;
  TuneCallbacks callbacks_;
  std::shared_ptr<CompileQueue> compiles_;
  std::thread thread_;
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> finished_{false};
  int position_ = 0;
  std::optional<int> gpu_;  // held from acquire_gpu until after on_done
  bool replace_stored_ = false;  // the stored best does not read: overwrite it
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

  if (!settings_.force) {
    auto stored = manager_->db_->best_for(scope);
    if (!stored) {
      // A stored row that does not read is no result: tune, and replace it.
      spdlog::warn("{}; tuning the bucket again to replace it", stored.error().message);
      replace_stored_ = true;
      stored = std::optional<BestRecord>{};
    }
    // A best from another NVRTC or template source names a cubin no longer served.
    if (*stored && (*stored)->toolchain.nvrtc_version == toolchain.nvrtc_version &&
        (*stored)->toolchain.template_source_hash == toolchain.template_source_hash) {
      return tune_result_from_best(**stored);
    }
    if (auto fleet = manager_->options_.fleet ? manager_->options_.fleet->lookup(scope, toolchain)
                                              : std::nullopt) {
      // Kept here too, so the next call (and use_tuned_config) needs no fleet.
      if (auto kept = manager_->db_->update_best_if_better(*fleet, BestUpdate::force); !kept)
        spdlog::warn("fleet tuning result not stored: {}", kept.error().message);
      spdlog::info("tuning {} {}: the fleet's best {} ({:.2f} us), no tuning here",
                   scope.template_id, canonical_bucket(scope.bucket), config_label(fleet->config),
                   fleet->median_us);
      TuneResult result = tune_result_from_best(*fleet);
      result.from_database = false;
      result.from_fleet = true;
      return result;
    }
  }

  gpu_ = manager_->acquire_gpu(*this);
  if (!gpu_) return make_error(ErrorCode::cancelled, "tuning job cancelled while queued");
  return tune(scope, toolchain, *gpu_);
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

void TuningManager::Job::scan_space(const SearchSpace& space, SpaceScan& scan) {
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
        settings_.template_id, settings_.problem, configs[i], settings_.arch, settings_.shape,
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

Result<TuneResult> TuningManager::Job::tune(const TuningScope& scope,
                                            const ToolchainRecord& toolchain, int gpu) {
  const auto arch = find_arch(settings_.arch);
  if (!arch) return make_error(ErrorCode::invalid_argument, "arch: '" + settings_.arch + "' is not supported");
  auto space = SearchSpace::create(settings_.problem, *arch, family_axes(settings_.template_id),
                                   settings_.template_id);
  if (!space) return space.error();
  // A family whose configs fit only some shapes (decode: packed rows) keeps
  // the ones this job's shape fits.
  // and of those the ones worth searching for it (decode: the smallest tile
  // that holds the rows).
  if (const TemplateInfo& fits = template_info(settings_.template_id); fits.shape_error != nullptr) {
    space->prune([&](const TileConfig& config, std::string* why) {
      auto error = fits.shape_error(config, settings_.problem, settings_.shape);
      if (!error && fits.search_skip != nullptr)
        error = fits.search_skip(config, settings_.problem, settings_.shape);
      if (error) *why = *error;
      return !error;
    });
    if (space->empty())
      return make_error(ErrorCode::invalid_argument,
                        "no config of " + settings_.template_id + " fits the shape");
  }

  TuningDb& db = *manager_->db_;
  const std::string searcher_name(searcher_kind_name(settings_.searcher));
  auto job_id = db.begin_job(scope, searcher_name, toolchain);
  if (!job_id) return job_id.error();

  // Resource pruning before GPU time, overlapped with the search: a
  // background pass compiles every config of the space (through the kernel
  // cache, so the search's own compiles of them are shared) and learns which
  // fail, spill or need a stack frame. Such a config is never measured: when
  // the search proposes one it is reported as failed without GPU time, and it
  // does not count against the budget, which counts GPU measurements. The
  // default budget is a fifth of the measurable configs; until the pass is
  // over it is bracketed, and the search waits for the pass only if it
  // reaches the lower bracket first.
  SpaceScan scan(space->size());
  std::thread scanner([&] { scan_space(*space, scan); });
  struct JoinScanner {
    SpaceScan& scan;
    std::thread& thread;
    ~JoinScanner() {
      scan.stop.store(true);
      scan.changed.notify_all();
      if (thread.joinable()) thread.join();
    }
  } join_scanner{scan, scanner};
  const bool fixed_budget = settings_.max_evaluations > 0;
  // {lower, upper} bounds of the budget; equal once the scan is over.
  auto budget_bounds = [&]() -> std::pair<size_t, size_t> {
    if (fixed_budget) {
      const auto n = static_cast<size_t>(settings_.max_evaluations);
      return {n, n};
    }
    const auto [low, high] = scan.measurable_bounds();
    // The final budget is at least 8 unless fewer than 8 configs are
    // measurable, and then no count can pass it anyway: 8 is a lower bound
    // worth waiting at, where the measurable count so far gives less.
    return {std::max(default_max_evaluations(low), std::min<size_t>(8, high)),
            default_max_evaluations(high)};
  };
  // True once `count` reaches the budget, waiting for the scan if only its
  // end can tell.
  auto budget_reached = [&](size_t count) {
    auto [low, high] = budget_bounds();
    if (count < low) return false;
    if (low != high) {
      scan.wait_finished([&] { return cancelled(); });
      std::tie(low, high) = budget_bounds();
    }
    return count >= high;
  };

  const auto time_limit =
      settings_.time_budget.count() > 0 ? settings_.time_budget : kDefaultTuneTimeBudget;
  std::vector<StopConditionPtr> rules{time_budget(time_limit)};
  if (settings_.patience > 0) rules.push_back(patience(static_cast<size_t>(settings_.patience)));
  const StopConditionPtr stop = any_of(std::move(rules));

  // The family's default (what the daemon serves an untuned bucket) is tried
  // first, so a tuned result is never slower than not tuning; then the
  // family's seeds for the shape, then the bests of the nearest tuned
  // buckets (transfer).
  const TemplateInfo& family = template_info(settings_.template_id);
  const TileConfig family_default =
      family.default_config_for != nullptr
          ? family.default_config_for(settings_.problem, settings_.shape, *arch)
          : family.default_config(settings_.problem);
  std::vector<TileConfig> seeds{family.resolve(family_default, settings_.problem)};
  if (family.search_seeds != nullptr)
    for (const TileConfig& seed : family.search_seeds(settings_.problem, settings_.shape, *arch))
      seeds.push_back(family.resolve(seed, settings_.problem));
  if (auto near = db.nearest_best(scope, 4); near)
    for (const auto& entry : *near) seeds.push_back(entry.best.config);

  std::unique_ptr<Searcher> searcher = make_searcher(settings_.searcher);
  searcher->initialize(*space, settings_.seed == 0 ? 1 : settings_.seed, seeds);
  auto* evolutionary = dynamic_cast<EvolutionarySearcher*>(searcher.get());

  {
    TuneEvent started;
    started.kind = TuneEvent::Kind::started;
    started.job_id = *job_id;
    started.space_size = space->size();
    started.max_evaluations = budget_bounds().second;  // at most; final once the scan is over
    started.gpu = gpu;
    emit(started);
  }
  spdlog::info("tuning job {}: {} {} on GPU {} ({}), {} configs, {}{}", *job_id,
               canonical_problem_class(settings_.problem), canonical_bucket(scope.bucket), gpu,
               scope.device_name, space->size(), stop->describe(),
               fixed_budget ? ", at most " + std::to_string(settings_.max_evaluations) +
                                  " measurements"
                            : ", a fifth of the measurable configs");

  const size_t ahead = manager_->options_.compile_ahead > 0
                           ? manager_->options_.compile_ahead
                           : static_cast<size_t>(2 * manager_->backend_->gpu_count() + 2);
  const auto begin = Clock::now();
  std::optional<CompiledCandidate> reference;
  std::optional<Trial> best;
  double best_tflops = 0.0;
  std::string best_key;
  int64_t best_trial_id = 0;
  bool stopping = false;
  size_t measured = 0;  // candidates that took GPU time (ok, wrong, or failed while measured)
  std::vector<bool> recorded(space->size(), false);
  // The fastest correct candidates so far (kFinalists), and the family
  // default if it was correct: the finalists, with their compiled kernels.
  struct Kept {
    TileConfig config;
    CompiledCandidate candidate;
    int64_t trial_id = 0;
    double median_us = 0.0, p10_us = 0.0, p90_us = 0.0, tflops = 0.0;
  };
  std::vector<Kept> top;
  std::optional<Kept> default_kept;
  // A trial of this job with what every trial carries; the caller sets the rest.
  auto new_trial = [&](const TileConfig& config) {
    TrialRecord trial;
    trial.job_id = *job_id;
    trial.scope = scope;
    trial.shape = settings_.shape;
    trial.config = config;
    trial.smem_bytes = template_info(settings_.template_id).smem_bytes(config, settings_.problem);
    trial.gpu_index = gpu;
    trial.toolchain = toolchain;
    return trial;
  };
  auto set_resources = [](TrialRecord& trial, const CompiledCandidate& candidate) {
    trial.cache_key = candidate.key;
    trial.registers = candidate.registers;
    trial.spill_store_bytes = candidate.spill_store_bytes;
    trial.spill_load_bytes = candidate.spill_load_bytes;
  };

  // `id` keeps the proposal's place in the queue; a resubmission reuses it.
  auto compile_into = [&](uint64_t id, const TileConfig& config) {
    manager_->compiler_->compile(
        settings_.template_id, settings_.problem, config, settings_.arch, settings_.shape,
        [queue = compiles_, id](Result<CompiledCandidate> result) {
          {
            std::lock_guard lock(queue->mutex);
            auto slot = queue->slots.find(id);
            if (slot != queue->slots.end()) slot->second.result.emplace(std::move(result));
          }
          queue->ready.notify_all();
        });
  };
  auto submit = [&](const TileConfig& config) {
    uint64_t id;
    {
      std::lock_guard lock(compiles_->mutex);
      id = compiles_->next_id++;
      compiles_->slots[id].config = config;
    }
    compile_into(id, config);
  };
  // A full compile queue (other clients' work) is not the config's fault:
  // the proposal is compiled again, in its place, rather than recorded as a
  // compile failure that would keep it out of this and later searches.
  constexpr int kBusyRetries = 50;
  std::map<uint64_t, int> busy_retries;

  while (!cancelled()) {
    // Keep the compile pipeline full while the GPU measures.
    while (!stopping) {
      size_t in_flight;
      {
        std::lock_guard lock(compiles_->mutex);
        in_flight = compiles_->slots.size();
      }
      if (in_flight >= ahead || budget_reached(measured + in_flight)) break;
      auto config = searcher->next();
      if (!config) break;
      submit(*config);
    }
    // The oldest proposal next, so results reach the searcher in order.
    TileConfig config;
    std::optional<Result<CompiledCandidate>> compiled;
    {
      std::unique_lock lock(compiles_->mutex);
      if (compiles_->slots.empty()) break;
      auto front = compiles_->slots.begin();
      compiles_->ready.wait(lock, [&] { return compiles_->cancelled || front->second.result; });
      if (compiles_->cancelled) break;
      config = front->second.config;
      const uint64_t id = front->first;
      const Result<CompiledCandidate>& result = *front->second.result;
      if (!result && result.error().code == ErrorCode::resource_exhausted &&
          busy_retries[id] < kBusyRetries) {
        ++busy_retries[id];
        front->second.result.reset();
        lock.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        compile_into(id, config);
        continue;
      }
      busy_retries.erase(id);
      compiled = std::move(front->second.result);
      compiles_->slots.erase(front);
    }

    TrialRecord trial = new_trial(config);
    if (auto index = space->index_of(config)) recorded[*index] = true;
    bool took_gpu_time = false;
    if (!*compiled) {
      trial.status = TrialStatus::skipped;  // pruned: never measurable
      trial.failure_reason = "compile: " + compiled->error().message;
    } else {
      const CompiledCandidate& candidate = **compiled;
      set_resources(trial, candidate);
      if (auto skip = resource_skip_reason(candidate)) {
        trial.status = TrialStatus::skipped;
        trial.failure_reason = *skip;
      } else {
        MeasureRequest request;
        request.candidate = &candidate;
        request.reference = reference ? &*reference : nullptr;
        request.problem = settings_.problem;
        request.shape = settings_.shape;
        request.layout = settings_.layout;
        request.gpu = gpu;
        request.seed = settings_.seed == 0 ? 1 : settings_.seed;
        request.warmup = settings_.warmup;
        request.repetitions = settings_.repetitions;
        request.target_loop_ms = settings_.target_loop_ms;
        request.deadline = begin + time_limit + std::chrono::minutes(2);
        request.cancelled = &cancelled_;
        took_gpu_time = true;
        auto measured = manager_->backend_->measure(request);
        if (!measured) {
          trial.status = TrialStatus::failed;
          trial.failure_reason = measured.error().message;
        } else {
          trial.gpu_index = measured->gpu_index;
          trial.rel_error = measured->rel_error;
          trial.max_abs_error = measured->max_abs_error;
          if (!measured->correct) {
            trial.status = TrialStatus::wrong;
            trial.failure_reason = measured->validation_detail.empty()
                                       ? std::string("wrong result")
                                       : measured->validation_detail;
          } else {
            trial.status = TrialStatus::ok;
            trial.median_us = measured->median_us;
            trial.p10_us = measured->p10_us;
            trial.p90_us = measured->p90_us;
            trial.samples = measured->samples;
            trial.tflops = measured->tflops;
            if (!reference) reference = candidate;  // later candidates compare against it
          }
        }
      }
    }
    auto trial_id = db.record_trial(trial);
    if (!trial_id) spdlog::warn("tuning job {}: {}", *job_id, trial_id.error().message);
    if (took_gpu_time) ++measured;

    TrialOutcome outcome;
    outcome.ok = trial.status == TrialStatus::ok;
    outcome.time_us = trial.median_us;
    outcome.failure = trial.failure_reason;
    (void)searcher->report(config, outcome);

    const auto elapsed = Clock::now() - begin;
    const SearchProgress progress = searcher->progress(elapsed);
    const size_t done_count = measured;
    const size_t budget_now = budget_bounds().second;
    int64_t eta_ms = 0;
    if (done_count > 0 && done_count < budget_now) {
      const double per = std::chrono::duration<double, std::milli>(elapsed).count() / done_count;
      const double by_count = per * static_cast<double>(budget_now - done_count);
      const double by_time =
          std::chrono::duration<double, std::milli>(time_limit - elapsed).count();
      eta_ms = static_cast<int64_t>(std::max(0.0, std::min(by_count, by_time)));
    }

    TuneEvent event;
    event.kind = TuneEvent::Kind::trial;
    event.config = config;
    event.status = trial.status;
    event.median_us = trial.median_us;
    event.tflops = trial.tflops;
    event.failure = trial.failure_reason;
    event.evaluations = done_count;
    event.generation = evolutionary ? evolutionary->generation() : 0;
    event.eta_ms = eta_ms;
    emit(event);

    if (trial.status == TrialStatus::ok) {
      Kept kept{config, **compiled, trial_id ? *trial_id : 0, trial.median_us, trial.p10_us,
                trial.p90_us, trial.tflops};
      if (config == seeds.front()) default_kept = kept;
      top.push_back(std::move(kept));
      std::stable_sort(top.begin(), top.end(),
                       [](const Kept& a, const Kept& b) { return a.median_us < b.median_us; });
      if (top.size() > kFinalists) top.pop_back();
    }
    if (trial.status == TrialStatus::ok && (!best || trial.median_us < best->outcome.time_us)) {
      best = Trial{config, outcome};
      best_tflops = trial.tflops;
      best_key = trial.cache_key;
      best_trial_id = trial_id ? *trial_id : 0;
      TuneEvent improved = event;
      improved.kind = TuneEvent::Kind::best;
      emit(improved);
    }
    if (stop->done(progress) || budget_reached(measured)) stopping = true;
    if (stopping) break;
  }

  bool was_cancelled = cancelled();
  {
    // Compiles still running finish into a queue nobody reads.
    std::lock_guard lock(compiles_->mutex);
    compiles_->slots.clear();
  }
  // The pass stops where it is; the configs it pruned that the search never
  // proposed go on the job's record too (skipped), so a report shows why
  // each one was left out.
  scan.stop.store(true);
  scan.changed.notify_all();
  if (scanner.joinable()) scanner.join();
  for (size_t i = 0; i < space->size(); ++i) {
    if (recorded[i] || !scan.reasons[i] || scan.reasons[i]->empty()) continue;
    TrialRecord trial = new_trial(space->at(i));
    set_resources(trial, scan.compiled[i]);
    trial.status = TrialStatus::skipped;
    trial.failure_reason = *scan.reasons[i];
    if (auto stored = db.record_trial(trial); !stored)
      spdlog::warn("tuning job {}: {}", *job_id, stored.error().message);
  }
  spdlog::info("tuning job {}: {} of {} configs scanned, {} pruned before measurement", *job_id,
               scan.measurable + scan.pruned, space->size(), scan.pruned);
  // The choice (DESIGN.md §6): the finalists re-timed interleaved, a
  // challenger displacing the incumbent (the family default where it is a
  // finalist) only by more than the spread; then the whole validation matrix
  // on the chosen one, the next in line where it fails.
  std::vector<Finalist> finalists;
  bool validated = false;
  std::string validation_detail;
  if (best && !was_cancelled) {
    std::vector<Kept> entrants = top;
    if (default_kept &&
        std::none_of(entrants.begin(), entrants.end(),
                     [&](const Kept& k) { return k.config == default_kept->config; }))
      entrants.push_back(*default_kept);
    MeasureRequest base;
    base.reference = nullptr;
    base.problem = settings_.problem;
    base.shape = settings_.shape;
    base.layout = settings_.layout;
    base.gpu = gpu;
    base.seed = settings_.seed == 0 ? 1 : settings_.seed;
    base.warmup = settings_.warmup;
    base.repetitions = settings_.repetitions;
    base.target_loop_ms = settings_.target_loop_ms;
    base.cancelled = &cancelled_;
    std::vector<std::vector<Measurement>> rounds(entrants.size());
    if (entrants.size() >= 2) {
      base.validate = false;
      for (int round = 0; round < kRetimeRounds && !cancelled(); ++round)
        for (size_t i = 0; i < entrants.size() && !cancelled(); ++i) {
          MeasureRequest request = base;
          request.candidate = &entrants[i].candidate;
          request.deadline = Clock::now() + std::chrono::minutes(2);
          auto timed = manager_->backend_->measure(request);
          if (timed && timed->correct && timed->median_us > 0.0)
            rounds[i].push_back(*timed);
          else
            spdlog::warn("tuning job {}: re-timing {}: {}", *job_id,
                         config_label(entrants[i].config),
                         timed ? std::string("no time") : timed.error().message);
        }
    }
    auto median_of = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    std::vector<size_t> order;  // entrants that have times, fastest first
    for (size_t i = 0; i < entrants.size(); ++i) {
      Finalist f{entrants[i].config, entrants[i].median_us, entrants[i].p10_us,
                 entrants[i].p90_us};
      if (entrants.size() >= 2) {
        if (rounds[i].empty()) continue;  // it did not time again: not a finalist
        std::vector<double> med, p10, p90;
        for (const auto& m : rounds[i]) {
          med.push_back(m.median_us);
          p10.push_back(m.p10_us);
          p90.push_back(m.p90_us);
        }
        f.median_us = median_of(med);
        f.p10_us = std::min(median_of(p10), f.median_us);
        f.p90_us = std::max(median_of(p90), f.median_us);
      }
      finalists.push_back(f);
      order.push_back(i);
    }
    std::vector<size_t> by_time(finalists.size());
    for (size_t i = 0; i < by_time.size(); ++i) by_time[i] = i;
    std::stable_sort(by_time.begin(), by_time.end(), [&](size_t a, size_t b) {
      return finalists[a].median_us < finalists[b].median_us;
    });
    // Validation order: the chosen one first, then the rest by time.
    std::vector<size_t> candidates_in_order;
    if (!by_time.empty()) {
      size_t incumbent = by_time.front();
      for (size_t i = 0; i < finalists.size(); ++i)
        if (default_kept && finalists[i].config == default_kept->config) incumbent = i;
      for (size_t i : by_time)
        if (i != incumbent && displaces(finalists[i], finalists[incumbent])) incumbent = i;
      candidates_in_order.push_back(incumbent);
      for (size_t i : by_time)
        if (i != incumbent) candidates_in_order.push_back(i);
    }
    best.reset();
    for (size_t f : candidates_in_order) {
      if (cancelled()) break;
      const Kept& entrant = entrants[order[f]];
      MeasureRequest request = base;
      request.validate = true;
      request.candidate = &entrant.candidate;
      request.deadline = Clock::now() + std::chrono::minutes(30);
      auto full = manager_->backend_->validate_fully(request);
      std::string failure;
      if (!full) {
        failure = "winner validation: " + full.error().message;
      } else if (*full && !(*full)->passed) {
        failure = "winner validation: " + ((*full)->detail.empty() ? std::string("wrong result")
                                                                   : (*full)->detail);
      }
      if (!failure.empty()) {
        spdlog::warn("tuning job {}: {} {}; the next finalist is validated", *job_id,
                     config_label(entrant.config), failure);
        if (entrant.trial_id != 0)
          if (Status marked = db.set_trial_status(entrant.trial_id, TrialStatus::wrong, failure);
              !marked)
            spdlog::warn("tuning job {}: {}", *job_id, marked.error().message);
        continue;
      }
      validated = full->has_value();
      validation_detail = validated ? (*full)->detail
                                    : std::string("not run: the evaluation backend has no full "
                                                  "validation");
      TrialOutcome outcome;
      outcome.ok = true;
      outcome.time_us = finalists[f].median_us;
      best = Trial{entrant.config, outcome};
      best_tflops = entrant.tflops * entrant.median_us / finalists[f].median_us;
      best_key = entrant.candidate.key;
      best_trial_id = entrant.trial_id;
      // The winner first in the answer, the rest by time.
      std::vector<Finalist> ordered{finalists[f]};
      for (size_t i : by_time)
        if (i != f) ordered.push_back(finalists[i]);
      finalists = std::move(ordered);
      break;
    }
    if (!best) finalists.clear();
    was_cancelled = cancelled();
  }

  const double wall = std::chrono::duration<double>(Clock::now() - begin).count();
  const JobStatus status =
      was_cancelled ? JobStatus::cancelled : (best ? JobStatus::succeeded : JobStatus::failed);
  if (Status finished = db.finish_job(*job_id, status,
                                      best ? std::optional<int64_t>(best_trial_id) : std::nullopt);
      !finished)
    spdlog::warn("tuning job {}: {}", *job_id, finished.error().message);
  spdlog::info("tuning job {} {} after {} measurements in {:.1f} s", *job_id,
               job_status_name(status), measured, wall);

  // Only a chosen and validated winner is stored: a cancelled job leaves the
  // stored best as it was.
  if (best && !was_cancelled) {
    BestRecord record;
    record.scope = scope;
    record.shape = settings_.shape;
    record.config = best->config;
    record.cache_key = best_key;
    record.median_us = best->outcome.time_us;
    record.tflops = best_tflops;
    record.trial_id = best_trial_id;
    record.evaluations = static_cast<int64_t>(measured);
    record.wall_seconds = wall;
    record.searcher = searcher_name;
    record.toolchain = toolchain;
    record.p10_us = finalists.empty() ? 0.0 : finalists.front().p10_us;
    record.p90_us = finalists.empty() ? 0.0 : finalists.front().p90_us;
    record.validated = validated;
    record.validation_detail = validation_detail;
    if (auto stored = db.update_best_if_better(
            record, replace_stored_ ? BestUpdate::force : BestUpdate::if_faster);
        !stored)
      spdlog::warn("tuning job {}: {}", *job_id, stored.error().message);
    else if (*stored && manager_->options_.fleet)
      manager_->options_.fleet->publish(record);
  }
  if (was_cancelled)
    return make_error(ErrorCode::cancelled,
                      "tuning job " + std::to_string(*job_id) + " cancelled after " +
                          std::to_string(measured) + " measurements");
  if (!best && !top.empty())
    return make_error(ErrorCode::failed_precondition,
                      "tuning job " + std::to_string(*job_id) + ": none of the " +
                          std::to_string(std::max(top.size(), finalists.size())) +
                          " finalists passed the full validation (see the job's trials)");
  if (!best)
    return make_error(ErrorCode::failed_precondition,
                      "tuning job " + std::to_string(*job_id) + ": none of " +
                          std::to_string(searcher->evaluations()) +
                          " candidates compiled without spills, passed the correctness gate and "
                          "was timed");
  TuneResult result;
  result.scope = scope;
  result.shape = settings_.shape;
  result.config = best->config;
  result.key = best_key;
  result.median_us = best->outcome.time_us;
  result.tflops = best_tflops;
  result.evaluations = static_cast<int64_t>(measured);
  result.wall_seconds = wall;
  result.searcher = searcher_name;
  result.finalists = finalists;
  result.p10_us = finalists.empty() ? result.median_us : finalists.front().p10_us;
  result.p90_us = finalists.empty() ? result.median_us : finalists.front().p90_us;
  result.validated = validated;
  result.validation_detail = validation_detail;
  return result;
}

bool displaces(const Finalist& challenger, const Finalist& incumbent) {
  const double spread = std::max(challenger.spread_us(), incumbent.spread_us());
  return incumbent.median_us - challenger.median_us > spread;
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
