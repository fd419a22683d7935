// Proof that wrong kernels never win (issue 13), on a GPU through the daemon:
// the REAL attention template, in a scratch copy where a TEST-ONLY change
// makes chosen tile configs drop their last key tile (a plausible kernel: it
// runs, writes every output, and is wrong by the softmax mass of the keys it
// skips). Through Tune:
// - every config wrong: each trial is recorded `wrong` by the fp64 gate (no
//   correct candidate ever becomes the reference), the job fails with
//   FAILED_PRECONDITION and nothing is stored as best;
// - some configs wrong: the first correct candidate (the exhaustive order
//   starts at 64x32, one stage, which stays correct) becomes the reference kernel, the wrong ones are recorded `wrong` against it, and the
//   best stored is a correct config that passed the full validation;
// - every config wrong on one row of the ragged tail only (the second to
//   last, which the sampled gate's fixed rows leave out): the gate passes
//   them, the winner's validation (every row against fp64) catches each
//   finalist, and nothing is stored.
// Without a GPU (or worker) each case skips after checking what needs none:
// the insertion point still exists in the template.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "eval/evaluator.hpp"
#include "family/tile_config.hpp"
#include "flashcore/client.hpp"
#include "rpc/translate.hpp"
#include "rpc_test_support.hpp"
#include "service/tuning_backends.hpp"
#include "tuning/tuning_db.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;
using namespace std::chrono_literals;

constexpr const char* kWrongMarker = "TEST-ONLY WRONG";
// The line of attention_fwd.cuh that counts a row block's key tiles.
constexpr const char* kTileCount = "  const int n_tiles = (key_end + BlockN - 1) / BlockN;";

// The embedded templates with the one line `line` of attention_fwd.cuh
// replaced by `wrong` (which carries kWrongMarker).
void write_templates_replacing(const test_support::ScratchDir& dir, const std::string& line,
                               const std::string& wrong) {
  const auto& sources = TemplateRegistry::embedded()->sources();
  const auto attention = sources.find("attention/attention_fwd.cuh");
  ASSERT_NE(attention, sources.end()) << "embedded templates lack attention/attention_fwd.cuh";
  std::string source = attention->second;
  const size_t at = source.find(line);
  ASSERT_NE(at, std::string::npos) << "'" << line << "' is not in attention_fwd.cuh: "
                                   << "update this test";
  ASSERT_EQ(source.find(line, at + 1), std::string::npos);
  source.replace(at, line.size(), wrong);
  for (const auto& [relative, contents] : sources)
    dir.write(relative, relative == attention->first ? source : contents);
  ASSERT_NE(test_support::read_file(dir / attention->first).find(kWrongMarker), std::string::npos);
}

// The embedded templates with the key-tile count of attention_fwd.cuh one
// short (when more than one tile) for the configs `condition` selects (a
// constant expression over the kernel's template parameters).
void write_wrong_templates(const test_support::ScratchDir& dir, const std::string& condition) {
  write_templates_replacing(
      dir, kTileCount,
      std::string("  // ") + kWrongMarker + " (tests/rpc/test_tune_wrong_gpu.cpp): the selected\n" +
          "  // configs skip their last key tile. Never in kernel_templates/.\n" +
          "  const int n_tiles = (key_end + BlockN - 1) / BlockN -\n" + "                      ((" +
          condition + ") && key_end > BlockN ? 1 : 0);");
}

// The line of attention_fwd.cuh that normalizes an output row.
constexpr const char* kNormalize = "      const float inverse = sum > 0.f ? 1.f / sum : 0.f;";

// The embedded templates with output row seq_q - 2 of every config scaled by
// 1.25 (a kernel wrong on one row of the ragged tail, right everywhere else).
void write_tail_wrong_templates(const test_support::ScratchDir& dir) {
  write_templates_replacing(
      dir, kNormalize,
      std::string("      // ") + kWrongMarker + " (tests/rpc/test_tune_wrong_gpu.cpp): row\n" +
          "      // seq_q - 2 comes out 1.25x. Never in kernel_templates/.\n" +
          "      const float inverse = (sum > 0.f ? 1.f / sum : 0.f) *\n" +
          "          (m_start + warp_row0 + mt * 16 + group + h * 8 == p.seq_q - 2 ? 1.25f : 1.f);");
}

struct WrongRun {
  test_support::ScratchDir templates, cache;  // outlive the daemon
  WorkerDaemon served;                        // served.skip: why the GPU part cannot run here
};

// A daemon over the scratch templates with the real evaluation worker:
// `condition` selects the configs that drop a key tile; empty: every config
// is wrong on the ragged tail's second to last row instead.
void start(WrongRun& run, const std::string& condition) {
  if (condition.empty())
    ASSERT_NO_FATAL_FAILURE(write_tail_wrong_templates(run.templates));
  else
    ASSERT_NO_FATAL_FAILURE(write_wrong_templates(run.templates, condition));
  DaemonConfig config = loopback_config(run.cache.path());
  config.templates_dir = run.templates.path();
  config.compile_threads = 4;
  ASSERT_NO_FATAL_FAILURE(start_worker_daemon(config, run.served));
}

