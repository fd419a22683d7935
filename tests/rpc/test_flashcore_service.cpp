// The service's happy paths over real gRPC: one daemon for the suite, with
// the small template, and two kernels compiled once in SetUpTestSuite.
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "common/attention_params.cuh"
#include "common/digest.hpp"
#include "grpc/health/v1/health.grpc.pb.h"
#include "rpc_test_support.hpp"
#include "family/tile_config.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;

class FlashCoreServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto default_arch_sm80 = [](DaemonConfig& config) { config.default_arch = "sm_80"; };
    server_ = start_small_template_daemon(default_arch_sm80).release();
    ASSERT_NE(server_, nullptr);

    // Kernel A leaves arch empty: the daemon's default (sm_80) applies.
    v1::KernelRequest a = quick_request();
    a.clear_arch();
    first_ = new v1::KernelHandle;
    const grpc::Status status_a = compile(*server_->stub, a, first_);
    ASSERT_TRUE(status_a.ok()) << status_a.error_message();
    // Kernel B: another tile, so the cache holds two keys.
    v1::KernelRequest b = quick_request();
    b.mutable_config()->set_block_m(64);
    second_ = new v1::KernelHandle;
    const grpc::Status status_b = compile(*server_->stub, b, second_);
    ASSERT_TRUE(status_b.ok()) << status_b.error_message();
  }

  static void TearDownTestSuite() {
    delete server_;
    delete first_;
    delete second_;
  }

  static SmallTemplateDaemon* server_;
  static v1::KernelHandle* first_;
  static v1::KernelHandle* second_;
};

SmallTemplateDaemon* FlashCoreServiceTest::server_ = nullptr;
v1::KernelHandle* FlashCoreServiceTest::first_ = nullptr;
v1::KernelHandle* FlashCoreServiceTest::second_ = nullptr;

TEST_F(FlashCoreServiceTest, CompileCompilesOnceThenAnswersFromMemory) {
  EXPECT_EQ(first_->tier(), v1::CACHE_TIER_COMPILED);
  EXPECT_GT(first_->compile_ms(), 0.0);

  v1::KernelRequest again = quick_request();
  again.clear_arch();
  v1::KernelHandle handle;
  const grpc::Status status = compile(*server_->stub, again, &handle);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(handle.tier(), v1::CACHE_TIER_MEMORY);
  EXPECT_EQ(handle.key(), first_->key());
  EXPECT_EQ(handle.cubin(), first_->cubin());
  EXPECT_NE(second_->key(), first_->key());
}

TEST_F(FlashCoreServiceTest, HandleCarriesWhatALaunchNeeds) {
  const v1::KernelHandle& h = *first_;
  EXPECT_EQ(h.key().size(), 64u);
  EXPECT_TRUE(is_lower_hex(h.key())) << h.key();
  EXPECT_EQ(h.template_id(), "attention_fwd");
  EXPECT_NE(h.name_expression().find("attention_fwd<"), std::string::npos) << h.name_expression();
  EXPECT_EQ(h.lowered_name().rfind("_Z", 0), 0u) << h.lowered_name();
  EXPECT_NE(h.lowered_name().find("attention_fwd"), std::string::npos);
  ASSERT_GE(h.cubin().size(), 4u);
  EXPECT_EQ(h.cubin().substr(0, 4), std::string("\x7f"
                                                "ELF"));
  EXPECT_EQ(h.cubin_size(), h.cubin().size());
  EXPECT_EQ(h.cubin_sha256(), sha256_hex(h.cubin()));
  EXPECT_EQ(h.arch(), "sm_80");  // the configured default_arch

  // The problem echoes the compile-time class and the shape the grid is for.
  EXPECT_EQ(h.problem().dtype(), v1::DTYPE_FP16);
  EXPECT_EQ(h.problem().head_dim(), 64);
  EXPECT_EQ(h.problem().batch(), 2);
  EXPECT_EQ(h.problem().heads(), 8);
  EXPECT_EQ(h.problem().seq_q(), 500);
  EXPECT_EQ(h.config().block_m(), 128);
  EXPECT_EQ(h.config().warps(), 4);

  // seq_q 500 over 128-row tiles is 4 tiles; one block per (tile, head, batch).
  EXPECT_EQ(h.launch().grid().x(), 4u);
  EXPECT_EQ(h.launch().grid().y(), 8u);
  EXPECT_EQ(h.launch().grid().z(), 2u);
  EXPECT_EQ(h.launch().block().x(), 4u * 32u);
  EXPECT_EQ(h.launch().block().y(), 1u);
  EXPECT_EQ(h.launch().block().z(), 1u);
  EXPECT_EQ(h.launch().dynamic_smem_bytes(),
            static_cast<uint32_t>(
                smem_bytes(TileConfig{128, 64, 4, 2}, ProblemClass{DType::fp16, 64, false})));
  EXPECT_NE(h.launch().grid_formula().find("128"), std::string::npos);

  EXPECT_GT(h.resources().registers(), 0);
  EXPECT_NE(h.resources().ptxas_log().find("registers"), std::string::npos);

  EXPECT_EQ(h.toolchain().template_source_hash().size(), 64u);
  EXPECT_FALSE(h.toolchain().nvrtc_version().empty());
  EXPECT_GT(h.toolchain().cache_format_version(), 0u);
  const auto& options = h.toolchain().options();
  EXPECT_NE(std::find(options.begin(), options.end(), "--gpu-architecture=sm_80"), options.end());
}

