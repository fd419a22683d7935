// A fleet on loopback: a real redis-server and three in-process daemons,
// each with its own cache folder, sharing the Redis tier and its locks.
// Counts come from each daemon's /metrics, scraped over HTTP.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <future>
#include <thread>
#include <vector>

#include "cache/disk_store.hpp"
#include "redis_server.hpp"
#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;
using namespace test_support;

struct Fleet {
  RedisServer redis;
  std::vector<std::unique_ptr<SmallTemplateDaemon>> daemons;

  // `source`: the template every daemon compiles (the same sources, so the same keys).
  bool start(size_t count, const std::string& source = kSmallAttentionTemplate) {
    if (!redis.start()) return false;
    for (size_t i = 0; i < count; ++i) {
      auto server = std::make_unique<SmallTemplateDaemon>();
      write_attention_templates(server->templates, source);
      DaemonConfig config = loopback_config(server->cache.path());
      config.templates_dir = server->templates.path();
      config.fleet.redis_url = redis.url();
      config.fleet.metrics_listen = "127.0.0.1:0";
      server->daemon = start_daemon(config);
      if (!server->daemon) return false;
      server->stub = v1::FlashCore::NewStub(channel_to(*server->daemon));
      daemons.push_back(std::move(server));
    }
    return true;
  }

  std::string metrics(size_t i) const { return http_get(daemons[i]->daemon->metrics_port(), "/metrics"); }
  double total(const std::string& name, const std::vector<std::string>& labels = {}) const {
    double sum = 0;
    for (size_t i = 0; i < daemons.size(); ++i) {
      const double value = metric_value(metrics(i), name, labels);
      if (value > 0) sum += value;
    }
    return sum;
  }
};

// Another kernel of the small template: block_n and causal pick it.
v1::KernelRequest request_with(int block_n, bool causal) {
  v1::KernelRequest request = quick_request();
  request.mutable_config()->set_block_n(block_n);
  request.mutable_problem()->set_causal(causal);
  return request;
}

TEST(FleetTest, AKernelCompiledOnOneDaemonIsServedByTheOthersFromTheSharedTier) {
  Fleet fleet;
  ASSERT_TRUE(fleet.start(3));
  const v1::KernelRequest request = quick_request();
  v1::KernelHandle first;
  ASSERT_TRUE(compile(*fleet.daemons[0]->stub, request, &first).ok());
  EXPECT_EQ(first.tier(), v1::CACHE_TIER_COMPILED);
  for (size_t i = 1; i < 3; ++i) {
    v1::KernelHandle handle;
    ASSERT_TRUE(compile(*fleet.daemons[i]->stub, request, &handle).ok());
    EXPECT_EQ(handle.tier(), v1::CACHE_TIER_SHARED) << "daemon " << i;
    EXPECT_EQ(handle.key(), first.key());
    EXPECT_EQ(handle.cubin(), first.cubin());
    // Promoted: the next answer comes from memory, and the disk has it too.
    v1::KernelHandle again;
    ASSERT_TRUE(compile(*fleet.daemons[i]->stub, request, &again).ok());
    EXPECT_EQ(again.tier(), v1::CACHE_TIER_MEMORY);
  }
  EXPECT_EQ(fleet.total("flashcore_compiles_total"), 1);
  EXPECT_EQ(metric_value(fleet.metrics(1), "flashcore_cache_hits_total", {"tier=\"shared\""}), 1);

  // GetKernel by key reaches the shared tier too, on a daemon that never saw it.
  auto fourth = start_small_template_daemon([&](DaemonConfig& config) {
    config.fleet.redis_url = fleet.redis.url();
  });
  ASSERT_NE(fourth, nullptr);
  v1::GetKernelRequest get;
  get.set_key(first.key());
  v1::KernelHandle fetched;
  ASSERT_TRUE(get_kernel(*fourth->stub, get, &fetched).ok());
  EXPECT_EQ(fetched.tier(), v1::CACHE_TIER_SHARED);
  EXPECT_EQ(fetched.cubin_sha256(), first.cubin_sha256());
}