// The job's measured trials, once the job thread has recorded its end.
std::vector<TrialRecord> measured_trials(const WrongRun& run, int64_t job_id, JobStatus* status) {
  auto db = TuningDb::open((run.cache.path() / "tuning.db").string());
  EXPECT_TRUE(db.ok()) << db.error().message;
  if (!db.ok()) return {};
  for (int i = 0; i < 400; ++i) {
    auto job = (*db)->job(job_id);
    if (job.ok() && *job && (*job)->status != JobStatus::running) {
      *status = (*job)->status;
      break;
    }
    std::this_thread::sleep_for(25ms);
  }
  auto trials = (*db)->trials_for_job(job_id);
  EXPECT_TRUE(trials.ok()) << trials.error().message;
  std::vector<TrialRecord> measured;
  if (trials.ok())
    for (const TrialRecord& t : *trials)
      if (t.status != TrialStatus::skipped) measured.push_back(t);
  return measured;
}

int64_t job_of(const std::vector<v1::TuneProgress>& events) {
  for (const auto& event : events)
    if (event.has_started()) return event.started().job_id();
  return -1;
}

TEST(TuneWrongGpuTest, SM80_EveryConfigWrongIsRecordedWrongByTheFp64GateAndNothingIsStored) {
  WrongRun run;
  ASSERT_NO_FATAL_FAILURE(start(run, "true"));
  if (!run.served.skip.empty()) GTEST_SKIP() << run.served.skip;

  constexpr int kEvaluations = 4;
  std::vector<v1::TuneProgress> events;
  auto result = run.served.client->tune(
      gpu_tune_request(kEvaluations), [&](const v1::TuneProgress& p) { events.push_back(p); },
      nullptr, std::chrono::minutes(5));
  ASSERT_FALSE(result.ok()) << "a best was found among kernels that all drop a key tile";
  EXPECT_EQ(result.error().code, ErrorCode::failed_precondition) << result.error().message;
  EXPECT_NE(result.error().message.find("passed the correctness gate"), std::string::npos)
      << result.error().message;

  JobStatus status = JobStatus::running;
  const auto trials = measured_trials(run, job_of(events), &status);
  EXPECT_NE(status, JobStatus::succeeded);
  ASSERT_EQ(trials.size(), static_cast<size_t>(kEvaluations));
  for (const TrialRecord& t : trials) {
    SCOPED_TRACE(config_label(t.config));
    std::printf("[ wrong    ] %s: %s\n", config_label(t.config).c_str(), t.failure_reason.c_str());
    EXPECT_EQ(t.status, TrialStatus::wrong) << t.failure_reason;
    EXPECT_NE(t.failure_reason.find("fp64"), std::string::npos) << t.failure_reason;
  }
  auto db = TuningDb::open((run.cache.path() / "tuning.db").string());
  ASSERT_TRUE(db.ok()) << db.error().message;
  auto best = (*db)->list_best(100);
  ASSERT_TRUE(best.ok()) << best.error().message;
  EXPECT_TRUE(best->items.empty()) << best->items.size() << " bests stored";
}

TEST(TuneWrongGpuTest, SM80_WrongConfigsAreRecordedWrongAgainstTheReferenceKernelAndNeverBest) {
  // The exhaustive order's first ten are 64x32 with 4 warps: 1 stage (4
  // layouts), 2 stages (4) and 3 stages (2). Those with 2 stages drop their
  // last tile; the first, with 1 stage, is correct and becomes the reference.
  auto wrong = [](const TileConfig& c) { return c.block_n == 32 && c.stages == 2; };
  WrongRun run;
  ASSERT_NO_FATAL_FAILURE(start(run, "BlockN == 32 && Stages == 2"));
  if (!run.served.skip.empty()) GTEST_SKIP() << run.served.skip;

  constexpr int kEvaluations = 10;
  std::vector<v1::TuneProgress> events;
  auto result = run.served.client->tune(
      gpu_tune_request(kEvaluations), [&](const v1::TuneProgress& p) { events.push_back(p); },
      nullptr, std::chrono::minutes(5));
  ASSERT_TRUE(result.ok()) << result.error().message << "\n" << result.error().detail;
  auto best = rpc::parse_config(result->config());
  ASSERT_TRUE(best.ok()) << best.error().message;
  EXPECT_FALSE(wrong(*best)) << config_label(*best) << " won while dropping a key tile";

  JobStatus status = JobStatus::running;
  const auto trials = measured_trials(run, job_of(events), &status);
  EXPECT_EQ(status, JobStatus::succeeded);
  ASSERT_EQ(trials.size(), static_cast<size_t>(kEvaluations));
  ASSERT_FALSE(wrong(trials.front().config)) << "the first trial (the reference) is a wrong one";
  int wrong_trials = 0;
  for (const TrialRecord& t : trials) {
    SCOPED_TRACE(config_label(t.config));
    if (wrong(t.config)) {
      ++wrong_trials;
      std::printf("[ wrong    ] %s: %s\n", config_label(t.config).c_str(),
                  t.failure_reason.c_str());
      EXPECT_EQ(t.status, TrialStatus::wrong) << t.failure_reason;
      EXPECT_NE(t.failure_reason.find("reference kernel"), std::string::npos) << t.failure_reason;
    } else {
      EXPECT_EQ(t.status, TrialStatus::ok) << t.failure_reason;
    }
  }
  EXPECT_GE(wrong_trials, 1) << "no 2-stage 64x32 config among the first proposals: change wrong()";
  auto db = TuningDb::open((run.cache.path() / "tuning.db").string());
  ASSERT_TRUE(db.ok()) << db.error().message;
  auto stored = (*db)->list_best(100);
  ASSERT_TRUE(stored.ok()) << stored.error().message;
  ASSERT_EQ(stored->items.size(), 1u);
  EXPECT_FALSE(wrong(stored->items.front().config));
  EXPECT_TRUE(stored->items.front().validated);
}

