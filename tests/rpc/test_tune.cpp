// Tune, GetTuningResult, ListTuningResults and Compile's use_tuned_config
// over real gRPC streaming, with real NVRTC compiles of the small template,
// the real kernel cache and the real SQLite tuning database. Only the GPU
// measurement is replaced: this machine has no GPU, so the daemon gets an
// evaluation backend that scores each compiled config with the SYNTHETIC
// TEST OBJECTIVE of the searcher tests (tests/unit/search_test_objective.hpp).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <optional>
#include <fstream>
#include <sstream>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include <sqlite3.h>

#include "../unit/search_test_objective.hpp"
#include "flashcore/client.hpp"
#include "rpc_test_support.hpp"
#include "tuning/search_space.hpp"
#include "tuning/shape_bucket.hpp"
#include "tuning/tuning_db.hpp"
#include "tuning/tuning_job.hpp"
#include "family/attention_decode.hpp"
#include "family/attention_sm90.hpp"
#include "jit/template_registry.hpp"

namespace flashcore {
namespace {

using namespace std::chrono_literals;

// Measures nothing: each compiled config's "time" is the synthetic test
// objective's, the trap config is "wrong", other objective failures are
// worker failures. `delay` stands in for GPU time.
//
// Tests that are about order (queued before started, cancelled while
// measuring) hold measurements at a gate instead of relying on delays: a
// held measurement waits until the test opens the gate or its job is
// cancelled (then it fails as a worker would), so the outcome does not
// depend on how fast a loaded machine runs.
class SyntheticObjectiveBackend final : public EvaluationBackend {
 public:
  explicit SyntheticObjectiveBackend(std::chrono::milliseconds delay = 0ms) : delay_(delay) {}

  Result<Measurement> measure(const MeasureRequest& request) override {
    {
      std::unique_lock lock(mutex_);
      const int index = begun_++;
      changed_.notify_all();
      if (on_measure_) on_measure_(index);
      auto held = [&] { return hold_ && hold_(index, request); };
      while (held() && !(request.cancelled && request.cancelled->load())) {
        // The job's flag is an atomic without a notification: look again soon.
        changed_.wait_for(lock, 2ms);
      }
      if (held()) return make_error(ErrorCode::cancelled, "measurement abandoned: job cancelled");
    }
    std::this_thread::sleep_for(delay_);
    // The candidate must be a real compile: a key and a kernel.
    if (request.candidate->key.size() != 64 || !request.candidate->kernel)
      return make_error(ErrorCode::internal, "candidate was not compiled");
    const TrialOutcome outcome = objective_ ? objective_(request.candidate->config)
                                            : test::test_objective(request.candidate->config);
    Measurement measured;
    measured.device = device_name(0);
    if (!request.validate) {  // a finalist re-timed on its own call: times only
      ++retimed_;
      ++retimed_one_by_one_;
      std::lock_guard lock(mutex_);
      return retimed(request.candidate->config, outcome);
    }
    {
      std::lock_guard lock(mutex_);
      shapes_.push_back({request.shape, request.layout});
    }
    ++measured_;
    if (request.reference == nullptr) ++without_reference_;
    if (request.candidate->config == test::kTestObjectiveTrap) {
      measured.correct = false;
      measured.validation_detail = outcome.failure;
      return measured;
    }
    if (!outcome.ok) return make_error(ErrorCode::internal, outcome.failure);
    measured.correct = true;
    measured.median_us = outcome.time_us;
    measured.p10_us = measured.p90_us = outcome.time_us;
    measured.samples = 1;
    measured.tflops = 1000.0 / outcome.time_us;
    return measured;
  }
  // The finalists timed together, as the worker pool's one call with
  // EvaluateRequest.kernels: every candidate once per round, in turn.
  Result<RoundTimes> measure_many(const MeasureManyRequest& request) override {
    std::lock_guard lock(mutex_);
    many_calls_.push_back({request.candidates.size(), request.rounds});
    if (fail_many_) return make_error(ErrorCode::internal, "kernels[1] faulted: illegal address");
    RoundTimes times(request.candidates.size());
    for (int round = 0; round < request.rounds; ++round)
      for (size_t i = 0; i < request.candidates.size(); ++i) {
        const TileConfig& config = request.candidates[i]->config;
        times[i].push_back(retimed(config, objective_ ? objective_(config)
                                                      : test::test_objective(config)));
        ++retimed_;
      }
    return times;
  }
  // Each measure_many call: (candidates, rounds).
  std::vector<std::pair<size_t, int>> many_calls() {
    std::lock_guard lock(mutex_);
    return many_calls_;
  }
  // measure_many fails as a call whose kernel faulted does.
  void fail_measure_many(bool fail) {
    std::lock_guard lock(mutex_);
    fail_many_ = fail;
  }
  // The full matrix, as a worker would run it: fails for the configs named
  // by fail_full_validation (say, wrong only on the ragged tail, which the
  // sampled gate of the search does not see).
  Result<std::optional<FullValidation>> validate_fully(const MeasureRequest& request) override {
    std::lock_guard lock(mutex_);
    full_validated_.push_back(request.candidate->config);
    FullValidation full;
    full.passed = std::find(fail_full_.begin(), fail_full_.end(), request.candidate->config) ==
                  fail_full_.end();
    full.detail = full.passed ? "every row, 100 determinism runs, 10 stability trials"
                              : "row 999 of (0, 0) (the ragged tail): rel error 0.5";
    return std::optional<FullValidation>(full);
  }
  int gpu_count() const override { return 1; }
  std::string device_name(int) const override { return "Synthetic Test Device"; }

  struct Times {
    double median, p10, p90;
  };
  // What re-timing a finalist answers (nullopt: the objective's time, no spread).
  void retime_with(std::function<std::optional<Times>(const TileConfig&)> retime) {
    std::lock_guard lock(mutex_);
    retime_ = std::move(retime);
  }
  // Scores configs with `objective` instead of the test objective (for a
  // family whose configs the test objective does not know).
  void objective_with(std::function<TrialOutcome(const TileConfig&)> objective) {
    std::lock_guard lock(mutex_);
    objective_ = std::move(objective);
  }
  void fail_full_validation(std::vector<TileConfig> configs) {
    std::lock_guard lock(mutex_);
    fail_full_ = std::move(configs);
  }
  std::vector<TileConfig> full_validated() {
    std::lock_guard lock(mutex_);
    return full_validated_;
  }
  std::atomic<int> retimed_{0};             // finalist times given, either way
  std::atomic<int> retimed_one_by_one_{0};  // of those, through measure()

  // Measurements for which `hold` is true (given their index, 0 first) wait
  // at the gate.
  void hold_if(std::function<bool(int, const MeasureRequest&)> hold) {
    std::lock_guard lock(mutex_);
    hold_ = std::move(hold);
    changed_.notify_all();
  }
  // Measurements after the first `n` wait at the gate.
  void hold_after(int n) {
    hold_if([n](int index, const MeasureRequest&) { return index >= n; });
  }
  void open_gate() { hold_if(nullptr); }
  // Blocks until `n` measurements have begun (held ones included).
  void wait_for_measurements(int n) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return begun_ >= n; });
  }
  // Runs at the start of each measurement, with its index (0 first).
  void on_measure(std::function<void(int)> hook) {
    std::lock_guard lock(mutex_);
    on_measure_ = std::move(hook);
  }

  // The shape and layout of every measurement so far.
  std::vector<std::pair<RuntimeShape, QkvLayout>> shapes() {
    std::lock_guard lock(mutex_);
    return shapes_;
  }

  std::atomic<int> measured_{0};
  std::atomic<int> without_reference_{0};

 private:
  // A finalist's times as re-timing gives them (caller holds mutex_).
  Measurement retimed(const TileConfig& config, const TrialOutcome& outcome) {
    const auto times = retime_ ? retime_(config) : std::nullopt;
    Measurement measured;
    measured.device = device_name(0);
    measured.correct = true;
    measured.median_us = times ? times->median : outcome.time_us;
    measured.p10_us = times ? times->p10 : measured.median_us;
    measured.p90_us = times ? times->p90 : measured.median_us;
    measured.samples = 1;
    measured.tflops = 1000.0 / measured.median_us;
    return measured;
  }

  std::vector<std::pair<size_t, int>> many_calls_;
  bool fail_many_ = false;
  std::vector<std::pair<RuntimeShape, QkvLayout>> shapes_;
  std::function<std::optional<Times>(const TileConfig&)> retime_;
  std::function<TrialOutcome(const TileConfig&)> objective_;
  std::vector<TileConfig> fail_full_;
  std::vector<TileConfig> full_validated_;
  std::chrono::milliseconds delay_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int begun_ = 0;
  std::function<bool(int, const MeasureRequest&)> hold_;
  std::function<void(int)> on_measure_;
};

// Holds a value one thread sets and another waits for.
template <typename T>
class Latch {
 public:
  void set(T value) {
    std::lock_guard lock(mutex_);
    value_ = std::move(value);
    changed_.notify_all();
  }
  T wait() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return value_.has_value(); });
    return *value_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::optional<T> value_;
};

struct TuneDaemon {
  test_support::ScratchDir templates;
  test_support::ScratchDir cache;
  std::shared_ptr<SyntheticObjectiveBackend> backend;
  std::unique_ptr<Daemon> daemon;
  std::unique_ptr<client::Client> client;

