// flashcore compile: compile (or fetch from the daemon's cache) one kernel.
#include "builtin.hpp"

namespace flashcore::cli {
namespace {

class Compile final : public Command {
 public:
  explicit Compile(CLI::App& app)
      : Command(app.add_subcommand(
            "compile", "compile (or fetch from the daemon's cache) one kernel specialization")) {
    add_problem_options(*app_, kernel_);
    add_tile_options(*app_, kernel_);
    app_->add_option("-o,--output", output_, "write the cubin to FILE")->type_name("FILE");
    app_->add_flag("--include-cubin", include_cubin_,
                   "with --json, keep the cubin (base64) in the output");
    app_->add_flag("--tuned", use_tuned_,
                   "take the tile config from the daemon's tuning result for this shape's "
                   "bucket (the --block-m/--block-n/--warps/--stages values are ignored)");
    app_->add_flag("--line-info", line_info_,
                   "compile with -lineinfo, for profilers (a larger cubin, and another key)");
  }

  int run(const Globals& globals, client::Client* client) override {
    v1::KernelRequest request = kernel_request(kernel_, /*with_tile=*/true);
    request.set_use_tuned_config(use_tuned_);
    request.set_line_info(line_info_);
    // Skip the cubin transfer when nothing will use it.
    request.set_omit_cubin(output_.empty() && !(globals.json && include_cubin_));
    auto handle = client->compile(request);
    if (!handle) return fail(globals, handle.error());
    return print_handle(globals, std::move(handle).value(), output_, include_cubin_);
  }

 private:
  KernelFlags kernel_;
  std::string output_;
  bool include_cubin_ = false;
  bool use_tuned_ = false;
  bool line_info_ = false;
};

}  // namespace

std::unique_ptr<Command> add_compile(CLI::App& app) { return std::make_unique<Compile>(app); }

}  // namespace flashcore::cli
