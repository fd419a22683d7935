// Searchers behind one interface: a searcher proposes tile configs from a
// SearchSpace, is told each one's outcome, and keeps the best. The tuning
// loop compiles ahead, so several configs may be proposed before their
// results come back; no searcher ever proposes a config twice.
//
// The public calls are non-virtual and do the bookkeeping every searcher
// shares (what was proposed, reported, the best, progress); a searcher
// supplies only its choice of the next config (on_initialize, on_next,
// on_report). Not thread-safe: the tuning loop serialises calls.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "tuning/search_space.hpp"
#include "tuning/stop_condition.hpp"
#include "family/tile_config.hpp"

namespace flashcore {

struct TrialOutcome {
  bool ok = false;        // compiled, passed the correctness gate and was timed
  double time_us = 0.0;   // lower is better; meaningful only when ok
  std::string failure;    // why not ok: compile error, spill, wrong result, timeout ...

  // A trial competes for best only when it succeeded with a usable time; a
  // NaN or negative time from a broken measurement never wins.
  bool succeeded() const;
};

struct Trial {
  TileConfig config;
  TrialOutcome outcome;
};

enum class SearcherKind { exhaustive, random, evolutionary };
std::string_view searcher_kind_name(SearcherKind kind);
std::optional<SearcherKind> parse_searcher_kind(std::string_view name);

class Searcher {
 public:
  virtual ~Searcher() = default;
  virtual SearcherKind kind() const = 0;

  // Starts (or restarts) a search over a copy of `space`, so pruning the
  // caller's space afterwards changes nothing here. `seeds` are configs worth
  // trying first (the best of the nearest tuned shapes); those not in the
  // space are ignored, and a searcher may ignore them all (exhaustive does).
  // Every choice is a function of `seed`, so a search replays exactly.
  void initialize(const SearchSpace& space, uint64_t seed,
                  const std::vector<TileConfig>& seeds = {});

  // The next config to evaluate, never one proposed before; nullopt once
  // every config in the space has been proposed (or before initialize()).
  std::optional<TileConfig> next();

  // The outcome of a config next() returned. An error, changing nothing, for
  // a config outside the space, never proposed, or already reported.
  Status report(const TileConfig& config, const TrialOutcome& outcome);

  // The fastest succeeded trial; ties go to the earlier report. Failed
  // trials never win, whatever their time.
  std::optional<Trial> best() const;
  const std::vector<Trial>& trials() const { return trials_; }  // in report order

  size_t proposed() const { return proposed_; }
  size_t evaluations() const { return trials_.size(); }
  size_t pending() const { return proposed_ - trials_.size(); }  // proposed, not yet reported
  size_t evaluations_since_improvement() const { return since_improvement_; }
  bool exhausted() const { return space_ && untried_.empty(); }
  SearchProgress progress(std::chrono::nanoseconds elapsed) const;
  const SearchSpace* space() const { return space_ ? &*space_ : nullptr; }

 protected:
  // Reset per-search state; seeds are already reduced to indices in the space,
  // without duplicates, in the caller's order.
  virtual void on_initialize(const std::vector<size_t>& seed_indices) = 0;
  // The index of the next config. Called only while untried configs remain;
  // must return an untried one.
  virtual size_t on_next() = 0;
  virtual void on_report(size_t /*index*/, const TrialOutcome& /*outcome*/) {}

  const SearchSpace& search_space() const { return *space_; }
  std::mt19937_64& rng() { return rng_; }
  bool tried(size_t index) const { return state_[index] != State::untried; }
  size_t untried_count() const { return untried_.size(); }
  size_t random_untried();  // uniform over the untried; needs untried_count() > 0
  const TrialOutcome* outcome(size_t index) const;  // null until reported

 private:
  enum class State : uint8_t { untried, pending, reported };
  void mark_tried(size_t index);

  std::optional<SearchSpace> space_;
  std::mt19937_64 rng_;
  std::vector<State> state_;
  std::vector<size_t> untried_;      // indices not yet proposed, unordered
  std::vector<size_t> untried_pos_;  // index -> position in untried_ (O(1) removal)
  std::vector<std::optional<TrialOutcome>> outcomes_;
  std::vector<Trial> trials_;
  std::optional<size_t> best_trial_;
  size_t proposed_ = 0;
  size_t since_improvement_ = 0;
};

struct EvolutionaryParams;  // evolutionary_searcher.hpp

// A searcher of `kind`, evolutionary with default parameters.
std::unique_ptr<Searcher> make_searcher(SearcherKind kind);
// As above with `params` for an evolutionary searcher (ignored otherwise);
// invalid params are an INVALID_ARGUMENT naming the parameter.
Result<std::unique_ptr<Searcher>> make_searcher(SearcherKind kind,
                                                const EvolutionaryParams& params);

}  // namespace flashcore
