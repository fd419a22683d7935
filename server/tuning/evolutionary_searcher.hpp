// A genetic search over tile configs (in the manner of EvoEngineer): a
// population bred by tournament selection, uniform crossover of fields and
// mutation to neighbouring axis values, with elitism, seeded from the best
// configs of the nearest tuned shapes.
//
// Generations and compile-ahead: the first generation is the seeds plus
// random configs; each later one is `population - elites` children, the
// elites of the previous population being carried over without being measured
// again. A generation completes once all its results are in. When the caller
// asks for more configs than the open generation has slots (it compiles
// ahead), children of the following generation are bred from everything
// reported so far, so next() never blocks on results.
//
// No config is proposed twice: a child already tried is bred again (new
// parents, at least one mutated field) a bounded number of times, then
// replaced by a random untried config; next() is empty once all are tried.
#pragma once

#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "tuning/searcher.hpp"

namespace flashcore {

struct EvolutionaryParams {
  // Defaults chosen on the synthetic test objective (tests/unit/test_searchers.cpp,
  // then an 860-config four-field space, 200 seeds, compile-ahead 4): tournaments of 4 and a
  // mutation rate of 0.15-0.25 found the optimum in a median of about 45
  // evaluations and at worst ~100; tournaments of 2 or a rate of 0.5 needed
  // 1.5-2x as many. Retune once real kernel timings exist.
  size_t population = 8;
  size_t tournament_size = 4;  // configs drawn (with replacement) per parent; the fastest wins
  double mutation_rate = 0.2;  // chance that each field moves to a neighbouring value
  size_t elites = 2;           // fastest configs carried into the next population
  size_t max_mutation_attempts = 16;  // re-breedings when a child was tried before a random one
  // Chance that a child is instead an untried one-step neighbour of the best
  // config so far (local refinement, as memetic searches add to evolution).
  // On the H100 the last percent often sat one field away from the search's
  // best (stages 2 -> 3, say), which crossover and mutation reached slowly.
  // 0.4 cut the median evaluations to the optimum of the large test space
  // from ~70 to ~45 (0.25: ~55, 0.6: ~45, worse on the small space).
  double refine_rate = 0.4;
};

// nullopt when usable, else "<param>: <reason>".
std::optional<std::string> evolutionary_params_error(const EvolutionaryParams& params);

class EvolutionarySearcher final : public Searcher {
 public:
  // `params` must pass evolutionary_params_error (make_searcher checks).
  explicit EvolutionarySearcher(EvolutionaryParams params = {});

  SearcherKind kind() const override { return SearcherKind::evolutionary; }
  const EvolutionaryParams& params() const { return params_; }
  // Generations completed: 0 until the first population's results are all in.
  size_t generation() const { return generation_; }

 protected:
  void on_initialize(const std::vector<size_t>& seed_indices) override;
  size_t on_next() override;
  void on_report(size_t index, const TrialOutcome& outcome) override;

 private:
  struct Generation {
    size_t slots = 0;
    std::vector<size_t> members;
    size_t reported = 0;
  };

  size_t initial_member();
  size_t breed();
  std::optional<size_t> refine();
  size_t tournament(const std::vector<size_t>& pool);
  bool faster(size_t a, size_t b) const;
  std::vector<size_t> elites_of(const std::vector<size_t>& population) const;
  void complete_generations();

  EvolutionaryParams params_;
  std::vector<size_t> seeds_;
  size_t next_seed_ = 0;
  size_t generation_ = 0;
  std::vector<size_t> population_;    // the last completed population, all reported
  std::deque<Generation> open_;       // open_[i] is generation generation_ + i
  std::vector<size_t> generation_of_; // per space index, for the configs proposed
};

}  // namespace flashcore
