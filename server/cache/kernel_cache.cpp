#include "cache/kernel_cache.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <future>
#include <map>
#include <thread>

#include "cache/cache_key.hpp"
#include "common/digest.hpp"

namespace flashcore {
namespace {

int64_t now_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Listings carry metadata only; a memory entry's cubin stays out of them.
CachedKernel without_cubin(const CachedKernel& entry) {
  CachedKernel copy = entry;
  copy.cubin_size = entry.compiled.cubin.size();
  copy.compiled.cubin.clear();
  return copy;
}

// An entry as the memory tier keeps it: with its cubin's digest.
std::shared_ptr<const CachedKernel> sealed(CachedKernel&& entry) {
  entry.cubin_sha256 = sha256_hex(entry.compiled.cubin);
  return std::make_shared<const CachedKernel>(std::move(entry));
}

}  // namespace

KernelCache::KernelCache(KernelCacheOptions options, std::shared_ptr<const NvrtcCompiler> compiler,
                         std::shared_ptr<CompilePool> pool)
    : options_(std::move(options)),
      compiler_(std::move(compiler)),
      pool_(std::move(pool)),
      memory_(options_.memory_bytes) {
  if (!options_.disk_dir.empty()) disk_ = std::make_unique<DiskStore>(options_.disk_dir, options_.disk_max_bytes);
}

KernelCache::~KernelCache() {
  std::unique_lock lock(inflight_mutex_);
  tasks_idle_.wait(lock, [this] { return tasks_running_ == 0; });
}

std::string KernelCache::key_for(const KernelSpec& spec) const {
  return cache_key(spec, compiler_->fingerprint(spec));
}

KernelCache::Ticket KernelCache::get_or_compile(const KernelSpec& spec,
                                                const RuntimeShape& first_shape, Callback done) {
  const std::string key = key_for(spec);
  if (auto hit = memory_.get(key)) {
    ++memory_hits_;
    done(CacheLookup{std::move(hit), CacheTier::memory});
    return Ticket{key, 0};
  }
  ++memory_misses_;
  if (disk_) {
    if (auto loaded = disk_->load(key)) {
      auto entry = sealed(std::move(*loaded));
      memory_.put(entry);
      ++disk_hits_;
      done(CacheLookup{std::move(entry), CacheTier::disk});
      return Ticket{key, 0};
    }
    ++disk_misses_;
  }

  std::shared_ptr<const CachedKernel> landed;
  uint64_t waiter = 0;
  {
    std::lock_guard lock(inflight_mutex_);
    waiter = next_waiter_++;
    if (auto it = inflight_.find(key); it != inflight_.end()) {
      it->second.waiters.emplace_back(waiter, std::move(done));
      ++joins_;
      return Ticket{key, waiter};
    }
    // A compile of this key may have finished between the lookups above and
    // this lock; it puts its entry in memory before leaving inflight_, so
    // looking again here keeps a just-finished key from compiling twice.
    landed = memory_.get(key);
    if (!landed) {
      inflight_[key].waiters.emplace_back(waiter, std::move(done));
      ++tasks_running_;
    }
  }
  if (landed) {
    ++memory_hits_;
    done(CacheLookup{std::move(landed), CacheTier::memory});
    return Ticket{key, 0};
  }

  Status submitted = pool_->submit([this, key, spec, first_shape] {
    compile_task(key, spec, first_shape);
    task_done();
  });
  if (submitted.ok()) {
    ++compiles_;
  } else {
    finish_compile(key, submitted.error());
    task_done();
  }
  return Ticket{key, waiter};
}

void KernelCache::abandon(const Ticket& ticket) {
  if (ticket.waiter == 0) return;
  Callback done;
  {
    std::lock_guard lock(inflight_mutex_);
    auto it = inflight_.find(ticket.key);
    if (it == inflight_.end()) return;  // answered already
    auto& waiters = it->second.waiters;
    for (auto w = waiters.begin(); w != waiters.end(); ++w)
      if (w->first == ticket.waiter) {
        done = std::move(w->second);
        waiters.erase(w);
        break;
      }
  }
  if (done) done(make_error(ErrorCode::cancelled, "compile abandoned: its caller went away"));
}

void KernelCache::compile_task(const std::string& key, const KernelSpec& spec,
                               const RuntimeShape& first_shape) {
  {
    // Every waiter went away while this waited in the queue: nobody wants it.
    std::lock_guard lock(inflight_mutex_);
    auto it = inflight_.find(key);
    if (it == inflight_.end() || it->second.waiters.empty()) {
      if (it != inflight_.end()) inflight_.erase(it);
      ++abandoned_;
      --compiles_;
      return;
    }
  }
  // Every waiter must hear back exactly once, whatever the compiler throws.
  bool locked = false;
  try {
    if (options_.shared) {
      auto from_fleet = load_shared(key);
      if (!from_fleet) from_fleet = wait_for_fleet(key, locked);
      if (from_fleet) {
        --compiles_;  // counted at submit: NVRTC never ran
        finish_compile(key, CacheLookup{std::move(from_fleet), CacheTier::shared});
        return;
      }
      ++shared_misses_;
    }
    Result<CompiledKernel> compiled = [&] {
      // Counted down and timed however compile() leaves (it may throw).
      struct Running {
        KernelCache& cache;
        std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
        explicit Running(KernelCache& c) : cache(c) {
          ++cache.compiles_running_;
          ++cache.compiles_run_;
        }
        ~Running() {
          --cache.compiles_running_;
          cache.compile_micros_ += static_cast<uint64_t>(
              std::chrono::duration_cast<std::chrono::microseconds>(
                  std::chrono::steady_clock::now() - started)
                  .count());
        }
      } running(*this);
      return compiler_->compile(spec);
    }();
    if (!compiled.ok()) {
      ++compile_failures_;
      if (locked) options_.shared->unlock(key);
      finish_compile(key, compiled.error());
      return;
    }
    auto entry = std::make_shared<CachedKernel>();
    entry->key = key;
    entry->spec = spec;
    entry->first_shape = first_shape;
    entry->compiled = std::move(compiled).value();
    entry->cubin_size = entry->compiled.cubin.size();
    entry->created_unix_ms = now_unix_ms();
    entry->cubin_sha256 = sha256_hex(entry->compiled.cubin);
    if (disk_) {
      // DiskStore logs an unwritable folder once; the kernel is still served
      // from memory.
      if (Status stored = disk_->store(*entry); !stored.ok())
        spdlog::debug("cache entry {} not stored: {}", key, stored.error().message);
    }
    if (options_.shared) {
      // Stored before the lock goes: a daemon that takes it next finds the entry.
      options_.shared->store(*entry);
      if (locked) options_.shared->unlock(key);
      locked = false;
    }
    std::shared_ptr<const CachedKernel> shared = std::move(entry);
    memory_.put(shared);
    finish_compile(key, CacheLookup{std::move(shared), CacheTier::compiled});
  } catch (const std::exception& e) {
    if (locked) options_.shared->unlock(key);
    finish_compile(key, make_error(ErrorCode::internal, "compile of " + key + " threw", e.what()));
  }
}

std::shared_ptr<const CachedKernel> KernelCache::load_shared(const std::string& key) {
  auto loaded = options_.shared->load(key);
  if (!loaded) return nullptr;
  if (disk_) {
    if (Status stored = disk_->store(*loaded); !stored.ok())
      spdlog::debug("cache entry {} not stored: {}", key, stored.error().message);
  }
  auto entry = sealed(std::move(*loaded));
  memory_.put(entry);
  ++shared_hits_;
  return entry;
}

std::shared_ptr<const CachedKernel> KernelCache::wait_for_fleet(const std::string& key,
                                                                bool& locked) {
  RedisStore& shared = *options_.shared;
  bool waited = false;
  for (;;) {
    switch (shared.lock(key)) {
      case RedisStore::Lock::acquired:
        // The previous holder may have stored and released between the
        // lookup and this lock: look once more before compiling again.
        if (auto hit = load_shared(key)) {
          shared.unlock(key);
          return hit;
        }
        locked = true;
        return nullptr;
      case RedisStore::Lock::unavailable:
        return nullptr;  // out of reach: compile here
      case RedisStore::Lock::held_elsewhere:
        break;
    }
    if (!waited) {
      waited = true;
      ++fleet_waits_;
      spdlog::debug("cache entry {}: another daemon compiles it; waiting", key);
    }
    // The holder refreshes its lock while it compiles; one that died frees
    // it within the lock's TTL, and the next SET NX here takes it over.
    std::this_thread::sleep_for(shared.options().poll_interval);
    if (auto hit = load_shared(key)) return hit;
    if (!shared.available()) return nullptr;
  }
}

void KernelCache::finish_compile(const std::string& key, Result<CacheLookup> result) {
  std::vector<std::pair<uint64_t, Callback>> waiters;
  {
    std::lock_guard lock(inflight_mutex_);
    auto it = inflight_.find(key);
    if (it == inflight_.end()) return;
    waiters = std::move(it->second.waiters);
    inflight_.erase(it);
  }
  for (auto& waiter : waiters) waiter.second(result);
}

void KernelCache::task_done() {
  // Notified under the lock: the destructor may run as soon as it sees zero.
  std::lock_guard lock(inflight_mutex_);
  if (--tasks_running_ == 0) tasks_idle_.notify_all();
}

Result<CacheLookup> KernelCache::get_or_compile_sync(const KernelSpec& spec,
                                                     const RuntimeShape& first_shape) {
  std::promise<Result<CacheLookup>> promise;
  auto future = promise.get_future();
  get_or_compile(spec, first_shape,
                 [&promise](Result<CacheLookup> result) { promise.set_value(std::move(result)); });
  return future.get();
}

Result<CacheLookup> KernelCache::get(const std::string& key) {
  if (!is_well_formed_key(key))
    return make_error(ErrorCode::invalid_argument,
                      "cache key '" + key + "' is not 64 lowercase hex characters");
  if (auto hit = memory_.get(key)) {
    ++memory_hits_;
    return CacheLookup{std::move(hit), CacheTier::memory};
  }
  ++memory_misses_;
  if (disk_) {
    if (auto loaded = disk_->load(key)) {
      auto entry = sealed(std::move(*loaded));
      memory_.put(entry);
      ++disk_hits_;
      return CacheLookup{std::move(entry), CacheTier::disk};
    }
    ++disk_misses_;
  }
  if (options_.shared) {
    if (auto entry = load_shared(key)) return CacheLookup{std::move(entry), CacheTier::shared};
    ++shared_misses_;
  }
  return make_error(ErrorCode::not_found, "no cached kernel with key " + key);
}

std::vector<CachedKernel> KernelCache::list(const std::string& after_key, size_t limit) {
  std::map<std::string, CachedKernel> merged;
  // The first `limit` disk keys after after_key contain every disk key of the
  // merged page, so asking disk for `limit` is enough.
  if (disk_)
    for (auto& entry : disk_->list(after_key, limit)) merged.emplace(entry.key, std::move(entry));
  for (const auto& entry : memory_.snapshot())
    if (entry->key > after_key && !merged.contains(entry->key))
      merged.emplace(entry->key, without_cubin(*entry));

  std::vector<CachedKernel> page;
  for (auto& [key, entry] : merged) {
    if (page.size() >= limit) break;
    page.push_back(std::move(entry));
  }
  return page;
}

Result<CacheRemoval> KernelCache::clear(bool include_shared) {
  CacheRemoval removal;
  if (include_shared) {
    if (!options_.shared)
      return make_error(ErrorCode::failed_precondition,
                        "include_shared: this daemon has no shared tier (start it with --redis)");
    auto deleted = options_.shared->clear();
    if (!deleted) return deleted.error();
    removal.shared = TierRemoval{*deleted, 0, 0, 0};
  }
  if (disk_) removal.disk = disk_->clear();
  removal.memory = memory_.clear();
  return removal;
}

Result<CacheRemoval> KernelCache::evict(const std::vector<std::string>& keys, bool include_shared) {
  if (include_shared && !options_.shared)
    return make_error(ErrorCode::failed_precondition,
                      "include_shared: this daemon has no shared tier (start it with --redis)");
  CacheRemoval removal;
  if (include_shared) removal.shared = TierRemoval{};
  if (disk_) removal.disk = TierRemoval{};
  auto add = [](TierRemoval& total, const TierRemoval& one) {
    total.entries_removed += one.entries_removed;
    total.bytes_removed += one.bytes_removed;
    total.entries_left = one.entries_left;
    total.bytes_left = one.bytes_left;
  };
  // The shared tier first, every key, so Redis out of reach leaves the
  // local tiers as they were.
  std::vector<bool> found(keys.size(), false);
  if (include_shared)
    for (size_t i = 0; i < keys.size(); ++i) {
      auto deleted = options_.shared->erase(keys[i]);
      if (!deleted) return deleted.error();
      if (*deleted) {
        found[i] = true;
        ++removal.shared->entries_removed;
      }
    }
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string& key = keys[i];
    bool held = found[i];
    if (disk_) {
      const TierRemoval one = disk_->erase(key);
      held = held || one.entries_removed > 0;
      add(*removal.disk, one);
    }
    const TierRemoval one = memory_.erase(key);
    held = held || one.entries_removed > 0;
    add(removal.memory, one);
    if (!held) removal.keys_not_found.push_back(key);
  }
  if (keys.empty()) {  // nothing to remove: report what the tiers hold
    removal.memory = memory_.trim_to(memory_.max_bytes());
    if (disk_) removal.disk = disk_->trim_to(UINT64_MAX);
  }
  return removal;
}

