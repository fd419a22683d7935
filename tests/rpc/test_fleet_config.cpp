// The fleet's settings (--redis, --metrics-listen and the Redis timeouts)
// through load_config's layers, and the Redis URL's forms.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "app/config.hpp"
#include "redis/redis_client.hpp"
#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

Result<DaemonConfig> load(std::vector<std::string> args) {
  args.insert(args.begin(), "flashcored");
  std::vector<const char*> argv;
  for (const auto& arg : args) argv.push_back(arg.c_str());
  return load_config(static_cast<int>(argv.size()), argv.data());
}

TEST(RedisUrlTest, ParsesEveryForm) {
  auto plain = redis::parse_redis_url("redis://cache.local");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->host, "cache.local");
  EXPECT_EQ(plain->port, 6379);
  EXPECT_EQ(plain->db, 0);
  EXPECT_TRUE(plain->password.empty());

  auto full = redis::parse_redis_url("redis://fleet:s%40cret:x@10.0.0.5:6380/3");
  ASSERT_TRUE(full.ok()) << full.error().message;
  EXPECT_EQ(full->user, "fleet");
  EXPECT_EQ(full->password, "s@cret:x");
  EXPECT_EQ(full->host, "10.0.0.5");
  EXPECT_EQ(full->port, 6380);
  EXPECT_EQ(full->db, 3);
  EXPECT_EQ(full->display(), "10.0.0.5:6380/3");  // never the password

  auto password_only = redis::parse_redis_url("redis://hunter2@h:1/");
  ASSERT_TRUE(password_only.ok());
  EXPECT_TRUE(password_only->user.empty());
  EXPECT_EQ(password_only->password, "hunter2");
}

TEST(RedisUrlTest, RefusesBadUrlsWithoutEchoingThePassword) {
  for (const char* bad : {"http://h:1", "redis://", "redis://h:0", "redis://h:99999",
                          "redis://h:1/x", "redis://u:topsecret@h:port"}) {
    auto url = redis::parse_redis_url(bad);
    ASSERT_FALSE(url.ok()) << bad;
    EXPECT_EQ(url.error().code, ErrorCode::invalid_argument);
    EXPECT_EQ(url.error().message.find("topsecret"), std::string::npos) << url.error().message;
  }
}

TEST(FleetConfigTest, FlagsTomlAndEnvironmentSetTheFleet) {
  unsetenv("FLASHCORE_REDIS");
  unsetenv("FLASHCORE_METRICS_LISTEN");
  unsetenv("FLASHCORE_CONFIG");
  auto defaults = load({});
  ASSERT_TRUE(defaults.ok());
  EXPECT_TRUE(defaults->fleet.redis_url.empty());
  EXPECT_TRUE(defaults->fleet.metrics_listen.empty());

  const auto toml = std::filesystem::temp_directory_path() /
                    ("flashcore_fleet_" + std::to_string(getpid()) + ".toml");
  std::ofstream(toml) << "redis = \"redis://a:1/2\"\nredis_command_timeout_ms = 250\n"
                         "metrics_listen = \"0.0.0.0:9464\"\n";
  auto from_file = load({"--config", toml.string()});
  ASSERT_TRUE(from_file.ok()) << from_file.error().message;
  EXPECT_EQ(from_file->fleet.redis_url, "redis://a:1/2");
  EXPECT_EQ(from_file->fleet.redis_command_timeout.count(), 250);
  EXPECT_EQ(from_file->fleet.metrics_listen, "0.0.0.0:9464");

  setenv("FLASHCORE_REDIS", "redis://env:2", 1);
  auto flagged = load({"--config", toml.string(), "--metrics-listen", "127.0.0.1:0",
                       "--redis-connect-timeout-ms", "50"});
  unsetenv("FLASHCORE_REDIS");
  ASSERT_TRUE(flagged.ok());
  EXPECT_EQ(flagged->fleet.redis_url, "redis://env:2");
  EXPECT_EQ(flagged->fleet.metrics_listen, "127.0.0.1:0");
  EXPECT_EQ(flagged->fleet.redis_connect_timeout.count(), 50);

  auto bad_url = load({"--redis", "redis://h:notaport"});
  ASSERT_FALSE(bad_url.ok());
  EXPECT_NE(bad_url.error().message.find("redis"), std::string::npos);
  auto bad_timeout = load({"--redis-command-timeout-ms", "0"});
  ASSERT_FALSE(bad_timeout.ok());
  EXPECT_NE(bad_timeout.error().message.find("redis_command_timeout_ms"), std::string::npos);
  std::filesystem::remove(toml);
}

// The tuning database is state, not cache: $XDG_STATE_HOME/flashcore by
// default; one left in the cache folder by an older daemon is still used.
TEST(FleetConfigTest, TheTuningDatabaseDefaultsToTheStateFolder) {
  test_support::ScratchDir state;
  const char* saved = std::getenv("XDG_STATE_HOME");
  const std::string saved_value = saved ? saved : "";
  setenv("XDG_STATE_HOME", state.path().c_str(), 1);
  {
    auto server = rpc_testing::start_small_template_daemon(
        [](DaemonConfig& config) { config.tuning_db.clear(); });
    ASSERT_NE(server, nullptr);
    EXPECT_TRUE(std::filesystem::exists(state / "flashcore/tuning.db"));
    EXPECT_FALSE(std::filesystem::exists(server->cache / "tuning.db"));
  }
  {
    test_support::ScratchDir other_state;
    setenv("XDG_STATE_HOME", other_state.path().c_str(), 1);
    const std::filesystem::path made = state / "flashcore/tuning.db";
    auto server = rpc_testing::start_small_template_daemon([&](DaemonConfig& config) {
      config.tuning_db.clear();
      std::filesystem::copy_file(made, config.cache_dir / "tuning.db");
    });
    ASSERT_NE(server, nullptr);
    EXPECT_FALSE(std::filesystem::exists(other_state / "flashcore/tuning.db"));
    EXPECT_TRUE(std::filesystem::exists(server->cache / "tuning.db"));
  }
  if (saved) setenv("XDG_STATE_HOME", saved_value.c_str(), 1);
  else unsetenv("XDG_STATE_HOME");
}

}  // namespace
}  // namespace flashcore
