// Cache-hit latency over loopback: a memory hit through the daemon (GetKernel
// and Compile, with and without line info, and with the client's cached_key
// so no cubin travels) against a Redis GET of the same bytes from the same
// kind of client loop, at 1 and at N concurrent clients, each client on a
// connection of its own. Prints a markdown table (bench/RESULTS.md §4).
//
//   bench/run_hit_latency_bench.sh [--clients 8] [--requests 2000]
//
// The daemon is the one --address names (run_hit_latency_bench.sh starts a
// flashcored process, as clients and Redis are processes of their own);
// without --address it runs in this process on 127.0.0.1:0 with the
// embedded templates and a scratch cache, where gRPC's client and server
// share one poller and hand events between their threads. Redis is the one
// --redis names.
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "app/daemon.hpp"
#include "flashcore/v1/flashcore.grpc.pb.h"
#include "redis/redis_client.hpp"

namespace fc = flashcore;
namespace v1 = flashcore::v1;
using Clock = std::chrono::steady_clock;

namespace {

struct Stats {
  double p50_us = 0, p99_us = 0, mean_us = 0, per_second = 0;
  size_t bytes = 0;
};

Stats summarize(std::vector<double> us, double wall_s, size_t bytes) {
  std::sort(us.begin(), us.end());
  Stats s;
  s.p50_us = us[us.size() / 2];
  s.p99_us = us[std::min(us.size() - 1, us.size() * 99 / 100)];
  double total = 0;
  for (double u : us) total += u;
  s.mean_us = total / us.size();
  s.per_second = us.size() / wall_s;
  s.bytes = bytes;
  return s;
}

// `make_call(client)` returns one client's call; each runs `requests` times
// after `warmup`, all clients at once.
Stats run(int clients, int requests, int warmup,
          const std::function<std::function<size_t()>(int)>& make_call) {
  std::vector<std::function<size_t()>> calls;
  for (int c = 0; c < clients; ++c) calls.push_back(make_call(c));
  std::vector<std::vector<double>> latencies(clients);
  std::barrier start(clients + 1);
  std::atomic<size_t> bytes{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      for (int i = 0; i < warmup; ++i) calls[c]();
      start.arrive_and_wait();
      latencies[c].reserve(requests);
      for (int i = 0; i < requests; ++i) {
        const auto t0 = Clock::now();
        const size_t got = calls[c]();
        latencies[c].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
        if (i == 0) bytes = got;
      }
    });
  start.arrive_and_wait();
  const auto t0 = Clock::now();
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  return summarize(std::move(all), wall, bytes);
}

