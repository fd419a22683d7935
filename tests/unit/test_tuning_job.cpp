// The parts of a tuning job that need neither a GPU nor a daemon: the
// resource filter that skips candidates before measurement, and the default
// evaluation budget, the round-robin re-timing. Jobs end to end are in
// tests/rpc/test_tune.cpp.
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <vector>

#include "tuning/tuning_job.hpp"

namespace flashcore {
namespace {

TEST(ResourceSkipReason, CleanCandidateIsMeasured) {
  CompiledCandidate candidate;
  candidate.registers = 255;  // many registers, no spills: worth measuring
  EXPECT_FALSE(resource_skip_reason(candidate).has_value());
}

TEST(ResourceSkipReason, SpillsAreSkippedWithTheBytesInTheReason) {
  CompiledCandidate stores;
  stores.spill_store_bytes = 40;
  auto reason = resource_skip_reason(stores);
  ASSERT_TRUE(reason.has_value());
  EXPECT_NE(reason->find("40 B stores"), std::string::npos) << *reason;

  CompiledCandidate loads;
  loads.spill_load_bytes = 8;
  EXPECT_TRUE(resource_skip_reason(loads).has_value());
}

TEST(ResourceSkipReason, StackFrameIsSkipped) {
  CompiledCandidate candidate;
  candidate.stack_frame_bytes = 16;
  auto reason = resource_skip_reason(candidate);
  ASSERT_TRUE(reason.has_value());
  EXPECT_NE(reason->find("stack frame of 16 B"), std::string::npos) << *reason;
}

TEST(DefaultMaxEvaluations, NeverMoreThanTwentyPercentOfTheSpaceButAtLeastEight) {
  EXPECT_EQ(default_max_evaluations(6), 6u);  // all of a tiny space, no more
  EXPECT_EQ(default_max_evaluations(40), 8u);
  EXPECT_EQ(default_max_evaluations(45), 9u);
  EXPECT_EQ(default_max_evaluations(100), 20u);
  EXPECT_EQ(default_max_evaluations(104), 20u);  // rounded down: 20.8 would exceed 20%
  for (size_t n = 40; n < 2000; ++n) EXPECT_LE(default_max_evaluations(n) * 5, n) << n;
}

TEST(Displaces, OnlyAWinLargerThanTheSpreadCounts) {
  const Finalist incumbent{TileConfig{}, 100.0, 95.0, 105.0};   // spread 10
  EXPECT_FALSE(displaces({TileConfig{}, 95.0, 94.0, 96.0}, incumbent));   // 5 < 10
  EXPECT_FALSE(displaces({TileConfig{}, 90.0, 89.0, 91.0}, incumbent));   // 10 is not more
  EXPECT_TRUE(displaces({TileConfig{}, 89.0, 88.0, 90.0}, incumbent));    // 11 > 10
  // The challenger's own spread counts too.
  EXPECT_FALSE(displaces({TileConfig{}, 85.0, 70.0, 100.0}, incumbent));  // 15 < 30
  // No spread measured: strictly faster wins, equal does not.
  const Finalist exact{TileConfig{}, 100.0, 100.0, 100.0};
  EXPECT_TRUE(displaces({TileConfig{}, 99.0, 99.0, 99.0}, exact));
  EXPECT_FALSE(displaces({TileConfig{}, 100.0, 100.0, 100.0}, exact));
}

// A backend with only measure(), as one without a several-kernel call is:
// it records the order it is asked in and fails the configs it is told to.
class OneAtATimeBackend final : public EvaluationBackend {
 public:
  Result<Measurement> measure(const MeasureRequest& request) override {
    order.push_back(request.candidate->config.block_m);
    validated.push_back(request.validate);
    if (request.candidate->config.block_m == failing_block_m)
      return make_error(ErrorCode::internal, "worker faulted");
    if (cancel_after > 0 && static_cast<int>(order.size()) >= cancel_after) cancel->store(true);
    Measurement m;
    m.correct = true;
    m.median_us = request.candidate->config.block_m + static_cast<double>(order.size());
    m.p10_us = m.median_us - 1;
    m.p90_us = m.median_us + 1;
    return m;
  }
  int gpu_count() const override { return 1; }
  std::string device_name(int) const override { return "test"; }

  std::vector<int> order;
  std::vector<bool> validated;
  int failing_block_m = -1;
  int cancel_after = 0;
  std::atomic<bool>* cancel = nullptr;
};

std::vector<CompiledCandidate> candidates_with_block_m(std::vector<int> block_ms) {
  std::vector<CompiledCandidate> out;
  for (int m : block_ms) {
    CompiledCandidate c;
    c.config.block_m = m;
    out.push_back(c);
  }
  return out;
}

TEST(MeasureMany, TheDefaultTimesRoundRobinAndOnlyTimes) {
  const auto candidates = candidates_with_block_m({64, 128, 32});
  MeasureManyRequest request;
  for (const auto& c : candidates) request.candidates.push_back(&c);
  request.common.validate = true;  // ignored: finalists are only timed
  request.rounds = 2;
  OneAtATimeBackend backend;
  EvaluationBackend& base = backend;
  auto times = base.measure_many(request);
  ASSERT_TRUE(times.ok()) << times.error().message;
  // Round r is every candidate in turn.
  EXPECT_EQ(backend.order, (std::vector<int>{64, 128, 32, 64, 128, 32}));
  for (bool v : backend.validated) EXPECT_FALSE(v);
  ASSERT_EQ(times->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_EQ((*times)[i].size(), 2u) << i;
    // Each round's own measurement, in round order.
    EXPECT_DOUBLE_EQ((*times)[i][0].median_us, candidates[i].config.block_m + 1.0 + i);
    EXPECT_DOUBLE_EQ((*times)[i][1].median_us, candidates[i].config.block_m + 4.0 + i);
  }
}

TEST(MeasureMany, RoundRobinLeavesAFailingCandidateWithoutTimesAndStopsWhenCancelled) {
  const auto candidates = candidates_with_block_m({64, 128, 32});
  MeasureManyRequest request;
  for (const auto& c : candidates) request.candidates.push_back(&c);
  OneAtATimeBackend backend;
  backend.failing_block_m = 128;
  RoundTimes times = measure_round_robin(backend, request);
  ASSERT_EQ(times.size(), 3u);
  EXPECT_EQ(times[0].size(), static_cast<size_t>(kRetimeRounds));
  EXPECT_TRUE(times[1].empty());
  EXPECT_EQ(times[2].size(), static_cast<size_t>(kRetimeRounds));

  std::atomic<bool> cancelled{false};
  OneAtATimeBackend stopping;
  stopping.cancel = &cancelled;
  stopping.cancel_after = 4;  // the job is cancelled during the second round
  request.common.cancelled = &cancelled;
  times = measure_round_robin(stopping, request);
  EXPECT_EQ(stopping.order.size(), 4u);
  EXPECT_EQ(times[0].size(), 2u);
  EXPECT_EQ(times[1].size(), 1u);
}

}  // namespace
}  // namespace flashcore
