#include "metrics/metrics_server.hpp"

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <exception>
#include <mutex>

#include "cache/kernel_cache.hpp"
#include "eval/worker_pool.hpp"
#include "tuning/tuning_db.hpp"
#include "tuning/tuning_job.hpp"

namespace flashcore::metrics {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

std::string_view code_name(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

ClientMetric sample(double value, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric metric;
  metric.label = std::move(labels);
  metric.counter.value = value;
  metric.gauge.value = value;
  return metric;
}

MetricFamily family(std::string name, std::string help, MetricType type) {
  MetricFamily out;
  out.name = std::move(name);
  out.help = std::move(help);
  out.type = type;
  return out;
}

}  // namespace

// Calls by method and status code, with latency. Family::Add is thread-safe
// and returns the same child for the same labels.
class RpcMetrics {
 public:
  explicit RpcMetrics(prometheus::Registry& registry)
      : calls_(prometheus::BuildCounter()
                   .Name("flashcore_rpc_calls_total")
                   .Help("gRPC calls finished, by service, method and status code")
                   .Register(registry)),
        latency_(prometheus::BuildHistogram()
                     .Name("flashcore_rpc_duration_seconds")
                     .Help("gRPC call latency from the request's arrival to its status, seconds")
                     .Register(registry)) {}

  void record(const std::string& service, const std::string& method, grpc::StatusCode code,
              double seconds) {
    const std::map<std::string, std::string> labels{
        {"service", service}, {"method", method}, {"code", std::string(code_name(code))}};
    calls_.Add(labels).Increment();
    // 50 us to 100 s: a memory hit is well under a millisecond, a compile
    // takes seconds, a tuning stream minutes.
    static const prometheus::Histogram::BucketBoundaries kBuckets{
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
        0.1,     0.25,   0.5,     1,      2.5,   5,      10,    30,   100};
    latency_.Add(labels, kBuckets).Observe(seconds);
  }

 private:
  prometheus::Family<prometheus::Counter>& calls_;
  prometheus::Family<prometheus::Histogram>& latency_;
};

namespace {

class CallInterceptor final : public grpc::experimental::Interceptor {
 public:
  CallInterceptor(std::shared_ptr<RpcMetrics> metrics, std::string_view full_method)
      : metrics_(std::move(metrics)), started_(std::chrono::steady_clock::now()) {
    // "/flashcore.v1.FlashCore/Compile" -> service "flashcore.v1.FlashCore", method "Compile"
    const auto slash = full_method.rfind('/');
    method_ = std::string(slash == std::string_view::npos ? full_method : full_method.substr(slash + 1));
    if (slash != std::string_view::npos && slash > 0)
      service_ = std::string(full_method.substr(1, slash - 1));
  }
  ~CallInterceptor() override {
    // A call that ends without sending a status (the client went away).
    if (!recorded_) record(grpc::StatusCode::CANCELLED);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS))
      record(methods->GetSendStatus().error_code());
    methods->Proceed();
  }

 private:
  void record(grpc::StatusCode code) {
    if (recorded_) return;
    recorded_ = true;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    metrics_->record(service_, method_, code, seconds);
  }

  std::shared_ptr<RpcMetrics> metrics_;
  std::chrono::steady_clock::time_point started_;
  std::string service_, method_;
  bool recorded_ = false;
};

class InterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit InterceptorFactory(std::shared_ptr<RpcMetrics> metrics) : metrics_(std::move(metrics)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new CallInterceptor(metrics_, info->method() ? info->method() : "");
  }

 private:
  std::shared_ptr<RpcMetrics> metrics_;
};

}  // namespace

// The daemon's parts, read at scrape time.
class DaemonCollector final : public prometheus::Collectable {
 public:
  void watch(DaemonParts parts) {
    std::lock_guard lock(mutex_);
    parts_ = std::move(parts);
  }

