// rpc/handle_wire: the handle Compile and GetKernel send, written with the
// cubin as a slice of the cache entry, reads back as the same KernelHandle
// the generated serializer gives, and holds the entry while gRPC holds it.
#include "rpc/handle_wire.hpp"

#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/support/slice.h>
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "../unit/cache_test_util.hpp"
#include "service/kernel_handle.hpp"

namespace flashcore {
namespace {

using cache_testing::sample_cubin;
using cache_testing::sample_entry;
using cache_testing::test_key;

std::string bytes_of(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string bytes;
  for (const auto& slice : slices)
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return bytes;
}

service::KernelAnswer sample_answer(size_t cubin_bytes) {
  CachedKernel entry = sample_entry(test_key("wire"), sample_cubin(cubin_bytes, 3));
  entry.spec.template_id = "attention_fwd";
  entry.cubin_sha256 = "ab" + std::string(62, 'c');
  service::KernelAnswer answer;
  answer.lookup = CacheLookup{std::make_shared<const CachedKernel>(std::move(entry)),
                              CacheTier::memory};
  v1::ValidationRecord record;
  record.set_passed(true);
  record.set_detail("every row against fp64");
  answer.validation = record;
  return answer;
}

TEST(HandleWire, ReadsBackAsTheGeneratedHandleWithAndWithoutTheCubin) {
  const service::KernelAnswer answer = sample_answer(50000);
  const RuntimeShape shape{4, 16, 16, 2048, 2048};
  for (bool omit : {false, true}) {
    v1::KernelHandle expected;
    service::fill_handle(*answer.lookup.kernel, answer.lookup.tier, shape, v1::LAYOUT_BHSD, omit,
                         &expected);
    *expected.mutable_validation() = *answer.validation;

    grpc::ByteBuffer wire;
    rpc::write_handle(answer, shape, v1::LAYOUT_BHSD, omit, &wire);
    v1::KernelHandle got;
    ASSERT_TRUE(got.ParseFromString(bytes_of(wire))) << "omit " << omit;
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(got, expected))
        << "omit " << omit << "\n" << got.ShortDebugString().substr(0, 400);
    EXPECT_EQ(got.cubin().size(), omit ? 0u : 50000u);
    EXPECT_EQ(wire.Length(), expected.ByteSizeLong());
  }
}

TEST(HandleWire, TheCubinSlicePointsIntoTheEntryAndHoldsIt) {
  service::KernelAnswer answer = sample_answer(1 << 16);
  std::weak_ptr<const CachedKernel> entry = answer.lookup.kernel;
  const char* cubin = answer.lookup.kernel->compiled.cubin.data();
  auto wire = std::make_unique<grpc::ByteBuffer>();
  rpc::write_handle(answer, RuntimeShape{1, 8, 8, 100, 100}, v1::LAYOUT_BSHD, false, wire.get());
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(wire->Dump(&slices).ok());
  ASSERT_EQ(slices.size(), 2u);
  EXPECT_EQ(reinterpret_cast<const char*>(slices[1].begin()), cubin);  // no copy
  EXPECT_EQ(slices[1].size(), size_t{1} << 16);
  slices.clear();

  answer.lookup.kernel.reset();  // the cache forgets it (a clear, say)
  EXPECT_FALSE(entry.expired());  // the response still holds it
  wire.reset();
  EXPECT_TRUE(entry.expired());
}

TEST(HandleWire, ARequestThatDoesNotParseIsInvalidArgument) {
  const grpc::Slice junk(std::string("\xff\xff\xff\xff", 4));
  const grpc::ByteBuffer request(&junk, 1);
  v1::GetKernelRequest parsed;
  const Status status = rpc::parse_request(request, &parsed, "GetKernel");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().code, ErrorCode::invalid_argument);
  EXPECT_EQ(status.error().message.rfind("GetKernel", 0), 0u) << status.error().message;

  v1::GetKernelRequest sent;
  sent.set_key(std::string(64, 'a'));
  const grpc::Slice good(sent.SerializeAsString());
  ASSERT_TRUE(rpc::parse_request(grpc::ByteBuffer(&good, 1), &parsed, "GetKernel").ok());
  EXPECT_EQ(parsed.key(), sent.key());
}

}  // namespace
}  // namespace flashcore
