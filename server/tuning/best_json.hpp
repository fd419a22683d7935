// A tuned best as JSON, the one form it travels in between boxes: published
// to the fleet's Redis (redis_bests) and written by `flashcore results
// export` / read by `import`. Every field of the database's row, so a best
// moved to another box reads exactly as on the box that measured it (its
// trial id excepted: trials stay in each box's database).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "tuning/tuning_db.hpp"

namespace flashcore {

// The full tuning key: problem class, bucket (with layout and GQA ratio),
// device name, arch, NVRTC version and template source hash, delimited.
std::string fleet_tuning_key(const TuningScope& scope, const ToolchainRecord& toolchain);

nlohmann::json best_to_json(const BestRecord& best);
// nullopt, with the reason, on a missing field or a value that does not parse.
std::optional<BestRecord> best_from_json(const nlohmann::json& doc, std::string* why);

// Which of two bests of one key to keep: a validated one over one that is
// not, then the faster median; ties keep `current`.
bool better_measured(const BestRecord& candidate, const BestRecord& current);

}  // namespace flashcore
