// The service layer called directly, without a server or a transport: its
// operations answer through their callbacks, its policies (admission,
// quotas, the need for workers, a GPU or a tuning database) refuse with the
// reason, and a cancel answers exactly once.
#include "service/service.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <thread>

#include "cache/cache_key.hpp"
#include "jit/compile_pool.hpp"
#include "scratch_dir.hpp"
#include "test_templates.hpp"

namespace flashcore::service {
namespace {

using namespace test_support;
using namespace std::chrono_literals;

const auth::Identity kAlice{"alice", auth::Role::compile};

CompileRequest request_for(bool causal, int block_n = 64) {
  CompileRequest request;
  request.spec.template_id = std::string(kAttentionTemplateId);
  request.spec.problem.dtype = DType::fp16;
  request.spec.problem.head_dim = 64;
  request.spec.problem.causal = causal;
  request.spec.config = TileConfig{64, block_n, 4, 2};
  request.spec.arch = "sm_80";
  request.shape = RuntimeShape{2, 4, 0, 100, 0};
  return request;
}

class ServiceTest : public ::testing::Test {
 protected:
  std::unique_ptr<Service> make_service(ServiceOptions options = {},
                                        std::shared_ptr<const TemplateRegistry> templates =
                                            small_template_registry()) {
    compiler_ = std::make_shared<const NvrtcCompiler>(std::move(templates));
    pool_ = std::make_shared<CompilePool>(2, 16);
    KernelCacheOptions cache_options;
    cache_options.disk_dir = dir_.path() / "kernels";
    cache_ = std::make_shared<KernelCache>(cache_options, compiler_, pool_);
    return std::make_unique<Service>(cache_, compiler_, std::move(options));
  }

  // compile() and wait for its one answer.
  static Result<KernelAnswer> compile_sync(Service& service, CompileRequest request,
                                           const auth::Identity& who = kAlice) {
    std::promise<Result<KernelAnswer>> answered;
    auto pending = service.compile(who, std::move(request), /*use_tuned_config=*/false,
                                   [&answered](Result<KernelAnswer> answer) {
                                     answered.set_value(std::move(answer));
                                   });
    if (!pending) return pending.error();
    return answered.get_future().get();
  }

  ScratchDir dir_;
  std::shared_ptr<const NvrtcCompiler> compiler_;
  std::shared_ptr<CompilePool> pool_;
  std::shared_ptr<KernelCache> cache_;
};

TEST_F(ServiceTest, CompileAnswersThroughItsCallbackThenFromMemory) {
  auto service = make_service();
  auto first = compile_sync(*service, request_for(false));
  ASSERT_TRUE(first.ok()) << first.error().message << "\n" << first.error().detail;
  EXPECT_EQ(first->lookup.tier, CacheTier::compiled);
  EXPECT_TRUE(is_well_formed_key(first->lookup.kernel->key));
  EXPECT_FALSE(first->lookup.kernel->compiled.cubin.empty());
  EXPECT_FALSE(first->validation.has_value());

  auto second = compile_sync(*service, request_for(false));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->lookup.tier, CacheTier::memory);
  EXPECT_EQ(second->lookup.kernel, first->lookup.kernel);
}

TEST_F(ServiceTest, GetKernelNamesTheKeyAndAnswersOnlyFromTheCache) {
  auto service = make_service();
  auto empty = service->get_kernel("");
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.error().code, ErrorCode::invalid_argument);
  EXPECT_EQ(empty.error().message, "key: must be set");
  auto malformed = service->get_kernel("ABC");
  ASSERT_FALSE(malformed.ok());
  EXPECT_EQ(malformed.error().code, ErrorCode::invalid_argument);
  EXPECT_EQ(malformed.error().message.rfind("key: 'ABC'", 0), 0u) << malformed.error().message;
  auto unknown = service->get_kernel(std::string(64, 'a'));
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ErrorCode::not_found);

  auto compiled = compile_sync(*service, request_for(true));
  ASSERT_TRUE(compiled.ok());
  auto got = service->get_kernel(compiled->lookup.kernel->key);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got->lookup.tier, CacheTier::memory);
  EXPECT_EQ(got->lookup.kernel->key, compiled->lookup.kernel->key);
}

TEST_F(ServiceTest, ListKernelsPagesInKeyOrder) {
  auto service = make_service();
  ASSERT_TRUE(compile_sync(*service, request_for(false)).ok());
  ASSERT_TRUE(compile_sync(*service, request_for(true)).ok());
  auto first = service->list_kernels("", 1);
  ASSERT_TRUE(first.ok());
  ASSERT_EQ(first->kernels.size(), 1u);
  EXPECT_EQ(first->next_page_token, first->kernels[0].key);
  auto second = service->list_kernels(first->next_page_token, 1);
  ASSERT_TRUE(second.ok());
  ASSERT_EQ(second->kernels.size(), 1u);
  EXPECT_LT(first->kernels[0].key, second->kernels[0].key);
  EXPECT_TRUE(second->next_page_token.empty());
  auto bad = service->list_kernels("not-a-token", 1);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message.rfind("page_token:", 0), 0u);
}

