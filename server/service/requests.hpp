// The service's request types: what a front end (rpc/ today) parses a
// message into before it calls the service.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "flashcore/v1/flashcore.pb.h"
#include "jit/kernel_spec.hpp"

namespace flashcore::service {

// A validated Compile request: what selects the cubin plus the run-time
// shape the launch geometry is computed for.
struct CompileRequest {
  KernelSpec spec;
  RuntimeShape shape;
  v1::Layout layout = v1::LAYOUT_UNSPECIFIED;
  std::string cached_key;  // the client holds this kernel: its cubin is left out
  // False where the request left template_id empty and the daemon picked the
  // family (GetTuningResult then answers the best served, not one family's).
  bool family_named = true;
};

// cache evict: exactly one of `keys` and `down_to_bytes` (the service checks).
struct EvictRequest {
  std::vector<std::string> keys;
  std::optional<uint64_t> down_to_bytes;
  bool include_shared = false;
};

}  // namespace flashcore::service
