#include "app/daemon.hpp"

#include <absl/synchronization/mutex.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "app/accept_guard.hpp"
#include "app/drain.hpp"
#include "app/listener_security.hpp"
#include "auth/authenticator.hpp"
#include "auth/quotas.hpp"
#include "cache/atomic_file.hpp"
#include "cache/kernel_cache.hpp"
#include "cuda/driver_api.hpp"
#include "eval/worker_pool.hpp"
#include "jit/compile_pool.hpp"
#include "jit/nvrtc_compiler.hpp"
#include "jit/template_registry.hpp"
#include "metrics/metrics_server.hpp"
#include "redis/redis_client.hpp"
#include "evolve/evolution_service.hpp"
#include "rpc/flashcore_service.hpp"
#include "rpc/kernel_queues.hpp"
#include "service/service.hpp"
#include "service/tuning_backends.hpp"
#include "tuning/redis_bests.hpp"
#include "tuning/tuning_db.hpp"
#include "tuning/tuning_job.hpp"

namespace flashcore {
namespace {

constexpr std::string_view kFallbackArch = "sm_90a";
// How long the daemon holds no call before the drain cancels what gRPC
// still holds (app/drain.hpp). A call gRPC hands over reaches its handler,
// and an in-flight slot, within microseconds (milliseconds on a loaded
// box); this is far past that, and short beside any client's deadline.
constexpr std::chrono::milliseconds kDrainSettle{500};

// Never fails: a daemon without a GPU still compiles and serves kernels.
service::GpuStatus probe_gpu(int& device_count) {
  service::GpuStatus gpu;
  device_count = 0;
  auto devices = cuda::probe_devices();
  if (!devices) {
    gpu.unavailable_reason = devices.error().message;
  } else if (devices->empty()) {
    gpu.unavailable_reason = "no CUDA device found";
  } else {
    const cuda::DeviceInfo& device = devices->front();
    device_count = static_cast<int>(devices->size());
    gpu.available = true;
    gpu.name = device.name;
    gpu.arch = device.arch;
  }
  if (gpu.available) spdlog::info("GPU 0: {} ({})", gpu.name, gpu.arch);
  else spdlog::info("no GPU ({}): compiling and serving only", gpu.unavailable_reason);
  return gpu;
}

Result<std::string> pick_default_arch(const DaemonConfig& config, const service::GpuStatus& gpu) {
  if (!config.default_arch.empty()) {
    if (!find_arch(config.default_arch))
      return make_error(ErrorCode::invalid_argument,
                        "default_arch: '" + config.default_arch + "' is not supported");
    return config.default_arch;
  }
  if (gpu.available) {
    if (find_arch(gpu.arch)) return gpu.arch;
    spdlog::warn("GPU arch {} is not a template target; default arch is {}", gpu.arch,
                 kFallbackArch);
  }
  return std::string(kFallbackArch);
}

int message_limit(size_t bytes) { return static_cast<int>(std::min<size_t>(bytes, INT_MAX)); }

bool is_unix_address(const std::string& address) { return address.rfind("unix:", 0) == 0; }

// One evaluation worker per GPU. Null, with the reason, when there is no GPU
// or no worker starts: the daemon then compiles and serves, and Validate
// answers FAILED_PRECONDITION with that reason.
std::shared_ptr<eval::WorkerPool> start_workers(const DaemonConfig& config, int device_count,
                                                service::GpuStatus& gpu, std::string& reason) {
  if (!gpu.available) {
    reason = "no GPU: " + gpu.unavailable_reason;
    return nullptr;
  }
  eval::WorkerPoolOptions options;
  options.worker_binary = config.worker_binary;
  options.gpu_count = device_count;
  options.call_timeout = config.evaluation_timeout;
  options.log_level = config.log_level;
  auto pool = eval::WorkerPool::start(options);
  if (!pool) {
    reason = pool.error().message;
    spdlog::warn("no evaluation workers ({}); Validate is unavailable", reason);
    // The GPU is there but the daemon cannot use it: report it as unusable.
    gpu.available = false;
    gpu.unavailable_reason = "GPU 0 (" + gpu.name + ") found, but no evaluation worker runs: " + reason;
    return nullptr;
  }
  // GetServerInfo names the GPUs the workers hold.
  const auto infos = (*pool)->workers();
  std::string names;
  bool same = true;
  for (const auto& info : infos) {
    if (info.device().empty()) continue;
    if (!names.empty() && info.device() != infos.front().device()) same = false;
    names += (names.empty() ? "" : ", ") + info.device();
  }
  if (infos.size() > 1 && same && !infos.front().device().empty())
    names = std::to_string(infos.size()) + " x " + infos.front().device();
  if (!names.empty()) gpu.name = names;
  spdlog::info("{} evaluation worker(s) in {}", infos.size(), (*pool)->runtime_dir().string());
  return std::shared_ptr<eval::WorkerPool>(std::move(pool).value());
}

// $XDG_STATE_HOME/flashcore/tuning.db (else ~/.local/state/...): state, not
// cache, since a cache may be wiped and tuning results must not be. A
// database left where the default used to be (<cache_dir>/tuning.db) is
// still used, with a note, while the new place has none.
std::filesystem::path default_tuning_db(const std::filesystem::path& cache_dir) {
  const std::filesystem::path state = default_state_dir() / "tuning.db";
  const std::filesystem::path legacy = cache_dir / "tuning.db";
  std::error_code ec;
  if (!std::filesystem::exists(state, ec) && std::filesystem::exists(legacy, ec)) {
    spdlog::warn("tuning database {} is in the cache folder; move it to {} (or set tuning_db)",
                 legacy.string(), state.string());
    return legacy;
  }
  return state;
}

// The fleet's Redis (shared tier, locks, tuned bests), or null without one.
// The URL was checked with the config; Redis being unreachable now is no
// error (the client reconnects).
std::shared_ptr<redis::Client> connect_redis(const FleetConfig& fleet) {
  if (fleet.redis_url.empty()) return nullptr;
  auto url = redis::parse_redis_url(fleet.redis_url);
  if (!url) return nullptr;
  redis::ClientOptions options;
  options.connect_timeout = fleet.redis_connect_timeout;
  options.command_timeout = fleet.redis_command_timeout;
  auto client = std::make_shared<redis::Client>(*url, options);
  if (auto pong = client->command({"PING"}); pong)
    spdlog::info("shared tier: redis {}", url->display());
  return client;
}

}  // namespace

namespace {

// The templates compiled from: the embedded copy, or --templates-dir.
Result<std::shared_ptr<const TemplateRegistry>> load_templates(const DaemonConfig& config) {
  if (config.templates_dir.empty()) return TemplateRegistry::embedded();
  auto from_dir = TemplateRegistry::from_directory(config.templates_dir);
  if (!from_dir)
    return make_error(ErrorCode::failed_precondition,
                      "templates_dir: " + from_dir.error().message);
  return std::shared_ptr<const TemplateRegistry>(std::move(from_dir).value());
}

// A shared box: the token file (null without one: authentication off).
Result<std::shared_ptr<auth::Authenticator>> load_auth(const DaemonConfig& config) {
  if (config.auth_tokens.empty()) return std::shared_ptr<auth::Authenticator>();
  auto authenticator = auth::Authenticator::from_file(config.auth_tokens);
  if (!authenticator)
    return make_error(ErrorCode::failed_precondition, authenticator.error().message);
  std::shared_ptr<auth::Authenticator> loaded = std::move(authenticator).value();
  spdlog::info("authentication on: {} client(s) from {}", loaded->clients(),
               config.auth_tokens.string());
  return loaded;
}

std::shared_ptr<auth::Quotas> make_quotas(const DaemonConfig& config) {
  if (config.quota_concurrent_compiles == 0 && config.quota_tune_jobs == 0 &&
      config.quota_tune_gpu_seconds_per_hour == 0)
    return nullptr;
  return std::make_shared<auth::Quotas>(
      auth::QuotaLimits{config.quota_concurrent_compiles, config.quota_tune_jobs,
                        static_cast<double>(config.quota_tune_gpu_seconds_per_hour)});
}

// The tuning database, always (results are served without a GPU too); null
// when it cannot be opened, with the reason tuning is unavailable.
// A database it cannot trust (empty, truncated, foreign, newer, read-only)
// stops the start: serving on without it would hide that every stored result
// is gone, and recreating it would destroy them. The file is left as it is;
// the message names it and how to move it aside.
Result<std::shared_ptr<TuningDb>> open_tuning_db(const DaemonConfig& config,
                                                 const std::filesystem::path& cache_dir) {
  const std::filesystem::path db_path =
      config.tuning_db.empty() ? default_tuning_db(cache_dir) : config.tuning_db;
  std::error_code ignored;
  std::filesystem::create_directories(db_path.parent_path(), ignored);
  auto opened = TuningDb::open(db_path.string());
  if (!opened)
    return make_error(ErrorCode::failed_precondition, "tuning database: " + opened.error().message,
                      opened.error().detail);
  return std::shared_ptr<TuningDb>(std::move(opened).value());
}

Status write_port_file(const DaemonConfig& config, int port) {
  if (config.port_file.empty()) return ok_status();
  // Atomic, so a supervisor polling for the file never reads half a number.
  if (Status written = write_file_atomically(config.port_file, std::to_string(port) + "\n");
      !written)
    return make_error(
        ErrorCode::unavailable,
        "cannot write port file " + config.port_file.string() + ": " + written.error().message);
  return ok_status();
}

}  // namespace

struct Daemon::Impl {
  DaemonConfig config;
  // Declaration order is teardown order reversed: the server goes first (it
  // drains calls that point into the service), then the service, then the
  // cache (which waits for compiles still running on the pool).
  std::shared_ptr<CompilePool> pool;
  std::shared_ptr<const TemplateRegistry> templates;
  std::shared_ptr<const NvrtcCompiler> compiler;
  std::shared_ptr<KernelCache> cache;
  // Shut down (workers stopped) once the server has drained, before the
  // service waits for evaluations still running.
  std::shared_ptr<eval::WorkerPool> workers;
  std::unique_ptr<service::Service> service;
  std::unique_ptr<rpc::FlashCoreService> rpc;  // translates calls into the service's operations
  // Compile and GetKernel on completion queues; stopped after the server
  // has shut down (stop_serving), so it goes after the server.
  std::unique_ptr<rpc::KernelQueues> queues;
  // Submitted sources (issue 18): its own gRPC service; null when its store
  // did not open.
  std::unique_ptr<evolve::EvolutionService> evolution;
  std::unique_ptr<metrics::MetricsServer> metrics;  // null without metrics_listen
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::shared_ptr<auth::Authenticator> auth;  // null: authentication off

