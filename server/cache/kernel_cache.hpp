// memory LRU -> disk -> shared (Redis, optional) -> NVRTC, with single
// flight: N concurrent requests for one key start exactly one compile and all
// get its result; with a shared tier, N daemons asked for one key compile it
// once (a Redis lock, see redis_store.hpp). Compiles run on the bounded
// CompilePool; callers get their answer through a callback, so no RPC thread
// blocks on NVRTC. The shared tier is asked on the pool thread too (one
// lookup per key however many local callers wait), and a daemon that waits
// on another's compile polls there.
#pragma once

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "cache/cached_kernel.hpp"
#include "cache/disk_store.hpp"
#include "cache/memory_lru.hpp"
#include "cache/redis_store.hpp"
#include "common/result.hpp"
#include "jit/compile_pool.hpp"
#include "jit/nvrtc_compiler.hpp"

namespace flashcore {

struct CacheLookup {
  std::shared_ptr<const CachedKernel> kernel;
  CacheTier tier = CacheTier::memory;
};

struct CacheStats {
  size_t memory_hits = 0;
  size_t disk_hits = 0;
  size_t compiles = 0;          // NVRTC compiles started
  size_t single_flight_joins = 0;  // requests that waited on another's compile
  size_t abandoned_compiles = 0;   // queued compiles dropped: every waiter had gone
  size_t corrupt_entries = 0;
  size_t memory_bytes = 0;
  size_t memory_entries = 0;
  size_t evictions = 0;
  // For the metrics (server/metrics): misses per tier, the shared tier, compiles.
  size_t memory_misses = 0;
  size_t disk_misses = 0;
  size_t shared_hits = 0;
  size_t shared_misses = 0;
  size_t shared_corrupt_entries = 0;
  size_t shared_errors = 0;
  bool shared_configured = false;
  bool shared_available = false;
  size_t fleet_waits = 0;          // compiles that waited on another daemon's lock
  size_t compiles_run = 0;         // NVRTC runs (monotonic, unlike `compiles`)
  size_t compile_failures = 0;
  double compile_seconds = 0;      // NVRTC time of finished compiles
  size_t compiles_running = 0;     // NVRTC compiles in progress now
  size_t compiles_queued = 0;      // compile tasks waiting for a pool thread
  uint64_t disk_bytes = 0;
};

// What cache clear|evict removed, per tier.
struct CacheRemoval {
  TierRemoval memory;
  std::optional<TierRemoval> disk;    // nullopt: no disk tier
  std::optional<TierRemoval> shared;  // nullopt: the shared tier was not asked
  std::vector<std::string> keys_not_found;  // evict by key: held by no tier asked
};

struct KernelCacheOptions {
  size_t memory_bytes = size_t{256} << 20;
  std::filesystem::path disk_dir;  // empty = no disk tier
  uint64_t disk_max_bytes = 0;     // 0 = unbounded; else LRU entries are evicted past it
  std::shared_ptr<RedisStore> shared;  // null = no shared tier
};

class KernelCache {
 public:
  using Callback = std::function<void(Result<CacheLookup>)>;

  KernelCache(KernelCacheOptions options, std::shared_ptr<const NvrtcCompiler> compiler,
              std::shared_ptr<CompilePool> pool);
  // Waits for this cache's compiles (and their callbacks) to finish: the
  // pool's tasks point at this object.
  ~KernelCache();
  KernelCache(const KernelCache&) = delete;
  KernelCache& operator=(const KernelCache&) = delete;

  // The key a spec maps to with this cache's compiler.
  std::string key_for(const KernelSpec& spec) const;

  // Names one waiter of one compile, for abandon(); waiter 0: answered at once.
  struct Ticket {
    std::string key;
    uint64_t waiter = 0;
  };
  // Answers from memory or disk on the calling thread; otherwise compiles on
  // the pool (or joins the compile already running for this key) and calls
  // `done` from the pool thread. `done` is called exactly once.
  Ticket get_or_compile(const KernelSpec& spec, const RuntimeShape& first_shape, Callback done);
  // The waiter has gone (its call was cancelled): its `done` is called now
  // with `cancelled`, and a compile left with no waiter before it starts is
  // never run. A compile already running finishes and is cached. Waiters that
  // never abandon (tuning) keep their compiles.
  void abandon(const Ticket& ticket);
  // Blocking convenience for tests and tools; never call it from a pool thread.
  Result<CacheLookup> get_or_compile_sync(const KernelSpec& spec, const RuntimeShape& first_shape);

  // memory -> disk -> shared; not_found when none has it.
  Result<CacheLookup> get(const std::string& key);
  // Entries (cubin omitted) sorted by key, after `after_key`, at most `limit`:
  // the disk tier's listing merged with memory-only entries.
  std::vector<CachedKernel> list(const std::string& after_key, size_t limit);

  // Administrative removals (cache clear|evict), each tier's entries whole.
  // The tiers are emptied back to front (shared, disk, memory), so a lookup
  // running meanwhile cannot promote an entry into a tier already emptied
  // from one not emptied yet. Compiles in flight are not stopped: they land
  // afterwards. With `include_shared` (FAILED_PRECONDITION without a shared
  // tier) the shared tier goes first; Redis out of reach: UNAVAILABLE and
  // the local tiers untouched.
  Result<CacheRemoval> clear(bool include_shared);
  // Well-formed keys only (the caller checks them).
  Result<CacheRemoval> evict(const std::vector<std::string>& keys, bool include_shared);
  // Least recently used entries until memory and disk each hold <= max_bytes.
  CacheRemoval trim_to(uint64_t max_bytes);

  CacheStats stats() const;
  // The shared tier (null without one), for the metrics' Redis figures.
  const std::shared_ptr<RedisStore>& shared_tier() const { return options_.shared; }

 private:
  void compile_task(const std::string& key, const KernelSpec& spec, const RuntimeShape& first_shape);
  void finish_compile(const std::string& key, Result<CacheLookup> result);
  void task_done();
  // Looks in the shared tier; a hit is promoted to disk and memory.
  std::shared_ptr<const CachedKernel> load_shared(const std::string& key);
  // Waits while another daemon holds the key's lock; a hit from the shared
  // tier, or null when this daemon should compile (it took the lock, or
  // Redis is out of reach). `locked` says whether this daemon holds it.
  std::shared_ptr<const CachedKernel> wait_for_fleet(const std::string& key, bool& locked);

  KernelCacheOptions options_;
  std::shared_ptr<const NvrtcCompiler> compiler_;
  std::shared_ptr<CompilePool> pool_;
  MemoryLru memory_;
  std::unique_ptr<DiskStore> disk_;

  std::mutex inflight_mutex_;
  struct Inflight {
    std::vector<std::pair<uint64_t, Callback>> waiters;
  };
  std::unordered_map<std::string, Inflight> inflight_;
  uint64_t next_waiter_ = 1;  // under inflight_mutex_
  size_t tasks_running_ = 0;  // submitted compile tasks not yet returned
  std::condition_variable tasks_idle_;

  std::atomic<size_t> memory_hits_{0}, disk_hits_{0}, compiles_{0}, joins_{0}, abandoned_{0};
  std::atomic<size_t> memory_misses_{0}, disk_misses_{0}, fleet_waits_{0}, compile_failures_{0},
      compiles_running_{0}, compiles_run_{0}, shared_hits_{0}, shared_misses_{0};
  std::atomic<uint64_t> compile_micros_{0};
};

}  // namespace flashcore
