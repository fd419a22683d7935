#include "service/validation_store.hpp"

namespace flashcore::service {

void ValidationStore::put(const std::string& key, const v1::ValidationRecord& record) {
  std::lock_guard lock(mutex_);
  auto [it, inserted] = by_key_.try_emplace(key);
  if (inserted) {
    order_.push_back(key);
    while (by_key_.size() > max_kernels_) {
      by_key_.erase(order_.front());
      order_.pop_front();
    }
  }
  Entry& entry = by_key_[key][record.device()];
  entry.record = record;
  entry.sequence = next_sequence_++;
}

std::optional<v1::ValidationRecord> ValidationStore::latest(const std::string& key) const {
  std::lock_guard lock(mutex_);
  const auto it = by_key_.find(key);
  if (it == by_key_.end()) return std::nullopt;
  const Entry* newest = nullptr;
  for (const auto& [device, entry] : it->second)
    if (newest == nullptr || entry.sequence > newest->sequence) newest = &entry;
  if (newest == nullptr) return std::nullopt;
  return newest->record;
}

std::optional<v1::ValidationRecord> ValidationStore::find(const std::string& key,
                                                          const std::string& device) const {
  std::lock_guard lock(mutex_);
  const auto it = by_key_.find(key);
  if (it == by_key_.end()) return std::nullopt;
  const auto record = it->second.find(device);
  if (record == it->second.end()) return std::nullopt;
  return record->second.record;
}

size_t ValidationStore::kernels() const {
  std::lock_guard lock(mutex_);
  return by_key_.size();
}

}  // namespace flashcore::service
