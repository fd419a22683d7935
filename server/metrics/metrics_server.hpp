// Prometheus metrics (prometheus-cpp): `--metrics-listen ADDR` serves
// GET /metrics. Two sources:
//  - calls, counted as they end by a gRPC server interceptor (rpc_metrics):
//    flashcore_rpc_calls_total and flashcore_rpc_duration_seconds by method
//    and status code;
//  - the daemon's parts, read when Prometheus scrapes (DaemonCollector): the
//    kernel cache's tiers and compiles, the worker pool, the tuning jobs. No
//    counter in a hot path is added for them; each part already counts.
#pragma once

#include <grpcpp/support/server_interceptor.h>

#include <memory>
#include <string>
#include <vector>

#include "common/result.hpp"

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace flashcore {
class KernelCache;
class TuningDb;
class TuningManager;
namespace eval {
class WorkerPool;
}
}  // namespace flashcore

namespace flashcore::metrics {

// What the scrape reads; any may be null (that part is not running).
struct DaemonParts {
  std::shared_ptr<KernelCache> cache;
  std::shared_ptr<eval::WorkerPool> workers;
  std::shared_ptr<TuningManager> tuning;
  std::shared_ptr<TuningDb> tuning_db;
};

class RpcMetrics;

class MetricsServer {
 public:
  // Binds `address` (host:port; port 0 picks one) and serves /metrics.
  static Result<std::unique_ptr<MetricsServer>> start(const std::string& address);
  ~MetricsServer();

  // The parts the scrape reads; set once they exist.
  void watch(DaemonParts parts);
  // The interceptor factory for grpc::ServerBuilder: counts every call.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> interceptor_factory();

  int port() const { return port_; }

 private:
  MetricsServer() = default;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<RpcMetrics> rpc_;
  std::shared_ptr<class DaemonCollector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace flashcore::metrics
