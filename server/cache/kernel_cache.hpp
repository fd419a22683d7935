// memory LRU -> disk -> NVRTC, with single flight: N concurrent requests for
// one key start exactly one compile and all get its result. Compiles run on
// the bounded CompilePool; callers get their answer through a callback, so no
// RPC thread blocks on NVRTC.
#pragma once

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cache/cached_kernel.hpp"
#include "cache/disk_store.hpp"
#include "cache/memory_lru.hpp"
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
};

struct KernelCacheOptions {
  size_t memory_bytes = size_t{256} << 20;
  std::filesystem::path disk_dir;  // empty = no disk tier
  uint64_t disk_max_bytes = 0;     // 0 = unbounded; else LRU entries are evicted past it
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

  // memory -> disk; not_found when neither has it.
  Result<CacheLookup> get(const std::string& key);
  // Entries (cubin omitted) sorted by key, after `after_key`, at most `limit`:
  // the disk tier's listing merged with memory-only entries.
  std::vector<CachedKernel> list(const std::string& after_key, size_t limit);

  CacheStats stats() const;

 private:
  void compile_task(const std::string& key, const KernelSpec& spec, const RuntimeShape& first_shape);
  void finish_compile(const std::string& key, Result<CacheLookup> result);
  void task_done();

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
};

}  // namespace flashcore