  std::vector<MetricFamily> Collect() const override {
    DaemonParts parts;
    {
      std::lock_guard lock(mutex_);
      parts = parts_;
    }
    std::vector<MetricFamily> out;
    try {
      if (parts.cache) collect_cache(*parts.cache, out);
      if (parts.workers) collect_workers(*parts.workers, out);
      collect_tuning(parts, out);
    } catch (const std::exception& e) {
      spdlog::warn("metrics: a scrape failed: {}", e.what());
    }
    return out;
  }

 private:
  static void collect_cache(KernelCache& cache, std::vector<MetricFamily>& out) {
    const CacheStats s = cache.stats();
    auto hits = family("flashcore_cache_hits_total", "kernel lookups answered, by tier",
                       MetricType::Counter);
    auto misses = family("flashcore_cache_misses_total",
                         "kernel lookups a tier could not answer, by tier", MetricType::Counter);
    hits.metric.push_back(sample(double(s.memory_hits), {{"tier", "memory"}}));
    hits.metric.push_back(sample(double(s.disk_hits), {{"tier", "disk"}}));
    misses.metric.push_back(sample(double(s.memory_misses), {{"tier", "memory"}}));
    misses.metric.push_back(sample(double(s.disk_misses), {{"tier", "disk"}}));
    if (s.shared_configured) {
      hits.metric.push_back(sample(double(s.shared_hits), {{"tier", "shared"}}));
      misses.metric.push_back(sample(double(s.shared_misses), {{"tier", "shared"}}));
    }
    out.push_back(std::move(hits));
    out.push_back(std::move(misses));

    auto corrupt = family("flashcore_cache_corrupt_entries_total",
                          "entries whose checksum or metadata failed, deleted, by tier",
                          MetricType::Counter);
    corrupt.metric.push_back(sample(double(s.corrupt_entries), {{"tier", "disk"}}));
    if (s.shared_configured)
      corrupt.metric.push_back(sample(double(s.shared_corrupt_entries), {{"tier", "shared"}}));
    out.push_back(std::move(corrupt));

    auto bytes = family("flashcore_cache_bytes",
                        "bytes held by each tier (shared: the Redis server's used_memory)",
                        MetricType::Gauge);
    bytes.metric.push_back(sample(double(s.memory_bytes), {{"tier", "memory"}}));
    bytes.metric.push_back(sample(double(s.disk_bytes), {{"tier", "disk"}}));
    if (const auto& shared = cache.shared_tier(); shared && shared->available())
      if (auto used = shared->server_bytes())
        bytes.metric.push_back(sample(double(*used), {{"tier", "shared"}}));
    out.push_back(std::move(bytes));
    auto entries = family("flashcore_cache_entries", "entries in the memory tier", MetricType::Gauge);
    entries.metric.push_back(sample(double(s.memory_entries), {{"tier", "memory"}}));
    out.push_back(std::move(entries));
    auto evictions = family("flashcore_cache_evictions_total",
                            "entries the memory tier evicted", MetricType::Counter);
    evictions.metric.push_back(sample(double(s.evictions), {{"tier", "memory"}}));
    out.push_back(std::move(evictions));

    if (s.shared_configured) {
      auto up = family("flashcore_shared_tier_up", "1 while the Redis shared tier answers",
                       MetricType::Gauge);
      up.metric.push_back(sample(s.shared_available ? 1 : 0));
      out.push_back(std::move(up));
      auto errors = family("flashcore_shared_tier_errors_total",
                           "shared-tier commands that failed (Redis unreachable)",
                           MetricType::Counter);
      errors.metric.push_back(sample(double(s.shared_errors)));
      out.push_back(std::move(errors));
    }

    const auto scalar = [&](std::string name, std::string help, MetricType type, double value) {
      auto f = family(std::move(name), std::move(help), type);
      f.metric.push_back(sample(value));
      out.push_back(std::move(f));
    };
    scalar("flashcore_compiles_total", "NVRTC compiles run", MetricType::Counter,
           double(s.compiles_run));
    scalar("flashcore_compile_failures_total", "NVRTC compiles that failed", MetricType::Counter,
           double(s.compile_failures));
    scalar("flashcore_compile_seconds_total", "time spent in NVRTC compiles, seconds",
           MetricType::Counter, s.compile_seconds);
    scalar("flashcore_compiles_in_flight", "NVRTC compiles running now", MetricType::Gauge,
           double(s.compiles_running));
    scalar("flashcore_compiles_queued", "compiles waiting for a compile thread",
           MetricType::Gauge, double(s.compiles_queued));
    scalar("flashcore_compiles_abandoned_total", "queued compiles dropped: every caller had gone",
           MetricType::Counter, double(s.abandoned_compiles));
    auto waits = family("flashcore_single_flight_waits_total",
                        "requests that waited on a compile already running: local (this "
                        "daemon's) or fleet (another daemon's Redis lock)",
                        MetricType::Counter);
    waits.metric.push_back(sample(double(s.single_flight_joins), {{"scope", "local"}}));
    waits.metric.push_back(sample(double(s.fleet_waits), {{"scope", "fleet"}}));
    out.push_back(std::move(waits));
  }

