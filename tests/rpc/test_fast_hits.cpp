// Cache hits that carry less: line info is an opt-in compile option (its
// own key), and a client that names the key it holds gets the handle
// without the cubin bytes.
#include <gtest/gtest.h>

#include <algorithm>

#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;

bool has_option(const v1::KernelHandle& handle, const std::string& option) {
  const auto& options = handle.toolchain().options();
  return std::find(options.begin(), options.end(), option) != options.end();
}

TEST(FastHitsTest, LineInfoIsOptInAndPartOfTheKey) {
  auto server = start_small_template_daemon();
  ASSERT_NE(server, nullptr);
  v1::KernelHandle plain, with_lines;
  ASSERT_TRUE(compile(*server->stub, quick_request(), &plain).ok());
  v1::KernelRequest request = quick_request();
  request.set_line_info(true);
  ASSERT_TRUE(compile(*server->stub, request, &with_lines).ok());
  EXPECT_NE(plain.key(), with_lines.key());
  EXPECT_FALSE(has_option(plain, "-lineinfo"));
  EXPECT_TRUE(has_option(with_lines, "-lineinfo"));
  EXPECT_GT(with_lines.cubin_size(), plain.cubin_size());

  // The option survives the disk tier: a restarted daemon serves the same kernel.
  const DaemonConfig config = [&] {
    DaemonConfig c = loopback_config(server->cache.path());
    c.templates_dir = server->templates.path();
    return c;
  }();
  server->stub.reset();
  server->daemon.reset();
  server->daemon = start_daemon(config);
  ASSERT_NE(server->daemon, nullptr);
  server->stub = v1::FlashCore::NewStub(channel_to(*server->daemon));
  v1::KernelHandle from_disk;
  ASSERT_TRUE(compile(*server->stub, request, &from_disk).ok());
  EXPECT_EQ(from_disk.tier(), v1::CACHE_TIER_DISK);
  EXPECT_EQ(from_disk.key(), with_lines.key());
  EXPECT_TRUE(has_option(from_disk, "-lineinfo"));
}

TEST(FastHitsTest, AClientHoldingTheKeyGetsTheHandleWithoutTheCubin) {
  auto server = start_small_template_daemon();
  ASSERT_NE(server, nullptr);
  v1::KernelHandle first;
  ASSERT_TRUE(compile(*server->stub, quick_request(), &first).ok());
  ASSERT_FALSE(first.cubin().empty());

  v1::KernelRequest held = quick_request();
  held.set_cached_key(first.key());
  v1::KernelHandle light;
  ASSERT_TRUE(compile(*server->stub, held, &light).ok());
  EXPECT_EQ(light.key(), first.key());
  EXPECT_TRUE(light.cubin().empty());
  EXPECT_EQ(light.cubin_size(), first.cubin_size());
  EXPECT_EQ(light.cubin_sha256(), first.cubin_sha256());
  EXPECT_EQ(light.lowered_name(), first.lowered_name());

  // Another key held: this kernel's cubin comes.
  held.set_cached_key(std::string(64, 'b'));
  v1::KernelHandle full;
  ASSERT_TRUE(compile(*server->stub, held, &full).ok());
  EXPECT_EQ(full.cubin(), first.cubin());

  v1::GetKernelRequest get;
  get.set_key(first.key());
  get.set_cached_key(first.key());
  v1::KernelHandle fetched;
  ASSERT_TRUE(get_kernel(*server->stub, get, &fetched).ok());
  EXPECT_TRUE(fetched.cubin().empty());
  EXPECT_EQ(fetched.cubin_size(), first.cubin_size());
}

}  // namespace
}  // namespace flashcore
