// `flashcore stats` (stats.cpp): one file per command, hooked into main.cpp.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "flashcore/client.hpp"

namespace flashcore::cli {

struct StatsOptions {
  std::string metrics_address = "127.0.0.1:9464";
};

CLI::App* add_stats_command(CLI::App& app, StatsOptions& options);
// The exit code, or the error to print.
Result<int> run_stats(const StatsOptions& options, bool json);

}  // namespace flashcore::cli
