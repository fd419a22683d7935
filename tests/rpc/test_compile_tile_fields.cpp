// Compile with the tile config's enum fields, over real gRPC and real NVRTC
// (the small template, whose output depends on both template flags): a
// concrete q_placement / smem_layout is compiled and echoed as given,
// UNSPECIFIED is answered with the rule's concrete choice and shares its
// kernel (and key) with the request that names that choice.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "rpc_test_support.hpp"
#include "family/tile_config.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;

class CompileTileFieldsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = start_small_template_daemon().release();
    ASSERT_NE(server_, nullptr);
  }
  static void TearDownTestSuite() { delete server_; }

  static v1::KernelHandle compile_ok(const v1::KernelRequest& request) {
    v1::KernelHandle handle;
    const grpc::Status status = compile(*server_->stub, request, &handle);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return handle;
  }

  static SmallTemplateDaemon* server_;
};

SmallTemplateDaemon* CompileTileFieldsTest::server_ = nullptr;

// quick_request() (128x64, 4 warps, 2 stages) with omit_cubin, at
// `head_dim` and `warps`, with the enum fields given. (Head dims 64 and 96
// only: NVRTC takes over a minute on the small template at 128.)
v1::KernelRequest request_with(int head_dim, v1::QPlacement q, v1::SmemLayout layout,
                               int warps = 4) {
  v1::KernelRequest request = quick_request();
  request.set_omit_cubin(true);
  request.mutable_problem()->set_head_dim(head_dim);
  request.mutable_config()->set_warps(warps);
  request.mutable_config()->set_q_placement(q);
  request.mutable_config()->set_smem_layout(layout);
  return request;
}

// The name expression's last two template arguments: QInRegisters, SwizzledSmem.
std::string flags_of(const v1::KernelHandle& handle) {
  const std::string& name = handle.name_expression();
  const size_t end = name.rfind('>');
  const size_t second = name.rfind(',', end);
  const size_t first = name.rfind(',', second - 1);
  if (end == std::string::npos || second == std::string::npos || first == std::string::npos)
    return "unparsed: " + name;
  return name.substr(first + 2, end - first - 2);
}

TEST_F(CompileTileFieldsTest, ConcreteValuesAreCompiledAndEchoed) {
  std::set<std::string> keys;
  for (auto q : {v1::Q_PLACEMENT_REGISTERS, v1::Q_PLACEMENT_SHARED})
    for (auto layout : {v1::SMEM_LAYOUT_SWIZZLED, v1::SMEM_LAYOUT_PADDED}) {
      SCOPED_TRACE(v1::QPlacement_Name(q) + " " + v1::SmemLayout_Name(layout));
      const v1::KernelHandle handle = compile_ok(request_with(64, q, layout));
      EXPECT_EQ(handle.config().q_placement(), q);
      EXPECT_EQ(handle.config().smem_layout(), layout);
      const std::string want = std::string(q == v1::Q_PLACEMENT_REGISTERS ? "true" : "false") +
                               ", " + (layout == v1::SMEM_LAYOUT_SWIZZLED ? "true" : "false");
      EXPECT_EQ(flags_of(handle), want) << handle.name_expression();
      // Padded rows are 16 bytes longer: Q (128 rows) + 2 stages of K and V (64 rows).
      const uint32_t row_bytes = 64 * 2 + (layout == v1::SMEM_LAYOUT_PADDED ? 16 : 0);
      EXPECT_EQ(handle.launch().dynamic_smem_bytes(), (128 + 2 * 2 * 64) * row_bytes);
      keys.insert(handle.key());
    }
  EXPECT_EQ(keys.size(), 4u);  // four kernels
}

