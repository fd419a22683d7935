// `flashcore results export` / `import` (results_transfer.cpp): tuned bests
// moved between boxes without Redis, straight from and into a tuning
// database file (SQLite takes the running daemon's locks into account).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "flashcore/client.hpp"

namespace flashcore::cli {

struct TransferOptions {
  std::string tuning_db;  // empty: the daemon's default
  std::string file;       // export: output (empty = stdout); import: input
};

// Adds `export` and `import` under `results`; returns them.
std::pair<CLI::App*, CLI::App*> add_transfer_commands(CLI::App& results, TransferOptions& options);
Result<int> run_export(const TransferOptions& options);
Result<int> run_import(const TransferOptions& options, bool json);
// $XDG_STATE_HOME/flashcore/tuning.db, else ~/.local/state/flashcore/tuning.db.
std::string default_tuning_db();

}  // namespace flashcore::cli
