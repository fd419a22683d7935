// Client::validate against a real daemon on a loopback port. Here (no GPU)
// the daemon has no evaluation workers, so every well-formed request is
// refused with FAILED_PRECONDITION before anything compiles; the client must
// keep that code and the daemon's reason, and keep INVALID_ARGUMENT naming the
// field for bad options. The GPU case (a passing record through the client)
// is ValidateGpuTest in test_validate.cpp; the CLI's `validate` is tested in
// test_client_cli.cpp.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>

#include "flashcore/client.hpp"
#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class ClientValidateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = start_small_template_daemon().release();
    if (server_ == nullptr) return;
    client::ConnectOptions options;
    options.address = server_->daemon->address();
    auto connected = client::Client::connect(options);
    if (connected.ok())
      client_ = new client::Client(std::move(connected).value());
    else
      ADD_FAILURE() << "connect: " << connected.error().message;
  }
  static void TearDownTestSuite() {
    delete client_;
    client_ = nullptr;
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(client_, nullptr);
  }

  static v1::ValidateRequest request() {
    v1::ValidateRequest request;
    *request.mutable_kernel() = quick_request();
    return request;
  }

  static SmallTemplateDaemon* server_;
  static client::Client* client_;
};
SmallTemplateDaemon* ClientValidateTest::server_ = nullptr;
client::Client* ClientValidateTest::client_ = nullptr;

TEST_F(ClientValidateTest, WithoutAGpuIsFailedPreconditionWithTheDaemonsReason) {
  auto info = client_->server_info();
  ASSERT_TRUE(info.ok()) << info.error().message;
  if (info->gpu_available()) GTEST_SKIP() << "this daemon has evaluation workers";

  auto validated = client_->validate(request(), std::chrono::seconds(30));
  ASSERT_FALSE(validated.ok()) << "a GPU-less daemon returned a record";
  const Error& error = validated.error();
  EXPECT_EQ(error.code, ErrorCode::failed_precondition);
  EXPECT_EQ(error.message.rfind("Validate: ", 0), 0u) << error.message;
  EXPECT_TRUE(contains(error.message, "validation needs a GPU evaluation worker")) << error.message;
  // The same reason the daemon gives in GetServerInfo, on one line.
  ASSERT_FALSE(info->gpu_unavailable_reason().empty());
  EXPECT_TRUE(contains(error.message, info->gpu_unavailable_reason())) << error.message;
  EXPECT_FALSE(contains(error.message, "\n")) << error.message;

  // The default deadline (call_timeout) takes the same path.
  auto again = client_->validate(request());
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::failed_precondition);

  // Refused before compiling: the cache is still empty.
  auto listed = client_->list_kernels(0, "");
  ASSERT_TRUE(listed.ok()) << listed.error().message;
  EXPECT_EQ(listed->kernels_size(), 0);
}

TEST_F(ClientValidateTest, BadOptionsAreInvalidArgumentNamingTheField) {
  struct Case {
    const char* name;
    void (*change)(v1::ValidationOptions&);
    const char* field;
  };
  const Case cases[] = {
      {"NegativeRuns", [](v1::ValidationOptions& o) { o.set_determinism_runs(-1); },
       "options.determinism_runs"},
      {"NegativeTrials", [](v1::ValidationOptions& o) { o.set_stability_trials(-2); },
       "options.stability_trials"},
      {"ToleranceOne", [](v1::ValidationOptions& o) { o.set_rel_tolerance(1.0); },
       "options.rel_tolerance"},
      {"NegativeRows", [](v1::ValidationOptions& o) { o.set_reference_rows(-4); },
       "options.reference_rows"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::ValidateRequest bad = request();
    c.change(*bad.mutable_options());
    auto validated = client_->validate(bad);
    ASSERT_FALSE(validated.ok());
    EXPECT_EQ(validated.error().code, ErrorCode::invalid_argument);
    // "Validate: <field>: ...": the RPC, then the field, first.
    EXPECT_EQ(validated.error().message.rfind(std::string("Validate: ") + c.field, 0), 0u)
        << validated.error().message;
  }
}

TEST_F(ClientValidateTest, BadKernelIsInvalidArgumentNamingTheKernelField) {
  v1::ValidateRequest bad = request();
  bad.mutable_kernel()->mutable_problem()->set_head_dim(7);
  auto validated = client_->validate(bad);
  ASSERT_FALSE(validated.ok());
  EXPECT_EQ(validated.error().code, ErrorCode::invalid_argument);
  EXPECT_EQ(validated.error().message.rfind("Validate: kernel.", 0), 0u)
      << validated.error().message;
  EXPECT_TRUE(contains(validated.error().message, "head_dim")) << validated.error().message;
}

// The text the CLI prints for a record. A failed record must say so and
// carry the daemon's reason; a record the daemon could not produce, or
// resources ptxas did not report, must not show zeros as if measured.
TEST(DescribeValidation, ShowsTheVerdictTheReasonAndTheResources) {
  v1::KernelHandle handle;
  handle.set_key(std::string(64, 'c'));
  handle.mutable_resources()->set_registers(168);
  handle.mutable_resources()->set_spill_store_bytes(24);
  handle.mutable_resources()->set_stack_frame_bytes(40);
  handle.mutable_resources()->set_ptxas_log("ptxas info    : Used 168 registers\n");
  handle.mutable_launch()->set_dynamic_smem_bytes(49152);
  v1::ValidationRecord* record = handle.mutable_validation();
  record->set_evaluated(true);
  record->set_device("Test GPU");
  record->set_rel_error(0.25);
  record->set_determinism_runs(7);
  record->set_deterministic(false);
  record->set_stability_trials(3);
  record->set_stability_passed(1);
  record->set_passed(false);
  record->set_detail("failed: stability: 1 of 3 trials passed");

  const std::string failed = client::describe_validation(handle);
  EXPECT_TRUE(contains(failed, handle.key())) << failed;
  EXPECT_TRUE(contains(failed, "Test GPU")) << failed;
  EXPECT_TRUE(contains(failed, "2.500e-01")) << failed;
  EXPECT_TRUE(contains(failed, "NOT deterministic over 7 runs")) << failed;
  EXPECT_TRUE(contains(failed, "1/3 trials passed")) << failed;
  EXPECT_TRUE(contains(failed, "168")) << failed;
  EXPECT_TRUE(contains(failed, "24 B stored")) << failed;
  EXPECT_TRUE(contains(failed, "40 B per thread")) << failed;
  EXPECT_TRUE(contains(failed, "49152 B dynamic")) << failed;
  EXPECT_TRUE(contains(failed, "passed         no\n")) << failed;
  EXPECT_TRUE(contains(failed, record->detail())) << failed;

  record->set_passed(true);
  EXPECT_TRUE(contains(client::describe_validation(handle), "passed         yes\n"));

  // Zeros without a ptxas report (NVRTC's compute cache answered, say) are
  // not shown as measured.
  handle.clear_resources();
  const std::string unreported = client::describe_validation(handle);
  EXPECT_TRUE(contains(unreported, "resources      unknown")) << unreported;
  EXPECT_FALSE(contains(unreported, "0 B stored")) << unreported;

  handle.clear_validation();
  const std::string unevaluated = client::describe_validation(handle);
  EXPECT_TRUE(contains(unevaluated, "evaluated      no")) << unevaluated;
  EXPECT_FALSE(contains(unevaluated, "rel error")) << unevaluated;
  EXPECT_TRUE(contains(unevaluated, "passed         no\n")) << unevaluated;
}

}  // namespace
}  // namespace flashcore