  // (Re)starts the daemon on the same folders; no backend: no tuning.
  void start(std::shared_ptr<SyntheticObjectiveBackend> with) {
    client.reset();
    daemon.reset();
    backend = std::move(with);
    DaemonConfig config = rpc_testing::loopback_config(cache.path());
    config.templates_dir = templates.path();
    DaemonHooks hooks;
    hooks.evaluation_backend = backend;
    spdlog::set_level(spdlog::level::warn);
    auto started = Daemon::start(config, hooks);
    ASSERT_TRUE(started.ok()) << started.error().message;
    daemon = std::move(started).value();
    client::ConnectOptions options;
    options.address = daemon->address();
    auto connected = client::Client::connect(options);
    ASSERT_TRUE(connected.ok()) << connected.error().message;
    client = std::make_unique<client::Client>(std::move(connected).value());
  }
};

// The decode family's real sources (and the headers they include) in the
// daemon's template folder.
void write_decode_templates(TuneDaemon& d) {
  for (const auto& [path, contents] : TemplateRegistry::embedded()->sources())
    if (path.rfind("decode/", 0) == 0 || path == "common/element_types.cuh" ||
        path == "common/sm80_primitives.cuh")
      d.templates.write(path, contents);
}

std::unique_ptr<TuneDaemon> make_daemon(std::chrono::milliseconds delay = 0ms) {
  auto d = std::make_unique<TuneDaemon>();
  test_support::write_attention_templates(d->templates, test_support::kSmallAttentionTemplate);
  d->start(std::make_shared<SyntheticObjectiveBackend>(delay));
  return d;
}

// sm_86 with head_dim 256 leaves a small space (shared memory: 6 tiles, each
// with both q placements and the layouts that fit), so a whole search
// compiles in a few seconds.
v1::TuneRequest small_tune(int64_t seq = 1000, bool causal = false) {
  v1::TuneRequest request;
  v1::KernelRequest* kernel = request.mutable_kernel();
  kernel->set_template_id("attention_fwd");
  kernel->set_arch("sm_86");
  v1::Problem* problem = kernel->mutable_problem();
  problem->set_dtype(v1::DTYPE_FP16);
  problem->set_head_dim(256);
  problem->set_causal(causal);
  problem->set_batch(2);
  problem->set_heads(8);
  problem->set_seq_q(seq);
  request.set_max_evaluations(6);
  request.set_seed(7);
  // Tests count evaluations: a loaded 2-core machine must not end a search
  // on the clock (60 s by default) before the count is reached.
  request.set_time_budget_ms(3'600'000);
  return request;
}

// sm_80 head_dim 64: 180 configs (45 evaluated at most), for jobs that must
// still be running when cancelled.
v1::TuneRequest large_tune() {
  v1::TuneRequest request = small_tune();
  request.mutable_kernel()->set_arch("sm_80");
  request.mutable_kernel()->mutable_problem()->set_head_dim(64);
  request.set_max_evaluations(45);
  return request;
}

ProblemClass problem_of(const v1::TuneRequest& request) {
  ProblemClass problem;
  problem.head_dim = request.kernel().problem().head_dim();
  problem.causal = request.kernel().problem().causal();
  return problem;
}

// Answers carry concrete enum values; UNSPECIFIED maps to automatic, which
// no optimum (a space member) has, so a missing value shows as a mismatch.
TileConfig tile_of(const v1::TileConfig& c) {
  TileConfig out{c.block_m(), c.block_n(), c.warps(), c.stages()};
  switch (c.q_placement()) {
    case v1::Q_PLACEMENT_REGISTERS: out.q_placement = QPlacement::registers; break;
    case v1::Q_PLACEMENT_SHARED: out.q_placement = QPlacement::shared; break;
    default: out.q_placement = QPlacement::automatic; break;
  }
  switch (c.smem_layout()) {
    case v1::SMEM_LAYOUT_SWIZZLED: out.smem_layout = SmemLayout::swizzled; break;
    case v1::SMEM_LAYOUT_PADDED: out.smem_layout = SmemLayout::padded; break;
    default: out.smem_layout = SmemLayout::automatic; break;
  }
  return out;
}

// The run-time shape small_tune() asks for, as a TuningResult must echo it.
void expect_small_tune_shape(const v1::TuningResult& result) {
  EXPECT_EQ(result.problem().batch(), 2);
  EXPECT_EQ(result.problem().heads(), 8);
  EXPECT_EQ(result.problem().kv_heads(), 0);  // as asked: 0 = heads
  EXPECT_EQ(result.problem().seq_q(), 1000);
  EXPECT_EQ(result.problem().seq_k(), 0);     // as asked: 0 = seq_q
  EXPECT_EQ(result.problem().head_dim(), 256);
  EXPECT_EQ(result.problem().dtype(), v1::DTYPE_FP16);
}

std::unique_ptr<TuningDb> open_db(const TuneDaemon& d) {
  auto db = TuningDb::open((d.cache.path() / "tuning.db").string());
  EXPECT_TRUE(db.ok());
  return db.ok() ? std::move(db).value() : nullptr;
}

// Waits until the job is no longer running. A job cancelled by its client
// records its end after the call has returned (it first waits for its
// compiles in flight), so this waits for that event; the bound only keeps a
// broken build from hanging.
std::optional<JobRecord> finished_job(TuningDb& db, int64_t job_id) {
  const auto give_up = std::chrono::steady_clock::now() + 10min;
  while (std::chrono::steady_clock::now() < give_up) {
    auto job = db.job(job_id);
    if (job.ok() && *job && (*job)->status != JobStatus::running) return **job;
    std::this_thread::sleep_for(10ms);
  }
  ADD_FAILURE() << "tuning job " << job_id << " never finished";
  return std::nullopt;
}

struct CliRun {
  int exit_code = -1;
  std::string out, err;
};

std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Runs the built `flashcore` CLI, stdout and stderr captured.
CliRun run_cli(const test_support::ScratchDir& scratch, std::vector<std::string> args) {
  const auto out_path = scratch.path() / "cli_out";
  const auto err_path = scratch.path() / "cli_err";
  args.insert(args.begin(), FLASHCORE_CLI_PATH);
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  CliRun run;
  const pid_t pid = fork();
  if (pid == 0) {
    const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0 || err < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(126);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  run.out = slurp(out_path);
  run.err = slurp(err_path);
  return run;
}

// ListTuningJobs and GetTuningJob read back what Tune recorded: every job, and
// each trial in the order the stream reported it, with the chosen one named.
// Called by StreamsProgressFindsTheOptimumAndPersistsIt after its first job
// (`events`, its stream; `first`, its result), which costs a search less.
void expect_recorded_jobs(TuneDaemon* d, const std::vector<v1::TuneProgress>& events,
                          const v1::TuningResult* first) {
  std::vector<v1::TuneTrial> streamed;
  for (const auto& p : events)
    if (p.has_trial()) streamed.push_back(p.trial());
  const int64_t job_id = events.front().started().job_id();
  ASSERT_GT(job_id, 0);
  // A second job, cancelled as it starts (cheaper than a second search): a
  // record with another status and few trials or none.
  auto cancel = std::make_shared<client::TuneCancel>();
  auto second = d->client->tune(small_tune(100, /*causal=*/true), [&](const v1::TuneProgress& p) {
    if (p.has_started()) cancel->cancel();
  }, cancel);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, ErrorCode::cancelled);

  // The cancel is recorded when the job's in-flight work ends.
  Result<v1::ListTuningJobsResponse> listed = d->client->list_tuning_jobs(0, "");
  for (int i = 0; i < 600 && listed.ok() && listed->jobs_size() == 2 &&
                  listed->jobs(1).status() == "running";
       ++i) {
    std::this_thread::sleep_for(100ms);
    listed = d->client->list_tuning_jobs(0, "");
  }
  ASSERT_TRUE(listed.ok()) << listed.error().message;
  ASSERT_EQ(listed->jobs_size(), 2);
  EXPECT_EQ(listed->jobs(1).status(), "cancelled");
  EXPECT_TRUE(listed->next_page_token().empty());
  const v1::TuningJobRecord& job = listed->jobs(0);
  EXPECT_EQ(job.id(), job_id);
  EXPECT_EQ(job.status(), "succeeded");
  EXPECT_EQ(job.template_id(), "attention_fwd");
  EXPECT_EQ(job.problem().head_dim(), 256);
  EXPECT_FALSE(job.problem().causal());
  EXPECT_TRUE(listed->jobs(1).problem().causal());
  EXPECT_EQ(job.bucket(), first->bucket());
  EXPECT_EQ(job.device(), "Synthetic Test Device");
  EXPECT_EQ(job.arch(), "sm_86");
  EXPECT_EQ(job.searcher(), "evolutionary");
  EXPECT_EQ(job.evaluations(), first->evaluations());
  EXPECT_GE(job.finished_unix_ms(), job.started_unix_ms());
  EXPECT_GT(job.best_trial_id(), 0);

  // Pages of one: the same two jobs in order, then no token.
  auto page1 = d->client->list_tuning_jobs(1, "");
  ASSERT_TRUE(page1.ok());
  ASSERT_EQ(page1->jobs_size(), 1);
  ASSERT_FALSE(page1->next_page_token().empty());
  auto page2 = d->client->list_tuning_jobs(1, page1->next_page_token());
  ASSERT_TRUE(page2.ok());
  ASSERT_EQ(page2->jobs_size(), 1);
  EXPECT_EQ(page2->jobs(0).id(), listed->jobs(1).id());

  auto trials = d->client->get_tuning_job(job_id);
  ASSERT_TRUE(trials.ok()) << trials.error().message;
  EXPECT_EQ(trials->job().id(), job_id);
  // The streamed trials first; after them only configs the background pass
  // pruned that the search never proposed (recorded skipped, not streamed).
  ASSERT_GE(trials->trials_size(), static_cast<int>(streamed.size()));
  bool chosen_found = false;
  for (int i = 0; i < trials->trials_size(); ++i) {
    const v1::TuningTrialRecord& t = trials->trials(i);
    SCOPED_TRACE("trial " + std::to_string(i));
    if (i >= static_cast<int>(streamed.size())) {
      EXPECT_EQ(t.status(), "skipped");
      continue;
    }
    EXPECT_EQ(tile_of(t.config()), tile_of(streamed[i].config()));
    EXPECT_EQ(t.status(), streamed[i].status());
    EXPECT_DOUBLE_EQ(t.median_us(), streamed[i].median_us());
    EXPECT_EQ(t.shape().seq_q(), 1000);
    EXPECT_EQ(t.shape().batch(), 2);
    EXPECT_EQ(t.key().size(), 64u);
    if (t.id() == trials->job().best_trial_id()) {
      chosen_found = true;
      EXPECT_EQ(tile_of(t.config()), tile_of(first->config()));
    }
  }
  EXPECT_TRUE(chosen_found);

  // Refusals name the field, with the gRPC code the client keeps.
  auto unknown = d->client->get_tuning_job(424242);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ErrorCode::not_found);
  EXPECT_NE(unknown.error().message.find("job_id"), std::string::npos) << unknown.error().message;
  auto zero = d->client->get_tuning_job(0);
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.error().code, ErrorCode::invalid_argument);
  auto bad_size = d->client->list_tuning_jobs(-1, "");
  ASSERT_FALSE(bad_size.ok());
  EXPECT_EQ(bad_size.error().code, ErrorCode::invalid_argument);
  EXPECT_NE(bad_size.error().message.find("page_size"), std::string::npos);
  auto bad_token = d->client->list_tuning_jobs(0, "not-a-token");
  ASSERT_FALSE(bad_token.ok());
  EXPECT_EQ(bad_token.error().code, ErrorCode::invalid_argument);
  EXPECT_NE(bad_token.error().message.find("page_token"), std::string::npos);
}

