// The latest validation record of each kernel per device, in memory, so a
// Compile or GetKernel after a Validate returns it with the handle. Bounded:
// past the limit the kernel validated longest ago is forgotten.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "flashcore/v1/flashcore.pb.h"

namespace flashcore::service {

class ValidationStore {
 public:
  explicit ValidationStore(size_t max_kernels = 65536) : max_kernels_(max_kernels) {}

  // Replaces the record for (key, record.device()).
  void put(const std::string& key, const v1::ValidationRecord& record);
  // The most recently stored record of `key` on any device.
  std::optional<v1::ValidationRecord> latest(const std::string& key) const;
  // The record of `key` on `device`.
  std::optional<v1::ValidationRecord> find(const std::string& key, const std::string& device) const;
  size_t kernels() const;

 private:
  struct Entry {
    v1::ValidationRecord record;
    uint64_t sequence = 0;  // store order, to find the latest
  };

  const size_t max_kernels_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, std::map<std::string, Entry>> by_key_;
  std::deque<std::string> order_;  // keys, first stored first
  uint64_t next_sequence_ = 0;
};

}  // namespace flashcore::service
