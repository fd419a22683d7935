#include "app/fleet_config.hpp"

#include <CLI/CLI.hpp>
#include <cstdlib>

#include "redis/redis_client.hpp"

namespace flashcore {
namespace {

std::optional<std::string> env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

template <typename T>
void over(std::optional<T>& base, const std::optional<T>& top) {
  if (top) base = top;
}

Error bad_setting(std::string message) {
  return make_error(ErrorCode::invalid_argument, std::move(message));
}

Result<std::chrono::milliseconds> timeout(std::string_view name, int64_t ms) {
  if (ms < 1 || ms > 600000)
    return bad_setting(std::string(name) + ": " + std::to_string(ms) + " must be in [1, 600000]");
  return std::chrono::milliseconds(ms);
}

}  // namespace

void apply_fleet(FleetLayer& base, const FleetLayer& top) {
  over(base.redis_url, top.redis_url);
  over(base.redis_connect_timeout_ms, top.redis_connect_timeout_ms);
  over(base.redis_command_timeout_ms, top.redis_command_timeout_ms);
  over(base.metrics_listen, top.metrics_listen);
}

std::optional<Status> read_fleet_toml_key(std::string_view key, const toml::node& node,
                                          const std::string& path, FleetLayer& out) {
  const auto string_key = [&](std::optional<std::string>& field) -> Status {
    if (!node.is_string())
      return bad_setting("config file " + path + ": " + std::string(key) + " must be a string");
    field = node.value<std::string>();
    return ok_status();
  };
  const auto int_key = [&](std::optional<int64_t>& field) -> Status {
    if (!node.is_integer())
      return bad_setting("config file " + path + ": " + std::string(key) + " must be an integer");
    field = node.value<int64_t>();
    return ok_status();
  };
  if (key == "redis") return string_key(out.redis_url);
  if (key == "redis_connect_timeout_ms") return int_key(out.redis_connect_timeout_ms);
  if (key == "redis_command_timeout_ms") return int_key(out.redis_command_timeout_ms);
  if (key == "metrics_listen") return string_key(out.metrics_listen);
  return std::nullopt;
}

FleetLayer read_fleet_env() {
  FleetLayer layer;
  layer.redis_url = env("FLASHCORE_REDIS");
  layer.metrics_listen = env("FLASHCORE_METRICS_LISTEN");
  return layer;
}

void add_fleet_flags(CLI::App& app, FleetLayer& flags) {
  app.add_option_function<std::string>(
      "--redis", [&flags](const std::string& v) { flags.redis_url = v; },
      "shared cubin tier and fleet locks in Redis: redis://[user:password@]host:port/db "
      "(FLASHCORE_REDIS; default none)");
  app.add_option_function<int64_t>(
      "--redis-connect-timeout-ms", [&flags](const int64_t& v) { flags.redis_connect_timeout_ms = v; },
      "Redis connect timeout (default 500)");
  app.add_option_function<int64_t>(
      "--redis-command-timeout-ms", [&flags](const int64_t& v) { flags.redis_command_timeout_ms = v; },
      "Redis command timeout (default 1000)");
  app.add_option_function<std::string>(
      "--metrics-listen", [&flags](const std::string& v) { flags.metrics_listen = v; },
      "serve Prometheus /metrics on host:port, port 0 picks one (FLASHCORE_METRICS_LISTEN; "
      "default none)");
}

Result<FleetConfig> resolve_fleet(const FleetLayer& layer) {
  FleetConfig config;
  if (layer.redis_url && !layer.redis_url->empty()) {
    auto url = redis::parse_redis_url(*layer.redis_url);
    if (!url) return url.error();
    config.redis_url = *layer.redis_url;
  }
  if (layer.redis_connect_timeout_ms) {
    auto ms = timeout("redis_connect_timeout_ms", *layer.redis_connect_timeout_ms);
    if (!ms) return ms.error();
    config.redis_connect_timeout = *ms;
  }
  if (layer.redis_command_timeout_ms) {
    auto ms = timeout("redis_command_timeout_ms", *layer.redis_command_timeout_ms);
    if (!ms) return ms.error();
    config.redis_command_timeout = *ms;
  }
  if (layer.metrics_listen) config.metrics_listen = *layer.metrics_listen;
  return config;
}

}  // namespace flashcore
