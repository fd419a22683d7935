// The Tune RPC on a GPU, through the client library, with the real
// flashcore_worker behind the daemon: a candidate that faults ends its
// worker, is recorded as a failed trial naming the exit, and neither the
// search nor the daemon stops. The candidates are the REAL attention kernel
// from a scratch copy of the templates in which a TEST-ONLY fault is
// inserted for a few tile configs. Without a GPU (or worker) the test skips
// with the daemon's reason, after checking what needs no GPU: the fault
// insertion point still exists and the first proposals mix faulting and
// healthy configs.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "flashcore/client.hpp"
#include "rpc/translate.hpp"
#include "service/kernel_handle.hpp"
#include "rpc_test_support.hpp"
#include "tuning/search_space.hpp"
#include "family/tile_config.hpp"
#include "tuning/tuning_db.hpp"
#include "tuning/tuning_job.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;
using namespace std::chrono_literals;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Which configs the inserted code makes fault: the C++ twin of its
// `if constexpr` below (QInRegisters is q_placement == registers, as
// name_expression() spells the template arguments).
bool faults(const TileConfig& config) {
  return config.block_n == 32 && config.stages == 1 && config.q_placement == QPlacement::registers;
}

constexpr const char* kFaultMarker = "TEST-ONLY FAULT";
const std::string kInsertedFault = std::string(R"(
  // )") + kFaultMarker + R"( (tests/rpc/test_tune_gpu.cpp): inserted into a scratch
  // copy of this template, never into kernel_templates/. The selected configs
  // store 1 TiB past the output and trap, so their launch faults and the
  // evaluation worker loses its context.
  if constexpr (BlockN == 32 && Stages == 1 && QInRegisters) {
    volatile unsigned short* far = static_cast<unsigned short*>(p.o) + (1ll << 40) + threadIdx.x;
    *far = 1;
    __trap();
  }
)";

// The embedded (real) template sources with kInsertedFault right after the
// attention kernel's opening brace. Fails the test when that brace cannot be
// found, so a refactor of the template cannot quietly disable the fault.
void write_faulting_real_templates(const test_support::ScratchDir& dir) {
  const auto& sources = TemplateRegistry::embedded()->sources();
  const auto attention = sources.find("attention/attention_fwd.cuh");
  ASSERT_NE(attention, sources.end()) << "embedded templates lack attention/attention_fwd.cuh";
  std::string source = attention->second;

  const std::string signature = "attention_fwd(const __grid_constant__ AttentionParams p)";
  const size_t at = source.find(signature);
  ASSERT_NE(at, std::string::npos)
      << "the kernel signature '" << signature << "' is not in attention_fwd.cuh: update this test";
  ASSERT_EQ(source.find(signature, at + 1), std::string::npos) << "the kernel is defined twice";
  size_t brace = at + signature.size();
  while (brace < source.size() && (source[brace] == ' ' || source[brace] == '\n')) ++brace;
  ASSERT_TRUE(brace < source.size() && source[brace] == '{')
      << "no opening brace right after the kernel signature: update this test";
  for (const char* parameter : {"int BlockN", "int Stages", "bool QInRegisters"})
    ASSERT_TRUE(contains(source.substr(0, at), parameter))
        << "the kernel no longer has template parameter '" << parameter << "': update this test";
  source.insert(brace + 1, kInsertedFault);

  for (const auto& [relative, contents] : sources)
    dir.write(relative, relative == attention->first ? source : contents);
  const std::string written = test_support::read_file(dir / attention->first);
  ASSERT_EQ(written, source);
  ASSERT_TRUE(contains(written, kFaultMarker));
}


TileConfig config_of(const v1::TileConfig& config) {
  auto parsed = rpc::parse_config(config);
  EXPECT_TRUE(parsed.ok()) << parsed.error().message;
  return parsed.ok() ? *parsed : TileConfig{};
}

