// FleetBests over Redis: one string per full tuning key,
// `<prefix>best:<fleet_tuning_key>`, holding best_json's JSON.
#pragma once

#include <memory>
#include <string>

#include "redis/redis_client.hpp"
#include "tuning/fleet_bests.hpp"

namespace flashcore {

class RedisBests final : public FleetBests {
 public:
  explicit RedisBests(std::shared_ptr<redis::Client> client, std::string prefix = "flashcore:v1:");
  std::optional<BestRecord> lookup(const TuningScope& scope,
                                   const ToolchainRecord& toolchain) override;
  void publish(const BestRecord& best) override;

  std::string key_for(const TuningScope& scope, const ToolchainRecord& toolchain) const;

 private:
  std::shared_ptr<redis::Client> client_;
  std::string prefix_;
};

}  // namespace flashcore