std::unique_ptr<v1::FlashCore::Stub> stub_for(const std::string& address, int client) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  // A channel (and TCP connection) of its own per client, as separate processes would have.
  args.SetInt("flashcore.bench.client", client);
  return v1::FlashCore::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"cache-hit latency over loopback: daemon memory hit against a Redis GET"};
  std::string redis_url;
  int clients = 8, requests = 2000, warmup = 200, head_dim = 128;
  std::string arch = "sm_90a";
  std::string daemon_address;
  std::vector<std::string> floors;
  app.add_option("--redis", redis_url, "redis://host:port/db to GET the same bytes from")->required();
  app.add_option("--address", daemon_address,
                 "a running flashcored to measure; empty: one in this process");
  app.add_option("--floor", floors,
                 "NAME=ADDRESS of a grpc_floor_server to time beside the daemon (repeatable)");
  app.add_option("--clients", clients, "concurrent clients")->capture_default_str();
  app.add_option("--requests", requests, "timed requests per client")->capture_default_str();
  app.add_option("--warmup", warmup, "untimed requests per client first")->capture_default_str();
  app.add_option("--head-dim", head_dim, "the kernel's head_dim")->capture_default_str();
  app.add_option("--arch", arch, "the kernel's arch")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);

  char scratch_pattern[] = "/tmp/flashcore_hit_bench_XXXXXX";
  const std::filesystem::path scratch = mkdtemp(scratch_pattern);
  std::unique_ptr<fc::Daemon> daemon;
  if (daemon_address.empty()) {
    fc::DaemonConfig config;
    config.listen_address = "127.0.0.1:0";
    config.cache_dir = scratch / "cache";
    config.tuning_db = scratch / "tuning.db";
    config.log_level = "warn";
    auto started = fc::Daemon::start(config);
    if (!started) {
      std::fprintf(stderr, "daemon: %s\n", started.error().message.c_str());
      return 1;
    }
    daemon = std::move(started).value();
  }
  const std::string address = daemon ? daemon->address() : daemon_address;

  auto url = fc::redis::parse_redis_url(redis_url);
  if (!url) {
    std::fprintf(stderr, "%s\n", url.error().message.c_str());
    return 2;
  }

  // The two kernels: the family's default for the problem, without and with line info.
  v1::KernelRequest request;
  request.set_template_id("attention_fwd");
  request.set_arch(arch);
  request.mutable_problem()->set_dtype(v1::DTYPE_FP16);
  request.mutable_problem()->set_head_dim(head_dim);
  request.mutable_problem()->set_batch(4);
  request.mutable_problem()->set_heads(16);
  request.mutable_problem()->set_seq_q(2048);
  v1::KernelRequest request_lines = request;
  request_lines.set_line_info(true);
  auto setup = stub_for(address, -1);
  v1::KernelHandle plain, lines;
  for (auto [req, out] : {std::pair{&request, &plain}, std::pair{&request_lines, &lines}}) {
    grpc::ClientContext context;
    if (auto status = setup->Compile(&context, *req, out); !status.ok()) {
      std::fprintf(stderr, "compile: %s\n", status.error_message().c_str());
      return 1;
    }
  }
  fc::redis::Client redis(*url, {});
  for (const auto* handle : {&plain, &lines})
    if (!redis.command({"SET", "flashcore:bench:" + handle->key(), handle->cubin()})) {
      std::fprintf(stderr, "redis %s unreachable\n", redis_url.c_str());
      return 1;
    }

  struct Case {
    std::string name;
    std::function<std::function<size_t()>(int)> make;
  };
  const auto get_kernel = [&](const v1::KernelHandle& handle, bool held) {
    return [&, held](int c) {
      auto stub = std::shared_ptr<v1::FlashCore::Stub>(stub_for(address, c));
      return std::function<size_t()>([stub, &handle, held] {
        v1::GetKernelRequest get;
        get.set_key(handle.key());
        if (held) get.set_cached_key(handle.key());
        v1::KernelHandle out;
        grpc::ClientContext context;
        if (!stub->GetKernel(&context, get, &out).ok()) std::abort();
        return out.cubin().size();
      });
    };
  };
  const auto compile_hit = [&](const v1::KernelRequest& req) {
    return [&](int c) {
      auto stub = std::shared_ptr<v1::FlashCore::Stub>(stub_for(address, c));
      return std::function<size_t()>([stub, &req] {
        v1::KernelHandle out;
        grpc::ClientContext context;
        if (!stub->Compile(&context, req, &out).ok()) std::abort();
        return out.cubin().size();
      });
    };
  };
  const auto redis_get = [&](const v1::KernelHandle& handle) {
    return [&](int) {
      auto client = std::make_shared<fc::redis::Client>(*url, fc::redis::ClientOptions{});
      const std::string name = "flashcore:bench:" + handle.key();
      return std::function<size_t()>([client, name] {
        auto reply = client->command({"GET", name});
        if (!reply || reply->type != fc::redis::Reply::Type::string) std::abort();
        return reply->str.size();
      });
    };
  };
  std::vector<Case> cases = {
      {"Redis GET, same bytes (no line info)", redis_get(plain)},
      {"GetKernel memory hit (no line info)", get_kernel(plain, false)},
      {"Compile memory hit (no line info)", compile_hit(request)},
      {"GetKernel, client holds the key (no bytes)", get_kernel(plain, true)},
      {"Redis GET, same bytes (line info)", redis_get(lines)},
      {"GetKernel memory hit (line info)", get_kernel(lines, false)},
  };
  // Minimal gRPC servers answering GetKernel with fixed bytes: what any
  // gRPC daemon's hit costs at least, over the same client loop.
  std::vector<std::unique_ptr<std::string>> floor_addresses;
  for (const std::string& floor : floors) {
    const size_t eq = floor.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "--floor %s: want NAME=ADDRESS\n", floor.c_str());
      return 2;
    }
    floor_addresses.push_back(std::make_unique<std::string>(floor.substr(eq + 1)));
    const std::string* at = floor_addresses.back().get();
    cases.push_back({"gRPC floor: " + floor.substr(0, eq), [at](int c) {
                       auto stub = std::shared_ptr<v1::FlashCore::Stub>(stub_for(*at, c));
                       return std::function<size_t()>([stub] {
                         v1::GetKernelRequest get;
                         get.set_key(std::string(64, 'f'));
                         v1::KernelHandle out;
                         grpc::ClientContext context;
                         if (!stub->GetKernel(&context, get, &out).ok()) std::abort();
                         return out.cubin().size();
                       });
                     }});
  }

  std::printf("| case | cubin bytes | clients | p50 us | p99 us | mean us | calls/s |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  for (int concurrency : {1, clients})
    for (const auto& c : cases) {
      const Stats s = run(concurrency, requests, warmup, c.make);
      std::printf("| %s | %zu | %d | %.0f | %.0f | %.0f | %.0f |\n", c.name.c_str(), s.bytes,
                  concurrency, s.p50_us, s.p99_us, s.mean_us, s.per_second);
      std::fflush(stdout);
    }
  if (daemon) daemon->shutdown(std::chrono::milliseconds(1000));
  daemon.reset();
  std::error_code ec;
  std::filesystem::remove_all(scratch, ec);
  return 0;
}