TEST(FleetTest, ThreeDaemonsAskedEightTimesEachForOneNewKeyCompileItOnce) {
  Fleet fleet;
  // A compile of about a second: every request lands while it runs.
  ASSERT_TRUE(fleet.start(3, slow_attention_template(300)));
  const v1::KernelRequest request = request_with(32, true);
  constexpr int kPerDaemon = 8;
  std::vector<std::future<std::pair<grpc::Status, v1::KernelHandle>>> calls;
  std::atomic<int> ready{0};
  for (size_t d = 0; d < 3; ++d)
    for (int i = 0; i < kPerDaemon; ++i)
      calls.push_back(std::async(std::launch::async, [&, d] {
        ++ready;
        while (ready.load() < 3 * kPerDaemon) std::this_thread::yield();
        v1::KernelHandle handle;
        grpc::Status status = compile(*fleet.daemons[d]->stub, request, &handle);
        return std::make_pair(status, handle);
      }));
  std::string key;
  int compiled = 0;
  for (auto& call : calls) {
    auto [status, handle] = call.get();
    ASSERT_TRUE(status.ok()) << status.error_message();
    if (key.empty()) key = handle.key();
    EXPECT_EQ(handle.key(), key);
    if (handle.tier() == v1::CACHE_TIER_COMPILED) ++compiled;
  }
  EXPECT_EQ(fleet.total("flashcore_compiles_total"), 1);
  // One daemon's compile answered its 8 callers; the others waited on its lock.
  EXPECT_EQ(compiled, kPerDaemon);
  EXPECT_EQ(fleet.total("flashcore_single_flight_waits_total", {"scope=\"fleet\""}), 2);
}

TEST(FleetTest, RedisKilledMidRunLeavesEveryDaemonServingAndARestartedRedisIsUsedAgain) {
  Fleet fleet;
  ASSERT_TRUE(fleet.start(3));
  v1::KernelHandle before;
  ASSERT_TRUE(compile(*fleet.daemons[0]->stub, request_with(64, true), &before).ok());

  fleet.redis.kill_now();
  for (size_t i = 0; i < 3; ++i) {
    // A new kernel compiles locally, quickly: no waiting on timeouts.
    const auto started = std::chrono::steady_clock::now();
    v1::KernelHandle handle;
    ASSERT_TRUE(compile(*fleet.daemons[i]->stub, request_with(32, false), &handle).ok())
        << "daemon " << i;
    EXPECT_EQ(handle.tier(), v1::CACHE_TIER_COMPILED);
    EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(30));
    // And what it holds is served.
    v1::GetKernelRequest get;
    get.set_key(handle.key());
    v1::KernelHandle fetched;
    EXPECT_TRUE(get_kernel(*fleet.daemons[i]->stub, get, &fetched).ok());
    EXPECT_EQ(metric_value(fleet.metrics(i), "flashcore_shared_tier_up"), 0) << "daemon " << i;
  }
  v1::KernelHandle cached;
  ASSERT_TRUE(compile(*fleet.daemons[0]->stub, request_with(64, true), &cached).ok());
  EXPECT_EQ(cached.tier(), v1::CACHE_TIER_MEMORY);

  ASSERT_TRUE(fleet.redis.start());  // same port, empty
  // Each daemon retries a second after its last failure.
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  const v1::KernelRequest fresh = request_with(128, false);
  v1::KernelHandle made;
  ASSERT_TRUE(compile(*fleet.daemons[1]->stub, fresh, &made).ok());
  EXPECT_EQ(made.tier(), v1::CACHE_TIER_COMPILED);
  for (size_t i : {0, 2}) {
    v1::KernelHandle handle;
    ASSERT_TRUE(compile(*fleet.daemons[i]->stub, fresh, &handle).ok());
    EXPECT_EQ(handle.tier(), v1::CACHE_TIER_SHARED) << "daemon " << i;
    EXPECT_EQ(metric_value(fleet.metrics(i), "flashcore_shared_tier_up"), 1) << "daemon " << i;
  }
}

TEST(FleetTest, ACorruptedRedisEntryIsDetectedDeletedAndReplaced) {
  Fleet fleet;
  ASSERT_TRUE(fleet.start(3));
  const v1::KernelRequest request = quick_request();
  v1::KernelHandle first;
  ASSERT_TRUE(compile(*fleet.daemons[0]->stub, request, &first).ok());

  // One byte of the cubin flipped in Redis: the checksum no longer matches.
  redis::Client client(fleet.redis.parsed_url(), {});
  const std::string name = "flashcore:v1:kernel:" + first.key();
  auto stored = client.command({"GET", name});
  ASSERT_TRUE(stored.ok());
  ASSERT_EQ(stored->type, redis::Reply::Type::string);
  ASSERT_TRUE(DiskStore::decode(stored->str, nullptr).has_value());
  std::string bad = stored->str;
  bad[bad.size() - 10] ^= 0x5a;
  ASSERT_TRUE(client.command({"SET", name, bad}).ok());

  v1::KernelHandle second;
  ASSERT_TRUE(compile(*fleet.daemons[1]->stub, request, &second).ok());
  EXPECT_EQ(second.tier(), v1::CACHE_TIER_COMPILED) << "a bad entry must not be served";
  EXPECT_EQ(second.cubin_sha256(), first.cubin_sha256());
  EXPECT_EQ(metric_value(fleet.metrics(1), "flashcore_cache_corrupt_entries_total",
                         {"tier=\"shared\""}),
            1);
  // Replaced by a good one, which the third daemon is served.
  auto replaced = client.command({"GET", name});
  ASSERT_TRUE(replaced.ok());
  ASSERT_EQ(replaced->type, redis::Reply::Type::string);
  EXPECT_TRUE(DiskStore::decode(replaced->str, nullptr).has_value());
  v1::KernelHandle third;
  ASSERT_TRUE(compile(*fleet.daemons[2]->stub, request, &third).ok());
  EXPECT_EQ(third.tier(), v1::CACHE_TIER_SHARED);
}

