// flashcored: loads the config, serves until SIGTERM/SIGINT, then drains.
// SIGHUP re-reads the config (file, environment, flags as at start) and
// applies what can change while serving: the log level and the token file.
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdio>
#include <cstring>

#include "app/config.hpp"
#include "app/daemon.hpp"
#include "app/signals.hpp"

int main(int argc, char** argv) {
  using namespace flashcore;

  // Before any thread starts, so every thread inherits the mask (see
  // signals.hpp for why this is not a signal handler).
  if (Status blocked = block_shutdown_signals(); !blocked) {
    spdlog::critical("{}", blocked.error().message);
    return 1;
  }

  auto config = load_config(argc, argv);
  if (!config) {
    if (config.error().code == ErrorCode::cancelled) {  // --help
      std::fputs(config.error().message.c_str(), stdout);
      return 0;
    }
    std::fprintf(stderr, "flashcored: %s\n", config.error().message.c_str());
    return 2;
  }
  spdlog::set_level(spdlog::level::from_str(config->log_level));

  auto daemon = Daemon::start(*config);
  if (!daemon) {
    spdlog::critical("{}", daemon.error().message);
    return 1;
  }
  spdlog::info("flashcored listening on {}", (*daemon)->address());

  const int received = wait_for_shutdown_signal([&] {
    if (Status tokens = (*daemon)->reload_auth(); !tokens)
      spdlog::error("SIGHUP: auth tokens not reloaded, keeping the running set: {}",
                    tokens.error().message);
    auto reloaded = load_config(argc, argv);
    if (!reloaded) {
      spdlog::error("SIGHUP: config not reloaded, keeping the running one: {}",
                    reloaded.error().message);
      return;
    }
    spdlog::set_level(spdlog::level::from_str(reloaded->log_level));
    spdlog::warn("SIGHUP: log level now {}; other settings take effect at the next start",
                 reloaded->log_level);
  });
  spdlog::info("SIG{} received, draining for up to {} ms", sigabbrev_np(received),
               config->drain_timeout.count());
  (*daemon)->shutdown(config->drain_timeout);
  (*daemon)->wait();
  daemon.value().reset();
  spdlog::info("drained");
  return 0;
}
