#include "tuning/stop_condition.hpp"

#include <gtest/gtest.h>

#include <chrono>

#include "tuning/exhaustive_searcher.hpp"
#include "search_test_objective.hpp"

namespace flashcore {
namespace {

using namespace std::chrono_literals;

SearchProgress at(size_t evaluations, std::chrono::nanoseconds elapsed = 0s,
                  size_t since_improvement = 0) {
  SearchProgress p;
  p.evaluations = evaluations;
  p.elapsed = elapsed;
  p.evaluations_since_improvement = since_improvement;
  return p;
}

TEST(StopCondition, EvaluationBudgetStopsAtN) {
  const EvaluationBudget budget(10);
  EXPECT_FALSE(budget.done(at(0)));
  EXPECT_FALSE(budget.done(at(9)));
  EXPECT_TRUE(budget.done(at(10)));
  EXPECT_TRUE(budget.done(at(11)));
  EXPECT_EQ(budget.describe(), "at most 10 evaluations");
  EXPECT_EQ(budget.describe(at(4)), "4/10 evaluations");
  EXPECT_TRUE(EvaluationBudget(0).done(at(0)));
}

TEST(StopCondition, TimeBudgetReadsTheElapsedTimeItIsGiven) {
  const TimeBudget budget(90s);
  EXPECT_FALSE(budget.done(at(1000, 89999ms)));
  EXPECT_TRUE(budget.done(at(0, 90s)));
  EXPECT_TRUE(budget.done(at(0, 2h)));
  EXPECT_EQ(budget.describe(), "at most 90 s");
  EXPECT_EQ(budget.describe(at(0, 1500ms)), "1.500 s of 90 s");
}

TEST(StopCondition, PatienceCountsEvaluationsWithoutImprovement) {
  const Patience patience(5);
  EXPECT_FALSE(patience.done(at(100, 0s, 4)));
  EXPECT_TRUE(patience.done(at(100, 0s, 5)));
  EXPECT_EQ(patience.describe(at(7, 0s, 2)), "2/5 evaluations without improvement");

  // Driven by a real searcher: the count restarts whenever the best improves.
  auto space = SearchSpace::create(ProblemClass{}, *find_arch("sm_90a"));
  ASSERT_TRUE(space.ok());
  ExhaustiveSearcher searcher;
  searcher.initialize(*space, 0);
  size_t steps = 0;
  while (!patience.done(searcher.progress(0s))) {
    auto config = searcher.next();
    ASSERT_TRUE(config.has_value());
    ASSERT_TRUE(searcher.report(*config, test::test_objective(*config)).ok());
    ++steps;
  }
  // It stopped five evaluations after the last improvement, and not before.
  const auto& trials = searcher.trials();
  ASSERT_EQ(trials.size(), steps);
  ASSERT_GE(steps, 5u);
  const double best_before = [&] {
    double best = 1e300;
    for (size_t i = 0; i + 5 < trials.size(); ++i)
      if (trials[i].outcome.succeeded()) best = std::min(best, trials[i].outcome.time_us);
    return best;
  }();
  for (size_t i = trials.size() - 5; i < trials.size(); ++i)
    EXPECT_FALSE(trials[i].outcome.succeeded() && trials[i].outcome.time_us < best_before);
}

TEST(StopCondition, AnyOfStopsWhenOneMemberIs) {
  const auto stop = any_of({evaluation_budget(100), time_budget(10min), patience(20)});
  EXPECT_FALSE(stop->done(at(99, 599s, 19)));
  EXPECT_TRUE(stop->done(at(100, 0s, 0)));
  EXPECT_TRUE(stop->done(at(1, 10min, 0)));
  EXPECT_TRUE(stop->done(at(30, 1s, 20)));
  EXPECT_EQ(stop->describe(),
            "any of (at most 100 evaluations, at most 600 s, stop after 20 evaluations without "
            "improvement)");
  EXPECT_EQ(stop->describe(at(3, 2s, 1)),
            "any of (3/100 evaluations, 2 s of 600 s, 1/20 evaluations without improvement)");
}

TEST(StopCondition, AllOfStopsWhenEveryMemberIs) {
  // At least 30 evaluations, and then only once 10 in a row brought nothing.
  const auto stop = all_of({evaluation_budget(30), patience(10)});
  EXPECT_FALSE(stop->done(at(29, 0s, 29)));
  EXPECT_FALSE(stop->done(at(50, 0s, 9)));
  EXPECT_TRUE(stop->done(at(30, 0s, 10)));
}

TEST(StopCondition, CombinationsNest) {
  // (a minimum of work and patience exhausted) or a hard time limit.
  const auto stop =
      any_of({all_of({evaluation_budget(30), patience(10)}), time_budget(250ms)});
  EXPECT_FALSE(stop->done(at(40, 249ms, 9)));
  EXPECT_TRUE(stop->done(at(40, 249ms, 10)));
  EXPECT_TRUE(stop->done(at(1, 250ms, 0)));
  EXPECT_EQ(stop->describe(),
            "any of (all of (at most 30 evaluations, stop after 10 evaluations without "
            "improvement), at most 0.250 s)");
}

TEST(StopCondition, EmptyCombinationsNeverStopAndNullMembersAreDropped) {
  EXPECT_FALSE(any_of({})->done(at(1000000, 1000h, 1000000)));
  EXPECT_FALSE(all_of({})->done(at(1000000, 1000h, 1000000)));
  const auto with_null = any_of({nullptr, evaluation_budget(2)});
  EXPECT_FALSE(with_null->done(at(1)));
  EXPECT_TRUE(with_null->done(at(2)));
  EXPECT_EQ(with_null->describe(), "any of (at most 2 evaluations)");
}

}  // namespace
}  // namespace flashcore
