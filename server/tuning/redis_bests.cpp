#include "tuning/redis_bests.hpp"

#include <spdlog/spdlog.h>

#include "tuning/best_json.hpp"

namespace flashcore {

RedisBests::RedisBests(std::shared_ptr<redis::Client> client, std::string prefix)
    : client_(std::move(client)), prefix_(std::move(prefix)) {}

std::string RedisBests::key_for(const TuningScope& scope, const ToolchainRecord& toolchain) const {
  return prefix_ + "best:" + fleet_tuning_key(scope, toolchain);
}

std::optional<BestRecord> RedisBests::lookup(const TuningScope& scope,
                                             const ToolchainRecord& toolchain) {
  const std::string name = key_for(scope, toolchain);
  auto reply = client_->command({"GET", name});
  if (!reply || reply->type != redis::Reply::Type::string) return std::nullopt;
  const auto doc = nlohmann::json::parse(reply->str, nullptr, /*allow_exceptions=*/false);
  std::string why;
  auto best = doc.is_discarded() ? std::nullopt : best_from_json(doc, &why);
  // The key names the scope and toolchain: a value for another is as bad as garbage.
  if (best && key_for(best->scope, best->toolchain) != name) {
    why = "it names another tuning key";
    best.reset();
  }
  if (!best) {
    spdlog::warn("fleet tuning result {} is unusable ({}); deleting it", name, why);
    (void)client_->command({"DEL", name});
    return std::nullopt;
  }
  best->trial_id = 0;  // trials stay on the box that ran them
  return best;
}

void RedisBests::publish(const BestRecord& best) {
  const std::string name = key_for(best.scope, best.toolchain);
  if (auto current = lookup(best.scope, best.toolchain); current && !better_measured(best, *current))
    return;  // the fleet has a better one (a race between two publishers keeps either: both are good)
  BestRecord shared = best;
  shared.trial_id = 0;
  if (!client_->command({"SET", name, best_to_json(shared).dump()}))
    spdlog::debug("fleet tuning result {} not published (redis out of reach)", name);
}

}  // namespace flashcore