// The job thread records the job's end after the call's last message.
std::optional<JobRecord> finished_job(TuningDb& db, int64_t job_id) {
  for (int i = 0; i < 400; ++i) {
    auto job = db.job(job_id);
    if (job.ok() && *job && (*job)->status != JobStatus::running) return **job;
    std::this_thread::sleep_for(25ms);
  }
  return std::nullopt;
}

TEST(TuneGpuTest, SM80_FaultingCandidatesFailWhileTheSearchAndTheDaemonGoOn) {
  test_support::ScratchDir templates, cache;
  ASSERT_NO_FATAL_FAILURE(write_faulting_real_templates(templates));
  DaemonConfig config = loopback_config(cache.path());
  config.templates_dir = templates.path();
  config.compile_threads = 4;  // the tuning job compiles 4 candidates ahead on one GPU
  config.evaluation_timeout = 30000ms;  // a fault that hung instead would not stall for 2 min
  WorkerDaemon served;
  ASSERT_NO_FATAL_FAILURE(start_worker_daemon(config, served));
  client::Client& client = *served.client;

  // The exhaustive searcher proposes the space in order: which of the first
  // kEvaluations fault follows from the space, not from a list here.
  constexpr int kEvaluations = 6;
  const v1::TuneRequest request = gpu_tune_request(kEvaluations);
  const auto arch = find_arch(served.info.default_arch());
  ASSERT_TRUE(arch.has_value()) << served.info.default_arch();
  ProblemClass problem;
  problem.dtype = DType::fp16;
  problem.head_dim = 64;
  auto space = SearchSpace::create(problem, *arch);
  ASSERT_TRUE(space.ok()) << space.error().message;
  ASSERT_GE(space->size(), static_cast<size_t>(kEvaluations));
  int faulting = 0;
  bool healthy_after_fault = false;
  for (int i = 0; i < kEvaluations; ++i) {
    if (faults(space->at(i))) ++faulting;
    else healthy_after_fault = healthy_after_fault || faulting > 0;
  }
  ASSERT_GE(faulting, 1) << "no faulting config among the first proposals: change faults()";
  ASSERT_LT(faulting, kEvaluations) << "no healthy config among the first proposals";
  // A healthy trial after a faulting one is measured by a restarted worker.
  ASSERT_TRUE(healthy_after_fault) << "no healthy config after a faulting one";

  if (!served.skip.empty()) GTEST_SKIP() << served.skip;

  std::vector<v1::TuneProgress> events;
  const auto began = std::chrono::steady_clock::now();
  auto result = client.tune(request, [&](const v1::TuneProgress& p) { events.push_back(p); },
                            nullptr, std::chrono::minutes(5));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  ASSERT_TRUE(result.ok()) << result.error().message << "\n" << result.error().detail;
  RecordProperty("tune_seconds", std::to_string(seconds));

  // The streamed events: started, one trial per proposal in space order, done.
  std::vector<v1::TuneTrial> trials;
  std::optional<v1::TuneStarted> started;
  std::optional<v1::TuneBest> last_best;
  for (const auto& event : events) {
    if (event.has_started()) started = event.started();
    if (event.has_trial()) trials.push_back(event.trial());
    if (event.has_best()) last_best = event.best();
  }
  ASSERT_TRUE(started.has_value());
  // The job prunes configs that spill or fail to compile without measuring
  // them; the first proposals here are not among them (checked below
  // against the job's skipped trials), so the order is the space's.
  EXPECT_LE(started->space_size(), static_cast<int32_t>(space->size()));
  EXPECT_GE(started->space_size(), kEvaluations);
  EXPECT_EQ(started->max_evaluations(), kEvaluations);
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(events.back().has_done());
  ASSERT_EQ(trials.size(), static_cast<size_t>(kEvaluations));

  std::optional<double> fastest_ok;
  std::vector<std::pair<double, TileConfig>> ok_trials;  // (median, config)
  for (int i = 0; i < kEvaluations; ++i) {
    const v1::TuneTrial& trial = trials[i];
    const TileConfig expected = space->at(i);
    SCOPED_TRACE(config_label(expected));
    EXPECT_EQ(config_of(trial.config()), expected) << "proposal " << i << " is out of space order";
    EXPECT_EQ(trial.evaluations(), i + 1);
    if (faults(expected)) {
      EXPECT_EQ(trial.status(), "failed") << trial.failure();
      EXPECT_TRUE(contains(trial.failure(), "worker for GPU")) << trial.failure();
      EXPECT_TRUE(contains(trial.failure(), "exited with code 3")) << trial.failure();
      EXPECT_EQ(trial.median_us(), 0.0);
    } else {
      EXPECT_EQ(trial.status(), "ok") << trial.failure();
      EXPECT_TRUE(trial.failure().empty()) << trial.failure();
      EXPECT_GT(trial.median_us(), 0.0);
      EXPECT_GT(trial.tflops(), 0.0);
      if (trial.status() == "ok" && (!fastest_ok || trial.median_us() < *fastest_ok))
        fastest_ok = trial.median_us();
      if (trial.status() == "ok") ok_trials.emplace_back(trial.median_us(), expected);
    }
  }

  // The result: a healthy config, one of the finalists (the kFinalists
  // fastest ok trials, re-timed side by side: its median is the re-timed one).
  const TileConfig best = config_of(result->config());
  EXPECT_FALSE(faults(best)) << config_label(best);
  EXPECT_TRUE(space->contains(best)) << config_label(best);
  ASSERT_TRUE(fastest_ok.has_value());
  std::sort(ok_trials.begin(), ok_trials.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  bool finalist = false;
  for (size_t i = 0; i < ok_trials.size() && i < kFinalists; ++i)
    finalist |= ok_trials[i].second == best;
  EXPECT_TRUE(finalist) << config_label(best) << " is not among the " << kFinalists
                        << " fastest ok trials";
  EXPECT_GT(result->median_us(), 0.0);
  EXPECT_LT(result->median_us(), 2.0 * *fastest_ok);
  EXPECT_FALSE(result->from_database());
  EXPECT_EQ(result->evaluations(), kEvaluations);
  EXPECT_EQ(result->searcher(), "exhaustive");
  EXPECT_FALSE(result->device().empty());
  ASSERT_TRUE(last_best.has_value());
  EXPECT_EQ(config_of(last_best->config()), best);

  // The tuning database holds the same trials and a succeeded job.
  {
    auto db = TuningDb::open((cache.path() / "tuning.db").string());
    ASSERT_TRUE(db.ok()) << db.error().message;
    auto job = finished_job(**db, started->job_id());
    ASSERT_TRUE(job.has_value());
    EXPECT_EQ(job->status, JobStatus::succeeded);
    auto all_trials = (*db)->trials_for_job(started->job_id());
    ASSERT_TRUE(all_trials.ok()) << all_trials.error().message;
    // Configs pruned before the search (spills, compile errors) are on the
    // job's record as skipped; the measured ones are the rest.
    std::vector<TrialRecord> stored;
    size_t skipped = 0;
    for (const TrialRecord& record : *all_trials) {
      if (record.status == TrialStatus::skipped) {
        EXPECT_FALSE(record.failure_reason.empty());
        for (int i = 0; i < kEvaluations; ++i)
          EXPECT_NE(record.config, space->at(i)) << "a first proposal was pruned: "
                                                 << record.failure_reason;
        ++skipped;
        continue;
      }
      stored.push_back(record);
    }
    // The background pass over the space prunes spilling configs; it stops
    // when the search does, so only those it reached by then are recorded.
    EXPECT_LE(skipped, space->size() - static_cast<size_t>(kEvaluations));
    ASSERT_EQ(stored.size(), static_cast<size_t>(kEvaluations));
    for (const TrialRecord& record : stored) {
      SCOPED_TRACE(config_label(record.config));
      if (faults(record.config)) {
        EXPECT_EQ(record.status, TrialStatus::failed);
        EXPECT_TRUE(contains(record.failure_reason, "exited with code 3")) << record.failure_reason;
      } else {
        EXPECT_EQ(record.status, TrialStatus::ok) << record.failure_reason;
        EXPECT_GT(record.median_us, 0.0);
      }
    }
  }

  // The daemon still serves: info, a compile (a cache hit on the best's key),
  // a validation of the best on a worker, and the stored result.
  auto info_after = client.server_info();
  ASSERT_TRUE(info_after.ok()) << info_after.error().message;
  EXPECT_TRUE(info_after->gpu_available()) << info_after->gpu_unavailable_reason();

  v1::KernelRequest kernel = request.kernel();
  service::fill_config(best, kernel.mutable_config());
  kernel.set_omit_cubin(true);
  auto compiled = client.compile(kernel);
  ASSERT_TRUE(compiled.ok()) << compiled.error().message;
  EXPECT_EQ(compiled->key(), result->key());

  v1::ValidateRequest validate;
  *validate.mutable_kernel() = kernel;
  validate.mutable_options()->set_determinism_runs(2);
  validate.mutable_options()->set_stability_trials(1);
  auto validated = client.validate(validate, std::chrono::minutes(2));
  ASSERT_TRUE(validated.ok()) << validated.error().message;
  EXPECT_TRUE(validated->validation().evaluated());
  EXPECT_TRUE(validated->validation().passed()) << validated->validation().detail();
  EXPECT_FALSE(contains(validated->validation().detail(), "exited"))
      << validated->validation().detail();

  v1::TuneRequest again = request;
  again.set_force(false);
  auto stored_result = client.tune(again, nullptr, nullptr, std::chrono::minutes(1));
  ASSERT_TRUE(stored_result.ok()) << stored_result.error().message;
  EXPECT_TRUE(stored_result->from_database());
  EXPECT_EQ(config_of(stored_result->config()), best);
  EXPECT_EQ(stored_result->key(), result->key());
}

// The finalists re-timed side by side in one worker call (the real
// templates, no fault): the result lists them, the winner first at its
// re-timed median, each with a positive median inside its p10..p90.
TEST(TuneGpuTest, SM80_TheFinalistsAreRetimedTogetherInOneWorkerCall) {
  test_support::ScratchDir cache;
  DaemonConfig config = loopback_config(cache.path());
  config.compile_threads = 4;
  config.evaluation_timeout = 60000ms;
  WorkerDaemon served;
  ASSERT_NO_FATAL_FAILURE(start_worker_daemon(config, served));
  client::Client& client = *served.client;
  if (!served.skip.empty()) GTEST_SKIP() << served.skip;

  v1::TuneRequest request = gpu_tune_request(6);
  request.mutable_timing()->set_repetitions(7);  // a spread worth the name
  std::vector<v1::TuneTrial> trials;
  auto result = client.tune(request, [&](const v1::TuneProgress& p) {
    if (p.has_trial()) trials.push_back(p.trial());
  }, nullptr, std::chrono::minutes(5));
  ASSERT_TRUE(result.ok()) << result.error().message << "\n" << result.error().detail;
  size_t ok_trials = 0;
  for (const auto& trial : trials) ok_trials += trial.status() == "ok";
  ASSERT_GE(ok_trials, kFinalists) << "too few healthy configs to have finalists";

  ASSERT_GE(static_cast<size_t>(result->finalists_size()), kFinalists);
  EXPECT_LE(static_cast<size_t>(result->finalists_size()), kFinalists + 1);  // + the default
  EXPECT_EQ(config_of(result->finalists(0).config()), config_of(result->config()));
  EXPECT_DOUBLE_EQ(result->finalists(0).median_us(), result->median_us());
  for (const auto& f : result->finalists()) {
    SCOPED_TRACE(config_label(config_of(f.config())));
    std::printf("[ finalist ] %s: median %.2f us [%.2f, %.2f]\n",
                config_label(config_of(f.config())).c_str(), f.median_us(), f.p10_us(),
                f.p90_us());
    EXPECT_GT(f.median_us(), 0.0);
    EXPECT_LE(f.p10_us(), f.median_us());
    EXPECT_LE(f.median_us(), f.p90_us());
  }
  EXPECT_LE(result->p10_us(), result->median_us());
  EXPECT_GE(result->p90_us(), result->median_us());
}

// On an sm_90a GPU a Tune that names no family searches both attention
// families with the real templates and kernels: each family finds a correct
// best, the two are re-timed side by side, and GetTuningResult (no family)
// and Compile use_tuned_config serve the family the job chose.
TEST(TuneGpuTest, SM90_ANamelessTuneSearchesBothFamiliesAndServesTheChosenOne) {
  test_support::ScratchDir cache;
  DaemonConfig config = loopback_config(cache.path());
  config.compile_threads = 4;
  config.evaluation_timeout = 60000ms;
  WorkerDaemon served;
  ASSERT_NO_FATAL_FAILURE(start_worker_daemon(config, served));
  client::Client& client = *served.client;
  if (!served.skip.empty()) GTEST_SKIP() << served.skip;
  if (served.info.default_arch() != "sm_90a")
    GTEST_SKIP() << "one attention family on " << served.info.default_arch();

  v1::TuneRequest request = gpu_tune_request(8);
  request.mutable_kernel()->clear_template_id();
  request.set_searcher("evolutionary");
  request.mutable_timing()->set_repetitions(7);
  std::vector<std::string> started;
  auto result = client.tune(request, [&](const v1::TuneProgress& p) {
    if (p.has_started()) started.push_back(p.started().template_id());
  }, nullptr, std::chrono::minutes(8));
  ASSERT_TRUE(result.ok()) << result.error().message << "\n" << result.error().detail;
  EXPECT_EQ(started, (std::vector<std::string>{"attention_fwd_sm90", "attention_fwd"}));
  ASSERT_EQ(result->families_size(), 2);
  EXPECT_EQ(result->families(0).template_id(), result->template_id());
  for (const auto& f : result->families()) {
    std::printf("[ family ] %s %s: median %.2f us [%.2f, %.2f]%s\n", f.template_id().c_str(),
                config_label(config_of(f.config())).c_str(), f.median_us(), f.p10_us(),
                f.p90_us(), f.template_id() == result->template_id() ? "  served" : "");
    EXPECT_TRUE(f.tuned()) << f.template_id();
    EXPECT_TRUE(f.error().empty()) << f.template_id() << ": " << f.error();
    EXPECT_GT(f.median_us(), 0.0);
    EXPECT_LE(f.p10_us(), f.median_us());
    EXPECT_LE(f.median_us(), f.p90_us());
  }
  EXPECT_DOUBLE_EQ(result->median_us(), result->families(0).median_us());
  // The other family is kept only where it is not faster by more than the spread.
  const auto& chosen = result->families(0);
  const auto& other = result->families(1);
  if (chosen.template_id() == "attention_fwd") {
    EXPECT_GT(other.median_us() - chosen.median_us(),
              std::max(chosen.p90_us() - chosen.p10_us(), other.p90_us() - other.p10_us()));
  }

  v1::GetTuningResultRequest get;
  *get.mutable_kernel() = request.kernel();
  auto stored = client.get_tuning_result(get);
  ASSERT_TRUE(stored.ok()) << stored.error().message;
  EXPECT_EQ(stored->template_id(), result->template_id());
  EXPECT_EQ(config_of(stored->config()), config_of(result->config()));
  v1::KernelRequest compile = request.kernel();
  compile.set_use_tuned_config(true);
  compile.set_omit_cubin(true);
  auto handle = client.compile(compile);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(handle->template_id(), result->template_id());
  EXPECT_EQ(config_of(handle->config()), config_of(result->config()));
}

}  // namespace
}  // namespace flashcore
