// flashcore results: list the daemon's stored tuning results; `results
// export` / `results import` move bests to and from a tuning database file
// (results_transfer.cpp), without the daemon.
#include <cstdio>

#include "builtin.hpp"
#include "results_transfer.hpp"

namespace flashcore::cli {
namespace {

void print_results_table(const v1::ListTuningResultsResponse& listed) {
  std::printf("%-5s  %4s  %-6s  %-40s  %-7s  %-23s  %10s  %7s  %5s  %s\n", "DTYPE", "D", "CAUSAL",
              "BUCKET", "ARCH", "CONFIG", "MEDIAN_US", "TF/S", "EVALS", "DEVICE");
  for (const auto& r : listed.results()) {
    std::printf("%-5s  %4d  %-6s  %-40s  %-7s  %-23s  %10.2f  %7.1f  %5lld  %s\n",
                fc::client::dtype_label(r.problem().dtype()).c_str(), r.problem().head_dim(),
                r.problem().causal() ? "yes" : "no", r.bucket().c_str(), r.arch().c_str(),
                config_label(r.config()).c_str(), r.median_us(), r.tflops(),
                static_cast<long long>(r.evaluations()), r.device().c_str());
  }
  if (listed.skipped_rows() > 0) {
    std::fprintf(stderr, "%lld stored result(s) did not read and are left out:\n",
                 static_cast<long long>(listed.skipped_rows()));
    for (const auto& reason : listed.skipped_reasons()) std::fprintf(stderr, "  %s\n", reason.c_str());
  }
}

class Results final : public Command {
 public:
  explicit Results(CLI::App& app)
      : Command(app.add_subcommand("results", "list the daemon's stored tuning results")) {
    app_->add_option("--page-size", page_size_, "results per page; 0 = 100")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app_->add_option("--page-token", token_, "continue from a previous page")
        ->type_name("TOKEN");
    app_->add_flag("--all", all_, "follow next-page tokens to the end");
    std::tie(export_, import_) = add_transfer_commands(*app_, transfer_);
  }

  // export and import work on the database file, not over gRPC.
  bool needs_daemon() const override { return !*export_ && !*import_; }

  int run(const Globals& globals, client::Client* client) override {
    if (*export_ || *import_) {
      auto rc = *export_ ? run_export(transfer_) : run_import(transfer_, globals.json);
      return rc ? *rc : fail(globals, rc.error());
    }
    return print_pages(
        globals,
        [&](const std::string& token) { return client->list_tuning_results(page_size_, token); },
        token_, all_, print_results_table);
  }

 private:
  int page_size_ = 0;
  std::string token_;
  bool all_ = false;
  TransferOptions transfer_;
  CLI::App* export_ = nullptr;
  CLI::App* import_ = nullptr;
};

}  // namespace

std::unique_ptr<Command> add_results(CLI::App& app) { return std::make_unique<Results>(app); }

}  // namespace flashcore::cli
