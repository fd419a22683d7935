#include "tuning/searcher.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "tuning/evolutionary_searcher.hpp"
#include "tuning/exhaustive_searcher.hpp"
#include "tuning/random_searcher.hpp"

namespace flashcore {

bool TrialOutcome::succeeded() const { return ok && std::isfinite(time_us) && time_us >= 0.0; }

std::string_view searcher_kind_name(SearcherKind kind) {
  switch (kind) {
    case SearcherKind::exhaustive: return "exhaustive";
    case SearcherKind::random: return "random";
    case SearcherKind::evolutionary: return "evolutionary";
  }
  return "?";
}

std::optional<SearcherKind> parse_searcher_kind(std::string_view name) {
  for (SearcherKind kind :
       {SearcherKind::exhaustive, SearcherKind::random, SearcherKind::evolutionary})
    if (searcher_kind_name(kind) == name) return kind;
  return std::nullopt;
}

void Searcher::initialize(const SearchSpace& space, uint64_t seed,
                          const std::vector<TileConfig>& seeds) {
  space_ = space;
  rng_.seed(seed);
  const size_t n = space.size();
  state_.assign(n, State::untried);
  untried_.resize(n);
  untried_pos_.resize(n);
  for (size_t i = 0; i < n; ++i) untried_[i] = untried_pos_[i] = i;
  outcomes_.assign(n, std::nullopt);
  trials_.clear();
  best_trial_.reset();
  proposed_ = 0;
  since_improvement_ = 0;

  std::vector<size_t> seed_indices;
  for (const auto& config : seeds) {
    auto index = space.index_of(config);
    if (!index) continue;
    bool seen = false;
    for (size_t s : seed_indices) seen = seen || s == *index;
    if (!seen) seed_indices.push_back(*index);
  }
  on_initialize(seed_indices);
}

std::optional<TileConfig> Searcher::next() {
  if (!space_ || untried_.empty()) return std::nullopt;
  const size_t index = on_next();
  // The one promise every caller relies on (no config is measured twice);
  // breaking it is a bug in a searcher, so fail loudly rather than re-measure.
  if (index >= state_.size() || state_[index] != State::untried) {
    std::fprintf(stderr, "flashcore: %s searcher proposed config %zu twice or out of range\n",
                 std::string(searcher_kind_name(kind())).c_str(), index);
    std::abort();
  }
  mark_tried(index);
  ++proposed_;
  return space_->at(index);
}

Status Searcher::report(const TileConfig& config, const TrialOutcome& outcome) {
  if (!space_)
    return make_error(ErrorCode::failed_precondition, "searcher is not initialized");
  const auto index = space_->index_of(config);
  if (!index)
    return make_error(ErrorCode::invalid_argument,
                      "config " + canonical_config(config) + " is not in the search space");
  if (state_[*index] == State::untried)
    return make_error(ErrorCode::failed_precondition,
                      "config " + canonical_config(config) + " was never proposed");
  if (state_[*index] == State::reported)
    return make_error(ErrorCode::failed_precondition,
                      "config " + canonical_config(config) + " was already reported");

  state_[*index] = State::reported;
  outcomes_[*index] = outcome;
  trials_.push_back({config, outcome});
  if (outcome.succeeded() &&
      (!best_trial_ || outcome.time_us < trials_[*best_trial_].outcome.time_us)) {
    best_trial_ = trials_.size() - 1;
    since_improvement_ = 0;
  } else {
    ++since_improvement_;
  }
  on_report(*index, outcome);
  return ok_status();
}

std::optional<Trial> Searcher::best() const {
  if (!best_trial_) return std::nullopt;
  return trials_[*best_trial_];
}

SearchProgress Searcher::progress(std::chrono::nanoseconds elapsed) const {
  SearchProgress progress;
  progress.evaluations = evaluations();
  progress.elapsed = elapsed;
  progress.evaluations_since_improvement = since_improvement_;
  if (best_trial_) progress.best_time_us = trials_[*best_trial_].outcome.time_us;
  return progress;
}

size_t Searcher::random_untried() {
  return untried_[uniform_index(rng_, untried_.size())];
}

const TrialOutcome* Searcher::outcome(size_t index) const {
  return outcomes_[index] ? &*outcomes_[index] : nullptr;
}

void Searcher::mark_tried(size_t index) {
  state_[index] = State::pending;
  // Swap-remove from the untried list.
  const size_t pos = untried_pos_[index];
  const size_t last = untried_.back();
  untried_[pos] = last;
  untried_pos_[last] = pos;
  untried_.pop_back();
}

std::unique_ptr<Searcher> make_searcher(SearcherKind kind) {
  switch (kind) {
    case SearcherKind::exhaustive: return std::make_unique<ExhaustiveSearcher>();
    case SearcherKind::random: return std::make_unique<RandomSearcher>();
    case SearcherKind::evolutionary: return std::make_unique<EvolutionarySearcher>();
  }
  return nullptr;
}

Result<std::unique_ptr<Searcher>> make_searcher(SearcherKind kind,
                                                const EvolutionaryParams& params) {
  if (kind != SearcherKind::evolutionary) return make_searcher(kind);
  if (auto error = evolutionary_params_error(params))
    return make_error(ErrorCode::invalid_argument, *error);
  return std::unique_ptr<Searcher>(std::make_unique<EvolutionarySearcher>(params));
}

}  // namespace flashcore
