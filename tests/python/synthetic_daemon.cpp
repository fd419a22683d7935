// flashcore_synthetic_daemon: flashcored (same flags, same code) whose tuning
// jobs are measured by the synthetic test objective (tests/unit/
// search_test_objective.hpp) instead of GPU workers, compiling the small test
// template (tests/common/test_templates.hpp). The Python tests use it to run
// real Tune jobs through the real service, tuning database and gRPC layer on
// a machine without a GPU: tune_many's tuned path and flashcore-report's
// pictures of what the jobs recorded. Times are the objective's, in "us".
// Only tests build or run it.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>

#include "app/config.hpp"
#include "app/daemon.hpp"
#include "app/signals.hpp"
#include "search_test_objective.hpp"
#include "test_templates.hpp"
#include "tuning/tuning_job.hpp"

namespace flashcore {
namespace {

class SyntheticBackend final : public EvaluationBackend {
 public:
  Result<Measurement> measure(const MeasureRequest& request) override {
    const TrialOutcome outcome = test::test_objective(request.candidate->config);
    Measurement measured;
    measured.device = device_name(0);
    if (request.validate && request.candidate->config == test::kTestObjectiveTrap) {
      measured.correct = false;
      measured.validation_detail = outcome.failure;
      return measured;
    }
    if (!outcome.ok) return make_error(ErrorCode::internal, outcome.failure);
    measured.correct = true;
    measured.median_us = outcome.time_us;
    // A spread of +-1%, so re-timed finalists are compared as measured ones are.
    measured.p10_us = outcome.time_us * 0.99;
    measured.p90_us = outcome.time_us * 1.01;
    measured.samples = 1;
    measured.tflops = 1000.0 / outcome.time_us;
    return measured;
  }
  Result<std::optional<FullValidation>> validate_fully(const MeasureRequest&) override {
    return std::optional<FullValidation>(FullValidation{true, "synthetic: every row"});
  }
  int gpu_count() const override { return 1; }
  std::string device_name(int) const override { return "Synthetic Test Device"; }
};

int run(int argc, char** argv) {
  if (Status blocked = block_shutdown_signals(); !blocked) {
    std::fprintf(stderr, "%s\n", blocked.error().message.c_str());
    return 1;
  }
  auto config = load_config(argc, argv);
  if (!config) {
    std::fprintf(stderr, "flashcore_synthetic_daemon: %s\n", config.error().message.c_str());
    return 2;
  }
  spdlog::set_level(spdlog::level::from_str(config->log_level));
  std::string pattern =
      (std::filesystem::temp_directory_path() / "flashcore_synthetic_XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) return 1;
  const std::filesystem::path templates = pattern;
  for (const auto& [relative, contents] :
       test_support::attention_template_files(test_support::kSmallAttentionTemplate)) {
    std::filesystem::create_directories((templates / relative).parent_path());
    std::ofstream(templates / relative) << contents;
  }
  config->templates_dir = templates;
  DaemonHooks hooks;
  hooks.evaluation_backend = std::make_shared<SyntheticBackend>();
  auto daemon = Daemon::start(*config, hooks);
  if (!daemon) {
    std::fprintf(stderr, "flashcore_synthetic_daemon: %s\n", daemon.error().message.c_str());
    return 1;
  }
  wait_for_shutdown_signal();
  (*daemon)->shutdown(config->drain_timeout);
  (*daemon)->wait();
  daemon.value().reset();
  std::filesystem::remove_all(templates);
  return 0;
}

}  // namespace
}  // namespace flashcore

int main(int argc, char** argv) { return flashcore::run(argc, argv); }
