// A SYNTHETIC TEST OBJECTIVE for the searcher tests: a stand-in for measured
// kernel time so searchers can be tested without a GPU. It is not a model of
// real performance. It depends on every TileConfig field: a tilted bowl in
// log2(block_m), log2(block_n), log2(warps) and stages with interaction
// terms, a ripple that penalises some block_n values in the swizzled layout,
// a Q-placement term that rewards registers while Q's fragments are few
// (rows per warp) and punishes them beyond, a padded layout that costs more
// with every stage, and a few configs that "fail", one of them a trap whose
// time is the lowest of all (a fast kernel that gives wrong results, which
// the correctness gate exists to catch).
//
// Its configs are always concrete (searchers propose space members); an
// automatic field here would be a test bug, so it is scored as a failure.
#pragma once

#include <cmath>
#include <optional>
#include <string>

#include "tuning/search_space.hpp"
#include "tuning/searcher.hpp"
#include "family/tile_config.hpp"

namespace flashcore::test {

inline constexpr TileConfig kTestObjectiveTrap{64, 64, 4, 3, QPlacement::registers,
                                               SmemLayout::swizzled};

// Time in microseconds the synthetic objective gives `config`, ignoring failure.
inline double test_objective_time_us(const TileConfig& c) {
  const double m = std::log2(static_cast<double>(c.block_m)) - 6.3;
  const double n = std::log2(static_cast<double>(c.block_n)) - 6.15;
  const double w = std::log2(static_cast<double>(c.warps)) - 2.1;
  const double s = static_cast<double>(c.stages) - 2.6;
  double t = 1.0 + 0.30 * m * m + 0.25 * n * n + 0.20 * w * w + 0.15 * s * s + 0.10 * m * n -
             0.06 * w * s + 0.04 * m * w;
  const bool ripple = (c.block_n / 16) % 3 == 0;  // block_n 48, 96, 144, ...
  if (c.smem_layout == SmemLayout::padded) {
    t += 0.03 + 0.011 * c.stages;  // no ripple, but every stage's rows are longer
  } else if (ripple) {
    t += 0.07;
  }
  // "Registers" per thread for Q at head_dim 64: 16 per 16 rows a warp owns.
  const int q_registers = (c.block_m / c.warps / 16) * 16;
  if (c.q_placement == QPlacement::registers)
    t += q_registers <= 32 ? -0.08 + 0.002 * q_registers : 0.05 * (q_registers / 32.0 - 1.0);
  return 50.0 * t;
}

// The synthetic objective as a trial outcome, failures included.
inline TrialOutcome test_objective(const TileConfig& c) {
  TrialOutcome outcome;
  outcome.time_us = test_objective_time_us(c);
  if (c.q_placement == QPlacement::automatic || c.smem_layout == SmemLayout::automatic) {
    outcome.failure = "test objective: scored an automatic config";
    return outcome;
  }
  if (c == kTestObjectiveTrap) {
    outcome.time_us = 1.0;  // faster than anything, and wrong
    outcome.failure = "test objective: wrong result";
    return outcome;
  }
  if (c.warps == 1 && c.block_m >= 128) {
    outcome.failure = "test objective: register spill";
    return outcome;
  }
  if (c.q_placement == QPlacement::registers && c.block_m / c.warps >= 96) {
    outcome.failure = "test objective: register spill (Q in registers)";
    return outcome;
  }
  if (c.stages == 4 && c.block_n >= 192) {
    outcome.failure = "test objective: launch failure";
    return outcome;
  }
  outcome.ok = true;
  return outcome;
}

// The best succeeded config of `space` by brute force, and whether it is the
// only config with that time.
struct TestOptimum {
  TileConfig config;
  double time_us = 0.0;
  bool unique = true;
};

inline std::optional<TestOptimum> test_objective_optimum(const SearchSpace& space) {
  std::optional<TestOptimum> best;
  for (const auto& config : space.configs()) {
    const TrialOutcome outcome = test_objective(config);
    if (!outcome.succeeded()) continue;
    if (!best || outcome.time_us < best->time_us) {
      best = TestOptimum{config, outcome.time_us, true};
    } else if (outcome.time_us == best->time_us) {
      best->unique = false;
    }
  }
  return best;
}

}  // namespace flashcore::test
