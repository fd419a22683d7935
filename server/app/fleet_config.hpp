// The fleet's settings (Redis shared tier, Prometheus metrics), kept beside
// config.cpp's layers: the same order (defaults, TOML, FLASHCORE_*
// environment, flags) and the same rules (unknown or out-of-range values are
// errors naming the setting).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <toml++/toml.h>

#include "common/result.hpp"

namespace CLI {
class App;
}

namespace flashcore {

struct FleetConfig {
  std::string redis_url;  // redis://[user:password@]host:port/db; empty = no shared tier
  std::chrono::milliseconds redis_connect_timeout{500};
  std::chrono::milliseconds redis_command_timeout{1000};
  std::string metrics_listen;  // host:port for Prometheus /metrics; empty = none
};

// One layer's fleet settings, every field optional.
struct FleetLayer {
  std::optional<std::string> redis_url;
  std::optional<int64_t> redis_connect_timeout_ms;
  std::optional<int64_t> redis_command_timeout_ms;
  std::optional<std::string> metrics_listen;
};

void apply_fleet(FleetLayer& base, const FleetLayer& top);
// nullopt: `key` is not a fleet key; else the result of reading it.
std::optional<Status> read_fleet_toml_key(std::string_view key, const toml::node& node,
                                          const std::string& path, FleetLayer& out);
FleetLayer read_fleet_env();
void add_fleet_flags(CLI::App& app, FleetLayer& flags);
Result<FleetConfig> resolve_fleet(const FleetLayer& layer);

}  // namespace flashcore