// A Redis restarted between two commands: the pooled connections it closed
// are replaced at once, and the server is never taken for down.
TEST(RedisClientTest, ARestartBetweenCommandsCostsNoOutage) {
  RedisServer redis;
  ASSERT_TRUE(redis.start());
  redis::Client client(redis.parsed_url(), {});
  // Several connections in the pool: commands from threads at once.
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&] {
      for (int j = 0; j < 50; ++j) ASSERT_TRUE(client.command({"PING"}).ok());
    });
  for (auto& thread : threads) thread.join();
  redis.kill_now();
  ASSERT_TRUE(redis.start());
  auto pong = client.command({"PING"});
  ASSERT_TRUE(pong.ok()) << pong.error().message;
  EXPECT_TRUE(client.available());
  EXPECT_EQ(client.failures(), 0u);
}

TEST(FleetTest, MetricsCountCallsByMethodAndCodeWithLatencies) {
  Fleet fleet;
  ASSERT_TRUE(fleet.start(1));
  auto& stub = *fleet.daemons[0]->stub;
  v1::KernelHandle handle;
  ASSERT_TRUE(compile(stub, quick_request(), &handle).ok());
  ASSERT_TRUE(compile(stub, quick_request(), &handle).ok());
  v1::GetKernelRequest missing;
  missing.set_key(std::string(64, 'a'));
  v1::KernelHandle none;
  EXPECT_EQ(get_kernel(stub, missing, &none).error_code(), grpc::StatusCode::NOT_FOUND);

  const std::string text = fleet.metrics(0);
  EXPECT_EQ(metric_value(text, "flashcore_rpc_calls_total", {"method=\"Compile\"", "code=\"OK\""}), 2)
      << text;
  EXPECT_EQ(metric_value(text, "flashcore_rpc_calls_total",
                         {"method=\"GetKernel\"", "code=\"NOT_FOUND\""}),
            1);
  EXPECT_EQ(metric_value(text, "flashcore_rpc_duration_seconds_count", {"method=\"Compile\""}), 2);
  // The compile took far longer than the memory hit: at most one sample under 10 ms.
  EXPECT_LE(metric_value(text, "flashcore_rpc_duration_seconds_bucket",
                         {"method=\"Compile\"", "le=\"0.01\""}),
            1);
  EXPECT_EQ(metric_value(text, "flashcore_compiles_total"), 1);
  EXPECT_GT(metric_value(text, "flashcore_compile_seconds_total"), 0);
  EXPECT_EQ(metric_value(text, "flashcore_cache_hits_total", {"tier=\"memory\""}), 1);
  // GetKernel of the missing key missed every tier.
  EXPECT_EQ(metric_value(text, "flashcore_cache_misses_total", {"tier=\"shared\""}), 2);
  EXPECT_GT(metric_value(text, "flashcore_cache_bytes", {"tier=\"memory\""}), 0);
  EXPECT_GT(metric_value(text, "flashcore_cache_bytes", {"tier=\"disk\""}), 0);
  EXPECT_EQ(metric_value(text, "flashcore_compiles_in_flight"), 0);
  EXPECT_EQ(metric_value(text, "flashcore_shared_tier_up"), 1);
  EXPECT_GE(metric_value(text, "flashcore_tune_jobs", {"status=\"succeeded\""}), 0);
  EXPECT_GT(metric_value(text, "flashcore_cache_bytes", {"tier=\"shared\""}), 0);

  // `flashcore stats` reads the same page.
  const std::string command = std::string(FLASHCORE_CLI_PATH) + " stats --metrics 127.0.0.1:" +
                              std::to_string(fleet.daemons[0]->daemon->metrics_port());
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string printed;
  char buffer[4096];
  for (size_t n; (n = fread(buffer, 1, sizeof buffer, pipe)) > 0;) printed.append(buffer, n);
  EXPECT_EQ(pclose(pipe), 0) << printed;
  EXPECT_NE(printed.find("compiles               1 run, 0 failed"), std::string::npos) << printed;
  EXPECT_NE(printed.find("GetKernel            NOT_FOUND"), std::string::npos) << printed;
  EXPECT_NE(printed.find("shared tier            up"), std::string::npos) << printed;
}

}  // namespace
}  // namespace flashcore
