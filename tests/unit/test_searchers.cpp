#include "tuning/searcher.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <deque>
#include <limits>
#include <set>
#include <vector>

#include "tuning/evolutionary_searcher.hpp"
#include "tuning/exhaustive_searcher.hpp"
#include "tuning/random_searcher.hpp"
#include "search_test_objective.hpp"

namespace flashcore {
namespace {

using test::test_objective;
using test::test_objective_optimum;

ArchInfo arch(std::string_view name) {
  auto info = find_arch(name);
  EXPECT_TRUE(info.has_value()) << name;
  return info.value_or(ArchInfo{});
}

SearchSpace make_space(const SearchSpaceAxes& axes = {}) {
  auto space = SearchSpace::create(ProblemClass{DType::fp16, 64, false}, arch("sm_90a"), axes);
  EXPECT_TRUE(space.ok()) << (space.ok() ? "" : space.error().message);
  return std::move(space).value();
}

// A space large enough that finding its optimum by luck is unlikely (with
// the default q_placement and smem_layout axes, both values each).
SearchSpaceAxes tuning_axes() {
  SearchSpaceAxes axes;
  axes.block_m = {16, 32, 48, 64, 96, 128, 192, 256};
  axes.block_n = {16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 256};
  axes.warps = {1, 2, 4, 8};
  axes.stages = {1, 2, 3, 4};
  return axes;
}

using Key = std::array<int, kTileFields.size()>;
Key key(const TileConfig& c) {
  Key k{};
  for (size_t i = 0; i < kTileFields.size(); ++i) k[i] = field_value(c, kTileFields[i]);
  return k;
}

constexpr auto kReg = QPlacement::registers;
constexpr auto kSmem = QPlacement::shared;
constexpr auto kSwz = SmemLayout::swizzled;
constexpr auto kPad = SmemLayout::padded;

struct SearchRun {
  std::vector<TileConfig> proposed;
  size_t found_at = 0;  // evaluations when the optimum was reported; 0 if never
};

// Drives a searcher the way the tuning loop does: keeps up to `ahead`
// configs proposed but unreported (the compile-ahead window) and reports
// them oldest first, or in a random order when `shuffle_seed` is non-zero,
// until `budget` evaluations or the space runs out.
SearchRun drive(Searcher& searcher, size_t budget, size_t ahead, const TileConfig* optimum = nullptr,
          uint64_t shuffle_seed = 0) {
  SearchRun run;
  std::deque<TileConfig> window;
  std::mt19937_64 order(shuffle_seed);
  while (searcher.evaluations() < budget) {
    while (window.size() < ahead && searcher.proposed() < budget) {
      auto config = searcher.next();
      if (!config) break;
      run.proposed.push_back(*config);
      window.push_back(*config);
    }
    if (window.empty()) break;
    EXPECT_EQ(searcher.pending(), window.size());
    const size_t pick = shuffle_seed ? uniform_index(order, window.size()) : 0;
    const TileConfig config = window[pick];
    window.erase(window.begin() + static_cast<std::ptrdiff_t>(pick));
    EXPECT_TRUE(searcher.report(config, test_objective(config)).ok());
    if (optimum && config == *optimum && run.found_at == 0) run.found_at = searcher.evaluations();
  }
  return run;
}

void expect_no_repeats(const std::vector<TileConfig>& proposed, const SearchSpace& space) {
  std::set<Key> seen;
  for (const auto& c : proposed) {
    EXPECT_TRUE(space.contains(c)) << canonical_config(c);
    // Proposals are space members: concrete, never an automatic field.
    EXPECT_NE(c.q_placement, QPlacement::automatic) << canonical_config(c);
    EXPECT_NE(c.smem_layout, SmemLayout::automatic) << canonical_config(c);
    EXPECT_TRUE(seen.insert(key(c)).second) << "proposed twice: " << canonical_config(c);
  }
}

TEST(SearcherObjective, HasAUniqueOptimumAndATrapThatFails) {
  for (const auto& space : {make_space(), make_space(tuning_axes())}) {
    const auto optimum = test_objective_optimum(space);
    ASSERT_TRUE(optimum.has_value());
    EXPECT_TRUE(optimum->unique);
    ASSERT_TRUE(space.contains(test::kTestObjectiveTrap));
    const TrialOutcome trap = test_objective(test::kTestObjectiveTrap);
    EXPECT_FALSE(trap.ok);
    EXPECT_LT(trap.time_us, optimum->time_us);  // a searcher ranking by time alone would pick it
    // The optimum depends on the two enum fields: changing either alone is slower.
    for (TileField field : {TileField::q_placement, TileField::smem_layout})
      for (int direction : {-1, 1})
        if (auto other = space.neighbour(optimum->config, field, direction)) {
          const TrialOutcome outcome = test_objective(*other);
          EXPECT_TRUE(!outcome.succeeded() || outcome.time_us > optimum->time_us)
              << canonical_config(*other);
        }
  }
  // Each enum field matters somewhere in each direction: neither value
  // is always faster, so the searcher cannot settle them once and for all.
  const SearchSpace space = make_space(tuning_axes());
  for (TileField field : {TileField::q_placement, TileField::smem_layout}) {
    int first_wins = 0, second_wins = 0;
    for (const auto& config : space.configs()) {
      auto other = space.neighbour(config, field, 1);
      if (!other) continue;
      const TrialOutcome a = test_objective(config), b = test_objective(*other);
      if (!a.succeeded() || !b.succeeded()) continue;
      (a.time_us < b.time_us ? first_wins : second_wins) += 1;
    }
    EXPECT_GT(first_wins, 0) << tile_field_name(field);
    EXPECT_GT(second_wins, 0) << tile_field_name(field);
  }
}

// ---- Shared bookkeeping -------------------------------------------------

TEST(Searcher, NextBeforeInitializeIsEmptyAndReportFails) {
  ExhaustiveSearcher searcher;
  EXPECT_EQ(searcher.next(), std::nullopt);
  EXPECT_FALSE(searcher.report(TileConfig{}, TrialOutcome{true, 1.0, ""}).ok());
  EXPECT_EQ(searcher.space(), nullptr);
}

TEST(Searcher, ReportRejectsConfigsNotProposedOrAlreadyReported) {
  const SearchSpace space = make_space();
  RandomSearcher searcher;
  searcher.initialize(space, 1);
  const TileConfig first = *searcher.next();

  auto outside = searcher.report(TileConfig{64, 64, 8, 2}, TrialOutcome{true, 1.0, ""});
  ASSERT_FALSE(outside.ok());
  EXPECT_EQ(outside.error().code, ErrorCode::invalid_argument);

  TileConfig never = space.at(0) == first ? space.at(1) : space.at(0);
  auto unproposed = searcher.report(never, TrialOutcome{true, 1.0, ""});
  ASSERT_FALSE(unproposed.ok());
  EXPECT_EQ(unproposed.error().code, ErrorCode::failed_precondition);

  EXPECT_TRUE(searcher.report(first, TrialOutcome{true, 5.0, ""}).ok());
  auto twice = searcher.report(first, TrialOutcome{true, 1.0, ""});
  ASSERT_FALSE(twice.ok());
  EXPECT_NE(twice.error().message.find("already reported"), std::string::npos);
  // Rejected reports change nothing.
  EXPECT_EQ(searcher.evaluations(), 1u);
  EXPECT_EQ(searcher.best()->outcome.time_us, 5.0);
}

TEST(Searcher, FailedTrialsNeverWinAndProgressCountsSinceImprovement) {
  const SearchSpace space = make_space();
  ExhaustiveSearcher searcher;
  searcher.initialize(space, 0);
  std::vector<TileConfig> c;
  for (int i = 0; i < 6; ++i) c.push_back(*searcher.next());

  ASSERT_TRUE(searcher.report(c[0], TrialOutcome{false, 0.5, "wrong result"}).ok());
  EXPECT_EQ(searcher.best(), std::nullopt);
  EXPECT_EQ(searcher.progress({}).best_time_us, std::nullopt);
  EXPECT_EQ(searcher.evaluations_since_improvement(), 1u);

  ASSERT_TRUE(searcher.report(c[1], TrialOutcome{true, 20.0, ""}).ok());
  EXPECT_EQ(searcher.best()->config, c[1]);
  EXPECT_EQ(searcher.evaluations_since_improvement(), 0u);

  const double nan = std::numeric_limits<double>::quiet_NaN();
  ASSERT_TRUE(searcher.report(c[2], TrialOutcome{true, nan, ""}).ok());    // broken timing
  ASSERT_TRUE(searcher.report(c[3], TrialOutcome{true, -1.0, ""}).ok());   // broken timing
  ASSERT_TRUE(searcher.report(c[4], TrialOutcome{true, 20.0, ""}).ok());   // a tie is no win
  EXPECT_EQ(searcher.best()->config, c[1]);
  EXPECT_EQ(searcher.evaluations_since_improvement(), 3u);

  ASSERT_TRUE(searcher.report(c[5], TrialOutcome{true, 12.5, ""}).ok());
  const SearchProgress progress = searcher.progress(std::chrono::seconds(3));
  EXPECT_EQ(progress.evaluations, 6u);
  EXPECT_EQ(progress.evaluations_since_improvement, 0u);
  EXPECT_EQ(progress.best_time_us, 12.5);
  EXPECT_EQ(progress.elapsed, std::chrono::seconds(3));
  EXPECT_EQ(searcher.trials().size(), 6u);
  EXPECT_EQ(searcher.trials()[0].outcome.failure, "wrong result");
}

TEST(Searcher, MakeSearcherByNameAndCheckedParams) {
  for (std::string_view name : {"exhaustive", "random", "evolutionary"}) {
    auto kind = parse_searcher_kind(name);
    ASSERT_TRUE(kind.has_value()) << name;
    auto searcher = make_searcher(*kind);
    ASSERT_NE(searcher, nullptr);
    EXPECT_EQ(searcher_kind_name(searcher->kind()), name);
  }
  EXPECT_EQ(parse_searcher_kind("annealing"), std::nullopt);

  EvolutionaryParams bad;
  bad.elites = bad.population;
  auto refused = make_searcher(SearcherKind::evolutionary, bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().message.rfind("elites:", 0), 0u) << refused.error().message;
  bad = EvolutionaryParams{};
  bad.mutation_rate = 1.5;
  EXPECT_FALSE(make_searcher(SearcherKind::evolutionary, bad).ok());
  EXPECT_TRUE(make_searcher(SearcherKind::random, bad).ok());  // not its parameter
  bad = EvolutionaryParams{};
  bad.refine_rate = -0.1;
  auto no_refine = make_searcher(SearcherKind::evolutionary, bad);
  ASSERT_FALSE(no_refine.ok());
  EXPECT_EQ(no_refine.error().message.rfind("refine_rate:", 0), 0u) << no_refine.error().message;
  EXPECT_TRUE(make_searcher(SearcherKind::evolutionary, EvolutionaryParams{}).ok());
}

// ---- Exhaustive ------------------------------------------------------------

TEST(Exhaustive, VisitsEveryConfigOnceInOrderAndFindsTheOptimum) {
  for (const auto& space : {make_space(), make_space(tuning_axes())}) {
    const auto optimum = test_objective_optimum(space);
    ExhaustiveSearcher searcher;
    searcher.initialize(space, 123, {space.at(space.size() - 1)});  // seeds are ignored
    const SearchRun run = drive(searcher, std::numeric_limits<size_t>::max(), 3);
    EXPECT_EQ(run.proposed, space.configs());
    EXPECT_EQ(searcher.next(), std::nullopt);
    EXPECT_TRUE(searcher.exhausted());
    ASSERT_TRUE(searcher.best().has_value());
    EXPECT_EQ(searcher.best()->config, optimum->config);
    EXPECT_NE(searcher.best()->config, test::kTestObjectiveTrap);
  }
}

// ---- Random ----------------------------------------------------------------

TEST(Random, VisitsEachConfigOnceThenStops) {
  const SearchSpace space = make_space(tuning_axes());
  const auto optimum = test_objective_optimum(space);
  RandomSearcher a, b, c;
  a.initialize(space, 99);
  b.initialize(space, 99);
  c.initialize(space, 100);
  const SearchRun ra = drive(a, std::numeric_limits<size_t>::max(), 1);
  const SearchRun rb = drive(b, std::numeric_limits<size_t>::max(), 4, nullptr, 5);
  const SearchRun rc = drive(c, std::numeric_limits<size_t>::max(), 1);

  EXPECT_EQ(ra.proposed.size(), space.size());
  expect_no_repeats(ra.proposed, space);
  EXPECT_EQ(a.next(), std::nullopt);
  EXPECT_TRUE(a.exhausted());
  EXPECT_EQ(a.best()->config, optimum->config);
  EXPECT_EQ(ra.proposed, rb.proposed);     // the seed alone decides the order
  EXPECT_NE(ra.proposed, rc.proposed);     // another seed, another order
  EXPECT_NE(ra.proposed, space.configs()); // and it is not the space's order
}

TEST(Random, ProposesTheSeedsFirst) {
  const SearchSpace space = make_space();
  // Seeds from older tuning rows may carry automatic fields: they stand for
  // their resolved twin (128x96w8: 16 rows a warp, Q in registers; D 64 swizzled).
  const TileConfig automatic{128, 96, 8, 2};
  const TileConfig twin{128, 96, 8, 2, kReg, kSwz};
  ASSERT_EQ(resolved(automatic, space.problem()), twin);
  const std::vector<TileConfig> seeds = {automatic, {64, 64, 8, 2, kReg, kSwz} /* invalid */,
                                         {64, 48, 4, 1, kSmem, kPad}, twin /* repeated */};
  RandomSearcher searcher;
  searcher.initialize(space, 4, seeds);
  EXPECT_EQ(searcher.next(), twin);
  EXPECT_EQ(searcher.next(), seeds[2]);
  ASSERT_TRUE(searcher.report(twin, test_objective(twin)).ok());
  ASSERT_TRUE(searcher.report(seeds[2], test_objective(seeds[2])).ok());
  const SearchRun rest = drive(searcher, std::numeric_limits<size_t>::max(), 1);
  EXPECT_EQ(rest.proposed.size() + 2, space.size());
  for (const auto& c : rest.proposed) EXPECT_NE(c, twin);
}

// ---- Evolutionary ------------------------------------------------------------

TEST(Evolution, NeverProposesAConfigTwice) {
  const SearchSpace small = make_space();
  const SearchSpace large = make_space(tuning_axes());
  for (uint64_t seed = 1; seed <= 100; ++seed) {
    for (const SearchSpace* space : {&small, &large}) {
      EvolutionarySearcher searcher;
      searcher.initialize(*space, seed);
      // To exhaustion, so the late generations (where most children were
      // already tried) are covered too.
      const SearchRun run = drive(searcher, std::numeric_limits<size_t>::max(), 1 + seed % 5, nullptr,
                            seed % 2 ? seed : 0);
      ASSERT_EQ(run.proposed.size(), space->size()) << "seed " << seed;
      expect_no_repeats(run.proposed, *space);
      EXPECT_EQ(searcher.next(), std::nullopt);
    }
  }
}

TEST(Evolution, SeedsAreTheFirstProposals) {
  const SearchSpace space = make_space(tuning_axes());
  const std::vector<TileConfig> seeds = {
      {128, 64, 4, 2, kReg, kSwz}, {48, 64, 8, 2, kReg, kSwz} /* invalid */,
      {96, 112, 2, 3, kSmem, kPad}, {128, 64, 4, 2, kReg, kSwz} /* repeated */,
      {256, 80, 8, 1, kSmem, kSwz}};
  const std::vector<TileConfig> expected = {seeds[0], seeds[2], seeds[4]};
  for (uint64_t seed : {1, 2, 3}) {
    EvolutionarySearcher searcher;
    searcher.initialize(space, seed, seeds);
    for (const auto& config : expected) EXPECT_EQ(searcher.next(), config);
    // The rest of the first population is random, so it differs between seeds.
    EXPECT_TRUE(space.contains(*searcher.next()));
  }

  // More seeds than one population: only the first `population` are kept.
  EvolutionaryParams params;
  params.population = 2;
  EvolutionarySearcher narrow(params);
  narrow.initialize(space, 9, seeds);
  EXPECT_EQ(narrow.next(), seeds[0]);
  EXPECT_EQ(narrow.next(), seeds[2]);
}

TEST(Evolution, GenerationsAdvanceWhenTheirResultsAreIn) {
  const SearchSpace space = make_space(tuning_axes());
  EvolutionaryParams params;
  params.population = 6;
  params.elites = 2;
  EvolutionarySearcher searcher(params);
  searcher.initialize(space, 11);

  // Compile ahead past the first generation: 6 of generation 0, 4 of generation 1.
  std::vector<TileConfig> proposed;
  for (int i = 0; i < 10; ++i) proposed.push_back(*searcher.next());
  EXPECT_EQ(searcher.generation(), 0u);
  // Reports out of order: generation 1's results do not complete generation 0.
  for (int i = 9; i >= 6; --i) ASSERT_TRUE(searcher.report(proposed[i], test_objective(proposed[i])).ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(searcher.report(proposed[i], test_objective(proposed[i])).ok());
  EXPECT_EQ(searcher.generation(), 0u);
  ASSERT_TRUE(searcher.report(proposed[5], test_objective(proposed[5])).ok());
  // Generation 0 complete, and generation 1 (all 4 reported) right behind it.
  EXPECT_EQ(searcher.generation(), 2u);

  for (int i = 0; i < 3; ++i) {
    const TileConfig c = *searcher.next();
    ASSERT_TRUE(searcher.report(c, test_objective(c)).ok());
  }
  EXPECT_EQ(searcher.generation(), 2u);
  const TileConfig c = *searcher.next();
  ASSERT_TRUE(searcher.report(c, test_objective(c)).ok());
  EXPECT_EQ(searcher.generation(), 3u);
}

TEST(Evolution, ReplaysExactlyFromItsSeed) {
  const SearchSpace space = make_space(tuning_axes());
  auto sequence = [&](uint64_t seed) {
    EvolutionarySearcher searcher;
    searcher.initialize(space, seed);
    return drive(searcher, 80, 4, nullptr, 3).proposed;
  };
  EXPECT_EQ(sequence(5), sequence(5));
  EXPECT_NE(sequence(5), sequence(6));

  // initialize() starts over.
  EvolutionarySearcher searcher;
  searcher.initialize(space, 5);
  (void)drive(searcher, 30, 2);
  searcher.initialize(space, 5);
  EXPECT_EQ(searcher.evaluations(), 0u);
  EXPECT_EQ(searcher.generation(), 0u);
  EXPECT_EQ(drive(searcher, 80, 4, nullptr, 3).proposed, sequence(5));
}

TEST(Evolution, FailedConfigsNeverBecomeBest) {
  const SearchSpace space = make_space(tuning_axes());
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    EvolutionarySearcher searcher;
    // The trap (fast, wrong) and spilling configs offered as seeds.
    searcher.initialize(space, seed,
                        {test::kTestObjectiveTrap, TileConfig{256, 64, 1, 2, kSmem, kSwz},
                         TileConfig{128, 64, 1, 2, kReg, kPad}});
    (void)drive(searcher, space.size() / 4, 4);
    ASSERT_TRUE(searcher.best().has_value());
    EXPECT_TRUE(test_objective(searcher.best()->config).ok);
  }

  // When everything fails there is no best, and the search still covers the space.
  EvolutionarySearcher searcher;
  searcher.initialize(space, 3);
  size_t proposals = 0;
  while (auto c = searcher.next()) {
    ++proposals;
    ASSERT_TRUE(searcher.report(*c, TrialOutcome{false, 1.0, "does not compile"}).ok());
  }
  EXPECT_EQ(proposals, space.size());
  EXPECT_EQ(searcher.best(), std::nullopt);
}

// The measure of the searcher: how often it finds the known optimum within a
// stated budget, compared with random sampling for the same budget.
struct Rates {
  double evolutionary = 0;
  double random = 0;
  size_t median_evaluations = 0;  // evolutionary, to reach the optimum (budget + 1 if not)
};

Rates success_rates(const SearchSpace& space, size_t budget, size_t ahead, int runs) {
  const TileConfig optimum = test_objective_optimum(space)->config;
  int evo_hits = 0, random_hits = 0;
  std::vector<size_t> found_at;
  for (int seed = 1; seed <= runs; ++seed) {
    EvolutionarySearcher evo;
    evo.initialize(space, seed);
    const SearchRun run = drive(evo, budget, ahead, &optimum, ahead > 1 ? seed : 0);
    expect_no_repeats(run.proposed, space);
    EXPECT_LE(run.proposed.size(), budget);
    evo_hits += run.found_at != 0;
    found_at.push_back(run.found_at != 0 ? run.found_at : budget + 1);
    EXPECT_EQ(run.found_at != 0, evo.best()->config == optimum);

    RandomSearcher random;
    random.initialize(space, seed);
    random_hits += drive(random, budget, ahead, &optimum).found_at != 0;
  }
  std::sort(found_at.begin(), found_at.end());
  return {double(evo_hits) / runs, double(random_hits) / runs, found_at[found_at.size() / 2]};
}

void print_rates(const SearchSpace& space, size_t budget, size_t ahead, const Rates& rates) {
  std::printf("[ rate     ] %zu configs, budget %zu, compile-ahead %zu, 100 seeds: evolutionary "
              "%.0f%% (median %zu evaluations), random %.0f%%\n",
              space.size(), budget, ahead, 100 * rates.evolutionary, rates.median_evaluations,
              100 * rates.random);
}

TEST(Evolution, FindsTheOptimumWithinAFifthOfTheSpace) {
  const SearchSpace space = make_space(tuning_axes());
  const size_t budget = space.size() / 5;
  for (size_t ahead : {1, 4}) {
    const Rates rates = success_rates(space, budget, ahead, 100);
    print_rates(space, budget, ahead, rates);
    EXPECT_GE(rates.evolutionary, 0.95);
    EXPECT_GT(rates.evolutionary, rates.random);
  }
}

TEST(Evolution, FindsTheOptimumOfTheDefaultSpaceWithinAThirdOfIt) {
  // The default space is small (180 configs for head_dim 64 on sm_90a, of
  // which 45 numeric tiles times 2 x 2 enum choices): the first population
  // is 8 of it and children soon collide with tried configs. Measured on
  // the synthetic objective, 100 seeds: a fifth of the space (36) finds the
  // optimum in 74-82% of runs (compile-ahead 4 and 1; 69-81% before local
  // refinement, refine_rate 0.4), a third in 97-100%; so the stated budget
  // is a third. (On the GPU the tuner is judged by the time it reaches, not
  // by hitting the one optimum: bench/RESULTS.md.)
  const SearchSpace space = make_space();
  const size_t budget = space.size() / 3;
  for (size_t ahead : {1, 4}) {
    const Rates rates = success_rates(space, budget, ahead, 100);
    print_rates(space, budget, ahead, rates);
    EXPECT_GE(rates.evolutionary, 0.95);
    EXPECT_GT(rates.evolutionary, rates.random);
  }
}

}  // namespace
}  // namespace flashcore
