// flashcore info: the daemon's version, NVRTC, GPU and templates.
#include "builtin.hpp"

namespace flashcore::cli {
namespace {

class Info final : public Command {
 public:
  explicit Info(CLI::App& app)
      : Command(app.add_subcommand("info",
                                   "show the daemon's version, NVRTC, GPU and templates")) {}

  int run(const Globals& globals, client::Client* client) override {
    auto server = client->server_info();
    if (!server) return fail(globals, server.error());
    if (globals.json) {
      std::cout << to_json(*server);
      return 0;
    }
    const auto join = [](const auto& items) {
      std::string out;
      for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
      return out.empty() ? std::string("-") : out;
    };
    std::cout << "version          " << server->version() << "\n"
              << "nvrtc            " << server->nvrtc_version() << "\n"
              << "default arch     " << server->default_arch() << "\n"
              << "gpu              "
              << (server->gpu_available()
                      ? server->gpu_name()
                      : "none (" + server->gpu_unavailable_reason() + ")")
              << "\n"
              << "supported archs  " << join(server->supported_archs()) << "\n"
              << "templates        " << join(server->templates()) << "\n";
    return 0;
  }
};

}  // namespace

std::unique_ptr<Command> add_info(CLI::App& app) { return std::make_unique<Info>(app); }

}  // namespace flashcore::cli
