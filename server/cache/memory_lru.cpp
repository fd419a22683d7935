#include "cache/memory_lru.hpp"

namespace flashcore {

MemoryLru::MemoryLru(size_t max_bytes) : max_bytes_(max_bytes) {}

std::shared_ptr<const CachedKernel> MemoryLru::get(const std::string& key) {
  std::lock_guard lock(mutex_);
  auto it = index_.find(key);
  if (it == index_.end()) return nullptr;
  order_.splice(order_.begin(), order_, it->second);  // iterators stay valid
  return *it->second;
}

void MemoryLru::put(std::shared_ptr<const CachedKernel> entry) {
  if (!entry) return;
  const size_t size = entry->footprint_bytes();
  std::lock_guard lock(mutex_);

  // Replace an entry of the same key: its bytes leave with it.
  if (auto it = index_.find(entry->key); it != index_.end()) {
    bytes_ -= (*it->second)->footprint_bytes();
    order_.erase(it->second);
    index_.erase(it);
  }
  // Keeping it would evict everything else and still not fit.
  if (size > max_bytes_) return;

  while (bytes_ + size > max_bytes_ && !order_.empty()) {
    const auto& victim = order_.back();
    bytes_ -= victim->footprint_bytes();
    index_.erase(victim->key);
    order_.pop_back();
    ++evictions_;
  }
  order_.push_front(std::move(entry));
  index_.emplace(order_.front()->key, order_.begin());
  bytes_ += size;
}

TierRemoval MemoryLru::left(TierRemoval removal) const {
  removal.entries_left = index_.size();
  removal.bytes_left = bytes_;
  return removal;
}

TierRemoval MemoryLru::clear() {
  std::lock_guard lock(mutex_);
  TierRemoval removal{index_.size(), bytes_};
  index_.clear();
  order_.clear();  // callers that hold an entry keep it through their shared_ptr
  bytes_ = 0;
  return left(removal);
}

TierRemoval MemoryLru::erase(const std::string& key) {
  std::lock_guard lock(mutex_);
  TierRemoval removal;
  if (auto it = index_.find(key); it != index_.end()) {
    removal.entries_removed = 1;
    removal.bytes_removed = (*it->second)->footprint_bytes();
    bytes_ -= removal.bytes_removed;
    order_.erase(it->second);
    index_.erase(it);
  }
  return left(removal);
}

TierRemoval MemoryLru::trim_to(size_t max_bytes) {
  std::lock_guard lock(mutex_);
  TierRemoval removal;
  while (bytes_ > max_bytes && !order_.empty()) {
    const auto& victim = order_.back();
    const size_t size = victim->footprint_bytes();
    bytes_ -= size;
    removal.bytes_removed += size;
    ++removal.entries_removed;
    index_.erase(victim->key);
    order_.pop_back();
  }
  return left(removal);
}

std::vector<std::shared_ptr<const CachedKernel>> MemoryLru::snapshot() const {
  std::lock_guard lock(mutex_);
  return {order_.begin(), order_.end()};
}

size_t MemoryLru::bytes() const {
  std::lock_guard lock(mutex_);
  return bytes_;
}

size_t MemoryLru::size() const {
  std::lock_guard lock(mutex_);
  return index_.size();
}

size_t MemoryLru::evictions() const {
  std::lock_guard lock(mutex_);
  return evictions_;
}

}  // namespace flashcore