  static void collect_workers(eval::WorkerPool& workers, std::vector<MetricFamily>& out) {
    const eval::PoolStats s = workers.stats();
    auto evaluations = family("flashcore_gpu_evaluations_total",
                              "evaluations on a GPU worker, by GPU and result", MetricType::Counter);
    for (const auto& w : s.workers) {
      evaluations.metric.push_back(
          sample(double(w.evaluations), {{"gpu", std::to_string(w.gpu)}, {"result", "ok"}}));
      evaluations.metric.push_back(
          sample(double(w.failures), {{"gpu", std::to_string(w.gpu)}, {"result", "failed"}}));
    }
    out.push_back(std::move(evaluations));
    auto restarts = family("flashcore_worker_restarts_total",
                           "evaluation worker processes restarted", MetricType::Counter);
    restarts.metric.push_back(sample(double(s.restarts)));
    out.push_back(std::move(restarts));
    auto queued = family("flashcore_gpu_evaluations_queued", "evaluations waiting for a worker",
                         MetricType::Gauge);
    queued.metric.push_back(sample(double(s.queued)));
    out.push_back(std::move(queued));
  }

  static void collect_tuning(const DaemonParts& parts, std::vector<MetricFamily>& out) {
    if (!parts.tuning && !parts.tuning_db) return;
    auto jobs = family("flashcore_tune_jobs",
                       "tuning jobs by status: queued (waiting for a GPU) and the database's "
                       "running, succeeded, failed, cancelled",
                       MetricType::Gauge);
    if (parts.tuning) jobs.metric.push_back(sample(double(parts.tuning->queued()), {{"status", "queued"}}));
    if (parts.tuning_db) {
      std::map<std::string, int64_t> counts;
      for (auto status : {"running", "succeeded", "failed", "cancelled"}) counts[status] = 0;
      if (auto counted = parts.tuning_db->count_jobs_by_status())
        for (const auto& [status, n] : *counted) counts[status] = n;
      for (const auto& [status, n] : counts) jobs.metric.push_back(sample(double(n), {{"status", status}}));
    }
    out.push_back(std::move(jobs));
  }

  mutable std::mutex mutex_;
  DaemonParts parts_;
};

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(const std::string& address) {
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->registry_ = std::make_shared<prometheus::Registry>();
  server->rpc_ = std::make_shared<RpcMetrics>(*server->registry_);
  server->collector_ = std::make_shared<DaemonCollector>();
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
  } catch (const std::exception& e) {
    return make_error(ErrorCode::unavailable,
                      "metrics_listen: cannot listen on " + address + ": " + e.what());
  }
  server->exposer_->RegisterCollectable(server->registry_);
  server->exposer_->RegisterCollectable(server->collector_);
  const auto ports = server->exposer_->GetListeningPorts();
  server->port_ = ports.empty() ? 0 : ports.front();
  return server;
}

MetricsServer::~MetricsServer() = default;

void MetricsServer::watch(DaemonParts parts) { collector_->watch(std::move(parts)); }

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MetricsServer::interceptor_factory() {
  return std::make_unique<InterceptorFactory>(rpc_);
}

}  // namespace flashcore::metrics
