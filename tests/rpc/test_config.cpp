// load_config: flags > FLASHCORE_* env > TOML file > defaults. (Lives in
// tests/rpc/ because flashcore_unit_tests does not link flashcore_app.)
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "app/config.hpp"

namespace flashcore {
namespace {

const char* const kEnvNames[] = {"FLASHCORE_CONFIG",        "FLASHCORE_LISTEN",
                                 "FLASHCORE_CACHE_DIR",     "FLASHCORE_LOG_LEVEL",
                                 "FLASHCORE_TEMPLATES_DIR", "FLASHCORE_DEFAULT_ARCH",
                                 "XDG_CACHE_HOME",          "HOME"};

// Clears every variable load_config reads, restoring them afterwards.
class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : kEnvNames) {
      if (const char* value = std::getenv(name)) saved_[name] = value;
      unsetenv(name);
    }
    setenv("HOME", "/home/tester", 1);
    dir_ = std::filesystem::temp_directory_path() /
           ("flashcore_config_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    for (const char* name : kEnvNames) unsetenv(name);
    for (const auto& [name, value] : saved_) setenv(name.c_str(), value.c_str(), 1);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string write_toml(const std::string& contents) {
    const auto path = dir_ / "flashcored.toml";
    std::ofstream(path) << contents;
    return path.string();
  }

  static Result<DaemonConfig> load(std::vector<std::string> args) {
    args.insert(args.begin(), "flashcored");
    std::vector<const char*> argv;
    for (const auto& arg : args) argv.push_back(arg.c_str());
    return load_config(static_cast<int>(argv.size()), argv.data());
  }

  std::map<std::string, std::string> saved_;
  std::filesystem::path dir_;
};

TEST_F(ConfigTest, DefaultsWithNoFileEnvOrFlags) {
  auto config = load({});
  ASSERT_TRUE(config.ok()) << config.error().message;
  const DaemonConfig defaults;
  EXPECT_EQ(config->listen_address, defaults.listen_address);
  EXPECT_EQ(config->memory_cache_bytes, defaults.memory_cache_bytes);
  EXPECT_EQ(config->max_concurrent_rpcs, defaults.max_concurrent_rpcs);
  EXPECT_EQ(config->drain_timeout, defaults.drain_timeout);
  EXPECT_EQ(config->log_level, "info");
  EXPECT_TRUE(config->templates_dir.empty());
  EXPECT_TRUE(config->default_arch.empty());
  // The cache folder is filled in from the environment.
  EXPECT_EQ(config->cache_dir, std::filesystem::path("/home/tester/.cache/flashcore"));
}

TEST_F(ConfigTest, EveryTomlKeyIsRead) {
  const std::string file = write_toml(R"(
listen_address = "0.0.0.0:7000"
cache_dir = "/var/cache/fc"
memory_cache_mb = 32
disk_cache_mb = 640
compile_threads = 3
max_queued_compiles = 9
max_concurrent_rpcs = 17
rpc_queues = 2
max_message_mb = 8
templates_dir = "/opt/templates"
default_arch = "sm_86"
drain_timeout_ms = 2500
log_level = "debug"
port_file = "/run/fc.port"
)");
  auto config = load({"--config", file});
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->listen_address, "0.0.0.0:7000");
  EXPECT_EQ(config->cache_dir, std::filesystem::path("/var/cache/fc"));
  EXPECT_EQ(config->memory_cache_bytes, size_t{32} << 20);
  EXPECT_EQ(config->disk_cache_bytes, uint64_t{640} << 20);
  EXPECT_EQ(config->compile_threads, 3u);
  EXPECT_EQ(config->max_queued_compiles, 9u);
  EXPECT_EQ(config->max_concurrent_rpcs, 17u);
  EXPECT_EQ(config->rpc_queues, 2u);
  EXPECT_EQ(config->max_message_bytes, size_t{8} << 20);
  EXPECT_EQ(config->templates_dir, std::filesystem::path("/opt/templates"));
  EXPECT_EQ(config->default_arch, "sm_86");
  EXPECT_EQ(config->drain_timeout, std::chrono::milliseconds(2500));
  EXPECT_EQ(config->log_level, "debug");
  EXPECT_EQ(config->port_file, std::filesystem::path("/run/fc.port"));
}

TEST_F(ConfigTest, FlagsBeatEnvBeatTomlBeatDefaults) {
  const std::string file = write_toml(
      "listen_address = \"toml:1\"\ncache_dir = \"/toml/cache\"\nlog_level = \"warn\"\n"
      "default_arch = \"sm_80\"\nmax_concurrent_rpcs = 5\n");
  setenv("FLASHCORE_CONFIG", file.c_str(), 1);
  setenv("FLASHCORE_LISTEN", "env:2", 1);
  setenv("FLASHCORE_CACHE_DIR", "/env/cache", 1);
  setenv("FLASHCORE_LOG_LEVEL", "error", 1);

  // TOML (found through FLASHCORE_CONFIG) over defaults; env over TOML.
  auto layered = load({});
  ASSERT_TRUE(layered.ok()) << layered.error().message;
  EXPECT_EQ(layered->listen_address, "env:2");
  EXPECT_EQ(layered->cache_dir, std::filesystem::path("/env/cache"));
  EXPECT_EQ(layered->log_level, "error");
  EXPECT_EQ(layered->default_arch, "sm_80");    // only TOML sets it
  EXPECT_EQ(layered->max_concurrent_rpcs, 5u);  // only TOML sets it
  EXPECT_EQ(layered->max_queued_compiles, DaemonConfig{}.max_queued_compiles);

  // Flags over env.
  auto flagged = load({"--listen", "flag:3", "--log-level", "trace", "--max-concurrent-rpcs", "7"});
  ASSERT_TRUE(flagged.ok()) << flagged.error().message;
  EXPECT_EQ(flagged->listen_address, "flag:3");
  EXPECT_EQ(flagged->log_level, "trace");
  EXPECT_EQ(flagged->max_concurrent_rpcs, 7u);
  EXPECT_EQ(flagged->cache_dir, std::filesystem::path("/env/cache"));  // no flag: env stays
}

