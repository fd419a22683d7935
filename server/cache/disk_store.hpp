// The disk tier: content-addressed entry files under <root>/<key[0:2]>/<key>.fck.
// File = fixed header (magic, format version, lengths, SHA-256 of the body)
// + JSON metadata + cubin. Every read verifies the checksum; a corrupt or
// truncated file is removed, logged and reported as a miss so the caller
// recompiles. An unwritable folder is logged once and caching goes on in
// memory.
#pragma once

#include <atomic>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cache/cached_kernel.hpp"
#include "common/result.hpp"

namespace flashcore {

class DiskStore {
 public:
  explicit DiskStore(std::filesystem::path root);

  // nullopt on a miss (absent, or corrupt and now removed).
  std::optional<CachedKernel> load(const std::string& key);
  Status store(const CachedKernel& entry);

  // Every valid entry's metadata (cubin omitted), sorted by key; keys after
  // `after_key`, at most `limit`. Corrupt files found here are removed too.
  std::vector<CachedKernel> list(const std::string& after_key, size_t limit);

  std::filesystem::path path_for(const std::string& key) const;
  const std::filesystem::path& root() const { return root_; }
  size_t corrupt_entries() const { return corrupt_.load(); }

  // The entry file format, exposed for tests that corrupt files on purpose.
  static std::string encode(const CachedKernel& entry);
  static std::optional<CachedKernel> decode(std::string_view bytes, std::string* why);

 private:
  std::filesystem::path root_;
  std::atomic<size_t> corrupt_{0};
  std::once_flag unwritable_logged_;
};

}  // namespace flashcore