  std::mutex shutdown_mutex;
  bool shut_down = false;

  // A server that started is stopped before anything it calls into goes.
  ~Impl() {
    if (server) stop_serving(std::chrono::system_clock::now());
  }

  // The steps of start().
  Status build_parts(const std::shared_ptr<redis::Client>& redis);
  Status build_service(const std::shared_ptr<redis::Client>& redis, const DaemonHooks& hooks);
  Status serve(const std::shared_ptr<grpc::ServerCredentials>& credentials);
  // Refuses new calls, gives those in flight until `deadline` (then cancels
  // them; or sooner, once none of the daemon's own is left: the calls that
  // gRPC alone still holds, app/drain.hpp), and then stops the completion
  // queues. Repeats do nothing.
  void stop_serving(std::chrono::system_clock::time_point deadline);
  void build_evolution(const flashcore::service::ServiceOptions& options,
                       const std::shared_ptr<TuningDb>& tuning_db);
};

Result<std::unique_ptr<Daemon>> Daemon::start(const DaemonConfig& config) {
  return start(config, DaemonHooks{});
}

Result<std::unique_ptr<Daemon>> Daemon::start(const DaemonConfig& config, DaemonHooks hooks) {
  // NVRTC answers from the CUDA driver's compute cache where a driver is
  // installed, and then prints no ptxas report: every compile must run
  // ptxas, since resources (spills, registers) are part of each answer. The
  // daemon keeps its own cubin cache. Set once, before NVRTC first runs.
  static std::once_flag driver_cache_off;
  std::call_once(driver_cache_off, [] { setenv("CUDA_CACHE_DISABLE", "1", 1); });
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  if (impl->config.cache_dir.empty()) impl->config.cache_dir = default_cache_dir();

  // A shared box: refuse to be reachable beyond loopback unprotected, read
  // the tokens and the TLS files before anything else starts.
  if (Status exposed = check_exposure(config); !exposed) return exposed.error();
  auto auth = load_auth(config);
  if (!auth) return auth.error();
  impl->auth = std::move(auth).value();
  auto credentials = server_credentials(config);
  if (!credentials) return credentials.error();
  install_accept_guard();

  std::shared_ptr<redis::Client> redis = connect_redis(config.fleet);
  if (Status parts = impl->build_parts(redis); !parts) return parts.error();
  if (Status service = impl->build_service(redis, hooks); !service) return service.error();
  if (Status serving = impl->serve(*credentials); !serving) return serving.error();
  if (Status written = write_port_file(config, impl->port); !written) return written.error();

  spdlog::info(
      "templates: {}; cache: {} ({} MiB in memory, {} MiB on disk); {} compile threads; "
      "default arch {}",
      config.templates_dir.empty() ? "embedded" : config.templates_dir.string(),
      impl->config.cache_dir.string(), config.memory_cache_bytes >> 20,
      config.disk_cache_bytes >> 20, impl->pool->threads(),
      impl->service->options().default_arch);
  if (impl->metrics)
    spdlog::info("metrics on http://{}:{}/metrics", config.fleet.metrics_listen.substr(
                     0, config.fleet.metrics_listen.rfind(':')), impl->metrics->port());
  return std::unique_ptr<Daemon>(new Daemon(std::move(impl)));
}

// The compile side: templates, compiler, pool, the cache with its tiers,
// and /metrics.
Status Daemon::Impl::build_parts(const std::shared_ptr<redis::Client>& redis) {
  auto loaded = load_templates(config);
  if (!loaded) return loaded.error();
  templates = std::move(loaded).value();
  const size_t threads = config.compile_threads > 0
                             ? config.compile_threads
                             : std::max<size_t>(1, std::thread::hardware_concurrency());
  pool = std::make_shared<CompilePool>(threads, config.max_queued_compiles);
  compiler = std::make_shared<const NvrtcCompiler>(templates);
  KernelCacheOptions cache_options;
  cache_options.memory_bytes = config.memory_cache_bytes;
  cache_options.disk_dir = config.cache_dir;
  cache_options.disk_max_bytes = config.disk_cache_bytes;
  if (redis) cache_options.shared = std::make_shared<RedisStore>(redis);
  cache = std::make_shared<KernelCache>(std::move(cache_options), compiler, pool);
  if (config.fleet.metrics_listen.empty()) return ok_status();
  auto started = flashcore::metrics::MetricsServer::start(config.fleet.metrics_listen);
  if (!started) return started.error();
  metrics = std::move(started).value();
  return ok_status();
}

// The service over the parts: GPU probe and default arch, policies, the
// evaluation workers, the tuning database and manager.
Status Daemon::Impl::build_service(const std::shared_ptr<redis::Client>& redis,
                                   const DaemonHooks& hooks) {
  flashcore::service::ServiceOptions options;
  int device_count = 0;
  options.gpu = probe_gpu(device_count);
  auto arch = pick_default_arch(config, options.gpu);
  if (!arch) return arch.error();
  options.default_arch = *arch;
  options.max_concurrent_rpcs = config.max_concurrent_rpcs;
  options.auth = auth;
  options.quotas = make_quotas(config);
  workers = start_workers(config, device_count, options.gpu, options.evaluation_unavailable_reason);

  // Locals, not members: the service must hold the last reference to the
  // manager, whose jobs' callbacks point into it (~Service joins them).
  auto opened_db = open_tuning_db(config, config.cache_dir);
  if (!opened_db) return opened_db.error();
  std::shared_ptr<TuningDb> tuning_db = std::move(opened_db).value();
  std::shared_ptr<EvaluationBackend> backend = hooks.evaluation_backend;
  if (!backend && workers)
    backend = std::make_shared<flashcore::service::WorkerPoolBackend>(workers);
  std::shared_ptr<TuningManager> tuning;
  if (backend && tuning_db) {
    TuningManager::Options tuning_options;
    tuning_options.compile_ahead = hooks.tuning_compile_ahead;
    if (redis) tuning_options.fleet = std::make_shared<RedisBests>(redis);
    tuning = std::make_shared<TuningManager>(
        std::make_shared<flashcore::service::KernelCacheCompiler>(cache, compiler), backend,
        tuning_db, tuning_options);
  }
  if (redis) options.fleet_bests = std::make_shared<RedisBests>(redis);
  if (metrics) metrics->watch({cache, workers, tuning, tuning_db});
  service = std::make_unique<flashcore::service::Service>(cache, compiler, options, workers,
                                                          tuning, tuning_db);
  rpc = std::make_unique<flashcore::rpc::FlashCoreService>(*service);
  build_evolution(options, tuning_db);
  return ok_status();
}

// Submitted sources (issue 18): compiled in sandboxed worker processes,
// evaluated on the same workers, kept in their own SQLite store beside the
// tuning database. A store that does not open leaves EvaluateSource off.
void Daemon::Impl::build_evolution(const flashcore::service::ServiceOptions& options,
                                   const std::shared_ptr<TuningDb>& tuning_db) {
  const std::filesystem::path db_path =
      config.tuning_db.empty() ? default_tuning_db(config.cache_dir) : config.tuning_db;
  evolve::EvolutionServiceParts parts;
  parts.templates = templates;
  parts.cache = cache;
  parts.workers = workers;
  parts.workers_unavailable_reason = options.evaluation_unavailable_reason;
  parts.tuning_db = tuning_db;
  parts.auth = auth;
  parts.quotas = options.quotas;
  parts.default_arch = options.default_arch;
  parts.compile_worker = config.compile_worker;
  parts.store_path =
      config.candidates_db.empty() ? db_path.parent_path() / "candidates.db" : config.candidates_db;
  parts.limits = config.evolve;
  auto created = evolve::EvolutionService::create(std::move(parts));
  if (created) evolution = std::move(created).value();
  else spdlog::warn("{}; EvaluateSource is unavailable", created.error().message);
}

// The gRPC server: the rpc service, health and reflection, the metrics
// interceptor; binds the listener.
Status Daemon::Impl::serve(const std::shared_ptr<grpc::ServerCredentials>& credentials) {
  // Debian's Abseil is built without NDEBUG, so every absl::Mutex (gRPC's
  // locks, taken many times per call) also updates a deadlock-detection
  // graph: about 2% of the daemon's CPU samples on memory hits in perf.
  // A debugging aid for Abseil's users, not a check the daemon relies on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Both must be in place before the builder is made: they hook into it.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default: a second daemon on a busy port would
  // then bind "successfully" and silently split the traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(config.listen_address, credentials, &port);
  builder.SetMaxReceiveMessageSize(message_limit(config.max_message_bytes));
  builder.SetMaxSendMessageSize(message_limit(config.max_message_bytes));
  builder.RegisterService(rpc.get());
  queues = std::make_unique<flashcore::rpc::KernelQueues>(*rpc, builder, config.rpc_queues);
  if (evolution) builder.RegisterService(evolution.get());
  if (metrics) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
    creators.push_back(metrics->interceptor_factory());
    builder.experimental().SetInterceptorCreators(std::move(creators));
  }
  server = builder.BuildAndStart();
  if (!server || (port == 0 && !is_unix_address(config.listen_address)))
    return make_error(ErrorCode::unavailable, "cannot listen on " + config.listen_address);
  queues->start();
  return ok_status();
}

