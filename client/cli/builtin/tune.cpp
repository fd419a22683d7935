// flashcore tune: tune the tile config for a problem on the daemon's GPUs,
// with the live progress line on stderr; Ctrl-C cancels the job.
#include <pthread.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <thread>

#include "builtin.hpp"
#include "progress.hpp"

namespace flashcore::cli {
namespace {

class Tune final : public Command {
 public:
  explicit Tune(CLI::App& app)
      : Command(app.add_subcommand(
            "tune",
            "tune the tile config for a problem on the daemon's GPUs (live progress on stderr)")) {
    add_problem_options(*app_, kernel_);  // no tile config: that is what is searched
    app_->add_option("--searcher", searcher_, "search strategy")
        ->check(CLI::IsMember({"evolutionary", "random", "exhaustive"}))
        ->capture_default_str();
    app_->add_option("--max-evals", max_evals_,
                     "GPU measurements; 0 = 20% of the space left after spill pruning, >= 8")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app_->add_option("--time-budget-ms", time_budget_ms_, "time budget; 0 = 60000")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app_->add_option("--patience", patience_,
                     "stop after this many evaluations without improvement; 0 = off")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app_->add_flag("--force", force_, "tune even when the daemon has a stored result");
    app_->add_option("--seed", seed_, "searcher seed; 0 = 1")->capture_default_str();
  }

  // Ctrl-C during a tune cancels the job on the daemon: the signals are
  // blocked before gRPC starts its threads and a thread of ours takes them.
  void before_connect() override {
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::thread([signals, cancel = cancel_]() {
      int received = 0;
      if (sigwait(&signals, &received) == 0) cancel->cancel();
    }).detach();
  }

  int run(const Globals& globals, client::Client* client) override {
    v1::TuneRequest request;
    *request.mutable_kernel() = kernel_request(kernel_, /*with_tile=*/false);
    request.set_searcher(searcher_);
    request.set_max_evaluations(max_evals_);
    request.set_time_budget_ms(time_budget_ms_);
    request.set_patience(patience_);
    request.set_force(force_);
    request.set_seed(seed_);
    TuneProgressLine line;
    auto result = client->tune(
        request, [&](const v1::TuneProgress& p) { if (!globals.json) line.update(p); },
        cancel_, std::chrono::milliseconds(globals.timeout_ms));
    if (line.printed) std::fprintf(stderr, "\n");
    if (!result) return fail(globals, result.error());
    if (globals.json) {
      std::cout << to_json(*result);
      return 0;
    }
    print_result(*result);
    return 0;
  }

 private:
  static void print_result(const v1::TuningResult& result) {
    std::printf("best config   %s%s\n", config_label(result.config()).c_str(),
                result.from_database() ? "  (stored result; --force to tune again)" : "");
    std::printf("family        %s\n", result.template_id().c_str());
    std::printf("median        %.2f us", result.median_us());
    if (result.p90_us() > 0.0)
      std::printf("  (p10-p90 %.2f-%.2f us)", result.p10_us(), result.p90_us());
    std::printf("\n");
    std::printf("throughput    %.1f TF/s\n", result.tflops());
    std::printf("validated     %s%s%s\n", result.validated() ? "yes" : "no",
                result.validation_detail().empty() ? "" : ": ",
                result.validation_detail().c_str());
    for (int i = 1; i < result.finalists_size(); ++i)
      std::printf("runner-up     %s  %.2f us (p10-p90 %.2f-%.2f)\n",
                  config_label(result.finalists(i).config()).c_str(),
                  result.finalists(i).median_us(), result.finalists(i).p10_us(),
                  result.finalists(i).p90_us());
    if (result.finalists_size() >= 2)
      std::printf("margin        %+.2f us to the runner-up (%+.1f%%)\n", result.runner_up_margin_us(),
                  100.0 * result.runner_up_margin_us() / result.median_us());
    // A search of several families: each one's best, re-timed side by side.
    for (const auto& family : result.families()) {
      if (!family.error().empty() && family.median_us() <= 0.0) {
        std::printf("  %-22s no best: %s\n", family.template_id().c_str(),
                    family.error().c_str());
        continue;
      }
      std::printf("  %-22s %s  %.2f us (p10-p90 %.2f-%.2f)%s%s\n", family.template_id().c_str(),
                  config_label(family.config()).c_str(), family.median_us(), family.p10_us(),
                  family.p90_us(), family.tuned() ? "" : "  stored",
                  family.template_id() == result.template_id() ? "  served" : "");
    }
    std::printf("evaluations   %lld (%s)\n", static_cast<long long>(result.evaluations()),
                result.searcher().c_str());
    std::printf("wall          %.1f s\n", result.wall_seconds());
    std::printf("bucket        %s\n", result.bucket().c_str());
    std::printf("device        %s (%s)\n", result.device().c_str(), result.arch().c_str());
    std::printf("key           %s\n", result.key().c_str());
  }

  KernelFlags kernel_;
  std::string searcher_ = "evolutionary";
  int max_evals_ = 0, time_budget_ms_ = 0, patience_ = 0;
  bool force_ = false;
  uint64_t seed_ = 0;
  std::shared_ptr<fc::client::TuneCancel> cancel_ = std::make_shared<fc::client::TuneCancel>();
};

}  // namespace

std::unique_ptr<Command> add_tune(CLI::App& app) { return std::make_unique<Tune>(app); }

}  // namespace flashcore::cli
