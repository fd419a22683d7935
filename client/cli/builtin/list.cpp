// flashcore list: the daemon's cached kernels in key order, a page at a time.
#include <cstdio>

#include "builtin.hpp"

namespace flashcore::cli {
namespace {

void print_kernels_table(const v1::ListKernelsResponse& listed) {
  std::printf("%-16s  %-5s  %4s  %-6s  %-23s  %-7s  %4s  %6s  %8s\n", "KEY", "DTYPE", "D",
              "CAUSAL", "CONFIG", "ARCH", "REGS", "SPILLS", "CUBIN_KB");
  for (const auto& k : listed.kernels()) {
    std::printf("%-16s  %-5s  %4d  %-6s  %-23s  %-7s  %4d  %6d  %8.1f\n",
                k.key().substr(0, 16).c_str(),
                fc::client::dtype_label(k.problem().dtype()).c_str(), k.problem().head_dim(),
                k.problem().causal() ? "yes" : "no", config_label(k.config()).c_str(),
                k.arch().c_str(), k.registers(), k.spill_store_bytes(),
                static_cast<double>(k.cubin_size()) / 1024.0);
  }
}

class List final : public Command {
 public:
  explicit List(CLI::App& app)
      : Command(app.add_subcommand("list", "list cached kernels in key order")) {
    app_->add_option("--page-size", page_size_,
                     "kernels per page; 0 = the daemon's default (50)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app_->add_option("--page-token", token_, "continue from a previous page")
        ->type_name("TOKEN");
    app_->add_flag("--all", all_, "follow next-page tokens to the end");
  }

  int run(const Globals& globals, client::Client* client) override {
    return print_pages(
        globals,
        [&](const std::string& token) { return client->list_kernels(page_size_, token); },
        token_, all_, print_kernels_table);
  }

 private:
  int page_size_ = 0;
  std::string token_;
  bool all_ = false;
};

}  // namespace

std::unique_ptr<Command> add_list(CLI::App& app) { return std::make_unique<List>(app); }

}  // namespace flashcore::cli
