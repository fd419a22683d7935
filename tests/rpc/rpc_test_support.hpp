// Shared by the RPC tests: an in-process daemon on a loopback port, request
// builders and call helpers. Scratch folders and the small templates are in
// tests/common, shared with the unit tests.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "app/daemon.hpp"
#include "flashcore/client.hpp"
#include "flashcore/v1/flashcore.grpc.pb.h"
#include "scratch_dir.hpp"
#include "test_templates.hpp"

namespace flashcore::rpc_testing {

inline DaemonConfig loopback_config(const std::filesystem::path& cache_dir) {
  DaemonConfig config;
  config.listen_address = "127.0.0.1:0";
  config.cache_dir = cache_dir;
  config.tuning_db = cache_dir / "tuning.db";  // the test's own, not the user's state folder
  config.compile_threads = 2;
  config.drain_timeout = std::chrono::milliseconds(5000);
  config.log_level = "warn";
  return config;
}

// The built evaluation worker; FLASHCORE_WORKER_BINARY names another (a
// bundle's, on a GPU box).
inline void use_real_worker(DaemonConfig& config) {
  const char* other = std::getenv("FLASHCORE_WORKER_BINARY");
  config.worker_binary = other != nullptr && *other != '\0' ? other : FLASHCORE_WORKER_PATH;
}

inline std::unique_ptr<Daemon> start_daemon(const DaemonConfig& config) {
  spdlog::set_level(spdlog::level::from_str(config.log_level));  // main() does this for flashcored
  auto daemon = Daemon::start(config);
  if (!daemon) {
    ADD_FAILURE() << "Daemon::start: " << daemon.error().message;
    return nullptr;
  }
  return std::move(daemon).value();
}

// A daemon with the built evaluation worker (use_real_worker) and a client
// connected to it. `skip` says why the daemon has no GPU workers (empty where
// it has): GPU tests check what needs none first, then skip with it. The
// client goes before the daemon.
struct WorkerDaemon {
  std::unique_ptr<Daemon> daemon;
  std::optional<client::Client> client;
  v1::ServerInfo info;
  std::string skip;
};

inline void start_worker_daemon(DaemonConfig config, WorkerDaemon& out) {
  use_real_worker(config);
  out.daemon = start_daemon(config);
  ASSERT_NE(out.daemon, nullptr);
  client::ConnectOptions options;
  options.address = out.daemon->address();
  auto connected = client::Client::connect(options);
  ASSERT_TRUE(connected.ok()) << connected.error().message;
  out.client.emplace(std::move(connected.value()));
  auto info = out.client->server_info();
  ASSERT_TRUE(info.ok()) << info.error().message;
  out.info = *info;
  if (!out.info.gpu_available())
    out.skip = "no evaluation workers: " + out.info.gpu_unavailable_reason();
}

// A call that a daemon's shutdown ended: refused or cancelled.
inline bool ended_by_shutdown(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::CANCELLED ||
         status.error_code() == grpc::StatusCode::UNAVAILABLE;
}

// A test with its own template and cache folders: config(source) writes the
// attention templates with `source` and gives a loopback daemon serving them.
class TemplatesDaemonTest : public ::testing::Test {
 protected:
  DaemonConfig config(const std::string& source) {
    test_support::write_attention_templates(templates_, source);
    DaemonConfig config = loopback_config(cache_.path());
    config.templates_dir = templates_.path();
    return config;
  }

  test_support::ScratchDir templates_;
  test_support::ScratchDir cache_;
};

inline std::shared_ptr<grpc::Channel> channel_to(const Daemon& daemon) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return grpc::CreateCustomChannel(daemon.address(), grpc::InsecureChannelCredentials(), args);
}

// A daemon serving the small template from scratch folders of its own. The
// members are destroyed bottom-up: the stub, then the daemon (it drains, then
// stops), then the folders.
struct SmallTemplateDaemon {
  test_support::ScratchDir templates;
  test_support::ScratchDir cache;
  std::unique_ptr<Daemon> daemon;
  std::unique_ptr<v1::FlashCore::Stub> stub;
};

