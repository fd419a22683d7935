// Kernels outlive the daemon (the disk tier), and the embedded real template
// compiles through the whole stack.
#include <gtest/gtest.h>

#include "common/digest.hpp"
#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;
using namespace test_support;

TEST(RestartTest, ANewDaemonServesKernelsFromDisk) {
  ScratchDir templates, cache;
  write_attention_templates(templates, kSmallAttentionTemplate);
  DaemonConfig config = loopback_config(cache.path());
  config.templates_dir = templates.path();

  v1::KernelHandle compiled;
  {
    auto daemon = start_daemon(config);
    ASSERT_NE(daemon, nullptr);
    auto stub = v1::FlashCore::NewStub(channel_to(*daemon));
    const grpc::Status status = compile(*stub, quick_request(), &compiled);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(compiled.tier(), v1::CACHE_TIER_COMPILED);
    daemon->shutdown(std::chrono::milliseconds(1000));
    daemon->wait();
  }

  auto daemon = start_daemon(config);
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));

  v1::ListKernelsResponse listed;
  ASSERT_TRUE(list_kernels(*stub, 0, "", &listed).ok());
  ASSERT_EQ(listed.kernels_size(), 1);
  EXPECT_EQ(listed.kernels(0).key(), compiled.key());

  v1::GetKernelRequest request;
  request.set_key(compiled.key());
  v1::KernelHandle loaded;
  const grpc::Status status = get_kernel(*stub, request, &loaded);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(loaded.tier(), v1::CACHE_TIER_DISK);
  EXPECT_EQ(loaded.cubin(), compiled.cubin());
  EXPECT_EQ(loaded.cubin_sha256(), compiled.cubin_sha256());
  EXPECT_EQ(loaded.lowered_name(), compiled.lowered_name());
  EXPECT_EQ(loaded.resources().registers(), compiled.resources().registers());
  EXPECT_EQ(loaded.launch().grid().x(), compiled.launch().grid().x());
  EXPECT_EQ(loaded.problem().seq_q(), compiled.problem().seq_q());

  // The same request is a cache hit now, not a compile.
  v1::KernelHandle again;
  ASSERT_TRUE(compile(*stub, quick_request(), &again).ok());
  EXPECT_EQ(again.tier(), v1::CACHE_TIER_MEMORY);
  EXPECT_EQ(again.key(), compiled.key());
}

// The one in-process compile of kernel_templates/attention/attention_fwd.cuh
// as embedded in the binary (seconds of NVRTC).
TEST(RealTemplateTest, EmbeddedAttentionTemplateCompiles) {
  ScratchDir cache;
  auto daemon = start_daemon(loopback_config(cache.path()));
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));

  v1::KernelRequest request = quick_request();
  request.mutable_problem()->set_causal(true);
  v1::KernelHandle handle;
  const grpc::Status status = compile(*stub, request, &handle);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(handle.tier(), v1::CACHE_TIER_COMPILED);
  EXPECT_EQ(handle.cubin().substr(0, 4), std::string("\x7f"
                                                     "ELF"));
  EXPECT_EQ(handle.cubin_sha256(), sha256_hex(handle.cubin()));
  EXPECT_EQ(handle.lowered_name().rfind("_Z", 0), 0u);
  EXPECT_GT(handle.resources().registers(), 0);
  EXPECT_TRUE(handle.problem().causal());
  EXPECT_EQ(handle.launch().block().x(), 128u);
  EXPECT_EQ(handle.launch().grid().x(), 4u);
}

}  // namespace
}  // namespace flashcore
