#include "cache/cached_kernel.hpp"

namespace flashcore {
namespace {

// Bookkeeping the byte count of the strings does not see: the struct itself,
// the shared_ptr control block, the LRU's list node and index slot. A rough
// constant is enough; it only keeps many tiny entries from looking free.
constexpr size_t kEntryOverheadBytes = 512;

}  // namespace

size_t CachedKernel::footprint_bytes() const {
  size_t bytes = kEntryOverheadBytes;
  bytes += key.size() + spec.template_id.size() + spec.arch.size();
  bytes += compiled.name_expression.size() + compiled.lowered_name.size() + compiled.cubin.size();
  for (const auto& [name, lowered] : compiled.extra_kernels) bytes += name.size() + lowered.size();
  bytes += compiled.resources.ptxas_log.size();
  bytes += compiled.toolchain.nvrtc_version.size() + compiled.toolchain.template_source_hash.size();
  for (const auto& option : compiled.toolchain.options) bytes += option.size();
  return bytes;
}

std::string_view cache_tier_name(CacheTier tier) {
  switch (tier) {
    case CacheTier::memory:
      return "memory";
    case CacheTier::disk:
      return "disk";
    case CacheTier::compiled:
      return "compiled";
    case CacheTier::shared:
      return "shared";
  }
  return "unknown";
}

}  // namespace flashcore