TEST(Tune, StreamsProgressFindsTheOptimumAndPersistsIt) {
  auto d = make_daemon();
  v1::TuneRequest request = small_tune();
  const auto arch = find_arch("sm_86");
  auto space = SearchSpace::create(problem_of(request), *arch);
  ASSERT_TRUE(space.ok());
  ASSERT_LE(space->size(), 24u) << "the test expects a small space";
  // Both q placements are in it, so the search has the new fields to choose.
  bool registers = false, shared = false;
  for (const auto& c : space->configs()) {
    registers |= c.q_placement == QPlacement::registers;
    shared |= c.q_placement == QPlacement::shared;
  }
  ASSERT_TRUE(registers && shared);
  const std::string space_size = std::to_string(space->size());
  request.set_max_evaluations(static_cast<int>(space->size()));

  std::vector<v1::TuneProgress> events;
  auto result = d->client->tune(request, [&](const v1::TuneProgress& p) { events.push_back(p); });
  ASSERT_TRUE(result.ok()) << result.error().message;
  const auto optimum = test::test_objective_optimum(*space);
  ASSERT_TRUE(optimum.has_value());
  EXPECT_EQ(tile_of(result->config()), optimum->config);
  EXPECT_DOUBLE_EQ(result->median_us(), optimum->time_us);
  EXPECT_FALSE(result->from_database());
  // The result says how it was chosen and checked: the finalists re-timed
  // (the winner first), its spread, and the full validation it passed.
  ASSERT_GE(result->finalists_size(), 1);
  EXPECT_EQ(tile_of(result->finalists(0).config()), optimum->config);
  EXPECT_DOUBLE_EQ(result->finalists(0).median_us(), result->median_us());
  EXPECT_LE(result->p10_us(), result->median_us());
  EXPECT_GE(result->p90_us(), result->median_us());
  EXPECT_GT(result->p90_us(), 0.0);
  EXPECT_TRUE(result->validated());
  EXPECT_NE(result->validation_detail().find("every row"), std::string::npos)
      << result->validation_detail();
  EXPECT_EQ(result->evaluations(), static_cast<int64_t>(space->size()));
  EXPECT_EQ(result->device(), "Synthetic Test Device");
  EXPECT_EQ(result->bucket(), "seq_q=1024;seq_k=1024;batch_heads=16;gqa=1;layout=bshd;");
  EXPECT_EQ(result->problem().layout(), v1::LAYOUT_BSHD);
  EXPECT_EQ(result->key().size(), 64u);
  expect_small_tune_shape(*result);

  // started first, done last, one trial per evaluation, a best on each improvement.
  ASSERT_GE(events.size(), 3u);
  ASSERT_TRUE(events.front().has_started());
  EXPECT_EQ(events.front().started().space_size(), static_cast<int>(space->size()));
  EXPECT_EQ(events.front().started().bucket(), result->bucket());
  EXPECT_TRUE(events.back().has_done());
  int trials = 0, bests = 0;
  double last_best = 1e300;
  for (const auto& e : events) {
    if (e.has_trial()) {
      ++trials;
      EXPECT_EQ(e.trial().evaluations(), trials);
      // Every trial names a concrete space member.
      EXPECT_NE(e.trial().config().q_placement(), v1::Q_PLACEMENT_UNSPECIFIED);
      EXPECT_NE(e.trial().config().smem_layout(), v1::SMEM_LAYOUT_UNSPECIFIED);
      EXPECT_TRUE(space->contains(tile_of(e.trial().config())));
    }
    if (e.has_best()) {
      ++bests;
      EXPECT_LT(e.best().median_us(), last_best);
      last_best = e.best().median_us();
    }
  }
  EXPECT_EQ(trials, static_cast<int>(space->size()));
  EXPECT_GE(bests, 1);
  EXPECT_DOUBLE_EQ(last_best, optimum->time_us);
  // The first correct candidate is validated against fp64, the rest against it.
  EXPECT_EQ(d->backend->without_reference_.load(), 1);

  // Trials and the best are in the database.
  auto db = open_db(*d);
  ASSERT_NE(db, nullptr);
  const int64_t job_id = events.front().started().job_id();
  auto job = finished_job(*db, job_id);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->status, JobStatus::succeeded);
  auto trials_stored = db->trials_for_job(job_id);
  ASSERT_TRUE(trials_stored.ok());
  EXPECT_EQ(trials_stored->size(), space->size());
  // The same records over gRPC (and a second, cancelled job beside it).
  expect_recorded_jobs(d.get(), events, &*result);

  // A second Tune answers from the database without measuring; force tunes again.
  const int measured = d->backend->measured_.load();
  events.clear();
  auto again = d->client->tune(request, [&](const v1::TuneProgress& p) { events.push_back(p); });
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_TRUE(again->from_database());
  EXPECT_EQ(tile_of(again->config()), optimum->config);
  // Stored: the validation record and spread come back; the finalists do not.
  EXPECT_TRUE(again->validated());
  EXPECT_EQ(again->validation_detail(), result->validation_detail());
  EXPECT_DOUBLE_EQ(again->p90_us(), result->p90_us());
  EXPECT_EQ(again->finalists_size(), 0);
  expect_small_tune_shape(*again);
  EXPECT_EQ(d->backend->measured_.load(), measured);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_TRUE(events.front().has_done());

  v1::TuneRequest forced = request;
  forced.set_force(true);
  auto retuned = d->client->tune(forced, nullptr);
  ASSERT_TRUE(retuned.ok()) << retuned.error().message;
  EXPECT_FALSE(retuned->from_database());
  EXPECT_GT(d->backend->measured_.load(), measured);

  // The CLI: live progress on stderr, the table on stdout, results listed.
  test_support::ScratchDir scratch;
  const CliRun cli = run_cli(
      scratch, {"--address", d->daemon->address(), "tune", "--dtype", "fp16", "--head-dim", "256",
                "--batch", "2", "--heads", "8", "--seq-q", "1000", "--arch", "sm_86",
                "--max-evals", space_size, "--seed", "7", "--time-budget-ms", "3600000", "--force"});
  ASSERT_EQ(cli.exit_code, 0) << cli.out << cli.err;
  const std::string best_label = std::to_string(optimum->config.block_m) + "x" +
                                 std::to_string(optimum->config.block_n) + " w" +
                                 std::to_string(optimum->config.warps) + " s" +
                                 std::to_string(optimum->config.stages);
  EXPECT_NE(cli.out.find("best config   " + best_label), std::string::npos) << cli.out;
  EXPECT_NE(cli.out.find("validated     yes: "), std::string::npos) << cli.out;
  EXPECT_NE(cli.out.find("(p10-p90 "), std::string::npos) << cli.out;
  EXPECT_NE(cli.out.find(result->key()), std::string::npos) << cli.out;
  EXPECT_NE(cli.err.find(space_size + "/" + space_size), std::string::npos) << cli.err;
  const CliRun listed_cli =
      run_cli(scratch, {"--address", d->daemon->address(), "--json", "results"});
  ASSERT_EQ(listed_cli.exit_code, 0) << listed_cli.err;
  EXPECT_NE(listed_cli.out.find("\"key\": \"" + result->key() + "\""), std::string::npos)
      << listed_cli.out;

  // Compile with use_tuned_config serves the best; an untuned bucket is NOT_FOUND.
  v1::KernelRequest tuned = request.kernel();
  tuned.set_use_tuned_config(true);
  tuned.set_omit_cubin(true);
  auto handle = d->client->compile(tuned);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(tile_of(handle->config()), optimum->config);
  EXPECT_EQ(handle->key(), result->key());
  tuned.mutable_problem()->set_seq_q(8192);
  auto untuned = d->client->compile(tuned);
  ASSERT_FALSE(untuned.ok());
  EXPECT_EQ(untuned.error().code, ErrorCode::not_found);
  EXPECT_NE(untuned.error().message.find("seq_q=8192"), std::string::npos)
      << untuned.error().message;

  // A restarted daemon (same cache folder) still has the result.
  d->start(std::make_shared<SyntheticObjectiveBackend>());
  v1::GetTuningResultRequest get;
  *get.mutable_kernel() = request.kernel();
  auto stored = d->client->get_tuning_result(get);
  ASSERT_TRUE(stored.ok()) << stored.error().message;
  EXPECT_EQ(tile_of(stored->config()), optimum->config);
  EXPECT_TRUE(stored->from_database());
  expect_small_tune_shape(*stored);
  auto listed = d->client->list_tuning_results(10, "");
  ASSERT_TRUE(listed.ok()) << listed.error().message;
  ASSERT_EQ(listed->results_size(), 1);
  EXPECT_EQ(listed->results(0).key(), stored->key());
  expect_small_tune_shape(listed->results(0));
  auto after_restart = d->client->tune(request, nullptr);
  ASSERT_TRUE(after_restart.ok());
  EXPECT_TRUE(after_restart->from_database());
  EXPECT_EQ(d->backend->measured_.load(), 0);

  get.mutable_kernel()->mutable_problem()->set_seq_q(8192);
  auto missing = d->client->get_tuning_result(get);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::not_found);
}

