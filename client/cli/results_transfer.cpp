#include "results_transfer.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "tuning/best_json.hpp"
#include "tuning/tuning_db.hpp"

namespace flashcore::cli {
namespace {

using nlohmann::json;

Result<std::unique_ptr<TuningDb>> open_db(const TransferOptions& options) {
  const std::string path = options.tuning_db.empty() ? default_tuning_db() : options.tuning_db;
  auto db = TuningDb::open(path);
  if (!db) return make_error(db.error().code, "tuning database " + path + ": " + db.error().message);
  return db;
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "unknown";
  return name;
}

}  // namespace

std::string default_tuning_db() {
  if (const char* state = std::getenv("XDG_STATE_HOME"); state && *state)
    return std::string(state) + "/flashcore/tuning.db";
  if (const char* home = std::getenv("HOME"); home && *home)
    return std::string(home) + "/.local/state/flashcore/tuning.db";
  return "tuning.db";
}

std::pair<CLI::App*, CLI::App*> add_transfer_commands(CLI::App& results, TransferOptions& options) {
  auto* out = results.add_subcommand(
      "export", "write every tuned best of a tuning database as JSON (for `results import`)");
  out->add_option("--tuning-db", options.tuning_db,
                  "the database file (default: the daemon's, $XDG_STATE_HOME/flashcore/tuning.db)")
      ->envname("FLASHCORE_TUNING_DB");
  out->add_option("-o,--output", options.file, "write here instead of stdout")->type_name("FILE");
  auto* in = results.add_subcommand(
      "import", "merge exported bests into a tuning database: per key, the better-measured one "
                "(validated first, then the faster median) stays");
  in->add_option("--tuning-db", options.tuning_db, "the database file (default: the daemon's)")
      ->envname("FLASHCORE_TUNING_DB");
  in->add_option("FILE", options.file, "a file `results export` wrote")->required();
  return {out, in};
}

Result<int> run_export(const TransferOptions& options) {
  auto db = open_db(options);
  if (!db) return db.error();
  json doc{{"format", "flashcore-tuning-results/1"},
           {"exported_from", host_name()},
           {"exported_unix_ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                    std::chrono::system_clock::now().time_since_epoch())
                                    .count()},
           {"results", json::array()}};
  std::string token;
  do {
    auto page = (*db)->list_best(1000, token);
    if (!page) return page.error();
    for (const auto& best : page->items) doc["results"].push_back(best_to_json(best));
    token = page->next_page_token;
  } while (!token.empty());
  const std::string text = doc.dump(1) + "\n";
  if (options.file.empty()) {
    std::cout << text;
  } else {
    std::ofstream out(options.file, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) return make_error(ErrorCode::unavailable, "cannot write " + options.file);
    std::cerr << doc["results"].size() << " results written to " << options.file << "\n";
  }
  return 0;
}

Result<int> run_import(const TransferOptions& options, bool json_output) {
  std::ifstream in(options.file, std::ios::binary);
  if (!in) return make_error(ErrorCode::not_found, "cannot read " + options.file);
  const json doc = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object() || doc.value("format", "") != "flashcore-tuning-results/1")
    return make_error(ErrorCode::invalid_argument,
                      options.file + " is not a `flashcore results export` file");
  auto db = open_db(options);
  if (!db) return db.error();
  const std::string origin = doc.value("exported_from", std::string("unknown"));
  size_t added = 0, replaced = 0, kept = 0, refused = 0;
  json report = json::array();
  for (const json& item : doc.at("results")) {
    std::string why;
    auto best = best_from_json(item, &why);
    if (!best) {
      ++refused;
      std::cerr << "flashcore: skipping a result: " << why << "\n";
      continue;
    }
    best->trial_id = 0;  // trials stay on the box that ran them
    auto current = (*db)->best_for(best->scope);
    if (!current) return current.error();
    std::string outcome;
    if (!*current) {
      outcome = "added";
    } else if ((*current)->toolchain.nvrtc_version == best->toolchain.nvrtc_version &&
               (*current)->toolchain.template_source_hash == best->toolchain.template_source_hash) {
      outcome = better_measured(*best, **current) ? "replaced" : "kept";
    } else {
      // Another toolchain: the newer record names the cubins served now.
      outcome = best->updated_unix_ms > (*current)->updated_unix_ms ? "replaced" : "kept";
    }
    if (outcome != "kept") {
      // Where it came from, in the one free-text field a best has.
      if (best->searcher.find(" (imported from ") == std::string::npos)
        best->searcher += " (imported from " + origin + ")";
      auto stored = (*db)->update_best_if_better(*best, BestUpdate::force);
      if (!stored) return stored.error();
    }
    (outcome == "added" ? added : outcome == "replaced" ? replaced : kept)++;
    report.push_back({{"key", fleet_tuning_key(best->scope, best->toolchain)}, {"outcome", outcome}});
  }
  if (json_output)
    std::cout << json{{"added", added}, {"replaced", replaced}, {"kept", kept}, {"refused", refused},
                      {"results", report}}
                     .dump(1)
              << "\n";
  else
    std::cout << "imported from " << origin << ": " << added << " added, " << replaced
              << " replaced, " << kept << " kept (better measured here), " << refused
              << " refused\n";
  return refused == 0 ? 0 : 1;
}

}  // namespace flashcore::cli
