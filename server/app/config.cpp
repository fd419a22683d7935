#include "app/config.hpp"

#include <spdlog/common.h>
#include <toml++/toml.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdlib>
#include <optional>

#include "family/tile_config.hpp"

namespace flashcore {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
// gRPC takes message limits as int.
constexpr size_t kMaxMessageMb = 2047;

Error bad_setting(std::string message) {
  return make_error(ErrorCode::invalid_argument, std::move(message));
}

std::optional<std::string> env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

// Settings as they come from any layer: every field optional, in the units
// the user writes (MB, ms), so the layers merge field by field.
struct Layer {
  FleetLayer fleet;  // redis*, metrics_listen (fleet_config.hpp)
  std::optional<std::string> listen_address;
  std::optional<std::string> cache_dir;
  std::optional<int64_t> memory_cache_mb;
  std::optional<int64_t> disk_cache_mb;
  std::optional<int64_t> compile_threads;
  std::optional<int64_t> max_queued_compiles;
  std::optional<int64_t> max_concurrent_rpcs;
  std::optional<int64_t> rpc_queues;
  std::optional<int64_t> max_message_mb;
  std::optional<std::string> templates_dir;
  std::optional<std::string> default_arch;
  std::optional<int64_t> drain_timeout_ms;
  std::optional<std::string> log_level;
  std::optional<std::string> port_file;
  std::optional<std::string> worker_binary;
  std::optional<std::string> tuning_db;
  std::optional<int64_t> evaluation_timeout_ms;
  // A shared box.
  std::optional<std::string> auth_tokens, tls_cert, tls_key, tls_client_ca;
  std::optional<bool> insecure;
  std::optional<int64_t> quota_concurrent_compiles, quota_tune_jobs,
      quota_tune_gpu_seconds_per_hour;
};

template <typename T>
void over(std::optional<T>& base, const std::optional<T>& top) {
  if (top) base = top;
}

void apply(Layer& base, const Layer& top) {
  apply_fleet(base.fleet, top.fleet);
  over(base.listen_address, top.listen_address);
  over(base.cache_dir, top.cache_dir);
  over(base.memory_cache_mb, top.memory_cache_mb);
  over(base.disk_cache_mb, top.disk_cache_mb);
  over(base.compile_threads, top.compile_threads);
  over(base.max_queued_compiles, top.max_queued_compiles);
  over(base.max_concurrent_rpcs, top.max_concurrent_rpcs);
  over(base.rpc_queues, top.rpc_queues);
  over(base.max_message_mb, top.max_message_mb);
  over(base.templates_dir, top.templates_dir);
  over(base.default_arch, top.default_arch);
  over(base.drain_timeout_ms, top.drain_timeout_ms);
  over(base.log_level, top.log_level);
  over(base.port_file, top.port_file);
  over(base.worker_binary, top.worker_binary);
  over(base.tuning_db, top.tuning_db);
  over(base.evaluation_timeout_ms, top.evaluation_timeout_ms);
  over(base.auth_tokens, top.auth_tokens);
  over(base.tls_cert, top.tls_cert);
  over(base.tls_key, top.tls_key);
  over(base.tls_client_ca, top.tls_client_ca);
  over(base.insecure, top.insecure);
  over(base.quota_concurrent_compiles, top.quota_concurrent_compiles);
  over(base.quota_tune_jobs, top.quota_tune_jobs);
  over(base.quota_tune_gpu_seconds_per_hour, top.quota_tune_gpu_seconds_per_hour);
}

Result<Layer> read_toml(const std::string& path) {
  toml::table table;
  try {
    table = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return bad_setting("config file " + path + ":" + std::to_string(where.line) + ":" +
                       std::to_string(where.column) + ": " + std::string(e.description()));
  }

  Layer layer;
  const auto string_key = [&](std::string_view key, const toml::node& node,
                              std::optional<std::string>& out) -> Status {
    if (!node.is_string())
      return bad_setting("config file " + path + ": " + std::string(key) + " must be a string");
    out = node.value<std::string>();
    return ok_status();
  };
  const auto int_key = [&](std::string_view key, const toml::node& node,
                           std::optional<int64_t>& out) -> Status {
    if (!node.is_integer())
      return bad_setting("config file " + path + ": " + std::string(key) + " must be an integer");
    out = node.value<int64_t>();
    return ok_status();
  };
  const auto bool_key = [&](std::string_view key, const toml::node& node,
                            std::optional<bool>& out) -> Status {
    if (!node.is_boolean())
      return bad_setting("config file " + path + ": " + std::string(key) + " must be true or false");
    out = node.value<bool>();
    return ok_status();
  };

  for (const auto& [key, node] : table) {
    const std::string_view k = key.str();
    Status status = ok_status();
    if (auto fleet = read_fleet_toml_key(k, node, path, layer.fleet)) status = *fleet;
    else if (k == "listen_address") status = string_key(k, node, layer.listen_address);
    else if (k == "cache_dir") status = string_key(k, node, layer.cache_dir);
    else if (k == "memory_cache_mb") status = int_key(k, node, layer.memory_cache_mb);
    else if (k == "disk_cache_mb") status = int_key(k, node, layer.disk_cache_mb);
    else if (k == "compile_threads") status = int_key(k, node, layer.compile_threads);
    else if (k == "max_queued_compiles") status = int_key(k, node, layer.max_queued_compiles);
    else if (k == "max_concurrent_rpcs") status = int_key(k, node, layer.max_concurrent_rpcs);
    else if (k == "rpc_queues") status = int_key(k, node, layer.rpc_queues);
    else if (k == "max_message_mb") status = int_key(k, node, layer.max_message_mb);
    else if (k == "templates_dir") status = string_key(k, node, layer.templates_dir);
    else if (k == "default_arch") status = string_key(k, node, layer.default_arch);
    else if (k == "drain_timeout_ms") status = int_key(k, node, layer.drain_timeout_ms);
    else if (k == "log_level") status = string_key(k, node, layer.log_level);
    else if (k == "port_file") status = string_key(k, node, layer.port_file);
    else if (k == "worker_binary") status = string_key(k, node, layer.worker_binary);
    else if (k == "tuning_db") status = string_key(k, node, layer.tuning_db);
    else if (k == "evaluation_timeout_ms") status = int_key(k, node, layer.evaluation_timeout_ms);
    else if (k == "auth_tokens") status = string_key(k, node, layer.auth_tokens);
    else if (k == "tls_cert") status = string_key(k, node, layer.tls_cert);
    else if (k == "tls_key") status = string_key(k, node, layer.tls_key);
    else if (k == "tls_client_ca") status = string_key(k, node, layer.tls_client_ca);
    else if (k == "insecure") status = bool_key(k, node, layer.insecure);
    else if (k == "quota_concurrent_compiles")
      status = int_key(k, node, layer.quota_concurrent_compiles);
    else if (k == "quota_tune_jobs") status = int_key(k, node, layer.quota_tune_jobs);
    else if (k == "quota_tune_gpu_seconds_per_hour")
      status = int_key(k, node, layer.quota_tune_gpu_seconds_per_hour);
    else
      // A misspelt key silently ignored would leave a setting at its default.
      return bad_setting("config file " + path + ": unknown key '" + std::string(k) + "'");
    if (!status) return status.error();
  }
  return layer;
}

Layer read_env() {
  Layer layer;
  layer.fleet = read_fleet_env();
  layer.listen_address = env("FLASHCORE_LISTEN");
  layer.cache_dir = env("FLASHCORE_CACHE_DIR");
  layer.log_level = env("FLASHCORE_LOG_LEVEL");
  layer.templates_dir = env("FLASHCORE_TEMPLATES_DIR");
  layer.default_arch = env("FLASHCORE_DEFAULT_ARCH");
  layer.worker_binary = env("FLASHCORE_WORKER_BINARY");
  layer.tuning_db = env("FLASHCORE_TUNING_DB");
  layer.auth_tokens = env("FLASHCORE_AUTH_TOKENS");
  return layer;
}

// Checks a count against [min, max] and names the setting when it is not.
Result<size_t> count(std::string_view name, int64_t value, int64_t min, int64_t max) {
  if (value < min || value > max)
    return bad_setting(std::string(name) + ": " + std::to_string(value) + " must be in [" +
                       std::to_string(min) + ", " + std::to_string(max) + "]");
  return static_cast<size_t>(value);
}

constexpr int64_t kMaxCount = int64_t{1} << 30;

// Cache sizes, thread and queue counts, message size.
Status resolve_sizes(const Layer& layer, DaemonConfig& config) {
  if (layer.memory_cache_mb) {
    auto mb = count("memory_cache_mb", *layer.memory_cache_mb, 1, int64_t{1} << 24);
    if (!mb) return mb.error();
    config.memory_cache_bytes = *mb * kMiB;
  }
  if (layer.disk_cache_mb) {
    auto mb = count("disk_cache_mb", *layer.disk_cache_mb, 1, int64_t{1} << 30);
    if (!mb) return mb.error();
    config.disk_cache_bytes = static_cast<uint64_t>(*mb) * kMiB;
  }
  if (layer.compile_threads) {
    auto n = count("compile_threads", *layer.compile_threads, 0, 1024);
    if (!n) return n.error();
    config.compile_threads = *n;
  }
  if (layer.max_queued_compiles) {
    auto n = count("max_queued_compiles", *layer.max_queued_compiles, 1, kMaxCount);
    if (!n) return n.error();
    config.max_queued_compiles = *n;
  }
  if (layer.max_concurrent_rpcs) {
    auto n = count("max_concurrent_rpcs", *layer.max_concurrent_rpcs, 1, kMaxCount);
    if (!n) return n.error();
    config.max_concurrent_rpcs = *n;
  }
  if (layer.rpc_queues) {
    auto n = count("rpc_queues", *layer.rpc_queues, 0, 64);
    if (!n) return n.error();
    config.rpc_queues = *n;
  }
  if (layer.max_message_mb) {
    auto mb = count("max_message_mb", *layer.max_message_mb, 1, kMaxMessageMb);
    if (!mb) return mb.error();
    config.max_message_bytes = *mb * kMiB;
  }
  return ok_status();
}

// Templates, default arch, drain, log level, files, evaluation timeout.
Status resolve_runtime(const Layer& layer, DaemonConfig& config) {
  if (layer.templates_dir) config.templates_dir = *layer.templates_dir;
  if (layer.default_arch && !layer.default_arch->empty()) {
    if (!find_arch(*layer.default_arch)) {
      std::string known;
      for (const auto& arch : supported_archs())
        known += (known.empty() ? "" : ", ") + std::string(arch.name);
      return bad_setting("default_arch: '" + *layer.default_arch + "' is not supported (" + known +
                         ")");
    }
    config.default_arch = *layer.default_arch;
  }
  if (layer.drain_timeout_ms) {
    auto ms = count("drain_timeout_ms", *layer.drain_timeout_ms, 0, int64_t{24} * 3600 * 1000);
    if (!ms) return ms.error();
    config.drain_timeout = std::chrono::milliseconds(*ms);
  }
  if (layer.log_level) {
    // spdlog maps unknown names to "off"; only "off" itself may mean off.
    if (*layer.log_level != "off" &&
        spdlog::level::from_str(*layer.log_level) == spdlog::level::off)
      return bad_setting("log_level: '" + *layer.log_level +
                         "' is not one of trace, debug, info, warn, error, critical, off");
    config.log_level = *layer.log_level;
  }
  if (layer.port_file) config.port_file = *layer.port_file;
  if (layer.worker_binary) config.worker_binary = *layer.worker_binary;
  if (layer.tuning_db) config.tuning_db = *layer.tuning_db;
  if (layer.evaluation_timeout_ms) {
    auto ms = count("evaluation_timeout_ms", *layer.evaluation_timeout_ms, 1,
                    int64_t{24} * 3600 * 1000);
    if (!ms) return ms.error();
    config.evaluation_timeout = std::chrono::milliseconds(*ms);
  }
  return ok_status();
}

// A shared box: tokens, TLS, the loopback rule's override, quotas.
Status resolve_security(const Layer& layer, DaemonConfig& config) {
  if (layer.auth_tokens) config.auth_tokens = *layer.auth_tokens;
  if (layer.tls_cert) config.tls_cert = *layer.tls_cert;
  if (layer.tls_key) config.tls_key = *layer.tls_key;
  if (layer.tls_client_ca) config.tls_client_ca = *layer.tls_client_ca;
  if (config.tls_cert.empty() != config.tls_key.empty())
    return bad_setting("tls_cert and tls_key: give both or neither");
  if (!config.tls_client_ca.empty() && config.tls_cert.empty())
    return bad_setting("tls_client_ca: needs tls_cert and tls_key (mutual TLS is TLS)");
  if (layer.insecure) config.insecure = *layer.insecure;
  const auto quota = [&](const char* name, const std::optional<int64_t>& value,
                         size_t& out) -> Status {
    if (!value) return ok_status();
    auto n = count(name, *value, 0, kMaxCount);
    if (!n) return n.error();
    out = *n;
    return ok_status();
  };
  if (Status s = quota("quota_concurrent_compiles", layer.quota_concurrent_compiles,
                       config.quota_concurrent_compiles); !s)
    return s.error();
  if (Status s = quota("quota_tune_jobs", layer.quota_tune_jobs, config.quota_tune_jobs); !s)
    return s.error();
  if (Status s = quota("quota_tune_gpu_seconds_per_hour", layer.quota_tune_gpu_seconds_per_hour,
                       config.quota_tune_gpu_seconds_per_hour); !s)
    return s.error();
  return ok_status();
}

Result<DaemonConfig> resolve(const Layer& layer) {
  DaemonConfig config;
  auto fleet = resolve_fleet(layer.fleet);
  if (!fleet) return fleet.error();
  config.fleet = std::move(fleet).value();
  if (layer.listen_address) {
    if (layer.listen_address->empty()) return bad_setting("listen_address: must not be empty");
    config.listen_address = *layer.listen_address;
  }
  config.cache_dir =
      layer.cache_dir ? std::filesystem::path(*layer.cache_dir) : default_cache_dir();
  if (Status sizes = resolve_sizes(layer, config); !sizes) return sizes.error();
  if (Status runtime = resolve_runtime(layer, config); !runtime) return runtime.error();
  if (Status security = resolve_security(layer, config); !security) return security.error();
  return config;
}

}  // namespace