TEST_F(ServiceTest, AdmitRefusesPastTheInFlightLimitAndFreesOnRelease) {
  ServiceOptions options;
  options.max_concurrent_rpcs = 2;
  auto service = make_service(options);
  ASSERT_TRUE(service->admit().ok());
  ASSERT_TRUE(service->admit().ok());
  const Status third = service->admit();
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.error().code, ErrorCode::resource_exhausted);
  EXPECT_NE(third.error().message.find("2 calls in flight"), std::string::npos);
  EXPECT_EQ(service->in_flight(), 2u);
  service->release();
  EXPECT_TRUE(service->admit().ok());
}

TEST_F(ServiceTest, WithoutAnAuthenticatorEveryCallerIsAnonymousAdmin) {
  auto service = make_service();
  auto who = service->authenticate("", auth::Role::admin, "Compile", "test");
  ASSERT_TRUE(who.ok());
  EXPECT_EQ(who->client, auth::kAnonymous);
  EXPECT_EQ(who->role, auth::Role::admin);
}

// A compile holds one of its client's slots until it answers; a cancel
// answers CANCELLED once and gives the slot back.
TEST_F(ServiceTest, CompileQuotaHoldsASlotUntilTheAnswerOrTheCancel) {
  ServiceOptions options;
  options.quotas = std::make_shared<auth::Quotas>(auth::QuotaLimits{1, 0, 0});
  auto service = make_service(
      options, std::make_shared<const TemplateRegistry>(
                   attention_template_files(slow_attention_template(600))));
  std::atomic<int> answers{0};
  std::promise<Result<KernelAnswer>> answered;
  auto pending = service->compile(kAlice, request_for(false), false,
                                  [&](Result<KernelAnswer> answer) {
                                    ++answers;
                                    answered.set_value(std::move(answer));
                                  });
  ASSERT_TRUE(pending.ok()) << pending.error().message;

  auto refused = service->compile(kAlice, request_for(true), false,
                                  [](Result<KernelAnswer>) { ADD_FAILURE() << "answered"; });
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::resource_exhausted);
  (*pending)->cancel();  // while its compile runs (seconds with this template)
  auto cancelled = answered.get_future().get();
  ASSERT_FALSE(cancelled.ok());
  EXPECT_EQ(cancelled.error().code, ErrorCode::cancelled);
  (*pending)->cancel();  // idempotent

  // Another client has slots of its own.
  const auth::Identity bob{"bob", auth::Role::compile};
  auto other = compile_sync(*service, request_for(true, 32), bob);
  EXPECT_TRUE(other.ok()) << other.error().message;
  auto again = compile_sync(*service, request_for(false));
  EXPECT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(answers.load(), 1);
}

TEST_F(ServiceTest, ValidateTuneAndResultsNameWhatIsMissing) {
  ServiceOptions options;
  options.evaluation_unavailable_reason = "no worker binary at /nowhere";
  auto service = make_service(options);
  auto validated = service->validate(kAlice, ValidateRequest{request_for(false), {}, {}},
                                     [](Result<KernelAnswer>) { ADD_FAILURE() << "answered"; });
  ASSERT_FALSE(validated.ok());
  EXPECT_EQ(validated.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(validated.error().message.find("no worker binary at /nowhere"), std::string::npos);

  TuneCallbacks callbacks;
  callbacks.on_done = [](Result<TuneResult>) { ADD_FAILURE() << "answered"; };
  auto tuned = service->tune(kAlice, TuneSettings{}, std::move(callbacks));
  ASSERT_FALSE(tuned.ok());
  EXPECT_EQ(tuned.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(tuned.error().message.find("no worker binary at /nowhere"), std::string::npos);
  EXPECT_TRUE(service->list_tune_jobs(kAlice).empty());

  auto result = service->tuning_result(request_for(false), "");
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, ErrorCode::failed_precondition);
  CompileRequest tuned_request = request_for(false);
  EXPECT_EQ(service->apply_tuned_config(tuned_request).error().code,
            ErrorCode::failed_precondition);
}

TEST_F(ServiceTest, ServerInfoListsOnlyTemplatesItsSourcesBuild) {
  ServiceOptions options;
  options.default_arch = "sm_86";
  auto service = make_service(options);
  const ServerInfo info = service->server_info();
  EXPECT_EQ(info.default_arch, "sm_86");
  EXPECT_FALSE(info.nvrtc_version.empty());
  EXPECT_FALSE(info.version.empty());
  EXPECT_EQ(info.templates, std::vector<std::string>{std::string(kAttentionTemplateId)});
  EXPECT_NE(std::find(info.supported_archs.begin(), info.supported_archs.end(), "sm_90a"),
            info.supported_archs.end());
}

// Moved from tests/rpc/test_server_limits.cpp with the policy.
TEST(RequireGpuTest, NamesTheProbesReason) {
  ServiceOptions options;
  options.gpu.available = false;
  options.gpu.unavailable_reason = "no CUDA driver: libcuda.so.1 not found";
  Service without(nullptr, nullptr, options);
  const Status refused = without.require_gpu();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(refused.error().message.find("libcuda.so.1 not found"), std::string::npos);

  options.gpu = GpuStatus{true, "NVIDIA H100", "sm_90a", ""};
  Service with(nullptr, nullptr, options);
  EXPECT_TRUE(with.require_gpu().ok());
}

}  // namespace
}  // namespace flashcore::service