TEST_F(FlashCoreServiceTest, AbiDescribesTheParamsStruct) {
  const v1::KernelAbi& abi = first_->abi();
  EXPECT_EQ(abi.params_struct(), "flashcore::AttentionParams");
  EXPECT_EQ(abi.abi_version(), static_cast<uint32_t>(FLASHCORE_ATTENTION_ABI_VERSION));
  EXPECT_EQ(abi.params_size(), sizeof(AttentionParams));

  std::set<std::string> names;
  uint32_t end = 0;
  for (const auto& field : abi.fields()) {
    EXPECT_TRUE(names.insert(field.name()).second) << "duplicate field " << field.name();
    EXPECT_GE(field.offset(), end) << field.name() << " overlaps the field before it";
    EXPECT_EQ(field.offset() % field.size(), 0u) << field.name() << " is misaligned";
    end = field.offset() + field.size();
    const std::string& type = field.type();
    EXPECT_TRUE(type == "ptr" || type == "i64" || type == "i32" || type == "f32") << type;
  }
  // Every byte but the tail padding is described.
  EXPECT_LE(end, abi.params_size());
  EXPECT_LT(abi.params_size() - end, alignof(AttentionParams));

  auto offset_of = [&](const std::string& name) -> int64_t {
    for (const auto& field : abi.fields())
      if (field.name() == name) return field.offset();
    ADD_FAILURE() << "no field " << name;
    return -1;
  };
  EXPECT_EQ(offset_of("q"), 0);
  EXPECT_LT(offset_of("q"), offset_of("k"));
  EXPECT_LT(offset_of("k"), offset_of("v"));
  EXPECT_LT(offset_of("v"), offset_of("o"));
  for (const char* name : {"seq_q", "seq_k", "softmax_scale", "q_row_stride"})
    EXPECT_GE(offset_of(name), 0) << name;
}

TEST_F(FlashCoreServiceTest, OmitCubinKeepsItsSizeAndDigest) {
  v1::KernelRequest request = quick_request();
  request.clear_arch();
  request.set_omit_cubin(true);
  v1::KernelHandle handle;
  ASSERT_TRUE(compile(*server_->stub, request, &handle).ok());
  EXPECT_TRUE(handle.cubin().empty());
  EXPECT_EQ(handle.cubin_size(), first_->cubin().size());
  EXPECT_EQ(handle.cubin_sha256(), first_->cubin_sha256());
  EXPECT_EQ(handle.lowered_name(), first_->lowered_name());
}

TEST_F(FlashCoreServiceTest, GetKernelByKeyGivesTheGeometryOfTheFirstShape) {
  v1::GetKernelRequest request;
  request.set_key(first_->key());
  v1::KernelHandle handle;
  const grpc::Status status = get_kernel(*server_->stub, request, &handle);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(handle.tier(), v1::CACHE_TIER_MEMORY);
  EXPECT_EQ(handle.cubin_sha256(), first_->cubin_sha256());
  EXPECT_EQ(handle.cubin(), first_->cubin());
  EXPECT_EQ(handle.launch().grid().x(), first_->launch().grid().x());
  EXPECT_EQ(handle.launch().grid().y(), 8u);
  EXPECT_EQ(handle.launch().grid().z(), 2u);
  EXPECT_EQ(handle.problem().seq_q(), 500);
}

TEST_F(FlashCoreServiceTest, GetKernelWithAProblemGivesItsGeometry) {
  v1::GetKernelRequest request;
  request.set_key(first_->key());
  request.set_omit_cubin(true);
  v1::Problem* problem = request.mutable_problem();
  problem->set_dtype(v1::DTYPE_FP16);
  problem->set_head_dim(64);
  problem->set_batch(3);
  problem->set_heads(16);
  problem->set_kv_heads(4);
  problem->set_seq_q(1000);
  problem->set_seq_k(4096);
  v1::KernelHandle handle;
  const grpc::Status status = get_kernel(*server_->stub, request, &handle);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(handle.cubin().empty());
  EXPECT_EQ(handle.launch().grid().x(), 8u);  // ceil(1000 / 128)
  EXPECT_EQ(handle.launch().grid().y(), 16u);
  EXPECT_EQ(handle.launch().grid().z(), 3u);
  EXPECT_EQ(handle.problem().kv_heads(), 4);
  EXPECT_EQ(handle.problem().seq_k(), 4096);
  EXPECT_EQ(handle.key(), first_->key());
}

