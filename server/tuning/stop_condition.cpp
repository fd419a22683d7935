#include "tuning/stop_condition.hpp"

#include <algorithm>
#include <cstdio>

namespace flashcore {
namespace {

std::string seconds_text(std::chrono::nanoseconds duration) {
  char text[64];
  if (duration.count() % 1'000'000'000 == 0) {
    std::snprintf(text, sizeof text, "%lld s",
                  static_cast<long long>(duration.count() / 1'000'000'000));
  } else {
    std::snprintf(text, sizeof text, "%.3f s", static_cast<double>(duration.count()) * 1e-9);
  }
  return text;
}

std::string join(const std::vector<StopConditionPtr>& conditions, const char* op,
                 const SearchProgress* progress) {
  std::string text = op;
  text += "(";
  for (size_t i = 0; i < conditions.size(); ++i) {
    if (i > 0) text += ", ";
    text += progress ? conditions[i]->describe(*progress) : conditions[i]->describe();
  }
  text += ")";
  return text;
}

std::vector<StopConditionPtr> without_nulls(std::vector<StopConditionPtr> conditions) {
  conditions.erase(std::remove(conditions.begin(), conditions.end(), nullptr), conditions.end());
  return conditions;
}

}  // namespace

AnyOf::AnyOf(std::vector<StopConditionPtr> conditions)
    : conditions_(without_nulls(std::move(conditions))) {}
AllOf::AllOf(std::vector<StopConditionPtr> conditions)
    : conditions_(without_nulls(std::move(conditions))) {}

bool EvaluationBudget::done(const SearchProgress& progress) const {
  return progress.evaluations >= limit_;
}
std::string EvaluationBudget::describe() const {
  return "at most " + std::to_string(limit_) + " evaluations";
}
std::string EvaluationBudget::describe(const SearchProgress& progress) const {
  return std::to_string(progress.evaluations) + "/" + std::to_string(limit_) + " evaluations";
}

bool TimeBudget::done(const SearchProgress& progress) const { return progress.elapsed >= limit_; }
std::string TimeBudget::describe() const { return "at most " + seconds_text(limit_); }
std::string TimeBudget::describe(const SearchProgress& progress) const {
  return seconds_text(progress.elapsed) + " of " + seconds_text(limit_);
}

bool Patience::done(const SearchProgress& progress) const {
  return progress.evaluations_since_improvement >= limit_;
}
std::string Patience::describe() const {
  return "stop after " + std::to_string(limit_) + " evaluations without improvement";
}
std::string Patience::describe(const SearchProgress& progress) const {
  return std::to_string(progress.evaluations_since_improvement) + "/" + std::to_string(limit_) +
         " evaluations without improvement";
}

bool AnyOf::done(const SearchProgress& progress) const {
  return std::any_of(conditions_.begin(), conditions_.end(),
                     [&](const StopConditionPtr& c) { return c->done(progress); });
}
std::string AnyOf::describe() const { return join(conditions_, "any of ", nullptr); }
std::string AnyOf::describe(const SearchProgress& progress) const {
  return join(conditions_, "any of ", &progress);
}

bool AllOf::done(const SearchProgress& progress) const {
  return !conditions_.empty() &&
         std::all_of(conditions_.begin(), conditions_.end(),
                     [&](const StopConditionPtr& c) { return c->done(progress); });
}
std::string AllOf::describe() const { return join(conditions_, "all of ", nullptr); }
std::string AllOf::describe(const SearchProgress& progress) const {
  return join(conditions_, "all of ", &progress);
}

StopConditionPtr evaluation_budget(size_t evaluations) {
  return std::make_shared<EvaluationBudget>(evaluations);
}
StopConditionPtr time_budget(std::chrono::nanoseconds budget) {
  return std::make_shared<TimeBudget>(budget);
}
StopConditionPtr patience(size_t evaluations) { return std::make_shared<Patience>(evaluations); }
StopConditionPtr any_of(std::vector<StopConditionPtr> conditions) {
  return std::make_shared<AnyOf>(std::move(conditions));
}
StopConditionPtr all_of(std::vector<StopConditionPtr> conditions) {
  return std::make_shared<AllOf>(std::move(conditions));
}

}  // namespace flashcore
