#include "rpc/handle_wire.hpp"

#include <google/protobuf/io/coded_stream.h>
#include <grpcpp/support/slice.h>

#include <memory>
#include <vector>

#include "service/kernel_handle.hpp"

namespace flashcore::rpc {
namespace {

// KernelHandle.cubin: field 5, length-delimited.
constexpr uint32_t kCubinTag = (v1::KernelHandle::kCubinFieldNumber << 3) | 2;

// The cubin slice's owner: the entry stays alive while gRPC holds the slice.
using EntryRef = std::shared_ptr<const CachedKernel>;
void release_entry(void* ref) { delete static_cast<EntryRef*>(ref); }

}  // namespace

void write_handle(const service::KernelAnswer& answer, const RuntimeShape& shape,
                  v1::Layout layout, bool omit_cubin, grpc::ByteBuffer* out) {
  const EntryRef& kernel = answer.lookup.kernel;
  v1::KernelHandle handle;
  service::fill_handle(*kernel, answer.lookup.tier, shape, layout, /*omit_cubin=*/true, &handle);
  if (answer.validation) *handle.mutable_validation() = *answer.validation;

  const std::string& cubin = kernel->compiled.cubin;
  const bool with_cubin = !omit_cubin && !cubin.empty();
  using google::protobuf::io::CodedOutputStream;
  const size_t fields = handle.ByteSizeLong();
  const size_t cubin_header =
      with_cubin ? CodedOutputStream::VarintSize32(kCubinTag) +
                       CodedOutputStream::VarintSize64(cubin.size())
                 : 0;
  grpc::Slice head(fields + cubin_header);
  auto* at = const_cast<uint8_t*>(head.begin());
  at = handle.SerializeWithCachedSizesToArray(at);
  if (!with_cubin) {
    *out = grpc::ByteBuffer(&head, 1);
    return;
  }
  at = CodedOutputStream::WriteVarint32ToArray(kCubinTag, at);
  CodedOutputStream::WriteVarint64ToArray(cubin.size(), at);
  // The entry is immutable (a const CachedKernel behind a shared_ptr): the
  // slice may point into it for as long as it holds the reference.
  grpc::Slice bytes(const_cast<char*>(cubin.data()), cubin.size(), release_entry,
                    new EntryRef(kernel));
  const grpc::Slice slices[] = {std::move(head), std::move(bytes)};
  *out = grpc::ByteBuffer(slices, 2);
}

Status parse_request(const grpc::ByteBuffer& request, google::protobuf::Message* out,
                     std::string_view rpc) {
  // Small requests: one contiguous copy is the simplest parse.
  std::vector<grpc::Slice> slices;
  if (grpc::Status dumped = request.Dump(&slices); !dumped.ok())
    return make_error(ErrorCode::invalid_argument, std::string(rpc) + ": unreadable request");
  std::string bytes;
  for (const auto& slice : slices)
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  if (!out->ParseFromString(bytes))
    return make_error(ErrorCode::invalid_argument,
                      std::string(rpc) + ": the request is not a " + out->GetTypeName());
  return ok_status();
}

}  // namespace flashcore::rpc