// The daemon compiles the whole space in the background (resource pruning)
// while the GPU measures: the first measurement comes before that pass ends,
// and the default budget is a fifth of the measurable space.
TEST(Tune, MeasuresWhileTheSpaceStillCompilesAndDefaultsToAFifthOfIt) {
  auto d = make_daemon();
  v1::TuneRequest request = large_tune();
  request.set_max_evaluations(0);  // the default budget
  const auto arch = find_arch("sm_80");
  auto space = SearchSpace::create(problem_of(request), *arch);
  ASSERT_TRUE(space.ok());

  // Kernels in the daemon's cache when the first candidate is measured,
  // counted from inside that measurement (the job waits for it), so a
  // loaded machine delivering the stream late cannot blur the count.
  std::optional<int> compiled_at_first_trial;
  d->backend->on_measure([&](int index) {
    if (index != 0) return;
    int count = 0;
    std::string token;
    do {
      auto page = d->client->list_kernels(100, token);
      if (!page.ok()) {
        count = -1;
        break;
      }
      count += page->kernels_size();
      token = page->next_page_token();
    } while (!token.empty());
    compiled_at_first_trial = count;
  });
  std::vector<v1::TuneProgress> events;
  auto result = d->client->tune(request, [&](const v1::TuneProgress& p) { events.push_back(p); });
  ASSERT_TRUE(result.ok()) << result.error().message;
  ASSERT_TRUE(compiled_at_first_trial.has_value());
  EXPECT_GE(*compiled_at_first_trial, 1);
  EXPECT_LT(*compiled_at_first_trial, static_cast<int>(space->size()))
      << "the search waited for the whole space to compile before measuring";

  // Nothing in this space spills (the small test template), so the budget
  // is a fifth of all of it, and every trial took (synthetic) GPU time.
  const auto budget = static_cast<int64_t>(default_max_evaluations(space->size()));
  EXPECT_EQ(result->evaluations(), budget);
  EXPECT_EQ(d->backend->measured_.load(), budget);
  int trials = 0;
  for (const auto& e : events) trials += e.has_trial();
  EXPECT_EQ(trials, budget);
}

TEST(Tune, ABestStoredBeforeSchemaTwoIsAnsweredAsItsConcreteKernel) {
  // A best row from before q_placement and smem_layout existed reads back
  // with automatic fields and no shape. GetTuningResult and Compile's
  // use_tuned_config must still answer concrete values, and compile the
  // kernel the rule picks (the same key as naming it explicitly).
  auto d = make_daemon();
  v1::TuneRequest request = small_tune(5000);
  const ProblemClass problem{DType::fp16, 256, false};
  const TileConfig automatic{64, 32, 4, 1};
  const TileConfig twin = resolved(automatic, problem);
  ASSERT_NE(twin.q_placement, QPlacement::automatic);
  {
    auto db = open_db(*d);
    ASSERT_NE(db, nullptr);
    BestRecord old;
    old.scope.template_id = "attention_fwd";
    old.scope.problem = problem;
    old.scope.bucket = bucket_of(RuntimeShape{2, 8, 0, 5000, 0}, QkvLayout::bshd);
    old.scope.device_name = "Synthetic Test Device";
    old.scope.arch = "sm_86";
    old.shape = RuntimeShape{0, 0, 0, 0, 0};  // what migration 2 gives older rows
    old.config = automatic;
    old.cache_key = std::string(64, 'a');
    old.median_us = 80.0;
    old.tflops = 1.0;
    old.searcher = "exhaustive";
    old.toolchain = ToolchainRecord{"13.0", std::string(64, 'f'), "580"};
    ASSERT_TRUE(db->update_best_if_better(old).ok());
  }
  v1::GetTuningResultRequest get;
  *get.mutable_kernel() = request.kernel();
  auto stored = d->client->get_tuning_result(get);
  ASSERT_TRUE(stored.ok()) << stored.error().message;
  EXPECT_EQ(tile_of(stored->config()), twin);
  EXPECT_EQ(stored->problem().batch(), 0);  // not recorded before schema 2
  EXPECT_EQ(stored->problem().seq_q(), 0);

  v1::KernelRequest tuned = request.kernel();
  tuned.set_use_tuned_config(true);
  tuned.set_omit_cubin(true);
  auto handle = d->client->compile(tuned);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(tile_of(handle->config()), twin);
  v1::KernelRequest explicit_twin = request.kernel();
  explicit_twin.set_omit_cubin(true);
  v1::TileConfig* config = explicit_twin.mutable_config();
  config->set_block_m(twin.block_m);
  config->set_block_n(twin.block_n);
  config->set_warps(twin.warps);
  config->set_stages(twin.stages);
  config->set_q_placement(twin.q_placement == QPlacement::registers ? v1::Q_PLACEMENT_REGISTERS
                                                                    : v1::Q_PLACEMENT_SHARED);
  config->set_smem_layout(twin.smem_layout == SmemLayout::swizzled ? v1::SMEM_LAYOUT_SWIZZLED
                                                                   : v1::SMEM_LAYOUT_PADDED);
  auto named = d->client->compile(explicit_twin);
  ASSERT_TRUE(named.ok()) << named.error().message;
  EXPECT_EQ(named->key(), handle->key());
  EXPECT_EQ(named->tier(), v1::CACHE_TIER_MEMORY);
  EXPECT_EQ(tile_of(named->config()), twin);
}

TEST(Tune, ClientCancelStopsTheJobAndRecordsItCancelled) {
  auto d = make_daemon();
  // The third measurement is held until the job is cancelled: the client
  // cancels after the second trial, so the job ends with at most three.
  d->backend->hold_after(2);
  auto cancel = std::make_shared<client::TuneCancel>();
  int64_t job_id = 0;
  int trials = 0;
  auto result = d->client->tune(large_tune(), [&](const v1::TuneProgress& p) {
    if (p.has_started()) job_id = p.started().job_id();
    if (p.has_trial() && ++trials == 2) cancel->cancel();
  }, cancel);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, ErrorCode::cancelled);
  ASSERT_NE(job_id, 0);
  auto db = open_db(*d);
  auto job = finished_job(*db, job_id);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->status, JobStatus::cancelled);
  EXPECT_GE(job->evaluations, 2);
  EXPECT_LE(job->evaluations, 3);
}

TEST(Tune, DeadlineStopsTheJobAndRecordsItCancelled) {
  auto d = make_daemon();
  // Every measurement is held until the job is cancelled, so the deadline
  // always falls while the job measures, however slow the machine.
  d->backend->hold_after(0);
  int64_t job_id = 0;
  auto result = d->client->tune(
      large_tune(),
      [&](const v1::TuneProgress& p) {
        if (p.has_started()) job_id = p.started().job_id();
      },
      nullptr, 3000ms);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, ErrorCode::deadline_exceeded);
  // The job is on record from its start; the daemon's only job.
  if (job_id == 0) job_id = 1;
  auto db = open_db(*d);
  auto job = finished_job(*db, job_id);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->status, JobStatus::cancelled);
  EXPECT_LE(job->evaluations, 1);
  auto none_after = db->job(job_id + 1);
  ASSERT_TRUE(none_after.ok());
  EXPECT_FALSE(none_after->has_value());
}

