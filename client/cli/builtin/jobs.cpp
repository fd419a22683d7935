// flashcore jobs: the tune jobs queued or running (this client's own; an
// admin's: every one).
#include <cstdio>

#include "builtin.hpp"

namespace flashcore::cli {
namespace {

class Jobs final : public Command {
 public:
  explicit Jobs(CLI::App& app)
      : Command(app.add_subcommand(
            "jobs",
            "list tune jobs queued or running: this client's own (an admin's: every one)")) {}

  int run(const Globals& globals, client::Client* client) override {
    auto listed = client->list_tune_jobs();
    if (!listed) return fail(globals, listed.error());
    if (globals.json) {
      std::cout << to_json(*listed);
      return 0;
    }
    if (listed->jobs().empty()) {
      std::cout << "no tune jobs\n";
      return 0;
    }
    std::printf("%-6s %-16s %-8s %-20s %8s  %s\n", "ID", "OWNER", "STATE", "TEMPLATE", "GPU-S",
                "BUCKET");
    for (const auto& job : listed->jobs())
      std::printf("%-6lld %-16s %-8s %-20s %8.1f  %s\n", static_cast<long long>(job.id()),
                  job.owner().c_str(), job.state().c_str(), job.template_id().c_str(),
                  job.gpu_seconds(), job.bucket().c_str());
    return 0;
  }
};

}  // namespace

std::unique_ptr<Command> add_jobs(CLI::App& app) { return std::make_unique<Jobs>(app); }

}  // namespace flashcore::cli
