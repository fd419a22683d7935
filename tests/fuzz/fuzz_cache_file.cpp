// libFuzzer: cache-file parsing (cache/disk_store). Any bytes as the
// contents of a .fck file: DiskStore::decode either refuses them with a
// reason or returns an entry; an entry re-encodes and decodes to the same
// key, spec and cubin (what a later read of the rewritten file would serve).
//
// With FLASHCORE_FUZZ_WRITE_SEED=<file> it writes one valid entry made by the
// real encoder instead (how tests/fuzz/corpus/cache_file was made).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>

#include "cache/disk_store.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seed = std::getenv("FLASHCORE_FUZZ_WRITE_SEED")) {
    flashcore::CachedKernel entry;
    entry.key = std::string(64, 'a');
    entry.spec.template_id = "attention_fwd";
    entry.spec.arch = "sm_80";
    entry.compiled.cubin = std::string("\x7f" "ELF", 4) + std::string(60, '\0');
    entry.compiled.lowered_name = "_Z6kernelv";
    entry.compiled.name_expression = "kernel";
    entry.cubin_size = entry.compiled.cubin.size();
    std::ofstream(seed, std::ios::binary) << flashcore::DiskStore::encode(entry);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string why;
  auto entry = flashcore::DiskStore::decode(
      std::string_view(reinterpret_cast<const char*>(data), size), &why);
  if (!entry) {
    if (why.empty()) std::abort();  // a refusal names its reason
    return 0;
  }
  const std::string encoded = flashcore::DiskStore::encode(*entry);
  std::string why_again;
  auto again = flashcore::DiskStore::decode(encoded, &why_again);
  if (!again) std::abort();
  if (again->key != entry->key || again->spec.template_id != entry->spec.template_id ||
      again->spec.arch != entry->spec.arch || again->compiled.cubin != entry->compiled.cubin)
    std::abort();
  return 0;
}