TEST(Tune, SecondJobOnOneGpuIsQueuedAndRunsAfterTheFirst) {
  auto d = make_daemon();
  // The first job's measurements wait until the second is queued: without
  // the gate a fast first job could end before the second arrives.
  d->backend->hold_after(0);
  std::mutex mutex;
  std::vector<std::string> order;  // "<job>:<event>" as they arrive
  auto log = [&](const char* who) {
    return [&, who](const v1::TuneProgress& p) {
      std::lock_guard lock(mutex);
      if (p.has_queued()) order.push_back(std::string(who) + ":queued" + std::to_string(p.queued().position()));
      if (p.has_started()) order.push_back(std::string(who) + ":started");
      if (p.has_done()) order.push_back(std::string(who) + ":done");
    };
  };
  Result<v1::TuningResult> first = make_error(ErrorCode::internal, "not run");
  std::thread runner([&] {
    v1::TuneRequest request = small_tune(1000);
    request.set_max_evaluations(2);
    first = d->client->tune(request, log("a"));
  });
  d->backend->wait_for_measurements(1);  // the first job holds the GPU
  // Another bucket of the same class: its kernels are cache hits, so the test stays short.
  v1::TuneRequest later_request = small_tune(5000);
  later_request.set_max_evaluations(2);
  auto on_second = log("b");
  auto second = d->client->tune(later_request, [&](const v1::TuneProgress& p) {
    on_second(p);
    if (p.has_queued()) d->backend->open_gate();
  });
  runner.join();
  ASSERT_TRUE(first.ok()) << first.error().message;
  ASSERT_TRUE(second.ok()) << second.error().message;
  std::vector<std::string> b_events;
  for (const auto& e : order)
    if (e[0] == 'b') b_events.push_back(e);
  const std::vector<std::string> expected{"b:queued1", "b:started", "b:done"};
  EXPECT_EQ(b_events, expected);
  // The second job began only once the first had finished (database times).
  auto db = open_db(*d);
  auto jobs = db->job(1);
  auto later = db->job(2);
  ASSERT_TRUE(jobs.ok() && *jobs && later.ok() && *later);
  EXPECT_EQ((*jobs)->scope.bucket.seq_q, 1024);
  EXPECT_NE((*jobs)->finished_unix_ms, 0);
  EXPECT_GE((*later)->started_unix_ms, (*jobs)->finished_unix_ms);
}

TEST(Tune, CancelledWhileQueuedLeavesTheQueueWithoutAJob) {
  auto d = make_daemon();
  // The first job (seq_q 1000) holds the GPU until it is cancelled.
  d->backend->hold_if([](int, const MeasureRequest& r) { return r.shape.seq_q == 1000; });
  auto cancel_first = std::make_shared<client::TuneCancel>();
  Result<v1::TuningResult> first = make_error(ErrorCode::internal, "not run");
  std::thread runner([&] { first = d->client->tune(large_tune(), nullptr, cancel_first); });
  d->backend->wait_for_measurements(1);

  // The second job cancels itself as soon as it is queued.
  auto cancel_second = std::make_shared<client::TuneCancel>();
  bool second_started = false;
  v1::TuneRequest other = large_tune();
  other.mutable_kernel()->mutable_problem()->set_causal(true);
  auto second = d->client->tune(other, [&](const v1::TuneProgress& p) {
    if (p.has_queued()) cancel_second->cancel();
    if (p.has_started()) second_started = true;
  }, cancel_second);
  EXPECT_FALSE(second.ok());
  EXPECT_FALSE(second_started);

  // A client-side cancel returns before the server has seen it. A third job
  // tells when it has: it is first in line only once the second has left
  // the queue. Then the first job is let go, and the third runs.
  v1::TuneRequest third_request = small_tune(5000);
  third_request.set_max_evaluations(1);
  std::vector<int> third_positions;
  auto third = d->client->tune(third_request, [&](const v1::TuneProgress& p) {
    if (!p.has_queued()) return;
    third_positions.push_back(p.queued().position());
    if (p.queued().position() == 1) cancel_first->cancel();
  });
  runner.join();
  EXPECT_FALSE(first.ok());
  ASSERT_TRUE(third.ok()) << third.error().message;
  ASSERT_FALSE(third_positions.empty());
  EXPECT_EQ(third_positions.back(), 1);

  // Only the first and the third job ever began; the second has no record.
  auto db = open_db(*d);
  auto first_job = finished_job(*db, 1);
  ASSERT_TRUE(first_job.has_value());
  EXPECT_EQ(first_job->status, JobStatus::cancelled);
  EXPECT_FALSE(first_job->scope.problem.causal);
  auto third_job = finished_job(*db, 2);
  ASSERT_TRUE(third_job.has_value());
  EXPECT_EQ(third_job->status, JobStatus::succeeded);
  EXPECT_EQ(third_job->scope.bucket.seq_q, 8192);
  auto never = db->job(3);
  ASSERT_TRUE(never.ok());
  EXPECT_FALSE(never->has_value());
}

TEST(Tune, WithoutEvaluationWorkersIsFailedPrecondition) {
  auto d = std::make_unique<TuneDaemon>();
  test_support::write_attention_templates(d->templates, test_support::kSmallAttentionTemplate);
  d->start(nullptr);
  auto result = d->client->tune(small_tune(), nullptr);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, ErrorCode::failed_precondition);
  // Bad input is still named by field.
  v1::TuneRequest bad = small_tune();
  bad.set_searcher("annealing");
  d->start(std::make_shared<SyntheticObjectiveBackend>());
  auto refused = d->client->tune(bad, nullptr);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::invalid_argument);
  EXPECT_NE(refused.error().message.find("searcher"), std::string::npos);
}

// The family's default config (what an untuned bucket is served) is among
// the first trials, so a tuned result is never slower than not tuning.
TEST(Tune, TheFamilyDefaultIsTriedFirst) {
  auto d = make_daemon();
  v1::TuneRequest request = large_tune();  // sm_80, D 64: the default 128x64w4s2 is a member
  request.set_max_evaluations(3);
  const ProblemClass problem{DType::fp16, 64, false};
  const TileConfig default_config = resolved(TileConfig{}, problem);
  std::vector<TileConfig> tried;
  auto result = d->client->tune(request, [&](const v1::TuneProgress& p) {
    if (p.has_trial()) tried.push_back(tile_of(p.trial().config()));
  });
  ASSERT_TRUE(result.ok()) << result.error().message;
  ASSERT_FALSE(tried.empty());
  EXPECT_NE(std::find(tried.begin(), tried.end(), default_config), tried.end())
      << "first trial: " << config_label(tried.front());
}

// On sm_90a both attention families answer the same problem: Compile with
// use_tuned_config serves whichever family's stored best is faster for the
// bucket, whichever family the request names, and the handle says which.
TEST(Tune, OnSm90aTheFasterFamilysBestIsServed) {
  auto d = std::make_unique<TuneDaemon>();
  test_support::write_attention_templates(d->templates, test_support::kSmallAttentionTemplate);
  for (const auto& [path, contents] : TemplateRegistry::embedded()->sources())
    if (path.rfind("hopper/", 0) == 0 || path == "common/attention_tma_params.cuh" ||
        path == "common/element_types.cuh" || path == "common/sm80_primitives.cuh")
      d->templates.write(path, contents);
  d->start(std::make_shared<SyntheticObjectiveBackend>());

  v1::KernelRequest request;
  request.set_template_id("attention_fwd");
  request.set_arch("sm_90a");
  request.set_omit_cubin(true);
  request.set_use_tuned_config(true);
  v1::Problem* problem = request.mutable_problem();
  problem->set_dtype(v1::DTYPE_FP16);
  problem->set_head_dim(64);  // the small template is slow to compile at 128
  problem->set_batch(2);
  problem->set_heads(8);
  problem->set_seq_q(2048);
  const ProblemClass problem_class{DType::fp16, 64, false};
  const TileConfig sm80_config = resolved(TileConfig{128, 64, 4, 2}, problem_class);
  const TileConfig hopper_config = sm90_family::default_config(problem_class);

  auto store = [&](const std::string& template_id, const TileConfig& config, double us) {
    auto db = open_db(*d);
    ASSERT_NE(db, nullptr);
    BestRecord best;
    best.scope.template_id = template_id;
    best.scope.problem = problem_class;
    best.scope.bucket = bucket_of(RuntimeShape{2, 8, 0, 2048, 0}, QkvLayout::bshd);
    best.scope.device_name = "Synthetic Test Device";
    best.scope.arch = "sm_90a";
    best.shape = RuntimeShape{2, 8, 0, 2048, 0};
    best.config = config;
    best.cache_key = std::string(64, 'a');
    best.median_us = us;
    best.tflops = 1.0;
    best.searcher = "exhaustive";
    best.toolchain = ToolchainRecord{"13.0", std::string(64, 'f'), "580"};
    ASSERT_TRUE(db->update_best_if_better(best, BestUpdate::force).ok());
  };
  store("attention_fwd", sm80_config, 100.0);
  store("attention_fwd_sm90", hopper_config, 60.0);

  auto handle = d->client->compile(request);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(handle->template_id(), "attention_fwd_sm90");
  EXPECT_EQ(handle->abi().abi_version(), 2u);
  EXPECT_EQ(handle->config().block_n(), hopper_config.block_n);
  EXPECT_TRUE(handle->config().pingpong());

  // The sm80 family becomes the faster: it is served, asked by either name.
  store("attention_fwd", sm80_config, 50.0);
  for (const char* id : {"attention_fwd", "attention_fwd_sm90"}) {
    request.set_template_id(id);
    auto again = d->client->compile(request);
    ASSERT_TRUE(again.ok()) << again.error().message;
    EXPECT_EQ(again->template_id(), "attention_fwd") << id;
    EXPECT_EQ(again->abi().abi_version(), 1u);
    EXPECT_EQ(again->config().block_n(), 64);
  }
}

