// Daemon configuration: embedded defaults, then a TOML file, then FLASHCORE_*
// environment variables, then command-line flags (flags win).
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <string>

#include "app/fleet_config.hpp"
#include "common/result.hpp"
#include "evolve/evolve_limits.hpp"

namespace flashcore {

struct DaemonConfig {
  FleetConfig fleet;                               // Redis shared tier, metrics (fleet_config.hpp)
  std::string listen_address = "127.0.0.1:50051";  // loopback by default: a shared box
  std::filesystem::path cache_dir;                 // default: $XDG_CACHE_HOME/flashcore or ~/.cache/flashcore
  size_t memory_cache_bytes = size_t{256} << 20;
  uint64_t disk_cache_bytes = uint64_t{10240} << 20;  // least recently used entries evicted past it
  size_t compile_threads = 0;                      // 0 = hardware concurrency
  size_t max_queued_compiles = 64;                 // beyond: RESOURCE_EXHAUSTED
  size_t max_concurrent_rpcs = 256;                // beyond: RESOURCE_EXHAUSTED
  size_t rpc_queues = 0;  // completion queues serving Compile/GetKernel; 0 = min(4, hardware threads)
  size_t max_message_bytes = size_t{64} << 20;     // gRPC send/receive limit
  std::filesystem::path templates_dir;             // empty = embedded templates
  std::string default_arch;                        // empty = the GPU's, else sm_90a
  std::chrono::milliseconds drain_timeout{10000};  // SIGTERM: time given to in-flight calls
  std::string log_level = "info";
  std::filesystem::path port_file;                 // if set, the bound port is written here
  std::filesystem::path worker_binary;             // empty = flashcore_worker beside the daemon
  std::chrono::milliseconds evaluation_timeout{120000};  // one evaluation on a GPU worker
  std::filesystem::path tuning_db;                 // SQLite tuning database; empty = $XDG_STATE_HOME/flashcore/tuning.db

  // A shared box (README "Running on a shared box").
  std::filesystem::path auth_tokens;    // token file; empty = authentication off
  std::filesystem::path tls_cert, tls_key;  // both or neither: TLS on the listener
  std::filesystem::path tls_client_ca;  // clients must present a certificate it signed (mTLS)
  bool insecure = false;                // allow a non-loopback listener without auth and TLS
  size_t quota_concurrent_compiles = 0;        // per client; 0 = no limit
  size_t quota_tune_jobs = 0;                  // queued or running, per client; 0 = no limit
  size_t quota_tune_gpu_seconds_per_hour = 0;  // per client; 0 = no limit

  // The evaluator for evolution loops (KernelEvolution, server/evolve).
  std::filesystem::path candidates_db;   // empty = candidates.db beside the tuning database
  std::filesystem::path compile_worker;  // empty = flashcore_compile_worker beside the daemon
  evolve::EvolveLimits evolve;
};

// Parses argv (CLI11) over env over the TOML file named by --config or
// FLASHCORE_CONFIG over defaults. `--help` output is returned as an error with
// code cancelled and the help text as message (the caller prints it, exits 0).
Result<DaemonConfig> load_config(int argc, const char* const* argv);

// The default cache folder from the environment (XDG_CACHE_HOME, HOME).
std::filesystem::path default_cache_dir();
// The default state folder (XDG_STATE_HOME, HOME): the tuning database's.
std::filesystem::path default_state_dir();

}  // namespace flashcore
