#include "cache/cache_key.hpp"

#include <algorithm>
#include <vector>

#include "common/digest.hpp"
#include "family/template_catalog.hpp"

namespace flashcore {
namespace {
// A key is computed for anything read back too (a disk entry may name a
// template this build lacks): an unknown family keys the config as stored.
TileConfig resolved_config(const KernelSpec& spec) {
  const TemplateInfo* family = find_template(spec.template_id);
  return family != nullptr ? family->resolve(spec.config, spec.problem) : spec.config;
}
}  // namespace


std::string cache_key(const KernelSpec& spec, const ToolchainFingerprint& toolchain) {
  // The compiler hands options over sorted already; sorting again here keeps
  // the key canonical even if a caller builds a fingerprint by hand.
  std::vector<std::string> options = toolchain.options;
  std::sort(options.begin(), options.end());

  FieldHasher hasher;
  hasher.field("domain", "flashcore-kernel-cache")
      .field("format_version", std::to_string(kCacheFormatVersion))
      .field("template_id", spec.template_id)
      .field("template_source_hash", toolchain.template_source_hash)
      .field("problem", canonical_problem_class(spec.problem))
      .field("config", canonical_config(resolved_config(spec)))
      .field("arch", spec.arch)
      .field("nvrtc_version", toolchain.nvrtc_version)
      // The count first, so options can never be confused with a field a
      // later format version appends after them.
      .field("option_count", std::to_string(options.size()));
  for (const auto& option : options) hasher.field("option", option);
  return hasher.hex_digest();
}

bool is_well_formed_key(const std::string& key) {
  if (key.size() != 64) return false;
  return std::all_of(key.begin(), key.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

}  // namespace flashcore