// On sm_90a a Tune that names no family searches both attention families in
// one job (a started event, trials and a best per family), re-times their
// bests side by side in one call, keeps the Hopper family unless the sm80
// family is faster by more than the spread, and stores the re-timed bests so
// that GetTuningResult (no family) and Compile use_tuned_config serve the
// same choice; a second Tune answers from the database with both families.
TEST(Tune, OnSm90aANamelessTuneSearchesBothFamiliesAndServesTheChosenOne) {
  auto d = std::make_unique<TuneDaemon>();
  test_support::write_attention_templates(d->templates, test_support::kSmallAttentionTemplate);
  for (const auto& [path, contents] : TemplateRegistry::embedded()->sources())
    if (path.rfind("hopper/", 0) == 0 || path == "common/attention_tma_params.cuh" ||
        path == "common/element_types.cuh" || path == "common/sm80_primitives.cuh")
      d->templates.write(path, contents);
  auto backend = std::make_shared<SyntheticObjectiveBackend>();
  // The Hopper family's configs leave q_placement to the family.
  std::atomic<double> sm80_us{100.0};
  backend->objective_with([&sm80_us](const TileConfig& c) {
    TrialOutcome outcome;
    outcome.ok = true;
    const bool hopper = c.q_placement == QPlacement::automatic;
    outcome.time_us = (hopper ? 50.0 : sm80_us.load()) + 0.01 * c.block_n + 0.001 * c.stages;
    return outcome;
  });
  d->start(backend);

  v1::TuneRequest request;
  v1::KernelRequest* kernel = request.mutable_kernel();
  kernel->set_arch("sm_90a");  // no template_id: the daemon's choice
  v1::Problem* problem = kernel->mutable_problem();
  problem->set_dtype(v1::DTYPE_FP16);
  problem->set_head_dim(64);
  problem->set_batch(2);
  problem->set_heads(8);
  problem->set_seq_q(2048);
  request.set_max_evaluations(4);
  request.set_searcher("random");
  std::vector<std::string> started, trial_families;
  auto on_progress = [&](const v1::TuneProgress& p) {
    if (p.has_started()) started.push_back(p.started().template_id());
    if (p.has_trial()) trial_families.push_back(p.trial().template_id());
  };
  auto result = d->client->tune(request, on_progress);
  ASSERT_TRUE(result.ok()) << result.error().message;
  EXPECT_EQ(started, (std::vector<std::string>{"attention_fwd_sm90", "attention_fwd"}));
  ASSERT_FALSE(trial_families.empty());
  EXPECT_EQ(trial_families.front(), "attention_fwd_sm90");
  EXPECT_EQ(trial_families.back(), "attention_fwd");
  EXPECT_EQ(result->template_id(), "attention_fwd_sm90");
  EXPECT_FALSE(result->from_database());
  ASSERT_EQ(result->families_size(), 2);
  EXPECT_EQ(result->families(0).template_id(), "attention_fwd_sm90");
  EXPECT_EQ(result->families(1).template_id(), "attention_fwd");
  for (const auto& family : result->families()) {
    EXPECT_TRUE(family.tuned()) << family.template_id();
    EXPECT_TRUE(family.error().empty()) << family.error();
    EXPECT_GT(family.median_us(), 0.0) << family.template_id();
  }
  EXPECT_LT(result->families(0).median_us(), 60.0);
  EXPECT_GT(result->families(1).median_us(), 100.0);
  // The measurements were shared out, not doubled: 4 in all.
  EXPECT_EQ(result->evaluations(), 4);
  // The families' bests were re-timed together in one call, after each
  // family's own finalists.
  const auto calls = backend->many_calls();
  ASSERT_FALSE(calls.empty());
  EXPECT_EQ(calls.back(), (std::pair<size_t, int>{2, kRetimeRounds}));

  v1::GetTuningResultRequest get;
  *get.mutable_kernel() = request.kernel();
  auto served = d->client->get_tuning_result(get);
  ASSERT_TRUE(served.ok()) << served.error().message;
  EXPECT_EQ(served->template_id(), "attention_fwd_sm90");
  get.mutable_kernel()->set_template_id("attention_fwd");
  auto sm80 = d->client->get_tuning_result(get);
  ASSERT_TRUE(sm80.ok()) << sm80.error().message;
  EXPECT_EQ(sm80->template_id(), "attention_fwd");
  // Its stored time is the side-by-side one.
  EXPECT_DOUBLE_EQ(sm80->median_us(), result->families(1).median_us());

  // The sm80 family becomes faster by far more than the spread: a forced
  // Tune serves it, and so do GetTuningResult and Compile use_tuned_config.
  sm80_us = 20.0;
  request.set_force(true);
  started.clear();
  result = d->client->tune(request, on_progress);
  ASSERT_TRUE(result.ok()) << result.error().message;
  EXPECT_EQ(result->template_id(), "attention_fwd");
  ASSERT_EQ(result->families_size(), 2);
  EXPECT_EQ(result->families(0).template_id(), "attention_fwd");
  EXPECT_LT(result->families(0).median_us(), result->families(1).median_us());
  get.mutable_kernel()->clear_template_id();
  served = d->client->get_tuning_result(get);
  ASSERT_TRUE(served.ok()) << served.error().message;
  EXPECT_EQ(served->template_id(), "attention_fwd");
  v1::KernelRequest compile = request.kernel();
  compile.set_use_tuned_config(true);
  compile.set_omit_cubin(true);
  auto handle = d->client->compile(compile);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(handle->template_id(), "attention_fwd");
  EXPECT_EQ(handle->abi().abi_version(), 1u);

  // Both families stored: the next Tune answers from the database, with both.
  request.set_force(false);
  started.clear();
  result = d->client->tune(request, on_progress);
  ASSERT_TRUE(result.ok()) << result.error().message;
  EXPECT_TRUE(result->from_database());
  EXPECT_TRUE(started.empty());
  EXPECT_EQ(result->template_id(), "attention_fwd");
  ASSERT_EQ(result->families_size(), 2);
  EXPECT_FALSE(result->families(0).tuned());

  // Naming a family tunes that family alone.
  kernel->set_template_id("attention_fwd_sm90");
  request.set_force(true);
  started.clear();
  result = d->client->tune(request, on_progress);
  ASSERT_TRUE(result.ok()) << result.error().message;
  EXPECT_EQ(started, (std::vector<std::string>{"attention_fwd_sm90"}));
  EXPECT_EQ(result->families_size(), 0);
}

// The decode family is tuned like the others: real NVRTC compiles of the
// split (and combine) kernels, only configs that fit the shape's packed rows,
// the split count among the searched fields; the best is stored for the
// decode bucket and Compile use_tuned_config serves it as a decode handle.
TEST(Tune, TheDecodeFamilyIsTunedAndItsBestServed) {
  auto d = std::make_unique<TuneDaemon>();
  write_decode_templates(*d);
  auto backend = std::make_shared<SyntheticObjectiveBackend>();
  // Faster with more splits up to 32, with block_n 64, and fused.
  auto decode_time = [](const TileConfig& c) {
    const int splits = c.splits == 0 ? 4 : c.splits;
    return 20.0 + std::abs(std::log2(splits / 32.0)) + (c.block_n == 64 ? 0.0 : 1.0) +
           (c.fused_combine ? 0.0 : 0.5) + 0.1 * c.stages + 0.01 * c.warps;
  };
  backend->objective_with([decode_time](const TileConfig& c) {
    TrialOutcome outcome;
    outcome.ok = true;
    outcome.time_us = decode_time(c);
    return outcome;
  });
  d->start(backend);

  v1::TuneRequest request;
  v1::KernelRequest* kernel = request.mutable_kernel();
  kernel->set_template_id("attention_decode");
  kernel->set_arch("sm_90a");
  kernel->set_accepts_multi_kernel(true);
  v1::Problem* problem = kernel->mutable_problem();
  problem->set_dtype(v1::DTYPE_BF16);
  problem->set_head_dim(64);
  problem->set_batch(4);
  problem->set_heads(32);
  problem->set_kv_heads(8);  // 4 query heads a kv head: 4 packed rows
  problem->set_seq_q(1);
  problem->set_seq_k(4096);
  request.set_max_evaluations(6);
  request.set_seed(3);
  request.set_time_budget_ms(3'600'000);

  std::vector<TileConfig> tried;
  int space_size = 0;
  auto result = d->client->tune(request, [&](const v1::TuneProgress& p) {
    if (p.has_started()) space_size = p.started().space_size();
    if (p.has_trial()) {
      TileConfig c = tile_of(p.trial().config());
      c.fused_combine = p.trial().config().fused_combine();
      c.splits = p.trial().config().splits();
      tried.push_back(c);
    }
  });
  ASSERT_TRUE(result.ok()) << result.error().message;
  EXPECT_EQ(result->template_id(), "attention_decode");
  EXPECT_GT(space_size, 6);
  ASSERT_FALSE(tried.empty());
  // 4 packed rows: the 16-row tile holds them; larger tiles are left out.
  for (const TileConfig& c : tried) EXPECT_EQ(c.block_m, 16) << config_label(c);
  // The family's seeds (the lab's winners) are among the first trials.
  const ProblemClass decode_class{DType::bf16, 64, false};
  RuntimeShape decode_shape;
  decode_shape.batch = 4;
  decode_shape.heads = 32;
  decode_shape.kv_heads = 8;
  decode_shape.seq_q = 1;
  decode_shape.seq_k = 4096;
  const auto seeds =
      decode_family::catalog::search_seeds(decode_class, decode_shape, *find_arch("sm_90a"));
  ASSERT_EQ(seeds.size(), 5u);
  for (const TileConfig& seed : seeds)
    EXPECT_NE(std::find(tried.begin(), tried.end(), seed), tried.end())
        << config_label(seed) << " (a seed) was not tried";
  // The best is the fastest trial.
  EXPECT_EQ(result->evaluations(), static_cast<int64_t>(tried.size()));
  double fastest = 1e9;
  for (const TileConfig& c : tried) fastest = std::min(fastest, decode_time(c));
  EXPECT_NEAR(result->median_us(), fastest, 1e-9);
  EXPECT_NE(result->bucket().find("seq_q=1;"), std::string::npos) << result->bucket();

  // Compile use_tuned_config answers the tuned decode kernel, with its steps.
  v1::KernelRequest compile = *kernel;
  compile.set_use_tuned_config(true);
  compile.set_omit_cubin(true);
  auto handle = d->client->compile(compile);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(handle->template_id(), "attention_decode");
  EXPECT_EQ(handle->abi().abi_version(), 3u);
  EXPECT_EQ(handle->config().block_n(), result->config().block_n());
  EXPECT_EQ(handle->config().splits(), result->config().splits());
  EXPECT_EQ(handle->config().fused_combine(), result->config().fused_combine());
  EXPECT_EQ(handle->key(), result->key());
  ASSERT_GE(handle->steps_size(), 1);
  EXPECT_EQ(handle->steps(0).role(), "split");
}

