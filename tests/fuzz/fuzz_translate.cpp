// libFuzzer: request parsing and translation (rpc/translate). Any bytes that
// parse as a ValidateRequest (which holds a KernelRequest) go through the
// three parsers every kernel-taking RPC uses; an accepted request gets its
// cache key, a refused one its status, which must stay within the bounds
// the service promises (1 KB message plus the cut notice, 2 KB details).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "cache/cache_key.hpp"
#include "flashcore/v1/flashcore.pb.h"
#include "rpc/translate.hpp"

namespace {

void check_refusal(const flashcore::Error& error) {
  const grpc::Status status = flashcore::rpc::bounded_status(flashcore::rpc::to_grpc_status(error));
  if (status.ok()) std::abort();                             // a refusal must not read as OK
  if (status.error_message().size() > 1024 + 64) std::abort();  // bounded_status's promise
  if (status.error_details().size() > 2048) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  flashcore::v1::ValidateRequest validate;
  if (!validate.ParseFromArray(data, static_cast<int>(size))) return 0;
  const flashcore::v1::KernelRequest& request = validate.kernel();
  for (const char* arch : {"sm_90a", "sm_80"}) {
    auto parsed = flashcore::rpc::parse_kernel_request(request, arch);
    if (parsed) {
      flashcore::ToolchainFingerprint toolchain;
      toolchain.nvrtc_version = "fuzz";
      const std::string key = flashcore::cache_key(parsed->spec, toolchain);
      if (!flashcore::is_well_formed_key(key)) std::abort();
      // The shape of an accepted request belongs to its class.
      auto again = flashcore::rpc::parse_shape_for(request.problem(), parsed->spec);
      (void)again;
    } else {
      check_refusal(parsed.error());
    }
    if (auto target = flashcore::rpc::parse_tuning_target(request, arch); !target)
      check_refusal(target.error());
    if (auto v = flashcore::rpc::parse_validate_request(validate, arch); !v)
      check_refusal(v.error());
  }
  return 0;
}
