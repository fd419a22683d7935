// The evaluation settings of load_config (worker_binary,
// evaluation_timeout_ms) through every layer: TOML, environment, flags.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "app/config.hpp"
#include "scratch_dir.hpp"

namespace flashcore {
namespace {

const char* const kEnvNames[] = {"FLASHCORE_CONFIG", "FLASHCORE_WORKER_BINARY"};

class EvaluationConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : kEnvNames) {
      if (const char* value = std::getenv(name)) saved_[name] = value;
      unsetenv(name);
    }
  }
  void TearDown() override {
    for (const char* name : kEnvNames) unsetenv(name);
    for (const auto& [name, value] : saved_) setenv(name.c_str(), value.c_str(), 1);
  }

  std::string write_toml(const std::string& contents) {
    const auto path = dir_ / "flashcored.toml";
    test_support::write_file(path, contents);
    return path.string();
  }

  static Result<DaemonConfig> load(std::vector<std::string> args) {
    args.insert(args.begin(), "flashcored");
    std::vector<const char*> argv;
    for (const auto& arg : args) argv.push_back(arg.c_str());
    return load_config(static_cast<int>(argv.size()), argv.data());
  }

  std::map<std::string, std::string> saved_;
  test_support::ScratchDir dir_;
};

TEST_F(EvaluationConfigTest, DefaultsAreTheWorkerBesideTheDaemonAndTwoMinutes) {
  auto config = load({});
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_TRUE(config->worker_binary.empty());
  EXPECT_EQ(config->evaluation_timeout, std::chrono::milliseconds(120000));
}

TEST_F(EvaluationConfigTest, TomlThenEnvThenFlags) {
  const std::string file =
      write_toml("worker_binary = \"/toml/flashcore_worker\"\nevaluation_timeout_ms = 5000\n");
  auto from_toml = load({"--config", file});
  ASSERT_TRUE(from_toml.ok()) << from_toml.error().message;
  EXPECT_EQ(from_toml->worker_binary, std::filesystem::path("/toml/flashcore_worker"));
  EXPECT_EQ(from_toml->evaluation_timeout, std::chrono::milliseconds(5000));

  setenv("FLASHCORE_WORKER_BINARY", "/env/flashcore_worker", 1);
  auto from_env = load({"--config", file});
  ASSERT_TRUE(from_env.ok()) << from_env.error().message;
  EXPECT_EQ(from_env->worker_binary, std::filesystem::path("/env/flashcore_worker"));
  EXPECT_EQ(from_env->evaluation_timeout, std::chrono::milliseconds(5000));

  auto from_flags = load({"--config", file, "--worker-binary", "/flag/flashcore_worker",
                          "--evaluation-timeout-ms", "250"});
  ASSERT_TRUE(from_flags.ok()) << from_flags.error().message;
  EXPECT_EQ(from_flags->worker_binary, std::filesystem::path("/flag/flashcore_worker"));
  EXPECT_EQ(from_flags->evaluation_timeout, std::chrono::milliseconds(250));
}

TEST_F(EvaluationConfigTest, BadValuesAreRejectedByName) {
  for (const char* bad : {"0", "-5", "86400001"}) {
    auto config = load({"--evaluation-timeout-ms", bad});
    ASSERT_FALSE(config.ok()) << bad;
    EXPECT_EQ(config.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(config.error().message.find("evaluation_timeout_ms: " + std::string(bad)),
              std::string::npos)
        << config.error().message;
  }
  auto wrong_type = load({"--config", write_toml("evaluation_timeout_ms = \"soon\"\n")});
  ASSERT_FALSE(wrong_type.ok());
  EXPECT_NE(wrong_type.error().message.find("evaluation_timeout_ms must be an integer"),
            std::string::npos)
      << wrong_type.error().message;
  auto not_a_path = load({"--config", write_toml("worker_binary = 3\n")});
  ASSERT_FALSE(not_a_path.ok());
  EXPECT_NE(not_a_path.error().message.find("worker_binary must be a string"), std::string::npos)
      << not_a_path.error().message;
}

// The example config documents every key; it must load as it ships.
TEST_F(EvaluationConfigTest, ExampleConfigLoadsAndNamesTheEvaluationKeys) {
  const std::filesystem::path example =
      std::filesystem::path(FLASHCORE_SOURCE_DIR) / "deploy" / "flashcored.example.toml";
  const std::string text = test_support::read_file(example);
  EXPECT_NE(text.find("evaluation_timeout_ms = 120000"), std::string::npos);
  EXPECT_NE(text.find("worker_binary"), std::string::npos);
  auto config = load({"--config", example.string()});
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->evaluation_timeout, std::chrono::milliseconds(120000));
}

}  // namespace
}  // namespace flashcore
