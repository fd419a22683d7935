// The daemon's lifecycle, usable in-process (tests, benchmarks) as well as
// from main(): build the cache, compiler and gRPC server from a config, bind,
// serve, and drain in-flight calls on shutdown.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "app/config.hpp"
#include "common/result.hpp"

namespace flashcore {

class EvaluationBackend;  // search/tuning_job.hpp

// Parts a test puts in place of the real ones. Only tests set these.
struct DaemonHooks {
  // Measures tuning candidates instead of the GPU worker pool (which needs
  // a GPU): tests pass a backend that evaluates a synthetic objective.
  std::shared_ptr<EvaluationBackend> evaluation_backend;
  size_t tuning_compile_ahead = 0;  // 0: the manager's default
};

class Daemon {
 public:
  // Binds config.listen_address (port 0 picks a free port) and starts serving.
  static Result<std::unique_ptr<Daemon>> start(const DaemonConfig& config);
  static Result<std::unique_ptr<Daemon>> start(const DaemonConfig& config, DaemonHooks hooks);
  ~Daemon();  // shuts down with the configured drain deadline if still running

  int port() const;                  // the bound port
  int metrics_port() const;          // the /metrics port; 0 without --metrics-listen
  std::string address() const;       // "127.0.0.1:<port>"
  // Stops accepting calls; in-flight calls get until `drain` to finish,
  // then are cancelled. Idempotent.
  void shutdown(std::chrono::milliseconds drain);
  void wait();  // blocks until the server has shut down
  // Re-reads the token file (SIGHUP); on an error the running set stays and
  // the error is returned. A no-op when authentication is off.
  Status reload_auth();

  struct Impl;
 private:
  explicit Daemon(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace flashcore