TEST_F(CompileTileFieldsTest, UnspecifiedIsAnsweredWithTheRulesConcreteChoice) {
  // 128 rows over W warps: Q costs (128 / W / 16) * (D / 16) * 4 registers a
  // thread, held in registers up to 32: so registers at D 64 with 4 warps
  // (32), shared at D 64 with 2 warps (64) and at D 96 with 4 (48). D 96 has
  // no power-of-two chunk count, so it is padded, D 64 swizzled.
  struct Expected {
    int head_dim;
    int warps;
    v1::QPlacement q;
    v1::SmemLayout layout;
  };
  for (const Expected& e : {Expected{64, 4, v1::Q_PLACEMENT_REGISTERS, v1::SMEM_LAYOUT_SWIZZLED},
                            Expected{64, 2, v1::Q_PLACEMENT_SHARED, v1::SMEM_LAYOUT_SWIZZLED},
                            Expected{96, 4, v1::Q_PLACEMENT_SHARED, v1::SMEM_LAYOUT_PADDED}}) {
    SCOPED_TRACE(std::to_string(e.head_dim) + " w" + std::to_string(e.warps));
    const v1::KernelHandle unspecified = compile_ok(request_with(
        e.head_dim, v1::Q_PLACEMENT_UNSPECIFIED, v1::SMEM_LAYOUT_UNSPECIFIED, e.warps));
    EXPECT_EQ(unspecified.config().q_placement(), e.q);
    EXPECT_EQ(unspecified.config().smem_layout(), e.layout);
    // Naming the same choice is the same kernel: same key, a memory hit.
    const v1::KernelHandle named = compile_ok(request_with(e.head_dim, e.q, e.layout, e.warps));
    EXPECT_EQ(named.key(), unspecified.key());
    EXPECT_EQ(named.tier(), v1::CACHE_TIER_MEMORY);
    EXPECT_EQ(named.name_expression(), unspecified.name_expression());
    // One field given, the other left to the rule: still that kernel.
    const v1::KernelHandle half =
        compile_ok(request_with(e.head_dim, e.q, v1::SMEM_LAYOUT_UNSPECIFIED, e.warps));
    EXPECT_EQ(half.key(), unspecified.key());
    EXPECT_EQ(half.config().smem_layout(), e.layout);
  }
  // A request with no config at all gets the default tile, resolved too.
  v1::KernelRequest no_config = quick_request();
  no_config.clear_config();
  no_config.set_omit_cubin(true);
  const v1::KernelHandle defaulted = compile_ok(no_config);
  EXPECT_EQ(defaulted.config().q_placement(), v1::Q_PLACEMENT_REGISTERS);
  EXPECT_EQ(defaulted.config().smem_layout(), v1::SMEM_LAYOUT_SWIZZLED);
}

TEST_F(CompileTileFieldsTest, ListedAndFetchedKernelsCarryConcreteValues) {
  const v1::KernelHandle compiled = compile_ok(
      request_with(96, v1::Q_PLACEMENT_UNSPECIFIED, v1::SMEM_LAYOUT_UNSPECIFIED));
  v1::GetKernelRequest get;
  get.set_key(compiled.key());
  get.set_omit_cubin(true);
  v1::KernelHandle fetched;
  ASSERT_TRUE(get_kernel(*server_->stub, get, &fetched).ok());
  EXPECT_EQ(fetched.config().q_placement(), v1::Q_PLACEMENT_SHARED);
  EXPECT_EQ(fetched.config().smem_layout(), v1::SMEM_LAYOUT_PADDED);

  v1::ListKernelsResponse listed;
  ASSERT_TRUE(list_kernels(*server_->stub, 1000, "", &listed).ok());
  ASSERT_GT(listed.kernels_size(), 0);
  for (const auto& k : listed.kernels()) {
    EXPECT_NE(k.config().q_placement(), v1::Q_PLACEMENT_UNSPECIFIED) << k.key();
    EXPECT_NE(k.config().smem_layout(), v1::SMEM_LAYOUT_UNSPECIFIED) << k.key();
  }
}

}  // namespace
}  // namespace flashcore