// One bucket holds decode shapes of up to twice as many packed rows as the
// one it was tuned on (GQA ratio and seq_q are rounded up to powers of two):
// its best is not served to a shape it cannot run. GetTuningResult and
// Compile use_tuned_config say NOT_FOUND (the client then takes the
// family's default for its shape), and a Tune of that shape tunes again and
// stores a best that runs both.
TEST(Tune, ADecodeBestIsNotServedToAShapeOfMoreRowsInItsBucket) {
  auto d = std::make_unique<TuneDaemon>();
  write_decode_templates(*d);
  auto backend = std::make_shared<SyntheticObjectiveBackend>();
  backend->objective_with([](const TileConfig& c) {
    TrialOutcome outcome;
    outcome.ok = true;
    outcome.time_us = 20.0 + 0.1 * c.stages + 0.01 * c.warps + (c.block_n == 64 ? 0.0 : 1.0);
    return outcome;
  });
  d->start(backend);

  auto decode_request = [](int heads, int seq_q) {
    v1::KernelRequest kernel;
    kernel.set_template_id("attention_decode");
    kernel.set_arch("sm_90a");
    kernel.set_accepts_multi_kernel(true);
    v1::Problem* problem = kernel.mutable_problem();
    problem->set_dtype(v1::DTYPE_FP16);
    problem->set_head_dim(128);
    problem->set_batch(4);
    problem->set_heads(heads);
    problem->set_kv_heads(8);
    problem->set_seq_q(seq_q);
    problem->set_seq_k(4096);
    return kernel;
  };
  // 40 heads on 8: 5 a kv head x 3 rows = 15 packed rows (a 16-row tile);
  // 64 heads on 8 x 4 rows = 32. Both: seq_q 4, gqa 8, batch x heads 256.
  const v1::KernelRequest sixteen = decode_request(40, 3);
  const v1::KernelRequest thirty_two = decode_request(64, 4);
  v1::TuneRequest tune;
  *tune.mutable_kernel() = sixteen;
  tune.set_max_evaluations(3);
  tune.set_time_budget_ms(3'600'000);
  auto first = d->client->tune(tune, nullptr);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_EQ(first->config().block_m(), 16);
  const std::string bucket = first->bucket();

  v1::GetTuningResultRequest lookup;
  *lookup.mutable_kernel() = thirty_two;
  auto result = d->client->get_tuning_result(lookup);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, ErrorCode::not_found);
  EXPECT_NE(result.error().message.find(bucket), std::string::npos) << result.error().message;
  EXPECT_NE(result.error().message.find("32 rows, over the kernel's 16 packed rows"),
            std::string::npos)
      << result.error().message;
  v1::KernelRequest compile = thirty_two;
  compile.set_use_tuned_config(true);
  compile.set_omit_cubin(true);
  auto handle = d->client->compile(compile);
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.error().code, ErrorCode::not_found);
  EXPECT_NE(handle.error().message.find("does not fit this shape"), std::string::npos)
      << handle.error().message;
  // The shape it was tuned on is still served.
  *lookup.mutable_kernel() = sixteen;
  ASSERT_TRUE(d->client->get_tuning_result(lookup).ok());

  // A Tune of the larger shape does not answer from the database: it tunes,
  // and its best (32 packed rows) replaces the stored one for both shapes.
  *tune.mutable_kernel() = thirty_two;
  auto second = d->client->tune(tune, nullptr);
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_FALSE(second->from_database());
  EXPECT_EQ(second->bucket(), bucket);
  EXPECT_EQ(second->config().block_m(), 32);
  handle = d->client->compile(compile);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(handle->config().block_m(), 32);
  compile = sixteen;
  compile.set_use_tuned_config(true);
  compile.set_omit_cubin(true);
  handle = d->client->compile(compile);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(handle->config().block_m(), 32);
}

// The layout and the GQA ratio are part of the tuning key: candidates are
// measured in the request's layout and with its kv_heads, the result says
// what it was tuned for, and a request in another layout or with another
// ratio is never served it as its own.
TEST(Tune, TheRequestsLayoutAndGqaRatioAreTunedAndKeyTheResult) {
  auto d = make_daemon();
  v1::TuneRequest request = small_tune();
  request.set_max_evaluations(2);
  v1::Problem* problem = request.mutable_kernel()->mutable_problem();
  problem->set_layout(v1::LAYOUT_BHSD);
  problem->set_kv_heads(2);  // 8 query heads on 2 K/V heads: ratio 4
  auto result = d->client->tune(request, nullptr);
  ASSERT_TRUE(result.ok()) << result.error().message;
  EXPECT_EQ(result->bucket(), "seq_q=1024;seq_k=1024;batch_heads=16;gqa=4;layout=bhsd;");
  EXPECT_EQ(result->problem().layout(), v1::LAYOUT_BHSD);
  EXPECT_EQ(result->problem().kv_heads(), 2);
  const auto shapes = d->backend->shapes();
  ASSERT_EQ(shapes.size(), 2u);
  for (const auto& [shape, layout] : shapes) {
    EXPECT_EQ(layout, QkvLayout::bhsd);
    EXPECT_EQ(shape.kv_heads, 2);
    EXPECT_EQ(shape.heads, 8);
  }

  // Served for its own key.
  v1::KernelRequest tuned = request.kernel();
  tuned.set_use_tuned_config(true);
  tuned.set_omit_cubin(true);
  auto handle = d->client->compile(tuned);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(handle->key(), result->key());
  v1::GetTuningResultRequest get;
  *get.mutable_kernel() = request.kernel();
  auto stored = d->client->get_tuning_result(get);
  ASSERT_TRUE(stored.ok()) << stored.error().message;
  EXPECT_EQ(stored->problem().layout(), v1::LAYOUT_BHSD);
  EXPECT_EQ(stored->bucket(), result->bucket());

  // The same shape in (B,S,H,D), or as MHA, is another key: not tuned.
  v1::KernelRequest bshd = tuned;
  bshd.mutable_problem()->set_layout(v1::LAYOUT_BSHD);
  v1::KernelRequest mha = tuned;
  mha.mutable_problem()->set_kv_heads(0);
  for (const auto& other : {bshd, mha}) {
    auto refused = d->client->compile(other);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.error().code, ErrorCode::not_found) << refused.error().message;
    v1::GetTuningResultRequest other_get;
    *other_get.mutable_kernel() = other;
    auto none = d->client->get_tuning_result(other_get);
    ASSERT_FALSE(none.ok());
    EXPECT_EQ(none.error().code, ErrorCode::not_found);
  }
  auto bshd_refused = d->client->compile(bshd);
  ASSERT_FALSE(bshd_refused.ok());
  EXPECT_NE(bshd_refused.error().message.find("layout=bshd"), std::string::npos)
      << bshd_refused.error().message;
}

