// The cache key: a hex SHA-256 over delimited, canonical compile inputs.
// Same spec in any field order gives the same key; any input changed gives
// another one. Bump kCacheFormatVersion when the entry format changes.
#pragma once

#include <string>

#include "jit/kernel_spec.hpp"

namespace flashcore {

// 2: tile configs carry q_placement and smem_layout (metadata and key).
inline constexpr unsigned kCacheFormatVersion = 2;

std::string cache_key(const KernelSpec& spec, const ToolchainFingerprint& toolchain);

// True for a 64-character lowercase hex string (what cache_key returns).
bool is_well_formed_key(const std::string& key);

}  // namespace flashcore