std::filesystem::path default_cache_dir() {
  if (auto xdg = env("XDG_CACHE_HOME")) return std::filesystem::path(*xdg) / "flashcore";
  if (auto home = env("HOME")) return std::filesystem::path(*home) / ".cache" / "flashcore";
  // No home (a bare service account): somewhere writable rather than nowhere.
  return std::filesystem::temp_directory_path() / "flashcore-cache";
}

std::filesystem::path default_state_dir() {
  if (auto xdg = env("XDG_STATE_HOME")) return std::filesystem::path(*xdg) / "flashcore";
  if (auto home = env("HOME")) return std::filesystem::path(*home) / ".local" / "state" / "flashcore";
  return std::filesystem::temp_directory_path() / "flashcore-state";
}

namespace {

// Every setting's flag, into `flags` (the last layer).
void add_daemon_flags(CLI::App& app, Layer& flags) {
  const auto str = [&](const char* name, std::optional<std::string>& out, const char* help) {
    return app.add_option_function<std::string>(
        name, [&out](const std::string& v) { out = v; }, help);
  };
  const auto num = [&](const char* name, std::optional<int64_t>& out, const char* help) {
    return app.add_option_function<int64_t>(
        name, [&out](const int64_t& v) { out = v; }, help);
  };
  str("--listen", flags.listen_address,
      "host:port to listen on, port 0 picks one (FLASHCORE_LISTEN)");
  str("--cache-dir", flags.cache_dir,
      "on-disk kernel cache (FLASHCORE_CACHE_DIR; default $XDG_CACHE_HOME/flashcore)");
  num("--memory-cache-mb", flags.memory_cache_mb, "memory tier budget in MiB");
  num("--disk-cache-mb", flags.disk_cache_mb,
      "disk tier bound in MiB; least recently used entries are evicted past it");
  num("--compile-threads", flags.compile_threads, "NVRTC threads, 0 = one per core");
  num("--max-queued-compiles", flags.max_queued_compiles,
      "compiles waiting for a thread before RESOURCE_EXHAUSTED");
  num("--max-concurrent-rpcs", flags.max_concurrent_rpcs,
      "calls in flight before RESOURCE_EXHAUSTED");
  num("--rpc-queues", flags.rpc_queues,
      "gRPC completion queues serving Compile and GetKernel, one polling thread each (a memory hit "
      "is answered on the thread that read it); 0 = min(4, hardware threads)");
  num("--max-message-mb", flags.max_message_mb, "gRPC send/receive message limit in MiB");
  str("--templates-dir", flags.templates_dir,
      "read kernel templates from here instead of the embedded ones (FLASHCORE_TEMPLATES_DIR)");
  str("--default-arch", flags.default_arch,
      "arch for requests that name none (FLASHCORE_DEFAULT_ARCH; default: the GPU's, else sm_90a)");
  num("--drain-timeout-ms", flags.drain_timeout_ms,
      "on SIGTERM, time given to in-flight calls before they are cancelled");
  str("--log-level", flags.log_level,
      "trace, debug, info, warn, error, critical or off (FLASHCORE_LOG_LEVEL)");
  str("--port-file", flags.port_file, "write the bound port here once listening");
  str("--worker-binary", flags.worker_binary,
      "GPU evaluation worker executable (FLASHCORE_WORKER_BINARY; default: flashcore_worker "
      "beside flashcored)");
  num("--evaluation-timeout-ms", flags.evaluation_timeout_ms,
      "longest one evaluation may run on a GPU worker before the worker is killed and restarted");
  str("--tuning-db", flags.tuning_db,
      "SQLite tuning database (FLASHCORE_TUNING_DB; default: $XDG_STATE_HOME/flashcore/tuning.db, "
      "else ~/.local/state/flashcore/tuning.db)");
  add_fleet_flags(app, flags.fleet);

  str("--auth-tokens", flags.auth_tokens,
      "token file, one 'NAME ROLE SHA256HEX' a line (roles read, compile, tune, admin); every "
      "call but health checks then needs 'authorization: Bearer <token>'; SIGHUP re-reads it "
      "(FLASHCORE_AUTH_TOKENS)");
  str("--tls-cert", flags.tls_cert, "PEM certificate chain of the listener (with --tls-key)");
  str("--tls-key", flags.tls_key, "PEM private key of --tls-cert");
  str("--tls-client-ca", flags.tls_client_ca,
      "PEM CA bundle: clients must present a certificate it signed (mutual TLS)");
  app.add_flag_function(
      "--insecure", [&flags](std::int64_t) { flags.insecure = true; },
      "allow a non-loopback --listen without --auth-tokens and TLS (warned at every start)");
  num("--quota-concurrent-compiles", flags.quota_concurrent_compiles,
      "Compile/Validate calls in flight per client; 0 = no limit");
  num("--quota-tune-jobs", flags.quota_tune_jobs,
      "tune jobs queued or running per client; 0 = no limit");
  num("--quota-tune-gpu-seconds-per-hour", flags.quota_tune_gpu_seconds_per_hour,
      "GPU-seconds of tuning per client in any hour; 0 = no limit");
}

}  // namespace

Result<DaemonConfig> load_config(int argc, const char* const* argv) {
  CLI::App app{"flashcored: compiles attention kernel templates with NVRTC and serves the cubins",
               argc > 0 ? argv[0] : "flashcored"};
  Layer flags;
  std::string config_file;
  app.add_option("--config", config_file,
                 "TOML file whose keys are the long option names with '_' (or FLASHCORE_CONFIG)");
  add_daemon_flags(app, flags);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success))
      return make_error(ErrorCode::cancelled, app.help());
    return bad_setting(e.what());
  }

  Layer merged;
  if (config_file.empty())
    if (auto from_env = env("FLASHCORE_CONFIG")) config_file = *from_env;
  if (!config_file.empty()) {
    auto file = read_toml(config_file);
    if (!file) return file.error();
    apply(merged, *file);
  }
  apply(merged, read_env());
  apply(merged, flags);
  return resolve(merged);
}

}  // namespace flashcore
