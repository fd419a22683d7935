// Tuned bests shared across the fleet, under the full tuning key (scope and
// toolchain, best_json's fleet_tuning_key). Trials stay in each box's
// database; only bests travel. Implemented over Redis (redis_bests); the
// tuning job and Compile's use_tuned_config ask it when the box's own
// database has no current best, and a job publishes what it stores.
#pragma once

#include <optional>

#include "tuning/tuning_db.hpp"

namespace flashcore {

class FleetBests {
 public:
  virtual ~FleetBests() = default;
  // The fleet's best for the scope made with this toolchain; nullopt when
  // none (or the fleet is out of reach).
  virtual std::optional<BestRecord> lookup(const TuningScope& scope,
                                           const ToolchainRecord& toolchain) = 0;
  // Best effort; kept only where it is better measured than the fleet's.
  virtual void publish(const BestRecord& best) = 0;
};

}  // namespace flashcore
