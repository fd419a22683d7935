// Tuned bests shared by the fleet (Redis, under the full tuning key) and moved
// between boxes without it (`flashcore results export` / `import`). Real
// NVRTC compiles of the small template, real SQLite, a real redis-server;
// only the GPU is replaced by a backend that scores a config with a fixed
// formula (this machine has no GPU), under the same device name on every
// daemon, as a fleet of one GPU model.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "flashcore/client.hpp"
#include "redis_server.hpp"
#include "rpc_test_support.hpp"
#include "tuning/best_json.hpp"
#include "tuning/tuning_db.hpp"
#include "tuning/tuning_job.hpp"

namespace flashcore {
namespace {

using namespace test_support;

// Faster for larger block_n and fewer stages: a unique optimum.
class FormulaBackend final : public EvaluationBackend {
 public:
  Result<Measurement> measure(const MeasureRequest& request) override {
    ++measured;
    const TileConfig& c = request.candidate->config;
    Measurement m;
    m.correct = true;
    m.median_us = 100.0 - c.block_n * 0.5 + c.stages * 2.0 + c.block_m * 0.01 +
                  (c.q_placement == QPlacement::shared ? 0.3 : 0.0);
    m.p10_us = m.p90_us = m.median_us;
    m.samples = 1;
    m.tflops = 1000.0 / m.median_us;
    m.device = device_name(0);
    return m;
  }
  Result<std::optional<FullValidation>> validate_fully(const MeasureRequest&) override {
    FullValidation full;
    full.passed = true;
    full.detail = "formula backend";
    return std::optional<FullValidation>(full);
  }
  int gpu_count() const override { return 1; }
  std::string device_name(int) const override { return "Fleet Test GPU"; }
  std::atomic<int> measured{0};
};

struct TuneBox {
  ScratchDir templates, cache;
  std::shared_ptr<FormulaBackend> backend = std::make_shared<FormulaBackend>();
  std::unique_ptr<Daemon> daemon;
  std::unique_ptr<client::Client> client;

