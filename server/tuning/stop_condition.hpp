// When a tuning search stops, apart from running out of configs: budgets on
// evaluations and time, patience without improvement, and their union and
// intersection, so a job can say "100 evaluations or 10 minutes, whichever
// comes first".
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace flashcore {

// What a stop condition looks at. The tuning loop fills it: elapsed comes from
// its own clock, so conditions never read a clock themselves (and tests pass
// durations instead of sleeping).
struct SearchProgress {
  size_t evaluations = 0;                    // results reported, failures included
  std::chrono::nanoseconds elapsed{0};
  size_t evaluations_since_improvement = 0;  // since the best last improved (or the start)
  std::optional<double> best_time_us;        // none until a trial succeeds
};

class StopCondition {
 public:
  virtual ~StopCondition() = default;
  virtual bool done(const SearchProgress& progress) const = 0;
  // The rule, for a job summary: "at most 100 evaluations".
  virtual std::string describe() const = 0;
  // Where the search stands against the rule, for progress messages: "37/100 evaluations".
  virtual std::string describe(const SearchProgress& progress) const = 0;
};

using StopConditionPtr = std::shared_ptr<const StopCondition>;

// Done after n evaluations.
class EvaluationBudget final : public StopCondition {
 public:
  explicit EvaluationBudget(size_t evaluations) : limit_(evaluations) {}
  bool done(const SearchProgress& progress) const override;
  std::string describe() const override;
  std::string describe(const SearchProgress& progress) const override;

 private:
  size_t limit_;
};

// Done once `elapsed` reaches the budget.
class TimeBudget final : public StopCondition {
 public:
  explicit TimeBudget(std::chrono::nanoseconds budget) : limit_(budget) {}
  bool done(const SearchProgress& progress) const override;
  std::string describe() const override;
  std::string describe(const SearchProgress& progress) const override;

 private:
  std::chrono::nanoseconds limit_;
};

// Done after n evaluations in a row that did not improve the best time. An
// evaluation that makes the first success counts as an improvement.
class Patience final : public StopCondition {
 public:
  explicit Patience(size_t evaluations) : limit_(evaluations) {}
  bool done(const SearchProgress& progress) const override;
  std::string describe() const override;
  std::string describe(const SearchProgress& progress) const override;

 private:
  size_t limit_;
};

// Union: done when any member is. An empty list is never done.
class AnyOf final : public StopCondition {
 public:
  explicit AnyOf(std::vector<StopConditionPtr> conditions);  // null members are dropped
  bool done(const SearchProgress& progress) const override;
  std::string describe() const override;
  std::string describe(const SearchProgress& progress) const override;

 private:
  std::vector<StopConditionPtr> conditions_;
};

// Intersection: done when every member is. An empty list is never done, so a
// mistakenly empty AllOf does not end a search before its first evaluation.
class AllOf final : public StopCondition {
 public:
  explicit AllOf(std::vector<StopConditionPtr> conditions);  // null members are dropped
  bool done(const SearchProgress& progress) const override;
  std::string describe() const override;
  std::string describe(const SearchProgress& progress) const override;

 private:
  std::vector<StopConditionPtr> conditions_;
};

// Shorthands for building combinations.
StopConditionPtr evaluation_budget(size_t evaluations);
StopConditionPtr time_budget(std::chrono::nanoseconds budget);
StopConditionPtr patience(size_t evaluations);
StopConditionPtr any_of(std::vector<StopConditionPtr> conditions);
StopConditionPtr all_of(std::vector<StopConditionPtr> conditions);

}  // namespace flashcore
