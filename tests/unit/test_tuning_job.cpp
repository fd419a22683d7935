// The parts of a tuning job that need neither a GPU nor a daemon: the
// resource filter that skips candidates before measurement, and the default
// evaluation budget. Jobs end to end are in tests/rpc/test_tune.cpp.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace flashcore
