// flashcore health: the daemon's grpc.health.v1 status; exits 0 only when SERVING.
#include "builtin.hpp"

namespace flashcore::cli {
namespace {

class Health final : public Command {
 public:
  explicit Health(CLI::App& app)
      : Command(app.add_subcommand(
            "health", "check the daemon's grpc.health.v1 status; exits 0 only when SERVING")) {
    app_->add_option("--service", service_, "service name; empty = the whole server");
  }

  int run(const Globals& globals, client::Client* client) override {
    auto status = client->health(service_);
    if (!status) return fail(globals, status.error());
    if (globals.json)
      std::cout << "{\n \"status\": \"" << *status << "\"\n}\n";
    else
      std::cout << *status << "\n";
    return *status == "SERVING" ? 0 : 1;
  }

 private:
  std::string service_;
};

}  // namespace

std::unique_ptr<Command> add_health(CLI::App& app) { return std::make_unique<Health>(app); }

}  // namespace flashcore::cli
