// flashcore get: fetch a cached kernel by key.
#include "builtin.hpp"

namespace flashcore::cli {
namespace {

class Get final : public Command {
 public:
  explicit Get(CLI::App& app)
      : Command(app.add_subcommand("get", "fetch a cached kernel by key")) {
    app_->add_option("KEY", key_, "kernel key (64 hex characters)")->required();
    auto* output = app_->add_option("-o,--output", output_, "write the cubin to FILE")
                       ->type_name("FILE");
    app_->add_flag("--omit-cubin", omit_cubin_, "fetch metadata only")->excludes(output);
    app_->add_flag("--include-cubin", include_cubin_,
                   "with --json, keep the cubin (base64) in the output");
  }

  int run(const Globals& globals, client::Client* client) override {
    const bool want_cubin = !output_.empty() || (globals.json && include_cubin_);
    auto handle = client->get_kernel(key_, omit_cubin_ || !want_cubin);
    if (!handle) return fail(globals, handle.error());
    return print_handle(globals, std::move(handle).value(), output_, include_cubin_);
  }

 private:
  std::string key_, output_;
  bool omit_cubin_ = false, include_cubin_ = false;
};

}  // namespace

std::unique_ptr<Command> add_get(CLI::App& app) { return std::make_unique<Get>(app); }

}  // namespace flashcore::cli