// `adjust` may change the loopback config before the daemon starts. Null
// (with the failure recorded) when the daemon does not start.
inline std::unique_ptr<SmallTemplateDaemon> start_small_template_daemon(
    const std::function<void(DaemonConfig&)>& adjust = nullptr) {
  auto server = std::make_unique<SmallTemplateDaemon>();
  test_support::write_attention_templates(server->templates, test_support::kSmallAttentionTemplate);
  DaemonConfig config = loopback_config(server->cache.path());
  config.templates_dir = server->templates.path();
  if (adjust) adjust(config);
  server->daemon = start_daemon(config);
  if (server->daemon == nullptr) return nullptr;
  server->stub = v1::FlashCore::NewStub(channel_to(*server->daemon));
  return server;
}

// A request the small template compiles: fp16, head_dim 64, 2 x 8 heads,
// 500 query rows, the default tile, on sm_80.
inline v1::KernelRequest quick_request() {
  v1::KernelRequest request;
  request.set_template_id("attention_fwd");
  v1::Problem* problem = request.mutable_problem();
  problem->set_dtype(v1::DTYPE_FP16);
  problem->set_head_dim(64);
  problem->set_batch(2);
  problem->set_heads(8);
  problem->set_seq_q(500);
  v1::TileConfig* config = request.mutable_config();
  config->set_block_m(128);
  config->set_block_n(64);
  config->set_warps(4);
  config->set_stages(2);
  request.set_arch("sm_80");
  return request;
}

// A Tune for the GPU tests: B1 H4 S256 (4 key tiles of 64), fp16, head_dim 64,
// the daemon's arch (a few microseconds per launch), exhaustive, stopped by
// the evaluation count, short timed loops.
inline v1::TuneRequest gpu_tune_request(int max_evaluations) {
  v1::TuneRequest request;
  v1::KernelRequest* kernel = request.mutable_kernel();
  *kernel = quick_request();
  kernel->clear_arch();  // the daemon's GPU
  kernel->clear_config();
  v1::Problem* problem = kernel->mutable_problem();
  problem->set_dtype(v1::DTYPE_FP16);
  problem->set_head_dim(64);
  problem->set_batch(1);
  problem->set_heads(4);
  problem->set_seq_q(256);
  request.set_searcher("exhaustive");
  request.set_max_evaluations(max_evaluations);
  // Far past what the counted candidates need: the count stops the search.
  request.set_time_budget_ms(300000);
  request.set_force(true);
  // Few, short timed loops: these tests are about verdicts, not timings.
  request.mutable_timing()->set_warmup(1);
  request.mutable_timing()->set_repetitions(3);
  request.mutable_timing()->set_target_loop_ms(0.5);
  return request;
}

inline grpc::Status compile(v1::FlashCore::Stub& stub, const v1::KernelRequest& request,
                            v1::KernelHandle* handle, int deadline_s = 120) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(deadline_s));
  return stub.Compile(&context, request, handle);
}

inline grpc::Status get_kernel(v1::FlashCore::Stub& stub, const v1::GetKernelRequest& request,
                               v1::KernelHandle* handle) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return stub.GetKernel(&context, request, handle);
}

inline grpc::Status list_kernels(v1::FlashCore::Stub& stub, int page_size, const std::string& token,
                                 v1::ListKernelsResponse* response) {
  v1::ListKernelsRequest request;
  request.set_page_size(page_size);
  request.set_page_token(token);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return stub.ListKernels(&context, request, response);
}

inline grpc::Status server_info(v1::FlashCore::Stub& stub, v1::ServerInfo* info) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return stub.GetServerInfo(&context, v1::GetServerInfoRequest{}, info);
}

inline bool is_lower_hex(const std::string& s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace flashcore::rpc_testing
