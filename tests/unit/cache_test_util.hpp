// Shared by the cache tests: synthetic keys, entries and cubins. Scratch
// folders, file helpers and the small template are in tests/common.
#pragma once

#include <string>
#include <utility>

#include "cache/cached_kernel.hpp"
#include "common/digest.hpp"

namespace flashcore::cache_testing {

// A well-formed key that no real spec produces.
inline std::string test_key(const std::string& seed) { return sha256_hex("test-key:" + seed); }

// An entry with every field set to something other than its default, so a
// round trip that drops a field shows.
inline CachedKernel sample_entry(const std::string& key, std::string cubin) {
  CachedKernel entry;
  entry.key = key;
  entry.spec.problem.dtype = DType::bf16;
  entry.spec.problem.head_dim = 128;
  entry.spec.problem.causal = true;
  // Not what the rule picks for D 128 with 32 rows a warp (shared, swizzled).
  entry.spec.config = TileConfig{64, 32, 2, 3, QPlacement::registers, SmemLayout::padded};
  entry.spec.arch = "sm_80";
  entry.first_shape = RuntimeShape{2, 8, 4, 1000, 777};
  entry.compiled.name_expression =
      "flashcore::attention_fwd<flashcore::bf16_t, 128, true, 64, 32, 2, 3, true, false>";
  entry.compiled.lowered_name = "_Z13attention_fwd_" + key.substr(0, 8);
  entry.compiled.cubin = std::move(cubin);
  entry.compiled.resources = ResourceReport{96, 1024, 8, 12, 16, 380, "ptxas info : Used 96 registers"};
  entry.compiled.compile_ms = 1234.5;
  entry.compiled.toolchain = ToolchainFingerprint{"13.0", sha256_hex("sources"),
                                                  {"--gpu-architecture=sm_80", "--std=c++17"}};
  entry.created_unix_ms = 1'700'000'000'123;
  entry.cubin_size = entry.compiled.cubin.size();
  return entry;
}

// Binary-looking cubin bytes, NULs included, so nothing treats them as text.
inline std::string sample_cubin(size_t size, unsigned seed) {
  std::string bytes(size, '\0');
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>((i * 131 + seed * 17) % 256);
  return bytes;
}

}  // namespace flashcore::cache_testing
