// One cache entry: the compiled kernel plus what it was compiled for.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "jit/kernel_spec.hpp"

namespace flashcore {

// shared: the fleet's Redis tier (cache/redis_store).
enum class CacheTier { memory, disk, compiled, shared };
std::string_view cache_tier_name(CacheTier tier);

struct CachedKernel {
  std::string key;
  KernelSpec spec;
  RuntimeShape first_shape;  // the run-time shape of the request that compiled it
  CompiledKernel compiled;
  int64_t created_unix_ms = 0;
  // Size of the cubin even where `compiled.cubin` is left empty (listings
  // read only the metadata).
  size_t cubin_size = 0;
  // SHA-256 of the cubin, computed once when the entry enters the cache (a
  // hit would otherwise hash it again: ~0.3 ms for 50 KB on this box).
  std::string cubin_sha256;

  // Bytes this entry holds in memory (cubin + strings); the LRU's unit.
  size_t footprint_bytes() const;
};

// What an administrative removal (clear, evict by key, trim to a size) did
// to one tier: entries and bytes gone, and what the tier holds after it.
struct TierRemoval {
  uint64_t entries_removed = 0;
  uint64_t bytes_removed = 0;
  uint64_t entries_left = 0;
  uint64_t bytes_left = 0;
};

}  // namespace flashcore