void Daemon::Impl::stop_serving(std::chrono::system_clock::time_point deadline) {
  // The daemon's own calls: the queues' (whose idle() is also what says
  // that Shutdown has begun), those holding an in-flight slot (every call
  // that waits on the service, Tune streams included) and the evaluation
  // streams. The rest answer within their handler, well inside kDrainSettle.
  auto holds_calls = [this] {
    return !queues->idle() || service->in_flight() > 0 || (evolution && evolution->streams() > 0);
  };
  drain_server(*server, deadline, holds_calls, kDrainSettle);
  // Only now: no call can still be asked for or finish on the queues.
  queues->stop();
}

Daemon::Daemon(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Daemon::~Daemon() {
  shutdown(impl_->config.drain_timeout);
  impl_->server->Wait();
}

int Daemon::port() const { return impl_->port; }

int Daemon::metrics_port() const { return impl_->metrics ? impl_->metrics->port() : 0; }

std::string Daemon::address() const {
  const std::string& listen = impl_->config.listen_address;
  if (is_unix_address(listen)) return listen;
  const auto colon = listen.rfind(':');
  const std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  return host + ":" + std::to_string(impl_->port);
}

void Daemon::shutdown(std::chrono::milliseconds drain) {
  std::lock_guard lock(impl_->shutdown_mutex);
  if (impl_->shut_down) return;
  impl_->shut_down = true;
  spdlog::info("shutting down: {} calls in flight get {} ms to finish", impl_->service->in_flight(),
               drain.count());
  // Load balancers polling health stop sending before the port closes.
  if (auto* health = impl_->server->GetHealthCheckService()) health->Shutdown();
  // Refuses new calls at once; calls still running at the deadline are
  // cancelled (a Compile then answers CANCELLED and its NVRTC run finishes
  // in the background).
  impl_->stop_serving(std::chrono::system_clock::now() + drain);
  // Evaluations of calls cancelled at the deadline end with their workers.
  if (impl_->workers) impl_->workers->shutdown();
  if (impl_->evolution) impl_->evolution->shutdown();  // kills running compile workers
}

void Daemon::wait() { impl_->server->Wait(); }

Status Daemon::reload_auth() {
  if (!impl_->auth) return ok_status();
  if (Status reloaded = impl_->auth->reload(); !reloaded) return reloaded;
  spdlog::info("auth tokens reloaded: {} client(s) from {}", impl_->auth->clients(),
               impl_->config.auth_tokens.string());
  return ok_status();
}

}  // namespace flashcore
