// A shared box (issue 16): tokens and roles on every method, TLS and mutual
// TLS, the refusal to listen beyond loopback unprotected, per-client quotas
// and tune-job ownership. Real gRPC on loopback, real NVRTC compiles of the
// small template; only GPU measurement is replaced (no GPU here) by a backend
// that scores configs with the searcher tests' synthetic objective.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <thread>

#include "../unit/search_test_objective.hpp"
#include "common/digest.hpp"
#include "flashcore/client.hpp"
#include "grpc/health/v1/health.grpc.pb.h"
#include "rpc_test_support.hpp"
#include "tuning/tuning_job.hpp"
#include "test_certs.hpp"

namespace flashcore {
namespace {

using namespace std::chrono_literals;
using rpc_testing::quick_request;

// Clients of the matrix: name, role, token.
struct TestClient {
  const char* name;
  const char* role;
  const char* token;
};
constexpr TestClient kReader{"reader", "read", "token-of-the-reader"};
constexpr TestClient kCompiler{"compiler", "compile", "token-of-the-compiler"};
constexpr TestClient kTuner{"tuner", "tune", "token-of-the-tuner"};
constexpr TestClient kTuner2{"tuner2", "tune", "token-of-the-second-tuner"};
constexpr TestClient kAdmin{"boss", "admin", "token-of-the-admin"};

std::filesystem::path write_token_file(const std::filesystem::path& dir) {
  const auto path = dir / "tokens";
  std::ofstream out(path);
  out << "# name role sha256(token)\n\n";
  for (const TestClient& c : {kReader, kCompiler, kTuner, kTuner2, kAdmin})
    out << c.name << " " << c.role << "   " << sha256_hex(c.token) << "  # " << c.role << "\n";
  return path;
}

// Measures nothing: a config's time is the synthetic objective's, after
// `delay` (standing in for GPU time); while `hold` is set, measurements wait
// (until released or their job is cancelled).
class HeldBackend final : public EvaluationBackend {
 public:
  explicit HeldBackend(std::chrono::milliseconds delay = 0ms) : delay_(delay) {}
  Result<Measurement> measure(const MeasureRequest& request) override {
    while (hold.load() && !(request.cancelled && request.cancelled->load()))
      std::this_thread::sleep_for(2ms);
    if (hold.load()) return make_error(ErrorCode::cancelled, "job cancelled");
    std::this_thread::sleep_for(delay_);
    const TrialOutcome outcome = test::test_objective(request.candidate->config);
    Measurement measured;
    measured.device = device_name(0);
    measured.correct = outcome.ok || !request.validate;
    measured.median_us = measured.p10_us = measured.p90_us = outcome.ok ? outcome.time_us : 100.0;
    measured.samples = 1;
    measured.tflops = 1000.0 / measured.median_us;
    if (!outcome.ok && request.validate) return make_error(ErrorCode::internal, outcome.failure);
    return measured;
  }
  int gpu_count() const override { return 1; }
  std::string device_name(int) const override { return "Synthetic Test Device"; }
  std::atomic<bool> hold{false};