TEST_F(FlashCoreServiceTest, GetKernelRejectsAProblemOfAnotherClass) {
  struct Case {
    const char* field;
    void (*change)(v1::Problem*);
  };
  const Case cases[] = {
      {"problem.dtype", [](v1::Problem* p) { p->set_dtype(v1::DTYPE_BF16); }},
      {"problem.dtype", [](v1::Problem* p) { p->set_dtype(v1::DTYPE_UNSPECIFIED); }},
      {"problem.head_dim", [](v1::Problem* p) { p->set_head_dim(128); }},
      {"problem.causal", [](v1::Problem* p) { p->set_causal(true); }},
      {"problem.seq_q", [](v1::Problem* p) { p->set_seq_q(0); }},
      {"problem.kv_heads", [](v1::Problem* p) { p->set_kv_heads(3); }},
  };
  for (const Case& c : cases) {
    v1::GetKernelRequest request;
    request.set_key(first_->key());
    *request.mutable_problem() = quick_request().problem();
    c.change(request.mutable_problem());
    v1::KernelHandle handle;
    const grpc::Status status = get_kernel(*server_->stub, request, &handle);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field;
    EXPECT_NE(status.error_message().find(c.field), std::string::npos)
        << c.field << ": " << status.error_message();
  }
}

TEST_F(FlashCoreServiceTest, ListKernelsPagesInKeyOrder) {
  v1::ListKernelsResponse all;
  ASSERT_TRUE(list_kernels(*server_->stub, 0, "", &all).ok());
  ASSERT_EQ(all.kernels_size(), 2);
  EXPECT_TRUE(all.next_page_token().empty());

  v1::ListKernelsResponse page1;
  ASSERT_TRUE(list_kernels(*server_->stub, 1, "", &page1).ok());
  ASSERT_EQ(page1.kernels_size(), 1);
  ASSERT_FALSE(page1.next_page_token().empty());

  v1::ListKernelsResponse page2;
  ASSERT_TRUE(list_kernels(*server_->stub, 1, page1.next_page_token(), &page2).ok());
  ASSERT_EQ(page2.kernels_size(), 1);
  EXPECT_TRUE(page2.next_page_token().empty());

  EXPECT_LT(page1.kernels(0).key(), page2.kernels(0).key());
  const std::set<std::string> listed = {page1.kernels(0).key(), page2.kernels(0).key()};
  EXPECT_EQ(listed, (std::set<std::string>{first_->key(), second_->key()}));

  for (const auto& summary : all.kernels()) {
    const v1::KernelHandle& h = summary.key() == first_->key() ? *first_ : *second_;
    EXPECT_EQ(summary.template_id(), "attention_fwd");
    EXPECT_EQ(summary.arch(), "sm_80");
    EXPECT_EQ(summary.cubin_size(), h.cubin_size());
    EXPECT_EQ(summary.config().block_m(), h.config().block_m());
    EXPECT_EQ(summary.problem().seq_q(), 500);
    EXPECT_EQ(summary.registers(), h.resources().registers());
    EXPECT_GT(summary.created_unix_ms(), 0);
  }
}

TEST_F(FlashCoreServiceTest, ServerInfoDescribesTheDaemon) {
  v1::ServerInfo info;
  const grpc::Status status = server_info(*server_->stub, &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(info.version().empty());
  EXPECT_NE(info.nvrtc_version().find('.'), std::string::npos) << info.nvrtc_version();
  EXPECT_EQ(info.default_arch(), "sm_80");
  for (const char* arch : {"sm_80", "sm_86", "sm_89", "sm_90", "sm_90a"})
    EXPECT_NE(std::find(info.supported_archs().begin(), info.supported_archs().end(), arch),
              info.supported_archs().end())
        << arch;
  ASSERT_EQ(info.templates_size(), 1);
  EXPECT_EQ(info.templates(0), "attention_fwd");
  if (info.gpu_available()) {
    EXPECT_FALSE(info.gpu_name().empty());
  } else {
    EXPECT_FALSE(info.gpu_unavailable_reason().empty());
  }
}

TEST_F(FlashCoreServiceTest, HealthCheckServes) {
  auto health = grpc::health::v1::Health::NewStub(channel_to(*server_->daemon));
  grpc::health::v1::HealthCheckRequest request;  // "" = the server as a whole
  grpc::health::v1::HealthCheckResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  const grpc::Status status = health->Check(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

// grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo by hand: the
// request is {list_services: ""} (field 7, length 0); the answer names every
// service, so the bytes hold "flashcore.v1.FlashCore".
TEST_F(FlashCoreServiceTest, ReflectionListsTheService) {
  grpc::GenericStub stub(channel_to(*server_->daemon));
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto step = [&cq](intptr_t tag) {
    void* got = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&got, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(got), tag);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(step(1));
  const char request_bytes[] = {0x3a, 0x00};
  grpc::Slice slice(request_bytes, sizeof(request_bytes));
  grpc::ByteBuffer request(&slice, 1);
  call->Write(request, reinterpret_cast<void*>(2));
  ASSERT_TRUE(step(2));
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(3));
  ASSERT_TRUE(step(3));
  call->WritesDone(reinterpret_cast<void*>(4));
  step(4);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  EXPECT_TRUE(status.ok()) << status.error_message();
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }

  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_NE(bytes.find("flashcore.v1.FlashCore"), std::string::npos);
  EXPECT_NE(bytes.find("grpc.health.v1.Health"), std::string::npos);
}

}  // namespace
}  // namespace flashcore