// A damaged row never takes the list down with it, and Tune replaces it.
TEST(Tune, ARowThatDoesNotReadIsLeftOutOfTheListAndTuneReplacesIt) {
  auto d = make_daemon();
  v1::TuneRequest request = small_tune();
  request.set_max_evaluations(1);
  ASSERT_TRUE(d->client->tune(request, nullptr).ok());
  v1::TuneRequest other = small_tune(5000);
  other.set_max_evaluations(1);
  ASSERT_TRUE(d->client->tune(other, nullptr).ok());
  {
    // Written by some other (future or broken) tool.
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open((d->cache.path() / "tuning.db").c_str(), &raw), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(raw, "UPDATE best SET smem_layout = 'diagonal' WHERE seq_q_bucket = 1024",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(raw);
  }
  auto listed = d->client->list_tuning_results(10, "");
  ASSERT_TRUE(listed.ok()) << listed.error().message;
  ASSERT_EQ(listed->results_size(), 1);
  EXPECT_EQ(listed->results(0).problem().seq_q(), 5000);

  // Its own key is an error naming the row, not a guess and not NOT_FOUND.
  v1::GetTuningResultRequest get;
  *get.mutable_kernel() = request.kernel();
  auto damaged = d->client->get_tuning_result(get);
  ASSERT_FALSE(damaged.ok());
  EXPECT_EQ(damaged.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(damaged.error().message.find("diagonal"), std::string::npos)
      << damaged.error().message;
  // Tune (not forced) tunes the bucket again and stores over the damaged row.
  auto retuned = d->client->tune(request, nullptr);
  ASSERT_TRUE(retuned.ok()) << retuned.error().message;
  EXPECT_FALSE(retuned->from_database());
  auto repaired = d->client->get_tuning_result(get);
  ASSERT_TRUE(repaired.ok()) << repaired.error().message;
  EXPECT_EQ(repaired->key(), retuned->key());
}

// The winner is the re-timed finalists' choice, and it passes the whole
// validation matrix before it is stored: one that fails is recorded wrong
// with the reason and the next finalist is validated instead.
TEST(Tune, AWinnerThatFailsTheFullValidationIsRecordedWrongAndTheNextIsStored) {
  auto d = make_daemon();
  v1::TuneRequest request = small_tune();
  request.set_searcher("exhaustive");
  const auto arch = find_arch("sm_86");
  auto space = SearchSpace::create(problem_of(request), *arch);
  ASSERT_TRUE(space.ok());
  request.set_max_evaluations(static_cast<int>(space->size()));
  // The space's correct configs by time: the optimum fails the full matrix.
  std::vector<std::pair<double, TileConfig>> ranked;
  for (const auto& c : space->configs()) {
    const TrialOutcome o = test::test_objective(c);
    if (o.ok && !(c == test::kTestObjectiveTrap)) ranked.push_back({o.time_us, c});
  }
  std::sort(ranked.begin(), ranked.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  ASSERT_GE(ranked.size(), 3u);
  d->backend->fail_full_validation({ranked[0].second});

  int64_t job_id = 0;
  auto result = d->client->tune(request, [&](const v1::TuneProgress& p) {
    if (p.has_started()) job_id = p.started().job_id();
  });
  ASSERT_TRUE(result.ok()) << result.error().message;
  EXPECT_EQ(tile_of(result->config()), ranked[1].second);
  EXPECT_DOUBLE_EQ(result->median_us(), ranked[1].first);
  // The finalists were re-timed (3, or 4 with the family default), 3 rounds each.
  EXPECT_GE(d->backend->retimed_.load(), 9);
  const auto validated = d->backend->full_validated();
  ASSERT_EQ(validated.size(), 2u);
  EXPECT_EQ(validated[0], ranked[0].second);
  EXPECT_EQ(validated[1], ranked[1].second);

  auto db = open_db(*d);
  ASSERT_NE(db, nullptr);
  auto job = finished_job(*db, job_id);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->status, JobStatus::succeeded);
  auto trials = db->trials_for_job(job_id);
  ASSERT_TRUE(trials.ok());
  bool optimum_marked = false;
  for (const auto& t : *trials) {
    if (t.config == ranked[0].second) {
      EXPECT_EQ(t.status, TrialStatus::wrong);
      EXPECT_NE(t.failure_reason.find("winner validation: row 999"), std::string::npos)
          << t.failure_reason;
      optimum_marked = true;
    }
    if (t.id == job->best_trial_id) EXPECT_EQ(t.config, ranked[1].second);
  }
  EXPECT_TRUE(optimum_marked);
  TuningScope scope;
  scope.problem = problem_of(request);
  scope.problem.dtype = DType::fp16;
  scope.bucket = bucket_of(RuntimeShape{2, 8, 0, 1000, 0}, QkvLayout::bshd);
  scope.device_name = "Synthetic Test Device";
  scope.arch = "sm_86";
  auto best = db->best_for(scope);
  ASSERT_TRUE(best.ok() && best->has_value()) << (best.ok() ? "none" : best.error().message);
  EXPECT_EQ((*best)->config, ranked[1].second);
  EXPECT_TRUE((*best)->validated);
  EXPECT_NE((*best)->validation_detail.find("100 determinism runs"), std::string::npos);

  // When every finalist fails, nothing is stored and the job says why.
  d->backend->fail_full_validation(space->configs());
  v1::TuneRequest forced = request;
  forced.set_force(true);
  auto refused = d->client->tune(forced, nullptr);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(refused.error().message.find("full validation"), std::string::npos)
      << refused.error().message;
  auto kept = db->best_for(scope);
  ASSERT_TRUE(kept.ok() && kept->has_value());
  EXPECT_EQ((*kept)->config, ranked[1].second);  // the earlier, validated best stays
}

// A challenger displaces the incumbent (the family default) only when it is
// faster by more than the measured spread in the interleaved re-timing.
TEST(Tune, AWinInsideTheSpreadIsNotAWin) {
  auto d = make_daemon();
  v1::TuneRequest request = large_tune();  // sm_80 D64: the default is a space member
  request.set_max_evaluations(6);
  const ProblemClass problem{DType::fp16, 64, false};
  const TileConfig default_config = resolved(TileConfig{}, problem);
  using Times = SyntheticObjectiveBackend::Times;
  // Every other finalist 5 us faster, the spread 20 us: the default stays.
  d->backend->retime_with([&](const TileConfig& c) -> std::optional<Times> {
    if (c == default_config) return Times{100.0, 90.0, 110.0};
    return Times{95.0, 85.0, 105.0};
  });
  auto kept = d->client->tune(request, nullptr);
  ASSERT_TRUE(kept.ok()) << kept.error().message;
  EXPECT_EQ(tile_of(kept->config()), default_config);
  EXPECT_DOUBLE_EQ(kept->median_us(), 100.0);
  // The runner-up is 5 us faster, inside the spread: a negative margin.
  EXPECT_DOUBLE_EQ(kept->runner_up_margin_us(), -5.0);

  // Faster by more than the spread: the fastest challenger wins, at its
  // re-timed median.
  d->backend->retime_with([&](const TileConfig& c) -> std::optional<Times> {
    if (c == default_config) return Times{100.0, 98.0, 102.0};
    const double t = test::test_objective(c).time_us;  // distinct per config
    return Times{50.0 + t / 1000.0, 49.0, 52.0};
  });
  v1::TuneRequest forced = request;
  forced.set_force(true);
  auto won = d->client->tune(forced, nullptr);
  ASSERT_TRUE(won.ok()) << won.error().message;
  EXPECT_NE(tile_of(won->config()), default_config);
  EXPECT_LT(won->median_us(), 60.0);
  EXPECT_GT(won->runner_up_margin_us(), 0.0);
}

// The finalists are re-timed in one measure_many call (one worker call on
// a GPU), kRetimeRounds rounds interleaved inside it, and the result carries
// each finalist's re-timed median and spread.
TEST(Tune, FinalistsAreRetimedTogetherInOneCall) {
  auto d = make_daemon();
  v1::TuneRequest request = small_tune();
  request.set_searcher("exhaustive");
  const auto arch = find_arch("sm_86");
  auto space = SearchSpace::create(problem_of(request), *arch);
  ASSERT_TRUE(space.ok());
  request.set_max_evaluations(static_cast<int>(space->size()));
  using Times = SyntheticObjectiveBackend::Times;
  d->backend->retime_with([](const TileConfig& c) -> std::optional<Times> {
    const double t = test::test_objective(c).time_us;
    return Times{t, t * 0.99, t * 1.02};
  });
  auto result = d->client->tune(request, nullptr);
  ASSERT_TRUE(result.ok()) << result.error().message;

  const auto calls = d->backend->many_calls();
  ASSERT_EQ(calls.size(), 1u) << "one call for all finalists";
  EXPECT_GE(calls[0].first, kFinalists);  // 3, or 4 with the family default
  EXPECT_LE(calls[0].first, kFinalists + 1);
  EXPECT_EQ(calls[0].second, kRetimeRounds);
  EXPECT_EQ(d->backend->retimed_one_by_one_.load(), 0);
  EXPECT_EQ(d->backend->retimed_.load(), static_cast<int>(calls[0].first) * kRetimeRounds);

  ASSERT_EQ(static_cast<size_t>(result->finalists_size()), calls[0].first);
  for (const auto& f : result->finalists()) {
    const double t = test::test_objective(tile_of(f.config())).time_us;
    EXPECT_DOUBLE_EQ(f.median_us(), t);
    EXPECT_DOUBLE_EQ(f.p10_us(), t * 0.99);
    EXPECT_DOUBLE_EQ(f.p90_us(), t * 1.02);
  }
  EXPECT_DOUBLE_EQ(result->finalists(0).median_us(), result->median_us());
  ASSERT_GE(result->finalists_size(), 2);
  EXPECT_DOUBLE_EQ(result->runner_up_margin_us(),
                   result->finalists(1).median_us() - result->finalists(0).median_us());
  EXPECT_NE(result->runner_up_margin_us(), 0.0);
}

// When the one call fails (a finalist's kernel faulted and took the worker
// with it), the job times the finalists one call each, so the fault costs
// only its own kernel and a winner is still chosen among the rest.
TEST(Tune, AFailedRetimingCallFallsBackToOneCallPerFinalist) {
  auto d = make_daemon();
  v1::TuneRequest request = small_tune();
  request.set_searcher("exhaustive");
  const auto arch = find_arch("sm_86");
  auto space = SearchSpace::create(problem_of(request), *arch);
  ASSERT_TRUE(space.ok());
  request.set_max_evaluations(static_cast<int>(space->size()));
  d->backend->fail_measure_many(true);
  auto result = d->client->tune(request, nullptr);
  ASSERT_TRUE(result.ok()) << result.error().message;
  const auto calls = d->backend->many_calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(d->backend->retimed_one_by_one_.load(),
            static_cast<int>(calls[0].first) * kRetimeRounds);
  EXPECT_EQ(static_cast<size_t>(result->finalists_size()), calls[0].first);
  const auto optimum = test::test_objective_optimum(*space);
  ASSERT_TRUE(optimum.has_value());
  EXPECT_EQ(tile_of(result->config()), optimum->config);
}

}  // namespace
}  // namespace flashcore