TEST_F(ConfigTest, ConfigFlagBeatsConfigEnv) {
  const std::string from_flag = write_toml("compile_threads = 4\n");
  const auto other = dir_ / "other.toml";
  std::ofstream(other) << "compile_threads = 6\n";
  setenv("FLASHCORE_CONFIG", other.c_str(), 1);
  auto config = load({"--config", from_flag});
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->compile_threads, 4u);
}

TEST_F(ConfigTest, EveryFlagIsRead) {
  auto config = load({"--listen",
                      "127.0.0.1:0",
                      "--cache-dir",
                      "/c",
                      "--memory-cache-mb",
                      "12",
                      "--compile-threads",
                      "5",
                      "--max-queued-compiles",
                      "6",
                      "--max-concurrent-rpcs",
                      "7",
                      "--rpc-queues",
                      "3",
                      "--max-message-mb",
                      "3",
                      "--templates-dir",
                      "/t",
                      "--default-arch",
                      "sm_90a",
                      "--drain-timeout-ms",
                      "0",
                      "--log-level",
                      "off",
                      "--port-file",
                      "/p"});
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->listen_address, "127.0.0.1:0");
  EXPECT_EQ(config->cache_dir, std::filesystem::path("/c"));
  EXPECT_EQ(config->memory_cache_bytes, size_t{12} << 20);
  EXPECT_EQ(config->compile_threads, 5u);
  EXPECT_EQ(config->max_queued_compiles, 6u);
  EXPECT_EQ(config->max_concurrent_rpcs, 7u);
  EXPECT_EQ(config->rpc_queues, 3u);
  EXPECT_EQ(config->max_message_bytes, size_t{3} << 20);
  EXPECT_EQ(config->templates_dir, std::filesystem::path("/t"));
  EXPECT_EQ(config->default_arch, "sm_90a");
  EXPECT_EQ(config->drain_timeout, std::chrono::milliseconds(0));
  EXPECT_EQ(config->log_level, "off");
  EXPECT_EQ(config->port_file, std::filesystem::path("/p"));
}

TEST_F(ConfigTest, UnknownTomlKeyIsRejectedByName) {
  const std::string file = write_toml("listen_address = \"127.0.0.1:1\"\nmemory_cache = 5\n");
  auto config = load({"--config", file});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.error().code, ErrorCode::invalid_argument);
  EXPECT_NE(config.error().message.find("'memory_cache'"), std::string::npos)
      << config.error().message;
}

TEST_F(ConfigTest, BadValuesAreRejectedByName) {
  struct Case {
    std::vector<std::string> args;
    std::string toml;
    const char* names;
  };
  const Case cases[] = {
      {{}, "compile_threads = \"four\"\n", "compile_threads"},
      {{}, "listen_address = 5\n", "listen_address"},
      {{}, "max_concurrent_rpcs = 0\n", "max_concurrent_rpcs"},
      {{"--rpc-queues", "65"}, "", "rpc_queues"},
      {{}, "rpc_queues = -1\n", "rpc_queues"},
      {{"--max-message-mb", "4096"}, "", "max_message_mb"},
      {{"--default-arch", "sm_70"}, "", "default_arch"},
      {{"--log-level", "loud"}, "", "log_level"},
      {{"--memory-cache-mb", "zero"}, "", "--memory-cache-mb"},
      {{"--no-such-flag"}, "", "--no-such-flag"},
      {{}, "listen_address = [unclosed\n", "flashcored.toml"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = c.args;
    if (!c.toml.empty()) {
      args.push_back("--config");
      args.push_back(write_toml(c.toml));
    }
    auto config = load(args);
    ASSERT_FALSE(config.ok()) << c.names;
    EXPECT_EQ(config.error().code, ErrorCode::invalid_argument) << c.names;
    EXPECT_NE(config.error().message.find(c.names), std::string::npos)
        << c.names << ": " << config.error().message;
  }
}

TEST_F(ConfigTest, MissingConfigFileIsAnError) {
  auto config = load({"--config", (dir_ / "absent.toml").string()});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.error().message.find("absent.toml"), std::string::npos)
      << config.error().message;
}

TEST_F(ConfigTest, HelpComesBackAsCancelledWithTheUsage) {
  for (const char* flag : {"--help", "-h"}) {
    auto config = load({flag});
    ASSERT_FALSE(config.ok()) << flag;
    EXPECT_EQ(config.error().code, ErrorCode::cancelled);
    EXPECT_NE(config.error().message.find("--listen"), std::string::npos);
    EXPECT_NE(config.error().message.find("--drain-timeout-ms"), std::string::npos);
  }
}

TEST_F(ConfigTest, DefaultCacheDirFollowsXdgThenHome) {
  setenv("XDG_CACHE_HOME", "/xdg/cache", 1);
  EXPECT_EQ(default_cache_dir(), std::filesystem::path("/xdg/cache/flashcore"));
  auto config = load({});
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->cache_dir, std::filesystem::path("/xdg/cache/flashcore"));

  unsetenv("XDG_CACHE_HOME");
  EXPECT_EQ(default_cache_dir(), std::filesystem::path("/home/tester/.cache/flashcore"));
  setenv("XDG_CACHE_HOME", "", 1);  // set but empty counts as unset
  EXPECT_EQ(default_cache_dir(), std::filesystem::path("/home/tester/.cache/flashcore"));
}

}  // namespace
}  // namespace flashcore