TEST(TuneWrongGpuTest, SM80_WrongOnlyOnTheRaggedTailPassesTheGateAndIsCaughtByTheWinnersValidation) {
  WrongRun run;
  ASSERT_NO_FATAL_FAILURE(start(run, ""));
  if (!run.served.skip.empty()) GTEST_SKIP() << run.served.skip;

  // One head of 2046 rows: every block_m leaves a partial last tile, and the
  // gate checks 64 rows (the first, the last, the first of the last tile and
  // 61 drawn from 2046, the same for every candidate of a job: they derive
  // from the job's seed), against the CPU's fp64 (below the GPU reference's
  // size). The seed is one whose gate leaves row 2044 out for both block_m.
  constexpr int kEvaluations = 4;
  constexpr int kRows = 2046, kWrongRow = kRows - 2;
  uint64_t seed = 1;
  auto sampled = [&](uint64_t s) {
    for (int block_m : {64, 128}) {
      const auto rows = eval::reference_rows(1, 1, kRows, service::WorkerPoolBackend::kReferenceRows, block_m,
                                             eval::validation_trial_seed(s, 0));
      if (std::count(rows.front().begin(), rows.front().end(), kWrongRow) > 0) return true;
    }
    return false;
  };
  while (sampled(seed)) ++seed;
  v1::TuneRequest request = gpu_tune_request(kEvaluations);
  request.set_seed(seed);
  request.mutable_kernel()->mutable_problem()->set_heads(1);
  request.mutable_kernel()->mutable_problem()->set_seq_q(kRows);
  std::vector<v1::TuneProgress> events;
  auto result = run.served.client->tune(
      request, [&](const v1::TuneProgress& p) { events.push_back(p); }, nullptr,
      std::chrono::minutes(8));
  ASSERT_FALSE(result.ok()) << "a kernel wrong on row 2044 was stored as best";
  EXPECT_EQ(result.error().code, ErrorCode::failed_precondition) << result.error().message;
  EXPECT_NE(result.error().message.find("passed the full validation"), std::string::npos)
      << result.error().message;

  JobStatus status = JobStatus::running;
  const auto trials = measured_trials(run, job_of(events), &status);
  EXPECT_NE(status, JobStatus::succeeded);
  ASSERT_EQ(trials.size(), static_cast<size_t>(kEvaluations));
  int passed_gate = 0, caught_by_winner_validation = 0;
  for (const TrialRecord& t : trials) {
    std::printf("[ wrong    ] %s: %s\n", config_label(t.config).c_str(), t.failure_reason.c_str());
    EXPECT_NE(t.status, TrialStatus::failed) << config_label(t.config) << ": " << t.failure_reason;
    if (t.status == TrialStatus::wrong && t.failure_reason.rfind("winner validation:", 0) == 0) {
      ++passed_gate;
      ++caught_by_winner_validation;
    } else if (t.status == TrialStatus::ok) {
      ++passed_gate;  // past the gate, not a finalist (so never validated nor stored)
    }
  }
  EXPECT_GE(passed_gate, 1);
  EXPECT_GE(caught_by_winner_validation, 1);
  auto db = TuningDb::open((run.cache.path() / "tuning.db").string());
  ASSERT_TRUE(db.ok()) << db.error().message;
  auto best = (*db)->list_best(100);
  ASSERT_TRUE(best.ok()) << best.error().message;
  EXPECT_TRUE(best->items.empty()) << best->items.size() << " bests stored";
}

}  // namespace
}  // namespace flashcore
