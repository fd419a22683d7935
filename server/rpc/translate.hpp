// Translation from flashcore.v1 messages into the service's request types
// (each failure names the field as the proto spells it), and ErrorCode ->
// grpc::Status. The handle goes the other way in service/kernel_handle.
#pragma once

#include <grpcpp/support/status.h>

#include <string>
#include <string_view>

#include "common/grpc_code.hpp"
#include "common/result.hpp"
#include "flashcore/v1/flashcore.pb.h"
#include "service/requests.hpp"

namespace flashcore::rpc {

// The service's request type (service/requests.hpp).
using service::CompileRequest;

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

Result<RuntimeShape> parse_shape_for(const v1::Problem& problem, const KernelSpec& spec);

// Field by field, UNSPECIFIED enums as `automatic`; validity is config_error's.
Result<TileConfig> parse_config(const v1::TileConfig& config);

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
