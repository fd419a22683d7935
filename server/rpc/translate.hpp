// Translation between flashcore.v1 messages and the core's types: request
// validation (each failure names the field as the proto spells it), the
// handle a client launches from, and ErrorCode -> grpc::Status.
#pragma once

#include <grpcpp/support/status.h>

#include <string>
#include <string_view>

#include "cache/kernel_cache.hpp"
#include "common/grpc_code.hpp"
#include "common/result.hpp"
#include "flashcore/v1/flashcore.pb.h"
#include "flashcore/v1/worker.pb.h"
#include "jit/kernel_spec.hpp"

namespace flashcore::rpc {

// A validated Compile request: what selects the cubin plus the run-time
// shape the launch geometry is computed for.
struct CompileRequest {
  KernelSpec spec;
  RuntimeShape shape;
  v1::Layout layout = v1::LAYOUT_UNSPECIFIED;
  std::string cached_key;  // the client holds this kernel: its cubin is left out
};

// INVALID_ARGUMENT naming the field for anything the template cannot take.
// An empty arch means `default_arch`; an absent config means TileConfig{}.
Result<CompileRequest> parse_kernel_request(const v1::KernelRequest& request,
                                            std::string_view default_arch);

// As parse_kernel_request, config ignored (Tune, GetTuningResult, and Compile
// with use_tuned_config, where the config comes from tuning).
Result<CompileRequest> parse_tuning_target(const v1::KernelRequest& request,
                                           std::string_view default_arch);

// A Validate request: the kernel as parse_kernel_request takes it (each
// rejection names the field under "kernel.") and the options in range.
Result<CompileRequest> parse_validate_request(const v1::ValidateRequest& request,
                                              std::string_view default_arch);
inline constexpr int kMaxValidationRepeats = 100000;

// What an evaluation worker needs to launch the handle's kernel (the handle
// must carry its cubin).
void fill_eval_kernel(const v1::KernelHandle& handle, v1::EvalKernel* kernel);

// The run-time shape of a GetKernel problem, which must belong to the
// kernel's compile-time class (dtype, head_dim, causal).
Result<RuntimeShape> parse_shape_for(const v1::Problem& problem, const KernelSpec& spec);

// Fills every handle field; the launch geometry is for `shape`.
void fill_handle(const CachedKernel& kernel, CacheTier tier, const RuntimeShape& shape,
                 v1::Layout layout, bool omit_cubin, v1::KernelHandle* handle);
void fill_summary(const CachedKernel& kernel, v1::KernelSummary* summary);
void fill_problem(const ProblemClass& problem, const RuntimeShape& shape, v1::Layout layout,
                  v1::Problem* out);
void fill_config(const TileConfig& config, v1::TileConfig* out);
// Field by field, UNSPECIFIED enums as `automatic`; validity is config_error's.
Result<TileConfig> parse_config(const v1::TileConfig& config);
// The params struct's layout, from offsetof over the one ABI header.
void fill_abi(v1::KernelAbi* abi);
// The Hopper family's params struct and the recipe of each tensor map in it.
void fill_tma_abi(const KernelSpec& spec, v1::KernelAbi* abi);
// The decode family's params struct, its kernels in launch order with their
// geometry for `shape`, the split count and the workspace.
void fill_decode_launch(const CachedKernel& kernel, const RuntimeShape& shape,
                        v1::KernelHandle* handle);

v1::DType to_proto(DType dtype);
v1::CacheTier to_proto(CacheTier tier);
// The detail (an NVRTC log, say) goes both into error_details and after the
// message on a new line, so a plain CLI shows it. Capped: gRPC carries both
// in trailers, which peers limit to 8 KiB by default.
grpc::Status to_grpc_status(const Error& error);
inline constexpr size_t kMaxStatusDetailBytes = 2048;
// Every status the service sends goes through bounded_status(): its message
// (which may echo request fields) has control characters escaped and is cut
// at kMaxStatusMessageBytes, its binary details at kMaxStatusDetailBytes, so
// no status's trailing metadata nears gRPC's 8 KB limit (past which the
// transport fails the other calls on the connection).
inline constexpr size_t kMaxStatusMessageBytes = 1024;
grpc::Status bounded_status(const grpc::Status& status);

}  // namespace flashcore::rpc
