#include "cache/kernel_cache.hpp"

#include <spdlog/spdlog.h>

#include <chrono>
#include <exception>
#include <future>
#include <map>

#include "cache/cache_key.hpp"

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
  if (disk_) {
    if (auto loaded = disk_->load(key)) {
      auto entry = std::make_shared<const CachedKernel>(std::move(*loaded));
      memory_.put(entry);
      ++disk_hits_;
      done(CacheLookup{std::move(entry), CacheTier::disk});
      return Ticket{key, 0};
    }
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
  try {
    Result<CompiledKernel> compiled = compiler_->compile(spec);
    if (!compiled.ok()) {
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
    if (disk_) {
      // DiskStore logs an unwritable folder once; the kernel is still served
      // from memory.
      if (Status stored = disk_->store(*entry); !stored.ok())
        spdlog::debug("cache entry {} not stored: {}", key, stored.error().message);
    }
    std::shared_ptr<const CachedKernel> shared = std::move(entry);
    memory_.put(shared);
    finish_compile(key, CacheLookup{std::move(shared), CacheTier::compiled});
  } catch (const std::exception& e) {
    finish_compile(key, make_error(ErrorCode::internal, "compile of " + key + " threw", e.what()));
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
  if (disk_) {
    if (auto loaded = disk_->load(key)) {
      auto entry = std::make_shared<const CachedKernel>(std::move(*loaded));
      memory_.put(entry);
      ++disk_hits_;
      return CacheLookup{std::move(entry), CacheTier::disk};
    }
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
  return stats;
}

}  // namespace flashcore