  bool start(const std::string& redis_url) {
    spdlog::set_level(spdlog::level::warn);
    write_attention_templates(templates, kSmallAttentionTemplate);
    DaemonConfig config = rpc_testing::loopback_config(cache.path());
    config.templates_dir = templates.path();
    config.tuning_db = cache.path() / "tuning.db";
    config.fleet.redis_url = redis_url;
    DaemonHooks hooks;
    hooks.evaluation_backend = backend;
    auto started = Daemon::start(config, hooks);
    if (!started) {
      ADD_FAILURE() << started.error().message;
      return false;
    }
    daemon = std::move(started).value();
    client::ConnectOptions options;
    options.address = daemon->address();
    auto connected = client::Client::connect(options);
    if (!connected) return false;
    client = std::make_unique<client::Client>(std::move(connected).value());
    return true;
  }
};

// sm_86, head_dim 256: a small space (a few seconds of compiles).
v1::TuneRequest small_tune() {
  v1::TuneRequest request;
  v1::KernelRequest* kernel = request.mutable_kernel();
  kernel->set_template_id("attention_fwd");
  kernel->set_arch("sm_86");
  v1::Problem* problem = kernel->mutable_problem();
  problem->set_dtype(v1::DTYPE_FP16);
  problem->set_head_dim(256);
  problem->set_batch(2);
  problem->set_heads(8);
  problem->set_seq_q(1000);
  request.set_max_evaluations(4);
  request.set_seed(3);
  request.set_time_budget_ms(3'600'000);
  return request;
}

std::string run(const std::string& command, int* rc) {
  FILE* pipe = popen(command.c_str(), "r");
  std::string out;
  char buffer[4096];
  for (size_t n; pipe && (n = fread(buffer, 1, sizeof buffer, pipe)) > 0;) out.append(buffer, n);
  *rc = pipe ? pclose(pipe) : -1;
  return out;
}

// One tune (the slow part) serves both tests' halves.
void check_export_import(TuneBox& a, TuneBox& b, const v1::TuningResult& tuned_result) {
  const v1::TuningResult* tuned = &tuned_result;

  const std::string cli = FLASHCORE_CLI_PATH;
  const std::string file = (a.cache.path() / "bests.json").string();
  int rc = 0;
  run(cli + " results export --tuning-db " + (a.cache.path() / "tuning.db").string() + " -o " +
          file + " 2>&1",
      &rc);
  ASSERT_EQ(rc, 0);
  std::string imported =
      run(cli + " results import --tuning-db " + (b.cache.path() / "tuning.db").string() + " " +
              file + " 2>&1",
          &rc);
  ASSERT_EQ(rc, 0) << imported;
  EXPECT_NE(imported.find("1 added, 0 replaced, 0 kept"), std::string::npos) << imported;

  // B serves it as its own stored result, unchanged but for where it came from.
  auto on_b = b.client->list_tuning_results(0, "");
  ASSERT_TRUE(on_b.ok());
  ASSERT_EQ(on_b->results_size(), 1);
  const v1::TuningResult& result = on_b->results(0);
  EXPECT_EQ(result.key(), tuned->key());
  EXPECT_EQ(result.median_us(), tuned->median_us());
  EXPECT_EQ(result.bucket(), tuned->bucket());
  EXPECT_EQ(result.device(), tuned->device());
  EXPECT_NE(result.searcher().find("(imported from "), std::string::npos) << result.searcher();
  auto tuned_on_b = b.client->tune(small_tune(), nullptr);
  ASSERT_TRUE(tuned_on_b.ok());
  EXPECT_TRUE(tuned_on_b->from_database());
  EXPECT_EQ(b.backend->measured.load(), 0);

  // A second import changes nothing; a slower copy never displaces it, a faster one does.
  run(cli + " results import --tuning-db " + (b.cache.path() / "tuning.db").string() + " " + file,
      &rc);
  std::ifstream in(file);
  nlohmann::json doc = nlohmann::json::parse(in);
  doc["results"][0]["median_us"] = tuned->median_us() * 2;
  const std::string slower = (a.cache.path() / "slower.json").string();
  std::ofstream(slower) << doc.dump();
  std::string out = run(cli + " results import --tuning-db " +
                            (b.cache.path() / "tuning.db").string() + " " + slower,
                        &rc);
  EXPECT_NE(out.find("0 added, 0 replaced, 1 kept"), std::string::npos) << out;
  doc["results"][0]["median_us"] = tuned->median_us() / 2;
  const std::string faster = (a.cache.path() / "faster.json").string();
  std::ofstream(faster) << doc.dump();
  out = run(cli + " results import --tuning-db " + (b.cache.path() / "tuning.db").string() + " " +
                faster,
            &rc);
  EXPECT_NE(out.find("0 added, 1 replaced, 0 kept"), std::string::npos) << out;
  auto replaced = b.client->list_tuning_results(0, "");
  ASSERT_TRUE(replaced.ok());
  EXPECT_DOUBLE_EQ(replaced->results(0).median_us(), tuned->median_us() / 2);

  // A row another tool damaged is left out of the list and counted in the
  // answer (with why), never INTERNAL for the whole list; the CLI says so.
  {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open((b.cache.path() / "tuning.db").c_str(), &raw), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(raw, "UPDATE best SET q_placement = 'sideways'", nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(raw);
  }
  auto damaged = b.client->list_tuning_results(0, "");
  ASSERT_TRUE(damaged.ok()) << damaged.error().message;
  EXPECT_EQ(damaged->results_size(), 0);
  EXPECT_EQ(damaged->skipped_rows(), 1);
  ASSERT_EQ(damaged->skipped_reasons_size(), 1);
  EXPECT_NE(damaged->skipped_reasons(0).find("sideways"), std::string::npos)
      << damaged->skipped_reasons(0);
  out = run(cli + " --address " + b.daemon->address() + " results 2>&1", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("1 stored result(s) did not read"), std::string::npos) << out;
}


TEST(FleetTuningTest, ABestTunedOnOneDaemonIsUsedByOthersFromTheFleetAndExportsToAnotherBox) {
  RedisServer redis;
  ASSERT_TRUE(redis.start());
  TuneBox a, b, c;
  ASSERT_TRUE(a.start(redis.url()));
  ASSERT_TRUE(b.start(redis.url()));
  ASSERT_TRUE(c.start(redis.url()));

  auto tuned = a.client->tune(small_tune(), nullptr);
  ASSERT_TRUE(tuned.ok()) << tuned.error().message;
  EXPECT_FALSE(tuned->from_fleet());
  EXPECT_FALSE(tuned->from_database());
  const int measured_on_a = a.backend->measured.load();
  EXPECT_GT(measured_on_a, 0);

  // B measures nothing: the fleet's best answers, and B keeps it.
  auto shared = b.client->tune(small_tune(), nullptr);
  ASSERT_TRUE(shared.ok()) << shared.error().message;
  EXPECT_TRUE(shared->from_fleet());
  EXPECT_EQ(shared->key(), tuned->key());
  EXPECT_EQ(shared->median_us(), tuned->median_us());
  EXPECT_EQ(shared->config().block_n(), tuned->config().block_n());
  EXPECT_EQ(b.backend->measured.load(), 0);
  auto again = b.client->tune(small_tune(), nullptr);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->from_database());
  EXPECT_FALSE(again->from_fleet());

  // C compiles the fleet's config for use_tuned_config without ever tuning.
  v1::KernelRequest compile = small_tune().kernel();
  compile.set_use_tuned_config(true);
  compile.set_omit_cubin(true);
  auto handle = c.client->compile(compile);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(handle->key(), tuned->key());
  EXPECT_EQ(c.backend->measured.load(), 0);

  // The value in Redis is the whole record under the full key.
  redis::Client raw(redis.parsed_url(), {});
  auto keys = raw.command({"KEYS", "flashcore:v1:best:*"});
  ASSERT_TRUE(keys.ok());
  ASSERT_EQ(keys->elements.size(), 1u);
  const std::string& name = keys->elements[0].str;
  EXPECT_NE(name.find("Fleet Test GPU|sm_86|nvrtc="), std::string::npos) << name;
  EXPECT_NE(name.find("|templates="), std::string::npos) << name;
  EXPECT_NE(name.find("layout=bshd"), std::string::npos) << name;

  // Without Redis: A's database exported, imported into a box of its own.
  TuneBox d;
  ASSERT_TRUE(d.start(""));
  check_export_import(a, d, *tuned);
}

}  // namespace
}  // namespace flashcore