 private:
  std::chrono::milliseconds delay_;
};

struct SharedBoxDaemon {
  test_support::ScratchDir templates, cache, files;
  std::shared_ptr<HeldBackend> backend;
  std::unique_ptr<Daemon> daemon;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::FlashCore::Stub> stub;
};

std::unique_ptr<SharedBoxDaemon> start_shared_box(
    const std::function<void(DaemonConfig&, SharedBoxDaemon&)>& adjust,
    std::shared_ptr<HeldBackend> backend = nullptr,
    const std::string& template_source = test_support::kSmallAttentionTemplate) {
  auto d = std::make_unique<SharedBoxDaemon>();
  test_support::write_attention_templates(d->templates, template_source);
  DaemonConfig config = rpc_testing::loopback_config(d->cache.path());
  config.templates_dir = d->templates.path();
  config.auth_tokens = write_token_file(d->files.path());
  if (adjust) adjust(config, *d);
  d->backend = std::move(backend);
  DaemonHooks hooks;
  hooks.evaluation_backend = d->backend;
  spdlog::set_level(spdlog::level::warn);
  auto started = Daemon::start(config, hooks);
  if (!started) {
    ADD_FAILURE() << "Daemon::start: " << started.error().message;
    return nullptr;
  }
  d->daemon = std::move(started).value();
  d->channel = rpc_testing::channel_to(*d->daemon);
  d->stub = v1::FlashCore::NewStub(d->channel);
  return d;
}

void authorize(grpc::ClientContext& context, const std::string& authorization,
               std::chrono::seconds deadline = 60s) {
  context.set_deadline(std::chrono::system_clock::now() + deadline);
  if (!authorization.empty()) context.AddMetadata("authorization", authorization);
}

std::string bearer(const TestClient& c) { return std::string("Bearer ") + c.token; }

// One call of every FlashCore method, each with a request that passes
// authentication and then fails fast (or succeeds) without compiling.
struct MethodCall {
  std::string name;
  int needed;  // 0 read, 1 compile, 2 tune, 3 admin
  std::function<grpc::Status(v1::FlashCore::Stub&, const std::string&)> call;
};

std::vector<MethodCall> every_method() {
  v1::KernelRequest bad_kernel = quick_request();
  bad_kernel.mutable_problem()->set_head_dim(7);  // INVALID_ARGUMENT once admitted
  std::vector<MethodCall> calls;
  calls.push_back({"GetServerInfo", 0, [](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::ServerInfo r;
                     return stub.GetServerInfo(&c, {}, &r);
                   }});
  calls.push_back({"ListKernels", 0, [](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::ListKernelsResponse r;
                     return stub.ListKernels(&c, {}, &r);
                   }});
  calls.push_back({"GetKernel", 0, [](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::GetKernelRequest q;
                     q.set_key(std::string(64, 'a'));
                     v1::KernelHandle r;
                     return stub.GetKernel(&c, q, &r);
                   }});
  calls.push_back({"GetTuningResult", 0, [bad_kernel](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::GetTuningResultRequest q;
                     *q.mutable_kernel() = bad_kernel;
                     v1::TuningResult r;
                     return stub.GetTuningResult(&c, q, &r);
                   }});
  calls.push_back({"ListTuningResults", 0, [](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::ListTuningResultsResponse r;
                     return stub.ListTuningResults(&c, {}, &r);
                   }});
  calls.push_back({"ListTuneJobs", 0, [](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::ListTuneJobsResponse r;
                     return stub.ListTuneJobs(&c, {}, &r);
                   }});
  calls.push_back({"ListTuningJobs", 0, [](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::ListTuningJobsResponse r;
                     return stub.ListTuningJobs(&c, {}, &r);
                   }});
  calls.push_back({"GetTuningJob", 0, [](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::GetTuningJobRequest q;
                     q.set_job_id(424242);  // NOT_FOUND once admitted
                     v1::TuningJobTrials r;
                     return stub.GetTuningJob(&c, q, &r);
                   }});
  calls.push_back({"Compile", 1, [bad_kernel](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::KernelHandle r;
                     return stub.Compile(&c, bad_kernel, &r);
                   }});
  calls.push_back({"Validate", 1, [bad_kernel](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::ValidateRequest q;
                     *q.mutable_kernel() = bad_kernel;
                     v1::KernelHandle r;
                     return stub.Validate(&c, q, &r);
                   }});
  calls.push_back({"Tune", 2, [bad_kernel](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::TuneRequest q;
                     *q.mutable_kernel() = bad_kernel;
                     auto reader = stub.Tune(&c, q);
                     v1::TuneProgress progress;
                     while (reader->Read(&progress)) {
                     }
                     return reader->Finish();
                   }});
  calls.push_back({"CancelTuneJob", 2, [](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::CancelTuneJobRequest q;
                     q.set_id(424242);
                     v1::CancelTuneJobResponse r;
                     return stub.CancelTuneJob(&c, q, &r);
                   }});
  calls.push_back({"ClearCache", 3, [](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::CacheChange r;
                     return stub.ClearCache(&c, {}, &r);
                   }});
  calls.push_back({"EvictCache", 3, [](auto& stub, const std::string& a) {
                     grpc::ClientContext c;
                     authorize(c, a);
                     v1::CacheChange r;  // no keys, no size: INVALID_ARGUMENT once admitted
                     return stub.EvictCache(&c, {}, &r);
                   }});
  return calls;
}

TEST(SharedBoxAuthTest, EveryMethodChecksTheTokenAndTheRole) {
  auto d = start_shared_box(nullptr);
  ASSERT_NE(d, nullptr);
  struct Credential {
    std::string label, authorization;
    int role;  // -1: not authenticated
  };
  const std::vector<Credential> credentials = {
      {"no token", "", -1},
      {"unknown token", "Bearer not-a-token-of-anyone", -1},
      {"a hash as token", "Bearer " + sha256_hex(kAdmin.token), -1},
      {"not a bearer", std::string("Basic ") + kAdmin.token, -1},
      {"empty bearer", "Bearer ", -1},
      {"reader", bearer(kReader), 0},
      {"compiler", bearer(kCompiler), 1},
      {"tuner", bearer(kTuner), 2},
      {"admin", bearer(kAdmin), 3},
  };
  int refused = 0, answered = 0;
  for (const auto& method : every_method()) {
    for (const auto& credential : credentials) {
      const grpc::Status status = method.call(*d->stub, credential.authorization);
      SCOPED_TRACE(method.name + " with " + credential.label + ": " +
                   std::to_string(status.error_code()) + " " + status.error_message());
      if (credential.role < 0) {
        EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
        ++refused;
      } else if (credential.role < method.needed) {
        EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
        EXPECT_NE(status.error_message().find("needs role"), std::string::npos);
        ++refused;
      } else {
        EXPECT_NE(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
        EXPECT_NE(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
        ++answered;
      }
    }
  }
  std::printf("auth matrix: %d calls refused, %d admitted, %zu methods x %zu credentials\n",
              refused, answered, every_method().size(), credentials.size());

  // A real compile with the compiler's token, fetched back by the reader.
  v1::KernelHandle handle;
  {
    grpc::ClientContext c;
    authorize(c, bearer(kCompiler), 120s);
    ASSERT_TRUE(d->stub->Compile(&c, quick_request(), &handle).ok());
  }
  {
    grpc::ClientContext c;
    authorize(c, bearer(kReader));
    v1::GetKernelRequest q;
    q.set_key(handle.key());
    v1::KernelHandle fetched;
    ASSERT_TRUE(d->stub->GetKernel(&c, q, &fetched).ok());
    EXPECT_EQ(fetched.cubin(), handle.cubin());
  }
  // Health stays open for probes.
  auto health = grpc::health::v1::Health::NewStub(d->channel);
  grpc::ClientContext c;
  c.set_deadline(std::chrono::system_clock::now() + 30s);
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(health->Check(&c, {}, &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST(SharedBoxAuthTest, ClientLibrarySendsTheTokenFromOptionsOrEnvironment) {
  auto d = start_shared_box(nullptr);
  ASSERT_NE(d, nullptr);
  client::ConnectOptions options;
  options.address = d->daemon->address();
  unsetenv("FLASHCORE_TOKEN");
  auto anonymous = client::Client::connect(options);
  ASSERT_TRUE(anonymous.ok());
  auto refused = anonymous->server_info();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::unauthenticated) << refused.error().message;

  options.token = kReader.token;
  auto reader = client::Client::connect(options);
  ASSERT_TRUE(reader.ok());
  EXPECT_TRUE(reader->server_info().ok());
  auto compile = reader->compile(quick_request());
  ASSERT_FALSE(compile.ok());
  EXPECT_EQ(compile.error().code, ErrorCode::permission_denied);
  EXPECT_NE(compile.error().message.find("client 'reader' has role read"), std::string::npos)
      << compile.error().message;

  options.token.clear();
  setenv("FLASHCORE_TOKEN", kCompiler.token, 1);
  auto from_env = client::Client::connect(options);
  unsetenv("FLASHCORE_TOKEN");
  ASSERT_TRUE(from_env.ok());
  EXPECT_TRUE(from_env->compile(quick_request()).ok());
}

TEST(SharedBoxAuthTest, ABadTokenFileStopsTheStartNamingTheLine) {
  test_support::ScratchDir dir;
  std::ofstream(dir / "tokens") << "alice read " << sha256_hex("x") << "\nbob writer "
                                << sha256_hex("y") << "\n";
  DaemonConfig config = rpc_testing::loopback_config(dir / "cache");
  config.auth_tokens = dir / "tokens";
  auto started = Daemon::start(config);
  ASSERT_FALSE(started.ok());
  EXPECT_NE(started.error().message.find("tokens:2: role 'writer'"), std::string::npos)
      << started.error().message;
  // No secret in the file: a line that is not a hash is refused.
  std::ofstream(dir / "tokens", std::ios::trunc) << "alice read my-plain-password\n";
  started = Daemon::start(config);
  ASSERT_FALSE(started.ok());
  EXPECT_NE(started.error().message.find("64 hex characters"), std::string::npos)
      << started.error().message;
}

// ---- TLS ----

class SharedBoxTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    certs_ = rpc_testing::make_test_certs(dir_.path());
    ASSERT_TRUE(certs_.ok) << certs_.error;
  }
  Result<client::Client> connect(const Daemon& daemon, const std::string& ca,
                                 const std::string& cert = "", const std::string& key = "",
                                 const std::string& token = kReader.token) {
    client::ConnectOptions options;
    options.address = daemon.address();
    options.connect_timeout = 3000ms;
    options.tls_ca_file = ca;
    options.tls_cert_file = cert;
    options.tls_key_file = key;
    options.token = token;
    return client::Client::connect(options);
  }
  test_support::ScratchDir dir_;
  rpc_testing::TestCerts certs_;
};

TEST_F(SharedBoxTlsTest, ServesOverTlsAndRefusesPlaintextAndAnUnknownCa) {
  auto d = start_shared_box([&](DaemonConfig& config, SharedBoxDaemon&) {
    config.tls_cert = certs_.server_cert;
    config.tls_key = certs_.server_key;
  });
  ASSERT_NE(d, nullptr);
  auto tls = connect(*d->daemon, certs_.ca.string());
  ASSERT_TRUE(tls.ok()) << tls.error().message;
  EXPECT_TRUE(tls->server_info().ok());
  // The token still counts over TLS.
  auto no_token = connect(*d->daemon, certs_.ca.string(), "", "", "");
  ASSERT_TRUE(no_token.ok());
  auto refused = no_token->server_info();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::unauthenticated);

  EXPECT_FALSE(connect(*d->daemon, "").ok()) << "plaintext client served by a TLS listener";
  EXPECT_FALSE(connect(*d->daemon, certs_.other_ca.string()).ok())
      << "a certificate from an unknown CA was accepted";
}

TEST_F(SharedBoxTlsTest, MutualTlsNeedsAClientCertificateFromTheCa) {
  auto d = start_shared_box([&](DaemonConfig& config, SharedBoxDaemon&) {
    config.tls_cert = certs_.server_cert;
    config.tls_key = certs_.server_key;
    config.tls_client_ca = certs_.ca;
  });
  ASSERT_NE(d, nullptr);
  EXPECT_FALSE(connect(*d->daemon, certs_.ca.string()).ok()) << "no client certificate accepted";
  // A client certificate the client CA did not sign: the other CA's own.
  EXPECT_FALSE(connect(*d->daemon, certs_.ca.string(), certs_.other_ca.string(),
                       (dir_ / "other-ca.key").string())
                   .ok())
      << "a client certificate from another CA was accepted";
  auto good = connect(*d->daemon, certs_.ca.string(), certs_.client_cert.string(),
                      certs_.client_key.string());
  ASSERT_TRUE(good.ok()) << good.error().message;
  EXPECT_TRUE(good->server_info().ok());
}

// ---- Listening beyond loopback ----

TEST_F(SharedBoxTlsTest, BeyondLoopbackNeedsAuthAndTlsOrInsecure) {
  const auto tokens = write_token_file(dir_.path());
  const auto attempt = [&](const std::function<void(DaemonConfig&)>& adjust) {
    DaemonConfig config = rpc_testing::loopback_config(dir_ / "cache");
    config.listen_address = "0.0.0.0:0";
    adjust(config);
    return Daemon::start(config);
  };
  auto bare = attempt([](DaemonConfig&) {});
  ASSERT_FALSE(bare.ok());
  EXPECT_NE(bare.error().message.find("refusing to listen on 0.0.0.0:0"), std::string::npos)
      << bare.error().message;
  auto auth_only = attempt([&](DaemonConfig& c) { c.auth_tokens = tokens; });
  ASSERT_FALSE(auth_only.ok());
  EXPECT_NE(auth_only.error().message.find("without TLS"), std::string::npos)
      << auth_only.error().message;
  auto tls_only = attempt([&](DaemonConfig& c) {
    c.tls_cert = certs_.server_cert;
    c.tls_key = certs_.server_key;
  });
  ASSERT_FALSE(tls_only.ok());
  EXPECT_NE(tls_only.error().message.find("without authentication"), std::string::npos);
  {
    auto both = attempt([&](DaemonConfig& c) {
      c.auth_tokens = tokens;
      c.tls_cert = certs_.server_cert;
      c.tls_key = certs_.server_key;
    });
    ASSERT_TRUE(both.ok()) << both.error().message;
  }
  {
    auto insecure = attempt([](DaemonConfig& c) { c.insecure = true; });
    ASSERT_TRUE(insecure.ok()) << insecure.error().message;
  }
  // Loopback needs neither.
  DaemonConfig loopback = rpc_testing::loopback_config(dir_ / "cache");
  auto local = Daemon::start(loopback);
  EXPECT_TRUE(local.ok());
}

// ---- Quotas ----

// A compile that takes a second or more, so a second call lands while it runs.
TEST(SharedBoxQuotaTest, ConcurrentCompilesArePerClient) {
  auto d = start_shared_box(
      [](DaemonConfig& config, SharedBoxDaemon&) { config.quota_concurrent_compiles = 1; },
      nullptr, test_support::slow_attention_template(500));
  ASSERT_NE(d, nullptr);
  auto first = std::async(std::launch::async, [&] {
    grpc::ClientContext c;
    authorize(c, bearer(kCompiler), 300s);
    v1::KernelHandle handle;
    return d->stub->Compile(&c, quick_request(), &handle);
  });
  std::this_thread::sleep_for(300ms);
  v1::KernelRequest other = quick_request();
  other.mutable_config()->set_block_n(32);
  int refused = 0;
  grpc::Status second;
  // Until the first compile ends, the same client's second one is refused.
  while (first.wait_for(0ms) != std::future_status::ready) {
    grpc::ClientContext c;
    authorize(c, bearer(kCompiler));
    v1::KernelHandle handle;
    second = d->stub->Compile(&c, other, &handle);
    if (second.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    EXPECT_NE(second.error_message().find("quota concurrent_compiles"), std::string::npos);
    EXPECT_NE(second.error_message().find("client 'compiler'"), std::string::npos);
    EXPECT_NE(second.error_message().find("frees when"), std::string::npos);
    ++refused;
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_GT(refused, 0) << "the first compile ended before a second one was tried";
  // Another client is not held back by the compiler's quota ...
  {
    grpc::ClientContext c;
    authorize(c, bearer(kAdmin), 300s);
    v1::KernelHandle handle;
    EXPECT_TRUE(d->stub->Compile(&c, other, &handle).ok());
  }
  ASSERT_TRUE(first.get().ok());
  // ... and the slot frees with the first compile's end.
  grpc::ClientContext c;
  authorize(c, bearer(kCompiler), 300s);
  v1::KernelHandle handle;
  EXPECT_TRUE(d->stub->Compile(&c, other, &handle).ok());
}

v1::TuneRequest quota_tune(int64_t seq) {
  v1::TuneRequest request;
  v1::KernelRequest* kernel = request.mutable_kernel();
  kernel->set_template_id("attention_fwd");
  kernel->set_arch("sm_86");
  v1::Problem* problem = kernel->mutable_problem();
  problem->set_dtype(v1::DTYPE_FP16);
  problem->set_head_dim(256);
  problem->set_batch(2);
  problem->set_heads(8);
  problem->set_seq_q(seq);
  request.set_max_evaluations(6);
  request.set_seed(7);
  request.set_force(true);
  request.set_time_budget_ms(3'600'000);
  return request;
}

// A Tune on its own thread; `started` once the job holds a GPU.
struct RunningTune {
  grpc::ClientContext context;
  std::promise<void> started;
  std::future<grpc::Status> done;
  std::atomic<bool> saw_started{false};

  RunningTune(v1::FlashCore::Stub& stub, const TestClient& who, v1::TuneRequest request) {
    authorize(context, bearer(who), 600s);
    done = std::async(std::launch::async, [this, &stub, request] {
      auto reader = stub.Tune(&context, request);
      v1::TuneProgress progress;
      while (reader->Read(&progress)) {
        if (progress.has_started() && !saw_started.exchange(true)) started.set_value();
      }
      return reader->Finish();
    });
  }
  ~RunningTune() {
    context.TryCancel();
    if (done.valid()) done.wait();
  }
};

std::vector<v1::TuneJob> list_jobs(v1::FlashCore::Stub& stub, const TestClient& who) {
  grpc::ClientContext c;
  authorize(c, bearer(who));
  v1::ListTuneJobsResponse response;
  EXPECT_TRUE(stub.ListTuneJobs(&c, {}, &response).ok());
  return {response.jobs().begin(), response.jobs().end()};
}

grpc::Status cancel_job(v1::FlashCore::Stub& stub, const TestClient& who, int64_t id) {
  grpc::ClientContext c;
  authorize(c, bearer(who));
  v1::CancelTuneJobRequest request;
  request.set_id(id);
  v1::CancelTuneJobResponse response;
  return stub.CancelTuneJob(&c, request, &response);
}

TEST(SharedBoxQuotaTest, TuneJobsHaveOwnersAQuotaAndAreCancelledByOwnerOrAdmin) {
  auto backend = std::make_shared<HeldBackend>();
  backend->hold = true;
  auto d = start_shared_box(
      [](DaemonConfig& config, SharedBoxDaemon&) { config.quota_tune_jobs = 1; }, backend);
  ASSERT_NE(d, nullptr);

  auto mine = std::make_unique<RunningTune>(*d->stub, kTuner, quota_tune(1000));
  ASSERT_EQ(mine->started.get_future().wait_for(300s), std::future_status::ready);
  // The tuner's second job is over its quota; the other tuner's is not (it queues).
  {
    grpc::ClientContext c;
    authorize(c, bearer(kTuner));
    auto reader = d->stub->Tune(&c, quota_tune(2000));
    v1::TuneProgress progress;
    while (reader->Read(&progress)) {
    }
    const grpc::Status status = reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_NE(status.error_message().find("quota tune_jobs: client 'tuner' has 1 of 1"),
              std::string::npos)
        << status.error_message();
  }
  auto theirs = std::make_unique<RunningTune>(*d->stub, kTuner2, quota_tune(4000));
  std::vector<v1::TuneJob> all;
  for (int i = 0; i < 1000 && all.size() < 2; ++i) {
    all = list_jobs(*d->stub, kAdmin);
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(all.size(), 2u);
  const auto own = list_jobs(*d->stub, kTuner);
  ASSERT_EQ(own.size(), 1u);
  EXPECT_EQ(own[0].owner(), "tuner");
  EXPECT_EQ(own[0].state(), "running");
  EXPECT_GT(own[0].database_job_id(), 0);
  EXPECT_TRUE(list_jobs(*d->stub, kReader).empty());
  const int64_t theirs_id = all[0].owner() == "tuner2" ? all[0].id() : all[1].id();
  EXPECT_EQ(all[0].owner() == "tuner2" ? all[0].state() : all[1].state(), "queued");

  // Another client's job: invisible to the tuner, refused to a reader.
  EXPECT_EQ(cancel_job(*d->stub, kTuner, theirs_id).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(cancel_job(*d->stub, kReader, theirs_id).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // The admin may cancel it; its stream ends naming who did.
  ASSERT_TRUE(cancel_job(*d->stub, kAdmin, theirs_id).ok());
  ASSERT_EQ(theirs->done.wait_for(120s), std::future_status::ready);
  const grpc::Status cancelled = theirs->done.get();
  EXPECT_EQ(cancelled.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_NE(cancelled.error_message().find("cancelled by client 'boss'"), std::string::npos)
      << cancelled.error_message();
  // The owner cancels its own.
  ASSERT_TRUE(cancel_job(*d->stub, kTuner, own[0].id()).ok());
  ASSERT_EQ(mine->done.wait_for(120s), std::future_status::ready);
  EXPECT_EQ(mine->done.get().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(list_jobs(*d->stub, kAdmin).empty());
  // Its quota slot is free again.
  backend->hold = false;
  RunningTune again(*d->stub, kTuner, quota_tune(1000));
  ASSERT_EQ(again.done.wait_for(300s), std::future_status::ready);
  EXPECT_TRUE(again.done.get().ok());
}

TEST(SharedBoxQuotaTest, GpuSecondsPerHourCutTheBudgetAndThenRefuse) {
  // Each measurement "takes" 400 ms of GPU time; the quota is 1 GPU-second.
  auto backend = std::make_shared<HeldBackend>(400ms);
  auto d = start_shared_box(
      [](DaemonConfig& config, SharedBoxDaemon&) { config.quota_tune_gpu_seconds_per_hour = 1; },
      backend);
  ASSERT_NE(d, nullptr);
  v1::TuneRequest request = quota_tune(1000);
  request.set_max_evaluations(50);  // the budget, cut to 1 s, ends it first
  const auto begun = std::chrono::steady_clock::now();
  {
    RunningTune first(*d->stub, kTuner, request);
    ASSERT_EQ(first.done.wait_for(300s), std::future_status::ready);
    EXPECT_TRUE(first.done.get().ok());
  }
  EXPECT_LT(std::chrono::steady_clock::now() - begun, 120s);
  grpc::ClientContext c;
  authorize(c, bearer(kTuner));
  auto reader = d->stub->Tune(&c, quota_tune(2000));
  v1::TuneProgress progress;
  while (reader->Read(&progress)) {
  }
  const grpc::Status refused = reader->Finish();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.error_message().find("quota tune_gpu_seconds_per_hour: client 'tuner' used"),
            std::string::npos)
      << refused.error_message();
  EXPECT_NE(refused.error_message().find("frees in "), std::string::npos);
  // Another client still has its hour.
  RunningTune other(*d->stub, kTuner2, quota_tune(4000));
  ASSERT_EQ(other.started.get_future().wait_for(300s), std::future_status::ready);
}

// Without authentication every caller is one client, "anonymous", and the
// quotas are the daemon's.
TEST(SharedBoxQuotaTest, WithoutAuthEveryCallerIsAnonymous) {
  auto backend = std::make_shared<HeldBackend>();
  backend->hold = true;
  auto d = start_shared_box(
      [](DaemonConfig& config, SharedBoxDaemon&) {
        config.auth_tokens.clear();
        config.quota_tune_jobs = 1;
      },
      backend);
  ASSERT_NE(d, nullptr);
  RunningTune first(*d->stub, kTuner, quota_tune(1000));  // the token is ignored
  ASSERT_EQ(first.started.get_future().wait_for(300s), std::future_status::ready);
  grpc::ClientContext c;
  authorize(c, "");
  v1::ListTuneJobsResponse jobs;
  ASSERT_TRUE(d->stub->ListTuneJobs(&c, {}, &jobs).ok());
  ASSERT_EQ(jobs.jobs_size(), 1);
  EXPECT_EQ(jobs.jobs(0).owner(), "anonymous");
  grpc::ClientContext c2;
  authorize(c2, "");
  auto reader = d->stub->Tune(&c2, quota_tune(2000));
  v1::TuneProgress progress;
  while (reader->Read(&progress)) {
  }
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(status.error_message().find("client 'anonymous'"), std::string::npos);
}

}  // namespace
}  // namespace flashcore
