// flashcore cancel: cancel a tune job by its id (from `jobs`).
#include "builtin.hpp"

namespace flashcore::cli {
namespace {

class Cancel final : public Command {
 public:
  explicit Cancel(CLI::App& app)
      : Command(app.add_subcommand("cancel", "cancel a tune job by its id (from `jobs`)")) {
    app_->add_option("ID", id_, "the job's id")->required();
  }

  int run(const Globals& globals, client::Client* client) override {
    auto cancelled = client->cancel_tune_job(id_);
    if (!cancelled) return fail(globals, cancelled.error());
    if (globals.json)
      std::cout << to_json(*cancelled);
    else
      std::cout << "cancelled tune job " << cancelled->id() << " of " << cancelled->owner()
                << "\n";
    return 0;
  }

 private:
  int64_t id_ = 0;
};

}  // namespace

std::unique_ptr<Command> add_cancel(CLI::App& app) { return std::make_unique<Cancel>(app); }

}  // namespace flashcore::cli
