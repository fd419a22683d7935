// flashcore cache clear|evict: remove cached kernels from the daemon (role
// admin). `clear` empties its memory and disk tiers (the fleet's shared tier
// too with --include-shared); `evict KEY...` removes those kernels, `evict
// --down-to SIZE` the least recently used until each local tier fits SIZE.
#include <cstdio>
#include <string>
#include <vector>

#include "builtin.hpp"

namespace flashcore::cli {
namespace {

void print_tier(const char* name, const v1::CacheTierChange& tier, bool shared) {
  if (shared) {
    std::printf("%-7s removed %llu entries\n", name,
                static_cast<unsigned long long>(tier.entries_removed()));
    return;
  }
  std::printf("%-7s removed %llu entries (%llu bytes), left %llu entries (%llu bytes)\n", name,
              static_cast<unsigned long long>(tier.entries_removed()),
              static_cast<unsigned long long>(tier.bytes_removed()),
              static_cast<unsigned long long>(tier.entries_left()),
              static_cast<unsigned long long>(tier.bytes_left()));
}

int print_change(const Globals& globals, const v1::CacheChange& change) {
  if (globals.json) {
    std::cout << to_json(change);
    return 0;
  }
  print_tier("memory:", change.memory(), false);
  if (change.has_disk()) print_tier("disk:", change.disk(), false);
  if (change.has_shared()) print_tier("shared:", change.shared(), true);
  for (const auto& key : change.keys_not_found()) std::printf("not cached: %s\n", key.c_str());
  return 0;
}

class Cache final : public Command {
 public:
  explicit Cache(CLI::App& app)
      : Command(app.add_subcommand(
            "cache", "remove cached kernels from the daemon: clear, evict (role admin)")) {
    app_->require_subcommand(1);
    clear_ = app_->add_subcommand(
        "clear", "empty the daemon's memory and disk tiers (compiles in flight still land)");
    clear_->add_flag("--include-shared", include_shared_,
                     "also delete every kernel in the fleet's shared tier (Redis), which all "
                     "daemons read");
    evict_ = app_->add_subcommand(
        "evict", "evict kernels by key, or the least recently used down to a size");
    evict_->add_option("KEY", keys_, "64-hex keys of the kernels to evict (from `list`)");
    evict_->add_option("--down-to", down_to_,
                       "evict least recently used entries until the memory and the disk tier "
                       "each hold at most SIZE bytes (suffixes K, M, G: powers of 1024)")
        ->transform(CLI::AsSizeValue(false))
        ->type_name("SIZE");
    evict_->add_flag("--include-shared", include_shared_,
                     "with KEYs: also delete them from the fleet's shared tier (Redis)");
  }

  int run(const Globals& globals, client::Client* client) override {
    if (*clear_) {
      auto change = client->clear_cache(include_shared_);
      if (!change) return fail(globals, change.error());
      return print_change(globals, *change);
    }
    // The daemon checks the combination (exactly one of keys and --down-to)
    // and names the field it refuses.
    v1::EvictCacheRequest request;
    for (const auto& key : keys_) request.add_keys(key);
    if (evict_->count("--down-to") > 0) request.set_down_to_bytes(down_to_);
    request.set_include_shared(include_shared_);
    auto change = client->evict_cache(request);
    if (!change) return fail(globals, change.error());
    return print_change(globals, *change);
  }

 private:
  CLI::App* clear_ = nullptr;
  CLI::App* evict_ = nullptr;
  bool include_shared_ = false;
  std::vector<std::string> keys_;
  uint64_t down_to_ = 0;
};

}  // namespace

std::unique_ptr<Command> add_cache(CLI::App& app) { return std::make_unique<Cache>(app); }

}  // namespace flashcore::cli
