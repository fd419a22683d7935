// flashcore stats: the daemon's /metrics at a glance, over HTTP (stats.cpp).
#include "builtin.hpp"
#include "stats.hpp"

namespace flashcore::cli {
namespace {

class Stats final : public Command {
 public:
  // The options bind to options_, which exists only once the base is built.
  explicit Stats(CLI::App& app) : Command(nullptr) { app_ = add_stats_command(app, options_); }
  bool needs_daemon() const override { return false; }  // over HTTP, not gRPC
  int run(const Globals& globals, client::Client*) override {
    auto rc = run_stats(options_, globals.json);
    return rc ? *rc : fail(globals, rc.error());
  }

 private:
  StatsOptions options_;
};

}  // namespace

std::unique_ptr<Command> add_stats(CLI::App& app) { return std::make_unique<Stats>(app); }

}  // namespace flashcore::cli
