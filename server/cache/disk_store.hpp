// The disk tier: content-addressed entry files under <root>/<key[0:2]>/<key>.fck.
// File = fixed header (magic, format version, lengths, SHA-256 of the body)
// + JSON metadata + cubin. Every read verifies the checksum; a corrupt or
// truncated file is removed, logged and reported as a miss so the caller
// recompiles. An unwritable folder is logged once and caching goes on in
// memory.
//
// Bounded: with max_bytes > 0, each store evicts the least recently used
// entries (by file time, which a hit refreshes, so the order survives a
// restart) until the folder's entries fit. Eviction is an unlink, atomic,
// and a reader that already opened the file keeps reading it. Temp files a
// crashed writer left (older than this store's start) are removed at start.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cache/cached_kernel.hpp"
#include "common/result.hpp"

namespace flashcore {

class DiskStore {
 public:
  explicit DiskStore(std::filesystem::path root, uint64_t max_bytes = 0);

  // nullopt on a miss (absent, or corrupt and now removed).
  std::optional<CachedKernel> load(const std::string& key);
  Status store(const CachedKernel& entry);

  // Every valid entry's metadata (cubin omitted), sorted by key; keys after
  // `after_key`, at most `limit`. Corrupt files found here are removed too.
  std::vector<CachedKernel> list(const std::string& after_key, size_t limit);

  // Administrative removals (cache clear|evict): each entry file is
  // unlinked whole (a reader that opened it keeps reading; no file is ever
  // left half-written). clear() removes every entry file in the folder, also
  // those another daemon sharing it wrote; temp files of writers in flight
  // are left to them. A removal that fails (permissions) is logged and the
  // file stays indexed.
  TierRemoval clear();
  TierRemoval erase(const std::string& key);  // entries_removed 0: no such file
  // Least recently used first, until the entries are <= max_bytes.
  TierRemoval trim_to(uint64_t max_bytes);

  std::filesystem::path path_for(const std::string& key) const;
  const std::filesystem::path& root() const { return root_; }
  size_t corrupt_entries() const { return corrupt_.load(); }
  uint64_t bytes() const;                 // of the entries this store knows of
  size_t evicted_entries() const { return evicted_.load(); }
  size_t stale_temp_files_removed() const { return stale_temps_removed_; }

  // The entry file format, exposed for tests that corrupt files on purpose.
  static std::string encode(const CachedKernel& entry);
  static std::optional<CachedKernel> decode(std::string_view bytes, std::string* why);

 private:
  void scan();                                    // index existing entries, drop stale temps
  void forget(const std::string& key);            // after a removal
  // Evicts least recently used entries but keep_key until the entries fit
  // `limit`; caller holds index_mutex_. Returns what went.
  TierRemoval evict_to_fit(const std::string& keep_key, uint64_t limit);
  // Unlinks an entry file and drops it from the index; false (logged) when
  // the file stays. Caller holds index_mutex_.
  bool remove_indexed(const std::string& key, TierRemoval& removal);
  // Indexes an entry file just written or read, unless a removal took it
  // meanwhile (the index never names a file that is gone). Caller holds index_mutex_.
  void index_if_present(const std::string& key, uint64_t size,
                        std::filesystem::file_time_type used);
  TierRemoval left(TierRemoval removal) const;  // caller holds index_mutex_

  std::filesystem::path root_;
  uint64_t max_bytes_ = 0;
  struct Indexed {
    uint64_t size = 0;
    std::filesystem::file_time_type used;
  };
  mutable std::mutex index_mutex_;
  std::map<std::string, Indexed> index_;
  uint64_t total_bytes_ = 0;
  std::atomic<size_t> evicted_{0};
  size_t stale_temps_removed_ = 0;
  std::atomic<size_t> corrupt_{0};
  std::once_flag unwritable_logged_;
};

}  // namespace flashcore
