// The `flashcore` commands, one file each in builtin/ (git's layout): each
// add_<name> declares its subcommand and options on the app and returns the
// command, which main runs when its subcommand was given.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>

#include "cli.hpp"

namespace flashcore::cli {

class Command {
 public:
  virtual ~Command() = default;
  // Whether its subcommand was given.
  bool selected() const { return static_cast<bool>(*app_); }
  // False for the commands that read a file or /metrics rather than call the daemon.
  virtual bool needs_daemon() const { return true; }
  // After parsing, before any gRPC thread exists (tune takes its signals here).
  virtual void before_connect() {}
  // The exit status. `client` is null when !needs_daemon().
  virtual int run(const Globals& globals, client::Client* client) = 0;

 protected:
  explicit Command(CLI::App* app) : app_(app) {}
  CLI::App* app_;
};

std::unique_ptr<Command> add_compile(CLI::App& app);
std::unique_ptr<Command> add_validate(CLI::App& app);
std::unique_ptr<Command> add_tune(CLI::App& app);
std::unique_ptr<Command> add_results(CLI::App& app);  // list, export, import
std::unique_ptr<Command> add_stats(CLI::App& app);
std::unique_ptr<Command> add_cache(CLI::App& app);  // clear, evict
std::unique_ptr<Command> add_get(CLI::App& app);
std::unique_ptr<Command> add_list(CLI::App& app);
std::unique_ptr<Command> add_health(CLI::App& app);
std::unique_ptr<Command> add_info(CLI::App& app);
std::unique_ptr<Command> add_jobs(CLI::App& app);
std::unique_ptr<Command> add_cancel(CLI::App& app);

}  // namespace flashcore::cli
