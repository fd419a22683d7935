// The shared tier: cubins in Redis, behind each daemon's disk, in the disk
// tier's verified format (DiskStore::encode: header with the SHA-256 of the
// body, metadata, cubin). Every read checks it; a bad entry is deleted and
// reported as a miss, so the caller compiles and stores a good one.
//
// Fleet single flight: before compiling a key, a daemon takes
// `<prefix>lock:<key>` with SET NX PX (a random token per daemon and lock).
// The holder refreshes the expiry while it compiles (a thread, every third of
// the TTL), so a long compile keeps it and a daemon that dies mid-compile
// frees it within one TTL. Waiters poll the entry. Releasing compares the
// token, so a lock that expired and was taken by another is never deleted.
//
// Eviction is Redis's own (maxmemory with allkeys-lru); entries carry no TTL.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "cache/cached_kernel.hpp"
#include "redis/redis_client.hpp"

namespace flashcore {

struct RedisStoreOptions {
  std::string prefix = "flashcore:v1:";
  std::chrono::milliseconds lock_ttl{15000};
  // How often a waiter looks for the holder's entry.
  std::chrono::milliseconds poll_interval{20};
};

struct RedisStoreStats {
  size_t hits = 0;
  size_t misses = 0;
  size_t corrupt_entries = 0;  // found bad, deleted
  size_t stores = 0;
  size_t errors = 0;           // commands that failed (Redis down)
  size_t locks_acquired = 0;
  size_t locks_contended = 0;  // SET NX found another daemon's lock
};

class RedisStore {
 public:
  RedisStore(std::shared_ptr<redis::Client> client, RedisStoreOptions options = {});
  ~RedisStore();  // stops the refresher; locks still held expire by themselves
  RedisStore(const RedisStore&) = delete;
  RedisStore& operator=(const RedisStore&) = delete;

  // nullopt on a miss, a bad entry (deleted) or Redis down.
  std::optional<CachedKernel> load(const std::string& key);
  // Best effort: a failure is counted (and logged once by the client).
  void store(const CachedKernel& entry);

  enum class Lock { acquired, held_elsewhere, unavailable };
  Lock lock(const std::string& key);
  void unlock(const std::string& key);

  // Administrative removals (cache clear|evict --include-shared): DEL of the
  // entries, every daemon's; locks are left alone (they expire). unavailable
  // when Redis is out of reach (entries deleted before that stay deleted).
  Result<uint64_t> clear();
  // Whether the entry existed.
  Result<bool> erase(const std::string& key);

  bool available() const { return client_->available(); }
  RedisStoreStats stats() const;
  // Redis's used_memory (INFO memory); nullopt when unreachable.
  std::optional<uint64_t> server_bytes();
  const RedisStoreOptions& options() const { return options_; }
  redis::Client& client() { return *client_; }

  std::string entry_key(const std::string& key) const { return options_.prefix + "kernel:" + key; }
  std::string lock_key(const std::string& key) const { return options_.prefix + "lock:" + key; }

 private:
  void refresh_loop();

  std::shared_ptr<redis::Client> client_;
  RedisStoreOptions options_;
  std::string token_prefix_;  // random per store: whose lock it is

  std::mutex mutex_;
  std::condition_variable wake_;
  std::unordered_map<std::string, std::string> held_;  // lock key -> token
  uint64_t next_token_ = 0;
  bool stopping_ = false;
  std::thread refresher_;

  std::atomic<size_t> hits_{0}, misses_{0}, corrupt_{0}, stores_{0}, errors_{0}, acquired_{0},
      contended_{0};
};

}  // namespace flashcore
