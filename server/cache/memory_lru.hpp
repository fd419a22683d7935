// The memory tier: least-recently-used entries evicted once the entries'
// footprint passes a byte budget. Thread-safe.
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cache/cached_kernel.hpp"

namespace flashcore {

class MemoryLru {
 public:
  explicit MemoryLru(size_t max_bytes);

  std::shared_ptr<const CachedKernel> get(const std::string& key);  // refreshes recency
  // An entry larger than the whole budget is not kept.
  void put(std::shared_ptr<const CachedKernel> entry);

  // Administrative removals (cache clear|evict). An entry a caller already
  // holds stays alive with that caller; the tier just forgets it.
  TierRemoval clear();
  TierRemoval erase(const std::string& key);  // entries_removed 0: not held
  // Least recently used first, until the entries' footprint is <= max_bytes.
  TierRemoval trim_to(size_t max_bytes);

  // Every entry held now, most recent first (for listings).
  std::vector<std::shared_ptr<const CachedKernel>> snapshot() const;

  size_t bytes() const;
  size_t size() const;
  size_t evictions() const;
  size_t max_bytes() const { return max_bytes_; }

 private:
  using Order = std::list<std::shared_ptr<const CachedKernel>>;
  mutable std::mutex mutex_;
  size_t max_bytes_;
  size_t bytes_ = 0;
  size_t evictions_ = 0;
  TierRemoval left(TierRemoval removal) const;  // caller holds mutex_

  Order order_;  // front = most recent
  std::unordered_map<std::string, Order::iterator> index_;
};

}  // namespace flashcore
