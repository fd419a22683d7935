// ErrorCode -> gRPC status code, for every module that answers over gRPC (the
// daemon's service and the evaluation worker). Header-only: common/ itself
// does not link gRPC.
#pragma once

#include <grpcpp/support/status.h>

#include "common/result.hpp"

namespace flashcore {

inline grpc::StatusCode to_grpc_code(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_argument: return grpc::StatusCode::INVALID_ARGUMENT;
    case ErrorCode::not_found: return grpc::StatusCode::NOT_FOUND;
    case ErrorCode::failed_precondition: return grpc::StatusCode::FAILED_PRECONDITION;
    case ErrorCode::resource_exhausted: return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case ErrorCode::internal: return grpc::StatusCode::INTERNAL;
    case ErrorCode::unavailable: return grpc::StatusCode::UNAVAILABLE;
    case ErrorCode::deadline_exceeded: return grpc::StatusCode::DEADLINE_EXCEEDED;
    case ErrorCode::cancelled: return grpc::StatusCode::CANCELLED;
    case ErrorCode::unauthenticated: return grpc::StatusCode::UNAUTHENTICATED;
    case ErrorCode::permission_denied: return grpc::StatusCode::PERMISSION_DENIED;
  }
  return grpc::StatusCode::UNKNOWN;
}

}  // namespace flashcore