CacheRemoval KernelCache::trim_to(uint64_t max_bytes) {
  CacheRemoval removal;
  if (disk_) removal.disk = disk_->trim_to(max_bytes);
  removal.memory = memory_.trim_to(static_cast<size_t>(std::min<uint64_t>(max_bytes, SIZE_MAX)));
  return removal;
}

CacheStats KernelCache::stats() const {
  CacheStats stats;
  stats.memory_hits = memory_hits_.load();
  stats.disk_hits = disk_hits_.load();
  stats.compiles = compiles_.load();
  stats.single_flight_joins = joins_.load();
  stats.abandoned_compiles = abandoned_.load();
  stats.corrupt_entries = disk_ ? disk_->corrupt_entries() : 0;
  stats.memory_bytes = memory_.bytes();
  stats.memory_entries = memory_.size();
  stats.evictions = memory_.evictions();
  stats.memory_misses = memory_misses_.load();
  stats.disk_misses = disk_misses_.load();
  stats.shared_hits = shared_hits_.load();
  stats.shared_misses = shared_misses_.load();
  if (options_.shared) {
    const RedisStoreStats shared = options_.shared->stats();
    stats.shared_configured = true;
    stats.shared_available = options_.shared->available();
    stats.shared_corrupt_entries = shared.corrupt_entries;
    stats.shared_errors = shared.errors;
  }
  stats.fleet_waits = fleet_waits_.load();
  stats.compiles_run = compiles_run_.load();
  stats.compile_failures = compile_failures_.load();
  stats.compile_seconds = static_cast<double>(compile_micros_.load()) / 1e6;
  stats.compiles_running = compiles_running_.load();
  stats.compiles_queued = pool_->queued();
  stats.disk_bytes = disk_ ? disk_->bytes() : 0;
  return stats;
}

}  // namespace flashcore
