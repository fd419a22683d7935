// A kernel answer on the wire without copying its cubin. Compile and
// GetKernel are registered as raw methods (rpc/kernel_queues serves them
// through completion queues): their handle is written as two slices, every
// field but the cubin serialized into the first (with the cubin field's tag
// and length at its end), and the cubin itself as the second, a slice that
// points into the cache's immutable entry and holds a reference to it until
// gRPC has sent it. Protobuf readers take fields in
// any order, so a client reads the same KernelHandle it would from the
// generated serializer; what changes is that the 50-230 KB of cubin are no
// longer copied into a protobuf string and again into a slice per call.
#pragma once

#include <grpcpp/support/byte_buffer.h>

#include <string_view>

#include "common/result.hpp"
#include "flashcore/v1/flashcore.pb.h"
#include "service/service.hpp"

namespace flashcore::rpc {

// The handle of `answer` (launch geometry for `shape`), cubin left out when
// `omit_cubin`, as the call's response bytes.
void write_handle(const service::KernelAnswer& answer, const RuntimeShape& shape,
                  v1::Layout layout, bool omit_cubin, grpc::ByteBuffer* out);

// A raw method's request; INVALID_ARGUMENT when the bytes do not parse.
Status parse_request(const grpc::ByteBuffer& request, google::protobuf::Message* out,
                     std::string_view rpc);

}  // namespace flashcore::rpc
